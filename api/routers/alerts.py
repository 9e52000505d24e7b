"""Alerts: the list operators work from, one alert and its history, what operators do to it
(acknowledge, resolve, comment, assign, publish) and its CAP 1.2 document.

Changes go through the services of `alerts.actions` (the alert event, its NOTIFY and the audit
row in one transaction); every answer of an action is the alert as it is afterwards."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Body, Path, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select

from alerts import actions
from alerts.cap import CAP_MEDIA_TYPE
from alerts.lifecycle import AlertNotFound
from api import pagination
from api.auth import AlertsActor, AlertsReader, Principal
from api.context import Ctx
from api.pagination import Page
from api.problems import PROBLEM_JSON, PROBLEM_RESPONSES, ProblemBody
from api.routers.cap import cap_document
from ingest.events import Text
from ingest.topics import SECTOR_ID_PATTERN, SOURCE_ID_PATTERN
from ioc.models import Alert as AlertRow
from ioc.models import AlertEvent as AlertEventRow
from ioc.vocabulary import AlertStatus, Severity

router = APIRouter(tags=["alerts"], responses=PROBLEM_RESPONSES)

a = AlertRow.__table__.c
ev = AlertEventRow.__table__.c

_MAX_ID: Final = 2**63 - 1
ACTIVE: Final = (AlertStatus.OPEN, AlertStatus.ACKNOWLEDGED)

AlertId = Annotated[int, Path(ge=1, le=_MAX_ID, description="The alert's id")]
SectorId = Annotated[str, Field(pattern=SECTOR_ID_PATTERN)]


def _problem(description: str) -> dict[str, Any]:
    return {"model": ProblemBody, "content": {PROBLEM_JSON: {}}, "description": description}


NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {
    404: _problem("No such alert, or not in the key's sectors")
}
ACTION_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    **NOT_FOUND,
    409: _problem("The action does not apply to the alert's status"),
}


class Alert(BaseModel):
    """An alert: what it is about, how severe, where it is in its lifecycle, who handles it."""

    id: int = Field(examples=[42])
    sector_id: str = Field(examples=["water"])
    source_id: str | None = Field(examples=["tram-cai-lon"])
    event_id: int | None = Field(
        examples=[None], description="The agency event it is about, if any"
    )
    rule_id: int | None = Field(examples=[7])
    rule_kind: str | None = Field(examples=["threshold"])
    metric: str | None = Field(examples=["salinity"])
    severity: Severity = Field(examples=["critical"])
    peak_severity: Severity | None = Field(examples=["critical"])
    status: AlertStatus = Field(examples=["open"])
    title: str = Field(
        examples=["Độ mặn 4,6 ‰ vượt ngưỡng nguy hiểm 4 ‰ tại tram-cai-lon"],
        description="Vietnamese",
    )
    title_en: str | None = Field(examples=["Salinity 4.6 ‰ above critical 4 ‰ at tram-cai-lon"])
    last_value: float | None = Field(examples=[4.6])
    occurrences: int = Field(examples=[1])
    opened_at: datetime = Field(examples=["2026-03-10T01:30:15Z"])
    updated_at: datetime = Field(examples=["2026-03-10T01:45:00Z"])
    acknowledged_at: datetime | None = Field(examples=[None])
    acknowledged_by: str | None = Field(examples=[None])
    resolved_at: datetime | None = Field(examples=[None])
    resolved_by: str | None = Field(examples=[None])
    condition_started_at: datetime | None = Field(
        examples=["2026-03-10T01:15:00Z"], description="Reading time the condition began"
    )
    condition_fired_at: datetime | None = Field(
        examples=["2026-03-10T01:30:00Z"], description="Reading time it had lasted long enough"
    )
    condition_ended_at: datetime | None = Field(
        examples=[None], description="Reading time it cleared"
    )
    escalation_level: int = Field(examples=[0])
    assigned_to: str | None = Field(examples=["Chi cục Thủy lợi"])
    public: bool = Field(examples=[False], description="Listed in the public CAP feed")
    retracted: bool = Field(
        examples=[False], description="Withdrawn: late readings showed it never held"
    )
    detail: dict[str, Any] = Field(examples=[{"value": 4.6, "threshold": 4.0, "operator": ">="}])


_COLUMNS: Final = [a[name] for name in Alert.model_fields]


class AlertHistoryEntry(BaseModel):
    """One event of an alert's history, with its severity and status at that moment."""

    id: int = Field(examples=[1001])
    kind: str = Field(
        examples=["acknowledged"],
        description="opened, updated, raised, lowered, escalated, acknowledged, resolved, "
        "reopened, retracted, commented, assigned, published, unpublished",
    )
    severity: Severity = Field(examples=["critical"])
    status: AlertStatus = Field(examples=["acknowledged"])
    actor: str | None = Field(examples=["key:ab12cd34:Trực ban ca 1"])
    detail: dict[str, Any] = Field(examples=[{"note": "Đã báo Chi cục Thủy lợi"}])
    at: datetime = Field(examples=["2026-03-10T01:40:00Z"])


