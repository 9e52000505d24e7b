"""Sources over HTTP: filtered keyset lists, one source, its latest readings, registration and
changes by admins (with their audit rows), agency scope and validation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.api import Api
from tests.support.ingest import query

V1 = "/api/v1"


def add_source(
    api: Api,
    source_id: str,
    sector: str = "water",
    *,
    status: str = "online",
    name: str | None = None,
    district: str | None = None,
) -> None:
    query(
        api.db_url,
        "INSERT INTO source (id, sector_id, status, name, district, last_seen_at) "
        "VALUES (%s, %s, %s, %s, %s, now())",
        (source_id, sector, status, name, district),
    )


def add_readings(api: Api, source_id: str, metric: str, points: list[tuple[int, float]]) -> None:
    """Readings `seconds_ago` old, with their values."""
    query(
        api.db_url,
        "INSERT INTO series (source_id, metric) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (source_id, metric),
    )
    for seconds_ago, value in points:
        query(
            api.db_url,
            "INSERT INTO reading (series_id, ts, value) SELECT id, "
            "date_trunc('second', now()) - make_interval(secs => %s), %s FROM series "
            "WHERE source_id = %s AND metric = %s",
            (seconds_ago, value, source_id, metric),
        )


async def _all_pages(api: Api, params: dict[str, Any], headers: dict[str, str]) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        got = await api.http.get(
            f"{V1}/sources", params={**params, **({"cursor": cursor} if cursor else {})},
            headers=headers,
        )  # fmt: skip
        assert got.status_code == 200, got.text
        page = got.json()
        assert len(page["items"]) <= params.get("limit", 100)
        ids += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


async def test_sources_are_listed_by_id_in_keyset_pages_with_filters(api: Api) -> None:
    viewer = api.as_("viewer")
    for i in range(5):
        add_source(
            api,
            f"w-{i}",
            status="offline" if i == 3 else "online",
            name=f"Trạm mặn {i}" if i != 4 else "Cống 100%_A",
            district="coastal-district" if i % 2 else "estuary-district",
        )
    add_source(api, "t-0", "traffic", status="unknown")
    first = await api.http.get(f"{V1}/sources", params={"limit": 2}, headers=viewer)
    assert first.status_code == 200
    page = first.json()
    assert [s["id"] for s in page["items"]] == ["t-0", "w-0"]
    assert page["next_cursor"]
    item = page["items"][1]
    assert item == {
        "id": "w-0",
        "sector_id": "water",
        "name": "Trạm mặn 0",
        "kind": None,
        "district": "estuary-district",
        "latitude": None,
        "longitude": None,
        "interval_s": None,
        "status": "online",
        "last_seen_at": item["last_seen_at"],
        "last_reading_at": None,
        "created_at": item["created_at"],
    }
    assert item["last_seen_at"].endswith("Z") or "+" in item["last_seen_at"]
    assert await _all_pages(api, {"limit": 2}, viewer) == ["t-0", *(f"w-{i}" for i in range(5))]
    assert await _all_pages(api, {"limit": 2, "sector": "water"}, viewer) == [
        f"w-{i}" for i in range(5)
    ]
    assert await _all_pages(api, {"district": "coastal-district"}, viewer) == ["w-1", "w-3"]
    assert await _all_pages(api, {"status": "offline"}, viewer) == ["w-3"]
    assert await _all_pages(api, {"q": "TRẠM"}, viewer) == ["w-0", "w-1", "w-2", "w-3"]
    assert await _all_pages(api, {"q": "100%_"}, viewer) == ["w-4"]  # taken literally
    assert await _all_pages(api, {"q": "%"}, viewer) == ["w-4"]
    assert await _all_pages(api, {"q": "t-"}, viewer) == ["t-0"]  # the id matches too


async def test_a_bad_filter_or_cursor_is_a_422_naming_the_field(api: Api) -> None:
    viewer = api.as_("viewer")
    for params, field in (
        ({"status": "asleep"}, "query.status"),
        ({"limit": 0}, "query.limit"),
        ({"sector": "Not A Sector"}, "query.sector"),
        ({"q": "x" * 101}, "query.q"),
    ):
        got = await api.http.get(f"{V1}/sources", params=params, headers=viewer)
        assert got.status_code == 422
        assert got.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in got.json()["errors"]] == [field]
    bad = await api.http.get(f"{V1}/sources", params={"cursor": "nope!"}, headers=viewer)
    assert bad.status_code == 422
    assert "cursor" in bad.json()["detail"]


async def test_an_agency_key_sees_only_its_sectors_sources(api: Api) -> None:
    add_source(api, "w-0")
    add_source(api, "t-0", "traffic")
    add_readings(api, "t-0", "flow", [(10, 900.0)])
    agency = api.as_("agency", sectors=["water"])
    assert await _all_pages(api, {}, agency) == ["w-0"]
    assert await _all_pages(api, {"sector": "water"}, agency) == ["w-0"]
    outside = await api.http.get(f"{V1}/sources", params={"sector": "traffic"}, headers=agency)
    assert outside.status_code == 403
    assert outside.json()["type"] == "urn:ioc:problem:forbidden"
    for path in ("/sources/t-0", "/sources/t-0/latest"):
        hidden = await api.http.get(V1 + path, headers=agency)
        assert hidden.status_code == 404, path
        assert hidden.json()["type"] == "urn:ioc:problem:not-found"
    assert (await api.http.get(f"{V1}/sources/w-0", headers=agency)).status_code == 200


async def test_one_source_and_a_missing_one(api: Api) -> None:
    viewer = api.as_("viewer")
    add_source(api, "tram-1", name="Trạm Cái Lớn")
    got = await api.http.get(f"{V1}/sources/tram-1", headers=viewer)
    assert got.status_code == 200
    assert (got.json()["id"], got.json()["name"]) == ("tram-1", "Trạm Cái Lớn")
    for missing in ("nobody", "x" * 128, "a b"):
        gone = await api.http.get(f"{V1}/sources/{missing}", headers=viewer)
        assert gone.status_code == 404
        assert gone.headers["content-type"] == "application/problem+json"
    too_long = await api.http.get(f"{V1}/sources/{'x' * 129}", headers=viewer)
    assert too_long.status_code == 422


async def test_the_latest_reading_of_each_series_with_units_and_status(api: Api) -> None:
    add_source(api, "tram-1")
    add_readings(api, "tram-1", "salinity", [(7200, 0.5), (60, 4.6), (600, 2.0)])
    add_readings(api, "tram-1", "water_level", [(86_400 * 3, 1.6)])  # old: still its latest
    add_readings(api, "tram-1", "battery_v", [(30, 3.7)])  # not in the catalogue
    query(api.db_url, "INSERT INTO series (source_id, metric) VALUES ('tram-1', 'silent')")
    got = await api.http.get(f"{V1}/sources/tram-1/latest", headers=api.as_("viewer"))
    assert got.status_code == 200
    body = got.json()
    assert (body["source_id"], body["sector_id"]) == ("tram-1", "water")
    by_metric = {r["metric"]: r for r in body["readings"]}
    assert list(by_metric) == ["battery_v", "salinity", "water_level"]  # by name; none: left out
    salinity = by_metric["salinity"]
    assert (salinity["value"], salinity["unit"], salinity["status"]) == (4.6, "‰", "critical")
    assert (salinity["name_vi"], salinity["name_en"]) == ("Độ mặn", "Salinity")
    assert (by_metric["water_level"]["value"], by_metric["water_level"]["status"]) == (1.6, "info")
    battery = by_metric["battery_v"]
    assert (battery["unit"], battery["name_en"], battery["status"]) == (None, None, "unknown")
    none_yet = await api.http.get(f"{V1}/sources/nobody/latest", headers=api.as_("viewer"))
    assert none_yet.status_code == 404


# --- registration and changes ----------------------------------------------------------------

STATION: dict[str, Any] = {
    "id": "tram-cai-lon",
    "sector_id": "water",
    "name": "Trạm đo mặn Cái Lớn",
    "kind": "salinity_station",
    "district": "coastal-district",
    "latitude": 9.2941,
    "longitude": 105.7278,
    "interval_s": 300,
}


def _audit(api: Api, action: str) -> list[tuple[Any, ...]]:
    return query(
        api.db_url,
        "SELECT actor, target, detail FROM audit_log WHERE action = %s ORDER BY id",
        (action,),
    )


async def test_an_admin_registers_a_source_once_with_its_audit_row(api: Api) -> None:
    admin = api.as_("admin")
    created = await api.http.post(f"{V1}/sources", json=STATION, headers=admin)
    assert created.status_code == 201, created.text
    body = created.json()
    assert {k: body[k] for k in STATION} == STATION
    assert (body["status"], body["last_seen_at"], body["last_reading_at"]) == (
        "unknown",
        None,
        None,
    )
    assert created.headers["location"] == "/api/v1/sources/tram-cai-lon"
    shown = await api.http.get(created.headers["location"], headers=admin)
    assert shown.json() == body
    [(actor, target, detail)] = _audit(api, "source.create")
    assert actor.startswith("key:") and actor.endswith(":test admin")
    assert target == "source:tram-cai-lon"
    assert detail == {k: v for k, v in STATION.items() if k != "id"}
    again = await api.http.post(f"{V1}/sources", json={**STATION, "name": "x"}, headers=admin)
    assert again.status_code == 409
    assert again.json()["type"] == "urn:ioc:problem:conflict"
    assert len(_audit(api, "source.create")) == 1
    listed = await api.http.get(f"{V1}/sources", headers=admin)
    assert [s["name"] for s in listed.json()["items"]] == ["Trạm đo mặn Cái Lớn"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id": "tram/1"}, "body.id"),
        ({"id": ""}, "body.id"),
        ({"sector_id": "nowhere"}, "body.sector_id"),
        ({"district": "atlantis"}, "body.district"),
        ({"latitude": 95.0}, "body.latitude"),
        ({"longitude": -181}, "body.longitude"),
        ({"longitude": None}, "body.longitude"),
        ({"interval_s": 0}, "body.interval_s"),
        ({"interval_s": 2**40}, "body.interval_s"),
        ({"name": ""}, "body.name"),
        ({"colour": "red"}, "body.colour"),
    ],
)
async def test_a_wrong_registration_is_a_422_naming_the_field(
    api: Api, change: dict[str, Any], field: str
) -> None:
    got = await api.http.post(f"{V1}/sources", json={**STATION, **change}, headers=api.as_("admin"))
    assert got.status_code == 422, got.text
    assert got.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in got.json()["errors"]]
    assert query(api.db_url, "SELECT count(*) FROM source") == [(0,)]


@pytest.mark.parametrize("role", ["operator", "analyst", "viewer"])
async def test_only_admins_register_and_change_sources(api: Api, role: str) -> None:
    add_source(api, "tram-1")
    headers = api.as_(role)
    posted = await api.http.post(f"{V1}/sources", json=STATION, headers=headers)
    patched = await api.http.patch(f"{V1}/sources/tram-1", json={"name": "x"}, headers=headers)
    assert (posted.status_code, patched.status_code) == (403, 403)
    agency = api.as_("agency", sectors=["water"])
    assert (await api.http.post(f"{V1}/sources", json=STATION, headers=agency)).status_code == 403
    assert query(api.db_url, "SELECT id, name FROM source") == [("tram-1", None)]


async def test_an_admin_changes_a_source_and_null_clears_a_field(api: Api) -> None:
    admin = api.as_("admin")
    assert (await api.http.post(f"{V1}/sources", json=STATION, headers=admin)).status_code == 201
    path = f"{V1}/sources/tram-cai-lon"
    changed = await api.http.patch(
        path,
        json={"name": "Trạm Cái Lớn (mới)", "district": "estuary-district", "interval_s": 600},
        headers=admin,
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["name"], body["district"], body["interval_s"]) == (
        "Trạm Cái Lớn (mới)",
        "estuary-district",
        600,
    )
    assert (body["latitude"], body["kind"]) == (9.2941, "salinity_station")  # left out: kept
    cleared = await api.http.patch(
        path, json={"district": None, "latitude": None, "longitude": None}, headers=admin
    )
    assert cleared.status_code == 200
    assert (cleared.json()["district"], cleared.json()["latitude"]) == (None, None)
    assert cleared.json()["name"] == "Trạm Cái Lớn (mới)"
    updates = _audit(api, "source.update")
    assert [target for _, target, _ in updates] == ["source:tram-cai-lon"] * 2
    assert updates[0][2] == {
        "name": {"from": "Trạm đo mặn Cái Lớn", "to": "Trạm Cái Lớn (mới)"},
        "district": {"from": "coastal-district", "to": "estuary-district"},
        "interval_s": {"from": 300, "to": 600},
    }
    assert updates[1][2] == {
        "district": {"from": "estuary-district", "to": None},
        "latitude": {"from": 9.2941, "to": None},
        "longitude": {"from": 105.7278, "to": None},
    }
    same = await api.http.patch(path, json={"name": "Trạm Cái Lớn (mới)"}, headers=admin)
    assert same.status_code == 200
    assert len(_audit(api, "source.update")) == 2  # nothing changed, nothing recorded


async def test_a_wrong_change_is_a_422_or_a_404(api: Api) -> None:
    admin = api.as_("admin")
    add_source(api, "tram-1", name="Trạm 1")
    for change, field in (
        ({"latitude": 9.3}, "body.longitude"),
        ({"district": "atlantis"}, "body.district"),
        ({"interval_s": -5}, "body.interval_s"),
        ({"name": None, "sector_id": "traffic"}, "body.sector_id"),
    ):
        got = await api.http.patch(f"{V1}/sources/tram-1", json=change, headers=admin)
        assert got.status_code == 422, change
        assert field in [e["field"] for e in got.json()["errors"]], got.json()
    missing = await api.http.patch(f"{V1}/sources/nobody", json={"name": "x"}, headers=admin)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert query(api.db_url, "SELECT name FROM source") == [("Trạm 1",)]
    assert _audit(api, "source.update") == []
