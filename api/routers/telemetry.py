"""Telemetry: bucketed aggregates for panels, raw readings, the CSV export and HTTP ingest."""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo

import anyio.to_thread
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import Integer, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY

from api import export, pagination
from api.auth import HistoryReader, PanelsReader, Principal, TelemetryWriter
from api.cache import AnswerCache
from api.context import Context, Ctx
from api.db import Database
from api.pagination import Page
from api.problems import PROBLEM_JSON, PROBLEM_RESPONSES, ProblemBody
from api.problems import Problem as HttpProblem
from ingest.items import AuditNote
from ingest.topics import SECTOR_ID_PATTERN, SOURCE_ID_PATTERN, MessageKind
from ioc.catalogue import Sector
from ioc.models import Reading, Series, Source
from ioc.timeseries import Agg, Bucket, Point, aggregate, bucket_floor, bucket_next, bucket_starts

router = APIRouter(tags=["telemetry"], responses=PROBLEM_RESPONSES)

MAX_SERIES: Final = 1000
"""Most series (sources of the metric) one aggregate may combine or list."""
MAX_HISTORY_SERIES: Final = 20_000
"""Most series one raw or export question may select."""
MAX_BUCKETS: Final = 20_000
"""Most buckets of one series in an aggregate (2 weeks of minutes, 2 years of hours)."""
SERIES_CACHE_S: Final = 5.0
"""How long the series ids of a (sector, metric, source, district) panel are reused."""
SERIES_CACHE_MAX: Final = 4096
ANSWER_FRESH_S: Final = 5.0
"""How long an aggregate answer is reused as it is for the same question (panels poll)."""
ANSWER_STALE_S: Final = 30.0
"""Until this age an answer is still given at once, while one recomputation runs."""
ANSWER_CACHE_MAX: Final = 512
ANSWER_CACHE_BYTES: Final = 64 * 1024 * 1024
"""Most bytes of answers kept (least recently asked out first); one answer of more than a
quarter of it is not kept."""
RENDER_INLINE_POINTS: Final = 2000
"""Answers of more points are turned into JSON on a worker thread."""
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(2200, 1, 1, tzinfo=UTC)
SENML_TYPES: Final = ("application/senml+json",)

MetricFilter = Annotated[
    str | None,
    Query(max_length=64, description="A metric of the sector", examples=["salinity"]),
]
GapFill = Literal["none", "null", "previous"]
Per = Literal["source", "all"]
TimeZoneChoice = Literal["profile", "utc"]

_series = Series.__table__.c
_source = Source.__table__.c
_reading = Reading.__table__.c

# --- parameters shared by the routes -------------------------------------------------------

SectorParam = Annotated[
    str, Query(max_length=63, description="Sector id of the profile", examples=["water"])
]
FromParam = Annotated[
    AwareDatetime,
    Query(
        alias="from",
        description="Start of the range, inclusive (ISO 8601 with an offset)",
        examples=["2026-03-01T00:00:00+07:00"],
    ),
]
ToParam = Annotated[
    AwareDatetime,
    Query(
        description="End of the range, exclusive (ISO 8601 with an offset)",
        examples=["2026-03-02T00:00:00+07:00"],
    ),
]
SourceParam = Annotated[
    str | None, Query(max_length=128, description="One source id", examples=["tram-dai-ngai"])
]
DistrictParam = Annotated[
    str | None,
    Query(max_length=64, description="Sources of one district", examples=["coastal-district"]),
]


# --- response models -----------------------------------------------------------------------


class SourceRef(BaseModel):
    """A source whose series an answer covers."""

    source_id: str = Field(examples=["tram-dai-ngai"])
    name: str | None = Field(examples=["Trạm Đại Ngãi"])


class AggregatePoint(BaseModel):
    """The value of one bucket: `t` is its start."""

    t: datetime = Field(examples=["2026-03-01T07:00:00+07:00"])
    v: float | int | None = Field(examples=[1.85])


class AggregateSeries(BaseModel):
    """One line of a panel: a source's series, or (per=all) the selected ones combined."""

    source_id: str | None = Field(examples=["tram-dai-ngai"], description="null when per=all")
    name: str | None = Field(examples=["Trạm Đại Ngãi"])
    points: list[AggregatePoint]


