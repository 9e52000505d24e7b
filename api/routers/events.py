"""Agency events: reports posted by sector agencies (or over MQTT), listed and handled.

`POST /events` goes through the ingest pipeline (`ingest.http`), the path MQTT events take:
the same validation, the same deduplication, the event rules evaluated in the same batch
transaction, the audit row with them. An `Idempotency-Key` makes a retry return the first
answer and create nothing."""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Path, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert

from api import pagination
from api.auth import EventsReader, EventsUpdater, EventsWriter, Principal
from api.context import Ctx
from api.pagination import Page
from api.problems import Problem
from ingest.events import EventIn, set_event_status
from ingest.items import AuditNote
from ingest.topics import SECTOR_ID_PATTERN, SOURCE_ID_PATTERN
from ioc.errors import NotFound
from ioc.models import Event, IdempotentRequest
from ioc.vocabulary import EventStatus, SeverityName

router = APIRouter(tags=["events"])

IDEMPOTENCY_TTL_S = 24 * 3600
_PRUNE_EVERY_S = 60.0
_MAX_ID = 2**63 - 1

EventId = Annotated[int, Path(ge=1, le=_MAX_ID, description="The event's id")]


class EventPost(EventIn):
    """An event as an agency posts it: the event, its sector and the reporting system."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "sector": "water",
                    "source": "chi-cuc-thuy-loi",
                    "kind": "flood",
                    "severity": "critical",
                    "title": "Ngập sâu 0,5 m tại phường 1",
                    "description": "Nước dâng sau triều cường, 40 hộ bị ảnh hưởng",
                    "district": "bac-lieu-city",
                    "location": {"lat": 9.285, "lon": 105.724, "name": "Phường 1"},
                    "occurred_at": "2026-11-30T07:45:00+07:00",
                    "external_ref": "CCTL-2026-1130-07",
                }
            ]
        },
    )

    sector: str = Field(pattern=SECTOR_ID_PATTERN, description="The sector the event belongs to")
    source: str = Field(
        pattern=SOURCE_ID_PATTERN, description="The reporting agency or system (its source id)"
    )


class EventOut(BaseModel):
    """A stored event."""

    id: int = Field(examples=[1042])
    sector_id: str = Field(examples=["water"])
    source_id: str | None = Field(examples=["chi-cuc-thuy-loi"])
    kind: str = Field(examples=["flood"])
    severity: SeverityName
    title: str = Field(examples=["Ngập sâu 0,5 m tại phường 1"])
    description: str | None
    district: str | None
    latitude: float | None
    longitude: float | None
    location: str | None
    external_ref: str | None
    occurred_at: datetime
    received_at: datetime
    updated_at: datetime
    status: EventStatus
    attributes: dict[str, Any]


class EventPatch(BaseModel):
    """A change of an event's handling status."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"status": "in_progress", "note": "Đã cử đội ứng cứu"}]},
    )

    status: EventStatus
    note: str | None = Field(default=None, max_length=2000)


_COLUMNS = [
    Event.id,
    Event.sector_id,
    Event.source_id,
    Event.kind,
    Event.severity,
    Event.title,
    Event.description,
    Event.district,
    Event.latitude,
    Event.longitude,
    Event.location,
    Event.external_ref,
    Event.occurred_at,
    Event.received_at,
    Event.updated_at,
    Event.status,
    Event.attributes,
]


async def _load(ctx: Ctx, event_id: int, principal: Principal) -> EventOut:
    async with ctx.db.engine.connect() as conn:
        row = (await conn.execute(select(*_COLUMNS).where(Event.id == event_id))).mappings().first()
    if row is None or not principal.can_see(row["sector_id"]):
        raise NotFound(f"event {event_id} does not exist")
    return EventOut.model_validate(dict(row))


class _Keys:
    """In-process serialisation of requests carrying the same idempotency key."""

    def __init__(self) -> None:
        self.locks: dict[tuple[int, str], asyncio.Lock] = {}
        self.pruned_at = 0.0

    def lock(self, key: tuple[int, str]) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def release(self, key: tuple[int, str], lock: asyncio.Lock) -> None:
        if not lock.locked() and self.locks.get(key) is lock:
            del self.locks[key]


_keys = _Keys()


async def _stored(ctx: Ctx, key_id: int, key: str) -> IdempotentRequest | None:
    async with ctx.db.engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    IdempotentRequest.request_hash,
                    IdempotentRequest.status_code,
                    IdempotentRequest.response,
                    IdempotentRequest.created_at,
                ).where(IdempotentRequest.api_key_id == key_id, IdempotentRequest.key == key)
            )
        ).first()
    if row is None:
        return None
    return IdempotentRequest(
        request_hash=row.request_hash,
        status_code=row.status_code,
        response=row.response,
        created_at=row.created_at,
    )


async def _remember(
    ctx: Ctx, key_id: int, key: str, request_hash: str, status: int, body: dict[str, Any]
) -> None:
    async with ctx.db.engine.begin() as conn:
        await conn.execute(
            insert(IdempotentRequest)
            .values(
                api_key_id=key_id,
                key=key,
                request_hash=request_hash,
                status_code=status,
                response=body,
            )
            .on_conflict_do_nothing()
        )
        now = time.monotonic()
        if now - _keys.pruned_at > _PRUNE_EVERY_S:
            _keys.pruned_at = now
            await conn.execute(
                delete(IdempotentRequest).where(
                    IdempotentRequest.created_at < func.now() - timedelta(seconds=IDEMPOTENCY_TTL_S)
                )
            )


