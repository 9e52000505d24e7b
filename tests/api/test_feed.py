"""The process's alert feed: replay from a cursor then live, with no gap and no duplicate
while events are committed concurrently and out of id order; two feeds each deliver every
event; a subscriber that cannot keep up is marked, never slowing the others."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg

from alerts import actions
from api.feed import AlertFeed, FeedEvent, Subscriber, replay
from ioc.db import libpq_url
from tests.support.ingest import query

WRITERS = 4
PER_WRITER = 40


def _alerts(db_url: str, sectors: tuple[str, ...] = ("water", "environment")) -> list[int]:
    ids = []
    for i, sector in enumerate(sectors):
        rows = query(
            db_url,
            "INSERT INTO alert (cause_key, sector_id, severity, status, title) "
            "VALUES (%s, %s, 'warning', 'open', 'thử') RETURNING id",
            (f"feed:{i}", sector),
        )
        ids.append(int(rows[0][0]))
    return ids


def _write(db_url: str, alert_ids: list[int], seed: int, errors: list[BaseException]) -> None:
    """Comments in transactions of 1 to 3 (on one alert, as an operator's action is), some
    held open a while: commits land out of id order against the other writers."""
    rnd = random.Random(seed)
    try:
        with psycopg.connect(libpq_url(db_url)) as conn:
            done = 0
            while done < PER_WRITER:
                alert_id = rnd.choice(alert_ids)
                for _ in range(min(rnd.randint(1, 3), PER_WRITER - done)):
                    actions.comment(conn, alert_id=alert_id, actor=f"w{seed}", text=str(done))
                    done += 1
                if rnd.random() < 0.3:
                    time.sleep(rnd.random() * 0.05)
                conn.commit()
    except psycopg.Error as exc:  # reported by the test, which asserts there is none
        errors.append(exc)


@asynccontextmanager
async def _connect(db_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(libpq_url(db_url)) as conn:
        yield conn


def _committed(db_url: str, after: int) -> list[int]:
    rows = query(db_url, "SELECT seq FROM alert_event WHERE seq > %s ORDER BY seq", (after,))
    return [int(r[0]) for r in rows]


async def _take(subscriber: Subscriber, count: int, timeout_s: float = 30) -> list[FeedEvent]:
    out: list[FeedEvent] = []
    async with asyncio.timeout(timeout_s):
        while len(out) < count:
            out.append(await subscriber.queue.get())
    return out


async def test_replay_then_live_has_no_gap_and_no_duplicate_under_concurrent_commits(
    synced_db: str,
) -> None:
    alert_ids = _alerts(synced_db)
    errors: list[BaseException] = []
    _write(synced_db, alert_ids, 99, errors)  # history before the client connects
    since = _committed(synced_db, 0)[PER_WRITER // 2]  # resume from the middle of it
    feed = AlertFeed(synced_db, poll_s=0.2)
    await feed.start()
    writers = [
        threading.Thread(target=_write, args=(synced_db, alert_ids, seed, errors))
        for seed in range(WRITERS)
    ]
    try:
        for w in writers:
            w.start()
        await asyncio.sleep(0.05)  # the client connects while events are being committed
        subscriber = feed.subscribe(lambda e: True, limit=10_000)
        subscriber.after = max(subscriber.after, since)
        got: list[FeedEvent] = []
        got += [e async for e in replay(lambda: _connect(synced_db), since, subscriber.after)]
        for w in writers:
            await asyncio.to_thread(w.join, 60)
        assert errors == []
        expected = _committed(synced_db, since)
        got += await _take(subscriber, len(expected) - len(got))
        await asyncio.sleep(0.5)  # nothing more may come
        assert subscriber.queue.empty()
        assert [e.seq for e in got] == expected
        assert len(expected) > WRITERS * PER_WRITER
        assert {e.document["kind"] for e in got} == {"commented"}
    finally:
        await feed.stop()


async def test_two_feeds_each_deliver_every_event_to_their_own_subscribers(
    synced_db: str,
) -> None:
    alert_ids = _alerts(synced_db)
    feeds = [AlertFeed(synced_db, poll_s=0.2), AlertFeed(synced_db, poll_s=0.2)]
    for f in feeds:
        await f.start()
    try:
        subs = [f.subscribe(lambda e: True) for f in feeds]
        errors: list[BaseException] = []
        await asyncio.to_thread(_write, synced_db, alert_ids, 1, errors)
        assert errors == []
        for sub in subs:
            got = await _take(sub, PER_WRITER)
            assert [e.seq for e in got] == _committed(synced_db, sub.after)
    finally:
        for f in feeds:
            await f.stop()


async def test_a_subscriber_that_falls_behind_is_marked_and_the_others_still_get_all(
    synced_db: str,
) -> None:
    water, environment = _alerts(synced_db)
    feed = AlertFeed(synced_db, poll_s=0.2)
    await feed.start()
    try:
        slow = feed.subscribe(lambda e: True, limit=5)
        fast = feed.subscribe(lambda e: True)
        only_water = feed.subscribe(lambda e: e.sector == "water")
        errors: list[BaseException] = []
        await asyncio.to_thread(_write, synced_db, [water, environment], 2, errors)
        got = await _take(fast, PER_WRITER)
        assert len(got) == PER_WRITER
        assert slow.overflowed.is_set() and slow.queue.qsize() == 5
        water_events = [e for e in got if e.document["alert"]["id"] == water]
        assert [e.seq for e in await _take(only_water, len(water_events))] == [
            e.seq for e in water_events
        ]
    finally:
        await feed.stop()
