"""The live alert feed of one API process: one LISTEN connection on `ioc_alert_event`, each
event read once (in commit order, by `alert_event.seq`) and handed to every subscriber.

A subscriber registered at feed position P gets, live, exactly the events with `seq` > P;
everything up to P is committed and readable, so a client resuming from cursor C replays
C < seq <= P from the database and then takes the live ones: no gap and no duplicate at the
boundary, whatever is being committed meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import psycopg
from psycopg.rows import dict_row

from alerts.notify import EVENTS_AFTER, event_document
from api.background import Background
from ioc.db import libpq_url

log = logging.getLogger("ioc.api.feed")

READ_BATCH: Final = 500
POLL_S: Final = 1.0
"""Read past the position this often even without a NOTIFY (a lost connection, a missed one)."""
RECONNECT_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One alert event as clients get it."""

    seq: int
    sector: str
    severity: str
    document: dict[str, Any]
    text: str
    """The whole `event` message, encoded once for every client that gets it."""


@dataclass(eq=False)
class Subscriber:
    """One client's bounded queue of live events; `overflowed` once it could not keep up."""

    after: int
    wants: Callable[[FeedEvent], bool]
    queue: asyncio.Queue[FeedEvent] = field(default_factory=asyncio.Queue)
    limit: int = 1000
    overflowed: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, event: FeedEvent) -> None:
        if self.overflowed.is_set() or event.seq <= self.after or not self.wants(event):
            return
        if self.queue.qsize() >= self.limit:
            self.overflowed.set()  # the client is closed and resumes with its cursor
            return
        self.queue.put_nowait(event)


def to_event(row: dict[str, Any]) -> FeedEvent:
    """A feed event from a row of `EVENTS_AFTER`."""
    document = event_document(row)
    seq = int(row["seq"])
    text = orjson.dumps({"type": "event", "cursor": seq, "event": document}).decode()
    return FeedEvent(seq, str(row["sector_id"]), str(row["severity"]), document, text)


async def events_after(
    conn: psycopg.AsyncConnection[Any], after: int, *, until: int | None = None
) -> list[FeedEvent]:
    """Committed events with `after` < seq (<= `until`), in commit order, at most READ_BATCH."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(EVENTS_AFTER, (after, READ_BATCH))
        rows = await cur.fetchall()
    events = [to_event(r) for r in rows]
    return events if until is None else [e for e in events if e.seq <= until]


Connect = Callable[[], AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]]


async def replay(connect: Connect, since: int, until: int) -> AsyncIterator[FeedEvent]:
    """Every committed event with `since` < seq <= `until`, in commit order, in batches, each
    read on a connection from `connect` held for that read alone: never while a client takes
    the events, so many clients resuming at once do not exhaust a pool."""
    cursor = since
    while cursor < until:
        async with connect() as conn:
            events = await events_after(conn, cursor, until=until)
        if not events:
            return
        for event in events:
            yield event
        cursor = events[-1].seq


class AlertFeed:
    """Reads new alert events once for the whole process and fans them out."""

    def __init__(self, database_url: str, *, poll_s: float = POLL_S) -> None:
        self._conninfo = libpq_url(database_url)
        self.poll_s = poll_s
        self.position = 0
        self.subscribers: set[Subscriber] = set()
        self._runner = Background(self._run, "alert-feed")
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        """Connect, LISTEN and start reading from the newest event."""
        await self._connect()
        self._runner.ensure()

    async def stop(self) -> None:
        await self._runner.stop()
        if self._conn is not None:
            await self._conn.close()

    def subscribe(self, wants: Callable[[FeedEvent], bool], *, limit: int = 1000) -> Subscriber:
        """A subscriber for every event past the feed's position now (no await: atomic
        with respect to the reader, which moves the position only between awaits)."""
        subscriber = Subscriber(self.position, wants, limit=limit)
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    async def _connect(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, application_name="ioc-api-feed"
        )
        await conn.execute("LISTEN ioc_alert_event")
        if self._conn is None:  # first start: from the newest event
            row = await (
                await conn.execute("SELECT coalesce(max(seq), 0) FROM alert_event")
            ).fetchone()
            self.position = int(row[0]) if row else 0
        self._conn = conn

    async def _run(self) -> None:
        while True:
            try:
                await self._pump()
                assert self._conn is not None
                async for _ in self._conn.notifies(timeout=self.poll_s, stop_after=1):
                    pass
            except psycopg.OperationalError:
                log.warning("alert feed lost its connection; reconnecting", exc_info=True)
                await asyncio.sleep(RECONNECT_S)
                with contextlib.suppress(psycopg.OperationalError):
                    await self._connect()

    async def _pump(self) -> None:
        assert self._conn is not None
        while True:
            events = await events_after(self._conn, self.position)
            for event in events:  # no await in here: subscribers see one consistent position
                for subscriber in list(self.subscribers):
                    subscriber.offer(event)
                self.position = event.seq
            if len(events) < READ_BATCH:
                return
