"""The batching writer: one transaction per batch, idempotent, acknowledged after commit.

Items queue while a batch commits; the next batch takes everything queued, up to
`max_batch_rows`. A lone item at low load commits at once: no timer holds it back. The queue
is bounded in rows and bytes; `submit` blocks when it is full, which stops the MQTT consumer
from reading its socket so the broker keeps the backlog.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, cast

import psycopg
from psycopg.types.json import Jsonb

from ingest import metrics, reasons
from ingest.items import Item, RejectRow
from ioc.audit import INSERT_AUDIT
from ioc.db import libpq_url

log = logging.getLogger("ioc.ingest.writer")

BACKOFF_START_S: Final = 0.2
BACKOFF_MAX_S: Final = 10.0
CONNECT_TIMEOUT_S: Final = 5
PROBE_INTERVAL_S: Final = 0.5
"""While the database is unreachable, how often a TCP probe looks whether it is back."""
PROBE_TIMEOUT_S: Final = 0.5

STAGE_DDL: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS reading_stage "
    "(ts timestamptz NOT NULL, series_id integer NOT NULL, value double precision NOT NULL) "
    "ON COMMIT DELETE ROWS"
)
_UPSERT_SOURCES: Final = """
INSERT INTO source AS s (id, sector_id, status, last_seen_at, last_reading_at)
SELECT id, sector_id, coalesce(status, 'unknown'), last_seen_at, last_reading_at
FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[])
     AS u(id, sector_id, status, last_seen_at, last_reading_at)
ON CONFLICT (id) DO UPDATE
SET status = CASE WHEN excluded.status = 'unknown' THEN s.status ELSE excluded.status END,
    last_seen_at = greatest(s.last_seen_at, excluded.last_seen_at),
    last_reading_at = greatest(s.last_reading_at, excluded.last_reading_at)
RETURNING id, sector_id, district
"""
_INSERT_SERIES: Final = """
INSERT INTO series (source_id, metric, catalogued)
SELECT * FROM unnest(%s::text[], %s::text[], %s::boolean[])
ON CONFLICT (source_id, metric) DO NOTHING
"""
_SELECT_SERIES: Final = """
SELECT s.id, s.source_id, s.metric FROM series s
JOIN unnest(%s::text[], %s::text[]) AS k(source_id, metric)
  ON s.source_id = k.source_id AND s.metric = k.metric
"""
MOVE_STAGE: Final = (
    "INSERT INTO reading (ts, series_id, value) "
    "SELECT ts, series_id, value FROM reading_stage ORDER BY series_id, ts "
    "ON CONFLICT DO NOTHING"
)
# with a hook that wants them (before the insert): per series, its newest stored reading ...
NEWEST_BEFORE: Final = """
SELECT k.series_id, (SELECT max(r.ts) FROM reading r WHERE r.series_id = k.series_id)
FROM unnest(%s::int[]) AS k(series_id)
"""
# ... and, for series whose batch reaches back that far, which staged readings are stored
KNOWN_BEFORE: Final = """
SELECT s.series_id, s.ts FROM reading_stage s
JOIN reading r ON r.series_id = s.series_id AND r.ts = s.ts
WHERE s.series_id = ANY(%s::int[])
"""
_INSERT_EVENT: Final = """
INSERT INTO event (sector_id, source_id, kind, severity, title, description, district,
                   latitude, longitude, location, external_ref, dedup_key, occurred_at,
                   received_at, attributes)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
