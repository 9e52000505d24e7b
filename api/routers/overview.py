"""The operations overview: per sector, its sources online and offline, its open alerts by
severity and its KPIs (latest value, change against the day before, status by the thresholds);
the active profile.

What a KPI's value is (README, "Overview"): for each source of the sector with a series of
the metric, its newest reading at most `3 x interval` old (the metric's expected interval, or
the source's when that is longer: the allowance after which a source counts as silent); the
KPI is the mean of those values, or their sum for counted metrics (unit `count`, `count/...`,
`cases/...`, `events/...`). The change compares it with the same figure computed as of 24 hours
earlier. Each newest reading is one backward step of the reading primary key (series_id, ts)
per series, so the cost follows the number of series, not of readings.

Computed figures are kept for `CACHE_S` seconds (`api.cache`) and shared by every caller:
agency keys get their own sectors cut out of them. Every desk of an operations room polls the
same overview; one computation every 2 s serves them all."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field
from sqlalchemy import Integer, Select, Text, and_, column, func, literal, select, true, values
from sqlalchemy.ext.asyncio import AsyncConnection

from alerts.rules import SILENCE_FACTOR_DEFAULT
from api.auth import PanelsReader
from api.cache import AnswerCache
from api.context import Ctx
from api.db import Database
from api.problems import PROBLEM_JSON, PROBLEM_RESPONSES, ProblemBody
from ioc.catalogue import District, Metric, Threshold
from ioc.catalogue import Sector as CatalogueSector
from ioc.errors import NotFound
from ioc.models import Alert, Reading, Series, Source
from ioc.models import Sector as SectorRow
from ioc.vocabulary import (
    SEVERITY_RANK,
    AlertStatus,
    Direction,
    Severity,
    SeverityName,
    SourceStatus,
)

router = APIRouter(tags=["overview"], responses=PROBLEM_RESPONSES)

WINDOW_FACTOR: Final = SILENCE_FACTOR_DEFAULT
"""A reading counts for a KPI while it is at most this many expected intervals old."""
CHANGE_PERIOD: Final = timedelta(days=1)
CHANGE_PERIOD_ISO: Final = "P1D"
CACHE_S: Final = 2.0
"""How long computed figures are answered to every caller before they are computed again."""
_MAX_RENDERED_SCOPES: Final = 64
_COUNTED_UNITS: Final = frozenset({"count", "cases", "events"})

KpiStatus = Literal["normal", "unknown", SeverityName]
"""A value's status: the most severe threshold it breaches, normal if none, unknown without a
value."""
KpiAggregate = Literal["mean", "sum"]

sector_c = SectorRow.__table__.c
src = Source.__table__.c
ser = Series.__table__.c
rd = Reading.__table__.c
al = Alert.__table__.c


def _problem(description: str) -> dict[str, Any]:
    return {"model": ProblemBody, "content": {PROBLEM_JSON: {}}, "description": description}


NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {
    404: _problem("No such active sector, or not in the key's sectors")
}
SectorId = Annotated[str, Path(min_length=1, max_length=63, description="The sector's id")]


# --- pure rules ----------------------------------------------------------------------------


def value_status(thresholds: Iterable[Threshold], value: float | None) -> KpiStatus:
    """The most severe threshold `value` breaches (direction and inclusiveness respected)."""
    if value is None:
        return "unknown"
    worst: SeverityName | None = None
    for t in thresholds:
        if t.breached(value) and (worst is None or t.severity.rank > SEVERITY_RANK[worst]):
            worst = t.severity.value
    return worst or "normal"


def worst_status(
    thresholds: Iterable[Threshold], low: float | None, high: float | None
) -> KpiStatus:
    """The most severe status of any one value in [low, high]: thresholds above are tested
    with the highest, thresholds below with the lowest."""
    if low is None or high is None:
        return "unknown"
    worst: KpiStatus = "normal"
    for t in thresholds:
        status = value_status([t], high if t.direction is Direction.ABOVE else low)
        if status != "normal" and (worst == "normal" or t.severity.rank > SEVERITY_RANK[worst]):
            worst = status
    return worst


def aggregate_of(metric: Metric) -> KpiAggregate:
    """Counted metrics add up over sources; every other metric is averaged."""
    return "sum" if metric.unit.split("/", 1)[0].strip() in _COUNTED_UNITS else "mean"


def window_s(metric: Metric) -> int:
    """How old a source's newest reading may be to count (at least; a source with a longer
    expected interval gets its own)."""
    return int(WINDOW_FACTOR * metric.interval_s)


# --- response models -----------------------------------------------------------------------


class SourceCounts(BaseModel):
    """A sector's sources by status."""

    online: int = Field(examples=[41])
    offline: int = Field(examples=[2])
    unknown: int = Field(examples=[1])
    total: int = Field(examples=[44])


