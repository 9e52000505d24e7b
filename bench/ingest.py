"""Ingest benchmark: readings per second stored through a real broker, against three ceilings.

Not a test: it prints figures. Usage (PostgreSQL reachable, `mosquitto` on PATH):

    .venv/bin/python bench/ingest.py [--database-url URL] [--readings N] [--quick]

What one run measures, each on a fresh database and through a Mosquitto of its own:

* ingest: K readings are queued in the broker for the `ioc ingest` workers' persistent sessions
  (the workers are offline while they are published), then 1 or 2 worker processes start and
  drain them. Sustained rate = readings committed / time between the first and last commit,
  taken from the workers' own after-commit records. Messages of 1 and of 100 readings.
* COPY ceiling: the same rows, copied from Python straight into the staging table and moved
  into `reading` by the writer's own statements, 10,000 rows per transaction. No MQTT.
* raw receive ceiling: a bare paho subscriber (same session settings, auto-ack) that only
  counts the same queued 1-reading messages.
* naive bridge: paho on_message decoding JSON and doing one autocommitted INSERT per reading.
* latency: publish-to-commit p50/p99 at a fixed publish rate (default 20,000 readings/s),
  reading time = publish time, commit time from the worker's after-commit record.

Ratios are printed against each ceiling measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import psycopg
from paho.mqtt.subscribeoptions import SubscribeOptions

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ingest.topics import PLAIN_SUBSCRIPTION  # noqa: E402
from ingest.writer import MOVE_STAGE, STAGE_DDL, Batch  # noqa: E402
from ioc.db import libpq_url  # noqa: E402
from ioc.embedded_broker import EmbeddedBroker  # noqa: E402
from ioc.mqtt import connect_properties, end_session, paho_client, parse_mqtt_url  # noqa: E402
from ioc.settings import Settings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import count_readings, fresh_database, inserted_so_far, wait_for_readings  # noqa: E402

PROFILE = "mekong"
SECTOR = "water"
METRICS = ("salinity", "water_level", "rainfall_24h", "supply_chloride")
SOURCES = 1000
RECEIVE_MAXIMUM = 1000
SESSION_EXPIRY_S = 3600
COPY_CHUNK = 10_000
OUTSTANDING_MAX = 30_000


# -- payloads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A message shape: readings per message, as samples x metrics of one source."""

    samples: int
    metrics: int

    @property
    def readings(self) -> int:
        return self.samples * self.metrics

    @property
    def label(self) -> str:
        return f"{self.readings}-reading"


ONE = Shape(1, 1)
HUNDRED = Shape(25, 4)


def _value(n: int, m: int) -> float:
    return round(((n * 7 + m * 13) % 97) / 10, 2)  # inside every metric's valid range


def messages(shape: Shape, count: int, base_ms: int) -> Iterator[tuple[str, bytes]]:
    """`count` messages; reading times unique per series, one second apart, from `base_ms`."""
    names = METRICS[: shape.metrics]
    for n in range(count):
        source = f"bench-{n % SOURCES:04d}"
        round_ = n // SOURCES
        samples = [
            {
                "ts": base_ms + (round_ * shape.samples + j) * 1000,
                "values": {m: _value(n + j, k) for k, m in enumerate(names)},
            }
            for j in range(shape.samples)
        ]
        body = samples[0] if shape.samples == 1 else samples
        yield f"ioc/v1/{SECTOR}/{source}/telemetry", orjson.dumps(body)


def copy_rows(shape: Shape, count: int, base_ms: int) -> Iterator[tuple[str, str, int, float]]:
    """The readings of `messages(shape, count, base_ms)`, as (source, metric, ms, value)."""
    names = METRICS[: shape.metrics]
    for n in range(count):
        source = f"bench-{n % SOURCES:04d}"
        round_ = n // SOURCES
        for j in range(shape.samples):
            ts = base_ms + (round_ * shape.samples + j) * 1000
            for k, m in enumerate(names):
                yield source, m, ts, _value(n + j, k)


# -- services ------------------------------------------------------------------------------


