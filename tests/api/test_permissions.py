"""The permission matrix, every cell: each route, each role, allowed or denied (README, "Roles").

The expectations are written out here, independently of `api/permissions.py`: the routes and
the permission each needs, and what each role holds. A route added to the app without a line
here fails `test_every_route_is_in_the_matrix`."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute

from api.app import create_app
from api.openapi import api_routes, needs_key
from tests.support.api import Api, api_settings, running_api
from tests.support.ingest import sync
from tests.support.services import create_database, drop_database, unique_name

# (method, path) -> the permission it needs; None: open to anyone (probes, the public CAP feed)
ROUTES: dict[tuple[str, str], str | None] = {
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/metrics"): None,
    ("GET", "/api/v1/sectors"): "panels.read",
    ("GET", "/api/v1/sectors/{}"): "panels.read",
    ("GET", "/api/v1/sectors/{}/kpis"): "panels.read",
    ("GET", "/api/v1/profile"): "panels.read",
    ("GET", "/api/v1/me"): "panels.read",
    ("GET", "/api/v1/sources"): "panels.read",
    ("POST", "/api/v1/sources"): "sources.write",
    ("GET", "/api/v1/sources/{}"): "panels.read",
    ("PATCH", "/api/v1/sources/{}"): "sources.write",
    ("GET", "/api/v1/sources/{}/latest"): "panels.read",
    ("GET", "/api/v1/telemetry/aggregate"): "panels.read",
    ("GET", "/api/v1/telemetry/raw"): "history.read",
    ("GET", "/api/v1/telemetry/export.csv"): "history.read",
    ("POST", "/api/v1/telemetry"): "telemetry.write",
    ("POST", "/api/v1/events"): "events.write",
    ("GET", "/api/v1/events"): "events.read",
    ("GET", "/api/v1/events/{}"): "events.read",
    ("PATCH", "/api/v1/events/{}"): "events.update",
    ("GET", "/api/v1/alerts"): "alerts.read",
    ("GET", "/api/v1/alerts/{}"): "alerts.read",
    ("GET", "/api/v1/alerts/{}/history"): "alerts.read",
    ("GET", "/api/v1/alerts/{}/cap"): "alerts.read",
    ("POST", "/api/v1/alerts/{}/ack"): "alerts.act",
    ("POST", "/api/v1/alerts/{}/resolve"): "alerts.act",
    ("POST", "/api/v1/alerts/{}/comments"): "alerts.act",
    ("POST", "/api/v1/alerts/{}/assign"): "alerts.act",
    ("POST", "/api/v1/alerts/{}/publish"): "alerts.act",
    ("GET", "/api/v1/cap/alerts.atom"): None,
    ("GET", "/api/v1/cap/alerts/{}.xml"): None,
    ("GET", "/api/v1/rules"): "rules.read",
    ("POST", "/api/v1/rules"): "rules.write",
    ("GET", "/api/v1/rules/{}"): "rules.read",
    ("PUT", "/api/v1/rules/{}"): "rules.write",
    ("DELETE", "/api/v1/rules/{}"): "rules.write",
    ("POST", "/api/v1/rules/backtest"): "rules.backtest",
    ("GET", "/api/v1/audit"): "audit.read",
}

READ_ALL = {"panels.read", "alerts.read", "events.read", "history.read", "rules.read"}
HOLDS: dict[str, set[str]] = {
    "admin": {p for p in ROUTES.values() if p is not None},
    "operator": READ_ALL | {"alerts.act", "events.update"},
    "analyst": READ_ALL | {"rules.backtest"},
    "agency": READ_ALL | {"telemetry.write", "events.write"},
    "viewer": {"panels.read", "alerts.read"},
}
ROLES = tuple(HOLDS)
# concrete values for path parameters; the agency key holds sector "water"
EXAMPLE = {"sectors": "water", "sources": "tram-1", "profile": ""}


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def _concrete(path: str) -> str:
    parts = path.split("/")
    out = []
    for i, part in enumerate(parts):
        if part.startswith("{"):
            out.append(EXAMPLE.get(parts[i - 1], "1") + part[part.index("}") + 1 :])
        else:
            out.append(part)
    return "/".join(out)


def _app_routes() -> dict[tuple[str, str], APIRoute]:
    app = create_app(api_settings("postgresql://nobody@127.0.0.1:1/none"))
    out: dict[tuple[str, str], APIRoute] = {}
    for path, methods, route in api_routes(app):
        if route.include_in_schema:
            for method in methods - {"HEAD"}:
                out[(method, _shape(path))] = route
    assert len(out) > 20, "the walk through the app's routers found too few routes"
    return out


def _declared(route: APIRoute) -> str | None:
    check = needs_key(route)
    return check.permission.value if check is not None else None


def test_every_route_is_in_the_matrix_with_the_permission_it_declares() -> None:
    routes = _app_routes()
    assert set(routes) == set(ROUTES)
    for where, route in routes.items():
        assert _declared(route) == ROUTES[where], where


@pytest.fixture(scope="module")
def matrix_db(pg_server: str, template_db: str) -> Iterator[str]:
    name = unique_name("ioc_matrix")
    url = create_database(pg_server, name, template=template_db)
    try:
        sync(url)
        yield url
    finally:
        drop_database(pg_server, name)


@pytest.fixture(scope="module")
async def matrix_api(matrix_db: str) -> AsyncIterator[Api]:
    async with running_api(matrix_db) as api:
        yield api


def _cells() -> list[Any]:
    return [
        pytest.param(method, path, role, id=f"{method} {path} as {role or 'anonymous'}")
        for (method, path) in ROUTES
        for role in (*ROLES, None)
    ]


@pytest.mark.parametrize(("method", "path", "role"), _cells())
async def test_a_role_is_let_through_exactly_where_the_matrix_allows(
    matrix_api: Api, method: str, path: str, role: str | None
) -> None:
    needed = ROUTES[(method, path)]
    headers = {}
    if role is not None:
        headers = matrix_api.as_(role, sectors=["water"] if role == "agency" else [])
    response = await matrix_api.http.request(
        method,
        _concrete(path),
        params={"sector": "water"},
        json={} if method in ("POST", "PUT", "PATCH") else None,
        headers=headers,
    )
    if needed is None:
        assert response.status_code not in (401, 403), response.text
    elif role is None:
        assert response.status_code == 401, response.text
    elif needed in HOLDS[role]:
        assert response.status_code not in (401, 403), response.text
    else:
        assert response.status_code == 403, response.text
        assert response.json()["type"] == "urn:ioc:problem:forbidden"
