"""Agency events over HTTP: the ingest pipeline, deduplication, Idempotency-Key, listing,
handling status, scope and the audit trail."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.api import Api
from tests.support.ingest import query

FLOOD: dict[str, Any] = {
    "sector": "water",
    "source": "chi-cuc-thuy-loi",
    "kind": "flood",
    "severity": "critical",
    "title": "Ngập sâu 0,5 m tại phường 1",
    "occurred_at": "2026-11-30T07:45:00+07:00",
    "location": {"lat": 9.285, "lon": 105.724, "name": "Phường 1"},
}


def _count(api: Api, sql: str = "SELECT count(*) FROM event") -> int:
    return int(query(api.db_url, sql)[0][0])


async def test_an_agency_posts_an_event_that_opens_an_alert_and_is_audited(api: Api) -> None:
    agency = api.as_("agency", sectors=["water"])
    posted = await api.http.post("/api/v1/events", json=FLOOD, headers=agency)
    assert posted.status_code == 201, posted.text
    event = posted.json()
    assert event["title"] == "Ngập sâu 0,5 m tại phường 1"
    assert event["status"] == "new"
    assert event["occurred_at"] == "2026-11-30T00:45:00Z"
    assert (event["latitude"], event["location"]) == (9.285, "Phường 1")
    alerts = query(
        api.db_url, "SELECT severity, status FROM alert WHERE event_id = %s", (event["id"],)
    )
    assert alerts == [("critical", "open")]
    audit = query(
        api.db_url, "SELECT actor, action, target FROM audit_log WHERE action = 'event.create'"
    )
    assert len(audit) == 1
    actor, action, target = audit[0]
    assert actor.startswith("key:") and (action, target) == ("event.create", f"event:{event['id']}")


async def test_the_same_event_twice_is_stored_once_and_answered_with_it(api: Api) -> None:
    agency = api.as_("agency", sectors=["water"])
    first = await api.http.post("/api/v1/events", json=FLOOD, headers=agency)
    again = await api.http.post("/api/v1/events", json=FLOOD, headers=agency)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert _count(api) == 1


async def test_an_idempotency_key_replays_the_first_answer_and_creates_nothing(api: Api) -> None:
    agency = api.as_("agency", sectors=["water"])
    body = {**FLOOD, "external_ref": "CCTL-1"}
    headers = {**agency, "Idempotency-Key": "k-1"}
    first = await api.http.post("/api/v1/events", json=body, headers=headers)
    retry = await api.http.post("/api/v1/events", json=body, headers=headers)
    assert (first.status_code, retry.status_code) == (201, 201)
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert _count(api) == 1
    other = await api.http.post(
        "/api/v1/events", json={**body, "title": "khác", "external_ref": "CCTL-2"}, headers=headers
    )
    assert other.status_code == 422
    assert other.json()["type"] == "urn:ioc:problem:idempotency-key-reused"
    assert _count(api) == 1
    # concurrent retries of a new key: one event, one answer
    burst = {**agency, "Idempotency-Key": "k-2"}
    body2 = {**FLOOD, "title": "Sạt lở bờ kè", "kind": "landslide"}
    answers = await asyncio.gather(
        *(api.http.post("/api/v1/events", json=body2, headers=burst) for _ in range(5))
    )
    assert {a.json()["id"] for a in answers} == {answers[0].json()["id"]}
    assert _count(api) == 2
    # the key belongs to the key holder: another key's same Idempotency-Key is its own
    admin = {**api.as_("admin"), "Idempotency-Key": "k-1"}
    mine = await api.http.post("/api/v1/events", json={**body, "external_ref": "X"}, headers=admin)
    assert mine.status_code == 201 and mine.json()["id"] != first.json()["id"]


async def test_an_agency_cannot_post_or_read_another_sectors_events(api: Api) -> None:
    water = api.as_("agency", sectors=["water"])
    denied = await api.http.post(
        "/api/v1/events", json={**FLOOD, "sector": "environment"}, headers=water
    )
    assert denied.status_code == 403
    admin = api.as_("admin")
    other = await api.http.post(
        "/api/v1/events", json={**FLOOD, "sector": "environment", "kind": "smoke"}, headers=admin
    )
    assert other.status_code == 201
    hidden = await api.http.get(f"/api/v1/events/{other.json()['id']}", headers=water)
    assert hidden.status_code == 404
    listed = await api.http.get("/api/v1/events", headers=water)
    assert listed.json()["items"] == []
    asked = await api.http.get("/api/v1/events", params={"sector": "environment"}, headers=water)
    assert asked.status_code == 403


async def test_invalid_events_name_the_field(api: Api) -> None:
    admin = api.as_("admin")
    bad = await api.http.post(
        "/api/v1/events", json={**FLOOD, "severity": "apocalyptic"}, headers=admin
    )
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in bad.json()["errors"]] == ["body.severity"]
    naive = await api.http.post(
        "/api/v1/events", json={**FLOOD, "occurred_at": "2026-11-30T07:45:00"}, headers=admin
    )
    assert naive.status_code == 422
    assert "offset" in naive.text
    unknown_sector = await api.http.post(
        "/api/v1/events", json={**FLOOD, "sector": "mars"}, headers=admin
    )
    assert unknown_sector.status_code == 422
    assert unknown_sector.json()["reasons"] == {"unknown_sector": 1}
    assert _count(api) == 0


async def test_events_list_newest_first_in_pages_with_filters(api: Api) -> None:
    admin = api.as_("admin")
    for i in range(5):
        body = {
            **FLOOD,
            "title": f"Sự kiện {i}",
            "severity": "warning" if i % 2 else "info",
            "occurred_at": f"2026-11-30T0{i}:00:00+07:00",
        }
        assert (await api.http.post("/api/v1/events", json=body, headers=admin)).status_code == 201
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.http.get("/api/v1/events", params=params, headers=admin)).json()
        seen += [e["title"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"Sự kiện {i}" for i in (4, 3, 2, 1, 0)]
    warnings = await api.http.get("/api/v1/events", params={"severity": "warning"}, headers=admin)
    assert [e["title"] for e in warnings.json()["items"]] == ["Sự kiện 3", "Sự kiện 1"]
    since = await api.http.get(
        "/api/v1/events", params={"since": "2026-11-30T03:00:00+07:00"}, headers=admin
    )
    assert len(since.json()["items"]) == 2
    naive = await api.http.get(
        "/api/v1/events", params={"since": "2026-11-30T03:00"}, headers=admin
    )
    assert naive.status_code == 422


async def test_operators_move_an_event_through_its_statuses_with_audit(api: Api) -> None:
    made = await api.http.post("/api/v1/events", json=FLOOD, headers=api.as_("admin"))
    event_id = made.json()["id"]
    operator = api.as_("operator")
    moved = await api.http.patch(
        f"/api/v1/events/{event_id}",
        json={"status": "in_progress", "note": "đã cử đội ứng cứu"},
        headers=operator,
    )
    assert moved.status_code == 200
    assert moved.json()["status"] == "in_progress"
    done = await api.http.patch(
        f"/api/v1/events/{event_id}", json={"status": "resolved"}, headers=operator
    )
    assert done.json()["status"] == "resolved"
    trail = query(
        api.db_url,
        "SELECT detail->>'from', detail->>'to', detail->>'note' FROM audit_log "
        "WHERE action = 'event.update' ORDER BY id",
    )
    assert trail == [("new", "in_progress", "đã cử đội ứng cứu"), ("in_progress", "resolved", None)]
    agency = api.as_("agency", sectors=["water"])
    refused = await api.http.patch(
        f"/api/v1/events/{event_id}", json={"status": "new"}, headers=agency
    )
    assert refused.status_code == 403
    missing = await api.http.patch(
        "/api/v1/events/999999", json={"status": "new"}, headers=operator
    )
    assert missing.status_code == 404
    huge = await api.http.get(f"/api/v1/events/{2**70}", headers=operator)
    assert huge.status_code == 422
