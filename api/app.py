"""The FastAPI application: health and readiness for now; routers arrive with later issues."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ioc.db import make_engine
from ioc.errors import BrokerError
from ioc.mqtt import parse_mqtt_url, ping_broker
from ioc.settings import Settings, get_settings
from ioc.storage import retention_loop
from ioc.timeseries import detect_storage

PROBLEM_JSON = "application/problem+json"
READY_TIMEOUT_S = 3.0


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    """An RFC 9457 problem details response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; the database URL must be resolved already (see `ioc serve`)."""
    settings = settings or get_settings()
    if settings.database_url is None:
        raise RuntimeError("create_app needs IOC_DATABASE_URL (ioc serve sets it)")
    url = settings.database_url.get_secret_value()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(url, pool_size=10, max_overflow=10)
        app.state.engine = engine
        async with engine.connect() as conn:
            app.state.storage = await detect_storage(conn)
        pruner = None
        if not app.state.storage.timescale:
            pruner = asyncio.create_task(retention_loop(engine, settings.retention_days))
        try:
            yield
        finally:
            if pruner is not None:
                pruner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pruner
            await engine.dispose()

    app = FastAPI(title="ioc", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(StarletteHTTPException)
    async def _http_problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), str(exc.detail))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=None)
    async def readyz(request: Request) -> dict[str, Any] | JSONResponse:
        """The database (and the broker, when IOC_MQTT_URL is set) answer."""
        checks: dict[str, str] = {}
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                async with request.app.state.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
        if settings.mqtt_url is not None:
            try:
                await ping_broker(
                    parse_mqtt_url(settings.mqtt_url.get_secret_value()), timeout_s=READY_TIMEOUT_S
                )
                checks["broker"] = "ok"
            except BrokerError as exc:
                checks["broker"] = str(exc)
        if all(v == "ok" for v in checks.values()):
            return {"status": "ready", "checks": checks}
        return problem(503, "Not ready", "a dependency is unreachable", checks=checks)

    return app
