"""`/ws/alerts` on a real uvicorn with a real websocket client: authentication, replay from a
cursor then live with no gap and no duplicate while events are committed, filters and agency
scope, and a client too far behind closed with 4408 while another keeps receiving."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from alerts import actions
from ioc.db import libpq_url
from tests.api.test_feed import PER_WRITER, WRITERS, _alerts, _committed, _write
from tests.support.api import make_key
from tests.support.ingest import query, wait_until
from tests.support.server import served

TIMEOUT_S = 30


@pytest.fixture
def server(synced_db: str) -> Iterator[str]:
    with served(synced_db, ws_heartbeat_s=0.5) as base:
        yield base.replace("http://", "ws://")


async def _messages(ws: ClientConnection, until: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT_S):
        while not until(out):
            out.append(orjson.loads(await ws.recv()))
    return out


def _events(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "event"]


async def test_no_key_a_bad_key_or_a_role_without_alerts_is_refused(
    server: str, synced_db: str
) -> None:
    for url, protocols in (
        (f"{server}/ws/alerts", None),
        (f"{server}/ws/alerts?key=ioc_nope", None),
        (f"{server}/ws/alerts", ["ioc.v1", "bearer.ioc_abcdefgh_" + "x" * 40]),
    ):
        async with connect(url, subprotocols=protocols, open_timeout=TIMEOUT_S) as ws:
            if protocols is None and "key=" not in url:
                await ws.send(orjson.dumps({"type": "auth", "key": "nonsense"}).decode())
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), TIMEOUT_S)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    viewer = make_key(synced_db, "viewer")
    async with connect(f"{server}/ws/alerts?min_severity=apocalyptic&key={viewer}") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400


async def test_replay_then_live_with_no_gap_and_no_duplicate(server: str, synced_db: str) -> None:
    alert_ids = _alerts(synced_db)
    errors: list[BaseException] = []
    _write(synced_db, alert_ids, 99, errors)
    since = _committed(synced_db, 0)[PER_WRITER // 2]
    key = make_key(synced_db, "operator")
    writers = [
        threading.Thread(target=_write, args=(synced_db, alert_ids, seed, errors))
        for seed in range(WRITERS)
    ]
    async with connect(
        f"{server}/ws/alerts?since={since}",
        subprotocols=["ioc.v1", f"bearer.{key}"],  # type: ignore[list-item]
        max_size=None,
    ) as ws:
        assert ws.subprotocol == "ioc.v1"
        for w in writers:
            w.start()
        for w in writers:
            await asyncio.to_thread(w.join, 60)
        assert errors == []
        expected = _committed(synced_db, since)
        got = await _messages(ws, lambda out: len(_events(out)) >= len(expected))
    assert [m["cursor"] for m in _events(got)] == expected
    assert [m["type"] for m in got].count("live") == 1
    assert all(m["event"]["kind"] == "commented" for m in _events(got))


async def test_filters_and_agency_scope(server: str, synced_db: str) -> None:
    water, environment = _alerts(synced_db)
    agency = make_key(synced_db, "agency", sectors=["water"])
    admin = make_key(synced_db, "admin")
    async with (
        connect(f"{server}/ws/alerts?key={agency}") as mine,
        connect(f"{server}/ws/alerts?key={admin}&sectors=environment") as theirs,
        connect(f"{server}/ws/alerts?key={admin}&min_severity=critical") as critical,
    ):
        for ws in (mine, theirs, critical):
            assert (await _messages(ws, lambda out: bool(out)))[0]["type"] == "live"
        with psycopg.connect(libpq_url(synced_db)) as conn:
            actions.comment(conn, alert_id=water, actor="t", text="w")
            conn.commit()
            actions.comment(conn, alert_id=environment, actor="t", text="e")
        got_mine = await _messages(mine, lambda out: bool(_events(out)))
        got_theirs = await _messages(theirs, lambda out: bool(_events(out)))
        assert _events(got_mine)[0]["event"]["alert"]["id"] == water
        assert _events(got_theirs)[0]["event"]["alert"]["id"] == environment
        beats = await _messages(critical, lambda out: len(out) >= 3)  # warning alerts: none
        assert {m["type"] for m in beats} == {"heartbeat"}
        # after quiet periods, the next event still arrives (nothing lost to a heartbeat)
        query(synced_db, "UPDATE alert SET severity = 'critical' WHERE id = %s", (water,))
        with psycopg.connect(libpq_url(synced_db)) as conn:
            actions.comment(conn, alert_id=water, actor="t", text="nghiêm trọng")
        got = await _messages(critical, lambda out: bool(_events(out)))
        assert _events(got)[0]["event"]["detail"]["text"] == "nghiêm trọng"
    async with connect(f"{server}/ws/alerts?key={agency}&sectors=environment") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


async def test_a_client_too_far_behind_is_closed_and_others_keep_receiving(
    synced_db: str,
) -> None:
    water, environment = _alerts(synced_db)
    admin = make_key(synced_db, "admin")
    with served(synced_db, ws_queue_max=5) as base:
        await _behind_and_other(
            base.replace("http://", "ws://"), synced_db, admin, water, environment
        )


async def _behind_and_other(
    server: str, synced_db: str, admin: str, water: int, environment: int
) -> None:
    async with (
        connect(f"{server}/ws/alerts?key={admin}&sectors=water") as behind,
        connect(f"{server}/ws/alerts?key={admin}&sectors=environment") as other,
    ):
        for ws in (behind, other):
            await _messages(ws, lambda out: bool(out))
        with psycopg.connect(libpq_url(synced_db)) as conn:
            for i in range(20):  # one commit: more than the 5 the server may queue at once
                actions.comment(conn, alert_id=water, actor="t", text=str(i))
            conn.commit()
            actions.comment(conn, alert_id=environment, actor="t", text="still here")
        with pytest.raises(ConnectionClosed) as closed:
            await _messages(behind, lambda out: False)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408
        assert "since=" in closed.value.rcvd.reason
        got = await _messages(other, lambda out: bool(_events(out)))
        assert _events(got)[0]["event"]["detail"]["text"] == "still here"


async def test_a_cursor_that_cannot_be_replayed_gets_a_reset_then_live(synced_db: str) -> None:
    water, _ = _alerts(synced_db)
    key = make_key(synced_db, "viewer")
    with psycopg.connect(libpq_url(synced_db)) as conn:
        for i in range(6):
            actions.comment(conn, alert_id=water, actor="t", text=str(i))
    newest = _committed(synced_db, 0)[-1]
    with served(synced_db, ws_heartbeat_s=0.5, ws_replay_max=3) as base:
        url = f"{base.replace('http://', 'ws://')}/ws/alerts?key={key}"
        # a cursor from a database since replaced: beyond every event
        async with connect(f"{url}&since={newest + 1000}") as ws:
            got = await _messages(ws, lambda out: out and out[-1]["type"] == "live")
        assert [(m["type"], m.get("reason"), m["cursor"]) for m in got] == [
            ("reset", "ahead", newest),
            ("live", None, newest),
        ]
        # six events back with at most three replayed: a reset, not a partial replay
        async with connect(f"{url}&since=0") as ws:
            got = await _messages(ws, lambda out: out and out[-1]["type"] == "live")
            assert [(m["type"], m.get("reason")) for m in got] == [
                ("reset", "too_far"),
                ("live", None),
            ]
            # and live events follow the reset's cursor
            with psycopg.connect(libpq_url(synced_db)) as conn:
                actions.comment(conn, alert_id=water, actor="t", text="sau")
            later = await _messages(ws, lambda out: bool(_events(out)))
            assert _events(later)[0]["cursor"] > newest
        # three back: replayed
        async with connect(f"{url}&since={_committed(synced_db, 0)[-4]}") as ws:
            got = await _messages(ws, lambda out: out and out[-1]["type"] == "live")
        assert [m["type"] for m in got] == ["event", "event", "event", "live"]


async def test_a_client_that_leaves_is_let_go_at_once_not_at_the_next_heartbeat(
    synced_db: str,
) -> None:
    key = make_key(synced_db, "viewer")

    def connected(base: str) -> float:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        found = re.search(r'^ioc_ws_clients\{stream="alerts"\} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    with served(synced_db, ws_heartbeat_s=600) as base:
        before = connected(base)
        async with connect(f"{base.replace('http://', 'ws://')}/ws/alerts?key={key}") as ws:
            await _messages(ws, lambda out: bool(out))  # live
            assert connected(base) == before + 1
        # its handler and queue are released when it closes, not 600 s later
        wait_until(lambda: connected(base) == before, timeout_s=10, what="the client let go")
