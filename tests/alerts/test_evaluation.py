"""Group evaluation without I/O: durations, hysteresis, severities rising and falling within one
condition, order and duplicates, deviation."""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.evaluation import Change, Outcome, Reading, State, is_silent, run_group
from alerts.rules import SEVERITY_RANK, Group, Rule

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
# salinity: warning at >= 1 ‰ held 10 minutes, cleared only below 0.8
SALINITY = Rule(
    id=1,
    name="salinity warning",
    kind="threshold",
    sector="water",
    severity="warning",
    metric="salinity",
    direction="above",
    value=1.0,
    inclusive=True,
    for_s=600,
    clear_at=0.8,
)
# ... and critical at >= 4 ‰ held 10 minutes, cleared only below 3.5: one condition with it
CRITICAL = replace(
    SALINITY, id=2, name="salinity critical", severity="critical", value=4.0, clear_at=3.5
)
SALINE = Group("threshold:water:salinity:above:sector", (SALINITY, CRITICAL))


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def run(
    rules: Rule | Group, readings: list[Reading], states: Mapping[int, State] | None = None
) -> Outcome:
    group = rules if isinstance(rules, Group) else Group("k", (rules,))
    return run_group(group, states or {}, readings)


def kinds(changes: list[Change]) -> list[tuple[str, datetime, str | None]]:
    return [(c.kind, c.ts, c.severity) for c in changes]


# -- one rule -------------------------------------------------------------------------------


def test_a_breach_held_for_the_duration_fires_once_at_the_reading_that_completes_it() -> None:
    readings = [(at(m), 1.2) for m in range(16)]  # one a minute, from 08:00 to 08:15
    outcome = run(SALINITY, readings)
    assert outcome.changes == [Change("fire", at(10), 1.2, at(0), SALINITY)]
    state = outcome.states[SALINITY.id]
    assert state.phase == "firing"
    assert state.last_ts == at(15)


def test_a_breach_shorter_than_the_duration_fires_nothing_and_its_timer_restarts() -> None:
    readings = [(at(m), 1.5) for m in range(9)] + [(at(9), 0.9)]
    readings += [(at(m), 1.5) for m in range(10, 19)]
    outcome = run(SALINITY, readings)
    assert outcome.changes == []
    assert outcome.states[SALINITY.id].phase == "pending"
    assert outcome.states[SALINITY.id].pending_since == at(10)


def test_a_pending_timer_carries_over_from_one_run_to_the_next() -> None:
    first = run(SALINITY, [(at(m), 1.5) for m in range(6)])
    assert first.changes == [] and first.states[SALINITY.id].pending_since == at(0)
    second = run(SALINITY, [(at(m), 1.5) for m in range(6, 12)], first.states)
    assert second.changes == [Change("fire", at(10), 1.5, at(0), SALINITY)]


def test_hysteresis_keeps_firing_between_clear_value_and_threshold_then_clears_past_it() -> None:
    rule = replace(SALINITY, for_s=0)
    fired = run(rule, [(at(0), 1.3)])
    assert kinds(fired.changes) == [("fire", at(0), "warning")]
    inside = run(rule, [(at(1), 0.95), (at(2), 0.85), (at(3), 1.1), (at(4), 0.8)], fired.states)
    assert inside.changes == []  # 0.8 is not past 0.8
    assert inside.states[rule.id].phase == "firing"
    cleared = run(rule, [(at(5), 0.79)], inside.states)
    [change] = cleared.changes
    assert (change.kind, change.ts, change.value, change.since, change.rule) == (
        "clear",
        at(5),
        0.79,
        at(0),  # the condition began with the reading at 08:00
        None,
    )
    assert cleared.states[rule.id] == State("normal", None, at(5), 0.79)


def test_without_a_clear_value_the_alert_clears_when_no_longer_breached() -> None:
    rule = replace(SALINITY, for_s=0, clear_at=None)
    outcome = run(rule, [(at(0), 1.0), (at(1), 0.99)])
    assert [c.kind for c in outcome.changes] == ["fire", "clear"]


def test_below_rules_and_strict_operators() -> None:
    oxygen = Rule(
        id=2,
        name="dissolved oxygen low",
        kind="threshold",
        sector="environment",
        severity="critical",
        metric="do",
        direction="below",
        value=2.0,
        clear_at=2.5,
    )
    assert oxygen.operator == "<"
    outcome = run(oxygen, [(at(0), 2.0), (at(1), 1.9), (at(2), 2.4), (at(3), 2.6)])
    assert [(c.kind, c.ts) for c in outcome.changes] == [("fire", at(1)), ("clear", at(3))]
    # inclusive: 2.0 itself breaches; without a clear value, 2.0 holds and 2.01 clears
    at_most = replace(oxygen, inclusive=True, clear_at=None)
    assert at_most.operator == "<="
    outcome = run(at_most, [(at(0), 2.0), (at(1), 2.0), (at(2), 2.01)])
    assert [(c.kind, c.ts) for c in outcome.changes] == [("fire", at(0)), ("clear", at(2))]


