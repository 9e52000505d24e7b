"""Migrations: one head, up and down cleanly, and the same schema as the ORM models."""

from __future__ import annotations

import psycopg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from ioc import migrate
from ioc.db import Base, libpq_url, sqlalchemy_url

TABLES = {
    "sector",
    "source",
    "series",
    "reading",
    "event",
    "alert_rule",
    "alert_state",
    "alert",
    "alert_delivery",
    "notify_cursor",
    "alert_event",
    "api_key",
    "ingest_receipt",
    "audit_log",
    "ingest_reject",
}


def _tables(url: str) -> set[str]:
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows} - {"alembic_version"}


def test_there_is_one_head() -> None:
    assert migrate.head_revision()


def test_upgrade_downgrade_upgrade_on_postgresql(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url, timescale="off")
    assert migrate.current(empty_db_url) == migrate.head_revision()
    assert _tables(empty_db_url) == TABLES
    migrate.downgrade(empty_db_url, "base")
    assert migrate.current(empty_db_url) is None
    assert _tables(empty_db_url) == set()
    migrate.upgrade(empty_db_url, timescale="off")
    assert _tables(empty_db_url) == TABLES


def test_plain_storage_has_range_scan_indexes_and_the_named_view(db_url: str) -> None:
    with psycopg.connect(libpq_url(db_url)) as conn:
        indexes = dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'reading'"
            ).fetchall()
        )
        view = conn.execute("SELECT to_regclass('reading_named')").fetchone()
    assert "(series_id, ts)" in indexes["pk_reading"]
    assert "brin (ts)" in indexes["ix_reading_ts"]
    assert view is not None and view[0] == "reading_named"


def test_models_and_migrations_describe_the_same_schema(db_url: str) -> None:
    engine = create_engine(sqlalchemy_url(db_url), poolclass=NullPool)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    # the BRIN index on reading.ts exists only on plain PostgreSQL, so it is not in the models
    diff = [d for d in diff if not (d[0] == "remove_index" and d[1].name == "ix_reading_ts")]
    assert diff == []
