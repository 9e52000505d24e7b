"""`ioc ingest` as a pool on a Mosquitto of the test's own: resizing, broker restarts, a broker
down at start, killed workers, a second pool with the same client ids. Every test publishes
through the real broker and compares what the database holds with what was published."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from ingest.pool import restart_delay
from ingest.topics import PLAIN_SUBSCRIPTION, assign, sector_filter, shared_filter
from ingest.worker import run_worker
from ioc.catalogue import load_profile
from ioc.embedded_broker import EmbeddedBroker
from ioc.embedded_pg import free_port
from ioc.mqtt import touch_session
from ioc.settings import Settings
from tests.support.cli import IOC, clean_env, run_ioc
from tests.support.ingest import (
    Publisher,
    query,
    readings_checksum,
    stored_checksum,
    sync,
    unique,
    wait_until,
)
from tests.support.services import missing, shared_tmp

pytestmark = pytest.mark.timeout(300)

PROFILE = load_profile("mekong")
# a metric of every sector of the profile: readings spread over every worker's partition
METRIC = {
    "water": "salinity",
    "citizen_reports": "open_reports",
    "environment": "aqi",
    "traffic": "flow",
    "health": "emergency_waiting",
    "public_services": "overdue_dossiers",
    "security": "crowd_alerts",
    "hotline": "calls",
}
Published = list[tuple[str, str, float, float]]


class Pool:
    """`ioc ingest --workers N` as a child process, its log in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def text(self) -> str:
        """Everything logged so far."""
        return self.log.read_text(errors="replace")

    def start(self, workers: int) -> None:
        """Start the pool; return at once."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [IOC, "ingest", "--workers", str(workers)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_running(self, count: int, timeout_s: float = 60) -> None:
        """Wait until `count` worker starts were logged in all."""
        wait_until(
            lambda: self.text().count("ingest worker running") >= count,
            timeout_s=timeout_s,
            what=f"{count} worker start(s) (log {self.log})",
        )

    def stop(self) -> None:
        """SIGTERM and wait; the pool must exit cleanly."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.returncode == 0, self.text()[-3000:]

    def worker_pids(self) -> list[int]:
        """Pids of the workers this pool started, as they logged them."""
        pids = []
        for line in self.text().splitlines():
            if "ingest worker running" in line:
                fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
                pids.append(int(fields["pid"]))
        return pids


@contextmanager
def pool(db_url: str, mqtt_url: str, client_id: str, **extra: str) -> Iterator[Pool]:
    """A Pool (not started) whose processes are stopped when the block ends."""
    log = shared_tmp("ioc-pool-") / "ingest.log"
    env = clean_env(
        IOC_DATABASE_URL=db_url,
        IOC_MQTT_URL=mqtt_url,
        IOC_PROFILE="mekong",
        IOC_INGEST_CLIENT_ID=client_id,
        IOC_INGEST_STATS_INTERVAL_S="1",
        IOC_DATA_DIR=str(log.parent),
        **extra,
    )
    p = Pool(env, log)
    try:
        yield p
    finally:
        if p.proc is not None and p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
            try:
                p.proc.wait(90)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()


def publish(mqtt_url: str, prefix: str, first: int, count: int) -> Published:
    """`count` one-reading messages over every sector of the profile; every reading."""
    published: Published = []
    base_ms = int(datetime.now(UTC).timestamp() * 1000) - 3_600_000
    sectors = list(METRIC)
    with Publisher(mqtt_url) as pub:
        for n in range(first, first + count):
            sector = sectors[n % len(sectors)]
            source, ts, value = f"{prefix}-{sector}", base_ms + n * 100, float(n % 30)
            pub.publish(
                f"ioc/v1/{sector}/{source}/telemetry",
                orjson.dumps({"ts": ts, "values": {METRIC[sector]: value}}),
            )
            published.append((source, METRIC[sector], float(ts), value))
    return published


def wait_stored(db_url: str, prefix: str, published: Published, what: str) -> None:
    """Wait until every published reading is stored, then compare them one by one."""
    wait_until(
        lambda: stored_checksum(db_url, prefix)[0] >= len(published), timeout_s=90, what=what
    )
    assert stored_checksum(db_url, prefix) == readings_checksum(published)


def has_session(mqtt_url: str, client_id: str) -> bool:
    """Whether the broker keeps a session for `client_id` (looking leaves none behind)."""
    return touch_session(mqtt_url, client_id, session_expiry_s=600)


