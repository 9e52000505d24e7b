"""The FastAPI application: `/api/v1` for operators, agencies and analysts (README, "HTTP API")."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from api import docs, openapi, problems, screen
from api.auth import KeyStore
from api.context import Context
from api.db import Database
from api.feed import AlertFeed
from api.limits import BodyLimit, RateLimiter
from api.live import LivePanels
from api.metrics import RequestTimer
from api.routers import (
    alerts,
    audit,
    cap,
    events,
    me,
    ops,
    overview,
    rules,
    sources,
    telemetry,
    ws,
)
from api.routers.overview import sector_figures
from api.stalls import Stalls
from ingest.http import HttpIngest
from ingest.worker import rules_for, writer_for
from ioc.catalogue import load_profile
from ioc.settings import Settings, get_settings
from ioc.storage import retention_loop
from ioc.timeseries import detect_storage

API_PREFIX = "/api/v1"
VERSION = "0.1.0"

DESCRIPTION = """The engine of a provincial Intelligent Operations Center: sector panels and KPIs,
sources, telemetry aggregates, history and CSV export, agency events, alerts with their history
and CAP documents, alert rules with a backtest, and the audit trail.

Send an API key as `Authorization: Bearer ioc_…` (made with `ioc keys create`). Errors are
RFC 9457 `application/problem+json`. Times are ISO 8601 with a UTC offset, in and out.
Lists are keyset-paginated: pass `next_cursor` back as `cursor`."""

TAGS = [
    {"name": "overview", "description": "Sectors, KPIs and the active profile"},
    {"name": "sources", "description": "Sensors, cameras and feeds"},
    {"name": "telemetry", "description": "Aggregates, raw readings, CSV export, HTTP ingest"},
    {"name": "events", "description": "Reports of sector agencies"},
    {"name": "alerts", "description": "Alerts, their history and actions, CAP"},
    {"name": "rules", "description": "Alert rules and their backtest"},
    {"name": "audit", "description": "Who changed what"},
    {"name": "operations", "description": "Health, readiness, metrics"},
]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; the database URL must be resolved already (see `ioc serve`)."""
    settings = settings or get_settings()
    if settings.database_url is None:
        raise RuntimeError("create_app needs IOC_DATABASE_URL (ioc serve sets it)")
    url = settings.database_url.get_secret_value()
    profile = load_profile(settings.profile)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(url)
        writer = writer_for(settings, url)
        writer.start()
        pruner = None
        feed: AlertFeed | None = None
        stalls: Stalls | None = None
        live: LivePanels | None = None
        try:
            async with db.engine.connect() as conn:
                storage = await detect_storage(conn)
            ingest = HttpIngest(
                writer,
                rules_for(settings, profile),
                max_payload_bytes=settings.ingest_max_payload_bytes,
            )
            app.state.ctx = Context(settings, profile, db, storage, ingest)
            app.state.keys = KeyStore(
                db.engine,
                pepper=settings.api_key_pepper.get_secret_value(),
                cache_s=settings.api_key_cache_s,
            )
            app.state.rate_limiter = RateLimiter(settings.api_rate_limit_per_min)
            app.state.stalls = stalls = Stalls(settings.ws_send_timeout_s)
            feed = AlertFeed(url)
            await feed.start()
            app.state.feed = feed
            live = LivePanels(lambda: sector_figures(db))
            app.state.live = live
            if not storage.timescale:
                pruner = asyncio.create_task(retention_loop(db.engine, settings.retention_days))
            yield
        finally:
            if live is not None:
                await live.stop()
            if feed is not None:
                await feed.stop()
            if stalls is not None:
                await stalls.stop()
            if pruner is not None:
                pruner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pruner
            await anyio.to_thread.run_sync(writer.stop)
            await db.dispose()

    app = FastAPI(
        title="ioc",
        version=VERSION,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    problems.install(app)
    docs.install(app)
    openapi.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(RequestTimer)
    app.include_router(ops.router)
    app.include_router(ws.router)
    for module in (overview, me, sources, telemetry, events, alerts, cap, rules, audit):
        router = module.router
        app.include_router(router, prefix=API_PREFIX)
    screen.install(app, settings, profile)  # last: the screen's files are mounted at `/`
    return app
