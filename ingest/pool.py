"""The worker pool of `ioc ingest`: N supervised worker processes, their persistent sessions
laid out before they start, and sessions an earlier, larger pool left behind drained into the
database and ended.

Why sessions need care (Mosquitto 2.0, the default broker): a persistent session keeps
collecting messages for its subscriptions while its client is away, for as long as the
session lives; a shared subscription keeps dealing messages to offline members; and after a
broker restart a shared subscription gets nothing until a member reconnects. So the default
layout (`partitioned`) uses plain subscriptions only, and every session no longer in the
layout is drained through the normal write path and then ended.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import psycopg
from psycopg.conninfo import make_conninfo

from ingest.consumer import Consumer
from ingest.topics import Assignment
from ingest.worker import (
    assignments_for,
    client_id_for,
    consumer_config,
    rules_for,
    stop_on_signals,
    worker_command,
    writer_for,
)
from ioc.catalogue import Profile
from ioc.db import libpq_url
from ioc.errors import BrokerError
from ioc.mqtt import touch_session
from ioc.settings import Settings

log = logging.getLogger("ioc.ingest.pool")

MAX_WORKERS: Final = 64
SUPERVISE_TICK_S: Final = 0.1
# restart delays: at once, then 1 s doubling up to the cap; reset once a worker ran this long
RESTART_BACKOFF_MAX_S: Final = 30.0
HEALTHY_RUN_S: Final = 60.0
STOP_GRACE_S: Final = 40.0
BROKER_RETRY_MAX_S: Final = 5.0
# a retired session is ended once nothing arrived for this long with everything committed
# (the broker sends a queued message as soon as the one before was acknowledged)
RETIRE_QUIET_S: Final = 3.0
RETIRE_RETRY_MAX_S: Final = 60.0
LOCK_CHECK_S: Final = 5.0
STANDBY_POLL_S: Final = 2.0
# the lock's connection notices a database host gone silent within about 10 s
LOCK_CONNECT: Final = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


def restart_delay(failures: int) -> float:
    """Seconds before restarting a worker that exited `failures` times in a row."""
    if failures <= 1:
        return 0.0
    return min(RESTART_BACKOFF_MAX_S, 2.0 ** (failures - 2))


# -- sessions ------------------------------------------------------------------------------


def prepare_sessions(
    settings: Settings, mqtt_url: str, assignments: Sequence[Assignment], stop: threading.Event
) -> bool:
    """Subscribe every worker's session to its filters before any worker starts, so that no
    worker unsubscribes a filter (or the catch-all leaves a sector) before its new owner holds
    it. Retries with capped back-off while the broker is unreachable; False if stopped."""
    for index, assignment in enumerate(assignments):
        client_id = client_id_for(settings, index)
        delay = 1.0
        while True:
            try:
                touch_session(
                    mqtt_url,
                    client_id,
                    session_expiry_s=settings.ingest_session_expiry_s,
                    subscribe=assignment.filters,
                    protocol=settings.mqtt_protocol,
                )
                break
            except BrokerError as exc:
                log.warning(
                    "cannot lay out the worker sessions yet; retrying",
                    extra={"client_id": client_id, "error": str(exc), "retry_in_s": delay},
                )
            if stop.wait(delay):
                return False
            delay = min(delay * 2, BROKER_RETRY_MAX_S)
    return True


def find_sessions(settings: Settings, mqtt_url: str, first_index: int) -> list[str]:
    """Client ids `{id}-{first_index}`, `{id}-{first_index + 1}`, … whose sessions exist on
    the broker, up to the first that does not (pools number their workers from 0)."""
    found = []
    for index in range(first_index, MAX_WORKERS):
        client_id = client_id_for(settings, index)
        present = touch_session(
            mqtt_url,
            client_id,
            session_expiry_s=settings.ingest_session_expiry_s,
            protocol=settings.mqtt_protocol,
        )
        if not present:
            break
        found.append(client_id)
    return found


@dataclass
class Retired:
    """What retiring one session did."""

    client_id: str
    existed: bool
    messages: int = 0
    ended: bool = False


def retire(
    settings: Settings,
    *,
    database_url: str,
    mqtt_url: str,
    profile: Profile,
    client_id: str,
    stop: threading.Event,
    quiet_s: float = RETIRE_QUIET_S,
) -> Retired:
    """Take a session's backlog through the real write path (decode, validate, commit with the
    alert engine, acknowledge), then end the session; stopped early, it keeps the session."""
    # every filter any layout subscribes: the session takes nothing new while it drains
    every = assignments_for(settings, profile, 1)[0]
    drain = Assignment(filters=(), stale=tuple(sorted({*every.filters, *every.stale})))
    writer = writer_for(settings, database_url)
    consumer = Consumer(
        consumer_config(settings, mqtt_url, client_id, drain),
        rules=rules_for(settings, profile),
        writer=writer,
    )
    writer.start()
    consumer.start_background()
    empty = False
    try:
        seen, quiet_since = -1, time.monotonic()
        while not stop.wait(0.1):
            arrived = consumer.received + consumer.intercepted
            busy = writer.pending()[0] > 0 or not consumer.subscribed or not consumer.flushed
            now = time.monotonic()
            if busy or arrived != seen:
                seen, quiet_since = arrived, now
            elif now - quiet_since >= quiet_s:
                empty = True
                break
    finally:
        drained = consumer.stop(end_session=empty)
    existed = bool(consumer.session_present)
    result = Retired(client_id, existed, consumer.received, empty and drained)
    log.info(
        "retired an ingest session" if result.ended else "ingest session kept (not drained)",
        extra={"client_id": client_id, "existed": existed, "messages": consumer.received},
    )
    return result


def retire_stale(
    settings: Settings,
    *,
    database_url: str,
    mqtt_url: str,
    profile: Profile,
    first_index: int,
    stop: threading.Event,
) -> list[Retired]:
    """Retire the sessions of workers `first_index` and up that an earlier pool left, highest
    first (so an interrupted run leaves a prefix the next one finds); retries until done."""
    delay = 1.0
    done: list[Retired] = []
    while not stop.is_set():
        try:
            stale = find_sessions(settings, mqtt_url, first_index)
            for client_id in reversed(stale):
                if stop.is_set():
                    return done
                log.info(
                    "retiring a session of an earlier, larger pool", extra={"client_id": client_id}
                )
                result = retire(
                    settings,
                    database_url=database_url,
                    mqtt_url=mqtt_url,
                    profile=profile,
                    client_id=client_id,
                    stop=stop,
                )
                done.append(result)
                if not result.ended:
                    raise BrokerError(f"session {client_id!r} not drained")
            return done
        except BrokerError as exc:
            log.warning(
                "retiring earlier sessions failed; retrying",
                extra={"error": str(exc), "retry_in_s": delay},
            )
        if stop.wait(delay):
            break
        delay = min(delay * 2, RETIRE_RETRY_MAX_S)
    return done


# -- one pool per client id ----------------------------------------------------------------


class PoolLock:
    """A PostgreSQL advisory lock per IOC_INGEST_CLIENT_ID: of several `ioc ingest` with the
    same client ids (a scaled container, a second start by hand), one runs its workers and
    the others stand by, instead of taking each other's sessions over."""

    def __init__(self, database_url: str, client_id: str) -> None:
        self._conninfo = make_conninfo(libpq_url(database_url), **LOCK_CONNECT)
        self.client_id = client_id
        digest = hashlib.sha256(f"ioc-ingest-pool:{client_id}".encode()).digest()
        self.key = int.from_bytes(digest[:8], "big", signed=True)
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    def _try(self) -> bool:
        self.release()
        conn = psycopg.connect(self._conninfo, autocommit=True)
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        if row is not None and row[0]:
            self._conn = conn
            return True
        conn.close()
        return False

    def acquire(self, stop: threading.Event) -> bool:
        """Wait until this process holds the lock (True) or `stop` is set (False)."""
        told = False
        while not stop.is_set():
            try:
                if self._try():
                    return True
                if not told:
                    log.warning(
                        "another `ioc ingest` with these client ids runs on this database: "
                        "standing by to take over",
                        extra={"client_id": self.client_id},
                    )
                    told = True
            except psycopg.Error as exc:
                log.warning(
                    "cannot reach the database for the pool lock; retrying",
                    extra={"error": str(exc).strip().splitlines()[0] if str(exc) else ""},
                )
            stop.wait(STANDBY_POLL_S)
        return False

    def still_held(self) -> bool:
        """False once another process took the lock (after this one's connection dropped);
        True while it is held, or while the database cannot say."""
        try:
            if self._conn is not None and not self._conn.closed:
                self._conn.execute("SELECT 1")
                return True
        except psycopg.Error:
            pass
        try:
            return self._try()
        except psycopg.Error:
            return True  # nobody else can take it while the database is unreachable

    def release(self) -> None:
        """Give the lock up (closing its connection)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


# -- supervision ---------------------------------------------------------------------------


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    next_start: float = 0.0


Spawn = Callable[[int], "subprocess.Popen[bytes]"]  # starts worker i


def run_pool(
    settings: Settings,
    *,
    database_url: str,
    mqtt_url: str,
    profile: Profile,
    workers: int,
    stop: threading.Event | None = None,
    spawn: Spawn | None = None,
) -> None:
    """Run `workers` worker processes until `stop` (SIGTERM/SIGINT when None): lay out their
    sessions, start them, restart any that exits (at once, then with back-off), and retire
    sessions of workers beyond `workers` in the background."""
    assignments = assignments_for(settings, profile, workers)  # ConfigError before anything
    stop = stop or stop_on_signals()
    spawn = spawn or (lambda i: subprocess.Popen(worker_command(i, workers)))  # noqa: S603
    lock = PoolLock(database_url, settings.ingest_client_id)
    while not stop.is_set():
        if not lock.acquire(stop):
            return
        try:
            lost = _run_locked(
                settings,
                database_url=database_url,
                mqtt_url=mqtt_url,
                profile=profile,
                assignments=assignments,
                stop=stop,
                spawn=spawn,
                lock=lock,
            )
        finally:
            lock.release()
        if lost:
            log.error(
                "another `ioc ingest` took the pool over; this one stands by",
                extra={"client_id": settings.ingest_client_id},
            )


def _run_locked(
    settings: Settings,
    *,
    database_url: str,
    mqtt_url: str,
    profile: Profile,
    assignments: Sequence[Assignment],
    stop: threading.Event,
    spawn: Spawn,
    lock: PoolLock,
) -> bool:
    """The pool while it holds the lock; True when the lock was lost."""
    if not prepare_sessions(settings, mqtt_url, assignments, stop):
        return False
    workers = len(assignments)
    done = threading.Event()  # set as this run ends (stop, lost lock): ends the retirement
    retirer = threading.Thread(
        target=retire_stale,
        kwargs={
            "settings": settings,
            "database_url": database_url,
            "mqtt_url": mqtt_url,
            "profile": profile,
            "first_index": workers,
            "stop": done,
        },
        name="ingest-retire",
        daemon=True,
    )
    lost = threading.Event()

    def watch_lock() -> None:
        # on a thread of its own: a database that hangs must not hold up the restarts
        while not done.wait(LOCK_CHECK_S):
            if not lock.still_held():
                lost.set()
                return

    watcher = threading.Thread(target=watch_lock, name="ingest-pool-lock", daemon=True)
    slots = [_Slot(i) for i in range(workers)]
    log.info(
        "ingest pool starting",
        extra={
            "workers": workers,
            "client_id": settings.ingest_client_id,
            "subscription": settings.ingest_subscription,
        },
    )
    try:
        retirer.start()
        watcher.start()
        while not stop.wait(SUPERVISE_TICK_S) and not lost.is_set():
            now = time.monotonic()
            for slot in slots:
                _tend(slot, now, spawn)
    finally:
        done.set()
        _stop_workers([s.proc for s in slots if s.proc is not None])
        retirer.join(STOP_GRACE_S)
        watcher.join(STOP_GRACE_S)
    return lost.is_set()


def _tend(slot: _Slot, now: float, spawn: Spawn) -> None:
    """Start, or restart with back-off, the worker of one slot."""
    proc = slot.proc
    if proc is not None:
        code = proc.poll()
        if code is None:
            return
        ran_s = now - slot.started
        slot.failures = 1 if ran_s >= HEALTHY_RUN_S else slot.failures + 1
        delay = restart_delay(slot.failures)
        log.error(
            "ingest worker exited; restarting",
            extra={
                "worker": slot.index,
                "code": code,
                "ran_s": round(ran_s, 1),
                "restart_in_s": delay,
            },
        )
        slot.proc, slot.next_start = None, now + delay
    if now >= slot.next_start:
        slot.proc = spawn(slot.index)
        slot.started = now


def _stop_workers(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
