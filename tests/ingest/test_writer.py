"""The batching writer on a real PostgreSQL: idempotent, adaptive, bounded, resilient."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest

from ingest import reasons
from ingest.items import Item, build_item
from ingest.validation import Rules
from ingest.writer import Batch, Writer
from ioc.catalogue import load_profile
from ioc.db import libpq_url
from tests.support.ingest import RULES, query, wait_until

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def writer(synced_db: str) -> Iterator[Writer]:
    w = Writer(synced_db)
    w.start()
    yield w
    w.stop()


def _item(source: str, values: dict[str, object], *, at: datetime = NOW, kind: str = "telemetry",
          rules: Rules = RULES) -> Item:  # fmt: skip
    doc = {"ts": int(at.timestamp() * 1000), "values": values}
    return build_item(
        f"ioc/v1/water/{source}/{kind}",
        orjson.dumps(doc),
        received_at=datetime.now(UTC),
        rules=rules,
        max_payload_bytes=1 << 20,
    )


def _submit_and_wait(writer: Writer, *items: Item) -> list[Item]:
    done: list[Item] = []
    for item in items:
        item.done = done.append
        assert writer.submit(item, timeout_s=30)
    wait_until(lambda: len(done) == len(items), what="commit of every item")
    return done


def test_a_lone_message_commits_at_once_and_registers_its_source(
    writer: Writer, synced_db: str
) -> None:
    _submit_and_wait(writer, _item("tram-1", {"salinity": 1.2, "water_level": 0.9}))
    rows = query(synced_db, "SELECT metric, value FROM reading_named ORDER BY metric")
    assert rows == [("salinity", 1.2), ("water_level", 0.9)]
    source = query(synced_db, "SELECT sector_id, status, last_seen_at FROM source")
    assert source == [("water", "online", NOW)]


def test_the_same_message_twice_stores_its_readings_once(writer: Writer, synced_db: str) -> None:
    first = _item("tram-1", {"salinity": 1.2})
    again = _item("tram-1", {"salinity": 1.2})
    _submit_and_wait(writer, first)
    _submit_and_wait(writer, again)
    assert query(synced_db, "SELECT count(*) FROM reading") == [(1,)]


def test_readings_queued_during_a_commit_go_in_the_next_batch(
    writer: Writer, synced_db: str
) -> None:
    # Hold the source table so the first batch waits; what arrives meanwhile queues up.
    with psycopg.connect(libpq_url(synced_db)) as blocker:
        blocker.execute("LOCK TABLE source IN EXCLUSIVE MODE")
        first = _item("tram-0", {"salinity": 1.0})
        first_done = threading.Event()
        first.done = lambda _: first_done.set()
        writer.submit(first)
        wait_until(lambda: writer.pending()[0] == 1 and not writer._queue, what="first batch")
        later = [_item(f"tram-{i}", {"salinity": 1.0}) for i in range(1, 51)]
        for item in later:
            writer.submit(item)
        assert writer.pending()[0] == 51
        batches_before = writer.batches
        blocker.rollback()
    _submit_and_wait(writer)  # nothing: just let the writer run
    wait_until(lambda: writer.pending()[0] == 0, what="queue drained")
    assert writer.batches - batches_before == 2  # one for the first, one for the 50 behind it
    assert query(synced_db, "SELECT count(*) FROM reading") == [(51,)]


def test_the_queue_is_bounded_and_submit_blocks_when_full(synced_db: str) -> None:
    writer = Writer(synced_db, queue_max_rows=10, max_batch_rows=4)
    writer.start()
    try:
        with psycopg.connect(libpq_url(synced_db)) as blocker:
            blocker.execute("LOCK TABLE source IN EXCLUSIVE MODE")
            accepted = 0
            for i in range(30):
                if not writer.submit(_item(f"t-{i}", {"salinity": 1.0}), timeout_s=0.2):
                    break
                accepted += 1
            assert accepted == 10
            assert writer.pending()[0] == 10
            blocker.rollback()
        wait_until(lambda: writer.pending()[0] == 0, what="queue drained")
        assert query(synced_db, "SELECT count(*) FROM reading") == [(10,)]
    finally:
        writer.stop()


def test_a_lost_connection_is_retried_and_nothing_is_lost_or_doubled(
    writer: Writer, synced_db: str
) -> None:
    _submit_and_wait(writer, _item("tram-1", {"salinity": 1.0}, at=NOW - timedelta(minutes=2)))
    dbname = query(synced_db, "SELECT current_database()")[0][0]
    query(
        synced_db,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'ioc-ingest' AND datname = %s",
        (dbname,),
    )
    items = [
        _item("tram-1", {"salinity": float(i)}, at=NOW - timedelta(seconds=i)) for i in range(20)
    ]
    _submit_and_wait(writer, *items)
    assert query(synced_db, "SELECT count(*) FROM reading") == [(21,)]
    assert writer.last_error is None


def test_an_item_the_database_refuses_is_kept_as_a_reject_and_the_rest_is_stored(
    writer: Writer, synced_db: str
) -> None:
    # a sector the rules know but the database does not: a foreign key violation
    ghost = Rules(sectors={**RULES.sectors, "ghost": {"x": RULES.sectors["water"]["salinity"]}})
    bad = build_item(
        "ioc/v1/ghost/g-1/telemetry",
        b'{"values": {"x": 1}}',
        received_at=datetime.now(UTC),
        rules=ghost,
        max_payload_bytes=1 << 20,
    )
    good = [_item(f"tram-{i}", {"salinity": 2.0}) for i in range(5)]
    done = _submit_and_wait(writer, good[0], good[1], bad, *good[2:])
    assert len(done) == 6
    assert query(synced_db, "SELECT count(*) FROM reading") == [(5,)]
    rows = query(synced_db, "SELECT reason, topic, payload FROM ingest_reject")
    assert rows == [(reasons.WRITE_FAILED, "ioc/v1/ghost/g-1/telemetry", b'{"values": {"x": 1}}')]


def test_rejects_are_stored_with_their_payload(writer: Writer, synced_db: str) -> None:
    item = _item("tram-1", {"salinity": 99.0, "bogus": 1, "water_level": 1.0})
    _submit_and_wait(writer, item)
    rows = query(synced_db, "SELECT reason, source_id, payload FROM ingest_reject ORDER BY reason")
    assert [(r, s) for r, s, _ in rows] == [
        (reasons.OUT_OF_RANGE, "tram-1"),
        (reasons.UNKNOWN_METRIC, "tram-1"),
    ]
    assert all(bytes(p) == item.payload for _, _, p in rows)
    assert query(synced_db, "SELECT metric FROM reading_named") == [("water_level",)]


def test_strict_sources_reject_unknown_ones(synced_db: str) -> None:
    query(synced_db, "INSERT INTO source (id, sector_id) VALUES ('known-1', 'water')")
    writer = Writer(synced_db, strict_sources=True)
    writer.start()
    try:
        _submit_and_wait(
            writer, _item("known-1", {"salinity": 1.0}), _item("stranger", {"salinity": 1.0})
        )
    finally:
        writer.stop()
    assert query(synced_db, "SELECT source_id FROM reading_named") == [("known-1",)]
    assert query(synced_db, "SELECT reason, source_id FROM ingest_reject") == [
        (reasons.UNKNOWN_SOURCE, "stranger")
    ]
    assert query(synced_db, "SELECT id FROM source ORDER BY id") == [("known-1",)]


def _raw(topic: str, payload: bytes) -> Item:
    return build_item(
        topic, payload, received_at=datetime.now(UTC), rules=RULES, max_payload_bytes=1 << 20
    )


def test_status_messages_and_events(writer: Writer, synced_db: str) -> None:
    event = orjson.dumps({"kind": "flood", "severity": "critical", "title": "Ngập đường"})
    _submit_and_wait(writer, _item("tram-1", {"salinity": 1.0}))
    _submit_and_wait(
        writer,
        _raw("ioc/v1/water/tram-1/status", b"offline"),
        _raw("ioc/v1/water/tram-1/event", event),
        _raw("ioc/v1/water/tram-1/event", event),  # redelivered: stored once
    )
    assert query(synced_db, "SELECT status FROM source") == [("offline",)]
    assert query(synced_db, "SELECT kind, severity, title, source_id FROM event") == [
        ("flood", "critical", "Ngập đường", "tram-1")
    ]
    with_ref = orjson.dumps(
        {"kind": "fire", "severity": "warning", "title": "Cháy", "external_ref": "PCCC-7"}
    )
    stored = _submit_and_wait(writer, _raw("ioc/v1/water/tram-2/event", with_ref))
    again = _submit_and_wait(writer, _raw("ioc/v1/water/tram-2/event", with_ref))
    assert stored[0].event_id is not None
    assert again[0].event_id is None  # already stored
    assert query(synced_db, "SELECT count(*) FROM event") == [(2,)]


def test_hooks_run_inside_the_batch_transaction(synced_db: str) -> None:
    seen: list[Batch] = []
    fail_once = [True]

    def hook(conn: psycopg.Connection[tuple[object, ...]], batch: Batch) -> None:
        if fail_once[0]:
            fail_once[0] = False
            raise psycopg.OperationalError("simulated failure in a hook")
        seen.append(batch)
        conn.execute(
            "INSERT INTO audit_log (actor, action, detail) VALUES ('test', 'batch', %s)",
            (orjson.dumps({"readings": len(batch.readings)}).decode(),),
        )

    writer = Writer(synced_db, hooks=[hook])
    writer.start()
    try:
        _submit_and_wait(writer, _item("tram-1", {"salinity": 1.0, "water_level": 2.0}))
    finally:
        writer.stop()
    # the failed attempt left nothing behind; the retry wrote readings and hook rows together
    assert query(synced_db, "SELECT count(*) FROM reading") == [(2,)]
    assert query(synced_db, "SELECT count(*) FROM audit_log") == [(1,)]
    assert [(m, v) for _, _, m, _, v in seen[0].readings] == [
        ("salinity", 1.0),
        ("water_level", 2.0),
    ]


def test_after_commit_observers_see_each_committed_batch_and_may_fail(synced_db: str) -> None:
    committed: list[tuple[int, int, datetime]] = []

    def visible_rows(batch: Batch, at: datetime) -> None:
        # runs after the commit: another connection already sees the rows
        rows = query(synced_db, "SELECT count(*) FROM reading")[0][0]
        committed.append((len(batch.readings), rows, at))

    def broken(batch: Batch, at: datetime) -> None:
        raise RuntimeError("an observer that fails must not stop the writer")

    before = datetime.now(UTC)
    writer = Writer(synced_db, after_commit=[broken, visible_rows])
    writer.start()
    try:
        _submit_and_wait(writer, _item("obs-1", {"salinity": 1.0, "water_level": 2.0}))
        _submit_and_wait(writer, _item("obs-2", {"salinity": 1.5}))
    finally:
        writer.stop()
    assert [(n, rows) for n, rows, _ in committed] == [(2, 2), (1, 3)]
    assert all(before <= at <= datetime.now(UTC) for _, _, at in committed)


def test_uncatalogued_metrics_get_a_marked_series(synced_db: str) -> None:
    rules = Rules.from_profile(load_profile("mekong"), unknown_metrics="accept")
    writer = Writer(synced_db)
    writer.start()
    try:
        _submit_and_wait(writer, _item("tram-1", {"turbidity": 3.0, "salinity": 1.0}, rules=rules))
    finally:
        writer.stop()
    assert query(synced_db, "SELECT metric, catalogued FROM series ORDER BY metric") == [
        ("salinity", True),
        ("turbidity", False),
    ]
