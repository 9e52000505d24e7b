"""Start-up of a process: find or start the database, migrate it, sync the profile (and, given
by the composition root, what else follows the profile: the alert rules)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

import psycopg
from psycopg import sql
from sqlalchemy import Connection, create_engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from ioc import migrate
from ioc.catalogue import Profile, load_profile
from ioc.db import libpq_url, redact, sqlalchemy_url, with_database
from ioc.embedded_pg import EmbeddedPostgres
from ioc.errors import DatabaseError
from ioc.settings import Settings
from ioc.storage import ensure_retention_policy
from ioc.sync import SyncReport, sync_profile

EMBEDDED_DATABASE = "ioc"

T = TypeVar("T")


@contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The database URL: IOC_DATABASE_URL, or an embedded server started for the duration."""
    if settings.database_url is not None:
        yield settings.database_url.get_secret_value()
        return
    with EmbeddedPostgres(settings.data_dir) as server:
        yield ensure_database(server.url, EMBEDDED_DATABASE)


def ensure_database(server_url: str, name: str) -> str:
    """Create database `name` on the server when missing; return its URL."""
    try:
        with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot create database {name!r}: {exc}") from None
    return with_database(server_url, name)


@dataclass(frozen=True)
class Prepared(Generic[T]):
    """What start-up did to the database."""

    url: str
    revision: str | None
    sync: SyncReport
    retention_changed: bool
    then: T | None = None  # what `then` reported


def prepare(
    url: str,
    settings: Settings,
    profile: Profile | None = None,
    *,
    then: Callable[[Connection, Profile], T] | None = None,
) -> Prepared[T]:
    """Migrate to head, sync the profile and the retention policy, then run `then` (the
    composition root passes the alert rule seeding) in the same transaction (idempotent)."""
    profile = profile or load_profile(settings.profile)
    migrate.upgrade(url, timescale=settings.timescale, retention_days=settings.retention_days)
    engine = create_engine(sqlalchemy_url(url), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            report = sync_profile(conn, profile)
            changed = ensure_retention_policy(conn, settings.retention_days)
            after = then(conn, profile) if then is not None else None
    except SQLAlchemyError as exc:
        raise DatabaseError(f"profile sync on {redact(url)} failed: {exc}") from None
    finally:
        engine.dispose()
    return Prepared(url, migrate.current(url), report, changed, after)
