"""Threshold evaluation: pure functions of (rules, state, readings) to (new state, changes).

Time is the readings' own time, so a duration holds the same whether the readings arrive live,
in a gateway's burst or replayed after an outage. A group's rules (warning and critical on one
metric of one source) each run their own timer; the group's severity at a reading is that of
its most severe firing rule, and the changes of that severity are what the alert follows:
`fire` (none to some), `raise`, `lower`, `clear` (some to none).

The engine hands over readings in time order; a reading older than ones already judged is
handled by judging the stored readings around it again from a normal state (`alerts.engine`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from alerts.rules import SEVERITY_RANK, Group, Rule

Phase = Literal["normal", "pending", "firing"]
ChangeKind = Literal["fire", "raise", "lower", "clear"]
Reading = tuple[datetime, float]


@dataclass(frozen=True, slots=True)
class State:
    """Where a (rule, source) pair stands: normal, pending (breached, waiting out `for_s`),
    or firing (its condition held long enough)."""

    phase: Phase = "normal"
    pending_since: datetime | None = None
    last_ts: datetime | None = None
    last_value: float | None = None
    # deviation rules: the trailing (exponentially weighted) mean and variance, and how many
    # readings they summarize
    mean: float | None = None
    var: float | None = None
    samples: int = 0


NORMAL = State()


@dataclass(frozen=True, slots=True)
class Change:
    """The group's severity changed at a reading."""

    kind: ChangeKind
    ts: datetime
    value: float
    since: datetime  # when the condition began (its first breaching reading)
    rule: Rule | None  # the most severe firing rule after the change (None: cleared)
    last: Reading | None = None  # clear: the last reading while it held

    @property
    def severity(self) -> str | None:
        return None if self.rule is None else self.rule.severity


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a run over a group's readings gave."""

    states: dict[int, State]
    changes: list[Change]
    last_firing: Reading | None  # the newest reading at which the group held
    held: bool = False  # whether the group holds after the last reading


def run_group(
    group: Group,
    states: Mapping[int, State],
    readings: Iterable[Reading],
    *,
    active: bool = False,
) -> Outcome:
    """Run a group's rules over one source's readings of its metric, in time order (exact
    duplicates once). A deviation group skips readings not newer than the last it judged.

    Once a rule fired, the group holds until every rule is back to normal: its level is the
    most severe firing rule, else (a more severe rule cleared while a milder one is still
    waiting out its duration) the mildest rule not normal. `active`: the group held before
    these readings even if no rule is firing now (its alert is active)."""
    rules = group.rules
    n = len(rules)
    deviation = group.kind == "deviation"
    olds = [states.get(rule.id, NORMAL) for rule in rules]
    phase = [s.phase for s in olds]
    since = [s.pending_since for s in olds]
    last_ts = [s.last_ts for s in olds]
    last_value = [s.last_value for s in olds]
    stats = [(s.mean, s.var, s.samples) for s in olds]
    firing = _level(rules, phase, active)
    changes: list[Change] = []
    last_firing: Reading | None = None  # in this run
    held_last: Reading | None = None  # in this run or before it
    held_since: datetime | None = None
    if firing is not None:
        held_since = min(t for t in since if t is not None)
        seen = [(t, v) for t, v in zip(last_ts, last_value, strict=True) if t is not None]
        if seen:
            t, v = max(seen, key=lambda r: r[0])
            if v is not None:
                held_last = (t, float(v))
    for ts, value in sorted(set(readings)):
        if deviation and last_ts[0] is not None and ts <= last_ts[0]:
            continue
        for i in range(n):
            rule = rules[i]
            last_ts[i], last_value[i] = ts, value
            if deviation:
                mean, var, samples = stats[i]
                k, clear_k, window, min_samples = rule.deviation_params()
                z = _z(value, mean, var, samples, min_samples)
                breached, cleared = z is not None and z > k, z is None or z < clear_k
                stats[i] = _ewm(value, mean, var, samples, window)
            else:
                breached, cleared = rule.breached(value), rule.cleared(value)
            if phase[i] == "firing":
                if cleared:
                    phase[i], since[i] = "normal", None
                continue
            if not breached:
                phase[i], since[i] = "normal", None
                continue
            if phase[i] == "normal":
                phase[i], since[i] = "pending", ts
            started = since[i]
            assert started is not None  # pending always has its start
            if (ts - started).total_seconds() >= rule.for_s:
                phase[i] = "firing"
        top = _level(rules, phase, firing is not None)
        if top is not firing:
            if firing is None:
                held_since = min(t for t in since if t is not None)
                changes.append(Change("fire", ts, value, held_since, top))
            elif top is None:
                assert held_since is not None
                changes.append(Change("clear", ts, value, held_since, None, held_last))
            else:
                assert held_since is not None
                kind: ChangeKind = (
                    "raise"
                    if SEVERITY_RANK[top.severity] > SEVERITY_RANK[firing.severity]
                    else "lower"
                )
                if SEVERITY_RANK[top.severity] != SEVERITY_RANK[firing.severity]:
                    changes.append(Change(kind, ts, value, held_since, top))
            firing = top
        if firing is not None:
            last_firing = held_last = (ts, value)
        else:
            held_since = None
    new = {
        rule.id: State(
            phase=phase[i],
            pending_since=since[i] if phase[i] != "normal" else None,
            last_ts=last_ts[i],
            last_value=last_value[i],
            mean=stats[i][0],
            var=stats[i][1],
            samples=stats[i][2],
        )
        for i, rule in enumerate(rules)
    }
    return Outcome(new, changes, last_firing, firing is not None)


def _level(rules: tuple[Rule, ...], phase: list[Phase], held: bool) -> Rule | None:
    """The rule whose severity the group has: the most severe firing rule (rules are ordered
    by severity); when none fires but the group held, the mildest rule not normal."""
    for i in range(len(rules) - 1, -1, -1):
        if phase[i] == "firing":
            return rules[i]
    if held:
        for i in range(len(rules)):
            if phase[i] != "normal":
                return rules[i]
    return None


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
) -> tuple[float | None, float | None, int]:
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
