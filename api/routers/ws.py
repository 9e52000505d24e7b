"""`/ws/alerts`: alert events pushed to the operations screen, replayed from a cursor after a
reconnect, then live, with no gap and no duplicate (api.feed).

Authentication, in order: a `bearer.<key>` subprotocol next to `ioc.v1`
(`Sec-WebSocket-Protocol: ioc.v1, bearer.ioc_…`), the `key` query parameter, or a first
message `{"type": "auth", "key": "ioc_…"}` within 10 s. Messages are JSON:
`{"type": "event", "cursor": seq, "event": {...}}` (the notifiers' document),
`{"type": "live", "cursor": seq}` once the replay is done, and
`{"type": "heartbeat", "cursor": seq}` every IOC_WS_HEARTBEAT_S while nothing else is sent.
Close codes: 4400 bad parameters, 4401 no valid key, 4403 not allowed, 4408 the client fell
IOC_WS_QUEUE_MAX events behind (resume with `since` = its last cursor)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final, TypeVar

import orjson
import psycopg
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from api.auth import KeyStore, Principal
from api.context import Context
from api.feed import AlertFeed, FeedEvent, replay
from api.live import LivePanels
from api.permissions import Permission, allows
from ioc.vocabulary import SEVERITY_RANK, Severity

router = APIRouter()
T = TypeVar("T")

PROTOCOL: Final = "ioc.v1"
BEARER: Final = "bearer."
AUTH_TIMEOUT_S: Final = 10.0
BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, TOO_SLOW = 4400, 4401, 4403, 4408


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _query(ws: WebSocket) -> tuple[int | None, set[str] | None, int]:
    params = ws.query_params
    try:
        since = int(params["since"]) if "since" in params else None
        if since is not None and not 0 <= since < 2**63:
            raise ValueError("since out of range")
        sectors = {s for s in params.get("sectors", "").split(",") if s} or None
        floor = SEVERITY_RANK[Severity(params.get("min_severity", "info"))]
    except (ValueError, ValidationError) as exc:
        raise _Refused(BAD_REQUEST, f"bad parameter: {exc}"[:120]) from None
    return since, sectors, floor


async def _authenticate(ws: WebSocket, keys: KeyStore, permission: Permission) -> Principal:
    offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",")]
    token = next((p[len(BEARER) :] for p in offered if p.startswith(BEARER)), None)
    token = token or ws.query_params.get("key")
    await ws.accept(subprotocol=PROTOCOL if PROTOCOL in offered else None)
    if token is None:
        try:
            async with asyncio.timeout(AUTH_TIMEOUT_S):
                first = orjson.loads(await ws.receive_text())
            if isinstance(first, dict) and first.get("type") == "auth":
                token = str(first.get("key", ""))
        except (TimeoutError, orjson.JSONDecodeError):
            pass
    principal = await keys.check(token) if token else None
    if principal is None:
        raise _Refused(UNAUTHORIZED, "send a valid API key")
    if not allows(principal.role, permission):
        raise _Refused(FORBIDDEN, f"the {principal.role.value} role may not do {permission.value}")
    return principal


@router.websocket("/ws/alerts")
async def alerts_socket(ws: WebSocket) -> None:
    """Replay from `since` (an event cursor), then live; filtered by `sectors` and
    `min_severity`, and by the key's sectors for agency keys."""
    ctx: Context = ws.app.state.ctx
    feed: AlertFeed = ws.app.state.feed
    try:
        since, sectors, floor = _query(ws)
        principal = await _authenticate(ws, ws.app.state.keys, Permission.ALERTS_READ)
        if sectors is not None and principal.sectors is not None and sectors - principal.sectors:
            raise _Refused(FORBIDDEN, "this key is limited to other sectors")
    except _Refused as refused:
        if ws.client_state.name == "CONNECTING":
            await ws.accept()
        await ws.close(refused.code, refused.reason)
        return

    def wants(event: FeedEvent) -> bool:
        return (
            principal.can_see(event.sector)
            and (sectors is None or event.sector in sectors)
            and SEVERITY_RANK[event.severity] >= floor
        )

    subscriber = feed.subscribe(wants, limit=ctx.settings.ws_queue_max)
    if since is not None:
        subscriber.after = max(subscriber.after, since)
    cursor = subscriber.after
    watcher = asyncio.create_task(_until_gone(ws))
    try:
        if since is not None and since < subscriber.after:
            async with ctx.db.engine.connect() as conn:
                raw = (await conn.get_raw_connection()).driver_connection
                assert isinstance(raw, psycopg.AsyncConnection)
                async for event in replay(raw, since, subscriber.after):
                    if wants(event):
                        await _send(ws, event)
        await _json(ws, {"type": "live", "cursor": cursor})
        while not watcher.done():
            if subscriber.overflowed.is_set():
                await ws.close(TOO_SLOW, f"too far behind: resume with since={cursor}")
                return
            live = await _next(
                subscriber.queue, subscriber.overflowed, watcher, ctx.settings.ws_heartbeat_s
            )
            if isinstance(live, _Quiet):
                await _json(ws, {"type": "heartbeat", "cursor": cursor})
            elif live is not None:
                await _send(ws, live)
                cursor = live.seq
    except (WebSocketDisconnect, RuntimeError):
        return  # the client went away mid-send
    finally:
        feed.unsubscribe(subscriber)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await watcher