def test_a_strict_above_rule_holds_at_its_threshold_only_past_it() -> None:
    strict = replace(SALINITY, inclusive=False, for_s=0, clear_at=None)
    assert strict.operator == ">"
    outcome = run(strict, [(at(0), 1.0), (at(1), 1.01), (at(2), 1.0)])
    assert [(c.kind, c.ts) for c in outcome.changes] == [("fire", at(1)), ("clear", at(2))]


def test_silence() -> None:
    assert is_silent(at(0), at(31), 30 * 60)
    assert not is_silent(at(0), at(30), 30 * 60)
    assert not is_silent(None, at(1000), 60)  # never reported: nothing expected yet


# -- a group: warning and critical on one sensor ---------------------------------------------

# 08:00 normal, 08:01 warning level, 08:05 critical level (until 08:16), then falling back
RISE = [(at(0), 0.9)] + [(at(m), 2.0) for m in range(1, 5)] + [(at(m), 4.5) for m in range(5, 17)]
FALL = [(at(17), 3.7), (at(18), 3.0), (at(19), 0.9), (at(20), 0.7)]


def test_rising_to_critical_fires_at_warning_then_raises_to_critical() -> None:
    outcome = run(SALINE, RISE)
    assert outcome.changes == [
        Change("fire", at(11), 4.5, at(1), SALINITY),  # warning held 10 min from 08:01
        Change("raise", at(15), 4.5, at(1), CRITICAL),  # critical held 10 min from 08:05
    ]
    assert {i: s.phase for i, s in outcome.states.items()} == {1: "firing", 2: "firing"}


def test_falling_back_lowers_to_warning_and_clears_below_its_clear_value() -> None:
    outcome = run(SALINE, RISE + FALL)
    assert kinds(outcome.changes) == [
        ("fire", at(11), "warning"),
        ("raise", at(15), "critical"),
        # 3.7 is between critical's clear value and threshold: still critical
        ("lower", at(18), "warning"),  # 3.0 is past 3.5: back to warning
        # 0.9 is between warning's clear value and threshold: still warning
        ("clear", at(20), None),
    ]
    lower, clear = outcome.changes[2:]
    assert (lower.value, lower.rule) == (3.0, SALINITY)
    assert (clear.value, clear.rule) == (0.7, None)
    assert clear.last == (at(19), 0.9)  # the last reading while the condition held
    assert {i: s.phase for i, s in outcome.states.items()} == {1: "normal", 2: "normal"}


def test_every_change_of_one_condition_carries_its_first_breaching_reading() -> None:
    outcome = run(SALINE, RISE + FALL)
    assert [c.since for c in outcome.changes] == [at(1)] * 4
    # a second condition later has its own start
    again = run(SALINE, [(at(m), 1.5) for m in range(30, 41)], outcome.states)
    assert again.changes == [Change("fire", at(40), 1.5, at(30), SALINITY)]


def test_a_reading_between_critical_clear_value_and_threshold_keeps_critical() -> None:
    fired = run(SALINE, RISE)
    band = [(at(17), 3.9), (at(18), 3.5), (at(19), 3.51), (at(20), 3.99)]
    outcome = run(SALINE, band, fired.states)
    assert outcome.changes == []
    assert outcome.states[CRITICAL.id].phase == "firing"
    assert outcome.last_firing == (at(20), 3.99)


def test_the_condition_holds_at_a_milder_level_while_that_rule_waits_out_its_duration() -> None:
    """Critical (no duration) fires at once; it clears while warning (10 minutes) is still
    waiting: the alert stays, lowered to warning, and resolves below the lowest clear level."""
    critical = replace(CRITICAL, for_s=0)
    group = Group("k", (SALINITY, critical))
    readings = [(at(0), 5.0)] + [(at(m), 2.0) for m in range(1, 15)] + [(at(15), 0.5)]
    outcome = run(group, readings)
    assert outcome.changes == [
        Change("fire", at(0), 5.0, at(0), critical),
        Change("lower", at(1), 2.0, at(0), SALINITY),
        Change("clear", at(15), 0.5, at(0), None, (at(14), 2.0)),
    ]
    # the same in two runs, the group's hold carried by `active`
    first = run_group(group, {}, readings[:3])
    assert first.held
    second = run_group(group, first.states, readings[3:], active=first.held)
    assert first.changes + second.changes == outcome.changes


