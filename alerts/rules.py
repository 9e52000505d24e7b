"""Alert rules as plain values, and an index that finds the rules a reading can match."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

RuleKind = Literal["threshold", "silence", "event", "deviation"]
Severity = Literal["info", "warning", "critical"]
Direction = Literal["above", "below"]

SEVERITY_RANK: Final[Mapping[str, int]] = MappingProxyType({"info": 0, "warning": 1, "critical": 2})
OPERATORS: Final[Mapping[str, tuple[Direction, bool]]] = MappingProxyType(
    {">": ("above", False), ">=": ("above", True), "<": ("below", False), "<=": ("below", True)}
)

# silence: the default allowance is this many expected reporting intervals
SILENCE_FACTOR_DEFAULT: Final = 3.0
# deviation: breached beyond K_DEFAULT standard deviations, cleared below CLEAR_K_DEFAULT,
# statistics over about WINDOW_DEFAULT readings, judged once MIN_SAMPLES_DEFAULT are known
K_DEFAULT: Final = 3.0
CLEAR_K_DEFAULT: Final = 2.0
WINDOW_DEFAULT: Final = 30
MIN_SAMPLES_DEFAULT: Final = 10


@dataclass(frozen=True, slots=True)
class Rule:
    """One enabled alert rule, as the engine uses it."""

    id: int
    name: str
    kind: RuleKind
    sector: str
    severity: Severity
    metric: str | None = None
    direction: Direction | None = None
    value: float | None = None
    inclusive: bool = False
    for_s: int = 0
    clear_at: float | None = None
    district: str | None = None
    source_id: str | None = None
    manual_resolve: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def operator(self) -> str:
        """The comparison as an operator symbol (`>`, `>=`, `<`, `<=`)."""
        if self.direction is None:
            return ""
        return {"above": ">", "below": "<"}[self.direction] + ("=" if self.inclusive else "")

    def breached(self, value: float) -> bool:
        """Whether a value is on the abnormal side of the threshold."""
        if self.value is None:
            return False
        if self.direction == "above":
            return value >= self.value if self.inclusive else value > self.value
        return value <= self.value if self.inclusive else value < self.value

    def cleared(self, value: float) -> bool:
        """Whether a value ends a firing condition: past the clear value (hysteresis), or
        simply no longer breached when the rule has none."""
        if self.clear_at is None:
            return not self.breached(value)
        if self.direction == "above":
            return value < self.clear_at
        return value > self.clear_at

    def covers(self, source_id: str, district: str | None) -> bool:
        """Whether the rule's scope includes a source of its sector."""
        if self.source_id is not None:
            return source_id == self.source_id
        if self.district is not None:
            return district == self.district
        return True

    def silence_after_s(self, interval_s: float | None) -> float | None:
        """Seconds without readings after which a source is silent (None: cannot tell)."""
        fixed = self.params.get("after_s")
        if fixed is not None:
            return float(fixed)
        if interval_s is None:
            return None
        return float(self.params.get("factor", SILENCE_FACTOR_DEFAULT)) * interval_s

    def deviation_params(self) -> tuple[float, float, int, int]:
        """(k, clear_k, window, min_samples) of a deviation rule, defaults filled in."""
        p = self.params
        k = float(p.get("k", K_DEFAULT))
        clear_k = min(k, float(p.get("clear_k", CLEAR_K_DEFAULT)))
        window = max(2, int(p.get("window", WINDOW_DEFAULT)))
        min_samples = max(2, int(p.get("min_samples", MIN_SAMPLES_DEFAULT)))
        return k, clear_k, window, min_samples

    def matches_event(self, kind: str, severity: str) -> bool:
        """Whether an agency event of this kind and severity opens an alert by this rule."""
        kinds = self.params.get("kinds")
        if kinds and kind not in kinds:
            return False
        return SEVERITY_RANK[severity] >= SEVERITY_RANK[self.severity]


@dataclass
class _Scoped:
    """Threshold rules of one (sector, metric), by scope."""

    sector_wide: list[Rule] = field(default_factory=list)
    by_district: dict[str, list[Rule]] = field(default_factory=dict)
    by_source: dict[str, list[Rule]] = field(default_factory=dict)

    def add(self, rule: Rule) -> None:
        if rule.source_id is not None:
            self.by_source.setdefault(rule.source_id, []).append(rule)
        elif rule.district is not None:
            self.by_district.setdefault(rule.district, []).append(rule)
        else:
            self.sector_wide.append(rule)


class RuleIndex:
    """Enabled rules by what they watch: (sector, metric) and scope for thresholds, sector
    otherwise; finding a reading's rules costs the same with 10 rules or 10,000."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: tuple[Rule, ...] = tuple(sorted(rules, key=lambda r: r.id))
        self.by_id = {r.id: r for r in self.rules}
        self._thresholds: dict[tuple[str, str], _Scoped] = {}
        self._silence: dict[str, list[Rule]] = {}
        self._events: dict[str, list[Rule]] = {}
        for rule in self.rules:
            if rule.kind in ("threshold", "deviation") and rule.metric is not None:
                self._thresholds.setdefault((rule.sector, rule.metric), _Scoped()).add(rule)
            elif rule.kind == "silence":
                self._silence.setdefault(rule.sector, []).append(rule)
            elif rule.kind == "event":
                self._events.setdefault(rule.sector, []).append(rule)
        self.uses_districts = any(r.district is not None for r in self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def thresholds(
        self, sector: str, metric: str, source_id: str, district: str | None = None
    ) -> list[Rule]:
        """Threshold and deviation rules on one metric of a sector that cover a source."""
        scoped = self._thresholds.get((sector, metric))
        if scoped is None:
            return []
        out = scoped.sector_wide
        if scoped.by_district and district is not None:
            out = out + scoped.by_district.get(district, [])
        if scoped.by_source:
            out = out + scoped.by_source.get(source_id, [])
        return out

    def watches(self, sector: str, metric: str) -> bool:
        """Whether any threshold rule looks at this metric of this sector."""
        return (sector, metric) in self._thresholds

    def silence(self, sector: str | None = None) -> list[Rule]:
        """Silence rules of a sector (all sectors when None)."""
        if sector is None:
            return [r for rules in self._silence.values() for r in rules]
        return self._silence.get(sector, [])

    def events(self, sector: str) -> list[Rule]:
        """Event rules of a sector."""
        return self._events.get(sector, [])
