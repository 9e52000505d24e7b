"""The demo's simulated sources get a district and a position near its centre, registered as
an agency would register them; a source someone placed already is left as it is."""

from __future__ import annotations

import psycopg

from ingest.registry import update_source
from ingest.simulator_curves import plan_sources
from ingest.simulator_places import SPREAD_DEG, place_sources
from ioc.db import libpq_url
from tests.support.ingest import PROFILE, query


def test_every_simulated_source_stands_in_a_district_near_its_centre(synced_db: str) -> None:
    plans = plan_sources(PROFILE, 30)
    centres = {d.id: (d.latitude, d.longitude) for d in PROFILE.districts}
    with psycopg.connect(libpq_url(synced_db)) as conn:
        assert place_sources(conn, PROFILE, plans[:1], actor="test") == 1
        update_source(  # an operator moves the first one: the demo leaves it there
            conn, actor="test", source_id=plans[0].source_id, latitude=10.5, longitude=106.5
        )
        assert place_sources(conn, PROFILE, plans, actor="test") == len(plans) - 1
        assert place_sources(conn, PROFILE, plans, actor="test") == 0  # a second start
    rows = query(
        synced_db,
        "SELECT id, sector_id, district, latitude, longitude FROM source WHERE id = ANY(%s)",
        ([p.source_id for p in plans],),
    )
    assert len(rows) == len(plans)
    by_id = {r[0]: r for r in rows}
    assert by_id[plans[0].source_id][3:] == (10.5, 106.5)
    for plan in plans[1:]:
        _, sector, district, latitude, longitude = by_id[plan.source_id]
        assert sector == plan.sector_id
        lat0, lon0 = centres[district]
        assert lat0 is not None and lon0 is not None
        assert abs(latitude - lat0) <= SPREAD_DEG and abs(longitude - lon0) <= SPREAD_DEG
    assert len({r[2] for r in rows}) == len(centres)  # spread over every district
    audit = query(synced_db, "SELECT count(*) FROM audit_log WHERE action = 'source.create'")
    assert audit == [(len(plans),)]