RETURNING id
"""
_EVENT_BY_REF: Final = "SELECT id FROM event WHERE sector_id = %s AND external_ref = %s"
_EVENT_BY_DEDUP: Final = "SELECT id FROM event WHERE sector_id = %s AND dedup_key = %s"
_RECORD_RECEIPTS: Final = """
INSERT INTO ingest_receipt (digest, received_at, redelivery)
SELECT * FROM unnest(%s::bytea[], %s::timestamptz[], %s::boolean[])
ON CONFLICT DO NOTHING
"""
# A redelivered copy takes the latest stamp recorded for the same message; a copy held from a
# dropped connection takes the stamp of a redelivered copy already stored after its receipt.
_FIND_RECEIPT: Final = """
SELECT received_at FROM ingest_receipt
WHERE digest = %s AND received_at >= %s
ORDER BY received_at DESC LIMIT 1
"""
_FIND_REDELIVERED_RECEIPT: Final = """
SELECT received_at FROM ingest_receipt
WHERE digest = %s AND redelivery AND received_at >= %s
ORDER BY received_at LIMIT 1
"""
_PRUNE_RECEIPTS: Final = (
    "DELETE FROM ingest_receipt WHERE ctid = ANY(ARRAY("
    "SELECT ctid FROM ingest_receipt WHERE received_at < %s LIMIT 50000))"
)
# the two-key advisory lock space: no clash with the single-key locks of the alerts package
RECEIPT_LOCK_CLASS: Final = 0x10C_4EC
RECEIPT_PRUNE_EVERY_S: Final = 3600.0
_INSERT_REJECT: Final = (
    "INSERT INTO ingest_reject (received_at, topic, payload, reason, detail, source_id) "
    "VALUES (%s, %s, %s, %s, %s, %s)"
)

SeriesKey = tuple[str, str]


@dataclass
class Batch:
    """What one transaction wrote; hooks (the alerts engine) see it before the commit."""

    items: list[Item]
    readings: list[tuple[int, str, str, datetime, float]] = field(default_factory=list)
    """(series_id, source_id, metric, ts, value) of every accepted reading, new or not."""
    stored: int = 0
    events: list[Item] = field(default_factory=list)
    """Items whose event was newly stored (their `event_id` is set)."""
    source_sectors: dict[str, str] = field(default_factory=dict)
    """The sector of every source in the batch, as registered (a reading is judged by it)."""
    source_districts: dict[str, str | None] = field(default_factory=dict)
    """The district of every source in the batch, as registered."""
    series: dict[int, tuple[str, str, list[tuple[datetime, float]]]] = field(default_factory=dict)
    """With `known`: per series, (source, metric, its readings in the batch)."""
    known: set[tuple[int, datetime]] | None = None
    """(series_id, ts) of the batch's readings that were stored before it (None unless a hook
    asked with `wants_new_readings`); the others are new."""
    newest_before: dict[int, datetime | None] = field(default_factory=dict)
    """With `known`: per series of the batch, its newest reading stored before this batch."""


class _Wake(enum.Enum):
    """Why a back-off wait ended."""

    ELAPSED = "elapsed"
    RECOVERED = "recovered"
    ABANDON = "abandon"


class _SectorRace(Exception):
    """Another worker registered a new source under another sector meanwhile: write again."""


BatchHook = Callable[[psycopg.Connection[tuple[object, ...]], Batch], None]
"""Runs inside the batch transaction, before the commit (the alert engine)."""
AfterCommit = Callable[[Batch, datetime], None]
"""Runs on the writer thread once a batch committed, with the commit time (notifiers)."""


def receipt_digest(item: Item) -> bytes:
    """What identifies a message across its deliveries: its topic and payload."""
    topic = (item.topic or "").encode("utf-8", "surrogatepass")
    return hashlib.sha256(topic + b"\0" + item.payload).digest()[:16]


def _needs_receipt(item: Item) -> bool:
    """Whether what the item stores depends on when it was received."""
    return bool(item.rejects) or any(r.relative for r in item.readings)


def _restamp(item: Item, stamp: datetime) -> None:
    """Time the item as received at `stamp` (a redelivery of a message received then)."""
    shift = stamp - item.stamped_at
    if shift:
        item.readings = [
            dataclasses.replace(r, ts=r.ts + shift) if r.relative else r for r in item.readings
        ]
        item.stamped_at = stamp


def _is_transient(exc: BaseException) -> bool:
    """Errors worth retrying the same batch for: connection loss, deadlock, serialization."""
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


class Writer:
    """Writes queued items in batches on its own thread and its own connection."""

    def __init__(
        self,
        database_url: str,
        *,
        max_batch_rows: int = 10_000,
        queue_max_rows: int = 200_000,
        queue_max_bytes: int = 64 * 1024 * 1024,
        strict_sources: bool = False,
        receipt_window_s: float = 7 * 24 * 3600,
        backoff_start_s: float = BACKOFF_START_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        hooks: Sequence[BatchHook] = (),
        after_commit: Sequence[AfterCommit] = (),
        name: str = "ingest-writer",
    ) -> None:
        self._conninfo = libpq_url(database_url)
        self.max_batch_rows = max_batch_rows
        self.queue_max_rows = queue_max_rows
        self.queue_max_bytes = queue_max_bytes
        self.strict_sources = strict_sources
        self.receipt_window = timedelta(seconds=receipt_window_s)
        self.backoff_start_s = backoff_start_s
        self.backoff_max_s = backoff_max_s
        self.hooks = list(hooks)
        self.track_new = any(getattr(hook, "wants_new_readings", False) for hook in self.hooks)
        self.after_commit = list(after_commit)
        self._queue: deque[Item] = deque()
        self._rows = 0
        self._bytes = 0
        self._cond = threading.Condition()
        self._stopping = False
        # set only to give up on a stop: arrivals must not cut a back-off wait short
        self._abandon = threading.Event()
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._series: dict[SeriesKey, int] = {}
        self._source_sectors: dict[str, str] = {}
        self._pruned_at = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.batches = 0
        self.retries = 0
        self.probes_down = 0
        self.last_error: str | None = None

    # -- queue -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def submit(self, item: Item, *, timeout_s: float | None = None) -> bool:
        """Queue an item; block while the queue is full. False on timeout or when stopping."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while (
                not self._stopping
                and self._rows > 0
                and (
                    self._rows + item.rows > self.queue_max_rows
                    or self._bytes + item.size > self.queue_max_bytes
                )
            ):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            if self._stopping:
                return False
            self._queue.append(item)
            self._rows += item.rows
            self._bytes += item.size
            metrics.QUEUE_ROWS.set(self._rows)
            metrics.QUEUE_BYTES.set(self._bytes)
            self._cond.notify_all()
        return True

    @property
    def alive(self) -> bool:
        """Whether the writer thread runs (or has not started, or stopped as asked)."""
        return self._thread.is_alive() or self._stopping or self._thread.ident is None

    def pending(self) -> tuple[int, int]:
        """Rows and bytes waiting to be written."""
        with self._cond:
            return self._rows, self._bytes

    def stop(self, *, timeout_s: float = 30.0) -> bool:
        """Write what is queued, then stop; True when everything queued was committed."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._abandon.set()  # not acknowledged: the broker redelivers it later
            self._thread.join(CONNECT_TIMEOUT_S + 5)
        with self._cond:
            return self._rows == 0 and not self._queue

    def _take(self) -> list[Item] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            batch: list[Item] = []
            rows = 0
            while self._queue and (not batch or rows + self._queue[0].rows <= self.max_batch_rows):
                item = self._queue.popleft()
                batch.append(item)
                rows += item.rows
            return batch

    def _release(self, items: list[Item]) -> None:
        with self._cond:
            self._rows -= sum(i.rows for i in items)
            self._bytes -= sum(i.size for i in items)
            metrics.QUEUE_ROWS.set(self._rows)
            metrics.QUEUE_BYTES.set(self._bytes)
            self._cond.notify_all()

    # -- loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            log.critical("the writer thread died", exc_info=True)
            raise
        finally:
            self._close()

    def _loop(self) -> None:
        while True:
            items = self._take()
            if items is None:
                return
            if not self._write_until_done(items):
                return
            self._release(items)
            for item in items:
                if item.done is not None:
                    try:
                        item.done(item)
                    except Exception:
                        log.exception("acknowledgement callback failed")
            if time.monotonic() - self._pruned_at > RECEIPT_PRUNE_EVERY_S:
                self._pruned_at = time.monotonic()
                try:
                    self.prune_receipts()
                except psycopg.Error as exc:
                    log.warning("pruning old receipts failed", extra={"error": str(exc)[:300]})
                    self._close()

    def _write_until_done(self, items: list[Item]) -> bool:
        """Write the batch, retrying transient errors with capped backoff; False if abandoned.

        Items arriving meanwhile only queue: they never cut the wait short. While the
        database is unreachable a cheap TCP probe runs on its own timer, and the batch is
        retried as soon as the server listens again."""
        backoff = self.backoff_start_s
        while True:
            try:
                self._write_isolating(items)
                self.last_error = None
                return True
            except Exception as exc:
                if not _is_transient(exc):
                    # isolation already turned refused items into rejects: this is the
                    # database failing in some other way; keep the batch and try again
                    log.exception("batch write failed")
                self.last_error = str(exc).strip().splitlines()[0] if str(exc) else repr(exc)
                metrics.DB_RETRIES.inc()
                self.retries += 1
                log.warning(
                    "database write failed, retrying",
                    extra={"error": self.last_error, "retry_in_s": backoff, "items": len(items)},
                )
                unreachable = self._conn is None or self._conn.broken or self._conn.closed
                self._close()
            woke = self._pause(backoff, probe=unreachable)
            if woke is _Wake.ABANDON:
                return False
            if woke is _Wake.RECOVERED:
                backoff = self.backoff_start_s  # a new outage, if any, starts afresh
            else:
                backoff = min(backoff * 2, self.backoff_max_s)

    def _pause(self, wait_s: float, *, probe: bool) -> _Wake:
        """Wait before a retry; with `probe`, end early once the server listens again."""
        deadline = time.monotonic() + wait_s
        was_down = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _Wake.ELAPSED
            if self._abandon.wait(min(remaining, PROBE_INTERVAL_S) if probe else remaining):
                return _Wake.ABANDON
            if probe and deadline - time.monotonic() > 0:
                up = self._listening()
                if up and was_down:
                    log.info("database reachable again, retrying now")
                    return _Wake.RECOVERED
                was_down = not up
                self.probes_down += was_down

    def _listening(self) -> bool:
        """Whether the database server accepts TCP (or Unix socket) connections."""
        params = psycopg.conninfo.conninfo_to_dict(self._conninfo)
        host = str(params.get("host") or params.get("hostaddr") or "").split(",")[0]
        port = int(str(params.get("port") or "5432").split(",")[0])
        try:
            if not host or host.startswith("/"):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(PROBE_TIMEOUT_S)
                    sock.connect(f"{host or '/var/run/postgresql'}/.s.PGSQL.{port}")
            else:
                socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
        except OSError:
            return False
        return True

    def _write_isolating(self, items: list[Item]) -> None:
        """Write a batch; when the database refuses it for its content, find the culprit."""
        try:
            self._write(items)
        except Exception as exc:
            if _is_transient(exc):
                raise
            if len(items) == 1:
                item = items[0]
                log.error("item refused by the database", extra={"error": str(exc)[:500]})
                item.reject_all(reasons.WRITE_FAILED, f"database refused it: {exc}"[:2000])
                self._write(items)
                return
            middle = len(items) // 2
            self._write_isolating(items[:middle])
            self._write_isolating(items[middle:])

    # -- one transaction -------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._conninfo, connect_timeout=CONNECT_TIMEOUT_S, application_name="ioc-ingest"
            )
            self._conn.execute(STAGE_DDL)
            self._conn.commit()
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                log.debug("closing a broken connection failed", exc_info=True)
            self._conn = None

    def _write(self, items: list[Item]) -> None:
        for _ in range(3):
            try:
                self._write_once(items)
                return
            except _SectorRace:
                continue  # the cache now knows the winning sector: those items are refused
        self._write_once(items)

    def _write_once(self, items: list[Item]) -> None:
        started = time.perf_counter()
        conn = self._connection()
        batch = Batch(items)
        new_series: dict[SeriesKey, int] = {}
        try:
            with conn.cursor() as cur:
                if self.strict_sources:
                    self._reject_unknown_sources(cur, items)
                self._check_sectors(cur, items, batch)
                self._receipts(cur, items)
                self._upsert_sources(cur, items, batch)
                new_series = self._series_ids(cur, items)
                self._copy_readings(cur, items, new_series, batch)
                self._insert_events(cur, items, batch)
                self._insert_rejects(cur, items)
                self._insert_audit(cur, items)
                for hook in self.hooks:
                    hook(conn, batch)
            conn.commit()
        except BaseException:
            if not conn.closed:
                try:
                    conn.rollback()
                except psycopg.Error:
                    self._close()
            for item in batch.events:
                item.event_id = None
            raise
        self._series.update(new_series)
        self.batches += 1
        committed = datetime.now(UTC)
        self._count(batch, committed, time.perf_counter() - started)
        for observer in self.after_commit:
            try:
                observer(batch, committed)
            except Exception:
                log.exception("after-commit observer failed")

    def _check_sectors(
        self, cur: psycopg.Cursor[tuple[object, ...]], items: list[Item], batch: Batch
    ) -> None:
        """Refuse messages on another sector's topic than their source's (`wrong_sector`)."""
        known = self._source_sectors
        wanted = {str(i.source_id) for i in items if _registers(i) and i.source_id not in known}
        if wanted:
            self._learn_sectors(cur, wanted)
        sectors = batch.source_sectors
        for item in items:
            if not _registers(item):
                continue
            source, sector = str(item.source_id), str(item.sector)
            # a new source belongs to the sector of its first message
            owner = sectors.setdefault(source, known.get(source, sector))
            if owner != sector:
                item.reject_all(
                    reasons.WRONG_SECTOR,
                    f"source {source!r} belongs to sector {owner!r}, not {sector!r}",
                )

    def _learn_sectors(self, cur: psycopg.Cursor[tuple[object, ...]], sources: set[str]) -> None:
        """Cache the registered sector of those of `sources` the database knows."""
        cur.execute("SELECT id, sector_id FROM source WHERE id = ANY(%s)", (sorted(sources),))
        for source_id, sector_id in cur.fetchall():
            self._source_sectors[str(source_id)] = str(sector_id)

    def _receipts(self, cur: psycopg.Cursor[tuple[object, ...]], items: list[Item]) -> None:
        """Record the receipts of messages timed by their delivery; restamp redeliveries."""
        normal: list[tuple[bytes, Item]] = []
        again: list[tuple[bytes, int, Item, bool]] = []
        for n, item in enumerate(items):
            if not _needs_receipt(item):
                continue
            digest = receipt_digest(item)
            lost = item.connection_lost is not None and item.connection_lost()
            if item.redelivered or lost:
                again.append((digest, n, item, item.redelivered))
            else:
                normal.append((digest, item))
        if normal:
            cur.execute(
                _RECORD_RECEIPTS,
                (
                    [d for d, _ in normal],
                    [i.stamped_at for _, i in normal],
                    [False] * len(normal),
                ),
            )
        if not again:
            return
        # Rare: a copy that may have been stored before. Serialize on the message across
        # workers, so the copy that comes second sees what the first one committed.
        oldest = datetime.now(UTC) - self.receipt_window
        for digest, _, item, redelivered in sorted(again, key=lambda a: (a[0], a[1])):
            cur.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)",
                (RECEIPT_LOCK_CLASS, int.from_bytes(digest[:4], "big", signed=True)),
            )
            if redelivered:
                cur.execute(_FIND_RECEIPT, (digest, oldest))
            else:
                cur.execute(_FIND_REDELIVERED_RECEIPT, (digest, item.received_at))
            row = cur.fetchone()
            if row is not None:
                # stored before: the same readings (same times) are ignored by the table's
                # key, and its rejects are already kept
                _restamp(item, row[0])  # type: ignore[arg-type]
                item.rejects = []
                item.reject_counts.clear()
                metrics.REDELIVERIES.inc()
            else:
                cur.execute(_RECORD_RECEIPTS, ([digest], [item.stamped_at], [redelivered]))

    def prune_receipts(self) -> int:
        """Forget receipts older than the redelivery window; how many went."""
        conn = self._connection()
        total = 0
        try:
            while True:
                cur = conn.execute(_PRUNE_RECEIPTS, (datetime.now(UTC) - self.receipt_window,))
                conn.commit()
                total += max(cur.rowcount, 0)
                if cur.rowcount < 50_000:
                    return total
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise

    def _reject_unknown_sources(
        self, cur: psycopg.Cursor[tuple[object, ...]], items: list[Item]
    ) -> None:
        known = self._source_sectors
        wanted = {str(i.source_id) for i in items if _registers(i) and i.source_id not in known}
        if not wanted:
            return
        self._learn_sectors(cur, wanted)
        for item in items:
            if item.source_id in wanted - known.keys() and _registers(item):
                item.reject_all(
                    reasons.UNKNOWN_SOURCE,
                    f"source {item.source_id!r} is not registered (IOC_INGEST_STRICT_SOURCES)",
                )

    def _upsert_sources(
        self, cur: psycopg.Cursor[tuple[object, ...]], items: list[Item], batch: Batch
    ) -> None:
        seen: dict[str, list[object]] = {}
        for item in items:
            if not _registers(item):
                continue
            # status: readings mean online, a status message says; an event alone says nothing
            # [sector, status, newest reading time, last receipt of readings]
            row = seen.setdefault(str(item.source_id), [item.sector, None, None, None])
            if item.readings:
                newest = max(r.ts for r in item.readings)
                last = row[2]
                row[2] = newest if last is None or newest > last else last  # type: ignore[operator]
                got = row[3]
                row[3] = item.received_at if got is None or item.received_at > got else got  # type: ignore[operator]
                row[1] = "online"
            if item.status is not None:
                row[1] = item.status
        if not seen:
            return
        ids = sorted(seen)  # one lock order for every worker: no deadlock between them
        cur.execute(
            _UPSERT_SOURCES,
            [ids, *([seen[i][k] for i in ids] for k in range(4))],
        )
        raced = False
        for source_id, sector_id, district in cur.fetchall():
            self._source_sectors[str(source_id)] = str(sector_id)
            batch.source_districts[str(source_id)] = None if district is None else str(district)
            if batch.source_sectors.get(str(source_id)) != sector_id:
                raced = True
        if raced:
            raise _SectorRace

    def _series_ids(
        self, cur: psycopg.Cursor[tuple[object, ...]], items: list[Item]
    ) -> dict[SeriesKey, int]:
        missing: dict[SeriesKey, bool] = {}
        for item in items:
            source = item.source_id
            if source is None:
                continue
            for r in item.readings:
                key = (source, r.metric)
                if key not in self._series and key not in missing:
                    missing[key] = r.catalogued
        if not missing:
            return {}
        keys = sorted(missing)
        sources = [k[0] for k in keys]
        metric_ids = [k[1] for k in keys]
        cur.execute(_INSERT_SERIES, (sources, metric_ids, [missing[k] for k in keys]))
        cur.execute(_SELECT_SERIES, (sources, metric_ids))
        return {(str(src), str(metric)): int(sid) for sid, src, metric in cur.fetchall()}  # type: ignore[call-overload]

    def _copy_readings(
        self,
        cur: psycopg.Cursor[tuple[object, ...]],
        items: list[Item],
        new_series: dict[SeriesKey, int],
        batch: Batch,
    ) -> None:
        series = self._series
        out = batch.readings
        grouped = batch.series if self.track_new else None
        for item in items:
            source = item.source_id
            if source is None:
                continue
            for r in item.readings:
                key = (source, r.metric)
                sid = series.get(key)
                if sid is None:
                    sid = new_series[key]
                out.append((sid, source, r.metric, r.ts, r.value))
                if grouped is not None:
                    entry = grouped.get(sid)
                    if entry is None:
                        grouped[sid] = (source, r.metric, [(r.ts, r.value)])
                    else:
                        entry[2].append((r.ts, r.value))
        if not out:
            return
        with cur.copy("COPY reading_stage (ts, series_id, value) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["timestamptz", "int4", "float8"])
            for sid, _, _, ts, value in out:
                cp.write_row((ts, sid, value))
        if self.track_new:
            self._known_before(cur, batch, set(series.values()))
        cur.execute(MOVE_STAGE)
        batch.stored = max(cur.rowcount, 0)

    @staticmethod
    def _known_before(
        cur: psycopg.Cursor[tuple[object, ...]], batch: Batch, stored_series: set[int]
    ) -> None:
        """Tell the hooks, per series, the newest reading stored before this batch and which
        of the batch's readings were stored already (only a series whose batch reaches back to
        its newest reading can hold any: in-order data costs one index probe a series)."""
        oldest = {sid: min(entry[2])[0] for sid, entry in batch.series.items()}
        known_series = [sid for sid in oldest if sid in stored_series]
        newest: dict[int, datetime | None] = {}
        if known_series:  # a series this batch created holds nothing older
            cur.execute(NEWEST_BEFORE, (known_series,))
            newest = dict(cast(list[tuple[int, datetime | None]], cur.fetchall()))
        batch.newest_before = newest
        overlapping = [
            sid
            for sid, first in oldest.items()
            if (n := newest.get(sid)) is not None and first <= n
        ]
        batch.known = set()
        if overlapping:
            cur.execute(KNOWN_BEFORE, (overlapping,))
            batch.known = set(cast(list[tuple[int, datetime]], cur.fetchall()))

    @staticmethod
    def _insert_events(
        cur: psycopg.Cursor[tuple[object, ...]], items: list[Item], batch: Batch
    ) -> None:
        for item in items:
            event = item.event
            item.duplicate_of = None
            if event is None or item.sector is None:
                continue
            loc = event.location
            lat = lon = None
            place: str | None = None
            if isinstance(loc, str):
                place = loc
            elif loc is not None:
                lat, lon, place = loc.lat, loc.lon, loc.name
            dedup = None
            if event.external_ref is None:
                digest = hashlib.sha256(f"{item.source_id}\0".encode() + item.payload)
                dedup = "sha256:" + digest.hexdigest()
            cur.execute(
                _INSERT_EVENT,
                (
                    item.sector,
                    item.source_id,
                    event.kind,
                    event.severity,
                    event.title,
                    event.description,
                    event.district,
                    lat,
                    lon,
                    place,
                    event.external_ref,
                    dedup,
                    event.occurred_at or item.received_at,
                    item.received_at,
                    Jsonb(event.attributes),
                ),
            )
            row = cur.fetchone()
            if row is not None:
                item.event_id = int(row[0])  # type: ignore[call-overload]
                batch.events.append(item)
                continue
            # stored before: name it (HTTP answers with the event an earlier copy created)
            if event.external_ref is not None:
                cur.execute(_EVENT_BY_REF, (item.sector, event.external_ref))
            else:
                cur.execute(_EVENT_BY_DEDUP, (item.sector, dedup))
            found = cur.fetchone()
            item.duplicate_of = int(found[0]) if found else None  # type: ignore[call-overload]

    @staticmethod
    def _insert_audit(cur: psycopg.Cursor[tuple[object, ...]], items: list[Item]) -> None:
        rows = []
        for item in items:
            if item.audit is None:
                continue
            event = item.event_id or item.duplicate_of
            target = f"event:{event}" if event is not None else f"source:{item.source_id}"
            detail: dict[str, object] = {
                "sector": item.sector,
                "source": item.source_id,
                "readings": len(item.readings),
                "rejected": sum(item.reject_counts.values()),
            }
            if item.duplicate_of is not None:
                detail["duplicate_of"] = item.duplicate_of
            rows.append((item.audit.actor, item.audit.action, target, Jsonb(detail)))
        if rows:
            cur.executemany(INSERT_AUDIT, rows)

    @staticmethod
    def _insert_rejects(cur: psycopg.Cursor[tuple[object, ...]], items: list[Item]) -> None:
        rows: list[RejectRow] = [r for item in items for r in item.rejects]
        if rows:
            cur.executemany(
                _INSERT_REJECT,
                [
                    (r.received_at, r.topic, r.payload, r.reason, r.detail, r.source_id)
                    for r in rows
                ],
            )

    @staticmethod
    def _count(batch: Batch, committed: datetime, elapsed_s: float) -> None:
        accepted = len(batch.readings)
        metrics.ACCEPTED.inc(accepted)
        metrics.STORED.inc(batch.stored)
        metrics.DUPLICATES.inc(accepted - batch.stored)
        metrics.EVENTS.inc(len(batch.events))
        metrics.BATCH_ROWS.observe(accepted)
        metrics.COMMIT_SECONDS.observe(elapsed_s)
        for item in batch.items:
            for reason, n in item.reject_counts.items():
                metrics.REJECTS.labels(reason).inc(n)
            if item.readings:
                newest = max(r.ts for r in item.readings)
                metrics.LAG_SECONDS.observe(max(0.0, (committed - newest).total_seconds()))


def _registers(item: Item) -> bool:
    """Whether the item names a source and brings something that registers it."""
    return bool(item.source_id and item.sector and (item.readings or item.status or item.event))
