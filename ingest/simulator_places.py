"""Where the demo's simulated sources stand: each in a district of the profile, near the
district's centre, registered as an agency would (`ingest.registry`), so the screen's map and
source lists have districts and positions to show."""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable
from typing import Any, Final

import psycopg

from ingest.registry import register_source, update_source
from ingest.simulator_curves import SourcePlan
from ioc.catalogue import Profile

SPREAD_DEG: Final = 0.04
"""How far (degrees, about 4 km) a source stands from its district's centre, at most."""


def place_sources(
    conn: psycopg.Connection[Any], profile: Profile, plans: Iterable[SourcePlan], *, actor: str
) -> int:
    """Give every planned source a district and a position; a source that has either already
    (an operator placed it) is left alone. The number placed; the caller commits."""
    centres = [d for d in profile.districts if d.latitude is not None and d.longitude is not None]
    if not centres:
        return 0
    names = [d.id for d in profile.districts]
    placed = 0
    for plan in plans:
        district = centres[zlib.crc32(plan.key.encode()) % len(centres)]
        assert district.latitude is not None
        assert district.longitude is not None
        rng = random.Random(f"place:{plan.key}")  # noqa: S311 - a repeatable layout, no secret
        latitude = round(district.latitude + rng.uniform(-SPREAD_DEG, SPREAD_DEG), 5)
        longitude = round(district.longitude + rng.uniform(-SPREAD_DEG, SPREAD_DEG), 5)
        row = conn.execute(
            "SELECT district, latitude FROM source WHERE id = %s", (plan.source_id,)
        ).fetchone()
        if row is None:
            register_source(
                conn,
                actor=actor,
                source_id=plan.source_id,
                sector_id=plan.sector_id,
                district=district.id,
                latitude=latitude,
                longitude=longitude,
                districts=names,
            )
        elif row[0] is None and row[1] is None:
            update_source(
                conn,
                actor=actor,
                source_id=plan.source_id,
                district=district.id,
                latitude=latitude,
                longitude=longitude,
                districts=names,
            )
        else:
            continue
        placed += 1
    return placed
