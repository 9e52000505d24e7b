"""Alembic environment: synchronous psycopg 3 connection, one transaction per migration."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

import ioc.models  # noqa: F401  (registers every table on Base.metadata)
from ioc.db import Base, sqlalchemy_url

config = context.config


def _url() -> str:
    url = config.attributes.get("url") or os.environ.get("IOC_DATABASE_URL")
    if not url:
        raise RuntimeError("no database: pass a URL through ioc.migrate or set IOC_DATABASE_URL")
    return str(url)


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it."""
    context.configure(url=sqlalchemy_url(_url()), target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on a live connection."""
    engine = create_engine(sqlalchemy_url(_url()), poolclass=NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
