"""Late ranges: on TimescaleDB, the time ranges of readings that arrived too late for the
continuous aggregates' refresh policies, kept until a refresh covered them.

Plain PostgreSQL has no continuous aggregates: the table is made only where they exist.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 11:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if not op.get_bind().execute(sa.text("SELECT to_regclass('reading_1m')")).scalar():
        return
    op.create_table(
        "cagg_refresh_pending",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("lo", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hi", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("lo < hi", name=op.f("ck_cagg_refresh_pending_range")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cagg_refresh_pending")),
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS cagg_refresh_pending")
