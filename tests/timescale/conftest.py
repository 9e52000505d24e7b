"""The WASM TimescaleDB server for the tests of this folder (one connection at a time)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.pglite import pglite_timescale
from tests.support.services import missing, require_all


@pytest.fixture(scope="session")
def timescale_url() -> Iterator[str]:
    """URL of a fresh in-memory PostgreSQL with TimescaleDB (PGlite behind pglite-socket)."""
    with pglite_timescale(require=require_all()) as url:
        if url is None:
            missing("node/npm are not on PATH: no TimescaleDB test server")
        assert url is not None
        yield url
