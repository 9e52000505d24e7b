"""The sweeper on a real PostgreSQL: silence, escalation, auto-resolution, several sweepers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from alerts import lifecycle
from alerts.sweeper import SWEEP_LOCK_KEY, SweepConfig, SweepReport, sweep, sweep_config
from ingest.items import Item
from ioc.db import libpq_url
from ioc.settings import Settings
from tests.support.alerts import engine_writer, feed
from tests.support.cli import run_ioc
from tests.support.ingest import make_item, query

pytestmark = pytest.mark.timeout(120)

QUIET = SweepConfig(escalate_max_level=0, auto_resolve_s=0)  # silence only


def salinity(source: str, value: float = 0.5) -> Item:
    return make_item(f"ioc/v1/water/{source}/telemetry", {"values": {"salinity": value}})


def status(source: str) -> Item:
    return make_item(f"ioc/v1/water/{source}/status", "online")


def run_sweep(db_url: str, config: SweepConfig, now: datetime) -> SweepReport:
    with psycopg.connect(libpq_url(db_url)) as conn:
        return sweep(conn, config, now=now)


def silence_alerts(db_url: str) -> list[tuple[object, ...]]:
    return query(
        db_url,
        "SELECT source_id, status, resolved_by FROM alert WHERE rule_kind = 'silence' ORDER BY id",
    )


def test_a_silent_source_gets_one_alert_per_silent_period(synced_db: str) -> None:
    with engine_writer(synced_db) as writer:
        feed(writer, salinity("tram-a"), salinity("tram-b"))
        now = datetime.now(UTC)
        # salinity is expected every 300 s; silent after 3 x 300 s
        assert run_sweep(synced_db, QUIET, now + timedelta(minutes=14)).silenced == 0
        later = now + timedelta(minutes=16)
        assert run_sweep(synced_db, QUIET, later).silenced == 2
        assert run_sweep(synced_db, QUIET, later + timedelta(minutes=5)).silenced == 0
        assert silence_alerts(synced_db) == [("tram-a", "open", None), ("tram-b", "open", None)]
        # a status ping is not a reading: tram-a stays silent; readings bring tram-b back
        feed(writer, status("tram-a"), salinity("tram-b"))
        assert silence_alerts(synced_db) == [
            ("tram-a", "open", None),
            ("tram-b", "resolved", "engine"),
        ]
        # silent again later: a new silent period, a new alert
        assert run_sweep(synced_db, QUIET, later + timedelta(minutes=40)).silenced == 1
    assert [s for s, st, _ in silence_alerts(synced_db) if st == "open"] == ["tram-a", "tram-b"]
    assert len(silence_alerts(synced_db)) == 3


def test_the_shortest_silence_reported_is_a_setting(synced_db: str) -> None:
    """A source reporting every 5 s is silent after 15 s, but never sooner than
    IOC_ALERTS_MIN_SILENCE_S (60 s by default)."""
    with engine_writer(synced_db) as writer:
        feed(writer, salinity("fast-1"))
    query(synced_db, "UPDATE source SET interval_s = 5 WHERE id = 'fast-1'")
    after_30_s = datetime.now(UTC) + timedelta(seconds=30)
    by_default = sweep_config(Settings(alerts_escalate_max_level=0, alerts_auto_resolve_s=0))
    assert by_default.min_silence_s == 60
    assert run_sweep(synced_db, by_default, after_30_s).silenced == 0
    shorter = sweep_config(
        Settings(alerts_escalate_max_level=0, alerts_auto_resolve_s=0, alerts_min_silence_s=10)
    )
    assert run_sweep(synced_db, shorter, after_30_s).silenced == 1
    assert silence_alerts(synced_db) == [("fast-1", "open", None)]


def test_a_source_that_never_sent_readings_is_not_silent(synced_db: str) -> None:
    with engine_writer(synced_db) as writer:
        feed(writer, status("tram-c"))
    assert run_sweep(synced_db, QUIET, datetime.now(UTC) + timedelta(days=1)).silenced == 0


def _critical_alert(db_url: str, source: str) -> int:
    with psycopg.connect(libpq_url(db_url)) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO source (id, sector_id) VALUES (%s, 'water')", (source,))
        rule = query(db_url, "SELECT id FROM alert_rule WHERE seed_key = 'water/events'")[0][0]
        assert isinstance(rule, int)
        cause = lifecycle.Cause(
            key=lifecycle.cause_key(rule, source),
            sector="water",
            severity="critical",
            title="test",
            rule_id=rule,
            rule_kind="event",
            source_id=source,
        )
        alert_id, _ = lifecycle.fire(cur, cause, value=None, at=datetime.now(UTC))
        return alert_id


def test_an_unacknowledged_critical_alert_escalates_every_period_up_to_the_limit(
    synced_db: str,
) -> None:
    config = SweepConfig(escalate_after_s=600, escalate_max_level=2, auto_resolve_s=0)
    taken = _critical_alert(synced_db, "tram-d")
    left = _critical_alert(synced_db, "tram-e")
    with psycopg.connect(libpq_url(synced_db)) as conn:
        lifecycle.acknowledge(conn, taken, actor="operator:an")
    now = datetime.now(UTC)
    assert run_sweep(synced_db, config, now + timedelta(minutes=9)).escalated == 0
    assert run_sweep(synced_db, config, now + timedelta(minutes=11)).escalated == 1
    assert run_sweep(synced_db, config, now + timedelta(minutes=12)).escalated == 0
    assert run_sweep(synced_db, config, now + timedelta(minutes=21)).escalated == 1
    assert run_sweep(synced_db, config, now + timedelta(hours=5)).escalated == 0  # at the limit
    levels = query(synced_db, "SELECT id, escalation_level FROM alert ORDER BY id")
    assert levels == [(taken, 0), (left, 2)]
    kinds = query(
        synced_db, "SELECT kind, detail->>'level' FROM alert_event WHERE alert_id = %s", (left,)
    )
    assert kinds == [("opened", None), ("escalated", "1"), ("escalated", "2")]


def _clocks(db_url: str, alert_id: int) -> tuple[datetime, datetime]:
    ((transitioned, confirmed),) = query(
        db_url, "SELECT transitioned_at, confirmed_at FROM alert WHERE id = %s", (alert_id,)
    )
    return transitioned, confirmed


def test_escalation_counts_from_the_latest_transition_not_the_opening(synced_db: str) -> None:
    config = SweepConfig(escalate_after_s=600, escalate_max_level=3, auto_resolve_s=0)
    alert_id = _critical_alert(synced_db, "tram-g")
    # opened an hour ago, but its latest transition (say a reopening) was just now
    query(
        synced_db,
        "UPDATE alert SET opened_at = opened_at - interval '1 hour' WHERE id = %s",
        (alert_id,),
    )
    transitioned, _ = _clocks(synced_db, alert_id)
    assert run_sweep(synced_db, config, transitioned + timedelta(seconds=599)).escalated == 0
    assert run_sweep(synced_db, config, transitioned + timedelta(seconds=600)).escalated == 1
    # the next level counts from the sweep that escalated, by the sweep's clock
    assert _clocks(synced_db, alert_id)[0] == transitioned + timedelta(seconds=600)
    assert run_sweep(synced_db, config, transitioned + timedelta(seconds=1199)).escalated == 0
    assert run_sweep(synced_db, config, transitioned + timedelta(seconds=1200)).escalated == 1
    details = query(
        synced_db,
        "SELECT detail FROM alert_event WHERE alert_id = %s AND kind = 'escalated' ORDER BY id",
        (alert_id,),
    )
    assert details == [
        ({"level": 1, "unacknowledged_s": 600},),
        ({"level": 2, "unacknowledged_s": 600},),
    ]


def test_alerts_nothing_confirmed_for_long_resolve_themselves(synced_db: str) -> None:
    alert_id = _critical_alert(synced_db, "tram-f")
    config = SweepConfig(escalate_max_level=0, auto_resolve_s=3600)
    now = datetime.now(UTC)
    assert run_sweep(synced_db, config, now + timedelta(minutes=30)).auto_resolved == 0
    assert run_sweep(synced_db, config, now + timedelta(minutes=61)).auto_resolved == 1
    row = query(synced_db, "SELECT status, resolved_by FROM alert WHERE id = %s", (alert_id,))
    assert row == [("resolved", "sweeper")]


def test_auto_resolution_counts_wall_time_from_the_latest_confirmation_or_transition(
    synced_db: str,
) -> None:
    """Not from the time the readings carry: an alert whose last reading is a day old by
    its own clock but was confirmed just now stays."""
    config = SweepConfig(escalate_max_level=0, auto_resolve_s=3600)
    confirmed = _critical_alert(synced_db, "tram-h")
    taken = _critical_alert(synced_db, "tram-i")
    query(
        synced_db,
        "UPDATE alert SET last_seen_at = now() - interval '1 day', "
        "transitioned_at = transitioned_at - interval '2 hours', "
        "confirmed_at = confirmed_at - interval '2 hours'",
    )
    query(synced_db, "UPDATE alert SET confirmed_at = now() WHERE id = %s", (confirmed,))
    with psycopg.connect(libpq_url(synced_db)) as conn:
        lifecycle.acknowledge(conn, taken, actor="operator:an")  # a transition, just now
    quiet = {a: max(_clocks(synced_db, a)) for a in (confirmed, taken)}
    last = max(quiet.values())
    assert (
        run_sweep(synced_db, config, min(quiet.values()) + timedelta(minutes=59)).auto_resolved == 0
    )
    assert run_sweep(synced_db, config, last + timedelta(minutes=60)).auto_resolved == 2
    rows = query(
        synced_db,
        "SELECT alert_id, detail FROM alert_event WHERE kind = 'resolved' ORDER BY alert_id",
    )
    assert rows == [
        (a, {"reason": "timeout", "quiet_s": round((last - quiet[a]).total_seconds()) + 3600})
        for a in sorted(quiet)
    ]


def test_auto_resolution_spares_silence_and_manually_resolved_rules(synced_db: str) -> None:
    config = SweepConfig(escalate_max_level=0, auto_resolve_s=3600)
    alert_id = _critical_alert(synced_db, "tram-j")
    query(
        synced_db,
        "UPDATE alert_rule SET manual_resolve = true WHERE id = "
        "(SELECT rule_id FROM alert WHERE id = %s)",
        (alert_id,),
    )
    later = datetime.now(UTC) + timedelta(days=3)
    assert run_sweep(synced_db, config, later).auto_resolved == 0
    query(
        synced_db,
        "UPDATE alert SET rule_kind = 'silence', rule_id = NULL WHERE id = %s",
        (alert_id,),
    )
    assert run_sweep(synced_db, config, later).auto_resolved == 0
    assert query(synced_db, "SELECT status FROM alert") == [("open",)]


def test_a_second_sweeper_skips_the_round_while_one_sweeps(synced_db: str) -> None:
    with psycopg.connect(libpq_url(synced_db)) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (SWEEP_LOCK_KEY,))
        assert run_sweep(synced_db, QUIET, datetime.now(UTC)).ran is False
    assert run_sweep(synced_db, QUIET, datetime.now(UTC)).ran is True


def test_ioc_alerts_once(synced_db: str) -> None:
    done = run_ioc("alerts", "--once", IOC_DATABASE_URL=synced_db, IOC_PROFILE="mekong")
    assert done.returncode == 0, done.stderr
    assert "sweep: 0 silent source(s), 0 escalated, 0 auto-resolved" in done.stdout
