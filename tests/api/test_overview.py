"""The operations overview over HTTP: sources by status, open alerts by severity, KPIs (value,
change against a day earlier, status by the thresholds), one sector, every KPI of a sector,
the profile; agency scope."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import pytest

from tests.support.api import Api
from tests.support.ingest import PROFILE, query

V1 = "/api/v1"
DAY_S = 86_400
MEKONG_ORDER = [
    "water",
    "citizen_reports",
    "environment",
    "traffic",
    "health",
    "public_services",
    "security",
    "hotline",
]


def add_source(
    api: Api, source_id: str, sector: str, *, status: str = "online", interval_s: int | None = None
) -> None:
    query(
        api.db_url,
        "INSERT INTO source (id, sector_id, status, interval_s) VALUES (%s, %s, %s, %s)",
        (source_id, sector, status, interval_s),
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
            "now() - make_interval(secs => %s), %s FROM series "
            "WHERE source_id = %s AND metric = %s",
            (seconds_ago, value, source_id, metric),
        )


def add_alert(api: Api, sector: str, severity: str, status: str) -> None:
    query(
        api.db_url,
        "INSERT INTO alert (cause_key, sector_id, severity, status, title) "
        "VALUES (gen_random_uuid()::text, %s, %s, %s, 'thử')",
        (sector, severity, status),
    )


def fill(api: Api) -> None:
    """Sources, readings and alerts whose figures the tests below know."""
    for source_id, status in (("w-a", "online"), ("w-b", "online"), ("w-c", "offline")):
        add_source(api, source_id, "water", status=status)
    add_source(api, "w-d", "water", status="unknown")
    add_source(api, "t-a", "traffic")
    add_source(api, "t-b", "traffic")
    add_source(api, "e-slow", "environment", interval_s=7200)
    add_source(api, "e-fast", "environment")
    # salinity (every 300 s: a reading counts up to 900 s): w-a 2.0 and w-b 5.0 now;
    # w-c's newest is too old to count; a day earlier w-a 1.0 and w-b 2.0
    add_readings(api, "w-a", "salinity", [(600, 9.0), (60, 2.0), (DAY_S + 60, 1.0)])
    add_readings(api, "w-b", "salinity", [(120, 5.0), (DAY_S + 30, 2.0), (DAY_S + 2000, 7.0)])
    add_readings(api, "w-c", "salinity", [(7200, 100.0)])
    add_readings(api, "w-a", "rainfall_24h", [(60, 30.0)])  # not a headline KPI of water
    # fatal accidents are counted: summed over sources
    add_readings(api, "t-a", "fatal_accidents", [(600, 1.0)])
    add_readings(api, "t-b", "fatal_accidents", [(900, 2.0)])
    # mean speed (warning below 10): the mean is normal, one road is not
    add_readings(api, "t-a", "mean_speed", [(30, 8.0)])
    add_readings(api, "t-b", "mean_speed", [(30, 20.0)])
    # aqi every 300 s, but e-slow reports every 2 h: its reading of an hour ago counts
    add_readings(api, "e-slow", "aqi", [(3600, 120.0)])
    add_readings(api, "e-fast", "aqi", [(3600, 10.0)])
    add_alert(api, "water", "critical", "open")
    add_alert(api, "water", "warning", "acknowledged")
    add_alert(api, "water", "info", "open")
    add_alert(api, "water", "critical", "resolved")
    add_alert(api, "traffic", "warning", "open")


def _kpi(sector: dict[str, Any], metric: str) -> dict[str, Any]:
    return next(k for k in sector["kpis"] if k["metric"] == metric)


async def test_the_overview_shows_every_sector_with_sources_alerts_and_kpis(api: Api) -> None:
    fill(api)
    got = await api.http.get(f"{V1}/sectors", headers=api.as_("viewer"))
    assert got.status_code == 200, got.text
    body = got.json()
    sectors = {s["id"]: s for s in body["sectors"]}
    assert [s["id"] for s in body["sectors"]] == MEKONG_ORDER
    water = sectors["water"]
    profile_water = PROFILE.sector("water")
    assert profile_water is not None
    assert (water["name_vi"], water["name_en"], water["colour"], water["order"]) == (
        profile_water.name_vi,
        profile_water.name_en,
        profile_water.colour,
        10,
    )
    assert water["sources"] == {"online": 2, "offline": 1, "unknown": 1, "total": 4}
    assert water["alerts"] == {"info": 1, "warning": 1, "critical": 1, "total": 3}
    assert sectors["traffic"]["alerts"] == {"info": 0, "warning": 1, "critical": 0, "total": 1}
    assert sectors["hotline"]["sources"] == {"online": 0, "offline": 0, "unknown": 0, "total": 0}
    assert [k["metric"] for k in water["kpis"]] == list(profile_water.kpis)
    assert water["as_of"] == body["as_of"]

    salinity = _kpi(water, "salinity")
    assert {k: salinity[k] for k in ("unit", "aggregate", "sources", "min", "max")} == {
        "unit": "‰",
        "aggregate": "mean",
        "sources": 2,
        "min": 2.0,
        "max": 5.0,
    }
    assert salinity["value"] == pytest.approx(3.5)
    assert salinity["window_s"] == 900
    assert (salinity["status"], salinity["worst_status"]) == ("warning", "critical")
    assert salinity["change"]["previous"] == pytest.approx(1.5)
    assert salinity["change"]["value"] == pytest.approx(2.0)
    assert salinity["change"]["percent"] == pytest.approx(133.333, rel=1e-3)
    assert (salinity["change"]["period"], salinity["change"]["period_s"]) == ("P1D", DAY_S)
    assert salinity["latest_at"] is not None

    level = _kpi(water, "water_level")
    assert (level["value"], level["sources"], level["status"], level["worst_status"]) == (
        None,
        0,
        "unknown",
        "unknown",
    )
    assert level["change"] == {
        "value": None,
        "previous": None,
        "percent": None,
        "period": "P1D",
        "period_s": DAY_S,
    }

    fatal = _kpi(sectors["traffic"], "fatal_accidents")
    assert (fatal["aggregate"], fatal["value"], fatal["status"]) == ("sum", 3.0, "critical")
    assert fatal["change"]["previous"] is None
    speed = _kpi(sectors["traffic"], "mean_speed")
    assert (speed["value"], speed["status"], speed["worst_status"]) == (14.0, "normal", "warning")

    aqi = _kpi(sectors["environment"], "aqi")
    assert (aqi["value"], aqi["sources"], aqi["status"]) == (120.0, 1, "warning")


async def test_one_sector_has_the_same_figures_and_an_unknown_one_is_404(api: Api) -> None:
    fill(api)
    viewer = api.as_("viewer")
    listed = (await api.http.get(f"{V1}/sectors", headers=viewer)).json()
    one = await api.http.get(f"{V1}/sectors/water", headers=viewer)
    assert one.status_code == 200
    assert one.json() == listed["sectors"][0]
    for unknown in ("atlantis", "Not-an-id", "x" * 63):
        for suffix in ("", "/kpis"):
            gone = await api.http.get(f"{V1}/sectors/{unknown}{suffix}", headers=viewer)
            assert gone.status_code == 404, (unknown, suffix)
            assert gone.headers["content-type"] == "application/problem+json"
    assert (await api.http.get(f"{V1}/sectors/{'x' * 64}", headers=viewer)).status_code == 422


async def test_a_sectors_kpis_cover_every_metric(api: Api) -> None:
    fill(api)
    got = await api.http.get(f"{V1}/sectors/water/kpis", headers=api.as_("operator"))
    assert got.status_code == 200
    body = got.json()
    water = PROFILE.sector("water")
    assert water is not None
    assert body["sector_id"] == "water"
    assert [k["metric"] for k in body["kpis"]] == [m.id for m in water.metrics]
    rain = _kpi(body, "rainfall_24h")
    assert (rain["value"], rain["unit"], rain["status"], rain["window_s"]) == (
        30.0,
        "mm",
        "normal",
        900,
    )
    assert _kpi(body, "salinity")["value"] == pytest.approx(3.5)
    reach = _kpi(body, "salinity_4ppt_reach_km")
    assert (reach["window_s"], reach["value"]) == (3 * DAY_S, None)


async def test_an_inactive_sector_is_not_shown(api: Api) -> None:
    query(api.db_url, "UPDATE sector SET active = false WHERE id = 'hotline'")
    viewer = api.as_("viewer")
    listed = (await api.http.get(f"{V1}/sectors", headers=viewer)).json()
    assert "hotline" not in [s["id"] for s in listed["sectors"]]
    assert (await api.http.get(f"{V1}/sectors/hotline", headers=viewer)).status_code == 404
    assert (await api.http.get(f"{V1}/sectors/hotline/kpis", headers=viewer)).status_code == 404


async def test_an_agency_key_sees_only_its_sectors(api: Api) -> None:
    fill(api)
    agency = api.as_("agency", sectors=["water", "traffic"])
    listed = await api.http.get(f"{V1}/sectors", headers=agency)
    assert [s["id"] for s in listed.json()["sectors"]] == ["water", "traffic"]
    assert (await api.http.get(f"{V1}/sectors/traffic", headers=agency)).status_code == 200
    for path in ("/sectors/environment", "/sectors/environment/kpis"):
        hidden = await api.http.get(V1 + path, headers=agency)
        assert hidden.status_code == 404, path
    profile = (await api.http.get(f"{V1}/profile", headers=agency)).json()
    assert [s["id"] for s in profile["sectors"]] == ["water", "traffic"]
    assert len(profile["districts"]) == len(PROFILE.districts)


async def test_the_profile_has_sectors_metrics_thresholds_and_districts(api: Api) -> None:
    got = await api.http.get(f"{V1}/profile", headers=api.as_("viewer"))
    assert got.status_code == 200
    body = got.json()
    assert (body["name"], body["timezone"]) == ("mekong", "Asia/Ho_Chi_Minh")
    assert body["title_vi"] == PROFILE.title_vi
    assert [s["id"] for s in body["sectors"]] == MEKONG_ORDER
    water = body["sectors"][0]
    assert water["kpis"] == ["salinity", "water_level", "salinity_4ppt_reach_km"]
    salinity = next(m for m in water["metrics"] if m["id"] == "salinity")
    assert (salinity["unit"], salinity["name_vi"]) == ("‰", "Độ mặn")
    assert {(t["severity"], t["direction"], t["value"]) for t in salinity["thresholds"]} == {
        ("warning", "above", 1.0),
        ("critical", "above", 4.0),
    }
    assert body["districts"][0] == {
        "id": "provincial-city",
        "name_vi": "Thành phố (tỉnh lỵ)",
        "name_en": "Provincial city",
        "latitude": 9.95,
        "longitude": 106.34,
    }
    assert body == PROFILE.to_json_dict()


async def test_the_overview_catches_up_with_new_figures_within_seconds(api: Api) -> None:
    viewer = api.as_("viewer")
    first = (await api.http.get(f"{V1}/sectors/water", headers=viewer)).json()
    assert first["alerts"]["total"] == 0
    add_alert(api, "water", "critical", "open")
    add_source(api, "w-new", "water")
    add_readings(api, "w-new", "salinity", [(5, 0.5)])
    deadline = time.monotonic() + 15
    while True:
        now = (await api.http.get(f"{V1}/sectors/water", headers=viewer)).json()
        if now["alerts"]["critical"] == 1:
            break
        assert time.monotonic() < deadline, "the overview never showed the new alert"
        assert now["as_of"] == first["as_of"]  # the cached figures, as they were
        await asyncio.sleep(0.05)
    assert now["sources"]["online"] == 1
    assert _kpi(now, "salinity")["value"] == 0.5
    assert datetime.fromisoformat(now["as_of"]) > datetime.fromisoformat(first["as_of"])


async def test_without_a_key_the_overview_is_401(api: Api) -> None:
    for path in ("/sectors", "/sectors/water", "/sectors/water/kpis", "/profile"):
        assert (await api.http.get(V1 + path)).status_code == 401


async def test_me_tells_a_key_its_role_sectors_and_permissions(api: Api) -> None:
    operator = await api.http.get("/api/v1/me", headers=api.as_("operator"))
    agency = await api.http.get("/api/v1/me", headers=api.as_("agency", sectors=["water"]))
    anonymous = await api.http.get("/api/v1/me")
    assert operator.status_code == 200
    assert operator.json()["role"] == "operator" and operator.json()["sectors"] is None
    assert "alerts.act" in operator.json()["permissions"]
    assert "ioc_" not in operator.text  # never the secret
    assert agency.json()["sectors"] == ["water"]
    assert "alerts.act" not in agency.json()["permissions"]
    assert anonymous.status_code == 401
