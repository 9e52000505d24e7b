"""Alert rules over HTTP: listed within a key's sectors, changed by admins only with the invalid
field named, audited; and the backtest, which gives the alerts the engine gave on the same
readings (the issue's acceptance test)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ingest.items import Item
from ingest.worker import writer_for
from ioc.keys import split
from tests.support.alerts import feed
from tests.support.api import Api, api_settings
from tests.support.ingest import make_item, query, unique

pytestmark = pytest.mark.timeout(300)

T0 = (datetime.now(UTC) - timedelta(hours=12)).replace(second=0, microsecond=0)

FLOW: dict[str, Any] = {
    "name": "Lưu lượng > 1000 xe/h trong 3 phút",
    "kind": "threshold",
    "sector_id": "traffic",
    "metric": "flow",
    "severity": "warning",
    "direction": "above",
    "threshold": 1000,
    "for_s": 180,
    "clear_at": 800,
}


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def flow(source: str, samples: list[tuple[float, float]]) -> Item:
    body = [{"ts": int(at(m).timestamp() * 1000), "values": {"flow": v}} for m, v in samples]
    return make_item(f"ioc/v1/traffic/{source}/telemetry", body)


def seeded_id(api: Api, key: str) -> int:
    return int(query(api.db_url, "SELECT id FROM alert_rule WHERE seed_key = %s", (key,))[0][0])


async def create(api: Api, **changes: Any) -> dict[str, Any]:
    response = await api.http.post(
        "/api/v1/rules", json={**FLOW, **changes}, headers=api.as_("admin")
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# -- reading rules -------------------------------------------------------------------------


async def test_rules_are_listed_by_id_with_filters_in_pages(api: Api) -> None:
    operator = api.as_("operator")
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"sector": "water", "kind": "threshold", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await api.http.get("/api/v1/rules", params=params, headers=operator)).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    expected = query(
        api.db_url,
        "SELECT id FROM alert_rule WHERE sector_id = 'water' AND kind = 'threshold' ORDER BY id",
    )
    assert [r["id"] for r in seen] == [row[0] for row in expected]
    assert len(seen) > 2
    salinity = next(r for r in seen if r["seed_key"] == "water/salinity/above/warning")
    assert salinity["origin"] == "profile"
    assert salinity["follows_profile"] is True
    assert (salinity["threshold"], salinity["clear_at"], salinity["for_s"]) == (1.0, 0.8, 900)
    silence = await api.http.get(
        "/api/v1/rules", params={"kind": "silence", "enabled": True}, headers=operator
    )
    assert {r["kind"] for r in silence.json()["items"]} == {"silence"}
    by_metric = await api.http.get("/api/v1/rules", params={"metric": "salinity"}, headers=operator)
    assert {r["metric"] for r in by_metric.json()["items"]} == {"salinity"}
    one = await api.http.get(f"/api/v1/rules/{salinity['id']}", headers=operator)
    assert one.json() == salinity


async def test_an_agency_key_sees_only_its_sectors_rules(api: Api) -> None:
    agency = api.as_("agency", sectors=["water"])
    listed = (await api.http.get("/api/v1/rules", params={"limit": 1000}, headers=agency)).json()
    assert listed["items"]
    assert {r["sector_id"] for r in listed["items"]} == {"water"}
    outside = await api.http.get("/api/v1/rules", params={"sector": "traffic"}, headers=agency)
    assert outside.status_code == 403
    traffic = seeded_id(api, "traffic/silence")
    hidden = await api.http.get(f"/api/v1/rules/{traffic}", headers=agency)
    assert hidden.status_code == 404
    assert hidden.headers["content-type"] == "application/problem+json"
    water = seeded_id(api, "water/silence")
    assert (await api.http.get(f"/api/v1/rules/{water}", headers=agency)).status_code == 200
    viewer = await api.http.get("/api/v1/rules", headers=api.as_("viewer"))
    assert viewer.status_code == 403


async def test_ids_out_of_range_are_not_found_or_invalid_never_a_crash(api: Api) -> None:
    operator = api.as_("operator")
    assert (await api.http.get("/api/v1/rules/999999", headers=operator)).status_code == 404
    for bad in ("0", str(2**31), str(2**70), "x"):
        response = await api.http.get(f"/api/v1/rules/{bad}", headers=operator)
        assert response.status_code == 422, bad


# -- changing rules ------------------------------------------------------------------------


async def test_an_admin_creates_changes_and_deletes_a_rule_with_audit_rows(api: Api) -> None:
    admin = api.as_("admin")
    response = await api.http.post("/api/v1/rules", json=FLOW, headers=admin)
    assert response.status_code == 201
    rule = response.json()
    assert response.headers["location"] == f"/api/v1/rules/{rule['id']}"
    assert (rule["origin"], rule["follows_profile"], rule["seed_key"]) == ("user", None, None)
    assert (rule["threshold"], rule["clear_at"], rule["for_s"]) == (1000.0, 800.0, 180)
    changed = await api.http.put(
        f"/api/v1/rules/{rule['id']}", json={**FLOW, "threshold": 1200}, headers=admin
    )
    assert changed.status_code == 200
    assert changed.json()["threshold"] == 1200.0
    assert changed.json()["updated_at"] > rule["updated_at"]
    gone = await api.http.delete(f"/api/v1/rules/{rule['id']}", headers=admin)
    assert gone.json() == {"id": rule["id"], "resolved_alerts": []}
    again = await api.http.get(f"/api/v1/rules/{rule['id']}", headers=admin)
    assert again.status_code == 404
    assert (await api.http.delete(f"/api/v1/rules/{rule['id']}", headers=admin)).status_code == 404
    audit = (
        await api.http.get("/api/v1/audit", params={"target": f"rule:{rule['id']}"}, headers=admin)
    ).json()["items"]
    assert [e["action"] for e in audit] == ["rule.delete", "rule.update", "rule.create"]
    assert audit[2]["detail"]["definition"]["name"] == FLOW["name"]
    assert audit[1]["detail"] == {"changed": {"threshold": {"from": 1000.0, "to": 1200.0}}}
    assert audit[0]["detail"]["definition"]["threshold"] == 1200.0
    assert all(e["actor"].endswith(":test admin") for e in audit)


async def test_a_changed_seeded_rule_no_longer_follows_the_profile(api: Api) -> None:
    admin = api.as_("admin")
    rule_id = seeded_id(api, "water/silence")
    rule = (await api.http.get(f"/api/v1/rules/{rule_id}", headers=admin)).json()
    definition = {
        k: rule[k]
        for k in ("name", "kind", "sector_id", "severity", "params", "manual_resolve", "enabled")
    }
    definition["params"] = {"factor": 5}
    changed = await api.http.put(f"/api/v1/rules/{rule_id}", json=definition, headers=admin)
    assert changed.status_code == 200
    assert (changed.json()["params"], changed.json()["follows_profile"]) == ({"factor": 5}, False)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"clear_at": 1100}, "body.clear_at"),
        ({"metric": "salinity"}, "body.metric"),
        ({"sector_id": "space"}, "body.sector_id"),
        ({"source_id": "no-such-camera"}, "body.source_id"),
        ({"district": "atlantis"}, "body.district"),
        ({"threshold": 10**6}, "body.threshold"),
        ({"for_s": -5}, "body.for_s"),
        ({"severity": "panic"}, "body.severity"),
        ({"kind": "silence"}, "body.metric"),
        ({"params": {"after_s": 60}}, "body.params.after_s"),
        ({"name": ""}, "body.name"),
        ({"colour": "red"}, "body.colour"),
    ],
)
async def test_an_invalid_definition_is_a_422_naming_the_field(
    api: Api, changes: dict[str, Any], field: str
) -> None:
    response = await api.http.post(
        "/api/v1/rules", json={**FLOW, **changes}, headers=api.as_("admin")
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "urn:ioc:problem:validation"
    assert problem["errors"][0]["field"] == field, problem
    assert query(api.db_url, "SELECT count(*) FROM audit_log WHERE action LIKE 'rule.%%'") == [(0,)]


async def test_a_taken_name_is_a_409(api: Api) -> None:
    admin = api.as_("admin")
    seeded = (
        await api.http.get(f"/api/v1/rules/{seeded_id(api, 'water/events')}", headers=admin)
    ).json()
    response = await api.http.post(
        "/api/v1/rules", json={**FLOW, "name": seeded["name"]}, headers=admin
    )
    assert response.status_code == 409
    assert response.json()["type"] == "urn:ioc:problem:conflict"
    mine = await create(api)
    renamed = await api.http.put(
        f"/api/v1/rules/{mine['id']}", json={**FLOW, "name": seeded["name"]}, headers=admin
    )
    assert renamed.status_code == 409


@pytest.mark.parametrize("role", ["operator", "analyst", "agency", "viewer"])
async def test_only_admins_change_rules(api: Api, role: str) -> None:
    headers = api.as_(role, sectors=["traffic"] if role == "agency" else [])
    rule_id = seeded_id(api, "traffic/silence")
    attempts = [
        await api.http.post("/api/v1/rules", json=FLOW, headers=headers),
        await api.http.put(f"/api/v1/rules/{rule_id}", json=FLOW, headers=headers),
        await api.http.delete(f"/api/v1/rules/{rule_id}", headers=headers),
    ]
    assert [a.status_code for a in attempts] == [403, 403, 403]
    assert query(
        api.db_url, "SELECT count(*) FROM alert_rule WHERE name = %s", (FLOW["name"],)
    ) == [(0,)]


async def test_deleting_a_rule_resolves_its_active_alerts(api: Api) -> None:
    rule = await create(api, for_s=0)
    source = unique("cam")
    writer = writer_for(api_settings(api.db_url), api.db_url)
    writer.start()
    try:
        await asyncio.to_thread(feed, writer, flow(source, [(0, 1500.0)]))
    finally:
        await asyncio.to_thread(writer.stop)
    (alert_id,) = query(api.db_url, "SELECT id FROM alert WHERE source_id = %s", (source,))[0]
    gone = await api.http.delete(f"/api/v1/rules/{rule['id']}", headers=api.as_("admin"))
    assert gone.json()["resolved_alerts"] == [alert_id]
    rows = query(api.db_url, "SELECT status, resolved_by FROM alert WHERE id = %s", (alert_id,))
    parts = split(api.key("admin"))
    assert parts is not None
    assert rows == [("resolved", f"key:{parts[0]}:test admin")]


# -- the backtest --------------------------------------------------------------------------


def _walk(rng: random.Random, minutes: int) -> list[tuple[float, float]]:
    """A sensor's flow, a reading a minute: calm stretches, short and long peaks."""
    out: list[tuple[float, float]] = []
    level = 600.0
    for m in range(minutes):
        if rng.random() < 0.08:
            level = rng.choice([500.0, 700.0, 900.0, 1100.0, 1400.0, 2200.0])
        out.append((float(m), round(level + rng.uniform(-30, 30), 1)))
    return out