class AlertCounts(BaseModel):
    """A sector's open (not resolved) alerts by severity."""

    info: int = Field(examples=[0])
    warning: int = Field(examples=[3])
    critical: int = Field(examples=[1])
    total: int = Field(examples=[4])


class KpiChange(BaseModel):
    """The KPI against the same figure one period earlier."""

    value: float | None = Field(
        examples=[0.4], description="This value minus the previous one; null without both"
    )
    previous: float | None = Field(
        examples=[2.3], description="The KPI computed as of one period earlier"
    )
    percent: float | None = Field(
        examples=[17.4], description="The change relative to the previous value; null if it is 0"
    )
    period: str = Field(examples=[CHANGE_PERIOD_ISO], description="ISO 8601 duration")
    period_s: int = Field(examples=[86400])


class Kpi(BaseModel):
    """A key figure of a sector, from the newest reading of each of its sources."""

    metric: str = Field(examples=["salinity"])
    name_vi: str = Field(examples=["Độ mặn"])
    name_en: str = Field(examples=["Salinity"])
    unit: str = Field(examples=["‰"])
    aggregate: KpiAggregate = Field(
        examples=["mean"],
        description="How the sources' newest values make the KPI: their mean, or their sum for "
        "counted metrics (unit count, count/…, cases/…, events/…)",
    )
    value: float | None = Field(
        examples=[2.7],
        description="The mean (or sum) over the sector's sources of each one's newest reading "
        "no older than `window_s` (or 3 times the source's own longer interval); null when no "
        "source has one",
    )
    sources: int = Field(examples=[12], description="How many sources' readings it is made of")
    min: float | None = Field(examples=[0.4], description="The lowest of those readings")
    max: float | None = Field(examples=[4.6], description="The highest of those readings")
    latest_at: datetime | None = Field(
        examples=["2026-11-30T08:15:00+00:00"], description="The newest of those readings' times"
    )
    window_s: int = Field(examples=[900], description="3 times the metric's expected interval")
    status: KpiStatus = Field(
        examples=["warning"],
        description="The most severe of the metric's thresholds `value` breaches: normal, info, "
        "warning or critical (unknown without a value)",
    )
    worst_status: KpiStatus = Field(
        examples=["critical"],
        description="The most severe status of any one source's reading (thresholds above "
        "tested with `max`, below with `min`)",
    )
    change: KpiChange


class SectorOverview(BaseModel):
    """One sector on the operations screen."""

    id: str = Field(examples=["water"])
    name_vi: str = Field(examples=["Mặn, ngập, thiên tai"])
    name_en: str = Field(examples=["Salinity, flooding and disasters"])
    colour: str = Field(examples=["#1e88e5"])
    order: int = Field(examples=[10], description="Display order (ascending)")
    sources: SourceCounts
    alerts: AlertCounts
    kpis: list[Kpi] = Field(description="The sector's headline KPIs, in the profile's order")
    as_of: datetime = Field(
        examples=["2026-11-30T08:15:02+00:00"], description="When these figures were computed"
    )


class Overview(BaseModel):
    """Every active sector visible to the key, in display order."""

    as_of: datetime = Field(examples=["2026-11-30T08:15:02+00:00"])
    sectors: list[SectorOverview]


class SectorKpis(BaseModel):
    """Every metric of one sector as a KPI."""

    sector_id: str = Field(examples=["water"])
    as_of: datetime = Field(examples=["2026-11-30T08:15:02+00:00"])
    kpis: list[Kpi] = Field(description="Every metric of the sector, in the profile's order")


class ProfileOut(BaseModel):
    """The active province profile: its sectors with their metrics (units, names, thresholds,
    display bands) and KPIs, and its districts."""

    name: str = Field(examples=["mekong"])
    title_vi: str = Field(examples=["Tỉnh ven biển đồng bằng sông Cửu Long (mẫu)"])
    title_en: str = Field(examples=["Mekong delta coastal province (template)"])
    timezone: str = Field(examples=["Asia/Ho_Chi_Minh"])
    sectors: list[CatalogueSector] = Field(description="Those visible to the key, in order")
    districts: list[District]


