"""Changing alert rules: the definition a person writes, its checks, and the services that create,
change and delete rules (the one implementation the API and the CLI call).

A definition is checked in two steps: its shape by the pydantic model (types, ranges), then
`problems` and the database (`check`): the fields a kind needs and forbids, hysteresis on the
normal side, the sector, metric, district and source it names. Every failure names its field.

Each service takes a psycopg connection whose transaction the caller owns, and writes its audit
row in that transaction. Rule writes take one advisory lock and stamp `updated_at` later than
every other rule's, so the version the ingest engines watch (`alerts.engine._RULES_VERSION`:
count, newest `updated_at`, newest id of the enabled rules) changes with every write that
matters to them, and they reload within `RULES_CHECK_S`.

Seeded rules (`alerts.seed`) follow the profile while their row matches the digest they were
seeded with. An edit makes the row differ, so the next `ioc db upgrade` keeps it. Deleting a
seeded rule leaves a tombstone (disabled, `origin = 'deleted'`, renamed) instead of removing
the row: removed, the next re-seed would insert it again. Tombstones are hidden from the API.

A rule that stops watching what its active alerts are about (deleted, disabled, or moved to
another kind, sector, metric, direction or scope) resolves those alerts in the same
transaction, with the actor and the reason, and forgets its evaluation state: no engine would
ever clear them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StringConstraints

from alerts import lifecycle
from alerts.rules import Group, Rule, RuleKind, group_key
from alerts.seed import DEFINITION, digest
from ioc.audit import record_audit
from ioc.errors import Conflict, InvalidInput, NotFound
from ioc.vocabulary import DirectionName, SeverityName

ORIGIN_DELETED: Final = "deleted"
"""`alert_rule.origin` of a deleted seeded rule's tombstone."""
MAX_FOR_S: Final = 30 * 86_400
MAX_NAME_CHARS: Final = 200
_ID = r"^[a-z][a-z0-9_]{0,62}$"
_DISTRICT = r"^[a-z][a-z0-9_-]{0,62}$"
_LOCK_KEY: Final = "ioc:alert_rule"
# later than every rule's stamp, so the newest `updated_at` moves with each write
_STAMP: Final = (
    "greatest(clock_timestamp(), "
    "(SELECT max(updated_at) FROM alert_rule) + interval '1 microsecond')"
)
# what a rule's alerts are about: changing one of these leaves them without a rule
_IDENTITY: Final = ("kind", "sector_id", "metric", "direction", "district", "source_id")

