"""Prometheus metrics of the API process: request latency by route, and figures read from the
database at each scrape (alerts by state, sources by status, ingest over the last hour)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Final

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.openapi import api_routes

REQUEST_SECONDS: Final = Histogram(
    "ioc_http_request_seconds",
    "Time to answer an HTTP request, by route template, method and status",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

WS_CLIENTS: Final = Gauge(
    "ioc_ws_clients", "Websocket clients connected now, by stream", ["stream"]
)
WS_CLOSED: Final = Counter(
    "ioc_ws_closed_total",
    "Websocket clients the server closed, by stream and reason (behind: its queue overflowed; "
    "stalled: it read nothing for IOC_WS_SEND_TIMEOUT_S)",
    ["stream", "reason"],
)

_DB_SQL: Final = {
    "alerts": "SELECT status, severity, count(*) FROM alert WHERE status <> 'resolved' "
    "GROUP BY 1, 2",
    "sources": "SELECT sector_id, status, count(*) FROM source GROUP BY 1, 2",
    "rejects": "SELECT reason, count(*) FROM ingest_reject "
    "WHERE received_at > now() - interval '1 hour' GROUP BY 1",
    "events": "SELECT count(*) FROM event WHERE received_at > now() - interval '1 hour'",
    "newest": "SELECT extract(epoch FROM now() - max(last_reading_at)) FROM source",
}


class DatabaseFigures(Collector):
    """Gauges read from the database just before a scrape is rendered."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[object, ...]]] = {}

    async def refresh(self, conn: AsyncConnection) -> None:
        """Read the figures (one round trip per query, all cheap and indexed)."""
        self.rows = {
            name: [tuple(r) for r in (await conn.execute(text(sql))).all()]
            for name, sql in _DB_SQL.items()
        }

    def collect(self) -> Iterator[Metric]:
        rows = self.rows
        alerts = GaugeMetricFamily(
            "ioc_alerts_active",
            "Alerts not resolved, by status and severity",
            labels=["status", "severity"],
        )
        for status, severity, n in rows.get("alerts", []):
            alerts.add_metric([str(status), str(severity)], float(n))  # type: ignore[arg-type]
        yield alerts
        sources = GaugeMetricFamily(
            "ioc_sources", "Registered sources by sector and status", labels=["sector", "status"]
        )
        for sector, status, n in rows.get("sources", []):
            sources.add_metric([str(sector), str(status)], float(n))  # type: ignore[arg-type]
        yield sources
        rejects = GaugeMetricFamily(
            "ioc_ingest_rejects_last_hour",
            "Readings or messages refused in the last hour (all ingest processes)",
            labels=["reason"],
        )
        for reason, n in rows.get("rejects", []):
            rejects.add_metric([str(reason)], float(n))  # type: ignore[arg-type]
        yield rejects
        events = rows.get("events", [(0,)])
        yield GaugeMetricFamily(
            "ioc_events_last_hour",
            "Agency events received in the last hour",
            value=float(events[0][0]),  # type: ignore[arg-type]
        )
        newest = rows.get("newest", [(None,)])[0][0]
        if newest is not None:
            yield GaugeMetricFamily(
                "ioc_ingest_newest_reading_age_seconds",
                "Seconds since any source last sent readings",
                value=float(newest),  # type: ignore[arg-type]
            )


class RequestTimer:
    """Times every HTTP request, labelled with its route template (not its path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            REQUEST_SECONDS.labels(_route(scope), scope["method"], str(status)).observe(
                time.perf_counter() - started
            )


def _route(scope: Scope) -> str:
    # the router leaves the matched route in the scope; routers included with a prefix keep
    # their routes' own paths, so the full template comes from a map built once per app
    route = scope.get("route")
    if route is None:
        return "unmatched"
    app = scope.get("app")
    paths: dict[int, str] | None = getattr(getattr(app, "state", None), "route_templates", None)
    if paths is None and app is not None:
        paths = {id(r): path for path, _, r in api_routes(app)}
        app.state.route_templates = paths
    return (paths or {}).get(id(route)) or str(getattr(route, "path", "unmatched"))


def registry_collector() -> DatabaseFigures:
    """The process's database collector, registered once."""
    global _FIGURES
    if _FIGURES is None:
        _FIGURES = DatabaseFigures()
        REGISTRY.register(_FIGURES)
    return _FIGURES


_FIGURES: DatabaseFigures | None = None