# --- the queries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sector:
    id: str
    name_vi: str
    name_en: str
    colour: str
    order: int
    metrics: tuple[Metric, ...]
    kpis: tuple[str, ...]

    def metric(self, metric_id: str) -> Metric | None:
        return next((m for m in self.metrics if m.id == metric_id), None)

    @property
    def headline(self) -> list[Metric]:
        return [m for m in (self.metric(k) for k in self.kpis) if m is not None]


@dataclass(frozen=True)
class _Stats:
    n: int
    mean: float | None
    total: float | None
    low: float | None
    high: float | None
    newest: datetime | None
    prev_n: int
    prev_mean: float | None
    prev_total: float | None


@dataclass(frozen=True)
class _Figures:
    as_of: datetime
    sectors: list[SectorOverview]
    # the JSON of GET /sectors, per agency scope (None: every sector), made once per figures
    rendered: dict[frozenset[str] | None, bytes] = field(default_factory=dict)

    def json(self, scope: frozenset[str] | None) -> bytes:
        body = self.rendered.get(scope)
        if body is None:
            sectors = [s for s in self.sectors if scope is None or s.id in scope]
            body = Overview(as_of=self.as_of, sectors=sectors).model_dump_json().encode()
            if len(self.rendered) < _MAX_RENDERED_SCOPES:
                self.rendered[scope] = body
        return body


@dataclass(frozen=True)
class _Caches:
    sectors: AnswerCache[list[_Sector]]
    overview: AnswerCache[_Figures]
    kpis: AnswerCache[SectorKpis]


# one set per app (its database pools), so that apps on other databases never share figures
_CACHES: weakref.WeakKeyDictionary[Database, _Caches] = weakref.WeakKeyDictionary()


def _caches(db: Database) -> _Caches:
    caches = _CACHES.get(db)
    if caches is None:
        caches = _CACHES[db] = _Caches(
            AnswerCache(CACHE_S), AnswerCache(CACHE_S), AnswerCache(CACHE_S)
        )
    return caches


async def _active_sectors(conn: AsyncConnection) -> list[_Sector]:
    stmt = (
        select(
            sector_c.id,
            sector_c.name_vi,
            sector_c.name_en,
            sector_c.colour,
            sector_c.display_order,
            sector_c.metrics,
            sector_c.kpis,
        )
        .where(sector_c.active)
        .order_by(sector_c.display_order, sector_c.id)
    )
    rows = (await conn.execute(stmt)).mappings().all()
    return [
        _Sector(
            id=r["id"],
            name_vi=r["name_vi"],
            name_en=r["name_en"],
            colour=r["colour"],
            order=r["display_order"],
            metrics=tuple(Metric.model_validate(m) for m in r["metrics"] or ()),
            kpis=tuple(r["kpis"] or ()),
        )
        for r in rows
    ]


async def _source_counts(conn: AsyncConnection) -> dict[str, SourceCounts]:
    stmt = select(src.sector_id, src.status, func.count().label("n")).group_by(
        src.sector_id, src.status
    )
    found: dict[str, dict[str, int]] = {}
    for r in (await conn.execute(stmt)).mappings():
        found.setdefault(r["sector_id"], {})[r["status"]] = r["n"]
    return {
        sector: SourceCounts(
            online=by.get(SourceStatus.ONLINE, 0),
            offline=by.get(SourceStatus.OFFLINE, 0),
            unknown=by.get(SourceStatus.UNKNOWN, 0),
            total=sum(by.values()),
        )
        for sector, by in found.items()
    }


async def _alert_counts(conn: AsyncConnection) -> dict[str, AlertCounts]:
    stmt = (
        select(al.sector_id, al.severity, func.count().label("n"))
        .where(al.status != AlertStatus.RESOLVED.value)
        .group_by(al.sector_id, al.severity)
    )
    found: dict[str, dict[str, int]] = {}
    for r in (await conn.execute(stmt)).mappings():
        found.setdefault(r["sector_id"], {})[r["severity"]] = r["n"]
    return {
        sector: AlertCounts(
            info=by.get(Severity.INFO, 0),
            warning=by.get(Severity.WARNING, 0),
            critical=by.get(Severity.CRITICAL, 0),
            total=sum(by.values()),
        )
        for sector, by in found.items()
    }


