"""Sources: the sensors, cameras and feeds that report readings and events; their latest values;
registering one before it reports and changing what telemetry does not say about it.

Reads are SQLAlchemy Core over `ioc.models`; changes go through `ingest.registry` (the audit
row in the same transaction)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import or_, select, true
from sqlalchemy.ext.asyncio import AsyncConnection

from api import pagination
from api.auth import PanelsReader, Principal, SourcesWriter
from api.context import Context, Ctx
from api.pagination import Page
from api.problems import PROBLEM_JSON, PROBLEM_RESPONSES, Problem, ProblemBody
from api.routers.overview import KpiStatus, value_status
from ingest.registry import (
    MAX_DISTRICT_CHARS,
    MAX_INTERVAL_S,
    MAX_KIND_CHARS,
    MAX_NAME_CHARS,
    UNCHANGED,
    SourceError,
    SourceRecord,
    register_source,
    update_source,
)
from ingest.topics import SECTOR_ID_PATTERN, SOURCE_ID_PATTERN
from ioc.errors import NotFound
from ioc.models import Reading, Series, Source
from ioc.vocabulary import SourceStatus

router = APIRouter(tags=["sources"], responses=PROBLEM_RESPONSES)

src = Source.__table__.c
ser = Series.__table__.c
rd = Reading.__table__.c

MAX_QUERY_CHARS: Final = 100


def _problem(description: str) -> dict[str, Any]:
    return {"model": ProblemBody, "content": {PROBLEM_JSON: {}}, "description": description}


NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {
    404: _problem("No such source, or not in the key's sectors")
}

SourceId = Annotated[
    str, Path(max_length=128, description="The source's id (its MQTT topic level)")
]
Latitude = Annotated[float, Field(ge=-90, le=90, examples=[9.2941], description="WGS 84 degrees")]
Longitude = Annotated[
    float, Field(ge=-180, le=180, examples=[105.7278], description="WGS 84 degrees")
]
Interval = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_INTERVAL_S,
        examples=[300],
        description="Expected seconds between reports (silence detection and KPI windows); "
        "null: the metrics' own intervals",
    ),
]
Kind = Annotated[str, Field(min_length=1, max_length=MAX_KIND_CHARS, examples=["salinity_station"])]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS, examples=["Trạm Cái Lớn"])]
District = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_DISTRICT_CHARS,
        examples=["coastal-district"],
        description="One of the profile's districts (GET /profile) when it lists any",
    ),
]


class SourceOut(BaseModel):
    """A source: where it is, how often it should report, whether it does."""

    id: str = Field(examples=["tram-cai-lon"])
    sector_id: str = Field(examples=["water"])
    name: str | None = Field(examples=["Trạm đo mặn Cái Lớn"])
    kind: str | None = Field(examples=["salinity_station"])
    district: str | None = Field(examples=["coastal-district"])
    latitude: float | None = Field(examples=[9.2941])
    longitude: float | None = Field(examples=[105.7278])
    interval_s: int | None = Field(
        examples=[300], description="Expected reporting interval; null: the metrics' own"
    )
    status: SourceStatus = Field(
        examples=["online"], description="From its messages: readings or a status message"
    )
    last_seen_at: datetime | None = Field(
        examples=["2026-11-30T08:15:00+00:00"], description="Time of its newest reading"
    )
    last_reading_at: datetime | None = Field(
        examples=["2026-11-30T08:15:02+00:00"],
        description="When its newest message with readings was received",
    )
    created_at: datetime = Field(examples=["2026-11-01T00:00:00+00:00"])


class SourceCreate(BaseModel):
    """A source registered before it reports."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "tram-cai-lon",
                    "sector_id": "water",
                    "name": "Trạm đo mặn Cái Lớn",
                    "kind": "salinity_station",
                    "district": "coastal-district",
                    "latitude": 9.2941,
                    "longitude": 105.7278,
                    "interval_s": 300,
                }
            ]
        },
    )

    id: str = Field(
        pattern=SOURCE_ID_PATTERN,
        examples=["tram-cai-lon"],
        description="1-128 letters, digits or . _ : - (its level in the MQTT topic)",
    )
    sector_id: str = Field(pattern=SECTOR_ID_PATTERN, examples=["water"])
    name: Name | None = None
    kind: Kind | None = None
    district: District | None = None
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    interval_s: Interval | None = None


