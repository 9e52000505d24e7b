"""Seed `alert_rule` from the profile's default thresholds, idempotently.

Every seeded rule carries a key and a digest of its definition as seeded. At each sync a rule
whose row still matches its digest is brought up to date with the profile; a rule an operator
changed (its row no longer matches) is left alone; a seeded rule the profile dropped is disabled
unless an operator changed it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

import orjson
from sqlalchemy import Connection, text

from alerts.rules import SILENCE_FACTOR_DEFAULT
from ioc.catalogue import Profile
from ioc.vocabulary import operator_symbol

# the columns that define a rule (what the digest covers)
DEFINITION: Final = (
    "name",
    "kind",
    "sector_id",
    "metric",
    "severity",
    "direction",
    "threshold",
    "inclusive",
    "for_s",
    "clear_at",
    "params",
    "district",
    "source_id",
    "manual_resolve",
    "enabled",
)
EVENT_MIN_SEVERITY: Final = "warning"


@dataclass(frozen=True)
class SeedReport:
    """What seeding changed."""

    inserted: int
    updated: int
    kept_operator_changes: int
    disabled: int


def digest(definition: dict[str, Any]) -> str:
    """A stable digest of a rule definition."""
    canonical = {k: definition.get(k) for k in DEFINITION}
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def seeds(profile: Profile) -> dict[str, dict[str, Any]]:
    """The rules a profile implies, by seed key: its thresholds, a silence rule and an event
    rule per sector."""
    out: dict[str, dict[str, Any]] = {}
    for sector in profile.sectors:
        for metric in sector.metrics:
            for t in metric.thresholds:
                key = f"{sector.id}/{metric.id}/{t.direction.value}/{t.severity.value}"
                out[key] = _rule(
                    name=f"{sector.id}.{metric.id} {t.severity.value} "
                    f"{operator_symbol(t.direction, t.inclusive)} {t.value:g} {metric.unit}",
                    kind="threshold",
                    sector_id=sector.id,
                    metric=metric.id,
                    severity=t.severity.value,
                    direction=t.direction.value,
                    threshold=t.value,
                    inclusive=t.inclusive,
                    for_s=t.for_s,
                    clear_at=t.clear_at,
                )
        out[f"{sector.id}/silence"] = _rule(
            name=f"{sector.id} source silent",
            kind="silence",
            sector_id=sector.id,
            severity="warning",
            params={"factor": int(SILENCE_FACTOR_DEFAULT)},
        )
        out[f"{sector.id}/events"] = _rule(
            name=f"{sector.id} agency event",
            kind="event",
            sector_id=sector.id,
            severity=EVENT_MIN_SEVERITY,
        )
    return out


def _rule(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(DEFINITION)
    base.update(inclusive=False, for_s=0, params={}, manual_resolve=False, enabled=True)
    base.update(fields)
    return base


_COLUMNS: Final = ", ".join(DEFINITION)
_SELECT = text(
    f"SELECT id, seed_key, seed_digest, {_COLUMNS} FROM alert_rule "
    "WHERE seed_key IS NOT NULL AND origin <> 'deleted'"
)
# a seeded rule a person deleted stays as a disabled tombstone (alerts.rule_service): left out
# here, its seed key still keeps the insert below from bringing it back
_INSERT = text(
    f"INSERT INTO alert_rule ({_COLUMNS}, origin, seed_key, seed_digest) VALUES "
    "(:name, :kind, :sector_id, :metric, :severity, :direction, :threshold, :inclusive, "
    ":for_s, :clear_at, CAST(:params AS jsonb), :district, :source_id, :manual_resolve, "
    ":enabled, 'profile', :seed_key, :seed_digest) ON CONFLICT (seed_key) DO NOTHING"
)
_UPDATE = text(
    "UPDATE alert_rule SET name = :name, kind = :kind, sector_id = :sector_id, metric = :metric, "
    "severity = :severity, direction = :direction, threshold = :threshold, "
    "inclusive = :inclusive, for_s = :for_s, clear_at = :clear_at, "
    "params = CAST(:params AS jsonb), district = :district, source_id = :source_id, "
    "manual_resolve = :manual_resolve, enabled = :enabled, seed_digest = :seed_digest, "
    "updated_at = now() WHERE id = :id AND seed_digest = :old_digest"
)


def seed_rules(conn: Connection, profile: Profile) -> SeedReport:
    """Bring the seeded rules in line with the profile (the caller owns the transaction)."""
    wanted = seeds(profile)
    existing = {row.seed_key: row for row in conn.execute(_SELECT)}
    inserted = updated = kept = disabled = 0
    for key, definition in wanted.items():
        row = existing.get(key)
        new_digest = digest(definition)
        params = {**definition, "params": orjson.dumps(definition["params"]).decode()}
        if row is None:
            result = conn.execute(_INSERT, {**params, "seed_key": key, "seed_digest": new_digest})
            inserted += result.rowcount
            continue
        current = digest({k: getattr(row, k) for k in DEFINITION})
        if current != row.seed_digest:
            kept += 1  # an operator changed it: theirs stands
        elif new_digest != row.seed_digest:
            conn.execute(
                _UPDATE,
                {**params, "id": row.id, "seed_digest": new_digest, "old_digest": row.seed_digest},
            )
            updated += 1
    for key, row in existing.items():
        if key in wanted or not row.enabled:
            continue
        definition = {k: getattr(row, k) for k in DEFINITION}
        if digest(definition) != row.seed_digest:
            continue
        definition["enabled"] = False
        conn.execute(
            _UPDATE,
            {
                **definition,
                "params": orjson.dumps(definition["params"]).decode(),
                "id": row.id,
                "seed_digest": digest(definition),
                "old_digest": row.seed_digest,
            },
        )
        disabled += 1
    return SeedReport(inserted, updated, kept, disabled)
