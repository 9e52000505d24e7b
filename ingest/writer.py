"""The batching writer: one transaction per batch, idempotent, acknowledged after commit.

Items queue while a batch commits; the next batch takes everything queued, up to
`max_batch_rows`. A lone item at low load commits at once: no timer holds it back. The queue
is bounded in rows and bytes; `submit` blocks when it is full, which stops the MQTT consumer
from reading its socket so the broker keeps the backlog.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import psycopg
from psycopg.types.json import Jsonb

from ingest import metrics, reasons
from ingest.items import Item, RejectRow
from ioc.db import libpq_url

log = logging.getLogger("ioc.ingest.writer")

BACKOFF_START_S: Final = 0.2
BACKOFF_MAX_S: Final = 10.0
CONNECT_TIMEOUT_S: Final = 5

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
_INSERT_EVENT: Final = """
INSERT INTO event (sector_id, source_id, kind, severity, title, description, district,
                   latitude, longitude, location, external_ref, dedup_key, occurred_at,
                   received_at, attributes)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
RETURNING id
"""
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


BatchHook = Callable[[psycopg.Connection[tuple[object, ...]], Batch], None]
"""Runs inside the batch transaction, before the commit (the alert engine)."""
AfterCommit = Callable[[Batch, datetime], None]
"""Runs on the writer thread once a batch committed, with the commit time (notifiers)."""


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
        hooks: Sequence[BatchHook] = (),
        after_commit: Sequence[AfterCommit] = (),
        name: str = "ingest-writer",
    ) -> None:
        self._conninfo = libpq_url(database_url)
        self.max_batch_rows = max_batch_rows
        self.queue_max_rows = queue_max_rows
        self.queue_max_bytes = queue_max_bytes
        self.strict_sources = strict_sources
        self.hooks = list(hooks)
        self.after_commit = list(after_commit)
        self._queue: deque[Item] = deque()
        self._rows = 0
        self._bytes = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._abandon = False
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._series: dict[SeriesKey, int] = {}
        self._known_sources: set[str] = set()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.batches = 0
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
            with self._cond:
                self._abandon = True  # not acknowledged: the broker redelivers it later
                self._cond.notify_all()
            self._thread.join(BACKOFF_MAX_S + CONNECT_TIMEOUT_S + 5)
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
        while True:
            items = self._take()
            if items is None:
                break
            if not self._write_until_done(items):
                break
            self._release(items)
            for item in items:
                if item.done is not None:
                    try:
                        item.done(item)
                    except Exception:
                        log.exception("acknowledgement callback failed")
        self._close()

    def _write_until_done(self, items: list[Item]) -> bool:
        """Write the batch, retrying transient errors with capped backoff; False if abandoned."""
        backoff = BACKOFF_START_S
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
                log.warning(
                    "database write failed, retrying",
                    extra={"error": self.last_error, "retry_in_s": backoff, "items": len(items)},
                )
                self._close()
            with self._cond:
                if self._abandon:
                    return False
                self._cond.wait(backoff)
                if self._abandon:
                    return False
            backoff = min(backoff * 2, BACKOFF_MAX_S)

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
        started = time.perf_counter()
        conn = self._connection()
        batch = Batch(items)
        new_series: dict[SeriesKey, int] = {}
        try:
            with conn.cursor() as cur:
                if self.strict_sources:
                    self._reject_unknown_sources(cur, items)
                self._upsert_sources(cur, items)
                new_series = self._series_ids(cur, items)
                self._copy_readings(cur, items, new_series, batch)
                self._insert_events(cur, items, batch)
                self._insert_rejects(cur, items)
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
        self._known_sources.update(i.source_id for i in items if i.source_id and i.sector)
        self.batches += 1
        committed = datetime.now(UTC)
        self._count(batch, committed, time.perf_counter() - started)
        for observer in self.after_commit:
            try:
                observer(batch, committed)
            except Exception:
                log.exception("after-commit observer failed")

    def _reject_unknown_sources(
        self, cur: psycopg.Cursor[tuple[object, ...]], items: list[Item]
    ) -> None:
        wanted = {
            i.source_id
            for i in items
            if i.source_id and i.sector and (i.readings or i.status or i.event)
        } - self._known_sources
        if not wanted:
            return
        cur.execute("SELECT id FROM source WHERE id = ANY(%s)", (sorted(wanted),))
        found = {str(row[0]) for row in cur.fetchall()}
        self._known_sources |= found
        for item in items:
            if item.source_id in wanted - found and (item.readings or item.status or item.event):
                item.reject_all(
                    reasons.UNKNOWN_SOURCE,
                    f"source {item.source_id!r} is not registered (IOC_INGEST_STRICT_SOURCES)",
                )

    @staticmethod
    def _upsert_sources(cur: psycopg.Cursor[tuple[object, ...]], items: list[Item]) -> None:
        seen: dict[str, list[object]] = {}
        for item in items:
            if not item.source_id or not item.sector:
                continue
            if not (item.readings or item.status or item.event):
                continue
            # status: readings mean online, a status message says; an event alone says nothing
            # [sector, status, newest reading time, last receipt of readings]
            row = seen.setdefault(item.source_id, [item.sector, None, None, None])
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
        if not out:
            return
        with cur.copy("COPY reading_stage (ts, series_id, value) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["timestamptz", "int4", "float8"])
            for sid, _, _, ts, value in out:
                cp.write_row((ts, sid, value))
        cur.execute(MOVE_STAGE)
        batch.stored = max(cur.rowcount, 0)

    @staticmethod
    def _insert_events(
        cur: psycopg.Cursor[tuple[object, ...]], items: list[Item], batch: Batch
    ) -> None:
        for item in items:
            event = item.event
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
