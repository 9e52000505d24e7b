"""Two API processes (`ioc serve`, as deployed behind a load balancer) on one database: each
delivers every alert event, in commit order, to its own websocket clients while writers commit
concurrently; and a client that reconnects to the other process resumes from its cursor with no
gap and no duplicate (cursors belong to the database, not to a process)."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect

from ioc.embedded_pg import free_port
from tests.api.test_feed import PER_WRITER, WRITERS, _alerts, _committed, _write
from tests.support.api import make_key
from tests.support.cli import IOC, clean_env

TIMEOUT_S = 60


@contextmanager
def _api_process(db_url: str) -> Iterator[str]:
    """`ioc serve` on a free port; yields its websocket base URL; stopped on exit."""
    port = free_port()
    proc = subprocess.Popen(
        [IOC, "serve", "--port", str(port)],
        env=clean_env(
            IOC_DATABASE_URL=db_url,
            IOC_PROFILE="mekong",
            IOC_WS_HEARTBEAT_S="0.5",
            IOC_LOG_LEVEL="WARNING",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
            assert time.monotonic() < deadline, "ioc serve did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield f"ws://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


async def _until_live(ws: ClientConnection, into: list[int]) -> int:
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            message = orjson.loads(await ws.recv())
            if message["type"] == "live":
                return int(message["cursor"])
            if message["type"] == "event":
                into.append(int(message["cursor"]))


async def _take(ws: ClientConnection, into: list[int], count: int) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while len(into) < count:
            message = orjson.loads(await ws.recv())
            if message["type"] == "event":
                into.append(int(message["cursor"]))


async def test_two_api_processes_each_deliver_every_event_and_a_client_resumes_on_the_other(
    synced_db: str,
) -> None:
    alert_ids = _alerts(synced_db)
    key = make_key(synced_db, "viewer")
    with ExitStack() as stack:
        one, two = (stack.enter_context(_api_process(synced_db)) for _ in range(2))
        async with (
            connect(f"{one}/ws/alerts?key={key}", max_queue=None) as on_one,
            connect(f"{two}/ws/alerts?key={key}", max_queue=None) as on_two,
            connect(f"{one}/ws/alerts?key={key}", max_queue=None) as moving,
        ):
            got: dict[str, list[int]] = {"one": [], "two": [], "moving": []}
            start = min(
                [
                    await _until_live(on_one, got["one"]),
                    await _until_live(on_two, got["two"]),
                    await _until_live(moving, got["moving"]),
                ]
            )
            errors: list[BaseException] = []
            writers = [
                threading.Thread(target=_write, args=(synced_db, alert_ids, seed, errors))
                for seed in range(WRITERS)
            ]
            for w in writers:
                w.start()
            total = WRITERS * PER_WRITER
            try:
                await _take(moving, got["moving"], total // 3)  # then it moves to process two
            finally:
                await asyncio.to_thread(lambda: [w.join(TIMEOUT_S) for w in writers])
            assert errors == []
            await moving.close()
            async with connect(f"{two}/ws/alerts?key={key}&since={got['moving'][-1]}") as moved:
                await _until_live(moved, got["moving"])
                await _take(moved, got["moving"], total)
            await _take(on_one, got["one"], total)
            await _take(on_two, got["two"], total)

    committed = _committed(synced_db, start)
    assert len(committed) == total
    for name, cursors in got.items():
        assert cursors == committed, name  # every event, once, in commit order
