"""Alert rules: listed by anyone who reads rules (agency keys: their sectors), changed by admins
through `alerts.rule_service`, and backtested by analysts over stored data (`alerts.backtest`).

A write reaches the ingest engines through the rule version they watch (within a few seconds);
this process's own HTTP-ingest engine is told at once."""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select

from alerts.backtest import MAX_ALERTS, MAX_RANGE_S, Backtest, BacktestInvalid, backtest
from alerts.engine import AlertEngine
from alerts.rule_service import (
    ORIGIN_DELETED,
    RuleDefinition,
    RuleInvalid,
    create_rule,
    delete_rule,
    follows_profile,
    update_rule,
)
from alerts.rules import RuleKind
from api import pagination
from api.auth import Principal, RulesBacktester, RulesReader, RulesWriter
from api.context import Context, Ctx
from api.pagination import Page
from api.problems import PROBLEM_RESPONSES, FieldError, Problem
from ioc.errors import NotFound
from ioc.models import AlertRule
from ioc.vocabulary import DirectionName, SeverityName

router = APIRouter(tags=["rules"], responses=PROBLEM_RESPONSES)

_MAX_ID = 2**31 - 1
BACKTESTS_AT_ONCE = 2
_ID = r"^[a-z][a-z0-9_]{0,62}$"
_DISTRICT = r"^[a-z][a-z0-9_-]{0,62}$"

RuleId = Annotated[int, Path(ge=1, le=_MAX_ID, description="The rule's id")]

_Responses = dict[int | str, dict[str, Any]]
_NOT_FOUND: _Responses = {404: {"description": "No such rule (or outside the key's sectors)"}}
_CONFLICT: _Responses = {409: {"description": "Another rule has that name"}}


class RuleOut(BaseModel):
    """A stored alert rule: its definition, where it came from, and when it changed."""

    id: int = Field(examples=[42])
    name: str = Field(examples=["water.salinity warning >= 1 ‰"])
    kind: RuleKind = Field(examples=["threshold"])
    sector_id: str = Field(examples=["water"])
    severity: SeverityName = Field(examples=["warning"])
    metric: str | None = Field(examples=["salinity"])
    direction: DirectionName | None = Field(examples=["above"])
    threshold: float | None = Field(examples=[1.0])
    inclusive: bool = Field(examples=[True])
    for_s: int = Field(examples=[900])
    clear_at: float | None = Field(examples=[0.8])
    district: str | None = Field(examples=[None])
    source_id: str | None = Field(examples=[None])
    manual_resolve: bool = Field(examples=[False])
    enabled: bool = Field(examples=[True])
    params: dict[str, Any] = Field(examples=[{}])
    origin: str = Field(
        description="`profile`: seeded from the province profile; `user`: made by a person",
        examples=["profile"],
    )
    seed_key: str | None = Field(examples=["water/salinity/above/warning"])
    follows_profile: bool | None = Field(
        description="seeded rules: true while unchanged (`ioc db upgrade` keeps it in line "
        "with the profile), false once a person changed it (re-seeding leaves it alone); "
        "null for rules a person made",
        examples=[True],
    )
    created_at: datetime
    updated_at: datetime


class RuleDeleted(BaseModel):
    """What deleting a rule did."""

    id: int = Field(examples=[42])
    resolved_alerts: list[int] = Field(
        description="the rule's active alerts, resolved by this deletion", examples=[[1042]]
    )