class SourcePatch(BaseModel):
    """Fields to change; a field left out stays, null clears it. Latitude and longitude
    change together."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "Trạm Cái Lớn (mới)", "district": "estuary-district"},
                {"latitude": 9.3, "longitude": 105.7, "interval_s": 600},
                {"district": None},
            ]
        },
    )

    name: Name | None = None
    district: District | None = None
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    interval_s: Interval | None = None


class LatestReading(BaseModel):
    """The newest reading of one metric of a source."""

    metric: str = Field(examples=["salinity"])
    value: float = Field(examples=[2.7])
    ts: datetime = Field(examples=["2026-11-30T08:15:00+00:00"])
    unit: str | None = Field(examples=["‰"], description="null for a metric not in the catalogue")
    name_vi: str | None = Field(examples=["Độ mặn"])
    name_en: str | None = Field(examples=["Salinity"])
    status: KpiStatus = Field(
        examples=["warning"],
        description="The most severe of the metric's thresholds the value breaches (normal: "
        "none; unknown: the metric is not in the catalogue)",
    )


class SourceLatest(BaseModel):
    """The latest reading of each of a source's series."""

    source_id: str = Field(examples=["tram-cai-lon"])
    sector_id: str = Field(examples=["water"])
    readings: list[LatestReading]


_COLUMNS: Final = (
    src.id,
    src.sector_id,
    src.name,
    src.kind,
    src.district,
    src.latitude,
    src.longitude,
    src.interval_s,
    src.status,
    src.last_seen_at,
    src.last_reading_at,
    src.created_at,
)


async def _one(conn: AsyncConnection, source_id: str, principal: Principal) -> SourceOut:
    row = (await conn.execute(select(*_COLUMNS).where(src.id == source_id))).mappings().first()
    if row is None or not principal.can_see(row["sector_id"]):
        raise NotFound(f"source {source_id!r} does not exist")
    return SourceOut.model_validate(dict(row))


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@router.get("/sources", summary="Sources, by id")
async def list_sources(
    ctx: Ctx,
    principal: PanelsReader,
    sector: Annotated[str | None, Query(pattern=SECTOR_ID_PATTERN)] = None,
    district: Annotated[str | None, Query(min_length=1, max_length=MAX_DISTRICT_CHARS)] = None,
    status: SourceStatus | None = None,
    q: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_QUERY_CHARS,
            description="Part of the name or the id, any case",
        ),
    ] = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=pagination.MAX_LIMIT)] = pagination.DEFAULT_LIMIT,
) -> Page[SourceOut]:
    """Filter by sector, district, status or a piece of the name; keyset pages by `cursor`,
    in id order. Agency keys see their own sectors' sources (403 for another sector)."""
    stmt = select(*_COLUMNS)
    sectors = principal.visible([sector] if sector else None)
    if sectors is not None:
        stmt = stmt.where(src.sector_id.in_(sectors))
    if district is not None:
        stmt = stmt.where(src.district == district)
    if status is not None:
        stmt = stmt.where(src.status == status.value)
    if q is not None:
        pattern = _like(q)
        stmt = stmt.where(or_(src.name.ilike(pattern), src.id.ilike(pattern)))
    key = pagination.decode(cursor, [str]) if cursor else None
    stmt = pagination.after(stmt, [src.id], key, descending=False)
    async with ctx.db.engine.connect() as conn:
        rows = (await conn.execute(stmt.limit(limit + 1))).mappings().all()
    items, next_cursor = pagination.page(
        [SourceOut.model_validate(dict(r)) for r in rows], limit, lambda s: [s.id]
    )
    return Page[SourceOut](items=items, next_cursor=next_cursor)


@router.get("/sources/{source_id}", summary="One source", responses=NOT_FOUND)
async def get_source(ctx: Ctx, principal: PanelsReader, source_id: SourceId) -> SourceOut:
    """The source with this id (404 also for a source outside an agency key's sectors)."""
    async with ctx.db.engine.connect() as conn:
        return await _one(conn, source_id, principal)


