"""Retention of readings: a TimescaleDB policy, or a batched delete on plain PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

DELETE_BATCH_ROWS = 50_000
RETENTION_INTERVAL_S = 3600.0


def is_hypertable(conn: Connection) -> bool:
    """Whether `reading` is a TimescaleDB hypertable."""
    if conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).scalar():
        return bool(
            conn.execute(
                text(
                    "SELECT 1 FROM timescaledb_information.hypertables "
                    "WHERE hypertable_name = 'reading'"
                )
            ).scalar()
        )
    return False


def ensure_retention_policy(conn: Connection, days: int) -> bool:
    """Make the TimescaleDB retention policy keep `days` days; True if it changed anything.

    On plain PostgreSQL there is no policy: `prune_readings` does the work."""
    if not is_hypertable(conn):
        return False
    current = conn.execute(
        text(
            "SELECT config ->> 'drop_after' FROM timescaledb_information.jobs "
            "WHERE proc_name = 'policy_retention' AND hypertable_name = 'reading'"
        )
    ).scalar()
    wanted = timedelta(days=days)
    if (
        current is not None
        and conn.execute(
            text("SELECT CAST(:cur AS interval) = CAST(:want AS interval)"),
            {"cur": current, "want": wanted},
        ).scalar()
    ):
        return False
    conn.execute(text("SELECT remove_retention_policy('reading', if_exists => true)"))
    conn.execute(
        text("SELECT add_retention_policy('reading', CAST(:want AS interval))"), {"want": wanted}
    )
    return True


async def prune_readings(engine: AsyncEngine, days: int) -> int:
    """Delete readings older than `days` days in batches; returns how many went."""
    total = 0
    while True:
        async with engine.begin() as conn:
            result = await conn.execute(
                text(
                    "DELETE FROM reading WHERE ctid = ANY(ARRAY("
                    "SELECT ctid FROM reading WHERE ts < now() - make_interval(days => :d) "
                    "LIMIT :n))"
                ),
                {"d": days, "n": DELETE_BATCH_ROWS},
            )
        total += result.rowcount
        if result.rowcount < DELETE_BATCH_ROWS:
            return total


async def retention_loop(
    engine: AsyncEngine, days: int, every_s: float = RETENTION_INTERVAL_S
) -> None:
    """Prune old readings now and then every `every_s` seconds, until cancelled; a failed
    round (database down, restarting, a lock timeout) is logged and the next one runs."""
    while True:
        try:
            removed = await prune_readings(engine, days)
            if removed:
                log.info("pruned old readings", extra={"rows": removed, "days": days})
        except (SQLAlchemyError, psycopg.Error, OSError) as exc:
            error = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            log.warning("retention prune failed", extra={"error": error[0] if error else repr(exc)})
        await asyncio.sleep(every_s)
