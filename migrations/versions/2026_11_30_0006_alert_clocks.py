"""Alert clocks and condition groups: when the condition started, fired and ended by reading
time; when the alert last changed and was last confirmed by wall time; the peak severity, an
English title, and whether late readings retracted the alert. Threshold alerts move to the
cause of their group (metric, direction and scope on one source).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 12:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TZ = sa.DateTime(timezone=True)
_NOW = sa.text("now()")

# the cause of a threshold rule's group on one source, as alerts.rules.Group.cause builds it
_GROUP_CAUSE = (
    "'threshold:' || r.sector_id || ':' || r.metric || ':' || r.direction || ':' || "
    "coalesce('source=' || r.source_id, 'district=' || r.district, 'sector') || "
    "':source:' || a.source_id"
)


def upgrade() -> None:
    for name in ("condition_started_at", "condition_fired_at", "condition_ended_at"):
        op.add_column("alert", sa.Column(name, _TZ, nullable=True))
    op.add_column("alert", sa.Column("peak_severity", sa.Text(), nullable=True))
    op.add_column("alert", sa.Column("title_en", sa.Text(), nullable=True))
    op.add_column("alert", sa.Column("transitioned_at", _TZ, server_default=_NOW, nullable=False))
    op.add_column("alert", sa.Column("confirmed_at", _TZ, server_default=_NOW, nullable=False))
    op.add_column(
        "alert",
        sa.Column("retracted", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.execute(
        "UPDATE alert SET transitioned_at = updated_at, confirmed_at = updated_at, "
        "peak_severity = severity, title_en = title, "
        "condition_started_at = CASE WHEN detail ? 'since' "
        "THEN (detail->>'since')::timestamptz END, "
        "condition_fired_at = last_seen_at"
    )
    # one active alert per group: keep the most severe, resolve the others
    op.execute(
        f"""
        WITH ranked AS (
            SELECT a.id, row_number() OVER (
                PARTITION BY {_GROUP_CAUSE}
                ORDER BY CASE a.severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END,
                         a.id) AS n
            FROM alert a JOIN alert_rule r ON r.id = a.rule_id
            WHERE a.rule_kind = 'threshold' AND a.status <> 'resolved')
        UPDATE alert SET status = 'resolved', resolved_at = now(), resolved_by = 'migration',
                         updated_at = now()
        FROM ranked WHERE alert.id = ranked.id AND ranked.n > 1
        """
    )
    op.execute(
        f"UPDATE alert a SET cause_key = {_GROUP_CAUSE} FROM alert_rule r "
        "WHERE r.id = a.rule_id AND a.rule_kind = 'threshold'"
    )
    op.execute(
        "UPDATE alert_state s SET state = 'normal', pending_since = NULL, alert_id = NULL "
        "FROM alert a WHERE a.id = s.alert_id AND a.status = 'resolved'"
    )
    op.create_index(
        "ix_alert_cause_key_condition", "alert", ["cause_key", "condition_started_at"], unique=False
    )
    op.create_index(
        "ix_alert_open_transitioned",
        "alert",
        ["transitioned_at"],
        unique=False,
        postgresql_where=sa.text("status = 'open'"),
    )


def downgrade() -> None:
    op.drop_index("ix_alert_open_transitioned", table_name="alert")
    op.drop_index("ix_alert_cause_key_condition", table_name="alert")
    op.execute(
        "UPDATE alert a SET cause_key = 'rule:' || a.rule_id || ':source:' || a.source_id "
        "WHERE a.rule_kind = 'threshold' AND a.rule_id IS NOT NULL"
    )
    for name in (
        "retracted",
        "confirmed_at",
        "transitioned_at",
        "title_en",
        "peak_severity",
        "condition_ended_at",
        "condition_fired_at",
        "condition_started_at",
    ):
        op.drop_column("alert", name)
