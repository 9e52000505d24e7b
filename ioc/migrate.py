"""Run the alembic migrations from Python (what `ioc db ...` calls)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from ioc.db import redact, sqlalchemy_url
from ioc.errors import DatabaseError


def migrations_dir() -> Path:
    """Where the `migrations` package lives, found without importing it."""
    spec = importlib.util.find_spec("migrations")
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseError("the 'migrations' package is not installed next to ioc")
    return Path(next(iter(spec.submodule_search_locations)))


def alembic_config(url: str, *, timescale: str = "auto", retention_days: int = 365) -> Config:
    """An alembic config for this database; the options reach the migration scripts."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["url"] = url
    cfg.attributes["timescale"] = timescale
    cfg.attributes["retention_days"] = retention_days
    return cfg


def head_revision() -> str:
    """The single head revision of the migration scripts."""
    heads = ScriptDirectory.from_config(alembic_config("postgresql://unused")).get_heads()
    if len(heads) != 1:
        raise DatabaseError(f"migrations must have one head, found {len(heads)}: {heads}")
    return heads[0]


def upgrade(
    url: str, revision: str = "head", *, timescale: str = "auto", retention_days: int = 365
) -> None:
    """Migrate the database up to `revision`."""
    try:
        command.upgrade(
            alembic_config(url, timescale=timescale, retention_days=retention_days), revision
        )
    except SQLAlchemyError as exc:
        raise DatabaseError(f"upgrade of {redact(url)} failed: {_first_line(exc)}") from exc


def downgrade(url: str, revision: str) -> None:
    """Migrate the database down to `revision` ('base' removes every table)."""
    try:
        command.downgrade(alembic_config(url), revision)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"downgrade of {redact(url)} failed: {_first_line(exc)}") from exc


def current(url: str) -> str | None:
    """The revision the database is at, or None before the first migration."""
    engine = create_engine(sqlalchemy_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot read revision of {redact(url)}: {_first_line(exc)}") from exc
    finally:
        engine.dispose()


def _first_line(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
