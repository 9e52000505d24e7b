"""A websocket client that stops reading (its TCP window fills) is dropped after
IOC_WS_SEND_TIMEOUT_S while another client keeps receiving everything; when it reads again it
finds the connection closed, and resuming from its last cursor it misses nothing and gets
nothing twice. The client is a real websocket client whose reading is paused by its own flow
control, over a socket with a small receive buffer: the back-pressure is TCP's, not simulated."""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
from typing import Any

import httpx
import orjson
import psycopg
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from alerts import actions
from ioc.db import libpq_url
from tests.api.test_feed import _alerts, _committed
from tests.support.api import make_key
from tests.support.server import served

TIMEOUT_S = 60
BATCH = 20
STALLED = re.compile(r'^ioc_ws_closed_total\{reason="stalled",stream="alerts"\} (\S+)$', re.M)


def _stalled(base: str) -> float:
    found = STALLED.search(httpx.get(f"{base}/metrics", timeout=10).text)
    return float(found.group(1)) if found else 0.0


def _comment(db_url: str, alert_id: int, count: int) -> None:
    with psycopg.connect(libpq_url(db_url)) as conn:
        for _ in range(count):
            # 32 KB that no compression shrinks: the buffers between the two ends fill soon
            text = secrets.token_hex(16_384)
            actions.comment(conn, alert_id=alert_id, actor="test", text=text)
        conn.commit()


def _small_window(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def _until_live(ws: ClientConnection) -> int:
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            message = orjson.loads(await ws.recv())
            if message["type"] == "live":
                return int(message["cursor"])


async def _drain(ws: ClientConnection, into: list[int], more: asyncio.Event | None = None) -> None:
    """Every event cursor until the connection ends; `more` is set at each one."""
    try:
        async with asyncio.timeout(TIMEOUT_S):
            async for frame in ws:
                message: dict[str, Any] = orjson.loads(frame)
                if message["type"] == "event":
                    into.append(int(message["cursor"]))
                    if more is not None:
                        more.set()
    except ConnectionClosed:
        pass


async def test_a_client_that_stops_reading_is_dropped_and_the_others_keep_receiving(
    synced_db: str,
) -> None:
    water, _ = _alerts(synced_db)
    key = make_key(synced_db, "operator")
    with served(synced_db, ws_send_timeout_s=1.0, ws_heartbeat_s=0.5) as base:
        url = f"{base.replace('http://', 'ws://')}/ws/alerts?key={key}&sectors=water"
        port = int(base.rsplit(":", 1)[1])
        stalled_before = _stalled(base)
        slow = await connect(
            url, sock=_small_window(port), max_queue=1, ping_interval=None, compression=None
        )
        fast = await connect(url)
        fast_got: list[int] = []
        try:
            start = await _until_live(slow)
            await _until_live(fast)
            more = asyncio.Event()
            fast_reader = asyncio.create_task(_drain(fast, fast_got, more))
            # the slow client reads nothing from here on: comments until the server gives up
            async with asyncio.timeout(TIMEOUT_S):
                while _stalled(base) == stalled_before:
                    await asyncio.to_thread(_comment, synced_db, water, BATCH)
                    await asyncio.sleep(0.2)
            written = _committed(synced_db, start)
            async with asyncio.timeout(TIMEOUT_S):  # the fast one was never held back
                while len(fast_got) < len(written):
                    more.clear()
                    await more.wait()
            assert fast_got == written

            # reading again, the slow client gets what was in flight, then the end
            slow_got: list[int] = []
            await _drain(slow, slow_got)
            assert slow_got == written[: len(slow_got)]
            assert len(slow_got) < len(written)

            # and resumes from its last cursor: every event once, in order
            async with connect(f"{url}&since={slow_got[-1] if slow_got else start}") as again:
                rest: list[int] = []
                async with asyncio.timeout(TIMEOUT_S):
                    while True:
                        message = orjson.loads(await again.recv())
                        if message["type"] == "live":
                            break
                        rest.append(int(message["cursor"]))
            assert slow_got + rest == written
            fast_reader.cancel()
        finally:
            await slow.close()
            await fast.close()