class AggregateAnswer(BaseModel):
    """Bucketed aggregates of one metric of a sector."""

    sector: str = Field(examples=["water"])
    metric: str = Field(examples=["salinity"])
    unit: str = Field(examples=["‰"])
    bucket: str = Field(examples=["1h"])
    fn: Agg = Field(examples=["avg"])
    gap_fill: GapFill = Field(examples=["none"])
    per: Per = Field(examples=["source"])
    tz: str = Field(examples=["Asia/Ho_Chi_Minh"], description="time zone of day buckets")
    from_: datetime = Field(
        alias="from",
        examples=["2026-03-01T00:00:00+07:00"],
        description="start of the first bucket (the asked range widened to whole buckets)",
    )
    to: datetime = Field(
        examples=["2026-03-02T00:00:00+07:00"], description="end of the last bucket"
    )
    sources: list[SourceRef]
    series: list[AggregateSeries]


class RawReading(BaseModel):
    """One stored reading."""

    source_id: str = Field(examples=["tram-dai-ngai"])
    metric: str = Field(examples=["salinity"])
    ts: datetime = Field(examples=["2026-03-01T07:05:00+07:00"])
    value: float = Field(examples=[2.4])


class IngestAnswer(BaseModel):
    """What became of a posted message: readings stored, readings refused and why."""

    accepted: int = Field(examples=[2])
    rejected: int = Field(examples=[1])
    reasons: dict[str, int] = Field(
        examples=[{"out_of_range": 1}],
        description="rejected readings by reason (kept in the ingest_reject table)",
    )


# --- validation ----------------------------------------------------------------------------


def _invalid(field: str, message: str) -> HttpProblem:
    return HttpProblem(
        422,
        "Invalid request",
        f"{field}: {message}",
        kind="validation",
        errors=[{"field": field, "message": message}],
    )


def _sector(ctx: Context, principal: Principal, sector_id: str) -> Sector:
    """The profile's sector (422 when unknown), visible to the caller (403 otherwise)."""
    principal.visible([sector_id])
    sector = ctx.profile.sector(sector_id)
    if sector is None:
        known = ", ".join(s.id for s in ctx.profile.sectors)
        raise _invalid("query.sector", f"unknown sector {sector_id!r} (known: {known})")
    return sector


def _metric(sector: Sector, metric_id: str | None) -> str | None:
    if metric_id is not None and sector.metric(metric_id) is None:
        known = ", ".join(m.id for m in sector.metrics)
        raise _invalid(
            "query.metric",
            f"{metric_id!r} is not a metric of sector {sector.id!r} (its metrics: {known})",
        )
    return metric_id


def _range(start: datetime, end: datetime) -> None:
    for field, t in (("query.from", start), ("query.to", end)):
        if not EARLIEST <= t < LATEST:
            raise _invalid(field, "must lie between 1970-01-01 and 2200-01-01")
    if end <= start:
        raise _invalid("query.to", "must be after from")


# --- series of a question ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeriesRef:
    """A series selected by a question, with its source's names."""

    series_id: int
    source_id: str
    source_name: str | None
    district: str | None
    metric: str


SeriesKey = tuple[str, str | None, str | None, str | None]


async def _find_series(
    db: Database, key: SeriesKey, *, most: int = MAX_SERIES
) -> tuple[SeriesRef, ...]:
    """The series of a sector (one metric, source or district when given), by source id;
    a 422 when more than `most` match."""
    sector, metric, source, district = key
    stmt = (
        select(_series.id, _series.source_id, _series.metric, _source.name, _source.district)
        .join_from(Series.__table__, Source.__table__, _series.source_id == _source.id)
        .where(_source.sector_id == sector)
        .order_by(_series.source_id, _series.metric)
        .limit(most + 1)
    )
    if metric is not None:
        stmt = stmt.where(_series.metric == metric)
    if source is not None:
        stmt = stmt.where(_source.id == source)
    if district is not None:
        stmt = stmt.where(_source.district == district)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    if len(rows) > most:
        raise _invalid(
            "query",
            f"more than {most} series match: narrow the question by metric, district or source",
        )
    return tuple(
        SeriesRef(r["id"], r["source_id"], r["name"], r["district"], r["metric"]) for r in rows
    )


