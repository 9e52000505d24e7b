"""The rule backtest gives the alerts the engine gives on the same readings: any history of one
sensor, fed through the real ingest writer and alert engine in any split and order, and the
backtest of the same rule over the stored readings, in any chunk size, agree alert by alert.
Silence and event rules, the range cap, the answer cap and day counts in the profile's zone."""

from __future__ import annotations

import itertools
import os
import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts.backtest import Backtest, BacktestAlert, BacktestInvalid, backtest
from alerts.rule_service import RuleDefinition, RuleInvalid, create_rule
from ingest.items import Item
from ioc.db import libpq_url
from tests.support.alerts import engine_writer, feed
from tests.support.ingest import make_item, query, unique

pytestmark = pytest.mark.timeout(600)

T0 = (datetime.now(UTC) - timedelta(hours=8)).replace(second=0, microsecond=0)
REOPEN_S = 300.0
ZONE = "Asia/Ho_Chi_Minh"

# traffic flow has no seeded rule: this one is alone in its group, as the engine runs it
FLOW = RuleDefinition(
    name="backtest: flow above 1000 for 2 min",
    kind="threshold",
    sector_id="traffic",
    metric="flow",
    severity="warning",
    direction="above",
    threshold=1000,
    for_s=120,
    clear_at=800,
)
# below clear, hysteresis band, at the threshold (not breached), breached, far above
VALUES = (500.0, 900.0, 1000.0, 1200.0, 2500.0)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def flow(source: str, samples: list[tuple[float, float]]) -> Item:
    body = [{"ts": int(at(m).timestamp() * 1000), "values": {"flow": v}} for m, v in samples]
    return make_item(f"ioc/v1/traffic/{source}/telemetry", body)


def ensure_rule(db_url: str, definition: RuleDefinition = FLOW) -> int:
    with psycopg.connect(libpq_url(db_url)) as conn:
        row = conn.execute(
            "SELECT id FROM alert_rule WHERE name = %s", (definition.name,)
        ).fetchone()
        if row is not None:
            return int(row[0])
        return create_rule(conn, definition=definition, actor="test").rule_id


def run(db_url: str, definition: RuleDefinition = FLOW, **options: Any) -> Backtest:
    args: dict[str, Any] = {"start": at(-60), "end": at(24 * 60), "timezone": ZONE}
    args.update(options)
    with psycopg.connect(libpq_url(db_url)) as conn:
        return backtest(conn, definition=definition, reopen_window_s=REOPEN_S, **args)


def engine_alerts(db_url: str, rule_id: int, source: str) -> list[tuple[Any, ...]]:
    """The engine's alerts of a source, as the backtest describes them (peak: the highest
    reading of the condition)."""
    return query(
        db_url,
        "SELECT a.source_id, a.condition_started_at, a.condition_fired_at, "
        "a.condition_ended_at, a.severity, a.peak_severity, a.occurrences, "
        "(SELECT max(r.value) FROM reading_named r WHERE r.source_id = a.source_id "
        " AND r.metric = a.metric AND r.ts >= a.condition_started_at "
        " AND r.ts < coalesce(a.condition_ended_at, 'infinity')) "
        "FROM alert a WHERE a.rule_id = %s AND a.source_id = %s AND NOT a.retracted "
        "ORDER BY a.condition_started_at",
        (rule_id, source),
    )


def described(alerts: list[BacktestAlert], source: str) -> list[tuple[Any, ...]]:
    return [
        (
            a.source_id,
            a.started_at,
            a.fired_at,
            a.resolved_at,
            a.severity,
            a.peak_severity,
            a.occurrences,
            a.peak_value,
        )
        for a in alerts
        if a.source_id == source
    ]


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[float, float]]:
    """Readings of one sensor in runs of one value, every 1 to 3 minutes."""
    out: list[tuple[float, float]] = []
    minute = 0
    for _ in range(draw(st.integers(1, 8))):
        value = draw(st.sampled_from(VALUES))
        for _ in range(draw(st.integers(1, 8))):
            out.append((float(minute), value))
            minute += draw(st.integers(1, 3))
    return out


@st.composite
def arrivals(
    draw: st.DrawFn, samples: list[tuple[float, float]]
) -> list[list[tuple[float, float]]]:
    """The same readings in any order, some twice, split into messages."""
    copies = samples + draw(st.lists(st.sampled_from(samples), max_size=len(samples)))
    order = draw(st.permutations(copies))
    top = max(1, len(order) - 1)
    cuts = sorted(draw(st.sets(st.integers(1, top), min_size=min(2, top), max_size=10)))
    bounds = [0, *cuts, len(order)]
    return [list(order[a:b]) for a, b in itertools.pairwise(bounds) if order[a:b]]


