"""A writer hook that lists the time ranges of late readings for the aggregate refresh job.

On TimescaleDB, a reading older than the refresh policies' horizon (`ioc.cagg_refresh`)
would never reach the continuous aggregates; the hook records the whole hours such readings
fall in, in the batch transaction, so the readings and their range commit together. A batch
without late readings runs no statement; the database is looked at once per connection (and
again every few minutes, to follow policy changes). On plain PostgreSQL it does nothing.
"""

from __future__ import annotations

import logging
import time
import weakref
from datetime import UTC, datetime
from typing import Any, Final

import psycopg

from ingest.writer import Batch
from ioc.cagg_refresh import Tracking, detect, late_ranges, record_pending

log = logging.getLogger("ioc.ingest.late_ranges")

REDETECT_S: Final = 300.0


class LateRanges:
    """A writer hook (`Writer(hooks=[LateRanges()])`): records late readings' ranges."""

    def __init__(self, *, redetect_s: float = REDETECT_S) -> None:
        self.redetect_s = redetect_s
        self._conn: weakref.ref[psycopg.Connection[Any]] | None = None
        self._tracking: Tracking | None = None
        self._checked = 0.0
        self.recorded = 0
        """Ranges recorded so far."""
        self.failures = 0

    def __call__(self, conn: psycopg.Connection[Any], batch: Batch) -> None:
        """Record the ranges of this batch's late readings. A lost connection propagates (the
        writer retries the batch); any other failure is logged and the batch is stored."""
        if not batch.stored:
            return  # nothing new: the aggregates already hold whatever was stored before
        try:
            tracking = self._tracking_for(conn)
            cutoff = None if tracking is None else tracking.cutoff(datetime.now(UTC))
            if cutoff is None:
                return
            late = [r[3] for r in batch.readings if r[3] < cutoff]
            if not late:
                return
            ranges = late_ranges(late)
            with conn.transaction():
                record_pending(conn, ranges)
            self.recorded += len(ranges)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except psycopg.Error:
            self.failures += 1
            self._conn = None  # look at the database again next time
            log.exception("recording late readings failed; the aggregates may miss them")

    def _tracking_for(self, conn: psycopg.Connection[Any]) -> Tracking | None:
        now = time.monotonic()
        if (
            self._conn is not None
            and self._conn() is conn
            and now - self._checked < self.redetect_s
        ):
            return self._tracking
        with conn.transaction():  # a savepoint: a failure here leaves the batch intact
            self._tracking = detect(conn)
        self._conn = weakref.ref(conn)
        self._checked = now
        return self._tracking
