"""Alert rules as plain values, and an index that finds the rules a reading can match."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ioc.vocabulary import (
    OPERATORS,
    SEVERITY_RANK,
    DirectionName,
    RuleKind,
    SeverityName,
    breaches,
    operator_symbol,
)

__all__ = [
    "OPERATORS",
    "SEVERITY_RANK",
    "Direction",
    "Group",
    "Rule",
    "RuleIndex",
    "RuleKind",
    "Severity",
]

Severity = SeverityName
Direction = DirectionName

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
        return operator_symbol(self.direction, self.inclusive)

    def breached(self, value: float) -> bool:
        """Whether a value is on the abnormal side of the threshold."""
        if self.value is None or self.direction is None:
            return False
        return breaches(value, self.direction, self.value, self.inclusive)

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


@dataclass(frozen=True, slots=True)
class Group:
    """The rules that judge one condition of a source: threshold rules on one metric, in one
    direction and scope, whatever their severities (warning and critical on one sensor are one
    alert whose severity rises and falls); a deviation rule is a group of its own."""

    key: str
    rules: tuple[Rule, ...]  # by severity, then id

    @property
    def kind(self) -> RuleKind:
        return self.rules[0].kind

    @property
    def lead(self) -> Rule:
        """The least severe rule: the group's sector, metric, scope and direction."""
        return self.rules[0]

    @property
    def manual_resolve(self) -> bool:
        """Whether only a person resolves the group's alerts."""
        return any(rule.manual_resolve for rule in self.rules)

    def cause(self, source_id: str) -> str:
        """The alert cause of this condition on one source."""
        return f"{self.key}:source:{source_id}"

    def clears_all(self, value: float) -> bool:
        """Whether a value ends every rule's condition: after it the group is normal whatever
        came before (a reading of this kind anchors a re-evaluation)."""
        return all(rule.cleared(value) for rule in self.rules)

    def reset_sql(self) -> str:
        """`clears_all` as an SQL condition on a column `value` (the limits as literals)."""
        parts: list[str] = []
        for rule in self.rules:
            if rule.value is None:
                continue
            if rule.clear_at is not None:
                op, limit = ("<" if rule.direction == "above" else ">"), rule.clear_at
            elif rule.direction == "above":
                op, limit = ("<" if rule.inclusive else "<="), rule.value
            else:
                op, limit = (">" if rule.inclusive else ">="), rule.value
            parts.append(f"value {op} {float(limit)!r}::float8")
        return " AND ".join(parts) or "true"


def group_key(rule: Rule) -> str:
    """The group a rule belongs to (see `Group`)."""
    if rule.kind != "threshold":
        return f"rule:{rule.id}"
    if rule.source_id is not None:
        scope = f"source={rule.source_id}"
    elif rule.district is not None:
        scope = f"district={rule.district}"
    else:
        scope = "sector"
    return f"threshold:{rule.sector}:{rule.metric}:{rule.direction}:{scope}"


def _groups(rules: Iterable[Rule]) -> tuple[Group, ...]:
    by_key: dict[str, list[Rule]] = {}
    for rule in rules:
        by_key.setdefault(group_key(rule), []).append(rule)
    return tuple(
        Group(key, tuple(sorted(members, key=lambda r: (SEVERITY_RANK[r.severity], r.id))))
        for key, members in by_key.items()
    )


@dataclass
class _Scoped:
    """Threshold rules of one (sector, metric), by scope."""

    sector_wide: list[Rule] = field(default_factory=list)
    by_district: dict[str, list[Rule]] = field(default_factory=dict)
    by_source: dict[str, list[Rule]] = field(default_factory=dict)
    # the same, grouped
    groups_wide: tuple[Group, ...] = ()
    groups_by_district: dict[str, tuple[Group, ...]] = field(default_factory=dict)
    groups_by_source: dict[str, tuple[Group, ...]] = field(default_factory=dict)

    def add(self, rule: Rule) -> None:
        if rule.source_id is not None:
            self.by_source.setdefault(rule.source_id, []).append(rule)
        elif rule.district is not None:
            self.by_district.setdefault(rule.district, []).append(rule)
        else:
            self.sector_wide.append(rule)

    def seal(self) -> None:
        self.groups_wide = _groups(self.sector_wide)
        self.groups_by_district = {k: _groups(v) for k, v in self.by_district.items()}
        self.groups_by_source = {k: _groups(v) for k, v in self.by_source.items()}


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
        for scoped in self._thresholds.values():
            scoped.seal()
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

    def groups(
        self, sector: str, metric: str, source_id: str, district: str | None = None
    ) -> tuple[Group, ...]:
        """The rule groups on one metric of a sector that cover a source."""
        scoped = self._thresholds.get((sector, metric))
        if scoped is None:
            return ()
        out = scoped.groups_wide
        if scoped.groups_by_district and district is not None:
            out = out + scoped.groups_by_district.get(district, ())
        if scoped.groups_by_source:
            out = out + scoped.groups_by_source.get(source_id, ())
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