class NoteIn(BaseModel):
    """An optional note kept with the action in the alert's history."""

    model_config = ConfigDict(extra="forbid")

    note: Text | None = Field(
        default=None, max_length=actions.MAX_TEXT_CHARS, examples=["Đã báo Chi cục Thủy lợi"]
    )


OptionalNote = Annotated[NoteIn | None, Body(examples=[{"note": "Đã báo Chi cục Thủy lợi"}])]


class CommentIn(BaseModel):
    """An operator's note on an alert."""

    model_config = ConfigDict(extra="forbid")

    text: Text = Field(
        min_length=1,
        max_length=actions.MAX_TEXT_CHARS,
        pattern=r"\S",
        examples=["Đội ứng cứu đã đến hiện trường"],
    )


class AssignIn(BaseModel):
    """Who handles an alert: an agency or a person's name; null: nobody."""

    model_config = ConfigDict(extra="forbid")

    to: Text | None = Field(
        min_length=1,
        max_length=actions.MAX_ASSIGNEE_CHARS,
        pattern=r"\S",
        examples=["Chi cục Thủy lợi"],
    )


class PublishIn(BaseModel):
    """Whether the alert is listed in the public CAP feed."""

    model_config = ConfigDict(extra="forbid")

    public: bool = Field(examples=[True])


async def _visible(ctx: Ctx, principal: Principal, alert_id: int) -> Alert:
    """The alert, or 404 when there is none or it is outside the key's sectors."""
    async with ctx.db.engine.connect() as conn:
        row = (await conn.execute(select(*_COLUMNS).where(a.id == alert_id))).mappings().first()
    if row is None or not principal.can_see(row["sector_id"]):
        raise AlertNotFound(f"alert {alert_id} does not exist")
    return Alert.model_validate(dict(row))


@router.get("/alerts", summary="Alerts, newest first")
async def list_alerts(
    ctx: Ctx,
    principal: AlertsReader,
    status: Annotated[
        list[AlertStatus] | None,
        Query(max_length=3, description="One or several; default: open and acknowledged"),
    ] = None,
    sector: Annotated[list[SectorId] | None, Query(max_length=50)] = None,
    severity: Annotated[list[Severity] | None, Query(max_length=3)] = None,
    source: Annotated[str | None, Query(pattern=SOURCE_ID_PATTERN)] = None,
    since: Annotated[AwareDatetime | None, Query(description="opened at or after")] = None,
    assigned_to: Annotated[Text | None, Query(max_length=actions.MAX_ASSIGNEE_CHARS)] = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=pagination.MAX_LIMIT)] = pagination.DEFAULT_LIMIT,
) -> Page[Alert]:
    """Filter by status, sector, severity, source, opening time and assignee; an agency key
    sees its own sectors only. Keyset pages by `cursor`, newest opened first."""
    stmt = select(*_COLUMNS).where(a.status.in_([s.value for s in status or ACTIVE]))
    sectors = principal.visible(sector)
    if sectors is not None:
        stmt = stmt.where(a.sector_id.in_(sectors))
    if severity:
        stmt = stmt.where(a.severity.in_([s.value for s in severity]))
    if source is not None:
        stmt = stmt.where(a.source_id == source)
    if since is not None:
        stmt = stmt.where(a.opened_at >= since)
    if assigned_to is not None:
        stmt = stmt.where(a.assigned_to == assigned_to)
    key = pagination.decode(cursor, [datetime, int]) if cursor else None
    stmt = pagination.after(stmt, [a.opened_at, a.id], key, descending=True).limit(limit + 1)
    async with ctx.db.engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    items, next_cursor = pagination.page(
        [Alert.model_validate(dict(r)) for r in rows], limit, lambda x: [x.opened_at, x.id]
    )
    return Page[Alert](items=items, next_cursor=next_cursor)


@router.get("/alerts/{alert_id}", summary="One alert", responses=NOT_FOUND)
async def get_alert(ctx: Ctx, principal: AlertsReader, alert_id: AlertId) -> Alert:
    """The alert as it is now."""
    return await _visible(ctx, principal, alert_id)


