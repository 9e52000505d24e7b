"""Ingest receipts: a redelivered message without its own time, or with rejects, stores
nothing new.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 10:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ingest_receipt",
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("redelivery", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.PrimaryKeyConstraint("digest", "received_at", name=op.f("pk_ingest_receipt")),
    )
    op.create_index(
        op.f("ix_ingest_receipt_received_at"), "ingest_receipt", ["received_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_ingest_receipt_received_at"), table_name="ingest_receipt")
    op.drop_table("ingest_receipt")