def kpi_statement(wanted: Sequence[tuple[str, Metric]], now: datetime) -> Select[Any]:
    """Per (sector, metric) of `wanted`: figures of its sources' newest readings as of `now`
    and one period earlier (one backward index step per series and time)."""
    k = values(
        column("sector_id", Text), column("metric", Text), column("interval_s", Integer), name="k"
    ).data([(sector, m.id, m.interval_s) for sector, m in wanted])
    # a source expected to report less often than the metric gets its own allowance
    window = func.greatest(k.c.interval_s, src.interval_s, type_=Integer) * literal(
        timedelta(seconds=WINDOW_FACTOR)
    )

    def newest(at: datetime, name: str) -> Any:
        at_ = literal(at)
        return (
            select(rd.value, rd.ts)
            .where(rd.series_id == ser.id, rd.ts <= at_, rd.ts > at_ - window)
            .order_by(rd.ts.desc())
            .limit(1)
            .lateral(name)
        )

    cur = newest(now, "cur")
    prev = newest(now - CHANGE_PERIOD, "prev")
    return (
        select(
            k.c.sector_id,
            k.c.metric,
            func.count(cur.c.value).label("n"),
            func.avg(cur.c.value).label("mean"),
            func.sum(cur.c.value).label("total"),
            func.min(cur.c.value).label("low"),
            func.max(cur.c.value).label("high"),
            func.max(cur.c.ts).label("newest"),
            func.count(prev.c.value).label("prev_n"),
            func.avg(prev.c.value).label("prev_mean"),
            func.sum(prev.c.value).label("prev_total"),
        )
        .select_from(
            k.join(Source, src.sector_id == k.c.sector_id)
            .join(Series, and_(ser.source_id == src.id, ser.metric == k.c.metric))
            .outerjoin(cur, true())
            .outerjoin(prev, true())
        )
        .group_by(k.c.sector_id, k.c.metric)
    )


async def _kpi_stats(
    conn: AsyncConnection, wanted: Sequence[tuple[str, Metric]], now: datetime
) -> dict[tuple[str, str], _Stats]:
    """Per (sector, metric): the sources' newest readings now and one period earlier."""
    if not wanted:
        return {}
    stmt = kpi_statement(wanted, now)
    out: dict[tuple[str, str], _Stats] = {}
    for r in (await conn.execute(stmt)).mappings():
        out[(r["sector_id"], r["metric"])] = _Stats(
            n=r["n"],
            mean=_float(r["mean"]),
            total=_float(r["total"]),
            low=_float(r["low"]),
            high=_float(r["high"]),
            newest=r["newest"],
            prev_n=r["prev_n"],
            prev_mean=_float(r["prev_mean"]),
            prev_total=_float(r["prev_total"]),
        )
    return out


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


_NO_DATA: Final = _Stats(0, None, None, None, None, None, 0, None, None)


def _kpi(metric: Metric, stats: _Stats) -> Kpi:
    summed = aggregate_of(metric) == "sum"
    value = (stats.total if summed else stats.mean) if stats.n else None
    previous = (stats.prev_total if summed else stats.prev_mean) if stats.prev_n else None
    delta = value - previous if value is not None and previous is not None else None
    percent = (
        delta / abs(previous) * 100 if delta is not None and previous not in (None, 0.0) else None
    )
    return Kpi(
        metric=metric.id,
        name_vi=metric.name_vi,
        name_en=metric.name_en,
        unit=metric.unit,
        aggregate=aggregate_of(metric),
        value=value,
        sources=stats.n,
        min=stats.low,
        max=stats.high,
        latest_at=stats.newest,
        window_s=window_s(metric),
        status=value_status(metric.thresholds, value),
        worst_status=worst_status(metric.thresholds, stats.low, stats.high),
        change=KpiChange(
            value=delta,
            previous=previous,
            percent=percent,
            period=CHANGE_PERIOD_ISO,
            period_s=int(CHANGE_PERIOD.total_seconds()),
        ),
    )


async def _sectors(db: Database) -> list[_Sector]:
    async def load() -> list[_Sector]:
        async with db.engine.connect() as conn:
            return await _active_sectors(conn)

    return await _caches(db).sectors.get("sectors", load)


