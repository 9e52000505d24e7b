"""The audit trail (admin keys): every change made through the API or the CLI."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import select

from api import pagination
from api.auth import AuditReader
from api.context import Ctx
from api.pagination import Page
from api.problems import PROBLEM_RESPONSES
from ioc.models import AuditLog

router = APIRouter(tags=["audit"], responses=PROBLEM_RESPONSES)
audit = AuditLog.__table__.c


class AuditEntry(BaseModel):
    """One change: who, what, on what, when."""

    id: int
    at: datetime
    actor: str = Field(examples=["key:ab12cd34:Trực ban ca 1"])
    action: str = Field(examples=["alert.acknowledge"])
    target: str | None = Field(examples=["alert:42"])
    detail: dict[str, Any]


@router.get("/audit", summary="The audit trail, newest first")
async def list_audit(
    ctx: Ctx,
    principal: AuditReader,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    action: Annotated[str | None, Query(max_length=100)] = None,
    target: Annotated[str | None, Query(max_length=200)] = None,
    since: AwareDatetime | None = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=pagination.MAX_LIMIT)] = pagination.DEFAULT_LIMIT,
) -> Page[AuditEntry]:
    """Filter by actor, action, target or time; keyset pages by `cursor`."""
    stmt = select(audit.id, audit.at, audit.actor, audit.action, audit.target, audit.detail)
    if actor is not None:
        stmt = stmt.where(audit.actor == actor)
    if action is not None:
        stmt = stmt.where(audit.action == action)
    if target is not None:
        stmt = stmt.where(audit.target == target)
    if since is not None:
        stmt = stmt.where(audit.at >= since)
    key = pagination.decode(cursor, [int]) if cursor else None
    stmt = pagination.after(stmt, [audit.id], key, descending=True).limit(limit + 1)
    async with ctx.db.engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    items, next_cursor = pagination.page(
        [AuditEntry.model_validate(dict(r)) for r in rows], limit, lambda e: [e.id]
    )
    return Page[AuditEntry](items=items, next_cursor=next_cursor)
