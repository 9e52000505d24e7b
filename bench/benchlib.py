"""Helpers the benchmarks share: throwaway databases and waiting for readings to land."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alerts.seed import seed_rules
from ioc.db import libpq_url
from ioc.runtime import ensure_database, prepare
from ioc.settings import Settings

PROFILE = "mekong"


@contextmanager
def fresh_database(
    server_url: str, bench: str, tag: str, *, profile: str = PROFILE
) -> Iterator[str]:
    """A new migrated database with the profile synced; dropped afterwards."""
    name = f"bench_{bench}_{os.getpid()}_{tag}"
    url = ensure_database(server_url, name)
    try:
        prepare(url, Settings(profile=profile), then=seed_rules)
        yield url
    finally:
        with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def count_readings(db_url: str) -> int:
    """Rows in `reading` (exact)."""
    with psycopg.connect(libpq_url(db_url)) as conn:
        row = conn.execute("SELECT count(*) FROM reading").fetchone()
        return int(row[0]) if row else 0


def inserted_so_far(db_url: str) -> int:
    """Cheap progress figure (statistics, up to a second late) for polling."""
    with psycopg.connect(libpq_url(db_url)) as conn:
        row = conn.execute(
            "SELECT coalesce(n_tup_ins, 0) FROM pg_stat_user_tables WHERE relname = 'reading'"
        ).fetchone()
        return int(row[0]) if row else 0


def wait_for_readings(
    db_url: str, expected: int, timeout_s: float, *, stall_s: float | None = None
) -> int:
    """Poll until about `expected` readings were inserted (or, with `stall_s`, until none
    arrived for that long: duplicates are stored once); the exact count then."""
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_count = inserted_so_far(db_url)
        if now_count >= expected:
            break
        if now_count != last:
            last, since = now_count, time.monotonic()
        elif stall_s is not None and time.monotonic() - since > stall_s:
            break
        time.sleep(0.25)
    return count_readings(db_url)
