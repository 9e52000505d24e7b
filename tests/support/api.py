"""API test helpers: the real app on a real database through httpx's ASGI transport, and keys
made through `ioc.keys` as `ioc keys create` makes them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
from pydantic import SecretStr

from api.app import create_app
from ioc.db import libpq_url
from ioc.keys import create_key
from ioc.settings import DEVELOPMENT_PEPPER, Settings
from ioc.vocabulary import Role

BASE = "http://ioc"


def api_settings(db_url: str, **overrides: Any) -> Settings:
    """Settings of an API on this database with the tests' profile (mekong)."""
    values: dict[str, Any] = {
        "database_url": SecretStr(db_url),
        "profile": "mekong",
        "api_key_cache_s": 0.0,
    }
    values.update(overrides)
    return Settings(**values)


def make_key(
    db_url: str, role: Role | str, *, sectors: Sequence[str] = (), name: str | None = None
) -> str:
    """A new key's full text."""
    with psycopg.connect(libpq_url(db_url)) as conn:
        _, text = create_key(
            conn,
            name=name or f"test {role}",
            role=role,
            sectors=sectors,
            pepper=DEVELOPMENT_PEPPER,
            actor="test",
        )
    return text


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Api:
    """A running app and a client for it."""

    http: httpx.AsyncClient
    db_url: str
    keys: dict[str, str] = field(default_factory=dict)

    def key(self, role: Role | str, *, sectors: Sequence[str] = ()) -> str:
        """A key of this role (made once per role and scope)."""
        label = f"{Role(role).value}:{','.join(sorted(sectors))}"
        if label not in self.keys:
            self.keys[label] = make_key(self.db_url, role, sectors=sectors)
        return self.keys[label]

    def as_(self, role: Role | str, *, sectors: Sequence[str] = ()) -> dict[str, str]:
        """Headers that authenticate as this role."""
        return bearer(self.key(role, sectors=sectors))


@asynccontextmanager
async def running_api(db_url: str, **overrides: Any) -> AsyncIterator[Api]:
    """The app with its lifespan (pools, HTTP ingest writer) and an httpx client on it."""
    app = create_app(api_settings(db_url, **overrides))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE, timeout=60) as http:
            yield Api(http, db_url)