class _Quiet:
    """Nothing happened for a heartbeat period."""


QUIET: Final = _Quiet()


async def _next(
    queue: asyncio.Queue[T], overflowed: asyncio.Event, gone: asyncio.Task[None], wait_s: float
) -> T | _Quiet | None:
    """The next queued item; QUIET after `wait_s` without one; None as soon as the subscriber
    overflows or the client left. Nothing is cancelled while it may hold an item: an item
    taken from the queue is always returned."""
    if not queue.empty():
        return queue.get_nowait()
    waiting = asyncio.ensure_future(queue.get())
    flag = asyncio.ensure_future(overflowed.wait())
    try:
        await asyncio.wait(
            {waiting, flag, gone}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        flag.cancel()
        if not waiting.done():
            waiting.cancel()
    if waiting.done() and not waiting.cancelled():
        return waiting.result()
    if overflowed.is_set() or gone.done():
        return None
    return QUIET


async def _json(ws: WebSocket, message: dict[str, Any]) -> None:
    await ws.send_text(orjson.dumps(message).decode())  # text frames: strings in a browser


async def _send(ws: WebSocket, event: FeedEvent) -> None:
    await _json(ws, {"type": "event", "cursor": event.seq, "event": event.document})


async def _until_gone(ws: WebSocket) -> None:
    """Read (and ignore) what the client sends until it closes."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass


@router.websocket("/ws/live")
async def live_socket(ws: WebSocket) -> None:
    """Every visible sector's panel first (`snapshot`), then each sector again (`sector`)
    whenever its figures change, at most once a second per sector."""
    live: LivePanels = ws.app.state.live
    ctx: Context = ws.app.state.ctx
    try:
        principal = await _authenticate(ws, ws.app.state.keys, Permission.PANELS_READ)
    except _Refused as refused:
        if ws.client_state.name == "CONNECTING":
            await ws.accept()
        await ws.close(refused.code, refused.reason)
        return
    subscriber = live.subscribe(principal.sectors)
    watcher = asyncio.create_task(_until_gone(ws))
    try:
        sectors = [s for s in await live.snapshot() if principal.can_see(s["id"])]
        await _json(ws, {"type": "snapshot", "sectors": sectors})
        while not watcher.done():
            if subscriber.overflowed.is_set():
                await ws.close(TOO_SLOW, "too far behind: reconnect for a new snapshot")
                return
            sector = await _next(
                subscriber.queue, subscriber.overflowed, watcher, ctx.settings.ws_heartbeat_s
            )
            if isinstance(sector, _Quiet):
                await _json(ws, {"type": "heartbeat"})
            elif sector is not None:
                await _json(ws, {"type": "sector", "sector": sector})
    except (WebSocketDisconnect, RuntimeError):
        return
    finally:
        live.unsubscribe(subscriber)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await watcher