# -- layout --------------------------------------------------------------------------------


def test_partitions_cover_every_sector_once_and_the_catch_all_holds_the_rest() -> None:
    sectors = [s.id for s in PROFILE.sectors]
    for workers in range(1, len(sectors) + 1):
        layout = assign(sectors, workers, known_sectors=["fisheries"])
        assert layout[0].filters == (PLAIN_SUBSCRIPTION,)
        owned = [f for a in layout[1:] for f in a.filters]
        assert len(owned) == len(set(owned))  # disjoint
        assert set(layout[0].others) == set(owned)  # the catch-all leaves exactly these
        for a in layout:
            assert not set(a.filters) & set(a.stale)
            assert shared_filter("ioc-ingest") in a.stale  # an earlier shared layout goes
        assert sector_filter("fisheries") in layout[0].stale
    # worker 0 (which also receives everything) gets no more sectors than any other
    three = assign(sectors, 3)
    mine = [s for s in sectors if sector_filter(s) not in three[0].others]
    assert len(mine) <= min(len(a.filters) for a in three[1:])
    shared = assign(sectors, 3, mode="shared", group="g")
    assert {a.filters for a in shared} == {(shared_filter("g"),)}
    assert PLAIN_SUBSCRIPTION in shared[0].stale
    with pytest.raises(ValueError, match="at most one worker per sector"):
        assign(sectors, len(sectors) + 1)


def test_restarts_come_at_once_then_back_off_to_a_cap() -> None:
    delays = [restart_delay(n) for n in range(1, 10)]
    assert delays[:4] == [0.0, 1.0, 2.0, 4.0]
    assert delays == sorted(delays)
    assert max(delays) == 30.0


# -- resizing ------------------------------------------------------------------------------


def test_shrinking_the_pool_stores_every_reading_and_ends_the_extra_session(
    db_url: str, broker: EmbeddedBroker
) -> None:
    prefix, client_id = unique("shrink"), unique("pool")
    with pool(db_url, broker.url, client_id) as p:
        p.start(2)
        p.wait_running(2)
        published = publish(broker.url, prefix, 0, 200)
        wait_stored(db_url, prefix, published, "the first part, two workers")
        p.stop()
        # both workers away: their sessions keep what arrives
        published += publish(broker.url, prefix, 200, 200)
        p.start(1)
        p.wait_running(3)
        published += publish(broker.url, prefix, 400, 200)
        wait_stored(db_url, prefix, published, "every part, one worker")
        wait_until(
            lambda: "retired an ingest session" in p.text(),
            what="the second worker's session retired",
        )
        p.stop()
    assert f"client_id={client_id}-1" in p.text()
    assert not has_session(broker.url, f"{client_id}-1")


def test_growing_the_pool_keeps_what_the_single_worker_session_held(
    db_url: str, broker: EmbeddedBroker
) -> None:
    # one worker held the wildcard: what arrived while it was away is in its session only,
    # also for the sectors the new second worker now owns
    prefix, client_id = unique("grow"), unique("pool")
    with pool(db_url, broker.url, client_id) as p:
        p.start(1)
        p.wait_running(1)
        published = publish(broker.url, prefix, 0, 100)
        wait_stored(db_url, prefix, published, "the first part, one worker")
        p.stop()
        published += publish(broker.url, prefix, 100, 300)
        p.start(2)
        p.wait_running(3)
        published += publish(broker.url, prefix, 400, 200)
        wait_stored(db_url, prefix, published, "every part, two workers")
        wait_until(
            lambda: "leaves the other workers' sectors to them" in p.text(),
            what="the catch-all worker's marker",
        )
        # after its marker, other workers' sectors reach the catch-all only as copies
        more = publish(broker.url, prefix, 600, 100)
        wait_stored(db_url, prefix, published + more, "the part after the marker")
        p.stop()