Number = StrictInt | Annotated[StrictFloat, Field(allow_inf_nan=False)]
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME_CHARS)
]
EventKindName = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class RuleParams(BaseModel):
    """Settings of some kinds of rule; a kind accepts only its own (and `public`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    public: bool | None = Field(
        default=None, description="any kind: list its alerts in the public CAP feed"
    )
    after_s: Annotated[Number, Field(gt=0, le=MAX_FOR_S)] | None = Field(
        default=None, description="silence: seconds without readings before a source is silent"
    )
    factor: Annotated[Number, Field(gt=0, le=1000)] | None = Field(
        default=None,
        description="silence: else this many expected reporting intervals (default 3)",
        examples=[3],
    )
    k: Annotated[Number, Field(gt=0, le=1000)] | None = Field(
        default=None, description="deviation: fire beyond k standard deviations (default 3)"
    )
    clear_k: Annotated[Number, Field(ge=0, le=1000)] | None = Field(
        default=None, description="deviation: clear below clear_k (default 2)"
    )
    window: Annotated[StrictInt, Field(ge=2, le=100_000)] | None = Field(
        default=None, description="deviation: readings the statistics span (default 30)"
    )
    min_samples: Annotated[StrictInt, Field(ge=2, le=100_000)] | None = Field(
        default=None, description="deviation: readings known before judging (default 10)"
    )
    kinds: Annotated[list[EventKindName], Field(min_length=1, max_length=100)] | None = Field(
        default=None, description="event: only events of these kinds (default: any kind)"
    )
    use_event_severity: bool | None = Field(
        default=None,
        description="event: the alert takes the event's severity (default true), else the rule's",
    )


# the params each kind accepts (besides `public`)
_PARAMS: Final[Mapping[str, frozenset[str]]] = {
    "threshold": frozenset(),
    "silence": frozenset({"after_s", "factor"}),
    "event": frozenset({"kinds", "use_event_severity"}),
    "deviation": frozenset({"k", "clear_k", "window", "min_samples"}),
}


class RuleDefinition(BaseModel):
    """An alert rule as a person writes it (the columns `alerts.seed.DEFINITION` names).

    `threshold`: a metric crossing a value (`direction`, `threshold`, `inclusive`) for at
    least `for_s` seconds of reading time, cleared past `clear_at` (hysteresis) or else as soon
    as it is no longer breached. `deviation`: a metric's reading more than `params.k` standard
    deviations from its recent mean. `silence`: a source sending no readings for longer than
    its allowance. `event`: an agency event of at least `severity`. Scope: the whole sector, one
    `district`, or one source (`source_id`)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "Độ mặn trạm Đại Ngãi > 2 ‰",
                    "kind": "threshold",
                    "sector_id": "water",
                    "metric": "salinity",
                    "severity": "warning",
                    "direction": "above",
                    "threshold": 2.0,
                    "inclusive": False,
                    "for_s": 900,
                    "clear_at": 1.8,
                    "source_id": "dai-ngai",
                }
            ]
        },
    )

    name: Name = Field(examples=["Độ mặn trạm Đại Ngãi > 2 ‰"])
    kind: RuleKind = Field(examples=["threshold"])
    sector_id: str = Field(pattern=_ID, examples=["water"])
    severity: SeverityName = Field(examples=["warning"])
    metric: str | None = Field(default=None, pattern=_ID, examples=["salinity"])
    direction: DirectionName | None = Field(default=None, examples=["above"])
    threshold: float | None = Field(default=None, allow_inf_nan=False, examples=[2.0])
    inclusive: bool = Field(default=False, description="breached at the threshold itself too")
    for_s: int = Field(
        default=0, ge=0, le=MAX_FOR_S, description="seconds the breach must last", examples=[900]
    )
    clear_at: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="hysteresis: the value past which a firing condition clears (on the normal "
        "side of the threshold)",
        examples=[1.8],
    )
    district: str | None = Field(default=None, pattern=_DISTRICT, examples=[None])
    source_id: str | None = Field(default=None, min_length=1, max_length=128, examples=["dai-ngai"])
    manual_resolve: bool = Field(default=False, description="only a person resolves its alerts")
    enabled: bool = True
    params: RuleParams = Field(default_factory=RuleParams)

    def columns(self) -> dict[str, Any]:
        """The definition as `alert_rule` columns (params without the unset ones)."""
        out = self.model_dump(exclude={"params"})
        out["params"] = self.params.model_dump(exclude_none=True)
        return {k: out[k] for k in DEFINITION}

    def to_rule(self, rule_id: int = 0) -> Rule:
        """The rule as the engine runs it."""
        return Rule(
            id=rule_id,
            name=self.name,
            kind=self.kind,
            sector=self.sector_id,
            severity=self.severity,
            metric=self.metric,
            direction=self.direction,
            value=self.threshold,
            inclusive=self.inclusive,
            for_s=self.for_s,
            clear_at=self.clear_at,
            district=self.district,
            source_id=self.source_id,
            manual_resolve=self.manual_resolve,
            params=self.params.model_dump(exclude_none=True),
        )

    def group(self, rule_id: int = 0) -> Group:
        """A group of this rule alone."""
        rule = self.to_rule(rule_id)
        return Group(group_key(rule), (rule,))


@dataclass(frozen=True, slots=True)
class Issue:
    """One thing wrong with a definition: the field and what."""

    field: str
    message: str


class RuleInvalid(InvalidInput):
    """A rule definition failed its checks; `issues` names the fields."""

    def __init__(self, issues: Collection[Issue]) -> None:
        self.issues = tuple(issues)
        super().__init__("; ".join(f"{i.field}: {i.message}" for i in self.issues))


