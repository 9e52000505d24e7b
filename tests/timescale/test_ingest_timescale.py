"""The ingest writer on TimescaleDB: into the hypertable, idempotent even on compressed chunks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest

from ingest.items import Item, build_item
from ingest.writer import Writer
from ioc import migrate
from ioc.db import libpq_url
from tests.support.ingest import RULES, sync, wait_until

pytestmark = pytest.mark.timescale

DAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=3)


def _items(source: str, minutes: range) -> list[Item]:
    return [
        build_item(
            f"ioc/v1/water/{source}/telemetry",
            orjson.dumps(
                {"ts": int((DAY + timedelta(minutes=m)).timestamp() * 1000),
                 "values": {"salinity": m / 100, "water_level": 1.0}}
            ),
            received_at=datetime.now(UTC),
            rules=RULES,
            max_payload_bytes=1 << 20,
        )
        for m in minutes
    ]  # fmt: skip


def _write(url: str, items: list[Item]) -> None:
    # one connection at a time on this server: the writer's is closed before the test reads
    writer = Writer(url)
    writer.start()
    try:
        done: list[Item] = []
        for item in items:
            item.done = done.append
            writer.submit(item)
        wait_until(lambda: len(done) == len(items), what="the commit")
    finally:
        writer.stop()


def _count(url: str, source: str) -> int:
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM reading_named WHERE source_id = %s", (source,)
        ).fetchone()
    assert row is not None
    return int(str(row[0]))


def test_readings_land_in_the_hypertable_once_even_after_compression(timescale_url: str) -> None:
    migrate.upgrade(timescale_url, timescale="on", retention_days=365)
    sync(timescale_url)
    _write(timescale_url, _items("ts-tram", range(120)))
    assert _count(timescale_url, "ts-tram") == 240
    with psycopg.connect(libpq_url(timescale_url), autocommit=True) as conn:
        chunks = conn.execute(
            "SELECT compress_chunk(c, if_not_compressed => true) "
            "FROM show_chunks('reading', older_than => now() - interval '1 day') AS c"
        ).fetchall()
        assert chunks
    # a redelivery of old messages plus new minutes, into the compressed chunk
    _write(timescale_url, _items("ts-tram", range(60, 180)))
    assert _count(timescale_url, "ts-tram") == 360
