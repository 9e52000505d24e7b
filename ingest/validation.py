"""Pure checks of decoded samples against the sector catalogue and the time window."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from ingest import reasons
from ingest.decoders import Problem, Sample
from ioc.catalogue import Profile

DEFAULT_FUTURE_TOLERANCE_S: Final = 300


@dataclass(frozen=True, slots=True)
class Limits:
    """Valid physical range of a metric."""

    low: float
    high: float


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
                sector.id: {m.id: Limits(m.min, m.max) for m in sector.metrics}
                for sector in profile.sectors
            },
            unknown_metrics=unknown_metrics,
            future_tolerance=timedelta(seconds=future_tolerance_s),
            retention=timedelta(days=retention_days),
        )

    def knows_sector(self, sector: str) -> bool:
        """Whether the sector is in the profile."""
        return sector in self.sectors


def check_samples(
    sector: str, samples: Iterable[Sample], *, now: datetime, rules: Rules
) -> tuple[list[Checked], list[Problem]]:
    """Split samples of a known sector into those kept and the problems of the others."""
    metrics = rules.sectors[sector]
    latest = now + rules.future_tolerance
    oldest = now - rules.retention
    kept: list[Checked] = []
    problems: list[Problem] = []
    for s in samples:
        limits = metrics.get(s.metric)
        if limits is None and rules.unknown_metrics == "reject":
            problems.append(
                Problem(
                    reasons.UNKNOWN_METRIC,
                    f"{s.metric}: not a metric of sector {sector!r}",
                    s.metric,
                )
            )
            continue
        if limits is not None and not limits.low <= s.value <= limits.high:
            problems.append(
                Problem(
                    reasons.OUT_OF_RANGE,
                    f"{s.metric}: {s.value:g} outside the valid range "
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
        kept.append(Checked(s.metric, s.ts, s.value, limits is not None, s.relative))
    return kept, problems
