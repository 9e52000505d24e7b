"""`/ws/alerts`: alert events pushed to the operations screen, replayed from a cursor after a
reconnect, then live, with no gap and no duplicate (api.feed).

Authentication, in order: a `bearer.<key>` subprotocol next to `ioc.v1`
(`Sec-WebSocket-Protocol: ioc.v1, bearer.ioc_…`), the `key` query parameter, or a first
message `{"type": "auth", "key": "ioc_…"}` within 10 s. Messages are JSON:
`{"type": "event", "cursor": seq, "event": {...}}` (the notifiers' document),
`{"type": "live", "cursor": seq}` once the replay is done,
`{"type": "reset", "cursor": seq, "reason": "ahead" | "too_far"}` instead of a replay when
`since` is beyond every event (a database replaced) or more than IOC_WS_REPLAY_MAX events back
(the client reloads the active alerts over HTTP and goes on from that cursor), and
`{"type": "heartbeat", "cursor": seq}` every IOC_WS_HEARTBEAT_S while nothing else is sent.
Close codes: 4400 bad parameters, 4401 no valid key, 4403 not allowed, 4408 the client fell
IOC_WS_QUEUE_MAX events behind (resume with `since` = its last cursor). A client that reads
nothing (its TCP window stays full) for IOC_WS_SEND_TIMEOUT_S is dropped: its handler and queue
are released at once, and when it reads again it finds the connection closed and resumes."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final, TypeVar

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from api.auth import KeyStore, Principal
from api.context import Context
from api.feed import AlertFeed, FeedEvent, replay
from api.live import LivePanels
from api.metrics import WS_CLIENTS, WS_CLOSED
from api.permissions import Permission, allows
from api.stalls import Sending, Stalled, Stalls, watched_send
from ioc.vocabulary import SEVERITY_RANK, Severity

router = APIRouter()
T = TypeVar("T")

PROTOCOL: Final = "ioc.v1"
BEARER: Final = "bearer."
AUTH_TIMEOUT_S: Final = 10.0
CLOSE_WAIT_S: Final = 1.0
"""How long a close frame may wait for a stalled client before its handler gives up on it."""
BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, TOO_SLOW = 4400, 4401, 4403, 4408
_REASONS: Final = {BAD_REQUEST: "bad_request", UNAUTHORIZED: "unauthorized", FORBIDDEN: "forbidden"}


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
    out = _Out(ws, "alerts", ws.app.state.stalls)
    try:
        since, sectors, floor = _query(ws)
        principal = await _authenticate(ws, ws.app.state.keys, Permission.ALERTS_READ)
        if sectors is not None and principal.sectors is not None and sectors - principal.sectors:
            raise _Refused(FORBIDDEN, "this key is limited to other sectors")
    except _Refused as refused:
        await out.refuse(refused)
        return

    def wants(event: FeedEvent) -> bool:
        return (
            principal.can_see(event.sector)
            and (sectors is None or event.sector in sectors)
            and SEVERITY_RANK[event.severity] >= floor
        )

    reset = None
    if since is not None:
        async with ctx.db.engine.connect() as conn:
            reset = await _unresumable(conn, since, ctx.settings.ws_replay_max)
    subscriber = feed.subscribe(wants, limit=ctx.settings.ws_queue_max)
    if since is not None and reset is None:
        subscriber.after = max(subscriber.after, since)
    # the last position the client has
    cursor = subscriber.after if since is None or reset is not None else since
    waiter = _Waiter()
    watcher = asyncio.create_task(_until_gone(ws, waiter))
    out.watch()
    try:
        if reset is not None:
            await out.json({"type": "reset", "cursor": cursor, "reason": reset})
        elif since is not None and since < subscriber.after:
            async for event in replay(ctx.db.raw_connection, since, subscriber.after):
                if wants(event):
                    await out.event(event)
                    cursor = event.seq
        cursor = subscriber.after
        await out.json({"type": "live", "cursor": cursor})
        while not (watcher.done() or waiter.gone):
            if subscriber.overflowed.is_set():
                await out.drop("behind", f"too far behind: resume with since={cursor}")
                return
            live = await _next(subscriber.queue, waiter, ctx.settings.ws_heartbeat_s)
            if isinstance(live, _Quiet):
                await out.json({"type": "heartbeat", "cursor": cursor})
            elif live is not None:
                await out.event(live)
                cursor = live.seq
    except Stalled:
        await out.drop("stalled", f"stalled: resume with since={cursor}")
    except (WebSocketDisconnect, RuntimeError):
        return  # the client went away mid-send
    finally:
        out.forget()
        feed.unsubscribe(subscriber)
        await _stop_watching(watcher)


_UNRESUMABLE: Final = text(
    "SELECT CASE WHEN :since > (SELECT coalesce(max(seq), 0) FROM alert_event) THEN 'ahead' "
    "WHEN EXISTS (SELECT FROM (SELECT seq FROM alert_event WHERE seq > :since ORDER BY seq "
    "OFFSET :most LIMIT 1) AS beyond) THEN 'too_far' END"
)


async def _unresumable(conn: AsyncConnection, since: int, most: int) -> str | None:
    """Why `since` cannot be resumed by a replay, or None: `ahead` of every committed event (a
    cursor from a database since replaced or restored), or `too_far` behind (more than `most`
    events to replay)."""
    why = (await conn.execute(_UNRESUMABLE, {"since": since, "most": most})).scalar_one()
    return None if why is None else str(why)


class _Out:
    """What the server sends one client: JSON text frames (strings in a browser), each allowed
    IOC_WS_SEND_TIMEOUT_S to be taken by the client's TCP window (`api.stalls`), and the
    closes."""

    def __init__(self, ws: WebSocket, stream: str, stalls: Stalls) -> None:
        self.ws = ws
        self.stream = stream
        self.stalls = stalls
        self.sending: Sending | None = None

    def watch(self) -> None:
        """From here on, a send that waits IOC_WS_SEND_TIMEOUT_S raises Stalled."""
        self.sending = self.stalls.watch()
        WS_CLIENTS.labels(self.stream).inc()

    def forget(self) -> None:
        if self.sending is not None:
            self.stalls.forget(self.sending)
            WS_CLIENTS.labels(self.stream).dec()

    async def json(self, message: dict[str, Any]) -> None:
        await self._text(orjson.dumps(message).decode())

    async def event(self, event: FeedEvent) -> None:
        await self._text(event.text)  # encoded once per event, not once per client

    async def _text(self, text: str) -> None:
        if self.sending is None:
            await self.ws.send_text(text)
        else:
            await watched_send(self.sending, self.ws.send_text(text))

    async def refuse(self, refused: _Refused) -> None:
        WS_CLOSED.labels(self.stream, _REASONS[refused.code]).inc()
        if self.ws.client_state.name == "CONNECTING":
            await self.ws.accept()
        await self._close(refused.code, refused.reason)

    async def drop(self, why: str, reason: str) -> None:
        """Close a client that cannot keep up (4408). A stalled client cannot take even the
        close frame: after CLOSE_WAIT_S its handler ends anyway and the server's transport is
        closed as soon as the client reads again."""
        WS_CLOSED.labels(self.stream, why).inc()
        await self._close(TOO_SLOW, reason)

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(TimeoutError, WebSocketDisconnect, RuntimeError):
            async with asyncio.timeout(CLOSE_WAIT_S):
                await self.ws.close(code, reason)


class _Quiet:
    """Nothing happened for a heartbeat period."""


QUIET: Final = _Quiet()


class _Waiter:
    """A handler's wait for its next item: one queue read under one deadline (no task, no
    `asyncio.wait`, per message: with hundreds of clients keeping up, each event wakes each
    one), cut short when the client leaves."""

    def __init__(self) -> None:
        self.deadline: asyncio.Timeout | None = None
        self.gone = False

    def wake(self) -> None:
        """The client left: end the wait now."""
        self.gone = True
        if self.deadline is not None:
            self.deadline.reschedule(asyncio.get_running_loop().time())


async def _next(queue: asyncio.Queue[T], waiter: _Waiter, wait_s: float) -> T | _Quiet | None:
    """The next queued item; QUIET after `wait_s` without one; None once the client left. A
    read cut by its deadline takes nothing from the queue (asyncio.Queue.get), so no item is
    lost. (A subscriber overflows only while its queue is full, never during this wait.)"""
    if not queue.empty():
        return queue.get_nowait()
    if waiter.gone:
        return None
    try:
        async with asyncio.timeout(wait_s) as waiter.deadline:
            return await queue.get()
    except TimeoutError:
        return None if waiter.gone else QUIET
    finally:
        waiter.deadline = None


async def _until_gone(ws: WebSocket, waiter: _Waiter) -> None:
    """Read (and ignore) what the client sends until it closes; then wake the handler."""
    try:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while (await ws.receive())["type"] != "websocket.disconnect":
                pass
    finally:
        waiter.wake()


async def _stop_watching(watcher: asyncio.Task[None]) -> None:
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
        await watcher


@router.websocket("/ws/live")
async def live_socket(ws: WebSocket) -> None:
    """Every visible sector's panel first (`snapshot`), then each sector again (`sector`)
    whenever its figures change, at most once a second per sector."""
    live: LivePanels = ws.app.state.live
    ctx: Context = ws.app.state.ctx
    out = _Out(ws, "live", ws.app.state.stalls)
    try:
        principal = await _authenticate(ws, ws.app.state.keys, Permission.PANELS_READ)
    except _Refused as refused:
        await out.refuse(refused)
        return
    subscriber = live.subscribe(principal.sectors)
    waiter = _Waiter()
    watcher = asyncio.create_task(_until_gone(ws, waiter))
    out.watch()
    try:
        sectors = [s for s in await live.snapshot() if principal.can_see(s["id"])]
        await out.json({"type": "snapshot", "sectors": sectors})
        while not (watcher.done() or waiter.gone):
            if subscriber.overflowed.is_set():
                await out.drop("behind", "too far behind: reconnect for a new snapshot")
                return
            sector = await _next(subscriber.queue, waiter, ctx.settings.ws_heartbeat_s)
            if isinstance(sector, _Quiet):
                await out.json({"type": "heartbeat"})
            elif sector is not None:
                await out.json({"type": "sector", "sector": sector})
    except Stalled:
        await out.drop("stalled", "stalled: reconnect for a new snapshot")
    except (WebSocketDisconnect, RuntimeError):
        return
    finally:
        out.forget()
        live.unsubscribe(subscriber)
        await _stop_watching(watcher)