class BacktestIn(BaseModel):
    """A proposed rule (saved or not) and the past range to run it over."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "rule": {
                        "name": "Độ mặn > 2 ‰ trong 15 phút",
                        "kind": "threshold",
                        "sector_id": "water",
                        "metric": "salinity",
                        "severity": "warning",
                        "direction": "above",
                        "threshold": 2.0,
                        "for_s": 900,
                        "clear_at": 1.8,
                    },
                    "from": "2026-11-01T00:00:00+07:00",
                    "to": "2026-12-01T00:00:00+07:00",
                }
            ]
        },
    )

    rule: RuleDefinition
    from_: AwareDatetime = Field(alias="from", description="start of the range (inclusive)")
    to: AwareDatetime = Field(
        description=f"end of the range (exclusive), at most {MAX_RANGE_S // 86_400} days on"
    )
    source_id: str | None = Field(
        default=None, min_length=1, max_length=128, description="only this source"
    )
    district: str | None = Field(default=None, pattern=_DISTRICT, description="only this district")
    max_alerts: int = Field(
        default=MAX_ALERTS, ge=1, le=MAX_ALERTS, description="alerts listed at most (all counted)"
    )


class BacktestAlertOut(BaseModel):
    """An alert the rule would have opened; condition times are reading times."""

    source_id: str | None = Field(examples=["dai-ngai"])
    source_name: str | None = Field(examples=["Trạm Đại Ngãi"])
    event_id: int | None = Field(
        default=None, description="event rules: the event", examples=[None]
    )
    started_at: datetime = Field(
        description="the condition began: its first breaching reading (silence: the last "
        "reading before the gap)"
    )
    fired_at: datetime = Field(description="the condition had lasted long enough: opened")
    resolved_at: datetime | None = Field(
        description="the condition ended (engine-resolved); null: still active at `to`, or "
        "resolved only by a person"
    )
    severity: SeverityName = Field(examples=["warning"])
    peak_severity: SeverityName = Field(examples=["warning"])
    peak_value: float | None = Field(
        description="the most abnormal reading while it held (above: highest; below: lowest)",
        examples=[2.6],
    )
    min_value: float | None = Field(examples=[2.05])
    max_value: float | None = Field(examples=[2.6])
    occurrences: int = Field(
        description="conditions joined in one alert (a new one within the reopen window "
        "reopens the alert)",
        examples=[1],
    )


class BacktestDay(BaseModel):
    """Alerts opened on one day of the profile's time zone."""

    day: date = Field(examples=["2026-11-03"])
    alerts: int = Field(examples=[4])


class BacktestOut(BaseModel):
    """What the rule would have done over the range."""

    model_config = ConfigDict(populate_by_name=True)

    from_: datetime = Field(alias="from")
    to: datetime
    timezone: str = Field(examples=["Asia/Ho_Chi_Minh"])
    reopen_window_s: float = Field(examples=[300.0])
    sources: int = Field(description="sources evaluated", examples=[12])
    readings: int = Field(description="readings evaluated", examples=[103_680])
    events: int = Field(description="events evaluated (event rules)", examples=[0])
    alerts_total: int = Field(description="alerts it would have opened", examples=[17])
    alerts_truncated: bool = Field(
        description="more alerts than `max_alerts`: `alerts` lists the earliest by fire time",
        examples=[False],
    )
    max_alerts: int = Field(examples=[MAX_ALERTS])
    by_severity: dict[str, int] = Field(
        description="alerts by peak severity", examples=[{"warning": 15, "critical": 2}]
    )
    per_day: list[BacktestDay]
    alerts: list[BacktestAlertOut]


_COLUMNS = [
    AlertRule.id,
    AlertRule.name,
    AlertRule.kind,
    AlertRule.sector_id,
    AlertRule.severity,
    AlertRule.metric,
    AlertRule.direction,
    AlertRule.threshold,
    AlertRule.inclusive,
    AlertRule.for_s,
    AlertRule.clear_at,
    AlertRule.district,
    AlertRule.source_id,
    AlertRule.manual_resolve,
    AlertRule.enabled,
    AlertRule.params,
    AlertRule.origin,
    AlertRule.seed_key,
    AlertRule.seed_digest,
    AlertRule.created_at,
    AlertRule.updated_at,
]


def _out(row: Any) -> RuleOut:
    values = dict(row)
    values["params"] = values["params"] or {}
    return RuleOut.model_validate({**values, "follows_profile": follows_profile(values)})