def _messages(rng: random.Random, source: str, samples: list[tuple[float, float]]) -> list[Item]:
    """Readings split into gateway batches of 1 to 30; a few batches arrive late."""
    batches: list[list[tuple[float, float]]] = []
    i = 0
    while i < len(samples):
        n = rng.randint(1, 30)
        batches.append(samples[i : i + n])
        i += n
    for _ in range(3):
        a = rng.randrange(len(batches))
        b = min(len(batches) - 1, a + rng.randint(1, 3))
        batches[a], batches[b] = batches[b], batches[a]
    return [flow(source, batch) for batch in batches]


async def test_the_backtest_gives_the_alerts_the_engine_gave_on_the_same_readings(
    api: Api,
) -> None:
    """The issue's acceptance test: readings through the real ingest writer and alert engine
    (as an ingest worker runs them, with the app's settings), then the backtest of the same
    rule over the same range, compared alert by alert."""
    rule = await create(api)
    names = {unique("nut-giao"): f"Nút giao số {i}" for i in range(3)}
    for source, name in names.items():
        query(
            api.db_url,
            "INSERT INTO source (id, sector_id, name) VALUES (%s, 'traffic', %s)",
            (source, name),
        )
    rng = random.Random(10)
    writer = writer_for(api_settings(api.db_url), api.db_url)
    writer.start()
    try:
        for source in names:
            items = _messages(rng, source, _walk(rng, 480))
            await asyncio.to_thread(feed, writer, *items)
    finally:
        await asyncio.to_thread(writer.stop)
    engine = query(
        api.db_url,
        "SELECT a.source_id, a.condition_started_at, a.condition_fired_at, "
        "a.condition_ended_at, a.peak_severity, a.occurrences, "
        "(SELECT max(r.value) FROM reading_named r WHERE r.source_id = a.source_id "
        " AND r.metric = 'flow' AND r.ts >= a.condition_started_at "
        " AND r.ts < coalesce(a.condition_ended_at, 'infinity')) "
        "FROM alert a WHERE a.rule_id = %s AND NOT a.retracted "
        "ORDER BY a.condition_fired_at, a.source_id",
        (rule["id"],),
    )
    assert len(engine) >= 6
    assert {row[0] for row in engine} == set(names)
    assert any(row[3] is None for row in engine) or any(row[5] > 1 for row in engine)
    body = {
        "rule": {**FLOW, "name": "proposed: the same rule"},
        "from": at(-60).isoformat(),
        "to": at(600).isoformat(),
    }
    response = await api.http.post("/api/v1/rules/backtest", json=body, headers=api.as_("analyst"))
    assert response.status_code == 200, response.text
    result = response.json()
    got = [
        (
            a["source_id"],
            datetime.fromisoformat(a["started_at"]),
            datetime.fromisoformat(a["fired_at"]),
            a["resolved_at"] and datetime.fromisoformat(a["resolved_at"]),
            a["peak_severity"],
            a["occurrences"],
            a["peak_value"],
        )
        for a in result["alerts"]
    ]
    assert got == [tuple(row) for row in engine]
    assert all(a["source_name"] == names[a["source_id"]] for a in result["alerts"])
    assert result["alerts_total"] == len(engine) and not result["alerts_truncated"]
    assert (result["sources"], result["readings"]) == (3, 3 * 480)
    assert sum(d["alerts"] for d in result["per_day"]) == len(engine)
    assert result["by_severity"] == {"warning": len(engine)}
    assert result["timezone"] == "Asia/Ho_Chi_Minh"
    one = await api.http.post(
        "/api/v1/rules/backtest",
        json={**body, "source_id": next(iter(names)), "max_alerts": 1},
        headers=api.as_("admin"),
    )
    first = [row for row in engine if row[0] == next(iter(names))]
    assert one.json()["alerts_total"] == len(first)
    assert len(one.json()["alerts"]) == 1
    assert one.json()["alerts_truncated"] is (len(first) > 1)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"to": "2026-02-02T00:00:00+07:00"}, "body.to"),  # 32 days
        ({"to": "2025-12-31T00:00:00+07:00"}, "body.to"),  # before from
        ({"from": "2026-01-01T00:00:00"}, "body.from"),  # no offset
        ({"rule": {**FLOW, "metric": "aqi"}}, "body.rule.metric"),
        ({"rule": {**FLOW, "clear_at": 1000}}, "body.rule.clear_at"),
        ({"source_id": "nowhere"}, "body.source_id"),
        ({"max_alerts": 0}, "body.max_alerts"),
    ],
)
async def test_a_backtest_that_cannot_run_is_a_422_naming_the_field(
    api: Api, changes: dict[str, Any], field: str
) -> None:
    body = {
        "rule": FLOW,
        "from": "2026-01-01T00:00:00+07:00",
        "to": "2026-01-08T00:00:00+07:00",
        **changes,
    }
    response = await api.http.post("/api/v1/rules/backtest", json=body, headers=api.as_("analyst"))
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field


