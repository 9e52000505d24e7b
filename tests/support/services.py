"""Real services for the tests: PostgreSQL, an MQTT broker, and databases cloned per test."""

from __future__ import annotations

import os
import tempfile
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


def create_database(server_url: str, name: str, template: str | None = None) -> str:
    """Create database `name` (optionally from a template) and return its URL."""
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with admin(server_url) as conn:
        conn.execute(query)
    return with_database(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    """Drop database `name`, closing any connection left to it."""
    with admin(server_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def unique_name(prefix: str) -> str:
    """A database name no other test run uses."""
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


@contextmanager
def migrated_template(server_url: str) -> Iterator[str]:
    """A database migrated to head on plain PostgreSQL storage, used as a template."""
    name = unique_name("ioc_tmpl")
    url = create_database(server_url, name)
    try:
        migrate.upgrade(url, timescale="off")
        yield name
    finally:
        drop_database(server_url, name)
