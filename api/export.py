"""CSV export of readings, streamed in constant memory (`GET /api/v1/telemetry/export.csv`).

PostgreSQL writes the CSV itself: one `COPY (SELECT …) TO STDOUT (FORMAT csv)` going through
the series in turn, each in the order of the primary key (series, time), so no sort runs and
nothing is held but the chunk on its way out. A COPY per series paid a statement each (176,000
rows/s over 303 series of 1,000 rows); a server-side cursor formatted by Python's csv module
ran ~280,000 rows/s; one COPY sorted by time sorts the whole range before the first row.

The response is closed deterministically: when the client goes away, the COPY is abandoned
and its database connection invalidated (closed), so no backend keeps working for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import unicodedata
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from urllib.parse import quote
from zoneinfo import ZoneInfo

import anyio
import anyio.lowlevel
import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

COLUMNS: Final = (
    "time",
    "sector",
    "source_id",
    "source_name",
    "district",
    "metric",
    "value",
    "unit",
)
HEADER: Final = (",".join(COLUMNS) + "\n").encode()
BOM: Final = b"\xef\xbb\xbf"
CHUNK_BYTES: Final = 64 * 1024
"""Bytes gathered before a chunk goes to the client (COPY hands over one row at a time)."""
MAX_CONCURRENT: Final = 4
"""Exports one API process streams at once; each holds a database connection throughout."""
RETRY_AFTER_S: Final = 5
MEDIA_TYPE: Final = "text/csv; charset=utf-8"

# ISO 8601 with the session zone's offset; fractional seconds only when there are any
_TIME_SQL: Final = (
    "CASE WHEN ts = date_trunc('second', ts) "
    "THEN to_char(ts, 'YYYY-MM-DD\"T\"HH24:MI:SSTZH:TZM') "
    "ELSE to_char(ts, 'YYYY-MM-DD\"T\"HH24:MI:SS.USTZH:TZM') END"
)
# one COPY for every series: the series come in the given order (a lateral join is a nested
# loop over the unnested arrays, in array order) and each series' rows in the order of the
# primary key (series_id, ts), so nothing is sorted
_COPY_SQL: Final = (
    f"COPY (SELECT {_TIME_SQL}, s.sector, s.source_id, s.source_name, s.district, s.metric, "
    "r.value, s.unit "
    "FROM unnest(%s::int[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], "
    "%s::text[]) AS s(series_id, sector, source_id, source_name, district, metric, unit) "
    "CROSS JOIN LATERAL (SELECT ts, value FROM reading WHERE series_id = s.series_id "
    "AND ts >= %s AND ts < %s ORDER BY ts) r) TO STDOUT (FORMAT csv)"
)
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True, slots=True)
class ExportSeries:
    """One series to write, with the names every one of its rows repeats."""

    series_id: int
    sector: str
    source_id: str
    source_name: str | None
    district: str | None
    metric: str
    unit: str | None


class Slots:
    """How many exports may stream at once in this process (the event loop's thread only)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def take(self) -> bool:
        """Take a slot; False when all are busy."""
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def give_back(self) -> None:
        """Return a slot taken with `take`."""
        self.active = max(0, self.active - 1)


SLOTS: Final = Slots(MAX_CONCURRENT)


def stamp(t: datetime, zone: ZoneInfo) -> str:
    """A time for a file name: local minutes and the offset, ASCII only (Z for UTC)."""
    local = t.astimezone(zone)
    offset = local.strftime("%z")
    return local.strftime("%Y%m%dT%H%M") + ("Z" if offset == "+0000" else offset)


def filename(
    sector: str, metric: str | None, start: datetime, end: datetime, zone: ZoneInfo
) -> str:
    """`ioc-<sector>-<metric>-<from>-<to>.csv` (metric `all` when not filtered)."""
    return f"ioc-{sector}-{metric or 'all'}-{stamp(start, zone)}-{stamp(end, zone)}.csv"


def ascii_name(name: str) -> str:
    """The name without diacritics (Vietnamese đ as d), anything else unsafe as `_`."""
    folded = unicodedata.normalize("NFKD", name.replace("đ", "d").replace("Đ", "D"))
    return _UNSAFE.sub("_", "".join(c for c in folded if not unicodedata.combining(c)))


def content_disposition(name: str) -> str:
    """An attachment header: an ASCII-safe `filename`, plus `filename*` (RFC 6266 and 8187)
    when the name has characters the plain form cannot carry."""
    plain = ascii_name(name)
    header = f'attachment; filename="{plain}"'
    if plain != name:
        header += f"; filename*=UTF-8''{quote(name, safe='')}"
    return header


async def _fill(copy: psycopg.AsyncCopy, buffer: bytearray) -> bool:
    """Read rows into `buffer` until it holds a chunk; False once the COPY has ended."""
    while len(buffer) < CHUNK_BYTES:
        row = await copy.read()
        if not row:
            return False
        buffer += row
    return True


async def csv_chunks(
    engine: AsyncEngine,
    series: Sequence[ExportSeries],
    *,
    start: datetime,
    end: datetime,
    tz: str,
    bom: bool,
) -> AsyncIterator[bytes]:
    """The CSV document in chunks of about `CHUNK_BYTES`: the header first (also for an
    empty range), then each series' rows in time order.

    Closing the generator early (the client left) abandons the COPY: psycopg cancels it on
    the server, and the connection is invalidated rather than returned to the pool."""
    yield (BOM + HEADER) if bom else HEADER
    if not series:
        return
    conn = await engine.connect()
    finished = False
    try:
        await conn.execute(text("SELECT set_config('TimeZone', :tz, true)"), {"tz": tz})
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert isinstance(driver, psycopg.AsyncConnection)
        buffer = bytearray()
        params = (
            [s.series_id for s in series],
            [s.sector for s in series],
            [s.source_id for s in series],
            [s.source_name for s in series],
            [s.district for s in series],
            [s.metric for s in series],
            [s.unit for s in series],
            start,
            end,
        )
        async with driver.cursor() as cur, cur.copy(_COPY_SQL, params) as copy:
            while await _fill(copy, buffer):
                yield bytes(buffer)
                buffer.clear()
        if buffer:
            yield bytes(buffer)
        finished = True
    finally:
        # shielded: also when the server stops mid-stream, the connection goes
        with anyio.CancelScope(shield=True):
            if not finished:
                await conn.invalidate()
            await conn.close()


class ClosingStreamingResponse(StreamingResponse):
    """A streaming response that stops between two chunks when the client has gone, closes
    its body iterator whatever happened (finished, failed, client gone) and then runs
    `on_close`.

    Unlike Starlette's, it never cancels the iterator while it awaits (inside a psycopg read,
    a cancellation makes psycopg give up on the connection noisily); a chunk is at most
    `CHUNK_BYTES`, so the client's departure is noticed within one chunk."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        headers: dict[str, str],
        media_type: str,
        on_close: Callable[[], None],
    ) -> None:
        super().__init__(content, headers=headers, media_type=media_type)
        self._chunks = content
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        listener = asyncio.ensure_future(listen())
        try:
            await self._stream(send, gone)
        finally:
            listener.cancel()
            try:
                with anyio.CancelScope(shield=True):
                    with contextlib.suppress(asyncio.CancelledError):
                        await listener
                    aclose = getattr(self._chunks, "aclose", None)
                    if aclose is not None:
                        await aclose()
            finally:
                self._on_close()

    async def _stream(self, send: Send, gone: asyncio.Event) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async for chunk in self._chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await anyio.lowlevel.checkpoint()  # let other requests in between chunks
                if gone.is_set():
                    return
        except OSError:  # ASGI 2.4 servers: the client has gone
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