async def _load(ctx: Context, rule_id: int, principal: Principal) -> RuleOut:
    stmt = select(*_COLUMNS).where(AlertRule.id == rule_id, AlertRule.origin != ORIGIN_DELETED)
    async with ctx.db.engine.connect() as conn:
        row = (await conn.execute(stmt)).mappings().first()
    if row is None or not principal.can_see(row["sector_id"]):
        raise NotFound(f"rule {rule_id} does not exist")
    return _out(row)


def _invalid(exc: RuleInvalid, prefix: str) -> Problem:
    """422 naming the invalid fields of the request body."""
    errors = [FieldError(field=prefix + i.field, message=i.message) for i in exc.issues]
    return Problem(
        422,
        "Invalid request",
        "; ".join(f"{e.field}: {e.message}" for e in errors[:5]),
        kind="validation",
        errors=[e.model_dump() for e in errors],
    )


def _districts(ctx: Context) -> list[str]:
    return [d.id for d in ctx.profile.districts]


def _backtests(request: Request) -> asyncio.Semaphore:
    """Backtests running at once in this process: each holds a service connection for as long
    as it reads, and writes need the others."""
    state = request.app.state
    if getattr(state, "backtests", None) is None:
        state.backtests = asyncio.Semaphore(BACKTESTS_AT_ONCE)
    semaphore: asyncio.Semaphore = state.backtests
    return semaphore


def _reload(ctx: Context) -> None:
    """This process's engine reloads its rules at its next batch (others within seconds)."""
    for hook in ctx.ingest.writer.hooks:
        if isinstance(hook, AlertEngine):
            hook.invalidate()


@router.get("/rules", summary="Alert rules, by id")
async def list_rules(
    ctx: Ctx,
    principal: RulesReader,
    sector: Annotated[str | None, Query(pattern=_ID)] = None,
    kind: RuleKind | None = None,
    metric: Annotated[str | None, Query(pattern=_ID)] = None,
    enabled: bool | None = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=pagination.MAX_LIMIT)] = pagination.DEFAULT_LIMIT,
) -> Page[RuleOut]:
    """Filter by sector, kind, metric or whether enabled; keyset pages by `cursor`. Agency keys
    see their own sectors' rules."""
    stmt = select(*_COLUMNS).where(AlertRule.origin != ORIGIN_DELETED)
    sectors = principal.visible([sector] if sector else None)
    if sectors is not None:
        stmt = stmt.where(AlertRule.sector_id.in_(sectors))
    if kind is not None:
        stmt = stmt.where(AlertRule.kind == kind)
    if metric is not None:
        stmt = stmt.where(AlertRule.metric == metric)
    if enabled is not None:
        stmt = stmt.where(AlertRule.enabled.is_(enabled))
    key = pagination.decode(cursor, [int]) if cursor else None
    stmt = pagination.after(stmt, [AlertRule.id], key, descending=False)
    async with ctx.db.engine.connect() as conn:
        rows = (await conn.execute(stmt.limit(limit + 1))).mappings().all()
    items, next_cursor = pagination.page([_out(r) for r in rows], limit, lambda r: [r.id])
    return Page[RuleOut](items=items, next_cursor=next_cursor)


@router.get("/rules/{rule_id}", summary="One alert rule", responses=_NOT_FOUND)
async def get_rule(ctx: Ctx, principal: RulesReader, rule_id: RuleId) -> RuleOut:
    """The rule with this id."""
    return await _load(ctx, rule_id, principal)


@router.post(
    "/rules",
    status_code=201,
    summary="Add an alert rule (admins)",
    responses={**_CONFLICT, 422: {"description": "Invalid definition; `errors` names fields"}},
)
async def post_rule(
    ctx: Ctx, principal: RulesWriter, body: RuleDefinition, request: Request, response: Response
) -> RuleOut:
    """Check the definition against the catalogue and the database, store it and audit it
    (`rule.create`). The ingest engines pick it up within seconds."""
    principal.require_sector(body.sector_id)
    try:
        done = await ctx.db.call(
            create_rule, definition=body, actor=principal.actor, districts=_districts(ctx)
        )
    except RuleInvalid as exc:
        raise _invalid(exc, "body.") from None
    _reload(ctx)
    response.headers["Location"] = request.app.url_path_for("get_rule", rule_id=done.rule_id)
    return await _load(ctx, done.rule_id, principal)


