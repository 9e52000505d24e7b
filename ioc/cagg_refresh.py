"""Late readings into the continuous aggregates (TimescaleDB): what the refresh policies miss.

A refresh policy re-materialises only its recent window (3 hours back for reading_1m), so a
reading that arrives later than that (a gateway uploading what it buffered while offline)
never reaches the aggregates by itself. The ingest writer lists the time ranges of such
readings in `cagg_refresh_pending`, in the transaction that stores them (see
`ingest.late_ranges`); `refresh_pending` refreshes reading_1m, then reading_1h, then
reading_1d over those ranges and deletes the rows it covered. Meanwhile
`ioc.timeseries.aggregate` answers the buckets they overlap from raw rows.

A reading counts as late when it is older than `late_horizon` of the policies: younger
readings sit above the watermark of every aggregate coarser than the finest (they are read
through real-time aggregation) and inside the finest policy's window, so they appear as soon
as that policy runs. On plain PostgreSQL the table does not exist and nothing here runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg

from ioc.db import libpq_url
from ioc.timeseries import CAGG_VIEWS, PENDING_TABLE, TimeRange, merge_ranges

log = logging.getLogger(__name__)

PENDING_GRAIN: Final = timedelta(hours=1)
"""Late readings are recorded as whole hours (UTC): a contiguous backfill is one row a batch."""
SAFETY_MARGIN: Final = timedelta(minutes=5)
"""Taken off the horizon: commit latency, clocks that disagree a little, a policy run late."""
MAX_RANGES_PER_BATCH: Final = 8
MAX_PENDING_ROWS: Final = 10_000
"""Most pending rows one refresh takes (the rest wait for the next round)."""
MAX_WINDOWS: Final = 16
"""Most refresh calls per aggregate and round; more ranges are merged across their gaps."""
REFRESH_INTERVAL_S: Final = 5.0
UNTRACKED_INTERVAL_S: Final = 60.0
"""How often the loop looks again for the pending table on a database without it."""
CONNECT_TIMEOUT_S: Final = 5
LOCK_KEY: Final = 0x10C_CA66
"""The advisory lock one refresh at a time holds (single-key space, as the alert sweeper's)."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_POLICIES: Final = """
SELECT ca.view_name, (j.config ->> 'start_offset')::interval,
       (j.config ->> 'end_offset')::interval, j.schedule_interval
FROM timescaledb_information.continuous_aggregates ca
JOIN timescaledb_information.jobs j
  ON j.proc_name = 'policy_refresh_continuous_aggregate' AND j.scheduled
 AND j.hypertable_name IN (ca.view_name, ca.materialization_hypertable_name)
WHERE ca.view_schema = current_schema()
"""
# The watermark is where a real-time aggregate switches from materialised rows to its source;
# this is the expression the aggregates' own view definitions use. Before anything was
# materialised it lies before year 1 (no Python datetime): NULL then, nothing to refresh.
_WATERMARKS: Final = """
SELECT view, CASE WHEN mark >= TIMESTAMPTZ '0001-01-02 00:00:00+00' THEN mark END
FROM (
    SELECT ca.user_view_name AS view, _timescaledb_functions.to_timestamp(
               _timescaledb_functions.cagg_watermark(ca.mat_hypertable_id)) AS mark
    FROM _timescaledb_catalog.continuous_agg ca
    WHERE ca.user_view_schema = current_schema()
) AS w
"""


@dataclass(frozen=True)
class Policy:
    """A refresh policy's window, back from now (None: unbounded), and how often it runs."""

    start_offset: timedelta | None
    end_offset: timedelta | None
    schedule: timedelta


@dataclass(frozen=True)
class Tracking:
    """What the writer hook needs: the horizon (None: the policies reach every reading) and
    how far the database clock is ahead of this process's."""

    horizon: timedelta | None
    clock_skew: timedelta

    def cutoff(self, now: datetime) -> datetime | None:
        """Readings before this instant (on this process's clock) are late."""
        if self.horizon is None:
            return None
        return now + self.clock_skew - self.horizon


@dataclass(frozen=True)
class RefreshReport:
    """One round: `ran` is False when another process held the lock; `windows` lists the
    (aggregate, start, end) refreshed; `rows` the pending rows covered and deleted."""

    ran: bool = True
    rows: int = 0
    windows: tuple[tuple[str, datetime, datetime], ...] = ()


# --- pure helpers --------------------------------------------------------------------------


def floor_to(t: datetime, width: timedelta) -> datetime:
    """Start of the `width` bucket (counted from the Unix epoch, as time_bucket) holding t."""
    return t - (t - _EPOCH) % width


def late_horizon(policies: Mapping[str, Policy], views: Sequence[str]) -> timedelta | None:
    """How old a reading may be at commit and still reach every aggregate through the
    policies within one run of the finest; None when they reach any reading.

    `views` are the aggregates present, finest first. A coarser aggregate shows a reading
    through real-time aggregation only while it is younger than its policy's end offset
    (above its watermark); older, it waits up to a whole schedule of that policy (hours)."""
    if not views:
        return None
    limits: list[timedelta] = []
    finest = policies.get(views[0])
    if finest is None:
        limits.append(timedelta(0))
    elif finest.start_offset is not None:
        limits.append(finest.start_offset - finest.schedule)
    for view in views[1:]:
        policy = policies.get(view)
        limits.append(timedelta(0) if policy is None else policy.end_offset or timedelta(0))
    if not limits:
        return None
    return max(timedelta(0), min(limits) - SAFETY_MARGIN)


def late_ranges(
    timestamps: Iterable[datetime],
    grain: timedelta = PENDING_GRAIN,
    max_count: int = MAX_RANGES_PER_BATCH,
) -> list[TimeRange]:
    """Whole `grain` buckets holding the timestamps, merged into at most `max_count` ranges."""
    starts = {floor_to(t, grain) for t in timestamps}
    return merge_ranges(((s, s + grain) for s in starts), max_count)


def refresh_windows(
    ranges: Iterable[TimeRange], width: timedelta, watermark: datetime
) -> list[TimeRange]:
    """Windows of whole `width` buckets covering the ranges, below the aggregate's watermark.

    Above the watermark the aggregate reads its source in real time; refreshing there would
    move the watermark past buckets the policies have not reached yet, hiding later readings
    in them until the policy caught up (a day, for reading_1d)."""
    windows = []
    for lo, hi in ranges:
        start = floor_to(lo, width)
        end = min(
            floor_to(hi - timedelta(microseconds=1), width) + width, floor_to(watermark, width)
        )
        if start < end:
            windows.append((start, end))
    return merge_ranges(windows, MAX_WINDOWS)


# --- database ------------------------------------------------------------------------------

Conn = psycopg.Connection[Any]


def is_tracked(conn: Conn) -> bool:
    """Whether this database lists late ranges (TimescaleDB with the aggregates)."""
    row = conn.execute(f"SELECT to_regclass('{PENDING_TABLE}') IS NOT NULL").fetchone()
    return bool(row and row[0])


def load_policies(conn: Conn) -> dict[str, Policy]:
    """The scheduled refresh policies by aggregate. Several on one aggregate are combined the
    cautious way: the shortest reach back, the nearest end and the longest schedule."""
    out: dict[str, Policy] = {}
    for view, start, end, every in conn.execute(_POLICIES).fetchall():
        seen = out.get(str(view))
        if seen is not None:
            if start is None or (seen.start_offset is not None and seen.start_offset < start):
                start = seen.start_offset
            end = min(end or timedelta(0), seen.end_offset or timedelta(0))
            every = max(every, seen.schedule)
        out[str(view)] = Policy(start, end, every)
    return out


def detect(conn: Conn) -> Tracking | None:
    """The writer hook's view of this database; None where late ranges are not tracked."""
    if not is_tracked(conn):
        return None
    present = {
        str(r[0])
        for r in conn.execute(
            "SELECT view_name FROM timescaledb_information.continuous_aggregates "
            "WHERE view_schema = current_schema()"
        ).fetchall()
    }
    views = [view for _, view in CAGG_VIEWS if view in present]
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    skew = (row[0] - datetime.now(UTC)) if row else timedelta(0)
    return Tracking(late_horizon(load_policies(conn), views), skew)


def record_pending(conn: Conn, ranges: Sequence[TimeRange]) -> None:
    """List late ranges for the refresh job (in the caller's transaction)."""
    conn.execute(
        f"INSERT INTO {PENDING_TABLE} (lo, hi) "
        "SELECT * FROM unnest(%s::timestamptz[], %s::timestamptz[])",
        ([lo for lo, _ in ranges], [hi for _, hi in ranges]),
    )


def refresh_pending(conn: Conn) -> RefreshReport:
    """Refresh the aggregates over the pending ranges, finest first, then delete the rows
    it read (rows added meanwhile stay for the next round). Needs an autocommit connection:
    refresh_continuous_aggregate cannot run inside a transaction block."""
    if not conn.autocommit:
        raise ValueError("refresh_pending needs an autocommit connection")
    if not _pending(conn, limit=1):
        return RefreshReport()
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
    if not (row and row[0]):
        return RefreshReport(ran=False)
    try:
        return _refresh_locked(conn)
    finally:
        if not conn.closed and not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def _pending(conn: Conn, *, limit: int) -> list[tuple[int, datetime, datetime]]:
    rows = conn.execute(
        f"SELECT id, lo, hi FROM {PENDING_TABLE} ORDER BY id LIMIT %s", (limit,)
    ).fetchall()
    return [(int(r[0]), r[1], r[2]) for r in rows]


def _refresh_locked(conn: Conn) -> RefreshReport:
    rows = _pending(conn, limit=MAX_PENDING_ROWS)  # again: another process may just have run
    if not rows:
        return RefreshReport()
    ranges = merge_ranges((lo, hi) for _, lo, hi in rows)
    watermarks = {str(r[0]): r[1] for r in conn.execute(_WATERMARKS).fetchall()}
    done: list[tuple[str, datetime, datetime]] = []
    # finest first: each aggregate is computed from the one below it
    for width, view in CAGG_VIEWS:
        watermark = watermarks.get(view)
        if watermark is None:
            continue
        for lo, hi in refresh_windows(ranges, width, watermark):
            conn.execute(
                "CALL refresh_continuous_aggregate(%s::regclass, %s::timestamptz, %s::timestamptz)",
                (view, lo, hi),
            )
            done.append((view, lo, hi))
    conn.execute(f"DELETE FROM {PENDING_TABLE} WHERE id = ANY(%s)", ([r[0] for r in rows],))
    return RefreshReport(rows=len(rows), windows=tuple(done))


class CaggRefresher:
    """Runs `refresh_pending` every `interval_s` on its own connection until stopped; any
    number may run (in every ingest worker): an advisory lock lets one refresh at a time."""

    def __init__(
        self,
        database_url: str,
        *,
        interval_s: float = REFRESH_INTERVAL_S,
        untracked_interval_s: float = UNTRACKED_INTERVAL_S,
    ) -> None:
        self._conninfo = libpq_url(database_url)
        self.interval_s = interval_s
        self.untracked_interval_s = untracked_interval_s
        self.last: RefreshReport | None = None
        self.failures = 0

    def _connect(self) -> Conn:
        return psycopg.connect(
            self._conninfo,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="ioc-cagg-refresh",
        )

    def refresh_now(self) -> RefreshReport | None:
        """One round on a connection of its own; None where late ranges are not tracked."""
        with self._connect() as conn:
            if not is_tracked(conn):
                return None
            self.last = refresh_pending(conn)
        return self.last

    def run(self, stop: threading.Event) -> None:
        """Refresh until `stop` is set; a failed round is logged and retried next round."""
        conn: Conn | None = None
        while not stop.is_set():
            wait_s = self.interval_s
            failed = True
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
                wait_s = self._round(conn)
                failed = False
            # no failure ends the loop: the pending rows stay, and aggregate answers their
            # buckets from raw rows until a round succeeds
            except psycopg.Error as exc:
                log.warning("aggregate refresh failed", extra={"error": str(exc).strip()[:300]})
            except Exception:
                log.exception("aggregate refresh failed")
            if failed:
                self.failures += 1
                if conn is not None:
                    conn.close()
                conn = None
            stop.wait(wait_s)
        if conn is not None:
            conn.close()

    def _round(self, conn: Conn) -> float:
        """One round; returns how long to wait before the next."""
        if not is_tracked(conn):
            return self.untracked_interval_s
        self.last = refresh_pending(conn)
        if self.last.windows:
            log.info(
                "late readings refreshed into the aggregates",
                extra={"pending_rows": self.last.rows, "calls": len(self.last.windows)},
            )
        return self.interval_s
