"""IOC_INGEST_METRICS_PORT: each ingest worker serves its own process counters for Prometheus,
worker i of a pool on the port + i, against the real broker and database."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.worker import run_worker
from ioc.catalogue import load_profile
from ioc.mqtt import end_session
from ioc.settings import Settings
from tests.support.cli import IOC, clean_env
from tests.support.ingest import Publisher, stored_checksum, unique, wait_until
from tests.support.services import shared_tmp

STORED = "ioc_ingest_readings_stored_total"
HOST = "127.0.0.1"


def _bindable(port: int, *, reuse: bool = False) -> bool:
    """Whether a socket can listen on the port now (`reuse`: as a server does, SO_REUSEADDR,
    which the closed connections of a stopped server do not hinder)."""
    with socket.socket() as sock:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
            sock.listen()
        except OSError:
            return False
    return True


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports free on this host just now."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            base = int(sock.getsockname()[1])
        if base + count <= 65535 and all(_bindable(base + i) for i in range(count)):
            return base
    raise AssertionError(f"no {count} consecutive free ports")


def stored(port: int) -> float | None:
    """`ioc_ingest_readings_stored_total` as http://127.0.0.1:PORT/metrics shows it."""
    try:
        with httpx.Client(trust_env=False, timeout=5) as client:
            response = client.get(f"http://{HOST}:{port}/metrics")
    except httpx.TransportError:
        return None
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == STORED:
                return float(sample.value)
    return None


def served(port: int) -> tuple[float] | None:
    """(the stored count,) once the port answers."""
    value = stored(port)
    return None if value is None else (value,)


def publish(mqtt_url: str, sector: str, metric: str, sources: list[str], count: int) -> None:
    now_ms = int(time.time() * 1000)
    with Publisher(mqtt_url) as pub:
        for i in range(count):
            pub.publish(
                f"ioc/v1/{sector}/{sources[i % len(sources)]}/telemetry",
                orjson.dumps({"ts": now_ms - i, "values": {metric: i % 20}}),
            )


def test_each_pool_worker_serves_its_own_counters_on_port_plus_its_index(
    db_url: str, mqtt_url: str
) -> None:
    prefix, client_id = unique("mport"), unique("ingest")
    port = free_ports(2)
    log = shared_tmp("ioc-metrics-port-") / "ingest.log"
    env = clean_env(
        IOC_DATABASE_URL=db_url,
        IOC_MQTT_URL=mqtt_url,
        IOC_PROFILE="mekong",
        IOC_INGEST_CLIENT_ID=client_id,
        IOC_INGEST_SUBSCRIPTION="partitioned",
        IOC_INGEST_METRICS_PORT=str(port),
        IOC_DATA_DIR=str(log.parent),
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [IOC, "ingest", "--workers", "2"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until(
            lambda: log.read_text().count("ingest worker running") == 2,
            timeout_s=60,
            what="two workers",
        )
        assert stored(port) == 0 and stored(port + 1) == 0
        # partitioned between two workers: traffic goes to worker 0, water to worker 1
        publish(mqtt_url, "traffic", "flow", [f"{prefix}-t{i}" for i in range(3)], 30)
        publish(mqtt_url, "water", "salinity", [f"{prefix}-w{i}" for i in range(3)], 45)
        wait_until(lambda: stored_checksum(db_url, prefix)[0] == 75, what="every reading")
        wait_until(
            lambda: (stored(port), stored(port + 1)) == (30, 45),
            what="each worker's count on its own port",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        for i in range(2):
            end_session(mqtt_url, f"{client_id}-{i}")
    assert proc.returncode == 0, log.read_text()[-2000:]
    text = log.read_text()
    for i in range(2):
        assert f"url=http://{HOST}:{port + i}/metrics" in text, text[-2000:]


@contextmanager
def worker_thread(settings: Settings, db_url: str, mqtt_url: str) -> Iterator[threading.Thread]:
    """`run_worker` in a thread (as `ioc serve` runs it), stopped and joined afterwards."""
    stop = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            run_worker(
                settings,
                database_url=db_url,
                mqtt_url=mqtt_url,
                profile=load_profile("mekong"),
                stop=stop,
            )
        except BaseException as exc:  # noqa: BLE001  (the test looks at it)
            failure.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(60)
        end_session(mqtt_url, f"{settings.ingest_client_id}-0")
    assert not thread.is_alive()
    assert not failure, failure


def test_a_worker_in_a_thread_serves_its_counters_and_frees_the_port_when_it_stops(
    synced_db: str, mqtt_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    prefix, port = unique("mthread"), free_ports(1)
    settings = Settings(
        ingest_client_id=unique("mthread"), profile="mekong", ingest_metrics_port=port
    )
    caplog.set_level(logging.INFO, logger="ioc.ingest")
    with worker_thread(settings, synced_db, mqtt_url):
        wait_until(lambda: "ingest worker running" in caplog.text, what="the worker subscribed")
        # the counters are the process's: other tests in this process count too
        seen = wait_until(lambda: served(port), what="metrics served")
        assert seen is not None
        before = seen[0]
        publish(mqtt_url, "water", "salinity", [f"{prefix}-a", f"{prefix}-b"], 12)
        wait_until(lambda: stored_checksum(synced_db, prefix)[0] == 12, what="every reading")
        wait_until(lambda: stored(port) == before + 12, what="the count of stored readings")
    # a worker started again (a restart, `ioc serve` again) can listen there
    assert stored(port) is None
    assert _bindable(port, reuse=True), "the metrics port is still held after the worker stopped"


def test_a_taken_port_is_logged_and_ingest_goes_on(
    synced_db: str, mqtt_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = unique("mtaken")
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        settings = Settings(
            ingest_client_id=unique("mtaken"), profile="mekong", ingest_metrics_port=port
        )
        caplog.set_level(logging.INFO, logger="ioc.ingest")
        with worker_thread(settings, synced_db, mqtt_url):
            wait_until(lambda: "ingest worker running" in caplog.text, what="the worker subscribed")
            publish(mqtt_url, "water", "salinity", [f"{prefix}-a"], 5)
            wait_until(lambda: stored_checksum(synced_db, prefix)[0] == 5, what="every reading")
    refused = [
        r
        for r in caplog.records
        if r.name == "ioc.ingest.worker" and r.getMessage().startswith("ingest metrics not served")
    ]
    assert len(refused) == 1
    assert refused[0].levelno == logging.ERROR
    assert refused[0].__dict__["port"] == port
    assert "in use" in refused[0].__dict__["error"]
