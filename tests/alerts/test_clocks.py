"""Operator clocks through the real ingest writer, alert engine and sweeper: escalation and
auto-resolution run on wall time from the latest transition or confirmation, whatever time the
readings carry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from alerts.sweeper import SweepConfig, SweepReport, sweep
from ingest.items import Item
from ioc.db import libpq_url
from tests.support.alerts import engine_writer, feed
from tests.support.ingest import make_item, query

pytestmark = pytest.mark.timeout(120)

DAY_S = 86_400.0
ESCALATE_AFTER_S = 900.0


def run_sweep(db_url: str, config: SweepConfig, now: datetime) -> SweepReport:
    with psycopg.connect(libpq_url(db_url)) as conn:
        return sweep(conn, config, now=now)


def telemetry(source: str, metric: str, readings: list[tuple[datetime, float]]) -> Item:
    body = [{"ts": int(ts.timestamp() * 1000), "values": {metric: v}} for ts, v in readings]
    return make_item(f"ioc/v1/water/{source}/telemetry", body)


def threshold_alerts(db_url: str) -> list[tuple[Any, ...]]:
    return query(
        db_url,
        "SELECT id, status, resolved_by FROM alert WHERE rule_kind = 'threshold' ORDER BY id",
    )


def event_kinds(db_url: str, alert_id: int) -> list[str]:
    rows = query(
        db_url, "SELECT kind FROM alert_event WHERE alert_id = %s ORDER BY id", (alert_id,)
    )
    return [str(r[0]) for r in rows]


def quiet_since(db_url: str, alert_id: int) -> datetime:
    ((at,),) = query(
        db_url,
        "SELECT greatest(confirmed_at, transitioned_at) FROM alert WHERE id = %s",
        (alert_id,),
    )
    assert isinstance(at, datetime)
    return at


def test_old_readings_that_keep_confirming_an_alert_never_let_it_time_out(
    synced_db: str,
) -> None:
    """Rainfall over 24 h above 100 mm (warning, no duration) from readings stamped 25 h ago,
    2 s apart: auto-resolution after 24 h counts from the latest confirmation by wall time,
    not from the readings' own time, so the alert is opened once and stays open."""
    config = SweepConfig(escalate_max_level=0, auto_resolve_s=DAY_S)
    stamped = (datetime.now(UTC) - timedelta(hours=25)).replace(microsecond=0)
    with engine_writer(synced_db) as writer:
        for i in range(6):
            if i == 5:
                # as if the first five had come almost a day of wall time ago
                query(
                    synced_db,
                    "UPDATE alert SET confirmed_at = confirmed_at - interval '23 hours', "
                    "transitioned_at = transitioned_at - interval '23 hours' "
                    "WHERE rule_kind = 'threshold'",
                )
            at = stamped + timedelta(seconds=2 * i)
            feed(writer, telemetry("mua-1", "rainfall_24h", [(at, 120.0 + i)]))
            now = datetime.now(UTC)
            assert run_sweep(synced_db, config, now).auto_resolved == 0
            # the sixth reading confirmed it: not quiet for a day even two hours on
            later = now + timedelta(hours=2) if i == 5 else now
            assert run_sweep(synced_db, config, later).auto_resolved == 0
            ((alert_id, alert_status, _),) = threshold_alerts(synced_db)
            assert alert_status == "open"
    assert event_kinds(synced_db, alert_id) == ["opened"]
    ((last_seen,),) = query(synced_db, "SELECT last_seen_at FROM alert WHERE id = %s", (alert_id,))
    assert last_seen == stamped + timedelta(seconds=10)  # reading time, 25 h old

    # nothing confirms it any more: resolved once a day of wall time has passed, and only once
    quiet = quiet_since(synced_db, alert_id)
    assert quiet > datetime.now(UTC) - timedelta(minutes=5)  # the sixth reading's wall time
    assert run_sweep(synced_db, config, quiet + timedelta(seconds=DAY_S - 1)).auto_resolved == 0
    assert run_sweep(synced_db, config, quiet + timedelta(seconds=DAY_S)).auto_resolved == 1
    assert run_sweep(synced_db, config, quiet + timedelta(seconds=2 * DAY_S)).auto_resolved == 0
    assert threshold_alerts(synced_db) == [(alert_id, "resolved", "sweeper")]
    assert event_kinds(synced_db, alert_id) == ["opened", "resolved"]
    ((detail,),) = query(
        synced_db,
        "SELECT detail FROM alert_event WHERE alert_id = %s AND kind = 'resolved'",
        (alert_id,),
    )
    assert detail == {"reason": "timeout", "quiet_s": DAY_S}