@router.put(
    "/rules/{rule_id}",
    summary="Replace an alert rule's definition (admins)",
    responses={**_NOT_FOUND, **_CONFLICT, 422: {"description": "Invalid definition"}},
)
async def put_rule(
    ctx: Ctx, principal: RulesWriter, rule_id: RuleId, body: RuleDefinition
) -> RuleOut:
    """Replace the definition; audited (`rule.update`) with the changed fields. A seeded rule
    a person changed is no longer updated from the profile. Disabling a rule, or moving it to
    another kind, sector, metric, direction or scope, resolves its active alerts."""
    await _load(ctx, rule_id, principal)
    principal.require_sector(body.sector_id)
    try:
        await ctx.db.call(
            update_rule,
            rule_id=rule_id,
            definition=body,
            actor=principal.actor,
            districts=_districts(ctx),
        )
    except RuleInvalid as exc:
        raise _invalid(exc, "body.") from None
    _reload(ctx)
    return await _load(ctx, rule_id, principal)


@router.delete("/rules/{rule_id}", summary="Delete an alert rule (admins)", responses=_NOT_FOUND)
async def remove_rule(ctx: Ctx, principal: RulesWriter, rule_id: RuleId) -> RuleDeleted:
    """Delete the rule, resolving its active alerts (actor and reason in their history);
    audited (`rule.delete`) with the definition it had. A seeded rule is kept hidden as a
    tombstone so that the next `ioc db upgrade` does not seed it again."""
    await _load(ctx, rule_id, principal)
    done = await ctx.db.call(delete_rule, rule_id=rule_id, actor=principal.actor)
    _reload(ctx)
    return RuleDeleted(id=rule_id, resolved_alerts=done.resolved_alerts)


@router.post(
    "/rules/backtest",
    summary="The alerts a proposed rule would have opened (analysts, admins)",
    responses={422: {"description": "Invalid rule, range (at most 31 days) or scope"}},
)
async def post_backtest(
    ctx: Ctx, principal: RulesBacktester, body: BacktestIn, request: Request
) -> BacktestOut:
    """Run a rule (saved or not) with the engine's evaluation over the stored readings of its
    metric from `from` to `to`, per source in reading-time order from a normal state (silence
    rules: gaps in the stored readings; event rules: the stored events). Answers the alerts it
    would have opened, their count per day in the profile's time zone, and totals. Escalation
    and auto-resolution (wall-time operator timers) are not part of it."""
    try:
        async with _backtests(request):
            result: Backtest = await ctx.db.call(
                backtest,
                definition=body.rule,
                start=body.from_,
                end=body.to,
                timezone=ctx.profile.timezone,
                source_id=body.source_id,
                district=body.district,
                districts=_districts(ctx),
                reopen_window_s=ctx.settings.alerts_reopen_window_s,
                min_silence_s=ctx.settings.alerts_min_silence_s,
                max_alerts=body.max_alerts,
            )
    except BacktestInvalid as exc:
        raise _invalid(exc, "body.") from None
    except RuleInvalid as exc:
        raise _invalid(exc, "body.rule.") from None
    return BacktestOut(
        from_=result.start,
        to=result.end,
        timezone=result.timezone,
        reopen_window_s=result.reopen_window_s,
        sources=result.sources,
        readings=result.readings,
        events=result.events,
        alerts_total=result.total,
        alerts_truncated=result.truncated,
        max_alerts=result.max_alerts,
        by_severity=result.by_severity,
        per_day=[BacktestDay(day=d, alerts=n) for d, n in result.per_day],
        alerts=[BacktestAlertOut.model_validate(a, from_attributes=True) for a in result.alerts],
    )
