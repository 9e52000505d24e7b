"""Finding websocket clients that read nothing: one watchdog per API process instead of a
timer around every message (a timer per message cost about 15 % of the send path with 1,000
clients, bench/ws.py).

A sender marks when a send starts and ends; the watchdog looks every `tick_s`, and a send that
has waited longer than `timeout_s` for the client's TCP window gets its task cancelled, which
the sender turns into `Stalled`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Final

from api.background import Background


class Stalled(Exception):
    """A send waited longer than the timeout for a client that reads nothing."""


class Sending:
    """One client's sends, watched."""

    __slots__ = ("since", "stalled", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.since: float | None = None
        self.stalled = False


class Stalls:
    """The process's watchdog over every websocket client's sends."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.tick_s: Final = min(1.0, timeout_s / 2)
        self._watched: set[Sending] = set()
        self._runner = Background(self._run, "ws-stalls")

    def watch(self) -> Sending:
        """Watch the current task's sends until `forget`."""
        task = asyncio.current_task()
        assert task is not None
        sending = Sending(task)
        self._watched.add(sending)
        self._runner.ensure()
        return sending

    def forget(self, sending: Sending) -> None:
        self._watched.discard(sending)

    async def stop(self) -> None:
        await self._runner.stop()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick_s)
            late = loop.time() - self.timeout_s
            for sending in list(self._watched):
                if sending.since is not None and sending.since < late and not sending.stalled:
                    sending.stalled = True  # it waits in a send: the cancellation lands there
                    sending.task.cancel()


async def watched_send(sending: Sending, send: Awaitable[None]) -> None:
    """Await `send` (a send's coroutine) with the watchdog looking on; `Stalled` if it gave up."""
    sending.since = asyncio.get_running_loop().time()
    try:
        await send
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not sending.stalled or task is None:
            raise
        task.uncancel()  # the watchdog's cancellation, not the server's shutdown
        raise Stalled from None
    finally:
        sending.since = None