def test_a_reopened_critical_alert_escalates_from_its_reopening_one_level_at_a_time(
    synced_db: str,
) -> None:
    """Salinity at or above 4 ‰ for 15 min (critical): opened, cleared by a reading, and
    reopened within the window. Its first opening was 45 minutes ago, but escalation counts
    from the reopening, one level per `escalate_after_s` and never more than one per sweep."""
    config = SweepConfig(escalate_after_s=ESCALATE_AFTER_S, escalate_max_level=3, auto_resolve_s=0)
    t0 = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)

    def breach(start: datetime) -> Item:
        return telemetry(
            "tram-s", "salinity", [(start + timedelta(minutes=m), 4.6) for m in range(16)]
        )

    with engine_writer(synced_db, reopen_window_s=3600) as writer:
        feed(writer, breach(t0))
        feed(writer, telemetry("tram-s", "salinity", [(t0 + timedelta(minutes=16), 0.5)]))
        feed(writer, breach(t0 + timedelta(minutes=20)))
    ((alert_id, escalation_level),) = query(
        synced_db, "SELECT id, escalation_level FROM alert WHERE severity = 'critical'"
    )
    assert escalation_level == 0
    kinds = event_kinds(synced_db, alert_id)
    assert kinds[0] == "opened"
    assert kinds[-2:] == ["resolved", "reopened"]
    query(
        synced_db,
        "UPDATE alert SET opened_at = now() - interval '45 minutes' WHERE id = %s",
        (alert_id,),
    )
    ((reopened,),) = query(
        synced_db, "SELECT transitioned_at FROM alert WHERE id = %s", (alert_id,)
    )
    now = datetime.now(UTC)
    assert now >= reopened

    def level_after_sweep(at: datetime) -> tuple[int, int]:
        report = run_sweep(synced_db, config, at)
        ((level,),) = query(
            synced_db, "SELECT escalation_level FROM alert WHERE id = %s", (alert_id,)
        )
        return report.escalated, level

    period = timedelta(seconds=ESCALATE_AFTER_S)
    assert level_after_sweep(now) == (0, 0)  # 45 minutes since opening, none since reopening
    assert level_after_sweep(now) == (0, 0)
    first = now + period
    assert level_after_sweep(first) == (1, 1)
    assert level_after_sweep(first) == (0, 1)  # the same moment again: nothing more
    assert level_after_sweep(first + period - timedelta(seconds=1)) == (0, 1)
    # four periods without a sweep: still one level, and the next counts from this sweep
    second = first + 4 * period
    assert level_after_sweep(second) == (1, 2)
    assert level_after_sweep(second + period - timedelta(seconds=1)) == (0, 2)
    third = second + period
    assert level_after_sweep(third) == (1, 3)
    assert level_after_sweep(third + 10 * period) == (0, 3)  # the limit
    rows = query(
        synced_db,
        "SELECT detail->>'level', detail->>'unacknowledged_s' FROM alert_event "
        "WHERE alert_id = %s AND kind = 'escalated' ORDER BY id",
        (alert_id,),
    )
    assert rows == [
        ("1", str(round((first - reopened).total_seconds()))),
        ("2", str(round(4 * ESCALATE_AFTER_S))),
        ("3", str(round(ESCALATE_AFTER_S))),
    ]
