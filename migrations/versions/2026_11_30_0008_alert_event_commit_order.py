"""Alert events numbered in commit order: `alert_event.seq`, given at commit by a deferred
constraint trigger under one advisory lock, so that a reader past `seq` N has seen every event
committed before it. Ids follow insert order, and transactions commit in any order: a reader
moving its cursor past id 6 while id 5 was still uncommitted never saw 5.

The lock is the last one a transaction takes (deferred triggers run at commit), so it cannot
deadlock with the alert rows the transaction locked before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 17:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# pg_advisory_xact_lock key of the commit order (ASCII "ioc-seq1")
COMMIT_ORDER_LOCK = 0x696F632D73657131


def upgrade() -> None:
    op.execute("CREATE SEQUENCE alert_event_seq AS bigint")
    op.add_column("alert_event", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.execute("UPDATE alert_event SET seq = id")
    op.execute(
        "SELECT setval('alert_event_seq', coalesce((SELECT max(id) FROM alert_event), 0) + 1, "
        "false)"
    )
    op.create_index("uq_alert_event_seq", "alert_event", ["seq"], unique=True)
    op.execute(
        f"""
        CREATE FUNCTION alert_event_commit_order() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            -- one committing transaction at a time takes numbers, and keeps the lock until
            -- its commit is visible: numbers follow commit order
            PERFORM pg_advisory_xact_lock({COMMIT_ORDER_LOCK});
            UPDATE alert_event SET seq = nextval('alert_event_seq')
            WHERE id = NEW.id AND seq IS NULL;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE CONSTRAINT TRIGGER alert_event_commit_order AFTER INSERT ON alert_event "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION alert_event_commit_order()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER alert_event_commit_order ON alert_event")
    op.execute("DROP FUNCTION alert_event_commit_order()")
    op.drop_index("uq_alert_event_seq", table_name="alert_event")
    op.drop_column("alert_event", "seq")
    op.execute("DROP SEQUENCE alert_event_seq")
