"""Retention on plain PostgreSQL deletes old readings and nothing else, and keeps going."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ioc import storage
from tests.support.readings import copy_readings


async def test_prune_removes_only_readings_past_retention(
    engine: AsyncEngine, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # small batches, so the loop that keeps each delete short is exercised
    monkeypatch.setattr(storage, "DELETE_BATCH_ROWS", 3)
    now = datetime.now(UTC)
    old = [(now - timedelta(days=40, minutes=i), 1, float(i)) for i in range(7)]
    fresh = [(now - timedelta(days=20, minutes=i), 1, float(i)) for i in range(5)]
    copy_readings(db_url, old + fresh)
    removed = await storage.prune_readings(engine, days=30)
    assert removed == 7
    async with engine.connect() as conn:
        left = (await conn.execute(text("SELECT count(*) FROM reading"))).scalar()
    assert left == 5
    assert await storage.prune_readings(engine, days=30) == 0


async def _eventually(
    probe: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_retention_loop_goes_on_after_a_database_error(
    engine: AsyncEngine, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ioc.storage")
    now = datetime.now(UTC)
    copy_readings(db_url, [(now - timedelta(days=40, minutes=i), 1, float(i)) for i in range(4)])
    # the table the prune deletes from is gone for a while: its rounds fail in the database
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE reading RENAME TO reading_away"))
    loop = asyncio.create_task(storage.retention_loop(engine, days=30, every_s=0.05))

    async def failed() -> bool:
        return loop.done() or any("retention prune failed" in r.message for r in caplog.records)

    async def pruned() -> bool:
        async with engine.connect() as conn:
            left = (await conn.execute(text("SELECT count(*) FROM reading"))).scalar()
        return loop.done() or left == 0

    try:
        await _eventually(failed, "a failed round")
        assert not loop.done(), "the loop ended at the database error"
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE reading_away RENAME TO reading"))
        await _eventually(pruned, "a later round to prune")
        assert not loop.done()
        loop.cancel()  # cancellation still ends it
        with pytest.raises(asyncio.CancelledError):
            await loop
    finally:
        if not loop.done():
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        elif not loop.cancelled():
            loop.exception()  # retrieved: the assertion above already told what happened
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE IF EXISTS reading_away RENAME TO reading"))