class SeriesCache:
    """Series of recent panel questions, reused for `SERIES_CACHE_S` (a panel refreshes the
    same question often; a new source shows up within that time)."""

    def __init__(self, ttl_s: float = SERIES_CACHE_S) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[SeriesKey, tuple[float, tuple[SeriesRef, ...]]] = {}

    async def get(self, db: Database, key: SeriesKey) -> tuple[SeriesRef, ...]:
        """The series of `key`, from memory while fresh."""
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        found = await _find_series(db, key)
        if len(self._entries) >= SERIES_CACHE_MAX:
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            if len(self._entries) >= SERIES_CACHE_MAX:
                self._entries.clear()
        self._entries[key] = (now + self.ttl_s, found)
        return found


@dataclass
class _Caches:
    series: SeriesCache
    answers: AnswerCache[bytes]


# one set per app (its database pools), so that apps on other databases never share answers
_CACHES: weakref.WeakKeyDictionary[Database, _Caches] = weakref.WeakKeyDictionary()


def _caches(db: Database) -> _Caches:
    caches = _CACHES.get(db)
    if caches is None:
        caches = _CACHES[db] = _Caches(
            SeriesCache(),
            AnswerCache(
                ANSWER_FRESH_S,
                stale_s=ANSWER_STALE_S,
                max_entries=ANSWER_CACHE_MAX,
                max_bytes=ANSWER_CACHE_BYTES,
                size=len,
            ),
        )
    return caches


# --- aggregates ----------------------------------------------------------------------------

Value = float | int | None
_CALENDAR_WIDTH: Final = {
    "day": timedelta(days=1),
    "week": timedelta(days=7),
    "month": timedelta(days=28),
}


def widened(
    start: datetime, end: datetime, bucket: Bucket, zone: ZoneInfo
) -> tuple[datetime, datetime]:
    """The range as answered: from the start of the first bucket to the end of the last."""
    first = bucket_floor(start, bucket, zone)
    last = bucket_floor(end - timedelta(microseconds=1), bucket, zone)
    return first, bucket_next(last, bucket, zone)


