"""Session-wide services and per-test databases; see tests/support/services.py."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from ioc.db import make_engine
from ioc.embedded_broker import EmbeddedBroker
from tests.support.services import (
    create_database,
    drop_database,
    migrated_template,
    missing,
    mqtt_broker,
    postgres_server,
    shared_tmp,
    unique_name,
)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """URL of the PostgreSQL server the tests use (any database on it)."""
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> Iterator[str]:
    """Name of a database migrated to head, cloned for each test that needs one."""
    with migrated_template(pg_server) as name:
        yield name


@pytest.fixture
def db_url(pg_server: str, template_db: str) -> Iterator[str]:
    """A fresh migrated database for this test alone, dropped afterwards."""
    name = unique_name("ioc_test")
    url = create_database(pg_server, name, template=template_db)
    try:
        yield url
    finally:
        drop_database(pg_server, name)


@pytest.fixture
def synced_db(db_url: str) -> str:
    """This test's database with the test profile's sectors and seeded alert rules."""
    from tests.support.ingest import sync

    sync(db_url)
    return db_url


@pytest.fixture
def empty_db_url(pg_server: str) -> Iterator[str]:
    """A fresh database with no tables, for migration tests."""
    name = unique_name("ioc_empty")
    url = create_database(pg_server, name)
    try:
        yield url
    finally:
        drop_database(pg_server, name)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An async engine on this test's database."""
    eng = make_engine(db_url)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture(scope="session")
def mqtt_url() -> Iterator[str]:
    """URL of a real MQTT broker."""
    with mqtt_broker() as url:
        yield url


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    """A Mosquitto of this test's own (persistence on, as in docker/), so it may restart it."""
    if shutil.which("mosquitto") is None:
        missing("the mosquitto binary is needed to restart a broker")
    with EmbeddedBroker(shared_tmp("ioc-test-own-mqtt-"), kind="mosquitto") as b:
        yield b
