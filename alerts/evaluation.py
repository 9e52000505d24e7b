"""Threshold evaluation: a pure function of (rule, state, readings) to (new state, transitions).

Time is the readings' own time, so a duration holds the same whether the readings arrive live,
in a gateway's burst or replayed after an outage. Within one call the readings are taken in
time order (exact duplicates once); a reading not newer than the last one evaluated for that
rule and source is stored by ingest but not evaluated again, so a redelivered message, or a late
one, changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
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
    transitions: list[Transition] = []
    phase, since, last_ts, last_value = (
        state.phase,
        state.pending_since,
        state.last_ts,
        state.last_value,
    )
    for ts, value in sorted(set(readings)):
        if last_ts is not None and ts <= last_ts:
            continue
        last_ts, last_value = ts, value
        if phase == "firing":
            if rule.cleared(value):
                phase, since = "normal", None
                transitions.append(Transition("clear", ts, value, ts))
            continue
        if not rule.breached(value):
            phase, since = "normal", None
            continue
        if phase == "normal":
            phase, since = "pending", ts
        assert since is not None  # pending always has its start
        if (ts - since).total_seconds() >= rule.for_s:
            phase = "firing"
            transitions.append(Transition("fire", ts, value, since))
    new = replace(
        state,
        phase=phase,
        pending_since=since if phase != "normal" else None,
        last_ts=last_ts,
        last_value=last_value,
    )
    return new, transitions


def is_silent(last_reading_at: datetime | None, now: datetime, after_s: float) -> bool:
    """Whether a source that last sent readings at `last_reading_at` is silent at `now`.

    A source that never sent a reading is not silent: nothing was expected of it yet.
    """
    if last_reading_at is None:
        return False
    return (now - last_reading_at).total_seconds() > after_s
