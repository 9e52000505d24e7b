"""The transition log: every alert event on one log line, in commit order, from a real database;
and `ioc alerts` prints it."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from alerts import actions
from alerts.notify import Dispatcher
from alerts.transitions import TransitionLog
from ingest.items import Item
from ioc.db import libpq_url
from ioc.logs import KeyValueFormatter
from tests.support.alerts import engine_writer, feed
from tests.support.cli import IOC, clean_env
from tests.support.ingest import make_item, query, sync, unique, wait_until

pytestmark = pytest.mark.timeout(120)

T0 = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class Lines(logging.Handler):
    """Keeps every record of a logger formatted as `ioc.logs` formats it on the console."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(KeyValueFormatter(FORMAT))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, Lines]]:
    logger = logging.getLogger(unique("test.transitions"))
    handler = Lines()
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)


def salinity(source: str, value: float, minutes: range) -> Item:
    body = [
        {"ts": int((T0 + timedelta(minutes=m)).timestamp() * 1000), "values": {"salinity": value}}
        for m in minutes
    ]
    return make_item(f"ioc/v1/water/{source}/telemetry", body)


def log_dispatcher(db_url: str, logger: logging.Logger) -> Dispatcher:
    return Dispatcher(db_url, TransitionLog(logger), notes=True, record=False)


def test_opened_acknowledged_resolved_are_three_lines(
    synced_db: str, logged: tuple[logging.Logger, Lines]
) -> None:
    logger, handler = logged
    dispatcher = log_dispatcher(synced_db, logger)
    try:
        assert dispatcher.dispatch_pending() == 0  # a new channel starts from now
        with engine_writer(synced_db) as writer:
            feed(writer, salinity("tram-log1", 1.6, range(16)))  # warning >= 1 ‰ for 15 min
        ((alert_id,),) = query(synced_db, "SELECT id FROM alert WHERE source_id = 'tram-log1'")
        with psycopg.connect(libpq_url(synced_db)) as conn:
            actions.acknowledge(conn, alert_id=alert_id, actor="key:abc:ca 1")
        with psycopg.connect(libpq_url(synced_db)) as conn:
            actions.resolve(conn, alert_id=alert_id, actor="key:abc:ca 1", note="đã xử lý")
        assert dispatcher.dispatch_pending() == 3
    finally:
        dispatcher.close_connection()
    assert len(handler.lines) == 3
    assert all("\n" not in line for line in handler.lines)
    opened, acknowledged, resolved = handler.lines
    common = f"alert={alert_id} severity=warning"
    assert f"alert opened {common} status=open sector=water source=tram-log1 value=1.6" in opened
    assert "by=system" in opened
    assert 'title="Salinity 1.6 ‰ above warning 1 ‰ at tram-log1"' in opened
    assert f"alert acknowledged {common} status=acknowledged" in acknowledged
    assert 'by="key:abc:ca 1"' in acknowledged
    assert f"alert resolved {common} status=resolved" in resolved
    assert 'note="đã xử lý"' in resolved
    # a log records no deliveries; its cursor is where it stopped
    assert query(synced_db, "SELECT count(*) FROM alert_delivery") == [(0,)]
    newest = query(synced_db, "SELECT max(seq) FROM alert_event")[0][0]
    assert query(synced_db, "SELECT last_id FROM notify_cursor WHERE channel = 'log'") == [
        (newest,)
    ]


def test_severity_changes_and_notes_are_logged_in_commit_order(
    synced_db: str, logged: tuple[logging.Logger, Lines]
) -> None:
    """Raised and lowered as the readings cross the critical level and fall back; a comment,
    which outside receivers never get, is in the log too."""
    logger, handler = logged
    dispatcher = log_dispatcher(synced_db, logger)
    try:
        dispatcher.dispatch_pending()
        with engine_writer(synced_db) as writer:
            feed(
                writer,
                salinity("tram-log2", 1.5, range(16)),  # warning after 15 minutes
                salinity("tram-log2", 4.5, range(16, 32)),  # critical after 15 more
                salinity("tram-log2", 2.0, range(32, 34)),  # below 3.5: back to warning
            )
        ((alert_id,),) = query(synced_db, "SELECT id FROM alert WHERE source_id = 'tram-log2'")
        with psycopg.connect(libpq_url(synced_db)) as conn:
            actions.comment(conn, alert_id=alert_id, actor="key:abc:ca 2", text="gọi trạm")
        with engine_writer(synced_db) as writer:
            feed(writer, salinity("tram-log2", 0.5, range(34, 36)))  # below 0.8: resolved
        assert dispatcher.dispatch_pending() == 5
    finally:
        dispatcher.close_connection()
    kinds = [line.split(" alert ", 1)[1].split(" ", 1)[0] for line in handler.lines]
    assert kinds == ["opened", "raised", "lowered", "commented", "resolved"]
    raised, lowered, commented = handler.lines[1:4]
    assert "severity=critical" in raised and "value=4.5" in raised
    assert "severity=warning" in lowered and "value=2.0" in lowered
    assert 'note="gọi trạm"' in commented


def test_an_event_committed_late_is_logged_after_the_ones_before_it_committed(
    synced_db: str, logged: tuple[logging.Logger, Lines]
) -> None:
    """Commit order, not id order: an acknowledgement held in an open transaction is logged
    once it commits, after the one that committed first."""
    logger, handler = logged
    with engine_writer(synced_db) as writer:
        feed(writer, salinity("tram-log3", 1.5, range(16)), salinity("tram-log4", 1.5, range(16)))
    first, second = (
        row[0]
        for row in query(
            synced_db,
            "SELECT id FROM alert WHERE source_id IN ('tram-log3', 'tram-log4') ORDER BY source_id",
        )
    )
    dispatcher = log_dispatcher(synced_db, logger)
    try:
        dispatcher.dispatch_pending()
        slow = psycopg.connect(libpq_url(synced_db))
        try:
            actions.acknowledge(slow, alert_id=first, actor="key:x:a")  # not committed yet
            with psycopg.connect(libpq_url(synced_db)) as quick:
                actions.acknowledge(quick, alert_id=second, actor="key:x:b")
            assert dispatcher.dispatch_pending() == 1
            slow.commit()
        finally:
            slow.close()
        assert dispatcher.dispatch_pending() == 1
    finally:
        dispatcher.close_connection()
    assert len(handler.lines) == 2
    assert f"alert={second} " in handler.lines[0]
    assert f"alert={first} " in handler.lines[1]


def test_ioc_alerts_logs_each_transition_on_its_console(db_url: str) -> None:
    sync(db_url)
    env = clean_env(IOC_DATABASE_URL=db_url, IOC_PROFILE="mekong", IOC_ALERTS_MQTT="false")
    proc = subprocess.Popen(
        [IOC, "alerts"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        wait_until(
            lambda: (
                query(db_url, "SELECT count(*) FROM notify_cursor WHERE channel = 'log'") == [(1,)]
            ),
            what="the transition log to start",
        )
        with engine_writer(db_url) as writer:
            feed(writer, salinity("tram-log5", 2.0, range(16)))
        line = wait_until(
            lambda: next((x for x in lines if "alert opened" in x), None),
            what="the transition on the console",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader.join(10)
        proc.stderr.close()
    assert proc.returncode == 0
    assert " INFO ioc.alerts.transitions alert opened alert=" in line
    assert "source=tram-log5" in line and "severity=warning" in line
