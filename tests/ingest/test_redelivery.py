"""A redelivered message stores nothing new: readings timed by their receipt, and rejects.

Readings with their own time are idempotent by (series, ts). A message without a time is
stamped with its receipt, and a bad message leaves a reject row: both depend on the delivery.
The writer records such messages in `ingest_receipt`, and a copy the broker marked as
redelivered (MQTT DUP), or one held from a connection that dropped, takes the recorded stamp.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from ingest import reasons
from ingest.consumer import Consumer, ConsumerConfig
from ingest.items import Item, build_item
from ingest.writer import Batch, Writer
from ioc.embedded_broker import EmbeddedBroker
from ioc.mqtt import end_session
from tests.support.ingest import (
    RULES,
    Publisher,
    lock_waiters,
    query,
    tables_locked,
    unique,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def writer(synced_db: str) -> Iterator[Writer]:
    w = Writer(synced_db)
    w.start()
    try:
        yield w
    finally:
        w.stop()


def _item(topic: str, payload: bytes, *, redelivered: bool = False, lost: bool = False) -> Item:
    item = build_item(
        topic, payload, received_at=datetime.now(UTC), rules=RULES, max_payload_bytes=1 << 20
    )
    item.redelivered = redelivered
    if lost:
        item.connection_lost = lambda: True
    return item


def _write(writer: Writer, *items: Item) -> None:
    done: list[Item] = []
    for item in items:
        item.done = done.append
        assert writer.submit(item, timeout_s=30)
    wait_until(lambda: len(done) == len(items), what="commit of every item")


def _readings(db_url: str, source: str) -> list[tuple[object, ...]]:
    return query(
        db_url,
        "SELECT metric, ts, value FROM reading_named WHERE source_id = %s ORDER BY ts, metric",
        (source,),
    )


def _rejects(db_url: str, source: str) -> list[tuple[object, ...]]:
    return query(
        db_url, "SELECT reason FROM ingest_reject WHERE source_id = %s ORDER BY id", (source,)
    )


def test_a_redelivered_message_without_time_stores_nothing_new(
    writer: Writer, synced_db: str
) -> None:
    topic, body = "ioc/v1/water/st-1/telemetry", orjson.dumps({"values": {"salinity": 1.5}})
    _write(writer, _item(topic, body))
    first = _readings(synced_db, "st-1")
    assert len(first) == 1
    # the same message again, marked by the broker as a redelivery, received later
    _write(writer, _item(topic, body, redelivered=True))
    assert _readings(synced_db, "st-1") == first


def test_a_redelivery_to_a_new_worker_process_stores_nothing_new(synced_db: str) -> None:
    """A worker killed between its commit and its acknowledgement: the next one gets a DUP."""
    topic = "ioc/v1/water/st-2/senml"
    body = orjson.dumps([{"n": "salinity", "v": 2.0, "t": -30}, {"n": "salinity", "v": 2.1}])
    for redelivered in (False, True):
        w = Writer(synced_db)  # a fresh process knows nothing in memory
        w.start()
        try:
            _write(w, _item(topic, body, redelivered=redelivered))
        finally:
            w.stop()
    rows = _readings(synced_db, "st-2")
    assert [r[2] for r in rows] == [2.0, 2.1]
    assert rows[1][1] - rows[0][1] == timedelta(seconds=30)  # type: ignore[operator]


def test_two_separate_messages_with_the_same_payload_are_both_stored(
    writer: Writer, synced_db: str
) -> None:
    topic, body = "ioc/v1/water/st-3/telemetry", orjson.dumps({"values": {"salinity": 1.5}})
    _write(writer, _item(topic, body))
    _write(writer, _item(topic, body))
    assert [r[2] for r in _readings(synced_db, "st-3")] == [1.5, 1.5]


def test_a_held_copy_after_its_redelivery_was_stored_stores_nothing_new(
    writer: Writer, synced_db: str
) -> None:
    """Two workers: the redelivered copy commits first, the copy held from the dropped
    connection later; the second finds the first."""
    topic, body = "ioc/v1/water/st-4/telemetry", orjson.dumps({"values": {"salinity": 3.3}})
    held = _item(topic, body, lost=True)  # received first, on the connection that dropped
    again = _item(topic, body, redelivered=True)
    _write(writer, again)
    _write(writer, held)
    assert len(_readings(synced_db, "st-4")) == 1


def test_a_held_copy_and_its_redelivery_in_one_batch_store_once(
    writer: Writer, synced_db: str
) -> None:
    topic, body = "ioc/v1/water/st-5/telemetry", orjson.dumps({"values": {"salinity": 0.4}})
    _write(writer, _item(topic, body, lost=True), _item(topic, body, redelivered=True))
    assert len(_readings(synced_db, "st-5")) == 1


def test_a_redelivered_bad_message_leaves_one_reject(writer: Writer, synced_db: str) -> None:
    topic, body = "ioc/v1/water/st-6/telemetry", b'{"values": {"salinity": "high"}}'
    _write(writer, _item(topic, body))
    _write(writer, _item(topic, body, redelivered=True))
    _write(writer, _item(topic, body, lost=True, redelivered=True))
    assert _rejects(synced_db, "st-6") == [(reasons.NOT_NUMERIC,)]
    # a separate bad message, identical, is a reject of its own
    _write(writer, _item(topic, body))
    assert len(_rejects(synced_db, "st-6")) == 2


def test_a_redelivery_with_no_record_is_stored(writer: Writer, synced_db: str) -> None:
    """The first delivery never committed (the worker died before): the DUP copy is new."""
    topic, body = "ioc/v1/water/st-7/telemetry", orjson.dumps({"values": {"salinity": 1.0}})
    _write(writer, _item(topic, body, redelivered=True))
    assert len(_readings(synced_db, "st-7")) == 1
    assert len(query(synced_db, "SELECT 1 FROM ingest_receipt")) == 1


def test_timestamped_good_messages_leave_no_receipt(writer: Writer, synced_db: str) -> None:
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    body = orjson.dumps({"ts": now_ms, "values": {"salinity": 1}})
    _write(writer, _item("ioc/v1/water/st-8/telemetry", body))
    assert query(synced_db, "SELECT count(*) FROM ingest_receipt") == [(0,)]


def test_old_receipts_are_pruned(synced_db: str) -> None:
    w = Writer(synced_db, receipt_window_s=60)
    w.start()
    try:
        _write(w, _item("ioc/v1/water/st-9/telemetry", b'{"values": {"salinity": 1}}'))
        query(synced_db, "UPDATE ingest_receipt SET received_at = received_at - interval '2 min'")
        assert w.prune_receipts() == 1
    finally:
        w.stop()
    assert query(synced_db, "SELECT count(*) FROM ingest_receipt") == [(0,)]


# -- through a real broker that restarts while the database holds the worker back ---------


class _Committed:
    """Counts the items of committed batches (an after-commit observer)."""

    def __init__(self) -> None:
        self.items = 0

    def __call__(self, batch: Batch, committed: datetime) -> None:
        self.items += len(batch.items)


@contextmanager
def _consumer(
    db_url: str, mqtt_url: str, client_id: str, committed: _Committed
) -> Iterator[Consumer]:
    writer = Writer(db_url, after_commit=[committed])
    consumer = Consumer(
        ConsumerConfig(
            mqtt_url=mqtt_url,
            client_id=client_id,
            session_expiry_s=300,
            subscription="ioc/v1/+/+/+",  # plain: Mosquitto keeps it across its restart
        ),
        rules=RULES,
        writer=writer,
    )
    writer.start()
    try:
        consumer.start()
        yield consumer
    finally:
        consumer.stop()
        end_session(mqtt_url, client_id)


def test_broker_restart_while_the_database_holds_back_stores_each_message_once(
    synced_db: str, broker: EmbeddedBroker
) -> None:
    """The issue's reproduction: 20 messages without a time and 20 bad ones, the broker
    restarted while the worker cannot commit: 20 readings and 20 rejects, not 40 of each."""
    src, client_id = unique("nots"), unique("ingest")
    n = 20
    committed = _Committed()
    total = 1 + 2 * (2 * n + 2)  # every message delivered twice but the first
    with _consumer(synced_db, broker.url, client_id, committed) as consumer:
        with Publisher(broker.url) as pub:
            pub.publish(f"ioc/v1/water/{src}-w/telemetry", b'{"values": {"salinity": 0.1}}')
        wait_until(lambda: len(_readings(synced_db, f"{src}-w")) == 1, what="the first reading")
        with tables_locked(synced_db, "reading", "ingest_reject"):
            with Publisher(broker.url) as pub:
                for i in range(n):
                    body = orjson.dumps({"values": {"salinity": 1 + i / 100}})
                    pub.publish(f"ioc/v1/water/{src}/telemetry", body)
                    pub.publish(f"ioc/v1/water/{src}/telemetry", f'{{"values": {i}}}'.encode())
                # a sensor reporting the same value twice without a time: two readings
                pub.publish(f"ioc/v1/water/{src}/telemetry", b'{"values": {"water_level": 2}}')
                pub.publish(f"ioc/v1/water/{src}/telemetry", b'{"values": {"water_level": 2}}')
            wait_until(lambda: lock_waiters(synced_db) > 0, what="the worker to block mid-batch")
            wait_until(lambda: consumer.received == 1 + 2 * n + 2, what="every first delivery")
            broker.stop()
            broker.start()
            # the broker redelivers everything in flight (DUP) on the new connection
            wait_until(lambda: consumer.received == total, what="the redeliveries")
        wait_until(lambda: committed.items == total, what="every delivery committed")
    readings = _readings(synced_db, src)
    assert len(readings) == n + 2
    assert sorted(r[2] for r in readings if r[0] == "salinity") == [1 + i / 100 for i in range(n)]
    assert [r[2] for r in readings if r[0] == "water_level"] == [2.0, 2.0]
    assert len(_rejects(synced_db, src)) == n