def test_a_critical_rule_without_duration_fires_at_critical_at_once() -> None:
    critical = replace(CRITICAL, for_s=0)
    group = Group("k", (SALINITY, critical))
    readings = [(at(m), 5.0) for m in range(12)] + [(at(12), 3.0)]
    outcome = run(group, readings)
    assert outcome.changes == [
        Change("fire", at(0), 5.0, at(0), critical),
        # warning's own timer completed at 08:10 beneath it: no change then, and it takes over
        # when critical clears
        Change("lower", at(12), 3.0, at(0), SALINITY),
    ]


def test_last_firing_is_the_newest_reading_at_which_the_group_was_firing() -> None:
    assert run(SALINE, RISE[:11]).last_firing is None  # pending only
    assert run(SALINE, RISE).last_firing == (at(16), 4.5)
    cleared = run(SALINE, RISE + FALL + [(at(21), 0.5)])
    assert cleared.last_firing == (at(19), 0.9)
    # firing from an earlier run and cleared by this run's first reading: not firing here
    fired = run(SALINE, RISE + FALL[:3])
    assert run(SALINE, FALL[3:], fired.states).last_firing is None


def test_a_clear_at_the_first_reading_of_a_run_reports_the_last_reading_while_it_held() -> None:
    fired = run(SALINE, RISE + FALL[:3])  # ends in warning, last reading 0.9 at 08:19
    outcome = run(SALINE, FALL[3:], fired.states)
    [clear] = outcome.changes
    assert (clear.kind, clear.ts, clear.since) == ("clear", at(20), at(1))
    assert clear.last == (at(19), 0.9)


def test_each_rule_of_a_group_keeps_its_own_timer() -> None:
    # critical level reached at 08:05 while warning has been pending since 08:00: warning
    # fires at 08:10, critical (which started at 08:05) only at 08:15
    readings = [(at(m), 2.0) for m in range(5)] + [(at(m), 4.2) for m in range(5, 16)]
    outcome = run(SALINE, readings)
    assert kinds(outcome.changes) == [("fire", at(10), "warning"), ("raise", at(15), "critical")]
    assert outcome.states[SALINITY.id].pending_since == at(0)
    assert outcome.states[CRITICAL.id].pending_since == at(5)


def test_both_rules_completing_at_one_reading_fire_at_the_highest_severity() -> None:
    outcome = run(SALINE, [(at(m), 4.5) for m in range(11)])
    assert outcome.changes == [Change("fire", at(10), 4.5, at(0), CRITICAL)]


# -- properties -----------------------------------------------------------------------------

values = st.floats(min_value=0.0, max_value=3.0, allow_nan=False)
series = st.lists(
    st.tuples(st.integers(min_value=0, max_value=240), values), min_size=0, max_size=60
).map(lambda pairs: [(at(m), v) for m, v in pairs])
# for the group: both thresholds, with their limits and clear values drawn often
group_values = st.one_of(
    st.floats(min_value=0.0, max_value=6.0, allow_nan=False),
    st.sampled_from([0.8, 1.0, 3.5, 4.0]),
)
group_series = st.lists(
    st.tuples(st.integers(min_value=0, max_value=240), group_values), min_size=0, max_size=60
).map(lambda pairs: [(at(m), v) for m, v in pairs])
durations = st.integers(min_value=0, max_value=1800)


def saline(warning_for_s: int, critical_for_s: int) -> Group:
    return Group(
        SALINE.key,
        (replace(SALINITY, for_s=warning_for_s), replace(CRITICAL, for_s=critical_for_s)),
    )