@settings(
    max_examples=int(os.environ.get("IOC_BACKTEST_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_the_backtest_gives_the_alerts_the_engine_gave_on_the_same_readings(
    synced_db: str, data: st.DataObject
) -> None:
    rule_id = ensure_rule(synced_db)
    samples = data.draw(histories())
    messages = data.draw(arrivals(samples))
    chunk_rows = data.draw(st.sampled_from([1, 2, 5, 5000]))
    source = unique("bt")
    with engine_writer(synced_db, reopen_window_s=REOPEN_S) as writer:
        feed(writer, *(flow(source, m) for m in messages))
    expected = engine_alerts(synced_db, rule_id, source)
    result = run(synced_db, chunk_rows=chunk_rows, source_id=source)
    assert described(result.alerts, source) == expected
    assert result.total == len(expected)
    assert result.readings == len(set(samples))
    assert result.sources == 1


def test_a_month_of_readings_in_small_chunks_gives_the_alerts_of_one_pass(synced_db: str) -> None:
    sources = [unique("chunks") for _ in range(3)]
    rng = random.Random(7)
    with engine_writer(synced_db) as writer:
        for source in sources:
            samples = [(float(m), rng.choice(VALUES)) for m in range(0, 600, 2)]
            feed(writer, flow(source, samples))
    whole = run(synced_db, chunk_rows=100_000)
    assert whole.total > 10 and whole.sources >= 3
    for rows in (1, 3, 64):
        assert run(synced_db, chunk_rows=rows) == whole


def test_a_hysteresis_condition_and_the_reopen_window(synced_db: str) -> None:
    """1200 for 3 min fires after 2; 900 (between clear and threshold) keeps it; 500 clears
    it; 1200 again 4 min later reopens it (window 5 min); 15 min later a new alert."""
    rule_id = ensure_rule(synced_db)
    source = unique("hyst")
    samples = [(0, 1200), (1, 1200), (2, 2500), (3, 900), (4, 500), (8, 1200), (10, 1200)]
    samples += [(11, 500), (26, 1200), (27, 1200), (28, 1200)]
    with engine_writer(synced_db, reopen_window_s=REOPEN_S) as writer:
        feed(writer, flow(source, [(float(m), float(v)) for m, v in samples]))
    result = run(synced_db, source_id=source)
    assert [
        (a.started_at, a.fired_at, a.resolved_at, a.occurrences, a.peak_value, a.min_value)
        for a in result.alerts
    ] == [
        (at(0), at(2), at(11), 2, 2500.0, 900.0),
        (at(26), at(28), None, 1, 1200.0, 1200.0),
    ]
    assert described(result.alerts, source) == engine_alerts(synced_db, rule_id, source)


def test_a_below_rule_peaks_at_its_lowest_reading(synced_db: str) -> None:
    slow = RuleDefinition(
        name="backtest: slow traffic",
        kind="threshold",
        sector_id="traffic",
        metric="flow",
        severity="critical",
        direction="below",
        threshold=100,
        inclusive=True,
    )
    source = unique("slow")
    with engine_writer(synced_db) as writer:
        feed(writer, flow(source, [(0, 300.0), (1, 100.0), (2, 40.0), (3, 90.0), (4, 300.0)]))
    result = run(synced_db, slow, source_id=source)
    assert [(a.fired_at, a.resolved_at, a.peak_value, a.peak_severity) for a in result.alerts] == [
        (at(1), at(4), 40.0, "critical")
    ]


def test_alerts_beyond_the_cap_are_counted_not_listed(synced_db: str) -> None:
    source = unique("cap")
    samples = [(float(m), 2500.0 if m % 20 < 5 else 500.0) for m in range(200)]
    with engine_writer(synced_db) as writer:
        feed(writer, flow(source, samples))
    result = run(synced_db, source_id=source, max_alerts=3)
    assert result.total == 10 and result.truncated
    assert [a.fired_at for a in result.alerts] == [at(2), at(22), at(42)]
    assert sum(n for _, n in result.per_day) == 10
    assert result.by_severity == {"warning": 10}


def test_days_are_counted_in_the_profile_time_zone(synced_db: str) -> None:
    """An alert at 23:30 UTC belongs to the next day in Asia/Ho_Chi_Minh (UTC+7)."""
    source = unique("zone")
    base = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)
    body = [
        {"ts": int((base + timedelta(minutes=m)).timestamp() * 1000), "values": {"flow": v}}
        for m, v in ((0, 500.0), (30, 2500.0), (31, 2500.0), (32, 2500.0), (33, 500.0))
    ]
    with engine_writer(synced_db) as writer:
        feed(writer, make_item(f"ioc/v1/traffic/{source}/telemetry", body))
    result = run(
        synced_db,
        source_id=source,
        start=datetime(2026, 3, 1, tzinfo=UTC),
        end=datetime(2026, 3, 3, tzinfo=UTC),
    )
    assert result.total == 1
    assert result.per_day == [
        (date(2026, 3, 1), 0),
        (date(2026, 3, 2), 1),
        (date(2026, 3, 3), 0),
    ]


def test_a_silence_rule_finds_gaps_longer_than_the_allowance(synced_db: str) -> None:
    """Flow is expected every 60 s; with a factor of 3 a gap over 180 s is a silence."""
    silence = RuleDefinition(
        name="backtest: silent", kind="silence", sector_id="traffic", severity="warning"
    )
    source = unique("quiet")
    minutes = [0, 1, 2, 3, 10, 11, 12, 14, 16]
    with engine_writer(synced_db) as writer:
        feed(writer, flow(source, [(float(m), 500.0) for m in minutes]))
    result = run(synced_db, silence, source_id=source, end=at(30), now=at(60))
    assert [(a.started_at, a.fired_at, a.resolved_at) for a in result.alerts] == [
        (at(3), at(6), at(10)),
        (at(16), at(19), None),
    ]
    assert result.readings == len(minutes)


def test_an_event_rule_matches_the_stored_events(synced_db: str) -> None:
    events = RuleDefinition(
        name="backtest: accidents",
        kind="event",
        sector_id="traffic",
        severity="warning",
        params={"kinds": ["accident"]},
    )
    source = unique("csgt")
    query(
        synced_db,
        "INSERT INTO source (id, sector_id, name) VALUES (%s, 'traffic', 'CSGT')",
        (source,),
    )
    for minute, kind, severity in (
        (5, "accident", "critical"),
        (6, "accident", "info"),
        (7, "jam", "critical"),
    ):
        query(
            synced_db,
            "INSERT INTO event (sector_id, source_id, kind, severity, title, occurred_at) "
            "VALUES ('traffic', %s, %s, %s, 'x', %s)",
            (source, kind, severity, at(minute)),
        )
    result = run(synced_db, events, source_id=source)
    assert [(a.fired_at, a.severity, a.source_name) for a in result.alerts] == [
        (at(5), "critical", "CSGT")
    ]
    assert result.events == 3


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"start": at(0), "end": at(0)}, "to"),
        ({"start": at(0), "end": at(0) + timedelta(days=31, seconds=1)}, "to"),
        ({"start": datetime(1, 1, 2, tzinfo=UTC), "end": at(0)}, "from"),
        ({"source_id": "nowhere"}, "source_id"),
        ({"district": "atlantis"}, "district"),
    ],
)
def test_a_range_or_scope_that_does_not_hold_names_its_field(
    synced_db: str, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(BacktestInvalid) as caught:
        run(synced_db, **options)
    assert [i.field for i in caught.value.issues] == [field]


def test_a_rule_that_does_not_hold_names_its_field(synced_db: str) -> None:
    bad = FLOW.model_copy(update={"metric": "salinity"})
    with pytest.raises(RuleInvalid) as caught:
        run(synced_db, bad)
    assert not isinstance(caught.value, BacktestInvalid)
    assert [i.field for i in caught.value.issues] == ["metric"]


def test_a_deviation_rule_gives_the_alerts_the_engine_gave(synced_db: str) -> None:
    spike = RuleDefinition(
        name="backtest: unusual flow",
        kind="deviation",
        sector_id="traffic",
        metric="flow",
        severity="info",
        params={"k": 3, "clear_k": 1, "window": 20, "min_samples": 10},
    )
    rule_id = ensure_rule(synced_db, spike)
    source = unique("spike")
    rng = random.Random(3)
    samples = [(float(m), 1000.0 + rng.uniform(-50, 50)) for m in range(60)]
    samples[30] = (30.0, 3000.0)
    samples[31] = (31.0, 2900.0)
    with engine_writer(synced_db, reopen_window_s=REOPEN_S) as writer:
        for i in range(0, len(samples), 7):
            feed(writer, flow(source, samples[i : i + 7]))
    expected = [row[:7] for row in engine_alerts(synced_db, rule_id, source)]
    assert expected
    result = run(synced_db, spike, source_id=source, chunk_rows=4)
    assert [row[:7] for row in described(result.alerts, source)] == expected
    assert all(a.peak_value is None and a.max_value == 3000.0 for a in result.alerts)