def _replay(stored: IdempotentRequest, request_hash: str, response: Response) -> EventOut:
    if stored.request_hash != request_hash:
        raise Problem(
            422,
            "Idempotency key reused",
            "this Idempotency-Key was used with a different request body; use a new key",
            kind="idempotency-key-reused",
        )
    response.status_code = stored.status_code
    response.headers["Idempotent-Replayed"] = "true"
    return EventOut.model_validate(stored.response)


@router.post(
    "/events",
    status_code=201,
    summary="Report an event (agencies)",
    responses={
        200: {"description": "The same event was stored before: that event", "model": EventOut},
        422: {"description": "Invalid event, or an Idempotency-Key reused with another body"},
        503: {"description": "Ingest is unavailable; retry after Retry-After seconds"},
    },
)
async def post_event(
    ctx: Ctx,
    principal: EventsWriter,
    body: EventPost,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=200,
            description="Any unique text per event; a retry with the same key and body "
            "returns the first answer and creates nothing (kept 24 h)",
        ),
    ] = None,
) -> EventOut:
    """Store an agency's event and evaluate the event rules on it. An event with the same
    `external_ref` (or, without one, the same body from the same source) is stored once: the
    repeat answers 200 with the stored event."""
    principal.require_sector(body.sector)
    fields = body.model_dump(mode="json", exclude={"sector", "source"}, exclude_none=True)
    payload = orjson.dumps(fields)
    request_hash = hashlib.sha256(
        orjson.dumps([body.sector, body.source, fields], option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    if idempotency_key is None:
        return await _create(ctx, principal, body, payload, response)
    slot = (principal.key_id, idempotency_key)
    lock = _keys.lock(slot)
    try:
        async with lock:
            stored = await _stored(ctx, *slot)
            if stored is not None:
                return _replay(stored, request_hash, response)
            event = await _create(ctx, principal, body, payload, response)
            status = response.status_code or 201
            await _remember(ctx, *slot, request_hash, status, event.model_dump(mode="json"))
            stored = await _stored(ctx, *slot)
            if stored is not None and stored.request_hash != request_hash:
                return _replay(stored, request_hash, response)
            return event
    finally:
        _keys.release(slot, lock)


async def _create(
    ctx: Ctx, principal: Principal, body: EventPost, payload: bytes, response: Response
) -> EventOut:
    result = await ctx.ingest.ingest(
        sector=body.sector,
        source_id=body.source,
        kind="event",
        payload=payload,
        audit=AuditNote(principal.actor, "event.create"),
    )
    event_id = result.event_id or result.duplicate_of
    if event_id is None:
        reasons = ", ".join(f"{r} ({n})" for r, n in sorted(result.reasons.items()))
        raise Problem(
            422,
            "Event refused",
            f"ingest refused the event: {reasons or 'unknown reason'}",
            kind="rejected",
            reasons=result.reasons,
        )
    response.status_code = 201 if result.event_id is not None else 200
    return await _load(ctx, event_id, principal)


@router.get("/events", summary="Events, newest first")
async def list_events(
    ctx: Ctx,
    principal: EventsReader,
    sector: Annotated[str | None, Query(pattern=SECTOR_ID_PATTERN)] = None,
    source: Annotated[str | None, Query(pattern=SOURCE_ID_PATTERN)] = None,
    kind: Annotated[str | None, Query(max_length=64)] = None,
    severity: SeverityName | None = None,
    status: EventStatus | None = None,
    since: Annotated[AwareDatetime | None, Query(description="occurred at or after")] = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=pagination.MAX_LIMIT)] = pagination.DEFAULT_LIMIT,
) -> Page[EventOut]:
    """Filter by sector, source, kind, severity, status or time; keyset pages by `cursor`.
    Agency keys see their own sectors' events."""
    stmt = select(*_COLUMNS)
    sectors = principal.visible([sector] if sector else None)
    if sectors is not None:
        stmt = stmt.where(Event.sector_id.in_(sectors))
    if source is not None:
        stmt = stmt.where(Event.source_id == source)
    if kind is not None:
        stmt = stmt.where(Event.kind == kind)
    if severity is not None:
        stmt = stmt.where(Event.severity == severity)
    if status is not None:
        stmt = stmt.where(Event.status == status.value)
    if since is not None:
        stmt = stmt.where(Event.occurred_at >= since)
    key = pagination.decode(cursor, [datetime, int]) if cursor else None
    stmt = pagination.after(stmt, [Event.occurred_at, Event.id], key, descending=True)
    async with ctx.db.engine.connect() as conn:
        rows = (await conn.execute(stmt.limit(limit + 1))).mappings().all()
    items, next_cursor = pagination.page(
        [EventOut.model_validate(dict(r)) for r in rows], limit, lambda e: [e.occurred_at, e.id]
    )
    return Page[EventOut](items=items, next_cursor=next_cursor)


@router.get(
    "/events/{event_id}",
    summary="One event",
    responses={404: {"description": "No such event (or outside the key's sectors)"}},
)
async def get_event(ctx: Ctx, principal: EventsReader, event_id: EventId) -> EventOut:
    """The event with this id."""
    return await _load(ctx, event_id, principal)


@router.patch(
    "/events/{event_id}",
    summary="Change an event's handling status (operators)",
    responses={404: {"description": "No such event"}},
)
async def patch_event(
    ctx: Ctx, principal: EventsUpdater, event_id: EventId, body: EventPatch
) -> EventOut:
    """Mark an event new, in progress or resolved; recorded in the audit trail."""
    await _load(ctx, event_id, principal)
    await ctx.db.call(
        set_event_status,
        event_id=event_id,
        status=body.status,
        actor=principal.actor,
        note=body.note,
    )
    return await _load(ctx, event_id, principal)