@settings(max_examples=300, deadline=None)
@given(series, st.randoms(use_true_random=False), durations)
def test_shuffled_and_duplicated_input_gives_what_sorted_input_gives(
    readings: list[Reading], rnd: random.Random, for_s: int
) -> None:
    rule = replace(SALINITY, for_s=for_s)
    messy = readings + rnd.sample(readings, k=len(readings) // 2)
    rnd.shuffle(messy)
    assert run(rule, messy) == run(rule, sorted(readings))


@settings(max_examples=300, deadline=None)
@given(group_series, st.randoms(use_true_random=False), durations, durations)
def test_a_group_ignores_order_and_duplicates_within_a_run(
    readings: list[Reading], rnd: random.Random, warning_for_s: int, critical_for_s: int
) -> None:
    group = saline(warning_for_s, critical_for_s)
    messy = readings + rnd.sample(readings, k=len(readings) // 2)
    rnd.shuffle(messy)
    assert run(group, messy) == run(group, sorted(readings))


def run_in_chunks(group: Group, ordered: list[Reading], cuts: list[int]) -> Outcome:
    states: Mapping[int, State] = {}
    changes: list[Change] = []
    last_firing: Reading | None = None
    held = False
    bounds = [0, *sorted(set(cuts)), len(ordered)]
    for lo, hi in itertools.pairwise(bounds):
        outcome = run_group(group, states, ordered[lo:hi], active=held)
        states, changes = outcome.states, changes + outcome.changes
        last_firing = outcome.last_firing or last_firing
        held = outcome.held
    return Outcome(dict(states), changes, last_firing, held)


@settings(max_examples=300, deadline=None)
@given(series, st.lists(st.integers(min_value=0, max_value=60), max_size=6))
def test_batches_in_time_order_give_what_one_batch_gives(
    readings: list[Reading], cuts: list[int]
) -> None:
    group = Group("k", (SALINITY,))
    ordered = sorted(set(readings))
    cuts = [c for c in cuts if c <= len(ordered)]
    assert run_in_chunks(group, ordered, cuts) == run(group, ordered)


@settings(max_examples=300, deadline=None)
@given(group_series, st.lists(st.integers(min_value=0, max_value=60), max_size=6), durations)
def test_a_group_run_in_time_ordered_chunks_gives_what_one_run_gives(
    readings: list[Reading], cuts: list[int], critical_for_s: int
) -> None:
    group = saline(600, critical_for_s)
    ordered = sorted(set(readings))
    cuts = [c for c in cuts if c <= len(ordered)]
    assert run_in_chunks(group, ordered, cuts) == run(group, ordered)


@settings(max_examples=300, deadline=None)
@given(group_series, durations, durations)
def test_a_group_follows_the_most_severe_of_its_rules_each_judged_alone(
    readings: list[Reading], warning_for_s: int, critical_for_s: int
) -> None:
    group = saline(warning_for_s, critical_for_s)
    ordered = sorted(set(readings))
    # each rule alone: its phase after each reading
    phase_after: dict[int, list[str]] = {}
    for rule in group.rules:
        assert run(rule, ordered).states[rule.id] == run(group, ordered).states[rule.id]
        phase_after[rule.id] = [
            run(rule, ordered[: k + 1]).states[rule.id].phase for k in range(len(ordered))
        ]
    expected: list[tuple[str, datetime, float, Rule | None]] = []
    top: Rule | None = None
    for k, (ts, value) in enumerate(ordered):
        now = [r for r in group.rules if phase_after[r.id][k] == "firing"]
        waiting = [r for r in group.rules if phase_after[r.id][k] != "normal"]
        if now:  # the most severe firing rule
            new = max(now, key=lambda r: SEVERITY_RANK[r.severity])
        elif top is not None and waiting:  # held: the mildest rule still waiting
            new = min(waiting, key=lambda r: SEVERITY_RANK[r.severity])
        else:
            new = None
        if new is not top:
            if top is None:
                expected.append(("fire", ts, value, new))
            elif new is None:
                expected.append(("clear", ts, value, None))
            elif SEVERITY_RANK[new.severity] > SEVERITY_RANK[top.severity]:
                expected.append(("raise", ts, value, new))
            else:
                expected.append(("lower", ts, value, new))
        top = new
    outcome = run(group, ordered)
    assert [(c.kind, c.ts, c.value, c.rule) for c in outcome.changes] == expected
    # one condition, from fire to clear, keeps its start: its first breaching reading, the
    # first of the unbroken run of readings at the warning level that ends with the fire
    warning = group.rules[0]
    since: datetime | None = None
    for change in outcome.changes:
        if change.kind == "fire":
            since = change.since
            first = ordered.index((change.ts, change.value))
            while first > 0 and warning.breached(ordered[first - 1][1]):
                first -= 1
            assert since == ordered[first][0]
        else:
            assert change.since == since
        if change.kind == "clear":
            assert change.last is not None and change.last in ordered
            assert since is not None and since <= change.last[0] < change.ts
            since = None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=0.81, max_value=3.0), min_size=1, max_size=80))
def test_noise_inside_the_hysteresis_band_opens_no_second_alert(noise: list[float]) -> None:
    rule = replace(SALINITY, for_s=0)
    readings = [(at(0), 1.5)] + [(at(1 + i), v) for i, v in enumerate(noise)]
    outcome = run(rule, readings)
    assert [c.kind for c in outcome.changes] == ["fire"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=3.5, max_value=10.0), min_size=1, max_size=80))