async def test_a_week_without_readings_answers_every_day_with_none(api: Api) -> None:
    body = {"rule": FLOW, "from": "2026-01-01T00:00:00+07:00", "to": "2026-01-08T00:00:00+07:00"}
    response = await api.http.post("/api/v1/rules/backtest", json=body, headers=api.as_("analyst"))
    result = response.json()
    assert [d["day"] for d in result["per_day"]] == [f"2026-01-0{d}" for d in range(1, 8)]
    assert {d["alerts"] for d in result["per_day"]} == {0}
    assert (result["alerts_total"], result["alerts"], result["from"]) == (
        0,
        [],
        "2026-01-01T00:00:00+07:00",
    )


@pytest.mark.parametrize(("role", "status"), [("viewer", 403), ("operator", 403), ("agency", 403)])
async def test_only_analysts_and_admins_backtest(api: Api, role: str, status: int) -> None:
    body = {"rule": FLOW, "from": "2026-01-01T00:00:00+07:00", "to": "2026-01-02T00:00:00+07:00"}
    headers = api.as_(role, sectors=["traffic"] if role == "agency" else [])
    response = await api.http.post("/api/v1/rules/backtest", json=body, headers=headers)
    assert response.status_code == status
    for allowed in ("analyst", "admin"):
        ok = await api.http.post("/api/v1/rules/backtest", json=body, headers=api.as_(allowed))
        assert ok.status_code == 200
