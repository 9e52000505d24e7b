"""The alert routes on alerts the engine opened from real readings: the list and its filters
and pages, agency scope, the operators' actions with their history, audit and NOTIFY, and the
CAP document."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from alerts.lifecycle import NOTIFY_CHANNEL
from ioc.db import libpq_url
from tests.support.alerts import engine_writer, feed
from tests.support.api import Api, running_api
from tests.support.cap12 import NS, check
from tests.support.ingest import make_item, query, unique

pytestmark = pytest.mark.timeout(120)

# (sector, metric, value, minutes of readings): each opens an alert with the seeded rules
RAIN = ("water", "rainfall_24h", 150.0, 1)  # warning at once
SALT = ("water", "salinity", 5.0, 16)  # critical after 15 minutes
CRASH = ("traffic", "fatal_accidents", 2.0, 1)  # critical at once
BEDS = ("health", "bed_occupancy_pct", 99.0, 1)  # warning at once


def open_alerts(db_url: str, *specs: tuple[str, str, float, int]) -> list[int]:
    """Feed readings that open one alert per spec (in this order); their ids."""
    t0 = datetime.now(UTC) - timedelta(hours=1)
    sources = []
    with engine_writer(db_url) as writer:
        for sector, metric, value, minutes in specs:
            source = unique(f"{sector}-tram")
            sources.append(source)
            body = [
                {
                    "ts": int((t0 + timedelta(minutes=m)).timestamp() * 1000),
                    "values": {metric: value},
                }
                for m in range(minutes)
            ]
            feed(writer, make_item(f"ioc/v1/{sector}/{source}/telemetry", body))
    ids = []
    for source in sources:
        ((alert_id,),) = query(db_url, "SELECT id FROM alert WHERE source_id = %s", (source,))
        ids.append(int(alert_id))
    return ids


async def ids_of(api: Api, headers: dict[str, str], **params: Any) -> list[int]:
    """Every alert id the list answers, following its pages."""
    out: list[int] = []
    cursor = None
    while True:
        page = await api.http.get(
            "/api/v1/alerts", params={**params, **({"cursor": cursor} if cursor else {})},
            headers=headers,
        )  # fmt: skip
        assert page.status_code == 200, page.text
        body = page.json()
        out += [a["id"] for a in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return out


async def test_the_list_filters_and_pages_newest_first(api: Api) -> None:
    rain, salt, crash, beds = open_alerts(api.db_url, RAIN, SALT, CRASH, BEDS)
    viewer = api.as_("viewer")
    operator = api.as_("operator")
    first = await api.http.get("/api/v1/alerts", params={"limit": 2}, headers=viewer)
    assert first.status_code == 200
    page = first.json()
    assert [a["id"] for a in page["items"]] == [beds, crash]
    crash_alert = page["items"][1]
    assert crash_alert["sector_id"] == "traffic"
    assert crash_alert["metric"] == "fatal_accidents"
    assert crash_alert["severity"] == crash_alert["peak_severity"] == "critical"
    assert crash_alert["status"] == "open"
    assert crash_alert["rule_kind"] == "threshold"
    assert crash_alert["last_value"] == 2.0
    assert crash_alert["title"] and crash_alert["title_en"]
    assert crash_alert["public"] is False and crash_alert["retracted"] is False
    assert crash_alert["opened_at"].endswith(("Z", "+00:00"))
    assert page["next_cursor"]
    assert await ids_of(api, viewer, limit=1) == [beds, crash, salt, rain]
    assert await ids_of(api, viewer, sector="water") == [salt, rain]
    assert await ids_of(api, viewer, sector=["water", "health"], limit=2) == [beds, salt, rain]
    assert await ids_of(api, viewer, severity="critical") == [crash, salt]
    salt_source = query(api.db_url, "SELECT source_id FROM alert WHERE id = %s", (salt,))[0][0]
    assert await ids_of(api, viewer, source=salt_source) == [salt]
    (opened,) = query(api.db_url, "SELECT opened_at FROM alert WHERE id = %s", (crash,))[0]
    assert await ids_of(api, viewer, since=opened.isoformat()) == [beds, crash]

    # resolved alerts leave the default list; status asks for them
    assert (await api.http.post(f"/api/v1/alerts/{rain}/resolve", headers=operator)).is_success
    assert (await api.http.post(f"/api/v1/alerts/{crash}/ack", headers=operator)).is_success
    assert await ids_of(api, viewer) == [beds, crash, salt]
    assert await ids_of(api, viewer, status="resolved") == [rain]
    assert await ids_of(api, viewer, status="acknowledged") == [crash]
    assert await ids_of(api, viewer, status=["open", "resolved"]) == [beds, salt, rain]
    assign = await api.http.post(
        f"/api/v1/alerts/{salt}/assign", json={"to": "Chi cục Thủy lợi"}, headers=operator
    )
    assert assign.status_code == 200
    assert await ids_of(api, viewer, assigned_to="Chi cục Thủy lợi") == [salt]

    for bad in (
        {"cursor": "garbage!"},
        {"since": "2026-01-01T00:00:00"},  # no offset
        {"status": "closed"},
        {"severity": "fatal"},
        {"sector": "Water!"},
        {"limit": 0},
    ):
        answer = await api.http.get("/api/v1/alerts", params=bad, headers=viewer)
        assert answer.status_code == 422, bad
        assert answer.headers["content-type"] == "application/problem+json"


async def test_an_agency_key_sees_only_its_sectors(api: Api) -> None:
    rain, crash = open_alerts(api.db_url, RAIN, CRASH)
    water = api.as_("agency", sectors=["water"])
    assert await ids_of(api, water) == [rain]
    assert await ids_of(api, water, sector="water") == [rain]
    assert (await api.http.get(f"/api/v1/alerts/{rain}", headers=water)).status_code == 200
    other = await api.http.get("/api/v1/alerts", params={"sector": "traffic"}, headers=water)
    assert other.status_code == 403
    for path in ("", "/history", "/cap"):
        hidden = await api.http.get(f"/api/v1/alerts/{crash}{path}", headers=water)
        assert hidden.status_code == 404, path
        assert hidden.headers["content-type"] == "application/problem+json"
    # and agency keys may not act on alerts at all
    act = await api.http.post(f"/api/v1/alerts/{rain}/ack", headers=water)
    assert act.status_code == 403


async def test_operators_ack_comment_assign_publish_and_resolve_with_history_and_audit(
    api: Api,
) -> None:
    (alert_id,) = open_alerts(api.db_url, SALT)
    operator = api.as_("operator")
    base = f"/api/v1/alerts/{alert_id}"
    async with await psycopg.AsyncConnection.connect(
        libpq_url(api.db_url), autocommit=True
    ) as listener:
        await listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        ack = await api.http.post(f"{base}/ack", json={"note": "Đã nhận"}, headers=operator)
        assert ack.status_code == 200, ack.text
        acked = ack.json()
        assert acked["status"] == "acknowledged"
        assert acked["acknowledged_by"].startswith("key:")
        assert acked["acknowledged_at"] is not None

        said = await api.http.post(
            f"{base}/comments", json={"text": "Đội ứng cứu đã đến hiện trường"}, headers=operator
        )
        assert said.status_code == 200
        assert said.json()["status"] == "acknowledged"
        given = await api.http.post(f"{base}/assign", json={"to": "Chi cục Thủy lợi"},
                                    headers=operator)  # fmt: skip
        assert given.json()["assigned_to"] == "Chi cục Thủy lợi"
        shown = await api.http.post(f"{base}/publish", json={"public": True}, headers=operator)
        assert shown.json()["public"] is True
        taken = await api.http.post(f"{base}/assign", json={"to": None}, headers=operator)
        assert taken.json()["assigned_to"] is None
        done = await api.http.post(f"{base}/resolve", json={"note": "Hết mặn"}, headers=operator)
        assert done.status_code == 200
        resolved = done.json()
        assert resolved["status"] == "resolved"
        assert resolved["resolved_by"] == acked["acknowledged_by"]

        history = await api.http.get(f"{base}/history", headers=api.as_("viewer"))
        assert history.status_code == 200
        events = history.json()["items"]
        notified = [int(n.payload) async for n in listener.notifies(timeout=10, stop_after=6)]
    actor = acked["acknowledged_by"]
    assert [(e["kind"], e["status"], e["actor"], e["detail"]) for e in events[1:]] == [
        ("acknowledged", "acknowledged", actor, {"note": "Đã nhận"}),
        ("commented", "acknowledged", actor, {"text": "Đội ứng cứu đã đến hiện trường"}),
        ("assigned", "acknowledged", actor, {"to": "Chi cục Thủy lợi", "from": None}),
        ("published", "acknowledged", actor, {}),
        ("assigned", "acknowledged", actor, {"to": None, "from": "Chi cục Thủy lợi"}),
        ("resolved", "resolved", actor, {"note": "Hết mặn"}),
    ]
    assert events[0]["kind"] == "opened"
    assert all(e["severity"] == "critical" for e in events)
    assert notified == [e["id"] for e in events[1:]]

    audit = await api.http.get(
        "/api/v1/audit", params={"target": f"alert:{alert_id}"}, headers=api.as_("admin")
    )
    rows = list(reversed(audit.json()["items"]))
    assert [(r["action"], r["actor"]) for r in rows] == [
        ("alert.acknowledge", actor),
        ("alert.comment", actor),
        ("alert.assign", actor),
        ("alert.publish", actor),
        ("alert.assign", actor),
        ("alert.resolve", actor),
    ]
    assert rows[1]["detail"] == {"event_id": events[2]["id"], "text": events[2]["detail"]["text"]}

    # what no longer applies is a 409; comments are still welcome
    for path in ("ack", "resolve"):
        again = await api.http.post(f"{base}/{path}", headers=operator)
        assert again.status_code == 409, path
        assert again.json()["type"] == "urn:ioc:problem:conflict"
    late = await api.http.post(f"{base}/assign", json={"to": "X"}, headers=operator)
    assert late.status_code == 409
    after = await api.http.post(f"{base}/comments", json={"text": "Hậu kiểm"}, headers=operator)
    assert after.status_code == 200
    assert query(
        api.db_url, "SELECT count(*) FROM audit_log WHERE target = %s", (f"alert:{alert_id}",)
    ) == [(7,)]


async def test_history_pages_oldest_first(api: Api) -> None:
    (alert_id,) = open_alerts(api.db_url, BEDS)
    operator = api.as_("operator")
    for i in range(4):
        said = await api.http.post(
            f"/api/v1/alerts/{alert_id}/comments", json={"text": f"ghi chú {i}"}, headers=operator
        )
        assert said.status_code == 200
    kinds, texts, cursor = [], [], None
    while True:
        page = (
            await api.http.get(
                f"/api/v1/alerts/{alert_id}/history",
                params={"limit": 2, **({"cursor": cursor} if cursor else {})},
                headers=operator,
            )
        ).json()
        kinds += [e["kind"] for e in page["items"]]
        texts += [e["detail"].get("text") for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert kinds == ["opened"] + ["commented"] * 4
    assert texts == [None, "ghi chú 0", "ghi chú 1", "ghi chú 2", "ghi chú 3"]


async def test_actions_refuse_unknown_alerts_bad_bodies_and_other_roles(api: Api) -> None:
    (alert_id,) = open_alerts(api.db_url, CRASH)
    operator = api.as_("operator")
    base = f"/api/v1/alerts/{alert_id}"
    for path in ("", "/history", "/cap"):
        assert (await api.http.get(f"/api/v1/alerts/{alert_id + 999}{path}",
                                   headers=operator)).status_code == 404  # fmt: skip
    for path in ("", "/history"):
        huge = await api.http.get(f"/api/v1/alerts/{2**70}{path}", headers=operator)
        assert huge.status_code == 422
    unknown = await api.http.post(f"/api/v1/alerts/{alert_id + 999}/ack", headers=operator)
    assert unknown.status_code == 404
    assert unknown.json()["type"] == "urn:ioc:problem:not-found"
    for path, body in (
        ("comments", {}),
        ("comments", {"text": ""}),
        ("comments", {"text": "   "}),
        ("comments", {"text": "x" * 2001}),
        ("comments", {"text": "a\x00b"}),
        ("comments", {"text": "ok", "extra": 1}),
        ("assign", {}),
        ("assign", {"to": ""}),
        ("assign", {"to": "  "}),
        ("assign", {"to": "x" * 201}),
        ("publish", {"public": "maybe"}),
        ("ack", {"note": "x" * 2001}),
    ):
        answer = await api.http.post(f"{base}/{path}", json=body, headers=operator)
        assert answer.status_code == 422, (path, body)
        assert answer.json()["type"] == "urn:ioc:problem:validation"
    for role in ("viewer", "analyst"):
        denied = await api.http.post(f"{base}/ack", headers=api.as_(role))
        assert denied.status_code == 403, role
    assert (await api.http.post(f"{base}/ack", headers=api.as_("admin"))).status_code == 200
    # nothing refused left a trace
    kinds = query(api.db_url, "SELECT kind FROM alert_event WHERE alert_id = %s ORDER BY id",
                  (alert_id,))  # fmt: skip
    assert kinds == [("opened",), ("acknowledged",)]


def cap_text(root: Any, path: str) -> list[str]:
    return [el.text or "" for el in root.findall(path.replace("c:", f"{{{NS}}}"))]


async def test_the_cap_document_follows_the_alert_and_validates(synced_db: str) -> None:
    query(
        synced_db,
        "INSERT INTO source (id, sector_id, latitude, longitude, district) "
        "VALUES ('tram-cap', 'water', 9.3, 105.7, 'coastal-district')",
    )
    t0 = datetime.now(UTC) - timedelta(hours=1)
    body = [
        {"ts": int((t0 + timedelta(minutes=m)).timestamp() * 1000), "values": {"salinity": 5.0}}
        for m in range(16)
    ]
    with engine_writer(synced_db) as writer:
        feed(writer, make_item("ioc/v1/water/tram-cap/telemetry", body))
    ((alert_id,),) = query(synced_db, "SELECT id FROM alert WHERE source_id = 'tram-cap'")
    async with running_api(synced_db, cap_sender="ioc.mekong.example") as api:
        viewer = api.as_("viewer")
        url = f"/api/v1/alerts/{alert_id}/cap"
        first = await api.http.get(url, headers=viewer)
        assert first.status_code == 200
        assert first.headers["content-type"] == "application/cap+xml"
        root = check(first.content)
        assert cap_text(root, "c:msgType") == ["Alert"]
        assert cap_text(root, "c:sender") == ["ioc.mekong.example"]
        assert cap_text(root, "c:scope") == ["Restricted"]
        assert (
            cap_text(root, "c:info/c:senderName")
            == ["Tỉnh ven biển đồng bằng sông Cửu Long (mẫu)"] * 2
        )
        assert cap_text(root, "c:info/c:severity") == ["Severe", "Severe"]
        assert cap_text(root, "c:info/c:area/c:areaDesc") == ["Huyện ven biển", "Coastal district"]
        assert cap_text(root, "c:info/c:area/c:circle") == ["9.300000,105.700000 0.5"] * 2
        assert cap_text(root, "c:sent")[0].endswith("+07:00")
        (opening,) = cap_text(root, "c:identifier")

        operator = api.as_("operator")
        await api.http.post(f"/api/v1/alerts/{alert_id}/ack", headers=operator)
        root = check((await api.http.get(url, headers=viewer)).content)
        assert cap_text(root, "c:msgType") == ["Update"]
        assert cap_text(root, "c:references")[0].startswith(f"ioc.mekong.example,{opening},")
        (acked,) = cap_text(root, "c:identifier")
        # a comment or an assignment is not news: the document stays the same message
        await api.http.post(
            f"/api/v1/alerts/{alert_id}/comments", json={"text": "ghi chú"}, headers=operator
        )
        await api.http.post(
            f"/api/v1/alerts/{alert_id}/assign", json={"to": "Đội 1"}, headers=operator
        )
        root = check((await api.http.get(url, headers=viewer)).content)
        assert cap_text(root, "c:identifier") == [acked]
        await api.http.post(f"/api/v1/alerts/{alert_id}/resolve", headers=operator)
        root = check((await api.http.get(url, headers=viewer)).content)
        assert cap_text(root, "c:msgType") == ["Cancel"]
        assert cap_text(root, "c:info/c:responseType") == ["AllClear", "AllClear"]

    async with running_api(synced_db, cap_sender_name="IOC Mekong") as api:
        root = check((await api.http.get(url, headers=api.as_("viewer"))).content)
        assert cap_text(root, "c:info/c:senderName") == ["IOC Mekong", "IOC Mekong"]


async def test_the_openapi_document_declares_the_xml_media_types(api: Api) -> None:
    spec = (await api.http.get("/openapi.json")).json()
    cap = spec["paths"]["/api/v1/alerts/{alert_id}/cap"]["get"]["responses"]["200"]
    assert list(cap["content"]) == ["application/cap+xml"]
    action = spec["paths"]["/api/v1/alerts/{alert_id}/ack"]["post"]["responses"]
    assert {"200", "404", "409"} <= set(action)
