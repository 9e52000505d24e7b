"""The alert engine inside real ingest batches on a real PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from alerts import lifecycle
from alerts.engine import AlertEngine
from ingest.items import Item
from ingest.writer import Writer
from ioc.db import libpq_url
from tests.support.alerts import engine_writer, feed
from tests.support.ingest import make_item, query, wait_until

pytestmark = pytest.mark.timeout(120)

# a recent hour, so readings are neither in the future nor older than the retention
T0 = (datetime.now(UTC) - timedelta(hours=6)).replace(second=0, microsecond=0)
WARNING_KEY = "water/salinity/above/warning"  # >= 1 g/L held 15 minutes, clears below 0.8


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def telemetry(source: str, samples: list[tuple[float, float]], metric: str = "salinity") -> Item:
    """One gateway message with (minute, value) samples of one metric."""
    body = [{"ts": int(at(m).timestamp() * 1000), "values": {metric: v}} for m, v in samples]
    return make_item(f"ioc/v1/water/{source}/telemetry", body)


def event(source: str, severity: str, ref: str) -> Item:
    doc = {"kind": "dike_breach", "severity": severity, "title": "Sạt lở đê", "external_ref": ref}
    return make_item(f"ioc/v1/water/{source}/event", doc)


def alerts(db_url: str) -> list[tuple[object, ...]]:
    return query(
        db_url,
        "SELECT a.source_id, a.status, a.severity, a.last_value, a.occurrences, r.seed_key "
        "FROM alert a LEFT JOIN alert_rule r ON r.id = a.rule_id ORDER BY a.id",
    )


def history(db_url: str) -> list[tuple[object, ...]]:
    return query(db_url, "SELECT alert_id, kind, status, actor FROM alert_event ORDER BY id")


def test_a_breach_held_for_its_duration_opens_one_alert_and_clearing_resolves_it(
    synced_db: str,
) -> None:
    with engine_writer(synced_db) as writer:
        feed(writer, telemetry("tram-1", [(m, 1.2) for m in range(10)]))
        assert alerts(synced_db) == []  # 9 minutes so far: not yet
        feed(writer, telemetry("tram-1", [(m, 1.3) for m in range(10, 20)]))
        assert alerts(synced_db) == [("tram-1", "open", "warning", 1.3, 1, WARNING_KEY)]
        feed(writer, telemetry("tram-1", [(20, 0.9), (21, 0.85)]))  # inside the band: holds
        assert alerts(synced_db)[0][1:4] == ("open", "warning", 0.85)
        feed(writer, telemetry("tram-1", [(22, 0.7)]))
    assert alerts(synced_db)[0][1] == "resolved"
    assert [(k, s, a) for _, k, s, a in history(synced_db)] == [
        ("opened", "open", "system"),
        ("resolved", "resolved", "engine"),
    ]


def test_noisy_data_around_the_threshold_keeps_one_alert(synced_db: str) -> None:
    noise = [0.95, 1.05, 0.85, 1.4, 0.82, 1.0, 0.99, 1.01] * 5
    with engine_writer(synced_db) as writer:
        feed(writer, telemetry("tram-2", [(m, 1.5) for m in range(16)]))
        feed(writer, telemetry("tram-2", [(16 + i, v) for i, v in enumerate(noise)]))
    assert [(s, st) for s, st, *_ in alerts(synced_db)] == [("tram-2", "open")]
    assert [k for _, k, _, _ in history(synced_db)] == ["opened"]


def test_a_restart_in_the_middle_of_a_duration_keeps_the_timer(synced_db: str) -> None:
    with engine_writer(synced_db) as writer:
        feed(writer, telemetry("tram-3", [(m, 1.5) for m in range(8)]))
    state = query(
        synced_db,
        "SELECT s.state, s.pending_since FROM alert_state s JOIN alert_rule r ON r.id = s.rule_id "
        "WHERE r.seed_key = %s AND s.source_id = 'tram-3'",
        (WARNING_KEY,),
    )
    assert state == [("pending", at(0))]
    with engine_writer(synced_db) as writer:  # a new process: a new engine, state from the DB
        feed(writer, telemetry("tram-3", [(m, 1.5) for m in range(8, 16)]))
    opened = query(synced_db, "SELECT detail->>'since' FROM alert WHERE source_id = 'tram-3'")
    assert opened == [(at(0).isoformat(),)]


def test_a_redelivered_message_changes_no_alert(synced_db: str) -> None:
    with engine_writer(synced_db) as writer:
        feed(writer, telemetry("tram-4", [(m, 1.5) for m in range(16)]))
        feed(writer, telemetry("tram-4", [(m, 1.5) for m in range(16)]))
        feed(writer, telemetry("tram-4", [(16, 0.5)]))
        feed(writer, telemetry("tram-4", [(m, 1.5) for m in range(16)]))  # late: ignored
    assert [k for _, k, _, _ in history(synced_db)] == ["opened", "resolved"]


def test_a_late_breaching_reading_after_newer_quiet_ones_starts_no_timer(synced_db: str) -> None:
    with engine_writer(synced_db) as writer:
        feed(writer, telemetry("tram-9", [(m, 0.5) for m in range(10, 16)]))  # quiet: no state
        feed(writer, telemetry("tram-9", [(2, 1.5)]))  # late, and breaching
        feed(writer, telemetry("tram-9", [(m, 1.5) for m in range(20, 30)]))
    state = query(
        synced_db,
        "SELECT s.state, s.pending_since FROM alert_state s JOIN alert_rule r ON r.id = s.rule_id "
        "WHERE r.seed_key = %s AND s.source_id = 'tram-9'",
        (WARNING_KEY,),
    )
    assert state == [("pending", at(20))]  # not at(2): 10..15 were normal after it
    assert alerts(synced_db) == []


def test_firing_again_soon_after_resolution_reopens_the_same_alert(synced_db: str) -> None:
    with engine_writer(synced_db, reopen_window_s=3600) as writer:
        feed(writer, telemetry("tram-5", [(m, 1.5) for m in range(16)]))
        feed(writer, telemetry("tram-5", [(16, 0.5)]))
        feed(writer, telemetry("tram-5", [(m, 1.6) for m in range(17, 33)]))
    assert alerts(synced_db) == [("tram-5", "open", "warning", 1.6, 2, WARNING_KEY)]
    assert [k for _, k, _, _ in history(synced_db)] == ["opened", "resolved", "reopened"]


def test_an_agency_event_at_or_above_the_rule_severity_opens_a_linked_alert(
    synced_db: str,
) -> None:
    with engine_writer(synced_db) as writer:
        feed(writer, event("agency-1", "info", "E-1"))  # below the seeded warning rule
        feed(writer, event("agency-1", "critical", "E-2"))
        feed(writer, event("agency-1", "critical", "E-2"))  # redelivered: stored once
    rows = query(
        synced_db,
        "SELECT a.severity, a.title, e.external_ref, a.rule_kind FROM alert a "
        "JOIN event e ON e.id = a.event_id",
    )
    assert rows == [("critical", "Sạt lở đê", "E-2", "event")]


def test_two_workers_feeding_one_source_keep_exactly_one_active_alert(synced_db: str) -> None:
    """Two engines on two connections race on the same (rule, source) pair."""
    with (
        engine_writer(synced_db, reopen_window_s=0) as w1,
        engine_writer(synced_db, reopen_window_s=0) as w2,
    ):
        # interleaved minutes, each worker sends alternate readings: both see the breach
        def run(writer: Writer, parity: int) -> None:
            for block in range(6):
                base = block * 40
                breach = [(base + m, 1.5) for m in range(parity, 20, 2)]
                calm = [(base + 20 + m, 0.5) for m in range(parity, 20, 2)]
                feed(writer, telemetry("tram-6", breach))
                feed(writer, telemetry("tram-6", calm))

        threads = [threading.Thread(target=run, args=(w, p)) for p, w in enumerate((w1, w2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    # a worker's readings may reach the engine after the other's newer ones: judged again as
    # late readings, an alert may be withdrawn for the one the sorted history gives (retracted,
    # resolved, kept for the record): those are not counted
    rows = query(
        synced_db,
        "SELECT count(*) FILTER (WHERE status <> 'resolved'), count(*) FILTER (WHERE NOT "
        "retracted) FROM alert WHERE source_id = 'tram-6'",
    )
    active, total = rows[0]
    assert isinstance(active, int) and isinstance(total, int)
    assert active <= 1
    assert 1 <= total <= 6, query(
        synced_db,
        "SELECT id, status, retracted, condition_started_at, condition_fired_at, "
        "condition_ended_at, occurrences FROM alert WHERE source_id = 'tram-6' ORDER BY id",
    )
    # no batch failed on the one-active-alert index: every reading stored, nothing rejected
    assert query(synced_db, "SELECT reason, detail FROM ingest_reject") == []
    assert query(synced_db, "SELECT count(*) FROM reading") == [(6 * 40,)]
    assert query(
        synced_db,
        "SELECT count(*) FROM (SELECT cause_key FROM alert WHERE status <> 'resolved' "
        "GROUP BY cause_key HAVING count(*) > 1) dup",
    ) == [(0,)]


def test_acknowledge_and_resolve_record_actors_and_history(synced_db: str) -> None:
    with engine_writer(synced_db) as writer:
        feed(writer, telemetry("tram-7", [(m, 2.0) for m in range(16)]))
    (alert_id,) = query(synced_db, "SELECT id FROM alert")[0]
    assert isinstance(alert_id, int)
    with psycopg.connect(libpq_url(synced_db)) as conn:
        lifecycle.acknowledge(conn, alert_id, actor="operator:lan", note="đang xử lý")
        conn.commit()
        with pytest.raises(lifecycle.AlertConflict):
            lifecycle.acknowledge(conn, alert_id, actor="operator:minh")
        conn.rollback()
        lifecycle.resolve(conn, alert_id, actor="operator:lan", note="đã đóng cống")
        conn.commit()
        with pytest.raises(lifecycle.AlertNotFound):
            lifecycle.resolve(conn, 999_999, actor="operator:lan")
    row = query(
        synced_db,
        "SELECT status, acknowledged_by, resolved_by FROM alert WHERE id = %s",
        (alert_id,),
    )
    assert row == [("resolved", "operator:lan", "operator:lan")]
    assert [(k, a) for _, k, _, a in history(synced_db)] == [
        ("opened", "system"),
        ("acknowledged", "operator:lan"),
        ("resolved", "operator:lan"),
    ]
    notes = query(synced_db, "SELECT detail->>'note' FROM alert_event ORDER BY id")
    assert notes == [(None,), ("đang xử lý",), ("đã đóng cống",)]


def test_every_alert_event_is_notified_with_its_id(synced_db: str) -> None:
    with psycopg.connect(libpq_url(synced_db), autocommit=True) as listener:
        listener.execute("LISTEN ioc_alert_event")
        with engine_writer(synced_db) as writer:
            feed(writer, telemetry("tram-8", [(m, 1.5) for m in range(16)]))
            feed(writer, telemetry("tram-8", [(16, 0.1)]))
        got: list[int] = []

        def drained() -> bool:
            got.extend(int(n.payload) for n in listener.notifies(timeout=0.2, stop_after=10))
            return len(got) >= 2

        wait_until(drained, what="two notifications")
    ids = [int(str(r[0])) for r in query(synced_db, "SELECT id FROM alert_event ORDER BY id")]
    assert got == ids


def test_a_deviation_rule_keeps_its_statistics_across_restarts_and_fires_on_a_spike(
    synced_db: str,
) -> None:
    with psycopg.connect(libpq_url(synced_db)) as conn:
        conn.execute(
            "INSERT INTO alert_rule (name, kind, sector_id, metric, severity, source_id, params) "
            "VALUES ('unusual chloride at tram-d', 'deviation', 'water', 'supply_chloride', "
            "'warning', 'tram-d', '{\"k\": 4, \"window\": 20, \"min_samples\": 10}')"
        )
    steady = [(m, 120.0 + (2.0 if m % 2 else -2.0)) for m in range(20)]
    with engine_writer(synced_db) as writer:
        feed(writer, telemetry("tram-d", steady[:12], metric="supply_chloride"))
    with engine_writer(synced_db) as writer:  # a restart: the statistics come from the table
        feed(writer, telemetry("tram-d", steady[12:], metric="supply_chloride"))
        feed(writer, telemetry("tram-d", [(20, 190.0)], metric="supply_chloride"))
        feed(writer, telemetry("tram-e", [(20, 190.0)], metric="supply_chloride"))  # not scoped
    rows = query(
        synced_db,
        "SELECT source_id, rule_kind, status, last_value FROM alert WHERE rule_kind = 'deviation'",
    )
    assert rows == [("tram-d", "deviation", "open", 190.0)]
    samples = query(synced_db, "SELECT stat_samples FROM alert_state WHERE source_id = 'tram-d'")
    assert (21,) in samples


def test_a_failing_engine_never_costs_a_reading(
    synced_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: AlertEngine, conn: object, batch: object) -> None:
        raise ValueError("a bug in a rule")

    monkeypatch.setattr(AlertEngine, "evaluate", broken)
    with engine_writer(synced_db) as writer:
        feed(writer, telemetry("tram-z", [(m, 1.5) for m in range(16)]))
        engine = writer.hooks[0]
    assert isinstance(engine, AlertEngine)
    assert engine.failures == 1
    assert query(synced_db, "SELECT count(*) FROM reading") == [(16,)]
    assert query(synced_db, "SELECT count(*) FROM ingest_reject") == [(0,)]