def bucket_count(start: datetime, end: datetime, bucket: Bucket) -> int:
    """Buckets in a widened range (months counted as 28 days: an upper bound)."""
    width = bucket.width if bucket.kind == "fixed" else _CALENDAR_WIDTH[bucket.kind]
    return -(-(end - start) // width)


def carry_forward(values: Sequence[Value]) -> list[Value]:
    """Each empty bucket takes the value of the latest bucket before it that has one."""
    out: list[Value] = []
    last: Value = None
    for v in values:
        if v is None:
            v = last
        else:
            last = v
        out.append(v)
    return out


def reduce(values: Sequence[Value], fn: Agg) -> Value:
    """One value of several series' values of a bucket (None: a series had none there):
    avg and last the mean, min the least, max the greatest, sum and count the total."""
    present = [v for v in values if v is not None]
    if not present:
        return 0 if fn is Agg.COUNT else None
    if fn is Agg.MIN:
        return min(present)
    if fn is Agg.MAX:
        return max(present)
    if fn is Agg.SUM or fn is Agg.COUNT:
        return sum(present)
    return sum(present) / len(present)


@dataclass(frozen=True, slots=True)
class Question:
    """What an aggregate answer depends on (the key of the answer cache)."""

    sector: str
    metric: str
    source: str | None
    district: str | None
    bucket: str
    fn: Agg
    gap_fill: GapFill
    per: Per
    first: datetime
    last: datetime


class _Shown(dict[datetime, str]):
    """Bucket starts as ISO 8601 in a zone, each distinct instant rendered once."""

    def __init__(self, zone: ZoneInfo) -> None:
        super().__init__()
        self.zone = zone

    def __missing__(self, t: datetime) -> str:
        text = self[t] = t.astimezone(self.zone).isoformat()
        return text


def lines(
    points: Sequence[Point],
    refs: Sequence[SeriesRef],
    q: Question,
    starts: Sequence[datetime],
    zone: ZoneInfo,
) -> list[dict[str, Any]]:
    """The answer's series from `aggregate`'s points (by series, then bucket): one per
    source, or one combining them (`starts`: every bucket, for a gap-filled answer); bucket
    starts shown in `zone`."""
    shown = _Shown(zone)
    by_series: dict[int, list[Point]] = {r.series_id: [] for r in refs}
    for p in points:
        by_series[p.series_id].append(p)
    carry = q.gap_fill == "previous" and q.fn is not Agg.COUNT
    columns: dict[int, tuple[list[datetime], list[Value]]] = {}
    for sid, pts in by_series.items():
        values: list[Value] = [p.value for p in pts]
        columns[sid] = ([p.bucket for p in pts], carry_forward(values) if carry else values)
    if q.per == "source":
        return [
            {
                "source_id": r.source_id,
                "name": r.source_name,
                "points": [
                    {"t": shown[t], "v": v} for t, v in zip(*columns[r.series_id], strict=True)
                ],
            }
            for r in refs
        ]
    gathered: dict[datetime, list[Value]] = {t: [] for t in starts}
    for times, values in columns.values():
        for t, v in zip(times, values, strict=True):
            at = gathered.get(t)
            if at is None:
                at = gathered[t] = []
            at.append(v)
    combined = [{"t": shown[t], "v": reduce(gathered[t], q.fn)} for t in sorted(gathered)]
    return [{"source_id": None, "name": None, "points": combined}]


@router.get(
    "/telemetry/aggregate",
    summary="Bucketed aggregates of a sector metric (panels)",
    response_model=AggregateAnswer,
)
async def aggregate_telemetry(
    ctx: Ctx,
    principal: PanelsReader,
    sector: SectorParam,
    metric: Annotated[
        str, Query(max_length=64, description="A metric of the sector", examples=["salinity"])
    ],
    start: FromParam,
    to: ToParam,
    bucket: Annotated[
        str,
        Query(
            max_length=5,
            pattern=r"^(\d{1,4}[mh]|1d|1w|1mo)$",
            description="Minutes or hours dividing a day (1m, 5m, 15m, 30m, 1h, 3h, 6h, 12h), "
            "or calendar days, ISO weeks, months (1d, 1w, 1mo) in the profile's time zone",
            examples=["1h"],
        ),
    ] = "1h",
    fn: Annotated[Agg, Query(description="How a bucket's readings are reduced")] = Agg.AVG,
    gap_fill: Annotated[
        GapFill,
        Query(
            description="none: only buckets with readings; null: every bucket, null (count 0) "
            "where empty; previous: every bucket, an empty one takes the value before it"
        ),
    ] = "none",
    per: Annotated[
        Per,
        Query(description="source: one line per source; all: the sources combined in one line"),
    ] = "source",
    source: SourceParam = None,
    district: DistrictParam = None,
) -> Response:
    """One metric of a sector per bucket, per source or combined.

    Buckets of a day or longer follow the profile's calendar (local midnight, weeks from
    Monday, months); the range is widened to whole buckets and answered as `from`/`to`.
    Answers come from TimescaleDB's continuous aggregates where their buckets tile the asked
    ones, else from raw readings. Screens polling one panel cost one computation: the same
    question asked again within 5 s gets the same answer, and within 30 s still gets it at
    once while a new one is computed for the next caller.

    `per=all` combines the selected sources bucket by bucket: `avg` is the mean of the
    sources' averages (each source weighs the same however often it reports), `min` the least
    minimum, `max` the greatest maximum, `sum` and `count` the totals, and `last` the mean of
    the sources' last values (the sector's latest level). With `gap_fill=previous` each source
    carries its value forward before they are combined, so a total does not drop in a bucket
    where a source happened not to report; buckets before a source's first value in the range
    stay null. `count` is 0 in an empty bucket under either gap fill.

    At most 1,000 series and 20,000 buckets a series (and 500,000 points in all): a wider
    question is a 422 saying what to narrow.
    """
    the_sector = _sector(ctx, principal, sector)
    _metric(the_sector, metric)
    _range(start, to)
    spec = Bucket.parse(bucket)  # QueryError: a 422 naming the labels it takes
    zone = ctx.zone
    first, last = widened(start, to, spec, zone)
    buckets = bucket_count(first, last, spec)
    if buckets > MAX_BUCKETS:
        raise _invalid(
            "query.bucket",
            f"about {buckets} buckets of {bucket} from {first.astimezone(zone).isoformat()} "
            f"to {last.astimezone(zone).isoformat()}, more than {MAX_BUCKETS}: use a wider "
            "bucket or a shorter range",
        )
    q = Question(sector, metric, source, district, bucket, fn, gap_fill, per, first, last)
    caches = _caches(ctx.db)

    async def compute() -> bytes:
        refs = await caches.series.get(ctx.db, (sector, metric, source, district))
        points: list[Point] = []
        if refs:
            async with ctx.db.engine.connect() as conn:
                points = await aggregate(
                    conn,
                    series_ids=[r.series_id for r in refs],
                    start=first,
                    end=last,
                    bucket=spec,
                    fn=fn,
                    tz=ctx.profile.timezone,
                    gap_fill=gap_fill != "none",
                    storage=ctx.storage,
                )
        if len(points) < RENDER_INLINE_POINTS:
            return render(points, refs)
        # a big answer is shaped off the event loop: other requests go on meanwhile
        return await anyio.to_thread.run_sync(render, points, refs)

    def render(points: Sequence[Point], refs: Sequence[SeriesRef]) -> bytes:
        filled = gap_fill != "none" and (not refs or q.per == "all")
        starts = list(bucket_starts(first, last, spec, zone)) if filled else []
        unit = next(m.unit for m in the_sector.metrics if m.id == metric)
        return orjson.dumps(
            {
                "sector": sector,
                "metric": metric,
                "unit": unit,
                "bucket": bucket,
                "fn": fn.value,
                "gap_fill": gap_fill,
                "per": per,
                "tz": ctx.profile.timezone,
                "from": first.astimezone(zone),
                "to": last.astimezone(zone),
                "sources": [{"source_id": r.source_id, "name": r.source_name} for r in refs],
                "series": lines(points, refs, q, starts, zone),
            }
        )

    body = await caches.answers.get(q, compute)
    return Response(body, media_type="application/json")


# --- raw readings --------------------------------------------------------------------------


@router.get("/telemetry/raw", summary="Stored readings, oldest first, in pages")
async def raw_telemetry(
    ctx: Ctx,
    principal: HistoryReader,
    sector: SectorParam,
    start: FromParam,
    to: ToParam,
    metric: MetricFilter = None,
    source: SourceParam = None,
    district: DistrictParam = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=pagination.MAX_LIMIT)] = pagination.DEFAULT_LIMIT,
) -> Page[RawReading]:
    """Readings of a sector in [from, to), by time then series; filter by metric, source or
    district; keyset pages by `cursor` (at most 1,000 readings a page). Times are shown in
    the profile's time zone."""
    the_sector = _sector(ctx, principal, sector)
    _metric(the_sector, metric)
    _range(start, to)
    key = pagination.decode(cursor, [datetime, int]) if cursor else None
    if key is not None and not 0 <= key[1] < 2**31:
        raise _invalid("query.cursor", "not a cursor of this list")
    refs = await _find_series(ctx.db, (sector, metric, source, district), most=MAX_HISTORY_SERIES)
    if not refs:
        return Page[RawReading](items=[], next_cursor=None)
    by_id = {r.series_id: r for r in refs}
    ids = bindparam("ids", list(by_id), type_=ARRAY(Integer))
    stmt = select(_reading.ts, _reading.series_id, _reading.value).where(
        _reading.series_id == any_(ids), _reading.ts >= start, _reading.ts < to
    )
    stmt = pagination.after(stmt, [_reading.ts, _reading.series_id], key, descending=False)
    async with ctx.db.engine.connect() as conn:
        rows = (await conn.execute(stmt.limit(limit + 1))).mappings().all()
    zone = ctx.zone
    items, next_cursor = pagination.page(rows, limit, lambda r: [r["ts"], r["series_id"]])
    return Page[RawReading](
        items=[
            RawReading(
                source_id=by_id[r["series_id"]].source_id,
                metric=by_id[r["series_id"]].metric,
                ts=r["ts"].astimezone(zone),
                value=r["value"],
            )
            for r in items
        ],
        next_cursor=next_cursor,
    )