class RuleNotFound(NotFound):
    """No rule with that id (tombstones of deleted seeded rules included)."""


class RuleNameTaken(Conflict):
    """Another rule has that name."""


def problems(d: RuleDefinition) -> list[Issue]:
    """What is wrong with a definition on its own (no database): the fields its kind needs and
    forbids, hysteresis on the normal side, one scope at most."""
    out: list[Issue] = []
    if d.kind in ("threshold", "deviation"):
        if d.metric is None:
            out.append(Issue("metric", f"a {d.kind} rule needs a metric"))
    elif d.metric is not None:
        out.append(Issue("metric", f"a {d.kind} rule has no metric"))
    if d.kind == "threshold":
        if d.direction is None:
            out.append(Issue("direction", "a threshold rule needs a direction: above or below"))
        if d.threshold is None:
            out.append(Issue("threshold", "a threshold rule needs a threshold value"))
        if d.clear_at is not None and d.direction is not None and d.threshold is not None:
            normal = (
                d.clear_at < d.threshold if d.direction == "above" else d.clear_at > d.threshold
            )
            if not normal:
                side = "below" if d.direction == "above" else "above"
                out.append(
                    Issue(
                        "clear_at",
                        f"clear_at {d.clear_at:g} must be {side} the threshold "
                        f"{d.threshold:g} (hysteresis: the normal side of a rule {d.direction} it)",
                    )
                )
    else:
        for name in ("direction", "threshold", "clear_at"):
            if getattr(d, name) is not None:
                out.append(Issue(name, f"a {d.kind} rule has no {name}"))
        if d.inclusive:
            out.append(Issue("inclusive", f"a {d.kind} rule has no threshold to include"))
    if d.kind in ("silence", "event") and d.for_s:
        hint = " (use params.after_s)" if d.kind == "silence" else ""
        out.append(Issue("for_s", f"a {d.kind} rule has no duration{hint}"))
    if d.district is not None and d.source_id is not None:
        out.append(Issue("district", "scope a rule to a district or to a source, not both"))
    if d.kind == "event" and (d.district is not None or d.source_id is not None):
        field = "district" if d.district is not None else "source_id"
        out.append(Issue(field, "event rules apply to the whole sector"))
    allowed = _PARAMS[d.kind] | {"public"}
    for name in sorted(d.params.model_dump(exclude_none=True)):
        if name not in allowed:
            out.append(Issue(f"params.{name}", f"not a setting of a {d.kind} rule"))
    p = d.params
    if p.k is not None and p.clear_k is not None and p.clear_k > p.k:
        out.append(Issue("params.clear_k", "clear_k must not exceed k"))
    return out


def check(
    conn: psycopg.Connection[Any],
    d: RuleDefinition,
    *,
    districts: Collection[str] | None = None,
    rule_id: int | None = None,
    name: bool = True,
) -> None:
    """Raise RuleInvalid unless the definition holds on its own and against the database: an
    active sector, one of its metrics (a threshold within the metric's range), a district of
    the profile (`districts`) or of one of the sector's sources, a source of the sector, and
    (`name`) a name no other rule than `rule_id` has (RuleNameTaken)."""
    issues = problems(d)
    sector = one(conn, "SELECT active, metrics FROM sector WHERE id = %s", (d.sector_id,))
    if sector is None or not sector["active"]:
        issues.append(Issue("sector_id", f"no active sector {d.sector_id!r}"))
    elif d.metric is not None:
        metrics = {str(m.get("id")): m for m in sector["metrics"] or []}
        metric = metrics.get(d.metric)
        if metric is None:
            known = ", ".join(sorted(metrics))
            issues.append(
                Issue("metric", f"sector {d.sector_id} has no metric {d.metric!r} ({known})")
            )
        elif d.kind == "threshold" and d.threshold is not None:
            low, high = metric.get("min"), metric.get("max")
            if low is not None and high is not None and not low <= d.threshold <= high:
                issues.append(
                    Issue(
                        "threshold",
                        f"{d.threshold:g} is outside the range of {d.metric} "
                        f"[{low:g}, {high:g}]: readings never reach it",
                    )
                )
    if d.source_id is not None and not in_sector(conn, d.sector_id, d.source_id):
        issues.append(Issue("source_id", f"no source {d.source_id!r} in sector {d.sector_id}"))
    if d.district is not None and not known_district(conn, d.sector_id, d.district, districts):
        issues.append(Issue("district", f"no district {d.district!r} in the profile"))
    if issues:
        raise RuleInvalid(issues)
    if name:
        taken = one(
            conn,
            "SELECT id FROM alert_rule WHERE name = %s AND id IS DISTINCT FROM %s",
            (d.name, rule_id),
        )
        if taken is not None:
            raise RuleNameTaken(f"rule {taken['id']} is already named {d.name!r}")


