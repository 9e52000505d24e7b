"""Initial schema: catalogue, sources, series, readings (hypertable when TimescaleDB is
available), events, alerts, keys, audit and rejects.

Revision ID: 0001
Revises:
Create Date: 2026-11-22 07:53:07.683045
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_key",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column(
            "sectors", postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "role IN ('admin', 'operator', 'analyst', 'agency', 'viewer')",
            name=op.f("ck_api_key_role"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_key_prefix")),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=True),
        sa.Column(
            "detail",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"], unique=False)
    op.create_table(
        "ingest_reject",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("topic", sa.Text(), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("source_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingest_reject")),
    )
    op.create_index(op.f("ix_ingest_reject_reason"), "ingest_reject", ["reason"], unique=False)
    op.create_index(
        op.f("ix_ingest_reject_received_at"), "ingest_reject", ["received_at"], unique=False
    )
    op.create_table(
        "reading",
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("series_id", "ts", name=op.f("pk_reading")),
    )
    op.create_table(
        "sector",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name_vi", sa.Text(), nullable=False),
        sa.Column("name_en", sa.Text(), nullable=False),
        sa.Column("display_order", sa.Integer(), nullable=False),
        sa.Column("colour", sa.Text(), nullable=False),
        sa.Column(
            "metrics",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'"),
            nullable=False,
        ),
        sa.Column(
            "kpis",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'"),
            nullable=False,
        ),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("profile", sa.Text(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sector")),
    )
    op.create_table(
        "alert_rule",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("sector_id", sa.Text(), nullable=False),
        sa.Column("metric", sa.Text(), nullable=True),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("direction", sa.Text(), nullable=True),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("inclusive", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("for_s", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("clear_at", sa.Double(), nullable=True),
        sa.Column(
            "params",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column("origin", sa.Text(), server_default=sa.text("'user'"), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "direction IS NULL OR direction IN ('above', 'below')",
            name=op.f("ck_alert_rule_direction"),
        ),
        sa.CheckConstraint(
            "kind IN ('threshold', 'silence', 'event')", name=op.f("ck_alert_rule_kind")
        ),
        sa.CheckConstraint(
            "severity IN ('info', 'warning', 'critical')", name=op.f("ck_alert_rule_severity")
        ),
        sa.ForeignKeyConstraint(
            ["sector_id"], ["sector.id"], name=op.f("fk_alert_rule_sector_id_sector")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_rule")),
        sa.UniqueConstraint("name", name=op.f("uq_alert_rule_name")),
    )
    op.create_table(
        "source",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("sector_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("kind", sa.Text(), nullable=True),
        sa.Column("district", sa.Text(), nullable=True),
        sa.Column("latitude", sa.Double(), nullable=True),
        sa.Column("longitude", sa.Double(), nullable=True),
        sa.Column("interval_s", sa.Integer(), nullable=True),
        sa.Column("status", sa.Text(), server_default=sa.text("'unknown'"), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "attributes",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('online', 'offline', 'unknown')", name=op.f("ck_source_status")
        ),
        sa.ForeignKeyConstraint(
            ["sector_id"], ["sector.id"], name=op.f("fk_source_sector_id_sector")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_source")),
    )
    op.create_index(op.f("ix_source_sector_id"), "source", ["sector_id"], unique=False)
    op.create_table(
        "alert_state",
        sa.Column("rule_id", sa.Integer(), nullable=False),
        sa.Column("source_id", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), server_default=sa.text("'normal'"), nullable=False),
        sa.Column("pending_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_value", sa.Double(), nullable=True),
        sa.Column("last_ts", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["alert_rule.id"],
            name=op.f("fk_alert_state_rule_id_alert_rule"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["source.id"],
            name=op.f("fk_alert_state_source_id_source"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("rule_id", "source_id", name=op.f("pk_alert_state")),
    )
    op.create_table(
        "event",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("sector_id", sa.Text(), nullable=False),
        sa.Column("source_id", sa.Text(), nullable=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("district", sa.Text(), nullable=True),
        sa.Column("latitude", sa.Double(), nullable=True),
        sa.Column("longitude", sa.Double(), nullable=True),
        sa.Column("location", sa.Text(), nullable=True),
        sa.Column("external_ref", sa.Text(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "attributes",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "severity IN ('info', 'warning', 'critical')", name=op.f("ck_event_severity")
        ),
        sa.ForeignKeyConstraint(
            ["sector_id"], ["sector.id"], name=op.f("fk_event_sector_id_sector")
        ),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["source.id"],
            name=op.f("fk_event_source_id_source"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event")),
    )
    op.create_index(
        op.f("ix_event_sector_id_occurred_at"), "event", ["sector_id", "occurred_at"], unique=False
    )
    op.create_index(
        "uq_event_sector_id_external_ref",
        "event",
        ["sector_id", "external_ref"],
        unique=True,
        postgresql_where=sa.text("external_ref IS NOT NULL"),
    )
    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source_id", sa.Text(), nullable=False),
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("catalogued", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["source.id"],
            name=op.f("fk_series_source_id_source"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series")),
        sa.UniqueConstraint("source_id", "metric", name=op.f("uq_series_source_id_metric")),
    )
    op.create_table(
        "alert",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("cause_key", sa.Text(), nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=True),
        sa.Column("sector_id", sa.Text(), nullable=False),
        sa.Column("source_id", sa.Text(), nullable=True),
        sa.Column("event_id", sa.BigInteger(), nullable=True),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'open'"), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("last_value", sa.Double(), nullable=True),
        sa.Column(
            "escalation_level", sa.SmallInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column(
            "opened_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.Text(), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "severity IN ('info', 'warning', 'critical')", name=op.f("ck_alert_severity")
        ),
        sa.CheckConstraint(
            "status IN ('open', 'acknowledged', 'resolved')", name=op.f("ck_alert_status")
        ),
        sa.ForeignKeyConstraint(
            ["event_id"], ["event.id"], name=op.f("fk_alert_event_id_event"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["alert_rule.id"],
            name=op.f("fk_alert_rule_id_alert_rule"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["sector_id"], ["sector.id"], name=op.f("fk_alert_sector_id_sector")
        ),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["source.id"],
            name=op.f("fk_alert_source_id_source"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert")),
    )
    op.create_index(
        op.f("ix_alert_sector_id_opened_at"), "alert", ["sector_id", "opened_at"], unique=False
    )
    op.create_index(
        "uq_alert_cause_key_active",
        "alert",
        ["cause_key"],
        unique=True,
        postgresql_where=sa.text("status <> 'resolved'"),
    )
    op.create_table(
        "alert_event",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("alert_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.Column(
            "detail",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["alert_id"],
            ["alert.id"],
            name=op.f("fk_alert_event_alert_id_alert"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_event")),
    )
    op.create_index(op.f("ix_alert_event_alert_id"), "alert_event", ["alert_id"], unique=False)
    _reading_storage()
    op.execute(READING_NAMED_VIEW)


def downgrade() -> None:
    _drop_reading_storage()
    op.drop_index(op.f("ix_alert_event_alert_id"), table_name="alert_event")
    op.drop_table("alert_event")
    op.drop_index(
        "uq_alert_cause_key_active",
        table_name="alert",
        postgresql_where=sa.text("status <> 'resolved'"),
    )
    op.drop_index(op.f("ix_alert_sector_id_opened_at"), table_name="alert")
    op.drop_table("alert")
    op.drop_table("series")
    op.drop_index(
        "uq_event_sector_id_external_ref",
        table_name="event",
        postgresql_where=sa.text("external_ref IS NOT NULL"),
    )
    op.drop_index(op.f("ix_event_sector_id_occurred_at"), table_name="event")
    op.drop_table("event")
    op.drop_table("alert_state")
    op.drop_index(op.f("ix_source_sector_id"), table_name="source")
    op.drop_table("source")
    op.drop_table("alert_rule")
    op.drop_table("sector")
    op.drop_table("reading")
    op.drop_index(op.f("ix_ingest_reject_received_at"), table_name="ingest_reject")
    op.drop_index(op.f("ix_ingest_reject_reason"), table_name="ingest_reject")
    op.drop_table("ingest_reject")
    op.drop_index(op.f("ix_audit_log_at"), table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("api_key")


# --- reading storage -------------------------------------------------------------------------
# Written out here, not imported from ioc, so that this revision keeps doing what it did when
# it was written even after the application code moves on.

READING_NAMED_VIEW = """
CREATE VIEW reading_named AS
SELECT r.ts, src.sector_id, se.source_id, se.metric, r.value, r.series_id
FROM reading r
JOIN series se ON se.id = r.series_id
JOIN source src ON src.id = se.source_id
"""

CHUNK_INTERVAL = "1 day"
COMPRESS_AFTER = "7 days"

# (view, source relation, bucket width, time column, aggregate expressions,
#  refresh start offset, end offset, schedule interval)
_CAGGS = (
    (
        "reading_1m",
        "reading",
        "1 minute",
        "ts",
        "avg(value) AS avg, min(value) AS min, max(value) AS max, sum(value) AS sum, "
        "count(value) AS count, last(value, ts) AS last",
        "3 hours",
        "1 minute",
        "1 minute",
    ),
    (
        "reading_1h",
        "reading_1m",
        "1 hour",
        "bucket",
        "sum(sum) / sum(count) AS avg, min(min) AS min, max(max) AS max, sum(sum) AS sum, "
        "sum(count)::bigint AS count, last(last, bucket) AS last",
        "3 days",
        "1 hour",
        "30 minutes",
    ),
    (
        "reading_1d",
        "reading_1h",
        "1 day",
        "bucket",
        "sum(sum) / sum(count) AS avg, min(min) AS min, max(max) AS max, sum(sum) AS sum, "
        "sum(count)::bigint AS count, last(last, bucket) AS last",
        "10 days",
        "1 day",
        "2 hours",
    ),
)


def _timescale_wanted() -> bool:
    """Whether to build the TimescaleDB layout: per IOC_TIMESCALE, and whether it loads."""
    mode = str(
        context.config.attributes.get("timescale") or os.environ.get("IOC_TIMESCALE") or "auto"
    )
    if mode == "off":
        return False
    bind = op.get_bind()
    available = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    ).scalar()
    if available:
        try:
            with bind.begin_nested():
                bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
        except sa.exc.DBAPIError:
            available = None
    if mode == "on" and not available:
        raise RuntimeError(
            "IOC_TIMESCALE=on but the timescaledb extension cannot be created on this server"
        )
    return bool(available)


def _retention_days() -> int:
    raw = context.config.attributes.get("retention_days") or os.environ.get(
        "IOC_RETENTION_DAYS", "365"
    )
    return int(raw)


def _reading_storage() -> None:
    if not _timescale_wanted():
        # Plain PostgreSQL: the primary key (series_id, ts) serves range scans of a series;
        # a BRIN index on ts keeps the retention delete cheap at almost no ingest cost.
        op.create_index("ix_reading_ts", "reading", ["ts"], postgresql_using="brin")
        return
    op.execute(
        f"SELECT create_hypertable('reading', 'ts', chunk_time_interval => "
        f"INTERVAL '{CHUNK_INTERVAL}')"
    )
    op.execute(
        "ALTER TABLE reading SET (timescaledb.compress, "
        "timescaledb.compress_segmentby = 'series_id', timescaledb.compress_orderby = 'ts')"
    )
    op.execute(f"SELECT add_compression_policy('reading', INTERVAL '{COMPRESS_AFTER}')")
    op.execute(f"SELECT add_retention_policy('reading', INTERVAL '{_retention_days()} days')")
    # Continuous aggregates cannot be created inside a transaction block.
    with op.get_context().autocommit_block():
        for view, source, width, col, aggs, start, end, every in _CAGGS:
            op.execute(
                f"CREATE MATERIALIZED VIEW {view} WITH (timescaledb.continuous, "
                f"timescaledb.materialized_only = false) AS "
                f"SELECT time_bucket(INTERVAL '{width}', {col}) AS bucket, series_id, {aggs} "
                f"FROM {source} GROUP BY 1, 2 WITH NO DATA"
            )
            op.execute(
                f"SELECT add_continuous_aggregate_policy('{view}', "
                f"start_offset => INTERVAL '{start}', end_offset => INTERVAL '{end}', "
                f"schedule_interval => INTERVAL '{every}')"
            )


def _drop_reading_storage() -> None:
    op.execute("DROP VIEW IF EXISTS reading_named")
    bind = op.get_bind()
    for view, *_ in reversed(_CAGGS):
        if bind.execute(sa.text("SELECT to_regclass(:v)"), {"v": view}).scalar():
            op.execute(f"DROP MATERIALIZED VIEW {view} CASCADE")
    op.execute("DROP INDEX IF EXISTS ix_reading_ts")
