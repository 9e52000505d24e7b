"""Websocket clients of bench/ws.py: N connections to `/ws/alerts` in one process.

Not a test. Started by bench/ws.py:

    .venv/bin/python bench/ws_clients.py --url ws://127.0.0.1:PORT/ws/alerts --key ioc_... \\
        --clients 250 --out FILE [--check] [--no-deflate]

Each connection authenticates with the `ioc.v1, bearer.<key>` subprotocols and, like a
browser, offers permessage-deflate (unless `--no-deflate`) and sends no pings of its own (it
answers the server's). It records, for every `event` message, its cursor and the wall-clock
time it came out of the websocket library (time.time_ns, the clock the publishers stamp with).
A connection the server closes (4408: behind or stalled) reconnects with `since=` its last
cursor, as the screen does; reconnections and close codes are counted.

The process prints `ready N` once all N connections had their `live` message. Commands on
standard input, one per line: `count` answers `count MIN MAX SUM OPEN` (events received
per client: fewest, most, all together; connections open); `stop` closes every connection,
writes the results to FILE (JSON) and exits.

With `--check`, the first connection also parses every document in full and keeps its alert
title (which carries the publish time), so bench/ws.py can check the documents carried what
was published.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

EVENT_PREFIX = b'{"type":"event","cursor":'
LIVE_PREFIX = b'{"type":"live"'
CONNECTING_AT_ONCE = 20


@dataclass(eq=False)
class Client:
    """One websocket connection's record."""

    index: int
    check: bool = False
    cursors: array[int] = field(default_factory=lambda: array("q"))
    received_ns: array[int] = field(default_factory=lambda: array("q"))
    checked: list[tuple[int, str]] = field(default_factory=list)
    last_cursor: int | None = None
    live: asyncio.Event = field(default_factory=asyncio.Event)
    reconnects: int = 0
    closes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ws: ClientConnection | None = None

    def take(self, message: bytes, now_ns: int) -> None:
        if message.startswith(EVENT_PREFIX):
            end = message.index(b",", len(EVENT_PREFIX))
            cursor = int(message[len(EVENT_PREFIX) : end])
            self.cursors.append(cursor)
            self.received_ns.append(now_ns)
            self.last_cursor = cursor
            if self.check:
                doc: dict[str, Any] = orjson.loads(message)
                self.checked.append((cursor, str(doc["event"]["alert"]["title"])))
        elif message.startswith(LIVE_PREFIX):
            if self.last_cursor is None:
                self.last_cursor = int(orjson.loads(message)["cursor"])
            self.live.set()


class Crowd:
    """The connections of this process."""

    def __init__(self, url: str, key: str, count: int, *, deflate: bool, check: bool) -> None:
        self.url = url
        self.subprotocols = [Subprotocol("ioc.v1"), Subprotocol(f"bearer.{key}")]
        self.compression = "deflate" if deflate else None
        self.clients = [Client(i, check=check and i == 0) for i in range(count)]
        self.stopping = False
        self.gate = asyncio.Semaphore(CONNECTING_AT_ONCE)

    async def run_one(self, client: Client) -> None:
        first = True
        while not self.stopping:
            target = self.url
            if client.last_cursor is not None:
                target += f"?since={client.last_cursor}"
            try:
                async with self.gate if first else contextlib.nullcontext():
                    ws = await connect(
                        target,
                        subprotocols=self.subprotocols,
                        compression=self.compression,
                        open_timeout=120,
                        max_size=1 << 22,
                        max_queue=None,
                        ping_interval=None,  # as a browser: it only answers the server's pings
                    )
                first = False
                client.ws = ws
                try:
                    while True:
                        message = await ws.recv(decode=False)
                        client.take(message, time.time_ns())
                finally:
                    client.ws = None
            except ConnectionClosed as closed:
                if self.stopping:
                    return
                rcvd = closed.rcvd
                client.closes.append(f"{rcvd.code} {rcvd.reason}" if rcvd else "no close frame")
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                if self.stopping:
                    return
                client.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                await asyncio.sleep(0.5)
            client.reconnects += 1

    async def close_all(self) -> None:
        self.stopping = True
        sockets = [c.ws for c in self.clients if c.ws is not None]
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

    def counts(self) -> str:
        sizes = [len(c.cursors) for c in self.clients]
        open_ = sum(c.ws is not None for c in self.clients)
        return f"count {min(sizes)} {max(sizes)} {sum(sizes)} {open_}"

    def results(self) -> dict[str, Any]:
        return {
            "clients": [
                {
                    "cursors": c.cursors.tolist(),
                    "received_ns": c.received_ns.tolist(),
                    "reconnects": c.reconnects,
                    "closes": c.closes,
                    "errors": c.errors[:5],
                }
                for c in self.clients
            ],
            "checked": [c for client in self.clients for c in client.checked],
        }


async def main_async(args: argparse.Namespace) -> None:
    crowd = Crowd(args.url, args.key, args.clients, deflate=not args.no_deflate, check=args.check)
    tasks = [asyncio.create_task(crowd.run_one(c)) for c in crowd.clients]
    await asyncio.gather(*(c.live.wait() for c in crowd.clients))
    print(f"ready {len(crowd.clients)}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "count":
            print(crowd.counts(), flush=True)
        elif line in ("stop", ""):  # "" : the parent went away
            break
    await crowd.close_all()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    data = orjson.dumps(crowd.results())
    await loop.run_in_executor(None, Path(args.out).write_bytes, data)
    print("done", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--no-deflate", action="store_true", help="do not offer compression")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_async(args))
    else:
        uvloop.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
