"""Exactly once under faults: a worker killed, the broker restarted, the database restarted.

Each test runs `ioc ingest` as a real process and publishes a stream of readings through a real
broker in three parts: a first part that is stored normally, a middle part during which the fault
strikes, and a last part after recovery. It then checks the stored readings against what was
published, by count and by a checksum over every reading.

A fault must strike while the worker holds messages it received but has not yet committed and
acknowledged. Waiting for "the first readings stored" races with a fast worker (it may store the
whole stream before the fault), so the tests make that state certain instead: they hold an
EXCLUSIVE lock on `reading`, which blocks the worker's next batch inside its transaction, and
strike once PostgreSQL shows the worker waiting for that lock.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from ioc.embedded_broker import EmbeddedBroker
from ioc.embedded_pg import EmbeddedPostgres, free_port
from ioc.runtime import ensure_database
from tests.support.cli import IOC, clean_env
from tests.support.ingest import (
    Publisher,
    lock_waiters,
    readings_checksum,
    stored_checksum,
    tables_locked,
    unique,
    wait_until,
)
from tests.support.services import shared_tmp

pytestmark = pytest.mark.timeout(300)

FIRST, MIDDLE, LAST = 250, 2000, 250  # messages in each part of the stream
READINGS_PER_MESSAGE = 4
METRICS = ("salinity", "water_level", "rainfall_24h", "supply_chloride")

Published = list[tuple[str, str, float, float]]


@contextmanager
def worker(
    db_url: str, mqtt_url: str, client_id: str, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`ioc ingest` as a child process with small batches (so a fault lands mid-stream)."""
    env = clean_env(
        IOC_DATABASE_URL=db_url,
        IOC_MQTT_URL=mqtt_url,
        IOC_PROFILE="mekong",
        IOC_INGEST_CLIENT_ID=client_id,
        IOC_INGEST_MAX_BATCH_ROWS="200",
        IOC_INGEST_STATS_INTERVAL_S="5",
        IOC_DATA_DIR=str(log.parent),
    )
    with log.open("ab") as out:
        proc = subprocess.Popen([IOC, "ingest"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def publish_stream(mqtt_url: str, prefix: str, first: int, count: int) -> Published:
    """Publish `count` messages of 4 readings each (10 sources); return every reading."""
    published: Published = []
    base_ms = int(datetime.now(UTC).timestamp() * 1000) - 3_600_000
    with Publisher(mqtt_url) as pub:
        for n in range(first, first + count):
            source = f"{prefix}-{n % 10}"
            ts = base_ms + n * 100
            values = {m: round((n * 7 + i) % 100 / 10, 2) for i, m in enumerate(METRICS)}
            pub.publish(
                f"ioc/v1/water/{source}/telemetry",
                orjson.dumps({"ts": ts, "values": values}),
            )
            published.extend((source, m, float(ts), v) for m, v in values.items())
    return published


def _stored(db_url: str, prefix: str) -> int:
    return stored_checksum(db_url, prefix)[0]


def _wait_ready(db_url: str, log: Path) -> None:
    wait_until(
        lambda: "ingest worker running" in log.read_text(errors="replace"),
        timeout_s=60,
        what=f"the worker to start (log {log})",
    )


def _wait_stored(db_url: str, prefix: str, count: int, what: str) -> None:
    wait_until(lambda: _stored(db_url, prefix) >= count, timeout_s=120, what=what)


def _worker_pid(log: Path) -> int:
    """The pid of the worker process that last logged "ingest worker running"."""
    found = re.findall(r"ingest worker running .*\bpid=(\d+)", log.read_text(errors="replace"))
    assert found, f"no worker pid in {log}"
    return int(found[-1])


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie until the pool reaps it: dead all the same
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")


def test_worker_killed_mid_stream_then_restarted(db_url: str, broker: EmbeddedBroker) -> None:
    prefix, client_id = unique("kill"), unique("ingest")
    log = shared_tmp("ioc-fault-") / "worker.log"
    with worker(db_url, broker.url, client_id, log):
        _wait_ready(db_url, log)
        published = publish_stream(broker.url, prefix, 0, FIRST)
        _wait_stored(db_url, prefix, len(published), "the first part")
        with tables_locked(db_url, "reading"):
            published += publish_stream(broker.url, prefix, FIRST, MIDDLE)
            wait_until(lambda: lock_waiters(db_url) > 0, what="the worker to block mid-batch")
            pid = _worker_pid(log)
            os.kill(pid, signal.SIGKILL)  # no chance to commit or ack what it holds
            wait_until(lambda: _gone(pid), what="the worker to die")
            assert _stored(db_url, prefix) == FIRST * READINGS_PER_MESSAGE
        # the pool of `ioc ingest` starts a new worker on the same session
        wait_until(lambda: _worker_pid(log) != pid, timeout_s=60, what="a new worker")
        _wait_stored(db_url, prefix, len(published), "the middle part, redelivered")
        published += publish_stream(broker.url, prefix, FIRST + MIDDLE, LAST)
        _wait_stored(db_url, prefix, len(published), "the last part")
    assert stored_checksum(db_url, prefix) == readings_checksum(published)


def test_broker_restarted_mid_stream(db_url: str, broker: EmbeddedBroker) -> None:
    prefix, client_id = unique("brk"), unique("ingest")
    log = shared_tmp("ioc-fault-") / "worker.log"
    with worker(db_url, broker.url, client_id, log):
        _wait_ready(db_url, log)
        published = publish_stream(broker.url, prefix, 0, FIRST)
        _wait_stored(db_url, prefix, len(published), "the first part")
        with tables_locked(db_url, "reading"):
            published += publish_stream(broker.url, prefix, FIRST, MIDDLE)
            wait_until(lambda: lock_waiters(db_url) > 0, what="the worker to block mid-batch")
            broker.stop()  # a clean stop: mosquitto writes its persistence file
            broker.start()  # same port, same store
        # The worker's batch now commits, but its acknowledgements belonged to the old
        # connection: the broker redelivers those messages, and the writer stores them once.
        # Mosquitto 2.0 drops a message for a shared subscription whose sessions were
        # restored from its store while none of them is connected yet (see the README), so
        # the last part goes out once the worker is back; what the broker held at the
        # restart (queued and in flight) must all arrive.
        wait_until(
            lambda: log.read_text(errors="replace").count("connected to broker") >= 2,
            what="the worker to reconnect",
        )
        published += publish_stream(broker.url, prefix, FIRST + MIDDLE, LAST)
        _wait_stored(db_url, prefix, len(published), "every part")
    assert stored_checksum(db_url, prefix) == readings_checksum(published)


def test_database_restarted_mid_stream(broker: EmbeddedBroker) -> None:
    data_dir = shared_tmp("ioc-fault-pg-")
    port = free_port()
    prefix, client_id = unique("db"), unique("ingest")
    log = shared_tmp("ioc-fault-") / "worker.log"
    server = EmbeddedPostgres(data_dir, port=port)
    server.start()
    try:
        db_url = ensure_database(server.url, "ioc")
        with worker(db_url, broker.url, client_id, log):
            _wait_ready(db_url, log)
            published = publish_stream(broker.url, prefix, 0, FIRST)
            _wait_stored(db_url, prefix, len(published), "the first part")
            server.stop()
            # The middle part arrives while the database is down: the worker must keep it.
            published += publish_stream(broker.url, prefix, FIRST, MIDDLE)
            wait_until(
                lambda: "database write failed" in log.read_text(errors="replace"),
                what="the worker to notice the outage",
            )
            server = EmbeddedPostgres(data_dir, port=port)
            server.start()
            published += publish_stream(broker.url, prefix, FIRST + MIDDLE, LAST)
            _wait_stored(db_url, prefix, len(published), "every part")
        assert stored_checksum(db_url, prefix) == readings_checksum(published)
    finally:
        server.stop()
        if os.environ.get("IOC_KEEP_FAULT_DATA") is None:
            shutil.rmtree(data_dir, ignore_errors=True)
