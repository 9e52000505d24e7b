"""API keys, roles, scope, limits and the audit trail, through the real app and database."""

from __future__ import annotations

import psycopg
import pytest

from ioc.db import libpq_url
from ioc.keys import digest, revoke_key
from ioc.settings import DEVELOPMENT_PEPPER
from tests.support.api import Api, bearer, make_key, running_api


async def test_no_key_bad_key_and_revoked_key_get_401_problems(api: Api) -> None:
    missing = await api.http.get("/api/v1/audit")
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert (await api.http.get("/api/v1/audit", headers=bearer("ioc_nope"))).status_code == 401
    key = api.key("admin")
    forged = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")
    assert (await api.http.get("/api/v1/audit", headers=bearer(forged))).status_code == 401
    assert (await api.http.get("/api/v1/audit", headers=bearer(key))).status_code == 200
    with psycopg.connect(libpq_url(api.db_url)) as conn:
        revoke_key(conn, prefix=key, actor="test")
    gone = await api.http.get("/api/v1/audit", headers=bearer(key))
    assert gone.status_code == 401
    assert "revoked" in gone.json()["detail"]


def test_keys_are_stored_under_the_keyed_hash_never_in_clear(synced_db: str) -> None:
    key = make_key(synced_db, "viewer")
    prefix, secret = key.removeprefix("ioc_").split("_", 1)
    with psycopg.connect(libpq_url(synced_db)) as conn:
        row = conn.execute(
            "SELECT key_hash, prefix FROM api_key WHERE prefix = %s", (prefix,)
        ).fetchone()
        dump = conn.execute("SELECT row_to_json(k)::text FROM api_key k").fetchall()
    assert row == (digest(DEVELOPMENT_PEPPER, secret), prefix)
    assert not any(secret in line[0] for line in dump)


async def test_a_role_without_the_permission_gets_403(api: Api) -> None:
    denied = await api.http.get("/api/v1/audit", headers=api.as_("operator"))
    assert denied.status_code == 403
    assert denied.json()["type"] == "urn:ioc:problem:forbidden"
    assert "audit.read" in denied.json()["detail"]


async def test_the_audit_trail_lists_key_changes_newest_first_in_pages(api: Api) -> None:
    admin = api.as_("admin")
    for role in ("viewer", "analyst", "operator"):
        api.key(role)
    first = await api.http.get("/api/v1/audit", params={"limit": 2}, headers=admin)
    assert first.status_code == 200
    page = first.json()
    assert [e["action"] for e in page["items"]] == ["key.create", "key.create"]
    assert page["items"][0]["detail"]["role"] == "operator"
    second = await api.http.get(
        "/api/v1/audit", params={"limit": 2, "cursor": page["next_cursor"]}, headers=admin
    )
    rest = second.json()
    assert [e["detail"]["role"] for e in rest["items"]] == ["viewer", "admin"]
    assert rest["next_cursor"] is None
    only = await api.http.get(
        "/api/v1/audit", params={"action": "key.create", "limit": 1}, headers=admin
    )
    assert len(only.json()["items"]) == 1
    bad = await api.http.get("/api/v1/audit", params={"cursor": "garbage!"}, headers=admin)
    assert bad.status_code == 422
    assert bad.json()["type"] == "urn:ioc:problem:validation"


async def test_an_agency_key_past_its_rate_gets_429_with_retry_after(synced_db: str) -> None:
    async with running_api(synced_db, api_rate_limit_per_min=3) as api:
        agency = api.as_("agency", sectors=["water"])
        codes = [
            (await api.http.get("/api/v1/audit", headers=agency)).status_code for _ in range(3)
        ]
        assert codes == [403, 403, 403]  # counted, then refused by role
        limited = await api.http.get("/api/v1/audit", headers=agency)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["content-type"] == "application/problem+json"
        # other roles and other keys are not limited by it
        admin = api.as_("admin")
        assert all([(await api.http.get("/api/v1/audit", headers=admin)).status_code == 200] * 5)


async def test_a_body_over_the_limit_gets_413_before_it_is_read_whole(synced_db: str) -> None:
    async with running_api(synced_db, api_max_body_bytes=2048) as api:
        big = b"x" * 4096
        declared = await api.http.post("/api/v1/audit", content=big)
        assert declared.status_code == 413
        assert declared.headers["content-type"] == "application/problem+json"

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(4):
                yield b"y" * 1024

        streamed = await api.http.post("/api/v1/audit", content=chunks(), headers=api.as_("admin"))
        assert streamed.status_code in (405, 413)  # the route takes no body: refused either way


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_docs_work_offline(api: Api, path: str) -> None:
    page = await api.http.get(path)
    assert page.status_code == 200
    html = page.text
    assert "cdn" not in html.lower() and "https://" not in html.split("<body")[0]
    assets = [
        a for a in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js") if a in html
    ]
    assert assets
    for asset in assets:
        got = await api.http.get(f"/docs-assets/{asset}")
        assert got.status_code == 200 and len(got.content) > 10_000
    spec = await api.http.get("/openapi.json")
    assert spec.json()["info"]["title"] == "ioc"