# --- CSV export ----------------------------------------------------------------------------

_CSV_EXAMPLE = (
    "time,sector,source_id,source_name,district,metric,value,unit\n"
    "2026-03-01T07:00:00+07:00,water,tram-dai-ngai,Trạm Đại Ngãi,coastal-district,"
    "salinity,2.4,‰\n"
)


@router.get(
    "/telemetry/export.csv",
    summary="Readings as a CSV file, streamed for any range",
    response_class=Response,
    responses={
        200: {
            "description": "CSV (UTF-8), one reading a line, with a header line",
            "content": {"text/csv": {"schema": {"type": "string"}, "example": _CSV_EXAMPLE}},
            "headers": {
                "Content-Disposition": {
                    "description": 'attachment; filename="ioc-<sector>-<metric>-<from>-<to>.csv"',
                    "schema": {"type": "string"},
                }
            },
        },
        503: {
            "model": ProblemBody,
            "content": {PROBLEM_JSON: {}},
            "description": "Too many exports are running; retry after the time said",
        },
    },
)
async def export_telemetry(
    ctx: Ctx,
    principal: HistoryReader,
    sector: SectorParam,
    start: FromParam,
    to: ToParam,
    metric: MetricFilter = None,
    source: SourceParam = None,
    district: DistrictParam = None,
    bom: Annotated[
        bool, Query(description="Start with a UTF-8 byte order mark (for Excel)")
    ] = False,
    tz: Annotated[
        TimeZoneChoice,
        Query(description="Write times in the profile's time zone (+07:00) or in UTC"),
    ] = "profile",
) -> Response:
    """Readings of a sector in [from, to) as CSV: `time, sector, source_id, source_name,
    district, metric, value, unit`, grouped by source (and metric), each in time order.

    Streamed as PostgreSQL writes it, in constant memory, for a range of any length; names are
    UTF-8 as stored (`bom=true` for Excel). Times are ISO 8601 with the offset of the profile's
    time zone, or of UTC with `tz=utc`. The file name says sector, metric and range."""
    the_sector = _sector(ctx, principal, sector)
    _metric(the_sector, metric)
    _range(start, to)
    refs = await _find_series(ctx.db, (sector, metric, source, district), most=MAX_HISTORY_SERIES)
    units = {m.id: m.unit for m in the_sector.metrics}
    series = [
        export.ExportSeries(
            r.series_id,
            sector,
            r.source_id,
            r.source_name,
            r.district,
            r.metric,
            units.get(r.metric),
        )
        for r in refs
    ]
    zone = ctx.zone if tz == "profile" else ZoneInfo("UTC")
    name = export.filename(sector, metric, start, to, zone)
    if not export.SLOTS.take():
        raise HttpProblem(
            503,
            "Service Unavailable",
            f"{export.SLOTS.limit} exports are running; retry in {export.RETRY_AFTER_S} s",
            kind="busy",
            headers={"Retry-After": str(export.RETRY_AFTER_S)},
        )
    return export.ClosingStreamingResponse(
        export.csv_chunks(ctx.db.engine, series, start=start, end=to, tz=zone.key, bom=bom),
        headers={"Content-Disposition": export.content_disposition(name)},
        media_type=export.MEDIA_TYPE,
        on_close=export.SLOTS.give_back,
    )