def one(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> dict[str, Any] | None:
    """The first row of a statement, by column name."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchone()


def in_sector(conn: psycopg.Connection[Any], sector_id: str, source_id: str) -> bool:
    """Whether the source exists and belongs to the sector."""
    row = one(conn, "SELECT sector_id FROM source WHERE id = %s", (source_id,))
    return row is not None and row["sector_id"] == sector_id


def known_district(
    conn: psycopg.Connection[Any],
    sector_id: str,
    district: str,
    districts: Collection[str] | None,
) -> bool:
    """Whether a district is one of the profile's (`districts`) or holds a source of the
    sector."""
    if districts is not None and district in districts:
        return True
    sql = "SELECT 1 AS used FROM source WHERE sector_id = %s AND district = %s LIMIT 1"
    return one(conn, sql, (sector_id, district)) is not None


def follows_profile(row: Mapping[str, Any]) -> bool | None:
    """For a seeded rule, whether it still matches its seeded definition (the next re-seed
    brings it up to date with the profile) or a person changed it (re-seeding leaves it
    alone); None for a rule a person made."""
    if row.get("seed_key") is None:
        return None
    return digest({k: row.get(k) for k in DEFINITION}) == row.get("seed_digest")


@dataclass(frozen=True, slots=True)
class RuleWrite:
    """What a write did: the rule, its changed fields, the alerts it resolved."""

    rule_id: int
    changed: dict[str, dict[str, Any]]
    resolved_alerts: list[int]


def _lock(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_LOCK_KEY,))


def _values(d: RuleDefinition) -> dict[str, Any]:
    columns = d.columns()
    columns["params"] = Jsonb(columns["params"])
    return columns


_COLUMNS: Final = ", ".join(DEFINITION)
_INSERT: Final = (
    f"INSERT INTO alert_rule ({_COLUMNS}, origin, updated_at) VALUES ("
    + ", ".join(f"%({k})s" for k in DEFINITION)
    + f", 'user', {_STAMP}) RETURNING id"
)
_UPDATE: Final = (
    "UPDATE alert_rule SET "
    + ", ".join(f"{k} = %({k})s" for k in DEFINITION)
    + f", updated_at = {_STAMP} WHERE id = %(id)s"
)
_SELECT: Final = (
    f"SELECT id, seed_key, {_COLUMNS} FROM alert_rule "
    f"WHERE id = %s AND origin <> '{ORIGIN_DELETED}' FOR UPDATE"
)


def _load(conn: psycopg.Connection[Any], rule_id: int) -> dict[str, Any]:
    row = one(conn, _SELECT, (rule_id,))
    if row is None:
        raise RuleNotFound(f"rule {rule_id} does not exist")
    return row


def create_rule(
    conn: psycopg.Connection[Any],
    *,
    definition: RuleDefinition,
    actor: str,
    districts: Collection[str] | None = None,
) -> RuleWrite:
    """Add a rule (RuleInvalid, RuleNameTaken); audited as `rule.create` with the definition."""
    _lock(conn)
    check(conn, definition, districts=districts)
    try:
        with conn.transaction():
            row = one(conn, _INSERT, _values(definition))
    except psycopg.errors.UniqueViolation:
        raise RuleNameTaken(f"a rule is already named {definition.name!r}") from None
    assert row is not None
    rule_id = int(row["id"])
    record_audit(
        conn,
        actor=actor,
        action="rule.create",
        target=f"rule:{rule_id}",
        detail={"definition": definition.columns()},
    )
    return RuleWrite(rule_id, {}, [])


def update_rule(
    conn: psycopg.Connection[Any],
    *,
    rule_id: int,
    definition: RuleDefinition,
    actor: str,
    districts: Collection[str] | None = None,
) -> RuleWrite:
    """Replace a rule's definition (RuleNotFound, RuleInvalid, RuleNameTaken); audited as
    `rule.update` with the changed fields, unless nothing changed. A rule disabled, or moved
    off what its alerts are about, resolves its active alerts (see the module docstring)."""
    _lock(conn)
    old = _load(conn, rule_id)
    check(conn, definition, districts=districts, rule_id=rule_id)
    new = definition.columns()
    changed = {k: {"from": old[k], "to": new[k]} for k in DEFINITION if old[k] != new[k]}
    if not changed:
        return RuleWrite(rule_id, {}, [])
    try:
        with conn.transaction():
            conn.execute(_UPDATE, {**_values(definition), "id": rule_id})
    except psycopg.errors.UniqueViolation:
        raise RuleNameTaken(f"a rule is already named {definition.name!r}") from None
    resolved: list[int] = []
    moved = [k for k in _IDENTITY if k in changed]
    if moved or not definition.enabled:
        reason = "rule disabled" if not definition.enabled else f"rule changed: {', '.join(moved)}"
        resolved = _retire(conn, rule_id, actor=actor, reason=reason, name=definition.name)
    detail: dict[str, Any] = {"changed": changed}
    if resolved:
        detail["resolved_alerts"] = resolved
    record_audit(conn, actor=actor, action="rule.update", target=f"rule:{rule_id}", detail=detail)
    return RuleWrite(rule_id, changed, resolved)


def delete_rule(conn: psycopg.Connection[Any], *, rule_id: int, actor: str) -> RuleWrite:
    """Delete a rule (RuleNotFound), resolving its active alerts; a seeded rule stays as a
    hidden tombstone so re-seeding does not bring it back. Audited as `rule.delete` with the
    definition it had."""
    _lock(conn)
    old = _load(conn, rule_id)
    definition = {k: old[k] for k in DEFINITION}
    resolved = _retire(conn, rule_id, actor=actor, reason="rule deleted", name=old["name"])
    detail: dict[str, Any] = {"definition": definition}
    if resolved:
        detail["resolved_alerts"] = resolved
    if old["seed_key"] is not None:
        conn.execute(
            "UPDATE alert_rule SET enabled = false, origin = %s, "
            "name = name || ' [deleted ' || id || ']', "
            f"updated_at = {_STAMP} WHERE id = %s",
            (ORIGIN_DELETED, rule_id),
        )
        detail["seed_key"] = old["seed_key"]
    else:
        conn.execute("DELETE FROM alert_rule WHERE id = %s", (rule_id,))
    record_audit(conn, actor=actor, action="rule.delete", target=f"rule:{rule_id}", detail=detail)
    return RuleWrite(rule_id, {}, resolved)


def _retire(
    conn: psycopg.Connection[Any], rule_id: int, *, actor: str, reason: str, name: str
) -> list[int]:
    """Resolve the rule's active alerts and forget its evaluation state; the alert ids."""
    resolved: list[int] = []
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id FROM alert WHERE rule_id = %s AND status <> 'resolved' ORDER BY id",
            (rule_id,),
        )
        for (alert_id,) in cur.fetchall():
            # rule state before alert: the order the engine locks them in
            cur.execute("SELECT 1 FROM alert_state WHERE alert_id = %s FOR UPDATE", (alert_id,))
            closed = lifecycle.close(
                cur, alert_id, actor=actor, detail={"reason": reason, "rule": name}
            )
            if closed is not None:
                resolved.append(int(alert_id))
        cur.execute("DELETE FROM alert_state WHERE rule_id = %s", (rule_id,))
    return resolved
