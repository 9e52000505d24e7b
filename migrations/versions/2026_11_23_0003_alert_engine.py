"""Alert engine: rule scope and seeding, alert occurrences, the reading clock of a source,
notifier cursors and delivery outcomes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 11:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    # a rule may be scoped to a district or to one source (neither: the whole sector)
    op.add_column("alert_rule", sa.Column("district", sa.Text(), nullable=True))
    op.add_column("alert_rule", sa.Column("source_id", sa.Text(), nullable=True))
    op.add_column(
        "alert_rule",
        sa.Column("manual_resolve", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    # a rule seeded from the profile: its key, and a digest of its definition as seeded (a
    # row whose definition no longer matches the digest was changed by an operator)
    op.add_column("alert_rule", sa.Column("seed_key", sa.Text(), nullable=True))
    op.add_column("alert_rule", sa.Column("seed_digest", sa.Text(), nullable=True))
    op.create_unique_constraint(op.f("uq_alert_rule_seed_key"), "alert_rule", ["seed_key"])
    op.create_index(op.f("ix_alert_rule_sector_id"), "alert_rule", ["sector_id"], unique=False)

    op.add_column("alert_state", sa.Column("alert_id", sa.BigInteger(), nullable=True))
    # deviation rules keep a trailing mean and variance per source
    op.add_column("alert_state", sa.Column("stat_mean", sa.Double(), nullable=True))
    op.add_column("alert_state", sa.Column("stat_var", sa.Double(), nullable=True))
    op.add_column(
        "alert_state",
        sa.Column("stat_samples", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.drop_constraint(op.f("ck_alert_rule_kind"), "alert_rule", type_="check")
    op.create_check_constraint(
        op.f("ck_alert_rule_kind"),
        "alert_rule",
        "kind IN ('threshold', 'silence', 'event', 'deviation')",
    )

    op.add_column("alert", sa.Column("rule_kind", sa.Text(), nullable=True))
    op.add_column("alert", sa.Column("metric", sa.Text(), nullable=True))
    op.add_column(
        "alert",
        sa.Column("occurrences", sa.Integer(), server_default=sa.text("1"), nullable=False),
    )
    op.add_column("alert", sa.Column("last_seen_at", _TZ, nullable=True))
    op.add_column("alert", sa.Column("resolved_by", sa.Text(), nullable=True))
    op.add_column(
        "alert",
        sa.Column(
            "detail",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
    )
    op.create_index(
        op.f("ix_alert_cause_key_resolved_at"), "alert", ["cause_key", "resolved_at"], unique=False
    )
    op.create_index(
        "ix_alert_active_status_severity",
        "alert",
        ["status", "severity"],
        unique=False,
        postgresql_where=sa.text("status <> 'resolved'"),
    )

    # silence counts readings only, never status pings or events
    op.add_column("source", sa.Column("last_reading_at", _TZ, nullable=True))

    op.create_table(
        "notify_cursor",
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("updated_at", _TZ, server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("channel", name=op.f("pk_notify_cursor")),
    )
    op.create_table(
        "alert_delivery",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("alert_event_id", sa.BigInteger(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("at", _TZ, server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["alert_event_id"],
            ["alert_event.id"],
            name=op.f("fk_alert_delivery_alert_event_id_alert_event"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_delivery")),
    )
    op.create_index(
        op.f("ix_alert_delivery_alert_event_id"), "alert_delivery", ["alert_event_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_alert_delivery_alert_event_id"), table_name="alert_delivery")
    op.drop_table("alert_delivery")
    op.drop_table("notify_cursor")
    op.drop_column("source", "last_reading_at")
    op.drop_index(
        "ix_alert_active_status_severity",
        table_name="alert",
        postgresql_where=sa.text("status <> 'resolved'"),
    )
    op.drop_index(op.f("ix_alert_cause_key_resolved_at"), table_name="alert")
    for column in ("detail", "resolved_by", "last_seen_at", "occurrences", "metric", "rule_kind"):
        op.drop_column("alert", column)
    op.execute("DELETE FROM alert_rule WHERE kind = 'deviation'")
    op.drop_constraint(op.f("ck_alert_rule_kind"), "alert_rule", type_="check")
    op.create_check_constraint(
        op.f("ck_alert_rule_kind"), "alert_rule", "kind IN ('threshold', 'silence', 'event')"
    )
    for column in ("stat_samples", "stat_var", "stat_mean", "alert_id"):
        op.drop_column("alert_state", column)
    op.drop_index(op.f("ix_alert_rule_sector_id"), table_name="alert_rule")
    op.drop_constraint(op.f("uq_alert_rule_seed_key"), "alert_rule", type_="unique")
    for column in ("seed_digest", "seed_key", "manual_resolve", "source_id", "district"):
        op.drop_column("alert_rule", column)
