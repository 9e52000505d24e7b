"""A source belongs to one sector: messages on another sector's topic are refused."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from alerts.engine import AlertEngine
from ingest import reasons
from ingest.items import Item
from ingest.writer import Writer
from tests.support.alerts import feed
from tests.support.ingest import (
    lock_waiters,
    make_item,
    publish_all,
    query,
    running_consumer,
    tables_locked,
    unique,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _telemetry(sector: str, source: str, values: dict[str, float]) -> Item:
    return make_item(f"ioc/v1/{sector}/{source}/telemetry", {"ts": _ms(NOW), "values": values})


def test_messages_on_another_sectors_topic_are_refused(synced_db: str, mqtt_url: str) -> None:
    src = unique("p1")
    event = {"kind": "smoke", "severity": "warning", "title": "Khói", "external_ref": src}
    with running_consumer(synced_db, mqtt_url) as consumer:
        publish_all(
            mqtt_url,
            [(f"ioc/v1/water/{src}/telemetry", orjson.dumps({"values": {"salinity": 1.0}}))],
        )
        wait_until(lambda: consumer.writer.batches >= 1, what="the source registered")
        publish_all(
            mqtt_url,
            [
                (f"ioc/v1/environment/{src}/telemetry", orjson.dumps({"values": {"aqi": 50}})),
                (f"ioc/v1/environment/{src}/status", b"offline"),
                (f"ioc/v1/environment/{src}/event", orjson.dumps(event)),
            ],
        )
        rejects = wait_until(
            lambda: (
                (
                    r := query(
                        synced_db,
                        "SELECT reason, detail FROM ingest_reject WHERE source_id = %s",
                        (src,),
                    )
                )
                and len(r) == 3
                and r
            ),
            what="three rejects",
        )
    assert {r[0] for r in rejects} == {reasons.WRONG_SECTOR}
    assert "belongs to sector 'water', not 'environment'" in str(rejects[0][1])
    assert query(synced_db, "SELECT sector_id, status FROM source WHERE id = %s", (src,)) == [
        ("water", "online")
    ]
    assert query(synced_db, "SELECT count(*) FROM event") == [(0,)]
    assert query(synced_db, "SELECT metric FROM reading_named WHERE source_id = %s", (src,)) == [
        ("salinity",)
    ]


def test_a_new_source_takes_the_sector_of_its_first_message_in_a_batch(synced_db: str) -> None:
    writer = Writer(synced_db)
    # both queued before the writer starts: one batch
    water = _telemetry("water", "p2", {"salinity": 1})
    env = _telemetry("environment", "p2", {"aqi": 7})
    for item in (water, env):
        assert writer.submit(item, timeout_s=5)
    writer.start()
    try:
        wait_until(lambda: writer.pending()[0] == 0, what="the batch")
    finally:
        writer.stop()
    assert query(synced_db, "SELECT sector_id FROM source WHERE id = 'p2'") == [("water",)]
    assert [r[0] for r in query(synced_db, "SELECT reason FROM ingest_reject")] == [
        reasons.WRONG_SECTOR
    ]


def test_the_engine_judges_a_reading_by_its_sources_sector(synced_db: str) -> None:
    """The issue's reproduction: water rainfall_24h 150 (a rule above 100 mm) in a batch that
    also held an environment message of the same source opened no alert."""
    writer = Writer(synced_db, hooks=[AlertEngine()])
    writer.start()
    try:
        feed(writer, _telemetry("water", "p3", {"salinity": 0.2}))
        with tables_locked(synced_db, "reading"):
            # a first item takes the writer and waits on the lock; the next two queue behind
            # it and make one batch together
            assert writer.submit(_telemetry("water", "other", {"salinity": 0.1}), timeout_s=5)
            wait_until(lambda: lock_waiters(synced_db) == 1, what="the writer to wait")
            assert writer.submit(_telemetry("water", "p3", {"rainfall_24h": 150}), timeout_s=5)
            assert writer.submit(_telemetry("environment", "p3", {"aqi": 30}), timeout_s=5)
        wait_until(lambda: writer.pending()[0] == 0, what="both batches")
    finally:
        writer.stop()
    opened = query(
        synced_db,
        "SELECT a.source_id, r.metric FROM alert a JOIN alert_rule r ON r.id = a.rule_id",
    )
    assert opened == [("p3", "rainfall_24h")]
    assert query(synced_db, "SELECT reason FROM ingest_reject") == [(reasons.WRONG_SECTOR,)]


def test_two_workers_registering_one_source_under_two_sectors(synced_db: str) -> None:
    """Both see the source unregistered, both insert it: the second learns the winner's
    sector from the database and refuses its message."""
    writers = [Writer(synced_db), Writer(synced_db)]
    done = [threading.Event(), threading.Event()]
    items = [
        _telemetry("water", "p4", {"salinity": 1.1}),
        _telemetry("environment", "p4", {"aqi": 9}),
    ]
    for w in writers:
        w.start()
    try:
        with tables_locked(synced_db, "source"):
            for w, item, ev in zip(writers, items, done, strict=True):
                item.done = lambda _i, ev=ev: ev.set()
                assert w.submit(item, timeout_s=5)
            wait_until(lambda: lock_waiters(synced_db) == 2, what="both writers at the insert")
        assert all(ev.wait(30) for ev in done)
    finally:
        for w in writers:
            w.stop()
    sector = query(synced_db, "SELECT sector_id FROM source WHERE id = 'p4'")[0][0]
    rejected = query(synced_db, "SELECT reason, topic FROM ingest_reject")
    assert len(rejected) == 1
    assert rejected[0][0] == reasons.WRONG_SECTOR
    assert f"/{sector}/" not in str(rejected[0][1])
    stored = query(synced_db, "SELECT metric FROM reading_named WHERE source_id = 'p4'")
    assert stored == ([("salinity",)] if sector == "water" else [("aqi",)])
