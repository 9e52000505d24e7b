"""Bucketed aggregates of series over a time range, from continuous aggregates or raw rows.

One question (series, range, bucket, function, time zone) gets the same answer on TimescaleDB
and on plain PostgreSQL. The range is widened to whole buckets; buckets of a day or longer
follow the calendar of the given time zone (local midnight, ISO weeks from Monday, months),
shorter buckets are fixed widths counted from local midnight of 2000-01-01.

On TimescaleDB, readings that arrived too late for the refresh policies are listed in
`cagg_refresh_pending` (by the ingest writer) until `ioc.cagg_refresh` has re-materialised
them; the buckets overlapping such a range are answered from raw rows meanwhile.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from ioc.errors import QueryError

DAY = timedelta(days=1)
MAX_POINTS = 500_000
"""Most buckets one question may return (series times buckets), to keep answers bounded."""
MAX_RAW_SPANS = 16
"""Most separate stretches of a cagg answer read from raw rows (more are merged across gaps)."""
PENDING_TABLE = "cagg_refresh_pending"
"""Time ranges whose late readings the continuous aggregates may not hold yet (Timescale)."""

TimeRange = tuple[datetime, datetime]

_FIXED_RE = re.compile(r"^(\d+)(m|h)$")
_EPOCH_LOCAL = datetime(2000, 1, 1)  # noqa: DTZ001  (made aware per zone in _origin)


class Agg(StrEnum):
    """Aggregate functions a bucket can be reduced with."""

    AVG = "avg"
    MIN = "min"
    MAX = "max"
    SUM = "sum"
    COUNT = "count"
    LAST = "last"


@dataclass(frozen=True)
class Bucket:
    """A bucket width: a fixed number of minutes dividing a day, or a calendar day/week/month."""

    kind: Literal["fixed", "day", "week", "month"]
    width: timedelta
    label: str

    @classmethod
    def parse(cls, label: str) -> Bucket:
        """'1m' … '12h' (dividing a day), '1d', '1w' or '1mo'."""
        calendar = {"1d": "day", "1w": "week", "1mo": "month"}
        if label in calendar:
            kind = calendar[label]
            width = {"day": DAY, "week": 7 * DAY, "month": 31 * DAY}[kind]
            return cls(kind, width, label)  # type: ignore[arg-type]
        match = _FIXED_RE.match(label)
        if match is None:
            raise QueryError(
                f"unknown bucket {label!r}: use minutes or hours dividing a day "
                "(1m, 5m, 15m, 30m, 1h, 3h, 6h, 12h), or 1d, 1w, 1mo"
            )
        count, unit = int(match[1]), match[2]
        width = timedelta(minutes=count) if unit == "m" else timedelta(hours=count)
        if width <= timedelta(0) or width >= DAY or DAY % width:
            raise QueryError(f"bucket {label!r} must be shorter than a day and divide it evenly")
        return cls("fixed", width, label)


@dataclass(frozen=True)
class Point:
    """The aggregate of one series in one bucket; None where a gap-filled bucket had no rows."""

    series_id: int
    bucket: datetime
    value: float | int | None


@dataclass(frozen=True)
class Storage:
    """Which continuous aggregates exist, by bucket width, coarsest last; `pending`: whether
    late-data ranges are tracked (the aggregates may lag behind raw rows there)."""

    caggs: tuple[tuple[timedelta, str], ...] = ()
    pending: bool = False

    @property
    def timescale(self) -> bool:
        """Whether TimescaleDB continuous aggregates back the answers."""
        return bool(self.caggs)


CAGG_VIEWS = (
    (timedelta(minutes=1), "reading_1m"),
    (timedelta(hours=1), "reading_1h"),
    (DAY, "reading_1d"),
)


async def detect_storage(conn: AsyncConnection | AsyncSession) -> Storage:
    """Find the continuous aggregates of this database (none on plain PostgreSQL)."""
    if not await _has_timescale(conn):
        return Storage()
    rows = await conn.execute(
        text(
            "SELECT view_name FROM timescaledb_information.continuous_aggregates "
            "WHERE view_schema = current_schema()"
        )
    )
    present = {r[0] for r in rows}
    caggs = tuple((w, v) for w, v in CAGG_VIEWS if v in present)
    tracked = await conn.execute(text(f"SELECT to_regclass('{PENDING_TABLE}') IS NOT NULL"))
    return Storage(caggs, pending=bool(caggs) and bool(tracked.scalar()))


async def _has_timescale(conn: AsyncConnection | AsyncSession) -> bool:
    result = await conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"))
    return result.scalar() is not None


# --- pure helpers --------------------------------------------------------------------------


def zone(name: str) -> ZoneInfo:
    """A time zone by IANA name, or QueryError."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise QueryError(f"unknown time zone {name!r}") from None