def test_retire_drains_a_session_into_the_database_and_ends_it(
    db_url: str, broker: EmbeddedBroker
) -> None:
    prefix, client_id = unique("retire"), unique("pool")
    with pool(db_url, broker.url, client_id) as p:
        p.start(2)
        p.wait_running(2)
        p.stop()
    # the pool away: worker 1's sectors queue in its session (and in worker 0's, the wildcard)
    published = publish(broker.url, prefix, 0, 160)
    out = run_ioc(
        "ingest", "retire", f"{client_id}-1",
        IOC_DATABASE_URL=db_url, IOC_MQTT_URL=broker.url, IOC_PROFILE="mekong",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"{client_id}-1: 80 message(s) stored or rejected; session ended" in out.stdout
    second = assign([s.id for s in PROFILE.sectors], 2)[1].filters
    expected = [r for r in published if sector_filter(r[0][len(prefix) + 1 :]) in second]
    assert len(expected) == 80
    assert stored_checksum(db_url, prefix) == readings_checksum(expected)
    assert not has_session(broker.url, f"{client_id}-1")


# -- broker restarts -----------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_a_broker_restart_while_the_workers_are_away_loses_nothing(
    db_url: str, broker: EmbeddedBroker, workers: int
) -> None:
    # a host reboot: the broker comes back before the workers, devices publish meanwhile
    prefix, client_id = unique("reboot"), unique("pool")
    with pool(db_url, broker.url, client_id) as p:
        p.start(workers)
        p.wait_running(workers)
        published = publish(broker.url, prefix, 0, 100)
        wait_stored(db_url, prefix, published, "the first part")
        p.stop()
        broker.stop()  # a clean stop: Mosquitto writes its persistence file
        broker.start()  # same port, same store
        published += publish(broker.url, prefix, 100, 200)
        p.start(workers)
        p.wait_running(2 * workers)
        published += publish(broker.url, prefix, 300, 100)
        wait_stored(db_url, prefix, published, "every part")
        p.stop()


def test_a_pool_started_before_its_broker_waits_for_it(db_url: str, tmp_path: Path) -> None:
    if shutil.which("mosquitto") is None:
        missing("the mosquitto binary is needed to start a broker late")
    port = free_port()
    mqtt_url = f"mqtt://127.0.0.1:{port}"
    prefix, client_id = unique("late"), unique("pool")
    with pool(db_url, mqtt_url, client_id) as p:
        p.start(1)
        wait_until(
            lambda: "cannot lay out the worker sessions yet; retrying" in p.text(),
            what="the pool to retry the broker",
        )
        assert p.proc is not None and p.proc.poll() is None
        with EmbeddedBroker(shared_tmp("ioc-pool-mqtt-"), kind="mosquitto", port=port):
            p.wait_running(1)
            published = publish(mqtt_url, prefix, 0, 100)
            wait_stored(db_url, prefix, published, "readings once the broker came")
            p.stop()


def test_a_worker_retries_a_broker_that_is_down_and_then_consumes(db_url: str) -> None:
    # the path of `ioc serve --with-workers` and of a pool worker restarted during an outage
    if shutil.which("mosquitto") is None:
        missing("the mosquitto binary is needed to start a broker late")
    sync(db_url)
    port = free_port()
    mqtt_url = f"mqtt://127.0.0.1:{port}"
    prefix = unique("retry")
    settings = Settings(ingest_client_id=unique("thread"), profile="mekong")
    stop = threading.Event()
    errors: list[Exception] = []

    def work() -> None:
        try:
            run_worker(settings, database_url=db_url, mqtt_url=mqtt_url, profile=PROFILE, stop=stop)
        except Exception as exc:  # noqa: BLE001  (reported by the test's thread)
            errors.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    with _caught("ioc.ingest") as records:
        thread.start()
        try:
            wait_until(
                lambda: sum("MQTT broker unreachable; retrying" in r for r in records) >= 2,
                what="two connection attempts",
            )
            assert thread.is_alive() and not errors
            with EmbeddedBroker(shared_tmp("ioc-pool-mqtt-"), kind="mosquitto", port=port):
                wait_until(
                    lambda: any("ingest worker running" in r for r in records),
                    what="the worker to subscribe",
                )
                published = publish(mqtt_url, prefix, 0, 50)
                wait_stored(db_url, prefix, published, "readings after the broker came")
                stop.set()
                thread.join(60)
        finally:
            stop.set()
            thread.join(60)
    assert not errors


# -- supervision ---------------------------------------------------------------------------


def test_a_killed_single_worker_is_restarted_and_loses_nothing(
    db_url: str, broker: EmbeddedBroker
) -> None:
    prefix, client_id = unique("killed"), unique("pool")
    with pool(db_url, broker.url, client_id) as p:
        p.start(1)
        p.wait_running(1)
        published = publish(broker.url, prefix, 0, 100)
        wait_stored(db_url, prefix, published, "the first part")
        [pid] = p.worker_pids()
        assert pid != (p.proc.pid if p.proc else None)  # the worker is a process of its own
        os.kill(pid, signal.SIGKILL)
        published += publish(broker.url, prefix, 100, 200)  # while it is dead or restarting
        p.wait_running(2)
        published += publish(broker.url, prefix, 300, 100)
        wait_stored(db_url, prefix, published, "every part")
        assert "ingest worker exited; restarting" in p.text()
        assert p.proc is not None and p.proc.poll() is None
        p.stop()


