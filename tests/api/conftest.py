"""An API on this test's synced database (mekong profile, seeded rules)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.api import Api, running_api


@pytest.fixture
async def api(synced_db: str) -> AsyncIterator[Api]:
    async with running_api(synced_db) as running:
        yield running
