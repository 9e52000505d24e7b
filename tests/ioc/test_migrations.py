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
    "idempotent_request",
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


def test_upgrading_alerts_to_condition_groups_keeps_one_active_alert_per_group(
    empty_db_url: str,
) -> None:
    """A database of revision 0005 with a sensor's warning and critical alerts both open: after
    0006 they share the group's cause, the critical stays open and the warning is resolved."""
    migrate.upgrade(empty_db_url, "0005", timescale="off")
    with psycopg.connect(libpq_url(empty_db_url)) as conn:
        conn.execute(
            "INSERT INTO sector (id, name_vi, name_en, display_order, colour, profile) "
            "VALUES ('water', 'Nước', 'Water', 1, '#2196f3', 'test')"
        )
        conn.execute("INSERT INTO source (id, sector_id) VALUES ('tram-1', 'water')")
        ids = {}
        for severity, value in (("warning", 1.0), ("critical", 4.0)):
            row = conn.execute(
                "INSERT INTO alert_rule (name, kind, sector_id, metric, severity, direction, "
                "threshold, inclusive) VALUES (%s, 'threshold', 'water', 'salinity', %s, "
                "'above', %s, true) RETURNING id",
                (f"salinity {severity}", severity, value),
            ).fetchone()
            assert row is not None
            ids[severity] = row[0]
            conn.execute(
                "INSERT INTO alert (cause_key, rule_id, rule_kind, sector_id, source_id, metric, "
                "severity, title, detail) VALUES (%s, %s, 'threshold', 'water', 'tram-1', "
                "'salinity', %s, 't', %s)",
                (
                    f"rule:{row[0]}:source:tram-1",
                    row[0],
                    severity,
                    '{"since": "2026-11-30T01:00:00+00:00"}',
                ),
            )
    migrate.upgrade(empty_db_url, timescale="off")
    with psycopg.connect(libpq_url(empty_db_url)) as conn:
        rows = conn.execute(
            "SELECT cause_key, severity, status, resolved_by, peak_severity, "
            "condition_started_at IS NOT NULL FROM alert ORDER BY severity"
        ).fetchall()
    cause = "threshold:water:salinity:above:sector:source:tram-1"
    assert rows == [
        (cause, "critical", "open", None, "critical", True),
        (cause, "warning", "resolved", "migration", "warning", True),
    ]
    migrate.downgrade(empty_db_url, "0005")
    with psycopg.connect(libpq_url(empty_db_url)) as conn:
        keys = conn.execute("SELECT cause_key FROM alert ORDER BY cause_key").fetchall()
    assert sorted(keys) == sorted((f"rule:{i}:source:tram-1",) for i in ids.values())
