"""Write the active profile's sectors into the database, idempotently, at upgrade and at every
start (the composition root then seeds the profile's alert rules: `alerts.seed`)."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from sqlalchemy import Connection, text

from ioc.catalogue import Profile


@dataclass(frozen=True)
class SyncReport:
    """What a profile sync changed."""

    profile: str
    sectors_written: int
    sectors_deactivated: int


_UPSERT_SECTOR = text(
    """
    INSERT INTO sector (id, name_vi, name_en, display_order, colour, metrics, kpis, active,
                        profile, updated_at)
    VALUES (:id, :name_vi, :name_en, :display_order, :colour, CAST(:metrics AS jsonb),
            CAST(:kpis AS jsonb), true, :profile, now())
    ON CONFLICT (id) DO UPDATE SET
        name_vi = EXCLUDED.name_vi, name_en = EXCLUDED.name_en,
        display_order = EXCLUDED.display_order, colour = EXCLUDED.colour,
        metrics = EXCLUDED.metrics, kpis = EXCLUDED.kpis, active = true,
        profile = EXCLUDED.profile, updated_at = now()
    WHERE (sector.name_vi, sector.name_en, sector.display_order, sector.colour, sector.metrics,
           sector.kpis, sector.active, sector.profile)
       IS DISTINCT FROM (EXCLUDED.name_vi, EXCLUDED.name_en, EXCLUDED.display_order,
           EXCLUDED.colour, EXCLUDED.metrics, EXCLUDED.kpis, true, EXCLUDED.profile)
    """
)


def sync_profile(conn: Connection, profile: Profile) -> SyncReport:
    """Upsert the profile's sectors; sectors no longer in it stay (sources refer to them) but are
    marked inactive. The caller owns the transaction."""
    written = 0
    for sector in profile.sectors:
        result = conn.execute(
            _UPSERT_SECTOR,
            {
                "id": sector.id,
                "name_vi": sector.name_vi,
                "name_en": sector.name_en,
                "display_order": sector.order,
                "colour": sector.colour,
                "metrics": orjson.dumps(
                    [m.model_dump(mode="json") for m in sector.metrics]
                ).decode(),
                "kpis": orjson.dumps(list(sector.kpis)).decode(),
                "profile": profile.name,
            },
        )
        written += result.rowcount
    ids = [s.id for s in profile.sectors]
    gone = conn.execute(
        text(
            "UPDATE sector SET active = false, updated_at = now() "
            "WHERE active AND NOT (id = ANY(:ids))"
        ),
        {"ids": ids},
    )
    return SyncReport(profile.name, written, gone.rowcount)
