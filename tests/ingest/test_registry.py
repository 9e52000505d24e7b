"""Source registration services: checks, the audit row in the same transaction, and telemetry
that keeps what was registered."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from ingest.items import Item
from ingest.registry import (
    MAX_INTERVAL_S,
    UNCHANGED,
    SourceError,
    check_district,
    check_interval,
    check_location,
    register_source,
    update_source,
)
from ingest.writer import Writer
from ioc.db import libpq_url
from ioc.errors import Conflict, NotFound
from tests.support.ingest import make_item, query, wait_until

DISTRICTS = ("coastal-district", "estuary-district")
ACTOR = "key:abcd1234:test admin"


@pytest.fixture
def conn(synced_db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(libpq_url(synced_db)) as connection:
        yield connection


def _register(conn: psycopg.Connection[Any], source_id: str = "tram-1", **fields: Any) -> Any:
    values: dict[str, Any] = {"sector_id": "water", **fields}
    return register_source(conn, actor=ACTOR, source_id=source_id, districts=DISTRICTS, **values)


def _audit(db_url: str) -> list[tuple[Any, ...]]:
    return query(db_url, "SELECT actor, action, target, detail FROM audit_log ORDER BY id")


def test_a_registered_source_is_stored_with_its_audit_row(
    conn: psycopg.Connection[Any], synced_db: str
) -> None:
    record = _register(
        conn,
        name=" Trạm Cái Lớn ",
        kind="salinity_station",
        district="coastal-district",
        latitude=9.29,
        longitude=105.72,
        interval_s=600,
    )
    conn.commit()
    assert (record.id, record.sector_id, record.name, record.status) == (
        "tram-1",
        "water",
        "Trạm Cái Lớn",
        "unknown",
    )
    stored = query(
        synced_db,
        "SELECT name, kind, district, latitude, longitude, interval_s, status FROM source",
    )
    assert stored == [
        ("Trạm Cái Lớn", "salinity_station", "coastal-district", 9.29, 105.72, 600, "unknown")
    ]
    assert _audit(synced_db) == [
        (
            ACTOR,
            "source.create",
            "source:tram-1",
            {
                "sector_id": "water",
                "name": "Trạm Cái Lớn",
                "kind": "salinity_station",
                "district": "coastal-district",
                "latitude": 9.29,
                "longitude": 105.72,
                "interval_s": 600,
            },
        )
    ]


def test_a_rolled_back_registration_leaves_neither_source_nor_audit_row(
    conn: psycopg.Connection[Any], synced_db: str
) -> None:
    _register(conn)
    conn.rollback()
    assert query(synced_db, "SELECT count(*) FROM source") == [(0,)]
    assert _audit(synced_db) == []


def test_an_id_taken_is_a_conflict_and_changes_nothing(
    conn: psycopg.Connection[Any], synced_db: str
) -> None:
    _register(conn, name="first")
    conn.commit()
    with pytest.raises(Conflict, match="exists"):
        _register(conn, name="second", sector_id="traffic")
    conn.rollback()
    assert query(synced_db, "SELECT sector_id, name FROM source") == [("water", "first")]
    assert len(_audit(synced_db)) == 1


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"source_id": "a/b"}, "id", "not a source id"),
        ({"source_id": "-lead"}, "id", "not a source id"),
        ({"source_id": "x" * 129}, "id", "not a source id"),
        ({"source_id": "tram-1\n"}, "id", "not a source id"),
        ({"sector_id": "nowhere"}, "sector_id", "unknown sector"),
        ({"sector_id": "Bad Id"}, "sector_id", "not a sector id"),
        ({"district": "atlantis"}, "district", "unknown district"),
        ({"name": "   "}, "name", "must not be empty"),
        ({"name": "x" * 201}, "name", "at most 200"),
        ({"latitude": 91.0, "longitude": 0.0}, "latitude", "between -90 and 90"),
        ({"latitude": 0.0, "longitude": -180.5}, "longitude", "between -180 and 180"),
        ({"latitude": 10.0}, "longitude", "together"),
        ({"interval_s": 0}, "interval_s", "between 1 and"),
        ({"interval_s": MAX_INTERVAL_S + 1}, "interval_s", "between 1 and"),
    ],
)
def test_a_wrong_field_is_named(
    conn: psycopg.Connection[Any], fields: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(SourceError, match=message) as caught:
        _register(conn, **fields)
    assert caught.value.field == field


def test_an_inactive_sector_takes_no_new_source(
    conn: psycopg.Connection[Any], synced_db: str
) -> None:
    query(synced_db, "UPDATE sector SET active = false WHERE id = 'hotline'")
    with pytest.raises(SourceError, match="not in the active profile"):
        _register(conn, sector_id="hotline")


def test_pure_checks() -> None:
    assert check_location(None, None) == (None, None)
    assert check_location(-90, 180) == (-90.0, 180.0)
    with pytest.raises(SourceError):
        check_location(float("nan"), 0.0)
    assert check_interval(None) is None
    with pytest.raises(SourceError):
        check_interval(True)  # a boolean is not a number of seconds
    assert check_district(" anywhere ", ()) == "anywhere"  # a profile without districts
    assert check_district("estuary-district", DISTRICTS) == "estuary-district"


def test_an_update_changes_only_what_is_given_and_audits_old_and_new(
    conn: psycopg.Connection[Any], synced_db: str
) -> None:
    _register(conn, name="Trạm A", district="coastal-district", interval_s=300)
    conn.commit()
    record = update_source(
        conn,
        actor=ACTOR,
        source_id="tram-1",
        name="Trạm A (mới)",
        district=None,
        latitude=9.5,
        longitude=105.5,
        districts=DISTRICTS,
    )
    conn.commit()
    assert (record.name, record.district, record.latitude, record.longitude) == (
        "Trạm A (mới)",
        None,
        9.5,
        105.5,
    )
    assert record.interval_s == 300  # not given: kept
    last = _audit(synced_db)[-1]
    assert last[1:3] == ("source.update", "source:tram-1")
    assert last[3] == {
        "name": {"from": "Trạm A", "to": "Trạm A (mới)"},
        "district": {"from": "coastal-district", "to": None},
        "latitude": {"from": None, "to": 9.5},
        "longitude": {"from": None, "to": 105.5},
    }


def test_an_update_to_the_same_values_writes_nothing(
    conn: psycopg.Connection[Any], synced_db: str
) -> None:
    _register(conn, name="Trạm A", interval_s=300)
    conn.commit()
    update_source(conn, actor=ACTOR, source_id="tram-1", name="Trạm A", interval_s=300)
    update_source(conn, actor=ACTOR, source_id="tram-1")
    conn.commit()
    assert [row[1] for row in _audit(synced_db)] == ["source.create"]


def test_an_update_of_a_missing_or_hidden_source_is_not_found(
    conn: psycopg.Connection[Any],
) -> None:
    with pytest.raises(NotFound):
        update_source(conn, actor=ACTOR, source_id="nobody", name="x")
    conn.rollback()
    _register(conn)
    conn.commit()
    with pytest.raises(NotFound):
        update_source(conn, actor=ACTOR, source_id="tram-1", name="x", sectors=["traffic"])


def test_an_update_moves_latitude_and_longitude_together(
    conn: psycopg.Connection[Any],
) -> None:
    _register(conn, latitude=9.0, longitude=105.0)
    conn.commit()
    with pytest.raises(SourceError) as caught:
        update_source(conn, actor=ACTOR, source_id="tram-1", latitude=10.0)
    assert caught.value.field == "longitude"
    conn.rollback()
    cleared = update_source(
        conn, actor=ACTOR, source_id="tram-1", latitude=None, longitude=None, name=UNCHANGED
    )
    assert (cleared.latitude, cleared.longitude) == (None, None)


def test_telemetry_after_registration_keeps_what_was_registered(
    conn: psycopg.Connection[Any], synced_db: str
) -> None:
    _register(
        conn,
        name="Trạm Cái Lớn",
        district="coastal-district",
        latitude=9.29,
        longitude=105.72,
        interval_s=600,
    )
    conn.commit()
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    writer = Writer(synced_db)
    writer.start()
    try:
        done: list[Item] = []
        for body in (
            {"ts": int(at.timestamp() * 1000), "values": {"salinity": 1.2}},
            "offline",
        ):
            kind = "telemetry" if isinstance(body, dict) else "status"
            item = make_item(f"ioc/v1/water/tram-1/{kind}", body)
            item.done = done.append
            assert writer.submit(item, timeout_s=30)
            wait_until(lambda: bool(done), what="the message committed")
            done.clear()
    finally:
        writer.stop()
    rows = query(
        synced_db,
        "SELECT name, district, latitude, longitude, interval_s, status, last_seen_at "
        "FROM source WHERE id = 'tram-1'",
    )
    assert rows == [("Trạm Cái Lớn", "coastal-district", 9.29, 105.72, 600, "offline", at)]
    assert query(synced_db, "SELECT count(*) FROM reading") == [(1,)]
