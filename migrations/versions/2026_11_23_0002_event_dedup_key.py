"""Event dedup key: a redelivered agency event without an external reference is stored once.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 09:35:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("event", sa.Column("dedup_key", sa.Text(), nullable=True))
    op.create_index(
        "uq_event_sector_id_dedup_key",
        "event",
        ["sector_id", "dedup_key"],
        unique=True,
        postgresql_where=sa.text("dedup_key IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "uq_event_sector_id_dedup_key",
        table_name="event",
        postgresql_where=sa.text("dedup_key IS NOT NULL"),
    )
    op.drop_column("event", "dedup_key")
