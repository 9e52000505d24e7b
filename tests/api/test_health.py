"""Health and readiness, through the ASGI app on a real database and broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from pydantic import SecretStr

from api.app import create_app
from ioc.embedded_pg import free_port
from ioc.settings import Settings


@asynccontextmanager
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ioc") as http:
            yield http


async def test_healthz_and_readyz_with_database_and_broker(db_url: str, mqtt_url: str) -> None:
    settings = Settings(database_url=SecretStr(db_url), mqtt_url=SecretStr(mqtt_url))
    async with client(settings) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}


async def test_readyz_reports_an_unreachable_broker_as_problem_json(db_url: str) -> None:
    dead = f"mqtt://127.0.0.1:{free_port()}"
    settings = Settings(database_url=SecretStr(db_url), mqtt_url=SecretStr(dead))
    async with client(settings) as http:
        ready = await http.get("/readyz")
    assert ready.status_code == 503
    assert ready.headers["content-type"] == "application/problem+json"
    body = ready.json()
    assert body["status"] == 503
    assert body["checks"]["database"] == "ok"
    assert "unreachable" in body["checks"]["broker"]


async def test_unknown_path_is_problem_json(db_url: str) -> None:
    async with client(Settings(database_url=SecretStr(db_url))) as http:
        missing = await http.get("/nowhere")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["title"] == "Not Found"