async def _compute_overview(db: Database) -> _Figures:
    sectors = await _sectors(db)
    now = datetime.now(UTC)
    async with db.engine.connect() as conn:
        sources = await _source_counts(conn)
        alerts = await _alert_counts(conn)
        stats = await _kpi_stats(conn, [(s.id, m) for s in sectors for m in s.headline], now)
    return _Figures(
        as_of=now,
        sectors=[
            SectorOverview(
                id=s.id,
                name_vi=s.name_vi,
                name_en=s.name_en,
                colour=s.colour,
                order=s.order,
                sources=sources.get(s.id) or SourceCounts(online=0, offline=0, unknown=0, total=0),
                alerts=alerts.get(s.id) or AlertCounts(info=0, warning=0, critical=0, total=0),
                kpis=[_kpi(m, stats.get((s.id, m.id), _NO_DATA)) for m in s.headline],
                as_of=now,
            )
            for s in sectors
        ],
    )


async def _compute_kpis(db: Database, sector: _Sector) -> SectorKpis:
    now = datetime.now(UTC)
    async with db.engine.connect() as conn:
        stats = await _kpi_stats(conn, [(sector.id, m) for m in sector.metrics], now)
    return SectorKpis(
        sector_id=sector.id,
        as_of=now,
        kpis=[_kpi(m, stats.get((sector.id, m.id), _NO_DATA)) for m in sector.metrics],
    )


async def _overview(db: Database) -> _Figures:
    return await _caches(db).overview.get("overview", lambda: _compute_overview(db))


async def sector_figures(db: Database) -> list[SectorOverview]:
    """Every active sector's overview, as `GET /sectors` answers it (shared, at most 2 s old)."""
    return (await _overview(db)).sectors


# --- routes --------------------------------------------------------------------------------


@router.get(
    "/sectors",
    response_model=Overview,
    summary="The operations overview: every sector's figures",
)
async def list_sectors(ctx: Ctx, principal: PanelsReader) -> Response:
    """Per active sector, in display order: names, colour, sources by status, open alerts by
    severity and the headline KPIs (value, change against 24 hours earlier, status by the
    thresholds). Agency keys see their own sectors. Figures may be up to a few seconds old
    (`as_of`): they are computed once for every caller."""
    figures = await _overview(ctx.db)
    # every screen polls this: the same bytes for every caller of a scope until the next figures
    return Response(figures.json(principal.sectors), media_type="application/json")


@router.get("/sectors/{sector_id}", summary="One sector's figures", responses=NOT_FOUND)
async def get_sector(ctx: Ctx, principal: PanelsReader, sector_id: SectorId) -> SectorOverview:
    """The overview of one active sector (404 also for a sector outside an agency key's)."""
    if principal.can_see(sector_id):
        for sector in (await _overview(ctx.db)).sectors:
            if sector.id == sector_id:
                return sector
    raise NotFound(f"sector {sector_id!r} is not an active sector")


@router.get(
    "/sectors/{sector_id}/kpis", summary="Every metric of a sector as a KPI", responses=NOT_FOUND
)
async def get_sector_kpis(ctx: Ctx, principal: PanelsReader, sector_id: SectorId) -> SectorKpis:
    """Every metric of the sector, headline or not, with its value, change and status,
    computed as the overview's KPIs are."""
    sector = next((s for s in await _sectors(ctx.db) if s.id == sector_id), None)
    if sector is None or not principal.can_see(sector_id):
        raise NotFound(f"sector {sector_id!r} is not an active sector")
    return await _caches(ctx.db).kpis.get(sector.id, lambda: _compute_kpis(ctx.db, sector))


@router.get("/profile", summary="The active profile")
async def get_profile(ctx: Ctx, principal: PanelsReader) -> ProfileOut:
    """Name, titles and time zone of the province profile, its sectors with their metrics
    (units, names, ranges, thresholds, display bands) and headline KPIs, and its districts.
    Agency keys see their own sectors."""
    profile = ctx.profile
    return ProfileOut(
        name=profile.name,
        title_vi=profile.title_vi,
        title_en=profile.title_en,
        timezone=profile.timezone,
        sectors=[s for s in profile.sectors if principal.can_see(s.id)],
        districts=list(profile.districts),
    )