@router.get(
    "/sources/{source_id}/latest",
    summary="The latest reading of each metric of a source",
    responses=NOT_FOUND,
)
async def get_latest(ctx: Ctx, principal: PanelsReader, source_id: SourceId) -> SourceLatest:
    """Per series of the source, its newest reading (any age), with the catalogue's unit and
    names and its status by the metric's thresholds; metrics by name."""
    newest = (
        select(rd.value, rd.ts)
        .where(rd.series_id == ser.id)
        .order_by(rd.ts.desc())
        .limit(1)
        .lateral("newest")
    )
    stmt = (
        select(ser.metric, newest.c.value, newest.c.ts)
        .select_from(Series.__table__.join(newest, true()))
        .where(ser.source_id == source_id)
        .order_by(ser.metric)
    )
    async with ctx.db.engine.connect() as conn:
        source = await _one(conn, source_id, principal)
        rows = (await conn.execute(stmt)).mappings().all()
    sector = ctx.profile.sector(source.sector_id)
    readings = []
    for r in rows:
        metric = sector.metric(r["metric"]) if sector is not None else None
        readings.append(
            LatestReading(
                metric=r["metric"],
                value=r["value"],
                ts=r["ts"],
                unit=metric.unit if metric else None,
                name_vi=metric.name_vi if metric else None,
                name_en=metric.name_en if metric else None,
                status=value_status(metric.thresholds, r["value"]) if metric else "unknown",
            )
        )
    return SourceLatest(source_id=source.id, sector_id=source.sector_id, readings=readings)


def _districts(ctx: Context) -> list[str]:
    return [d.id for d in ctx.profile.districts]


def _invalid(exc: SourceError) -> Problem:
    return Problem(
        422,
        "Invalid request",
        f"body.{exc.field}: {exc.message}",
        kind="validation",
        errors=[{"field": f"body.{exc.field}", "message": exc.message}],
    )


def _out(record: SourceRecord) -> SourceOut:
    return SourceOut.model_validate(record, from_attributes=True)


@router.post(
    "/sources",
    status_code=201,
    summary="Register a source (admin)",
    responses={409: _problem("A source with this id exists already")},
)
async def create_source(
    ctx: Ctx, principal: SourcesWriter, body: SourceCreate, request: Request, response: Response
) -> SourceOut:
    """Register a source before it reports, with its name, district, location and expected
    interval; telemetry later sets its status and times but never these. The sector must be
    one of the active profile's, the district one of its districts (when it lists any).
    Recorded in the audit trail as `source.create`."""
    principal.require_sector(body.sector_id)
    try:
        record = await ctx.db.call(
            register_source,
            actor=principal.actor,
            source_id=body.id,
            sector_id=body.sector_id,
            name=body.name,
            kind=body.kind,
            district=body.district,
            latitude=body.latitude,
            longitude=body.longitude,
            interval_s=body.interval_s,
            districts=_districts(ctx),
        )
    except SourceError as exc:
        raise _invalid(exc) from None
    response.headers["Location"] = str(request.app.url_path_for("get_source", source_id=record.id))
    return _out(record)


@router.patch("/sources/{source_id}", summary="Change a source (admin)", responses=NOT_FOUND)
async def patch_source(
    ctx: Ctx, principal: SourcesWriter, source_id: SourceId, body: SourcePatch
) -> SourceOut:
    """Change the name, district, location (latitude and longitude together) or expected
    interval of a source; a field left out stays, null clears it. Recorded in the audit trail
    as `source.update` with each changed field's old and new value."""
    given = body.model_fields_set
    changes: dict[str, Any] = {
        field: getattr(body, field) if field in given else UNCHANGED
        for field in ("name", "district", "latitude", "longitude", "interval_s")
    }
    try:
        record = await ctx.db.call(
            update_source,
            actor=principal.actor,
            source_id=source_id,
            districts=_districts(ctx),
            sectors=None if principal.sectors is None else sorted(principal.sectors),
            **changes,
        )
    except SourceError as exc:
        raise _invalid(exc) from None
    return _out(record)
