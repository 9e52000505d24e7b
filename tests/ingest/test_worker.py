"""`ioc ingest` and `ioc simulate` as a user runs them, against the real broker and database."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pytest

from ingest.worker import run_worker
from ioc.catalogue import load_profile
from ioc.errors import WorkerFailed
from ioc.settings import Settings
from tests.support.cli import IOC, clean_env, run_ioc
from tests.support.ingest import (
    Publisher,
    end_session,
    readings_checksum,
    stored_checksum,
    unique,
    wait_until,
)
from tests.support.services import shared_tmp


@pytest.mark.parametrize("mode", ["partitioned", "shared"])
def test_two_worker_processes_split_the_stream_and_store_it_once(
    db_url: str, mqtt_url: str, mode: str
) -> None:
    prefix, client_id, group = unique("w2"), unique("ingest"), unique("grp")
    log = shared_tmp("ioc-workers-") / "ingest.log"
    env = clean_env(
        IOC_DATABASE_URL=db_url,
        IOC_MQTT_URL=mqtt_url,
        IOC_PROFILE="mekong",
        IOC_INGEST_CLIENT_ID=client_id,
        IOC_INGEST_SUBSCRIPTION=mode,
        IOC_INGEST_SHARE_GROUP=group,
        IOC_INGEST_STATS_INTERVAL_S="1",
        IOC_DATA_DIR=str(log.parent),
    )
    published = []
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
        now_ms = int(time.time() * 1000)
        with Publisher(mqtt_url) as pub:
            for i in range(600):
                # water goes to worker 1, traffic to worker 0 when partitioned
                sector, metric = ("water", "salinity") if i % 2 else ("traffic", "flow")
                source = f"{prefix}-{i % 6}"
                pub.publish(
                    f"ioc/v1/{sector}/{source}/telemetry",
                    orjson.dumps({"ts": now_ms - i, "values": {metric: i % 30}}),
                )
                published.append((source, metric, float(now_ms - i), float(i % 30)))
        wait_until(lambda: stored_checksum(db_url, prefix)[0] == 600, what="every reading")
        # each worker logs its own totals: both took a share
        wait_until(lambda: _worker_message_counts(log, 2), what="stats lines from both workers")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        for i in range(2):
            end_session(mqtt_url, f"{client_id}-{i}")
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert stored_checksum(db_url, prefix) == readings_checksum(published)
    assert log.read_text().count("ingest worker stopped") == 2


def _worker_message_counts(log: Path, workers: int) -> dict[str, int] | None:
    """Last `messages=` total of each worker, once every worker reports some."""
    last: dict[str, int] = {}
    for line in log.read_text().splitlines():
        if "ingest stats" in line:
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            last[fields["worker"]] = int(fields["messages"])
    busy = {w: n for w, n in last.items() if n > 0}
    return busy if len(busy) == workers else None


def test_ingest_needs_a_broker_url(db_url: str) -> None:
    result = run_ioc("ingest", IOC_DATABASE_URL=db_url)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: IOC_MQTT_URL is required: the broker to consume from"
    ]


def test_simulate_publishes_for_a_fixed_duration(mqtt_url: str) -> None:
    result = run_ioc(
        "simulate", "--profile", "mekong", "--sources", "5", "--rate", "20",
        "--duration", "1.5", "--seed", "7", IOC_MQTT_URL=mqtt_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("published ") and summary.endswith("seed 7"), summary
    assert int(summary.split()[1]) > 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_whose_writer_thread_died_exits_to_be_restarted(
    synced_db: str, mqtt_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Never a zombie that looks connected: a dead thread ends run_worker with WorkerFailed
    (exit code 1 and one `error:` line from `ioc ingest`'s worker)."""
    prefix = unique("zombie")
    settings = Settings(ingest_client_id=unique("zombie"), profile="mekong")
    failure: list[BaseException] = []

    def die(batch: object, committed: object) -> None:
        raise SystemExit("the writer thread ends here")  # past `except Exception`

    def work() -> None:
        try:
            run_worker(
                settings,
                database_url=synced_db,
                mqtt_url=mqtt_url,
                profile=load_profile("mekong"),
                stop=threading.Event(),
                after_commit=[die],
            )
        except BaseException as exc:  # noqa: BLE001  (the test looks at it)
            failure.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    caplog.set_level(logging.INFO, logger="ioc.ingest")
    thread.start()
    try:
        wait_until(lambda: "ingest worker running" in caplog.text, what="the worker subscribed")
        with Publisher(mqtt_url) as pub:
            pub.publish(
                f"ioc/v1/water/{prefix}/telemetry", orjson.dumps({"values": {"salinity": 1}})
            )
        wait_until(lambda: bool(failure), what="the worker to give up")
    finally:
        thread.join(60)
        end_session(mqtt_url, f"{settings.ingest_client_id}-0")
    assert isinstance(failure[0], WorkerFailed)
    assert "writer thread died" in str(failure[0])