def _origin(tz: ZoneInfo) -> datetime:
    return _EPOCH_LOCAL.replace(tzinfo=tz).astimezone(UTC)


def bucket_floor(t: datetime, bucket: Bucket, tz: ZoneInfo) -> datetime:
    """Start (UTC) of the bucket holding instant `t`."""
    if bucket.kind == "fixed":
        origin = _origin(tz)
        return origin + ((t - origin) // bucket.width) * bucket.width
    local = t.astimezone(tz)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    if bucket.kind == "week":
        day -= timedelta(days=day.weekday())
    elif bucket.kind == "month":
        day = day.replace(day=1)
    return day.replace(tzinfo=tz).astimezone(UTC)


def bucket_next(start: datetime, bucket: Bucket, tz: ZoneInfo) -> datetime:
    """Start (UTC) of the bucket after the one starting at `start`."""
    if bucket.kind == "fixed":
        return start + bucket.width
    local = start.astimezone(tz).replace(tzinfo=None)
    if bucket.kind == "month":
        year, month = divmod(local.month, 12)
        nxt = local.replace(year=local.year + year, month=month + 1)
    else:
        nxt = local + (DAY if bucket.kind == "day" else 7 * DAY)
    return nxt.replace(tzinfo=tz).astimezone(UTC)


def bucket_starts(
    start: datetime, end: datetime, bucket: Bucket, tz: ZoneInfo
) -> Iterator[datetime]:
    """Starts of the buckets covering [start, end), first one holding `start`."""
    t = bucket_floor(start, bucket, tz)
    while t < end:
        yield t
        t = bucket_next(t, bucket, tz)


def _offsets(start: datetime, end: datetime, tz: ZoneInfo) -> set[timedelta]:
    # Every UTC offset a zone uses lasts longer than a day, so daily samples see them all.
    seen: set[timedelta] = set()
    t = start
    step = max(DAY, (end - start) / 20_000)
    while t <= end + step:
        offset = t.astimezone(tz).utcoffset()
        seen.add(offset if offset is not None else timedelta(0))
        t += step
    return seen


def merge_ranges(ranges: Iterable[TimeRange], max_count: int | None = None) -> list[TimeRange]:
    """Union of half-open ranges, sorted; with `max_count`, the smallest gaps are bridged
    until at most that many remain (the result then covers more, never less)."""
    merged: list[TimeRange] = []
    for lo, hi in sorted(r for r in ranges if r[0] < r[1]):
        if merged and lo <= merged[-1][1]:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    if max_count is None or len(merged) <= max(max_count, 1):
        return merged
    # the widest gaps stay gaps; merged[i] joins its predecessor across any other
    widest = sorted(range(1, len(merged)), key=lambda i: merged[i][0] - merged[i - 1][1])
    kept = set(widest[len(merged) - max(max_count, 1) :])
    out = [merged[0]]
    for i in range(1, len(merged)):
        if i in kept:
            out.append(merged[i])
        else:
            out[-1] = (out[-1][0], merged[i][1])
    return out


def bucket_spans(
    ranges: Iterable[TimeRange], start: datetime, end: datetime, bucket: Bucket, tz: ZoneInfo
) -> list[TimeRange]:
    """The whole buckets of [start, end) that overlap any of `ranges`, merged."""
    spans = [
        (
            bucket_floor(max(lo, start), bucket, tz),
            bucket_next(
                bucket_floor(min(hi, end) - timedelta(microseconds=1), bucket, tz), bucket, tz
            ),
        )
        for lo, hi in ranges
        if lo < end and hi > start
    ]
    return merge_ranges(spans, MAX_RAW_SPANS)


def choose_relation(
    bucket: Bucket, tz: ZoneInfo, start: datetime, end: datetime, storage: Storage
) -> tuple[str, timedelta | None]:
    """The coarsest continuous aggregate whose buckets tile the asked ones, else raw rows."""
    offsets = _offsets(start, end, tz)
    for width, view in reversed(storage.caggs):
        if bucket.kind == "fixed" and bucket.width % width:
            continue
        if bucket.kind != "fixed" and DAY % width and width != DAY:
            continue
        # Caggs are bucketed from the UTC epoch; local boundaries must fall on theirs.
        if any(offset % width for offset in offsets):
            continue
        if bucket.kind == "fixed" and (_origin(tz) - datetime(2000, 1, 1, tzinfo=UTC)) % width:
            continue
        return view, width
    return "reading", None


# --- the query -----------------------------------------------------------------------------

_RAW_AGG = {
    Agg.AVG: "avg(value)",
    Agg.MIN: "min(value)",
    Agg.MAX: "max(value)",
    Agg.SUM: "sum(value)",
    Agg.COUNT: "count(value)",
    Agg.LAST: "(array_agg(value ORDER BY ts DESC))[1]",
}
_CAGG_AGG = {
    Agg.AVG: "sum(sum) / sum(count)",
    Agg.MIN: "min(min)",
    Agg.MAX: "max(max)",
    Agg.SUM: "sum(sum)",
    Agg.COUNT: "sum(count)::bigint",
    Agg.LAST: "(array_agg(last ORDER BY bucket DESC))[1]",
}


def _bucket_sql(bucket: Bucket, column: str) -> str:
    if bucket.kind == "fixed":
        return f"date_bin(:width, {column}, :origin)"
    return f"date_trunc('{bucket.kind}', {column}, :tz)"


@dataclass(frozen=True)
class Plan:
    """What `aggregate` will run: the relation, the widened range and the SQL; `raw_spans` are
    stretches of whole buckets answered from raw rows although `relation` is an aggregate
    (bound as :raw_lo<i> and :raw_hi<i>)."""

    relation: str
    start: datetime
    end: datetime
    sql: str
    raw_spans: tuple[TimeRange, ...] = ()

    def params(self) -> dict[str, object]:
        """The bounds of the raw spans, as the SQL names them."""
        out: dict[str, object] = {}
        for i, (lo, hi) in enumerate(self.raw_spans):
            out[f"raw_lo{i}"] = lo
            out[f"raw_hi{i}"] = hi
        return out


def _in_spans(column: str, count: int) -> str:
    return " OR ".join(f"({column} >= :raw_lo{i} AND {column} < :raw_hi{i})" for i in range(count))


def _select(relation: str, bucket: Bucket, fn: Agg, where: str) -> str:
    raw = relation == "reading"
    column = "ts" if raw else "bucket"
    agg = (_RAW_AGG if raw else _CAGG_AGG)[fn]
    return (
        f"SELECT series_id, {_bucket_sql(bucket, column)} AS b, {agg} AS v "
        f"FROM {relation} "
        f"WHERE series_id = ANY(:ids) AND {column} >= :start AND {column} < :end{where} "
        "GROUP BY 1, 2"
    )


def plan(
    *,
    start: datetime,
    end: datetime,
    bucket: Bucket,
    fn: Agg,
    tz: ZoneInfo,
    storage: Storage,
    series_count: int,
    late: Sequence[TimeRange] = (),
) -> Plan:
    """Check the question and build its SQL (pure: no I/O). Buckets overlapping a `late`
    range (pending for the aggregates) are read from raw rows."""
    if start.tzinfo is None or end.tzinfo is None:
        raise QueryError("start and end must carry a UTC offset")
    if end <= start:
        raise QueryError("end must be after start")
    start = bucket_floor(start, bucket, tz)
    last_start = bucket_floor(end - timedelta(microseconds=1), bucket, tz)
    end = bucket_next(last_start, bucket, tz)
    buckets = (end - start) / (bucket.width if bucket.kind != "month" else 28 * DAY)
    if buckets * max(series_count, 1) > MAX_POINTS:
        raise QueryError(
            f"about {int(buckets) * series_count} points asked, more than {MAX_POINTS}: "
            "use a wider bucket, fewer series or a shorter range"
        )
    relation, _ = choose_relation(bucket, tz, start, end, storage)
    spans = bucket_spans(late, start, end, bucket, tz) if relation != "reading" else []
    if spans == [(start, end)]:
        relation, spans = "reading", []
    if not spans:
        return Plan(relation, start, end, _select(relation, bucket, fn, "") + " ORDER BY 1, 2")
    # each asked bucket comes whole from one side: the aggregate's buckets tile it
    sql = (
        _select(relation, bucket, fn, f" AND NOT ({_in_spans('bucket', len(spans))})")
        + " UNION ALL "
        + _select("reading", bucket, fn, f" AND ({_in_spans('ts', len(spans))})")
        + " ORDER BY 1, 2"
    )
    return Plan(relation, start, end, sql, tuple(spans))


async def aggregate(
    conn: AsyncConnection | AsyncSession,
    *,
    series_ids: Sequence[int],
    start: datetime,
    end: datetime,
    bucket: Bucket | str,
    fn: Agg | str,
    tz: str = "UTC",
    gap_fill: bool = False,
    storage: Storage | None = None,
) -> list[Point]:
    """Aggregate `fn` of each series per bucket over [start, end), widened to whole buckets.

    With `gap_fill`, every bucket of the range appears for every series, valued None (0 for
    count) where the series had no reading. Rows are ordered by series id, then bucket.
    """
    bucket = bucket if isinstance(bucket, Bucket) else Bucket.parse(bucket)
    try:
        fn = Agg(fn)
    except ValueError:
        raise QueryError(
            f"unknown function {fn!r}: use {', '.join(a.value for a in Agg)}"
        ) from None
    zone_info = zone(tz)
    ids = sorted(set(series_ids))
    if storage is None:
        storage = await detect_storage(conn)
    planned = functools.partial(
        plan,
        start=start,
        end=end,
        bucket=bucket,
        fn=fn,
        tz=zone_info,
        storage=storage,
        series_count=len(ids),
    )
    the_plan = planned()
    if not ids:
        return []
    if storage.pending and the_plan.relation != "reading":
        # the job deletes a range only after the aggregates hold it; a range committed after
        # this read only means that batch's late readings are not in this answer yet
        late = await pending_ranges(conn, the_plan.start, the_plan.end)
        if late:
            the_plan = planned(late=late)
    params: dict[str, object] = {"ids": ids, "start": the_plan.start, "end": the_plan.end}
    params |= the_plan.params()
    if bucket.kind == "fixed":
        params |= {"width": bucket.width, "origin": _origin(zone_info)}
    else:
        params["tz"] = tz
    result = await conn.execute(text(the_plan.sql), params)
    points = [Point(int(r[0]), r[1].astimezone(UTC), _number(r[2], fn)) for r in result.all()]
    if not gap_fill:
        return points
    return _fill(
        points, ids, list(bucket_starts(the_plan.start, the_plan.end, bucket, zone_info)), fn
    )


async def pending_ranges(
    conn: AsyncConnection | AsyncSession, start: datetime, end: datetime
) -> list[TimeRange]:
    """Late-data ranges overlapping [start, end) that the aggregates may not hold yet."""
    rows = await conn.execute(
        text(f"SELECT lo, hi FROM {PENDING_TABLE} WHERE lo < :end AND hi > :start"),
        {"start": start, "end": end},
    )
    return merge_ranges((r[0], r[1]) for r in rows)


def _number(value: object, fn: Agg) -> float | int | None:
    if value is None:
        return None
    if fn is Agg.COUNT:
        return int(value)  # type: ignore[call-overload, no-any-return]
    return float(value)  # type: ignore[arg-type]


def _fill(points: list[Point], ids: list[int], starts: list[datetime], fn: Agg) -> list[Point]:
    empty = 0 if fn is Agg.COUNT else None
    have = {(p.series_id, p.bucket): p.value for p in points}
    return [Point(s, b, have.get((s, b), empty)) for s in ids for b in starts]
