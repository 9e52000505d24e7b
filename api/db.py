"""How the API reaches the database (README, "Architecture: data access").

Reads are async: SQLAlchemy Core statements over the tables of `ioc.models`, on an async
engine, so a slow query holds no thread. Changes go through the services (`alerts.actions`,
`alerts.rule_service`, `ioc.keys`, ...): plain synchronous functions on a psycopg connection,
the one implementation the ingest workers and the CLI call too. The API runs each one on a
worker thread with a connection from a small synchronous pool, in one transaction that also
holds its audit row, so the event loop is never blocked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio.to_thread
import psycopg
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from ioc.db import make_engine, sqlalchemy_url

T = TypeVar("T")


class Database:
    """The API process's two pools: async for reads, sync for services."""

    def __init__(self, url: str, *, read_pool: int = 10, service_pool: int = 4) -> None:
        self.engine: AsyncEngine = make_engine(url, pool_size=read_pool, max_overflow=read_pool)
        self.sync_engine: Engine = create_engine(
            sqlalchemy_url(url),
            pool_size=service_pool,
            max_overflow=service_pool,
            pool_pre_ping=True,
        )

    def _in_transaction(self, fn: Callable[..., T], kwargs: dict[str, Any]) -> T:
        with self.sync_engine.begin() as conn:
            driver = conn.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            return fn(driver, **kwargs)

    @asynccontextmanager
    async def raw_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection of the read pool as psycopg's own (COPY, server-side cursors, row
        factories), back to the pool on exit."""
        async with self.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert isinstance(raw, psycopg.AsyncConnection)
            yield raw

    async def call(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """Run a service `fn(conn, **kwargs)` on a worker thread, in one transaction."""
        return await anyio.to_thread.run_sync(self._in_transaction, fn, kwargs)

    async def dispose(self) -> None:
        """Close both pools."""
        await self.engine.dispose()
        await anyio.to_thread.run_sync(self.sync_engine.dispose)
