"""The per-test databases: the template is cloned even with sessions on it, as TimescaleDB has."""

from __future__ import annotations

import contextlib
import os
import threading
from types import TracebackType

import psycopg
import pytest
from psycopg import sql

from ioc.db import libpq_url, with_database
from tests.support.ingest import query, wait_until
from tests.support.services import (
    admin,
    create_database,
    drop_database,
    migrated_template,
    unique_name,
)

POLL_S = 0.05


class Squatter:
    """Stands in for TimescaleDB's scheduler: a session in each new database named `prefix`*."""

    # Like the scheduler, it comes back when its session is ended, as long as it may connect.

    def __init__(self, server_url: str, prefix: str) -> None:
        self._server_url = server_url
        self._pattern = prefix.replace("_", r"\_") + "%"
        self._stop = threading.Event()
        self._sessions: dict[str, psycopg.Connection[tuple[object, ...]]] = {}
        self.tried: set[str] = set()  # databases it attempted to connect to at least once
        self._thread = threading.Thread(target=self._run, name="squatter")

    def _databases(self, conn: psycopg.Connection[tuple[object, ...]]) -> set[str]:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (self._pattern,)
        ).fetchall()
        return {str(r[0]) for r in rows}

    def _run(self) -> None:
        with admin(self._server_url) as watch:
            before = self._databases(watch)  # other tests' databases are left alone
            while not self._stop.wait(POLL_S):
                for name in sorted(self._databases(watch) - before):
                    self._occupy(name)

    def _occupy(self, name: str) -> None:
        held = self._sessions.get(name)
        if held is not None:
            try:
                held.execute("SELECT 1")
                return
            except psycopg.OperationalError:  # ended from outside: come back, as a restart
                held.close()
                del self._sessions[name]
        url = libpq_url(with_database(self._server_url, name))
        # refused (the point of sealing) or already dropped
        with contextlib.suppress(psycopg.OperationalError):
            self._sessions[name] = psycopg.connect(url, autocommit=True, connect_timeout=5)
        self.tried.add(name)

    def __enter__(self) -> Squatter:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(30)
        for conn in self._sessions.values():
            conn.close()


def _exists(server_url: str, name: str) -> bool:
    return bool(query(server_url, "SELECT 1 FROM pg_database WHERE datname = %s", (name,)))


def test_the_template_is_cloned_although_a_session_joined_it_during_setup(pg_server: str) -> None:
    with (
        Squatter(pg_server, f"ioc_tmpl_{os.getpid()}_") as squatter,
        migrated_template(pg_server) as template,
    ):
        wait_until(lambda: template in squatter.tried, what="a session on the template")
        clone = unique_name("ioc_clone")
        url = create_database(pg_server, clone, template=template)
        try:
            assert query(url, "SELECT count(*) FROM alembic_version") == [(1,)]
        finally:
            drop_database(pg_server, clone)
    assert not _exists(pg_server, template)  # the sealed template was dropped too


def test_the_template_refuses_connections(pg_server: str, template_db: str) -> None:
    flags = "SELECT datistemplate, datallowconn FROM pg_database WHERE datname = %s"
    assert query(pg_server, flags, (template_db,)) == [(True, False)]
    url = libpq_url(with_database(pg_server, template_db))
    with (
        pytest.raises(psycopg.OperationalError, match="not currently accepting connections"),
        psycopg.connect(url, connect_timeout=5),
    ):
        pass


def test_sessions_left_on_a_sealed_template_are_ended_to_clone_it(pg_server: str) -> None:
    name = unique_name("ioc_sealed")
    url = create_database(pg_server, name, template="template0")
    clone = unique_name("ioc_clone")
    try:
        with psycopg.connect(libpq_url(url), autocommit=True) as left:
            # sealed without ending `left`: as a scheduler the extension starts after sealing
            with admin(pg_server) as conn:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")
                    .format(sql.Identifier(name))
                )  # fmt: skip
            create_database(pg_server, clone, template=name)
            with pytest.raises(psycopg.OperationalError):
                left.execute("SELECT 1")
        assert _exists(pg_server, clone)
    finally:
        drop_database(pg_server, clone)
        drop_database(pg_server, name)
    assert not _exists(pg_server, name)
