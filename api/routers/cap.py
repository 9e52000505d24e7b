"""The public CAP feed: an Atom 1.0 index of the active alerts marked public, each entry linking
its CAP 1.2 document, as public-alert aggregators read them. No key: aggregators have none.

An alert is public when its rule's `params` hold `"public": true`, or an operator published it
(`POST /alerts/{id}/publish`). A resolved public alert leaves the feed, but its document (a
CAP `Cancel`) is still served, so an aggregator learns that it ended."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Request, Response
from sqlalchemy import select

from alerts import cap
from alerts.lifecycle import AlertNotFound
from api.context import Context, Ctx
from api.problems import PROBLEM_JSON, PROBLEM_RESPONSES, ProblemBody
from ioc.models import Alert as AlertRow

router = APIRouter(tags=["alerts"], responses={422: PROBLEM_RESPONSES[422]})

a = AlertRow.__table__.c

_MAX_ID: Final = 2**63 - 1
MAX_FEED_ENTRIES: Final = 500
"""The feed lists at most this many alerts, the latest changed first."""
PUBLIC_CACHE: Final = "public, max-age=60"
PUBLIC_LOADS: Final = 2
"""CAP documents loaded at once for callers without a key: they share the service pool with
operators' actions, which must never wait behind an aggregator."""


async def cap_document(ctx: Context, alert_id: int, *, public: bool) -> bytes:
    """The CAP 1.2 message of an alert's latest state (scope Public or Restricted)."""
    message = await ctx.db.call(cap.load_latest, alert_id=alert_id, districts=ctx.profile.districts)
    if message is None:
        raise AlertNotFound(f"alert {alert_id} does not exist")
    return cap.render(
        cap.xml_safe(message),
        sender=ctx.settings.cap_sender,
        sender_name=cap.xml_text(ctx.settings.cap_sender_name or ctx.profile.title_vi),
        zone=ctx.zone,
        scope="Public" if public else "Restricted",
    )


def _slots(request: Request) -> asyncio.Semaphore:
    slots: asyncio.Semaphore | None = getattr(request.app.state, "cap_public_slots", None)
    if slots is None:
        slots = asyncio.Semaphore(PUBLIC_LOADS)
        request.app.state.cap_public_slots = slots
    return slots


def _base(ctx: Context, request: Request) -> str:
    return (ctx.settings.api_public_url or str(request.base_url)).rstrip("/")


def _xml(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


@router.get(
    "/cap/alerts.atom",
    summary="Atom feed of the active public alerts (no key)",
    response_class=Response,
    responses={200: _xml(cap.ATOM_MEDIA_TYPE, "An Atom 1.0 feed")},
)
async def cap_feed(ctx: Ctx, request: Request) -> Response:
    """An Atom 1.0 feed of the active alerts marked public, the latest changed first; each
    entry links its CAP 1.2 document (`rel="alternate"`, `application/cap+xml`). Links use
    `IOC_API_PUBLIC_URL`, or this request's base URL when it is not set."""
    stmt = (
        select(a.id, a.title, a.title_en, a.severity, a.sector_id, a.opened_at, a.updated_at)
        .where(a.public, a.status != "resolved")
        .order_by(a.updated_at.desc(), a.id.desc())
        .limit(MAX_FEED_ENTRIES)
    )
    async with ctx.db.engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    base = _base(ctx, request)
    entries = [
        cap.AtomEntry(
            link=base + request.app.url_path_for("public_cap", alert_id=str(r["id"])),
            title=r["title"],
            summary=r["title_en"] or r["title"],
            published=r["opened_at"],
            updated=r["updated_at"],
            severity=r["severity"],
            sector_id=r["sector_id"],
        )
        for r in rows
    ]
    sender_name = ctx.settings.cap_sender_name or ctx.profile.title_vi
    document = cap.render_atom(
        entries,
        feed_id=base + request.app.url_path_for("cap_feed"),
        title=f"{sender_name}: cảnh báo công khai / public alerts",
        author=sender_name,
        updated=max((e.updated for e in entries), default=datetime.now(UTC)),
        zone=ctx.zone,
    )
    return Response(
        document, media_type=cap.ATOM_MEDIA_TYPE, headers={"Cache-Control": PUBLIC_CACHE}
    )


@router.get(
    "/cap/alerts/{alert_id}.xml",
    name="public_cap",
    summary="The CAP 1.2 document of a public alert (no key)",
    response_class=Response,
    responses={
        200: _xml(cap.CAP_MEDIA_TYPE, "The CAP 1.2 message of the alert's latest state"),
        404: {
            "model": ProblemBody,
            "content": {PROBLEM_JSON: {}},
            "description": "No such alert, or it is not public",
        },
    },
)
async def public_cap(
    ctx: Ctx,
    request: Request,
    alert_id: Annotated[int, Path(ge=1, le=_MAX_ID, description="The alert's id")],
) -> Response:
    """The CAP 1.2 message (scope `Public`) of a public alert's latest state: an `Alert`, an
    `Update`, or a `Cancel` once it is resolved. 404 for an alert that is not public."""
    async with ctx.db.engine.connect() as conn:
        public = (await conn.execute(select(a.public).where(a.id == alert_id))).scalar()
    if not public:
        raise AlertNotFound(f"alert {alert_id} does not exist or is not public")
    async with _slots(request):
        document = await cap_document(ctx, alert_id, public=True)
    return Response(
        document, media_type=cap.CAP_MEDIA_TYPE, headers={"Cache-Control": PUBLIC_CACHE}
    )
