"""Liveness, readiness and Prometheus metrics (no key needed: for probes and scrapers)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.context import Ctx
from api.metrics import registry_collector
from api.problems import problem_response
from ioc.errors import BrokerError
from ioc.mqtt import parse_mqtt_url, ping_broker

READY_TIMEOUT_S = 3.0

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    """Always 200 while the process serves requests."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=None,
    summary="The database (and the broker, when IOC_MQTT_URL is set) answer",
    responses={503: {"description": "a dependency is unreachable (problem+json)"}},
)
async def readyz(ctx: Ctx) -> dict[str, Any] | JSONResponse:
    """200 when every dependency answers within 3 s, else 503 naming the one that did not."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            async with ctx.db.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    if ctx.settings.mqtt_url is not None:
        try:
            await ping_broker(
                parse_mqtt_url(ctx.settings.mqtt_url.get_secret_value()),
                timeout_s=READY_TIMEOUT_S,
            )
            checks["broker"] = "ok"
        except BrokerError as exc:
            checks["broker"] = str(exc)
    if all(v == "ok" for v in checks.values()):
        return {"status": "ready", "checks": checks}
    return problem_response(503, "Not ready", "a dependency is unreachable", checks=checks)


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "text format 0.0.4"}},
)
async def metrics(ctx: Ctx) -> Response:
    """Request latency histograms of this process, and alerts, sources and ingest figures
    read from the database now. Ingest workers serve their own process counters on
    IOC_INGEST_METRICS_PORT."""
    figures = registry_collector()
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            async with ctx.db.engine.connect() as conn:
                await figures.refresh(conn)
    except (SQLAlchemyError, OSError, TimeoutError):
        figures.rows = {}
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
