"""Real services for the tests: PostgreSQL, an MQTT broker, and databases cloned per test."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from ioc import migrate
from ioc.db import libpq_url, with_database
from ioc.embedded_broker import EmbeddedBroker
from ioc.embedded_pg import EmbeddedPostgres


def require_all() -> bool:
    """IOC_REQUIRE_ALL=1 turns a missing component into an error instead of a skip."""
    return os.environ.get("IOC_REQUIRE_ALL", "") not in ("", "0", "false", "no")


def missing(what: str) -> None:
    """Skip, or fail under IOC_REQUIRE_ALL, for a component that is not there."""
    if require_all():
        pytest.fail(f"IOC_REQUIRE_ALL is set and {what}", pytrace=False)
    pytest.skip(what)


def shared_tmp(prefix: str) -> Path:
    """A temporary folder other users may traverse (the embedded server's user, as root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@contextmanager
def postgres_server() -> Iterator[str]:
    """IOC_TEST_DATABASE_URL's server, or an embedded PostgreSQL for the session."""
    url = os.environ.get("IOC_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with EmbeddedPostgres(shared_tmp("ioc-test-pg-")) as server:
        yield server.url


@contextmanager
def mqtt_broker() -> Iterator[str]:
    """IOC_TEST_MQTT_URL, else a mosquitto binary on a free port, else amqtt in-process."""
    url = os.environ.get("IOC_TEST_MQTT_URL")
    if url:
        yield url
        return
    with EmbeddedBroker(shared_tmp("ioc-test-mqtt-")) as broker:
        yield broker.url


def admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection for CREATE/DROP DATABASE."""
    return psycopg.connect(libpq_url(url), autocommit=True)


# How long cloning a template may keep failing because sessions are on it. PostgreSQL itself
# waits up to 5 s for them to leave on each attempt.
CLONE_DEADLINE_S = 60.0


def create_database(server_url: str, name: str, template: str | None = None) -> str:
    """Create database `name` (optionally a copy of `template`) and return its URL."""
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    deadline = time.monotonic() + CLONE_DEADLINE_S
    with admin(server_url) as conn:
        while True:
            try:
                conn.execute(query)
                break
            except psycopg.errors.ObjectInUse:
                if template is None or time.monotonic() > deadline:
                    raise
                # A sealed template (see seal_template) can still have sessions on it: a
                # TimescaleDB scheduler started before it was sealed, or one the extension
                # starts on it for this very CREATE DATABASE. Only those are ours to end.
                if not _allows_connections(conn, template):
                    _end_sessions(conn, template)
    return with_database(server_url, name)


def seal_template(server_url: str, name: str) -> None:
    """Make `name` a template nobody can connect to, and end the sessions already on it."""
    # CREATE DATABASE refuses to copy a database with sessions on it, and TimescaleDB's
    # launcher keeps a scheduler session in every database that allows connections and is
    # not a template (src/loader/bgw_launcher.c, populate_database_htab).
    with admin(server_url) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
                sql.Identifier(name)
            )
        )
        _end_sessions(conn, name)


def drop_database(server_url: str, name: str) -> None:
    """Drop database `name` (a template too), closing any connection left to it."""
    with admin(server_url) as conn:
        row = conn.execute(
            "SELECT datistemplate FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if row is not None and row[0]:
            # PostgreSQL refuses to drop a template; connections stay refused meanwhile
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(name))
            )
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _allows_connections(conn: psycopg.Connection[tuple[object, ...]], name: str) -> bool:
    row = conn.execute(
        "SELECT datallowconn FROM pg_database WHERE datname = %s", (name,)
    ).fetchone()
    return row is None or bool(row[0])


def _end_sessions(conn: psycopg.Connection[tuple[object, ...]], name: str) -> None:
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )


def unique_name(prefix: str) -> str:
    """A database name no other test run uses."""
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


@contextmanager
def migrated_template(server_url: str) -> Iterator[str]:
    """A database migrated to head on plain PostgreSQL storage, sealed, used as a template."""
    name = unique_name("ioc_tmpl")
    # From template0: no extension a server added to template1 (the TimescaleDB image installs
    # timescaledb there) comes along, so copies of it give the scheduler nothing to run.
    url = create_database(server_url, name, template="template0")
    try:
        migrate.upgrade(url, timescale="off")
        seal_template(server_url, name)
        yield name
    finally:
        drop_database(server_url, name)