# --- HTTP ingest ---------------------------------------------------------------------------

_TELEMETRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["values"],
    "properties": {
        "ts": {
            "description": "ISO 8601 with an offset, or epoch milliseconds; "
            "absent: the time of receipt",
            "oneOf": [{"type": "string", "format": "date-time"}, {"type": "integer"}],
        },
        "values": {
            "type": "object",
            "description": "metric id: number (in the metric's catalogue unit)",
            "additionalProperties": {"type": "number"},
        },
    },
}
_INGEST_BODY: dict[str, Any] = {
    "required": True,
    "description": "The MQTT payload of `ioc/v1/{sector}/{source}/telemetry`: one message "
    "`{ts, values}` or a list of them; or SenML (RFC 8428) with "
    "`Content-Type: application/senml+json`.",
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    _TELEMETRY_SCHEMA,
                    {"type": "array", "items": _TELEMETRY_SCHEMA, "minItems": 1},
                ]
            },
            "examples": {
                "now": {
                    "summary": "Values measured now",
                    "value": {"values": {"salinity": 2.4, "water_level": 1.12}},
                },
                "timed": {
                    "summary": "Values at a given time",
                    "value": {"ts": "2026-03-01T07:05:00+07:00", "values": {"salinity": 2.4}},
                },
                "batch": {
                    "summary": "Several times at once (a gateway's backlog)",
                    "value": [
                        {"ts": "2026-03-01T07:00:00+07:00", "values": {"salinity": 2.3}},
                        {"ts": 1772323500000, "values": {"salinity": 2.4}},
                    ],
                },
            },
        },
        "application/senml+json": {
            "schema": {"type": "array", "items": {"type": "object"}, "minItems": 1},
            "example": [{"bn": "tram-dai-ngai:", "n": "salinity", "u": "‰", "v": 2.4}],
        },
    },
}


