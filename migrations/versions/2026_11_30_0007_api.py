"""The HTTP API: an agency event's handling status, an alert's assignee and public flag, the
answers kept for `Idempotency-Key` retries, and indexes for the API's lists (alerts newest
first, a target's audit rows).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 16:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TZ = sa.DateTime(timezone=True)
_NOW = sa.text("now()")


def upgrade() -> None:
    op.add_column("event", sa.Column("status", sa.Text(), server_default="new", nullable=False))
    op.add_column("event", sa.Column("updated_at", _TZ, server_default=_NOW, nullable=False))
    op.create_check_constraint(
        op.f("ck_event_status"), "event", "status IN ('new', 'in_progress', 'resolved')"
    )
    op.add_column("alert", sa.Column("assigned_to", sa.Text(), nullable=True))
    op.add_column(
        "alert", sa.Column("public", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.create_table(
        "idempotent_request",
        sa.Column("api_key_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.Text(), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=False),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", _TZ, server_default=_NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_key.id"],
            name=op.f("fk_idempotent_request_api_key_id_api_key"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("api_key_id", "key", name=op.f("pk_idempotent_request")),
    )
    op.create_index(op.f("ix_idempotent_request_created_at"), "idempotent_request", ["created_at"])
    op.create_index(op.f("ix_audit_log_target"), "audit_log", ["target"])
    op.create_index("ix_alert_opened_at_id", "alert", ["opened_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_alert_opened_at_id", table_name="alert")
    op.drop_index(op.f("ix_audit_log_target"), table_name="audit_log")
    op.drop_index(op.f("ix_idempotent_request_created_at"), table_name="idempotent_request")
    op.drop_table("idempotent_request")
    op.drop_column("alert", "public")
    op.drop_column("alert", "assigned_to")
    op.drop_constraint(op.f("ck_event_status"), "event", type_="check")
    op.drop_column("event", "updated_at")
    op.drop_column("event", "status")
