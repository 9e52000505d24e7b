"""Retention on plain PostgreSQL deletes old readings and nothing else."""

from __future__ import annotations

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
