"""Who is asking: API keys from `Authorization: Bearer ioc_…`, checked against the keyed hash,
trusted in memory for `IOC_API_KEY_CACHE_S`; the role's permissions and the agency scope."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from api.limits import RateLimiter
from api.permissions import SCOPED_ROLES, Permission, allows
from api.problems import Problem
from ioc.keys import digest, split
from ioc.models import ApiKey as ApiKeyRow
from ioc.vocabulary import Role

_BEARER = "bearer "
_LAST_USED_EVERY_S = 60.0
_CACHE_MAX = 10_000


@dataclass(frozen=True)
class Principal:
    """The holder of a checked key."""

    key_id: int
    prefix: str
    name: str
    role: Role
    sectors: frozenset[str] | None
    """The sectors an agency key is limited to; None: every sector."""

    @property
    def actor(self) -> str:
        """How the audit log and alert history name this caller."""
        return f"key:{self.prefix}:{self.name}"

    def can_see(self, sector_id: str | None) -> bool:
        """Whether a thing of this sector is visible to the caller."""
        return self.sectors is None or (sector_id is not None and sector_id in self.sectors)

    def visible(self, asked: Iterable[str] | None = None) -> list[str] | None:
        """The sectors a list should be limited to (None: no limit); asking for a sector
        outside the key's scope is a 403."""
        wanted = None if asked is None else sorted(set(asked))
        if self.sectors is None:
            return wanted
        if wanted is None:
            return sorted(self.sectors)
        outside = [s for s in wanted if s not in self.sectors]
        if outside:
            raise forbidden(f"this key is limited to sectors {', '.join(sorted(self.sectors))}")
        return wanted

    def require_sector(self, sector_id: str) -> None:
        """403 unless the key may act on this sector."""
        if not self.can_see(sector_id):
            raise forbidden(f"this key may not act on sector {sector_id!r}")


def forbidden(detail: str) -> Problem:
    return Problem(403, "Forbidden", detail, kind="forbidden")


def _unauthorized(detail: str) -> Problem:
    return Problem(
        401,
        "Unauthorized",
        detail,
        kind="unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="ioc"'},
    )


class KeyStore:
    """Checks keys against the database, remembering answers for a few seconds."""

    def __init__(self, engine: AsyncEngine, *, pepper: str, cache_s: float) -> None:
        self.engine = engine
        self.pepper = pepper
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def check(self, token: str) -> Principal | None:
        """The principal of a live key; None for anything else."""
        parts = split(token)
        if parts is None:
            return None
        prefix, secret = parts
        hashed = digest(self.pepper, secret)
        now = time.monotonic()
        cached = self._cache.get(prefix + hashed)
        if cached is not None and cached[0] > now:
            return cached[1]
        principal = await self._lookup(prefix, hashed)
        if len(self._cache) >= _CACHE_MAX:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
        self._cache[prefix + hashed] = (now + self.cache_s, principal)
        return principal

    async def _lookup(self, prefix: str, hashed: str) -> Principal | None:
        k = ApiKeyRow
        async with self.engine.begin() as conn:
            row = (
                (
                    await conn.execute(
                        select(k.id, k.name, k.role, k.sectors, k.key_hash, k.revoked_at).where(
                            k.prefix == prefix
                        )
                    )
                )
                .mappings()
                .first()
            )
            if row is None or row["revoked_at"] is not None:
                return None
            if not hmac.compare_digest(row["key_hash"], hashed):
                return None
            await conn.execute(
                update(ApiKeyRow)
                .where(k.id == row["id"])
                .where(
                    (k.last_used_at.is_(None)) | (k.last_used_at < _seconds_ago(_LAST_USED_EVERY_S))
                )
                .values(last_used_at=_now())
            )
        role = Role(row["role"])
        sectors = frozenset(row["sectors"] or ()) if role in SCOPED_ROLES else None
        return Principal(row["id"], prefix, row["name"], role, sectors)


def _now() -> Any:
    return func.now()


def _seconds_ago(seconds: float) -> Any:
    return func.now() - timedelta(seconds=seconds)


def authenticate(request: Request) -> Awaitable[Principal]:
    """The caller's principal (401 without a valid key)."""
    return _principal(request)


async def _principal(request: Request) -> Principal:
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    header = request.headers.get("authorization", "")
    if not header.lower().startswith(_BEARER):
        raise _unauthorized("send an API key: Authorization: Bearer ioc_…")
    store: KeyStore = request.app.state.keys
    principal = await store.check(header[len(_BEARER) :].strip())
    if principal is None:
        raise _unauthorized("the API key is unknown, malformed or revoked")
    if principal.role in SCOPED_ROLES:
        limiter: RateLimiter = request.app.state.rate_limiter
        wait_s = limiter.take(principal.key_id)
        if wait_s > 0:
            raise Problem(
                429,
                "Too Many Requests",
                f"this key may make {limiter.per_minute} requests a minute; "
                f"retry in {wait_s:.0f} s",
                kind="rate-limited",
                headers={"Retry-After": str(max(1, round(wait_s)))},
            )
    request.state.principal = principal
    return principal


class require:
    """A dependency: the caller, who must hold `permission` (else 401 or 403)."""

    def __init__(self, permission: Permission) -> None:
        self.permission = permission

    async def __call__(self, request: Request) -> Principal:
        principal = await _principal(request)
        if not allows(principal.role, self.permission):
            raise forbidden(f"the {principal.role.value} role may not do {self.permission.value}")
        return principal


def caller(permission: Permission) -> Any:
    """`Annotated[Principal, caller(P)]` in a route's signature."""
    return Depends(require(permission))


PanelsReader = Annotated[Principal, caller(Permission.PANELS_READ)]
AlertsReader = Annotated[Principal, caller(Permission.ALERTS_READ)]
EventsReader = Annotated[Principal, caller(Permission.EVENTS_READ)]
HistoryReader = Annotated[Principal, caller(Permission.HISTORY_READ)]
RulesReader = Annotated[Principal, caller(Permission.RULES_READ)]
AlertsActor = Annotated[Principal, caller(Permission.ALERTS_ACT)]
EventsUpdater = Annotated[Principal, caller(Permission.EVENTS_UPDATE)]
TelemetryWriter = Annotated[Principal, caller(Permission.TELEMETRY_WRITE)]
EventsWriter = Annotated[Principal, caller(Permission.EVENTS_WRITE)]
SourcesWriter = Annotated[Principal, caller(Permission.SOURCES_WRITE)]
RulesWriter = Annotated[Principal, caller(Permission.RULES_WRITE)]
RulesBacktester = Annotated[Principal, caller(Permission.RULES_BACKTEST)]
AuditReader = Annotated[Principal, caller(Permission.AUDIT_READ)]