@router.post(
    "/telemetry",
    summary="Post readings of a source (HTTP ingest)",
    response_model=IngestAnswer,
    openapi_extra={"requestBody": _INGEST_BODY},
    responses={
        422: {
            "model": ProblemBody,
            "content": {PROBLEM_JSON: {}},
            "description": "Nothing was accepted: `accepted`, `rejected` and `reasons` (counts "
            "by reason) as in a 200",
        },
        503: {
            "model": ProblemBody,
            "content": {PROBLEM_JSON: {}},
            "description": "Ingest is unavailable (database down, stopping): retry after "
            "`Retry-After` seconds",
        },
    },
)
async def post_telemetry(
    request: Request,
    ctx: Ctx,
    principal: TelemetryWriter,
    sector: Annotated[
        str,
        Query(
            max_length=63,
            pattern=SECTOR_ID_PATTERN,
            description="Sector id of the profile",
            examples=["water"],
        ),
    ],
    source: Annotated[
        str,
        Query(
            max_length=128,
            pattern=SOURCE_ID_PATTERN,
            description="Source id (letters, digits, `. _ : -`); a new one is registered under "
            "the sector",
            examples=["tram-dai-ngai"],
        ),
    ],
) -> IngestAnswer:
    """The same payloads, checks and reject table as MQTT: `POST
    /api/v1/telemetry?sector=water&source=tram-dai-ngai` with the body an MQTT client would
    publish on `ioc/v1/water/tram-dai-ngai/telemetry`, or SenML as on `.../senml` (with
    `Content-Type: application/senml+json`). The answer comes once the readings are committed,
    alerts evaluated and the audit row written in the same transaction.

    200 with the counts when anything was accepted (refused readings are counted by reason and
    kept in `ingest_reject`); 422 when nothing was. Agency keys post to their own sectors only;
    a source already registered under another sector refuses the message (`wrong_sector`).
    """
    principal.require_sector(sector)
    payload = await request.body()
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    kind: MessageKind = "senml" if media in SENML_TYPES else "telemetry"
    # IngestError (stopping, database down) answers 503 with Retry-After (api.problems)
    result = await ctx.ingest.ingest(
        sector=sector,
        source_id=source,
        kind=kind,
        payload=payload,
        audit=AuditNote(principal.actor, "telemetry.post"),
    )
    if result.accepted == 0:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(result.reasons.items()))
        raise HttpProblem(
            422,
            "Nothing accepted",
            f"no reading was accepted ({reasons}); each refusal is kept in ingest_reject",
            kind="rejected",
            accepted=0,
            rejected=result.rejected,
            reasons=result.reasons,
        )
    return IngestAnswer(accepted=result.accepted, rejected=result.rejected, reasons=result.reasons)
