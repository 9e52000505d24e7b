"""`/ws/live` on a real uvicorn: a snapshot of the visible sectors first, then a sector pushed
when its figures change (an alert opens, a source goes offline), scoped for agency keys."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.api import make_key
from tests.support.ingest import query
from tests.support.server import served

TIMEOUT_S = 30


async def _until(ws: ClientConnection, done: Any) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            message = orjson.loads(await ws.recv())
            if done(message):
                return message  # type: ignore[no-any-return]


async def test_a_snapshot_then_the_sectors_that_change(synced_db: str) -> None:
    admin = make_key(synced_db, "admin")
    agency = make_key(synced_db, "agency", sectors=["environment"])
    with served(synced_db, ws_heartbeat_s=0.5) as base:
        url = base.replace("http://", "ws://") + "/ws/live"
        async with connect(f"{url}?key={admin}") as ws, connect(f"{url}?key={agency}") as own:
            snapshot = orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
            assert snapshot["type"] == "snapshot"
            assert {s["id"] for s in snapshot["sectors"]} >= {"water", "environment"}
            water = next(s for s in snapshot["sectors"] if s["id"] == "water")
            assert water["alerts"]["critical"] == 0
            mine = orjson.loads(await asyncio.wait_for(own.recv(), TIMEOUT_S))
            assert [s["id"] for s in mine["sectors"]] == ["environment"]

            query(
                synced_db,
                "INSERT INTO alert (cause_key, sector_id, severity, status, title) "
                "VALUES ('live:1', 'water', 'critical', 'open', 'thử')",
            )
            pushed = await _until(
                ws,
                lambda m: (
                    m["type"] == "sector"
                    and m["sector"]["id"] == "water"
                    and m["sector"]["alerts"]["critical"] == 1
                ),
            )
            assert pushed["sector"]["alerts"]["total"] >= 1
            # the agency key hears about its own sector only: heartbeats, no water
            for _ in range(3):
                message = orjson.loads(await asyncio.wait_for(own.recv(), TIMEOUT_S))
                assert message["type"] != "sector" or message["sector"]["id"] == "environment"


async def test_a_key_without_panels_or_none_at_all_is_refused(synced_db: str) -> None:
    with served(synced_db) as base:
        url = base.replace("http://", "ws://") + "/ws/live"
        async with connect(f"{url}?key=ioc_bad") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), TIMEOUT_S)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