def register_session(mqtt_url: str, client_id: str, topic_filter: str) -> None:
    """Create a persistent session subscribed to `topic_filter`, then go offline."""
    endpoint = parse_mqtt_url(mqtt_url)
    client = paho_client(endpoint, client_id, persistent=True)
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_connect = lambda c, *args: c.subscribe(topic_filter, options=SubscribeOptions(qos=1))
    client.connect(
        endpoint.host,
        endpoint.port,
        clean_start=False,
        properties=connect_properties(session_expiry_s=SESSION_EXPIRY_S),
    )
    client.loop_start()
    if not subscribed.wait(10):
        raise RuntimeError(f"could not subscribe {client_id}")
    client.disconnect()
    client.loop_stop()


def connect_persistent(client: paho.Client, mqtt_url: str) -> None:
    """Resume a session registered beforehand, with the ingest consumer's settings."""
    endpoint = parse_mqtt_url(mqtt_url)
    client.connect(
        endpoint.host,
        endpoint.port,
        clean_start=False,
        properties=connect_properties(
            session_expiry_s=SESSION_EXPIRY_S, receive_maximum=RECEIVE_MAXIMUM
        ),
    )
    client.loop_start()


def publish(mqtt_url: str, payloads: Sequence[tuple[str, bytes]]) -> float:
    """Publish at full speed (QoS 1) and wait for every PUBACK; messages per second."""
    endpoint = parse_mqtt_url(mqtt_url)
    client = paho_client(endpoint, f"bench-pub-{os.getpid()}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(endpoint.host, endpoint.port)
    client.loop_start()
    started = time.perf_counter()
    infos: list[paho.MQTTMessageInfo] = []
    for topic, payload in payloads:
        if len(infos) >= OUTSTANDING_MAX:  # packet ids wrap at 65,535
            infos[len(infos) - OUTSTANDING_MAX].wait_for_publish(120)
        infos.append(client.publish(topic, payload, qos=1))
    for info in infos:
        info.wait_for_publish(120)
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return len(payloads) / elapsed


def child(role: str, out: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--role", role, "--out", str(out)]
    return subprocess.Popen([*cmd, *args], env={**os.environ, **env}, stdout=subprocess.DEVNULL)


def stop_child(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- roles run in child processes ----------------------------------------------------------


def role_worker(out: Path, index: int) -> None:
    """An `ioc ingest` worker (same code path as `ioc ingest --index i`) that records commits."""
    from ingest.worker import run_worker
    from ioc.catalogue import load_profile

    settings = Settings()
    commits: list[tuple[float, int]] = []
    lags: list[float] = []

    def record(batch: Batch, committed: datetime) -> None:
        commits.append((committed.timestamp(), len(batch.readings)))
        for item in batch.items:
            if item.readings:
                newest = max(r.ts for r in item.readings)
                lags.append((committed - newest).total_seconds())

    assert settings.database_url is not None
    assert settings.mqtt_url is not None
    run_worker(
        settings,
        database_url=settings.database_url.get_secret_value(),
        mqtt_url=settings.mqtt_url.get_secret_value(),
        profile=load_profile(settings.profile),
        index=index,
        workers=int(os.environ.get("BENCH_WORKERS", "1")),
        after_commit=[record],
    )
    out.write_text(json.dumps({"commits": commits, "lags": lags}))


RECEIVE_VARIANTS = {
    "auto": "bare paho, auto-ack (the raw receive ceiling)",
    "ack": "manual ack in on_message",
    "ack-thread": "manual ack from a second thread",
    "ack-thread+decode": "ack from a second thread, plus decode and validate",
}


def role_raw(out: Path, client_id: str, expect: int, variant: str) -> None:
    """A subscriber that only counts, on a session registered beforehand.

    The variants add, one at a time, what the ingest consumer does per message besides writing:
    manual acknowledgement, from another thread (the writer's), and decode plus validation.
    """
    from ingest.items import build_item
    from ingest.validation import Rules
    from ioc.catalogue import load_profile

    rules = Rules.from_profile(load_profile(PROFILE))
    endpoint = parse_mqtt_url(os.environ["IOC_MQTT_URL"])
    client = paho_client(endpoint, client_id, persistent=True, manual_ack=variant != "auto")
    times: list[float] = []
    done = threading.Event()
    mids: list[int] = []
    ready = threading.Condition()
    threaded = variant.startswith("ack-thread")
    decode = variant.endswith("+decode")

    def acker() -> None:
        while True:
            with ready:
                while not mids:
                    ready.wait()
                taken = mids[:]
                mids.clear()
            for mid in taken:
                client.ack(mid, 1)

    def on_message(c: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        times.append(time.time())
        if decode:
            build_item(
                msg.topic,
                bytes(msg.payload),
                received_at=datetime.now(UTC),
                rules=rules,
                max_payload_bytes=1 << 18,
            )
        if threaded:
            with ready:
                mids.append(msg.mid)
                ready.notify()
        elif variant == "ack":
            c.ack(msg.mid, 1)
        if len(times) >= expect:
            done.set()

    if threaded:
        threading.Thread(target=acker, daemon=True).start()
    client.on_message = on_message
    connect_persistent(client, os.environ["IOC_MQTT_URL"])
    done.wait(600)
    time.sleep(0.5)  # the last acks go out
    client.disconnect()
    client.loop_stop()
    first, last = (times[0], times[-1]) if times else (0.0, 0.0)
    out.write_text(json.dumps({"count": len(times), "first": first, "last": last}))


# -- measurements --------------------------------------------------------------------------


@dataclass
class Drain:
    readings: int
    stored: int
    rate: float
    per_worker: list[int]
    batches: int
    mean_batch: float


def _rate(commits: list[tuple[float, int]]) -> float:
    """Readings per second between the first and the last commit (first batch excluded)."""
    commits.sort()
    if len(commits) < 2:
        return float("nan")
    span = commits[-1][0] - commits[0][0]
    return sum(n for _, n in commits[1:]) / span if span > 0 else float("nan")


def worker_env(db_url: str, mqtt_url: str, tag: str, workers: int = 1) -> dict[str, str]:
    """Settings of the workers of one scenario: their own share group and client ids."""
    return {
        # the sessions are registered beforehand on one shared subscription (as measured
        # before partitioned subscriptions existed); the pool size tells each its place
        "IOC_INGEST_SUBSCRIPTION": "shared",
        "BENCH_WORKERS": str(workers),
        "IOC_DATABASE_URL": db_url,
        "IOC_MQTT_URL": mqtt_url,
        "IOC_PROFILE": PROFILE,
        "IOC_INGEST_SHARE_GROUP": f"bench-{tag}",
        "IOC_INGEST_CLIENT_ID": f"bench-{tag}",
        "IOC_INGEST_STATS_INTERVAL_S": "3600",
        # ingest alone: bench/alerts.py measures what the alert engine adds
        "IOC_ALERTS_ENABLED": "false",
        "IOC_LOG_LEVEL": "WARNING",
    }


def measure_ingest(
    server_url: str, mqtt_url: str, shape: Shape, readings: int, workers: int, tmp: Path
) -> Drain:
    count = readings // shape.readings
    base_ms = int((datetime.now(UTC) - timedelta(days=2)).timestamp() * 1000)
    tag = f"w{workers}_{shape.readings}"
    with fresh_database(server_url, "ingest", tag) as db_url:
        clients = [f"bench-{tag}-{i}" for i in range(workers)]
        for client_id in clients:
            register_session(mqtt_url, client_id, f"$share/bench-{tag}/{PLAIN_SUBSCRIPTION}")
        publish(mqtt_url, list(messages(shape, count, base_ms)))
        outs = [tmp / f"{tag}-{i}.json" for i in range(workers)]
        procs = [
            child("worker", outs[i], worker_env(db_url, mqtt_url, tag, workers), "--index", str(i))
            for i in range(workers)
        ]
        stored = wait_for_readings(db_url, readings, timeout_s=600)
        for proc in procs:
            stop_child(proc)
        for client_id in clients:
            end_session(mqtt_url, client_id)
        commits: list[tuple[float, int]] = []
        per_worker = []
        for out in outs:
            data = json.loads(out.read_text())
            commits += [(t, n) for t, n in data["commits"]]
            per_worker.append(sum(n for _, n in data["commits"]))
    batches = len(commits)
    return Drain(
        readings,
        stored,
        _rate(commits),
        per_worker,
        batches,
        sum(n for _, n in commits) / batches if batches else 0.0,
    )


def measure_copy(server_url: str, shape: Shape, readings: int) -> float:
    """Rows per second through the writer's staging COPY and insert, 10k rows per commit."""
    count = readings // shape.readings
    base_ms = int((datetime.now(UTC) - timedelta(days=2)).timestamp() * 1000)
    with (
        fresh_database(server_url, "ingest", "copy") as db_url,
        psycopg.connect(libpq_url(db_url)) as conn,
    ):
        sources = [f"bench-{n:04d}" for n in range(SOURCES)]
        conn.execute(
            "INSERT INTO source (id, sector_id) SELECT unnest(%s::text[]), %s", (sources, SECTOR)
        )
        conn.execute(
            "INSERT INTO series (source_id, metric) "
            "SELECT s, m FROM unnest(%s::text[]) s, unnest(%s::text[]) m",
            (sources, list(METRICS)),
        )
        series = {
            (str(s), str(m)): int(i)
            for i, s, m in conn.execute("SELECT id, source_id, metric FROM series").fetchall()
        }
        conn.execute(STAGE_DDL)
        conn.commit()
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        rows = [
            (epoch + timedelta(milliseconds=ms), series[(s, m)], v)
            for s, m, ms, v in copy_rows(shape, count, base_ms)
        ]
        started = time.perf_counter()
        with conn.cursor() as cur:
            for at in range(0, len(rows), COPY_CHUNK):
                copy = "COPY reading_stage (ts, series_id, value) FROM STDIN (FORMAT BINARY)"
                with cur.copy(copy) as cp:
                    cp.set_types(["timestamptz", "int4", "float8"])
                    for row in rows[at : at + COPY_CHUNK]:
                        cp.write_row(row)
                cur.execute(MOVE_STAGE)
                conn.commit()
        elapsed = time.perf_counter() - started
        stored = count_readings(db_url)
    if stored != len(rows):
        raise RuntimeError(f"COPY stored {stored} of {len(rows)} rows")
    return len(rows) / elapsed


def measure_raw(mqtt_url: str, readings: int, tmp: Path, variant: str = "auto") -> float:
    """Messages per second a counting subscriber (`variant`) receives from a queued backlog."""
    count = readings // ONE.readings
    client_id = f"bench-raw-{variant}"
    register_session(mqtt_url, client_id, f"$share/bench-raw/{PLAIN_SUBSCRIPTION}")
    base_ms = int((datetime.now(UTC) - timedelta(days=2)).timestamp() * 1000)
    publish(mqtt_url, list(messages(ONE, count, base_ms)))
    out = tmp / f"raw-{variant}.json"
    proc = child(
        "raw",
        out,
        {"IOC_MQTT_URL": mqtt_url},
        *("--client-id", client_id, "--expect", str(count), "--variant", variant),
    )
    proc.wait(600)
    end_session(mqtt_url, client_id)
    data = json.loads(out.read_text())
    if data["count"] != count:
        raise RuntimeError(f"raw subscriber got {data['count']} of {count} messages")
    return (count - 1) / (float(data["last"]) - float(data["first"]))


def measure_naive(server_url: str, mqtt_url: str, shape: Shape, readings: int) -> float:
    """Readings per second of paho on_message doing one autocommitted INSERT per reading."""
    count = readings // shape.readings
    base_ms = int((datetime.now(UTC) - timedelta(days=2)).timestamp() * 1000)
    client_id = f"bench-naive-{shape.readings}"
    with fresh_database(server_url, "ingest", f"naive_{shape.readings}") as db_url:
        conn = psycopg.connect(libpq_url(db_url), autocommit=True)
        sources = [f"bench-{n:04d}" for n in range(SOURCES)]
        conn.execute(
            "INSERT INTO source (id, sector_id) SELECT unnest(%s::text[]), %s", (sources, SECTOR)
        )
        conn.execute(
            "INSERT INTO series (source_id, metric) "
            "SELECT s, m FROM unnest(%s::text[]) s, unnest(%s::text[]) m",
            (sources, list(METRICS)),
        )
        register_session(mqtt_url, client_id, f"$share/bench-naive/{PLAIN_SUBSCRIPTION}")
        publish(mqtt_url, list(messages(shape, count, base_ms)))
        stored = 0
        done = threading.Event()
        marks: list[float] = []

        def on_message(c: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
            nonlocal stored
            if not marks:
                marks.append(time.perf_counter())
            source = msg.topic.split("/")[3]
            body = orjson.loads(msg.payload)
            for sample in body if isinstance(body, list) else [body]:
                ts = datetime.fromtimestamp(sample["ts"] / 1000, UTC)
                for metric, value in sample["values"].items():
                    conn.execute(
                        "INSERT INTO reading (ts, series_id, value) VALUES "
                        "(%s, (SELECT id FROM series WHERE source_id = %s AND metric = %s), %s) "
                        "ON CONFLICT DO NOTHING",
                        (ts, source, metric, value),
                    )
                    stored += 1
            if stored >= readings:
                marks.append(time.perf_counter())
                done.set()

        endpoint = parse_mqtt_url(mqtt_url)
        client = paho_client(endpoint, client_id, persistent=True)
        client.on_message = on_message
        connect_persistent(client, mqtt_url)
        done.wait(900)
        client.disconnect()
        client.loop_stop()
        end_session(mqtt_url, client_id)
        conn.close()
        if count_readings(db_url) != readings:
            raise RuntimeError("the naive bridge lost readings")
    return readings / (marks[1] - marks[0])


def measure_latency(
    server_url: str, mqtt_url: str, shape: Shape, rate: float, seconds: float, tmp: Path
) -> tuple[float, float, float, float, int]:
    """(p50, p99, max) publish-to-commit in ms, achieved readings/s, messages, at `rate`."""
    tag = f"lat_{shape.readings}"
    with fresh_database(server_url, "ingest", tag) as db_url:
        out = tmp / f"{tag}.json"
        proc = child("worker", out, worker_env(db_url, mqtt_url, tag), "--index", "0")
        time.sleep(0.5)
        endpoint = parse_mqtt_url(mqtt_url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and inserted_so_far(db_url) == 0:
            # warm-up: one message until the worker is up and has committed
            pub_warm = paho_client(endpoint, f"bench-warm-{os.getpid()}")
            pub_warm.connect(endpoint.host, endpoint.port)
            pub_warm.loop_start()
            now_ms = int(time.time() * 1000)
            body = {"ts": now_ms, "values": {"salinity": 0.1}}
            pub_warm.publish(f"ioc/v1/{SECTOR}/bench-warm/telemetry", orjson.dumps(body), qos=1)
            time.sleep(1)
            pub_warm.disconnect()
            pub_warm.loop_stop()
        client = paho_client(endpoint, f"bench-latency-{os.getpid()}")
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.connect(endpoint.host, endpoint.port)
        client.loop_start()
        per_s = rate / shape.readings
        tick = 0.01  # publish in 10 ms slices
        per_tick = per_s * tick
        names = METRICS[: shape.metrics]
        sent = 0
        started = time.perf_counter()
        owed = 0.0
        n = 0
        while (elapsed := time.perf_counter() - started) < seconds:
            owed = per_s * elapsed - sent
            while owed >= 1:
                now_ms = int(time.time() * 1000)
                source = f"bench-{n % SOURCES:04d}"
                samples = [
                    {
                        "ts": now_ms - (shape.samples - 1 - j),
                        "values": {m: _value(n + j, k) for k, m in enumerate(names)},
                    }
                    for j in range(shape.samples)
                ]
                payload = orjson.dumps(samples[0] if shape.samples == 1 else samples)
                client.publish(f"ioc/v1/{SECTOR}/{source}/telemetry", payload, qos=1)
                sent += 1
                n += 1
                owed -= 1
            time.sleep(
                max(0.0, tick - (time.perf_counter() - started - elapsed)) if per_tick else tick
            )
        achieved = sent * shape.readings / (time.perf_counter() - started)
        client.disconnect()
        client.loop_stop()
        wait_for_readings(db_url, sent * shape.readings, timeout_s=120)
        stop_child(proc)
        end_session(mqtt_url, f"bench-{tag}-0")
        lags = sorted(json.loads(out.read_text())["lags"])
    lags = lags[1:]  # the warm-up message
    q = statistics.quantiles(lags, n=100, method="inclusive")
    return q[49] * 1000, q[98] * 1000, lags[-1] * 1000, achieved, sent


# -- report --------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:>12,.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--role", choices=("main", "worker", "raw"), default="main")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--client-id")
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--variant", choices=tuple(RECEIVE_VARIANTS), default="auto")
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "IOC_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server where databases may be created and dropped",
    )
    parser.add_argument("--readings", type=int, default=1_000_000, help="K, 100-reading messages")
    parser.add_argument("--single", type=int, default=200_000, help="K, 1-reading messages")
    parser.add_argument("--naive", type=int, default=20_000, help="readings for the naive bridge")
    parser.add_argument("--rate", type=float, default=20_000, help="readings/s for latency")
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument(
        "--single-latency-rate",
        type=float,
        default=5_000,
        help="readings/s for the latency of 1-reading messages (one worker's capacity is lower "
        "than 20,000 messages/s on 2 cores)",
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of every volume")
    args = parser.parse_args(argv)
    if args.role == "worker":
        role_worker(args.out, args.index)
        return 0
    if args.role == "raw":
        role_raw(args.out, args.client_id, args.expect, args.variant)
        return 0
    if args.quick:
        args.readings //= 10
        args.single //= 10
        args.naive //= 10
        args.latency_seconds /= 4
    return run(args)


def _target(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def run(args: argparse.Namespace) -> int:
    server = args.database_url
    print(f"ioc ingest benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores")
    print(f"database {server}; broker: mosquitto of its own; profile {PROFILE}")
    with tempfile.TemporaryDirectory(prefix="ioc-bench-") as tmpdir:
        tmp = Path(tmpdir)
        with EmbeddedBroker(tmp / "mqtt", kind="mosquitto") as broker:
            mqtt_url = broker.url
            results: dict[str, float] = {}
            copy = measure_copy(server, HUNDRED, args.readings)
            print(f"COPY ceiling (10k rows/txn)          {_fmt(copy)} readings/s")
            receive = {v: measure_raw(mqtt_url, args.single, tmp, v) for v in RECEIVE_VARIANTS}
            raw = receive["auto"]
            print(f"raw receive ceiling (bare paho)      {_fmt(raw)} messages/s")
            naive = {
                shape.label: measure_naive(server, mqtt_url, shape, args.naive)
                for shape in (ONE, HUNDRED)
            }
            for label, rate in naive.items():
                print(f"naive bridge, {label:<13}          {_fmt(rate)} readings/s")
            for shape, k in ((HUNDRED, args.readings), (ONE, args.single)):
                for workers in (1, 2):
                    d = measure_ingest(server, mqtt_url, shape, k, workers, tmp)
                    results[f"{shape.label} x{workers}"] = d.rate
                    print(
                        f"ingest {shape.label:<13} {workers} worker{'s' if workers > 1 else ' '}"
                        f"      {_fmt(d.rate)} readings/s   stored {d.stored:,}/{d.readings:,}"
                        f"  batches {d.batches:,} (mean {d.mean_batch:,.0f} rows)"
                        f"  per worker {d.per_worker}"
                    )
                    if d.stored != d.readings:
                        print("  !! stored count differs from published count")
            print()
            print("ratios (targets: 100-reading >= 0.5x COPY and >= 100,000/s; 1-reading >= 0.6x")
            print("raw receive; >= 20x naive)")
            for key, rate in results.items():
                shape_label = key.split()[0]
                vs_naive = rate / naive[shape_label]
                line = f"  {key:<18} {vs_naive:6.1f}x naive ({_target(vs_naive >= 20)})"
                if shape_label == HUNDRED.label:
                    ok = rate / copy >= 0.5 and rate >= 100_000
                    line += f"   {rate / copy:5.2f}x COPY ceiling ({_target(ok)})"
                else:
                    ok = rate / raw >= 0.6
                    line += f"   {rate / raw:5.2f}x raw receive ceiling ({_target(ok)})"
                print(line)
            print()
            print("what a single-reading message costs the consumer process (messages/s, us each)")
            for variant, rate in receive.items():
                print(f"  {RECEIVE_VARIANTS[variant]:<52} {_fmt(rate)}  {1e6 / rate:6.1f} us")
            one = results[f"{ONE.label} x1"]
            print(f"  {'the ingest worker (adds the database writer)':<52} {_fmt(one)}  "
                  f"{1e6 / one:6.1f} us")  # fmt: skip
            print()
            single_rate = min(args.rate, args.single_latency_rate)
            for shape, rate in (
                (HUNDRED, args.rate),
                (Shape(10, 1), args.rate),
                (ONE, single_rate),
            ):
                p50, p99, worst, achieved, sent = measure_latency(
                    server, mqtt_url, shape, rate, args.latency_seconds, tmp
                )
                print(
                    f"latency {shape.label:<13} at {achieved:,.0f} readings/s"
                    f" ({sent:,} messages): p50 {p50:.1f} ms  p99 {p99:.1f} ms"
                    f"  max {worst:.1f} ms  ({_target(p99 <= 250)} p99 <= 250 ms)"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
