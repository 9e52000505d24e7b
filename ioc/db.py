"""Database URLs, engines and sessions (SQLAlchemy 2 on psycopg 3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from ioc.errors import ConfigError

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every ORM model, with the project's constraint naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def sqlalchemy_url(url: str) -> str:
    """Turn a plain `postgresql://` URL into SQLAlchemy's psycopg 3 form."""
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        return urlunsplit(parts._replace(scheme="postgresql+psycopg"))
    if parts.scheme == "postgresql+psycopg":
        return url
    raise ConfigError(f"not a PostgreSQL URL: scheme {parts.scheme!r}")


def libpq_url(url: str) -> str:
    """Turn any accepted PostgreSQL URL into the plain form libpq and psycopg take."""
    parts = urlsplit(url)
    if parts.scheme in ("postgresql+psycopg", "postgres"):
        return urlunsplit(parts._replace(scheme="postgresql"))
    return url


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def redact(url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine on psycopg 3; keyword arguments go to `create_async_engine`."""
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(sqlalchemy_url(url), **kwargs)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session inside one transaction: committed on success, rolled back on error."""
    async with make_sessionmaker(engine)() as session, session.begin():
        yield session