@router.get("/alerts/{alert_id}/history", summary="An alert's history", responses=NOT_FOUND)
async def alert_history(
    ctx: Ctx,
    principal: AlertsReader,
    alert_id: AlertId,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=pagination.MAX_LIMIT)] = pagination.DEFAULT_LIMIT,
) -> Page[AlertHistoryEntry]:
    """Every event of the alert, oldest first: transitions, escalations, comments,
    assignments; keyset pages by `cursor`."""
    await _visible(ctx, principal, alert_id)
    stmt = select(ev.id, ev.kind, ev.severity, ev.status, ev.actor, ev.detail, ev.at).where(
        ev.alert_id == alert_id
    )
    key = pagination.decode(cursor, [int]) if cursor else None
    stmt = pagination.after(stmt, [ev.id], key, descending=False).limit(limit + 1)
    async with ctx.db.engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    items, next_cursor = pagination.page(
        [AlertHistoryEntry.model_validate(dict(r)) for r in rows], limit, lambda x: [x.id]
    )
    return Page[AlertHistoryEntry](items=items, next_cursor=next_cursor)


@router.post(
    "/alerts/{alert_id}/ack", summary="Acknowledge an open alert", responses=ACTION_RESPONSES
)
async def acknowledge(
    ctx: Ctx, principal: AlertsActor, alert_id: AlertId, body: OptionalNote = None
) -> Alert:
    """The operator takes the alert (409 unless it is open); escalation stops."""
    await _visible(ctx, principal, alert_id)
    note = body.note if body else None
    await ctx.db.call(actions.acknowledge, alert_id=alert_id, actor=principal.actor, note=note)
    return await _visible(ctx, principal, alert_id)


@router.post(
    "/alerts/{alert_id}/resolve", summary="Resolve an active alert", responses=ACTION_RESPONSES
)
async def resolve(
    ctx: Ctx, principal: AlertsActor, alert_id: AlertId, body: OptionalNote = None
) -> Alert:
    """The operator closes the alert (409 when it is resolved already); a condition that
    still holds alerts again after its duration."""
    await _visible(ctx, principal, alert_id)
    note = body.note if body else None
    await ctx.db.call(actions.resolve, alert_id=alert_id, actor=principal.actor, note=note)
    return await _visible(ctx, principal, alert_id)


@router.post("/alerts/{alert_id}/comments", summary="Comment on an alert", responses=NOT_FOUND)
async def comment(ctx: Ctx, principal: AlertsActor, alert_id: AlertId, body: CommentIn) -> Alert:
    """Add a note to the alert's history (in any status); it is listed in `/history`."""
    await _visible(ctx, principal, alert_id)
    await ctx.db.call(actions.comment, alert_id=alert_id, actor=principal.actor, text=body.text)
    return await _visible(ctx, principal, alert_id)


@router.post(
    "/alerts/{alert_id}/assign",
    summary="Assign an alert to an agency or a person",
    responses=ACTION_RESPONSES,
)
async def assign(ctx: Ctx, principal: AlertsActor, alert_id: AlertId, body: AssignIn) -> Alert:
    """Hand an active alert to someone (`to`), or to nobody (`to`: null); 409 when it is
    resolved. Assigning it to whom it is assigned already changes nothing."""
    await _visible(ctx, principal, alert_id)
    await ctx.db.call(actions.assign, alert_id=alert_id, actor=principal.actor, to=body.to)
    return await _visible(ctx, principal, alert_id)


@router.post(
    "/alerts/{alert_id}/publish",
    summary="Publish an alert in the public CAP feed, or withdraw it",
    responses=NOT_FOUND,
)
async def publish(ctx: Ctx, principal: AlertsActor, alert_id: AlertId, body: PublishIn) -> Alert:
    """`public: true` lists the alert in `/cap/alerts.atom` while it is active and serves its
    CAP document without a key; `false` withdraws it. Alerts of rules whose `params` hold
    `"public": true` are public from the start."""
    await _visible(ctx, principal, alert_id)
    await ctx.db.call(actions.publish, alert_id=alert_id, actor=principal.actor, public=body.public)
    return await _visible(ctx, principal, alert_id)


@router.get(
    "/alerts/{alert_id}/cap",
    summary="An alert's CAP 1.2 document",
    response_class=Response,
    responses={
        200: {
            "description": "The CAP 1.2 message of the alert's latest state",
            "content": {CAP_MEDIA_TYPE: {"schema": {"type": "string"}}},
        },
        **NOT_FOUND,
    },
)
async def alert_cap(ctx: Ctx, principal: AlertsReader, alert_id: AlertId) -> Response:
    """The OASIS CAP 1.2 message (XML) announcing the alert's latest transition, in Vietnamese
    and English; scope `Public` for a public alert, else `Restricted`."""
    alert = await _visible(ctx, principal, alert_id)
    document = await cap_document(ctx, alert_id, public=alert.public)
    return Response(document, media_type=CAP_MEDIA_TYPE)