def test_noise_inside_the_critical_band_keeps_critical_without_changes(
    noise: list[float],
) -> None:
    fired = run(SALINE, RISE)
    outcome = run(SALINE, [(at(17 + i), v) for i, v in enumerate(noise)], fired.states)
    assert outcome.changes == []
    assert outcome.states[CRITICAL.id].phase == "firing"


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=60, max_value=3600),
    st.lists(st.floats(min_value=1.0, max_value=3.0), min_size=1, max_size=50),
    st.data(),
)
def test_a_condition_shorter_than_its_duration_opens_none(
    for_s: int, breach: list[float], data: st.DataObject
) -> None:
    rule = replace(SALINITY, for_s=for_s)
    # breaching readings spread over less than for_s, then back to normal
    offsets = sorted(
        data.draw(st.lists(st.integers(0, for_s - 1), min_size=len(breach), max_size=len(breach)))
    )
    readings = [(T0 + timedelta(seconds=o), v) for o, v in zip(offsets, breach, strict=True)]
    readings.append((T0 + timedelta(seconds=for_s - 0.5), 0.5))
    outcome = run(rule, readings)
    assert outcome.changes == []
    assert outcome.states[rule.id].phase == "normal"


# -- deviation ------------------------------------------------------------------------------

LOAD = Rule(
    id=3,
    name="hospital load unusual",
    kind="deviation",
    sector="health",
    severity="warning",
    metric="er_patients",
    params={"k": 3.0, "clear_k": 2.0, "window": 20, "min_samples": 10},
)
UNUSUAL = Group("rule:3", (LOAD,))


def steady(n: int, start: int = 0) -> list[Reading]:
    return [(at(start + i), 40.0 + (1.0 if i % 2 else -1.0)) for i in range(n)]


def test_a_reading_far_from_the_trailing_mean_fires_and_a_normal_one_clears() -> None:
    outcome = run(UNUSUAL, [*steady(30), (at(30), 60.0)])
    assert outcome.changes == [Change("fire", at(30), 60.0, at(30), LOAD)]
    state = outcome.states[LOAD.id]
    assert state.samples == 31
    assert state.mean is not None and 40 < state.mean < 42  # the spike moved it a little
    outcome = run(UNUSUAL, [(at(31), 40.5)], outcome.states)
    assert [(c.kind, c.ts, c.since) for c in outcome.changes] == [("clear", at(31), at(30))]


def test_no_judgement_before_enough_samples() -> None:
    outcome = run(UNUSUAL, [*steady(5), (at(5), 500.0)])
    assert outcome.changes == []


def test_a_lasting_shift_becomes_the_new_normal() -> None:
    shifted = [(at(30 + i), 80.0) for i in range(60)]
    outcome = run(UNUSUAL, steady(30) + shifted)
    assert [c.kind for c in outcome.changes] == ["fire", "clear"]
    state = outcome.states[LOAD.id]
    assert state.phase == "normal" and state.mean is not None and state.mean > 75


def test_deviation_readings_already_judged_or_late_change_nothing() -> None:
    readings = [*steady(30), (at(30), 60.0)]
    first = run(UNUSUAL, readings)
    # redelivery, and a late spike: neither judged again nor added to the statistics
    again = run(UNUSUAL, [*readings, (at(5), 500.0)], first.states)
    assert len(first.changes) == 1
    assert again.changes == [] and again.states == first.states


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 300), st.floats(0, 100)), max_size=80),
    st.randoms(use_true_random=False),
)
def test_deviation_ignores_order_and_duplicates(
    pairs: list[tuple[int, float]], rnd: random.Random
) -> None:
    readings = [(at(m), v) for m, v in pairs]
    messy = readings + rnd.sample(readings, k=len(readings) // 2)
    rnd.shuffle(messy)
    assert run(UNUSUAL, messy) == run(UNUSUAL, sorted(readings))


@pytest.mark.parametrize("cut", [10, 30, 31, 50])
def test_deviation_run_in_two_batches_gives_what_one_batch_gives(cut: int) -> None:
    readings = [*steady(30), (at(30), 60.0), *steady(20, start=31)]
    first = run(UNUSUAL, readings[:cut])
    second = run(UNUSUAL, readings[cut:], first.states)
    whole = run(UNUSUAL, readings)
    assert first.changes + second.changes == whole.changes
    assert second.states == whole.states
