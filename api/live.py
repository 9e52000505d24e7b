"""Live panels: each sector's overview (sources online/offline, open alerts by severity,
headline KPIs) pushed to `/ws/live` clients when it changes, at most once a second per sector.

One task per API process reads the overview (the figures `GET /sectors` shares) every second
while anyone listens, and hands each changed sector to every client allowed to see it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from api.background import Background
from api.routers.overview import SectorOverview

log = logging.getLogger("ioc.api.live")

TICK_S: Final = 1.0
QUEUE_MAX: Final = 256


@dataclass(eq=False)
class PanelSubscriber:
    """One client's queue of sector updates; `overflowed` once it could not keep up."""

    sectors: frozenset[str] | None
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    overflowed: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, sector: dict[str, Any]) -> None:
        if self.sectors is not None and sector["id"] not in self.sectors:
            return
        if self.queue.qsize() >= QUEUE_MAX:
            self.overflowed.set()
            return
        self.queue.put_nowait(sector)


def _content(sector: dict[str, Any]) -> Any:
    """What counts as a change: everything but the computation times."""
    return {
        **{k: v for k, v in sector.items() if k != "as_of"},
        "kpis": [{k: v for k, v in kpi.items() if k != "as_of"} for kpi in sector["kpis"]],
    }


class LivePanels:
    """Pushes changed sectors to subscribers; reads the figures only while someone listens."""

    def __init__(
        self, figures: Callable[[], Awaitable[list[SectorOverview]]], *, tick_s: float = TICK_S
    ) -> None:
        self.figures = figures
        self.tick_s = tick_s
        self.subscribers: set[PanelSubscriber] = set()
        self._last: dict[str, tuple[Any, float]] = {}
        self._runner = Background(self._run, "live-panels")

    async def snapshot(self) -> list[dict[str, Any]]:
        """Every sector as it is now (JSON-ready)."""
        return [s.model_dump(mode="json") for s in await self.figures()]

    def subscribe(self, sectors: frozenset[str] | None) -> PanelSubscriber:
        subscriber = PanelSubscriber(sectors)
        self.subscribers.add(subscriber)
        self._runner.ensure()
        return subscriber

    def unsubscribe(self, subscriber: PanelSubscriber) -> None:
        self.subscribers.discard(subscriber)

    async def stop(self) -> None:
        await self._runner.stop()

    async def _run(self) -> None:
        while self.subscribers:
            try:
                await self.tick()
            except Exception:  # the database is down: tell nobody anything new, try again
                log.warning("live panels could not read the overview", exc_info=True)
            await asyncio.sleep(self.tick_s)

    async def tick(self) -> None:
        """Push every sector whose figures changed (once a second per sector at most)."""
        now = time.monotonic()
        for sector in await self.snapshot():
            content = _content(sector)
            last = self._last.get(sector["id"])
            if last is not None and (last[0] == content or now - last[1] < self.tick_s):
                continue
            self._last[sector["id"]] = (content, now)
            for subscriber in list(self.subscribers):
                subscriber.offer(sector)