def test_a_second_pool_with_the_same_client_ids_stands_by_and_takes_over(
    db_url: str, broker: EmbeddedBroker
) -> None:
    prefix, client_id = unique("standby"), unique("pool")
    with (
        pool(db_url, broker.url, client_id) as first,
        pool(db_url, broker.url, client_id) as second,
    ):
        first.start(2)
        first.wait_running(2)
        second.start(2)
        wait_until(lambda: "standing by to take over" in second.text(), what="a standby")
        published = publish(broker.url, prefix, 0, 200)
        wait_stored(db_url, prefix, published, "the first part, first pool")
        assert "ingest worker running" not in second.text()
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(30)
        published += publish(broker.url, prefix, 200, 200)
        second.wait_running(2)
        published += publish(broker.url, prefix, 400, 100)
        wait_stored(db_url, prefix, published, "every part, second pool")
        # the killed pool's workers noticed and stopped instead of fighting for the sessions
        wait_until(
            lambda: first.text().count("ingest pool gone; worker stopping") == 2,
            what="the orphaned workers to stop",
        )
        second.stop()


@contextmanager
def _caught(logger: str) -> Iterator[list[str]]:
    """Messages logged under `logger` while the block runs."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep(level=logging.INFO)
    log = logging.getLogger(logger)
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


N_AWAY = 700


def test_the_catch_all_worker_back_from_an_absence_stores_nothing_twice(
    db_url: str, broker: EmbeddedBroker
) -> None:
    """While worker 0 is away, its session collects the other workers' sectors too (it holds
    the wildcard), and their owners store them. Back, worker 0 takes those copies before its
    marker returns: readings without a time and rejects must not be stored a second time."""
    prefix, client_id = unique("absent"), unique("pool")
    sectors = [s.id for s in PROFILE.sectors]
    layout = assign(sectors, 2)
    theirs = [s for s in sectors if sector_filter(s) in layout[0].others]
    mine = [s for s in sectors if s not in theirs]
    with pool(db_url, broker.url, client_id) as p:
        p.start(2)
        p.wait_running(2)
        wait_until(lambda: "catch-all worker leaves" in p.text(), what="worker 0 armed")
        pid0 = next(
            int(f.split("=", 1)[1])
            for line in p.text().splitlines()
            if "ingest worker running" in line and "worker=0" in line
            for f in line.split()
            if f.startswith("pid=")
        )
        os.kill(pid0, signal.SIGSTOP)  # away: its session queues everything
        try:
            # more than the 1,000 in flight to the stopped worker: the rest waits in its session
            # and comes after the restart as first deliveries (no DUP flag)
            with Publisher(broker.url) as pub:
                for n in range(N_AWAY):
                    sector = theirs[n % len(theirs)]
                    body = {"values": {METRIC[sector]: float(n % 10)}}  # no time: receipt-timed
                    pub.publish(f"ioc/v1/{sector}/{prefix}-{sector}/telemetry", orjson.dumps(body))
                    pub.publish(f"ioc/v1/{sector}/{prefix}-{sector}/telemetry", b"{bad")
                # last, one of worker 0's own: once it is stored, worker 0 has been through
                # everything queued before it
                pub.publish(
                    f"ioc/v1/{mine[0]}/{prefix}-last/telemetry",
                    orjson.dumps({"values": {METRIC[mine[0]]: 1.0}}),
                )
            wait_until(
                lambda: stored_checksum(db_url, f"{prefix}-")[0] >= N_AWAY,
                what="the owners to store their sectors",
                timeout_s=90,
            )
        finally:
            os.kill(pid0, signal.SIGKILL)
        p.wait_running(3)  # the pool restarted worker 0
        wait_until(
            lambda: stored_checksum(db_url, f"{prefix}-last")[0] == 1,
            what="worker 0 through its backlog",
        )
        assert stored_checksum(db_url, f"{prefix}-")[0] == N_AWAY + 1
        rejects = query(
            db_url, "SELECT count(*) FROM ingest_reject WHERE source_id LIKE %s", (f"{prefix}-%",)
        )
        assert rejects == [(N_AWAY,)]
        p.stop()
