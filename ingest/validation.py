"""Pure checks of decoded samples against the sector catalogue and the time window."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from ingest import reasons
from ingest.decoders import MAX_METRIC_CHARS, Problem, Sample, short_repr
from ingest.units import accepted_units, convert
from ioc.catalogue import Profile

DEFAULT_FUTURE_TOLERANCE_S: Final = 300
_NO_OFFSET: Final = timedelta(0)


@dataclass(frozen=True, slots=True)
class Limits:
    """Valid physical range of a metric, in its catalogue unit."""

    low: float
    high: float
    unit: str | None = None
    """The catalogue unit values are stored in; None takes any unit unconverted."""


@dataclass(frozen=True, slots=True)
class Checked:
    """A sample that passed; `catalogued` is False for a metric the sector does not list."""

    metric: str
    ts: datetime
    value: float
    catalogued: bool
    relative: bool = False
    """Timed from the receipt of the message: redeliveries are restamped by the writer."""


@dataclass(frozen=True)
class Rules:
    """What a sample must satisfy: known sector, known metric, range and time window."""

    sectors: dict[str, dict[str, Limits]]
    unknown_metrics: Literal["reject", "accept"] = "reject"
    future_tolerance: timedelta = timedelta(seconds=DEFAULT_FUTURE_TOLERANCE_S)
    retention: timedelta = timedelta(days=365)

    @classmethod
    def from_profile(
        cls,
        profile: Profile,
        *,
        unknown_metrics: Literal["reject", "accept"] = "reject",
        future_tolerance_s: int = DEFAULT_FUTURE_TOLERANCE_S,
        retention_days: int = 365,
    ) -> Rules:
        """Rules for the sectors and metrics of a profile."""
        return cls(
            sectors={
                sector.id: {m.id: Limits(m.min, m.max, m.unit) for m in sector.metrics}
                for sector in profile.sectors
            },
            unknown_metrics=unknown_metrics,
            future_tolerance=timedelta(seconds=future_tolerance_s),
            retention=timedelta(days=retention_days),
        )

    def knows_sector(self, sector: str) -> bool:
        """Whether the sector is in the profile."""
        return sector in self.sectors


def metric_name_problem(name: str) -> str | None:
    """Why a metric name cannot be stored as a series, or None when it can."""
    if not name:
        return "a metric with an empty name"
    if len(name) > MAX_METRIC_CHARS:
        return (
            f"{short_repr(name)}: a metric name of {len(name)} characters, "
            f"more than {MAX_METRIC_CHARS}"
        )
    if not name.isprintable():
        # NUL cannot be stored at all (PostgreSQL text); other control, format (RTL override,
        # zero width), separator, surrogate and unassigned characters only make it unreadable.
        return (
            f"{short_repr(name)}: a metric name with a control, format, separator or "
            "unassigned character"
        )
    return None


def check_samples(
    sector: str, samples: Sequence[Sample], *, now: datetime, rules: Rules
) -> tuple[list[Checked], list[Problem]]:
    """Split samples of a known sector into those kept and the problems of the others.

    A value sent in another unit than its metric's catalogue unit is converted to it, or
    refused (`unit_mismatch`) when the unit is not accepted for it (`ingest.units`); a second
    value of a metric at the same time in one message is refused (`duplicate`).
    """
    metrics = rules.sectors[sector]
    accept_unknown = rules.unknown_metrics == "accept"
    latest = now + rules.future_tolerance
    oldest = now - rules.retention
    kept: list[Checked] = []
    problems: list[Problem] = []
    several = len(samples) > 1
    # (metric, time) of the readings kept so far; the time as its offset from now, which is
    # equal for the same instant and far cheaper to hash than an aware datetime. Readings of
    # one telemetry object share one time object, so the offset is computed once for them.
    kept_keys: set[tuple[str, timedelta]] = set()
    last_ts: datetime | None = None
    offset = _NO_OFFSET
    for s in samples:
        value = s.value
        limits = metrics.get(s.metric)
        if limits is None:
            why = metric_name_problem(s.metric)
            if why is None and not accept_unknown:
                why = f"{s.metric}: not a metric of sector {sector!r}"
            if why is not None:
                problems.append(Problem(reasons.UNKNOWN_METRIC, why, s.metric))
                continue
        else:
            converted = False
            if s.unit is not None and limits.unit is not None and s.unit != limits.unit:
                in_unit = convert(value, s.unit, limits.unit)
                if in_unit is None:
                    problems.append(_unit_mismatch(s, limits.unit))
                    continue
                if not math.isfinite(in_unit):
                    problems.append(
                        Problem(
                            reasons.NOT_FINITE,
                            f"{s.metric}: {value:g} {short_repr(s.unit)} is not finite "
                            f"in {limits.unit}",
                            s.metric,
                        )
                    )
                    continue
                value, converted = in_unit, True
            if not limits.low <= value <= limits.high:
                sent = f" (sent as {s.value:g} {short_repr(s.unit)})" if converted else ""
                problems.append(
                    Problem(
                        reasons.OUT_OF_RANGE,
                        f"{s.metric}: {value:g}{sent} outside the valid range "
                        f"[{limits.low:g}, {limits.high:g}]",
                        s.metric,
                    )
                )
                continue
        if s.ts > latest:
            problems.append(
                Problem(
                    reasons.FUTURE_TIME,
                    f"{s.metric}: time {s.ts.isoformat()} is more than "
                    f"{rules.future_tolerance.total_seconds():g} s ahead",
                    s.metric,
                )
            )
            continue
        if s.ts < oldest:
            problems.append(
                Problem(
                    reasons.TOO_OLD,
                    f"{s.metric}: time {s.ts.isoformat()} is older than the retention of "
                    f"{rules.retention.days} days",
                    s.metric,
                )
            )
            continue
        if several:
            # The database keeps one value per series and time (ON CONFLICT DO NOTHING): a
            # second one in the same message is refused here, visibly, not dropped there.
            if s.ts is not last_ts:
                last_ts, offset = s.ts, s.ts - now
            key = (s.metric, offset)
            if key in kept_keys:
                problems.append(
                    Problem(
                        reasons.DUPLICATE,
                        f"{s.metric}: a second value at {s.ts.isoformat()} in one message "
                        "(the first is kept)",
                        s.metric,
                    )
                )
                continue
            kept_keys.add(key)
        kept.append(Checked(s.metric, s.ts, value, limits is not None, s.relative))
    return kept, problems


def _unit_mismatch(s: Sample, unit: str) -> Problem:
    return Problem(
        reasons.UNIT_MISMATCH,
        f"{s.metric}: unit {short_repr(s.unit)} is not {unit!r} nor convertible to it "
        f"(accepted: {', '.join(accepted_units(unit))})",
        s.metric,
    )
