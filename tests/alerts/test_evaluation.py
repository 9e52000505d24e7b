"""Threshold evaluation without I/O: durations, hysteresis, order and duplicates."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.evaluation import State, Transition, evaluate_deviation, evaluate_threshold, is_silent
from alerts.rules import Rule

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
# salinity: warning at >= 1 g/L held 10 minutes, cleared only below 0.8
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


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def run(
    rule: Rule, readings: list[tuple[datetime, float]], state: State | None = None
) -> tuple[State, list[Transition]]:
    return evaluate_threshold(rule, state or State(), readings)


def test_a_breach_held_for_the_duration_fires_once_at_the_reading_that_completes_it() -> None:
    readings = [(at(m), 1.2) for m in range(16)]  # one a minute, from 08:00 to 08:15
    state, transitions = run(SALINITY, readings)
    assert transitions == [Transition("fire", at(10), 1.2, at(0))]
    assert state.phase == "firing"
    assert state.last_ts == at(15)


def test_a_breach_shorter_than_the_duration_fires_nothing_and_its_timer_restarts() -> None:
    readings = [(at(m), 1.5) for m in range(9)] + [(at(9), 0.9)]
    readings += [(at(m), 1.5) for m in range(10, 19)]
    state, transitions = run(SALINITY, readings)
    assert transitions == []
    assert state.phase == "pending"
    assert state.pending_since == at(10)


def test_hysteresis_keeps_firing_between_clear_value_and_threshold_then_clears_past_it() -> None:
    rule = replace(SALINITY, for_s=0)
    state, fired = run(rule, [(at(0), 1.3)])
    assert [t.kind for t in fired] == ["fire"]
    state, inside = run(rule, [(at(1), 0.95), (at(2), 0.85), (at(3), 1.1), (at(4), 0.8)], state)
    assert inside == [] and state.phase == "firing"  # 0.8 is not past 0.8
    state, cleared = run(rule, [(at(5), 0.79)], state)
    assert cleared == [Transition("clear", at(5), 0.79, at(5))]
    assert state == State("normal", None, at(5), 0.79)


def test_without_a_clear_value_the_alert_clears_when_no_longer_breached() -> None:
    rule = replace(SALINITY, for_s=0, clear_at=None)
    _, transitions = run(rule, [(at(0), 1.0), (at(1), 0.99)])
    assert [t.kind for t in transitions] == ["fire", "clear"]


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
    _, transitions = run(oxygen, [(at(0), 2.0), (at(1), 1.9), (at(2), 2.4), (at(3), 2.6)])
    assert [(t.kind, t.ts) for t in transitions] == [("fire", at(1)), ("clear", at(3))]


def test_readings_already_evaluated_or_late_change_nothing() -> None:
    readings = [(at(m), 1.2) for m in range(12)]
    state, first = run(SALINITY, readings)
    again, second = run(SALINITY, [*readings, (at(5), 0.1)], state)  # redelivery, late reading
    assert len(first) == 1 and second == [] and again == state


def test_silence() -> None:
    assert is_silent(at(0), at(31), 30 * 60)
    assert not is_silent(at(0), at(30), 30 * 60)
    assert not is_silent(None, at(1000), 60)  # never reported: nothing expected yet


# -- properties -----------------------------------------------------------------------------

values = st.floats(min_value=0.0, max_value=3.0, allow_nan=False)
series = st.lists(
    st.tuples(st.integers(min_value=0, max_value=240), values), min_size=0, max_size=60
).map(lambda pairs: [(at(m), v) for m, v in pairs])


@settings(max_examples=300, deadline=None)
@given(series, st.randoms(use_true_random=False), st.integers(min_value=0, max_value=1800))
def test_shuffled_and_duplicated_input_gives_what_sorted_input_gives(
    readings: list[tuple[datetime, float]], rnd: random.Random, for_s: int
) -> None:
    rule = replace(SALINITY, for_s=for_s)
    messy = readings + rnd.sample(readings, k=len(readings) // 2)
    rnd.shuffle(messy)
    assert run(rule, messy) == run(rule, sorted(readings))


@settings(max_examples=300, deadline=None)
@given(series, st.integers(min_value=1, max_value=6))
def test_batches_in_time_order_give_what_one_batch_gives(
    readings: list[tuple[datetime, float]], cuts: int
) -> None:
    ordered = sorted(set(readings))
    size = max(1, len(ordered) // cuts)
    state, transitions = State(), []
    for i in range(0, len(ordered), size):
        state, more = run(SALINITY, ordered[i : i + size], state)
        transitions += more
    assert (state, transitions) == run(SALINITY, ordered)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=0.81, max_value=3.0), min_size=1, max_size=80))
def test_noise_inside_the_hysteresis_band_opens_no_second_alert(noise: list[float]) -> None:
    rule = replace(SALINITY, for_s=0)
    readings = [(at(0), 1.5)] + [(at(1 + i), v) for i, v in enumerate(noise)]
    _, transitions = run(rule, readings)
    assert [t.kind for t in transitions] == ["fire"]


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
    state, transitions = run(rule, readings)
    assert transitions == []
    assert state.phase == "normal"


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


def steady(n: int, start: int = 0) -> list[tuple[datetime, float]]:
    return [(at(start + i), 40.0 + (1.0 if i % 2 else -1.0)) for i in range(n)]


def test_a_reading_far_from_the_trailing_mean_fires_and_a_normal_one_clears() -> None:
    state, transitions = evaluate_deviation(LOAD, State(), [*steady(30), (at(30), 60.0)])
    assert [(t.kind, t.ts) for t in transitions] == [("fire", at(30))]
    assert state.samples == 31
    assert state.mean is not None and 40 < state.mean < 42  # the spike moved it a little
    state, transitions = evaluate_deviation(LOAD, state, [(at(31), 40.5)])
    assert [t.kind for t in transitions] == ["clear"]


def test_no_judgement_before_enough_samples() -> None:
    _, transitions = evaluate_deviation(LOAD, State(), [*steady(5), (at(5), 500.0)])
    assert transitions == []


def test_a_lasting_shift_becomes_the_new_normal() -> None:
    shifted = [(at(30 + i), 80.0) for i in range(60)]
    state, transitions = evaluate_deviation(LOAD, State(), steady(30) + shifted)
    assert [t.kind for t in transitions] == ["fire", "clear"]
    assert state.phase == "normal" and state.mean is not None and state.mean > 75


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
    assert evaluate_deviation(LOAD, State(), messy) == evaluate_deviation(
        LOAD, State(), sorted(readings)
    )
