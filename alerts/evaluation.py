"""Threshold evaluation: a pure function of (rule, state, readings) to (new state, transitions).

Time is the readings' own time, so a duration holds the same whether the readings arrive live,
in a gateway's burst or replayed after an outage. Within one call the readings are taken in
time order (exact duplicates once); a reading not newer than the last one evaluated for that
rule and source is stored by ingest but not evaluated again, so a redelivered message, or a late
one, changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from alerts.rules import Rule

Phase = Literal["normal", "pending", "firing"]
TransitionKind = Literal["fire", "clear"]


@dataclass(frozen=True, slots=True)
class State:
    """Where a (rule, source) pair stands: normal, pending (breached, waiting out `for_s`),
    or firing (an alert is due or active)."""

    phase: Phase = "normal"
    pending_since: datetime | None = None
    last_ts: datetime | None = None
    last_value: float | None = None
    # deviation rules: the trailing (exponentially weighted) mean and variance, and how many
    # readings they summarize
    mean: float | None = None
    var: float | None = None
    samples: int = 0


@dataclass(frozen=True, slots=True)
class Transition:
    """The condition started to hold long enough (`fire`) or ended (`clear`) at a reading."""

    kind: TransitionKind
    ts: datetime
    value: float
    since: datetime  # fire: when the breach began; clear: the reading time itself


def evaluate_threshold(
    rule: Rule, state: State, readings: Iterable[tuple[datetime, float]]
) -> tuple[State, list[Transition]]:
    """Run a threshold rule over one source's readings of its metric."""
    return _run(rule, state, readings, deviation=False)


def evaluate_deviation(
    rule: Rule, state: State, readings: Iterable[tuple[datetime, float]]
) -> tuple[State, list[Transition]]:
    """Run a deviation rule: breached when a reading lies more than `k` standard deviations
    from the trailing mean (once `min_samples` readings are known), cleared below `clear_k`.
    Every reading, anomalous or not, then joins the trailing statistics."""
    return _run(rule, state, readings, deviation=True)


def evaluate(
    rule: Rule, state: State, readings: Iterable[tuple[datetime, float]]
) -> tuple[State, list[Transition]]:
    """Evaluate a threshold or deviation rule."""
    return _run(rule, state, readings, deviation=rule.kind == "deviation")


def _run(
    rule: Rule, state: State, readings: Iterable[tuple[datetime, float]], *, deviation: bool
) -> tuple[State, list[Transition]]:
    transitions: list[Transition] = []
    phase, since, last_ts, last_value = (
        state.phase,
        state.pending_since,
        state.last_ts,
        state.last_value,
    )
    mean, var, samples = state.mean, state.var, state.samples
    k, clear_k, window, min_samples = rule.deviation_params()
    for ts, value in sorted(set(readings)):
        if last_ts is not None and ts <= last_ts:
            continue
        last_ts, last_value = ts, value
        if deviation:
            z = _z(value, mean, var, samples, min_samples)
            breached, cleared = z is not None and z > k, z is None or z < clear_k
            mean, var, samples = _ewm(value, mean, var, samples, window)
        else:
            breached, cleared = rule.breached(value), rule.cleared(value)
        if phase == "firing":
            if cleared:
                phase, since = "normal", None
                transitions.append(Transition("clear", ts, value, ts))
            continue
        if not breached:
            phase, since = "normal", None
            continue
        if phase == "normal":
            phase, since = "pending", ts
        assert since is not None  # pending always has its start
        if (ts - since).total_seconds() >= rule.for_s:
            phase = "firing"
            transitions.append(Transition("fire", ts, value, since))
    new = State(
        phase=phase,
        pending_since=since if phase != "normal" else None,
        last_ts=last_ts,
        last_value=last_value,
        mean=mean,
        var=var,
        samples=samples,
    )
    return new, transitions


def _z(
    value: float, mean: float | None, var: float | None, samples: int, min_samples: int
) -> float | None:
    """How many standard deviations `value` lies from the mean (None: not known yet)."""
    if mean is None or var is None or samples < min_samples:
        return None
    if var <= 0:
        return 0.0 if value == mean else math.inf
    return abs(value - mean) / math.sqrt(var)


def _ewm(
    value: float, mean: float | None, var: float | None, samples: int, window: int
) -> tuple[float, float, int]:
    """Add a reading to exponentially weighted statistics spanning about `window` readings
    (a plain running mean and variance while fewer than that are known)."""
    if mean is None or var is None:
        return value, 0.0, 1
    alpha = max(1.0 / (samples + 1), 2.0 / (window + 1))
    delta = value - mean
    mean = mean + alpha * delta
    var = (1 - alpha) * (var + alpha * delta * delta)
    return mean, var, samples + 1


def is_silent(last_reading_at: datetime | None, now: datetime, after_s: float) -> bool:
    """Whether a source that last sent readings at `last_reading_at` is silent at `now`.

    A source that never sent a reading is not silent: nothing was expected of it yet.
    """
    if last_reading_at is None:
        return False
    return (now - last_reading_at).total_seconds() > after_s
