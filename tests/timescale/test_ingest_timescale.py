"""The ingest writer on TimescaleDB: into the hypertable, idempotent even on compressed chunks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest

from alerts.engine import AlertEngine
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


def test_late_readings_are_judged_again_on_the_hypertable(timescale_url: str) -> None:
    """The alert engine's late path on TimescaleDB: the writer learns which readings are new
    and what the series held before (one statement on the hypertable, compressed chunks
    included), and a late reading that completes a breach opens its alert."""
    migrate.upgrade(timescale_url, timescale="on", retention_days=365)
    sync(timescale_url)

    def salinity(samples: list[tuple[int, float]]) -> Item:
        body = [
            {"ts": int((DAY + timedelta(minutes=m)).timestamp() * 1000), "values": {"salinity": v}}
            for m, v in samples
        ]
        return build_item(
            "ioc/v1/water/ts-late/telemetry",
            orjson.dumps(body),
            received_at=datetime.now(UTC),
            rules=RULES,
            max_payload_bytes=1 << 20,
        )

    writer = Writer(timescale_url, hooks=[AlertEngine(reopen_window_s=300)])
    writer.start()
    try:
        done: list[Item] = []
        batches = [
            salinity([(600, 0.5)] + [(m, 1.5) for m in range(602, 617)]),  # 14 minutes
            salinity([(617, 0.5)]),
            salinity([(601, 1.5)]),  # late: the breach began a minute earlier
            salinity([(601, 1.5)]),  # and again: a redelivery changes nothing
        ]
        for item in batches:
            item.done = done.append
            writer.submit(item)
            count = len(done) + 1
            wait_until(lambda count=count: len(done) == count, what="the commit")  # type: ignore[misc]
    finally:
        writer.stop()
    with psycopg.connect(libpq_url(timescale_url)) as conn:
        rows = conn.execute(
            "SELECT status, condition_started_at, condition_fired_at, condition_ended_at "
            "FROM alert WHERE source_id = 'ts-late'"
        ).fetchall()
    minute = lambda m: DAY + timedelta(minutes=m)  # noqa: E731
    assert rows == [("resolved", minute(601), minute(616), minute(617))]
