"""Alert engine benchmark: what 1,000 rules over 10,000 sources cost ingest, and how fast an
alert reaches a listener.

Not a test: it prints figures. Usage (PostgreSQL reachable, `mosquitto` on PATH):

    .venv/bin/python bench/alerts.py [--database-url URL] [--readings N] [--quick]

1. Overhead: the same pre-built messages (100 readings each: 25 samples of 4 water metrics of
   one source) go through the ingest writer into two identical databases, one with the alert
   engine and 1,000 threshold rules (100 districts x 4 metrics, 2 to 3 rules per reading, about
   1 % of sources breaching), one with no rules. Rounds alternate; the medians are compared.
2. Late readings: the same messages with the rules, each cut in 5 and delivered oldest part
   first or newest part first; the rates are compared, and the alerts must be the same.
3. Latency: a real `ioc ingest` worker consumes 10,000 readings/s of background telemetry
   from a broker of its own; every 200 ms a probe publishes one reading that opens an alert.
   The time from publish to the NOTIFY of its `opened` event, received by a LISTEN connection,
   gives p50/p99.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import PROFILE, fresh_database, wait_for_readings

from alerts.engine import AlertEngine
from ingest.items import Item, build_item
from ingest.validation import Rules
from ingest.writer import Writer
from ioc.catalogue import load_profile
from ioc.db import libpq_url
from ioc.embedded_broker import EmbeddedBroker
from ioc.mqtt import paho_client, parse_mqtt_url

SECTOR = "water"
METRICS = ("salinity", "water_level", "rainfall_24h", "supply_chloride")
NORMAL = {  # (low, high) of ordinary values, below every rule
    "salinity": (0.1, 0.8),
    "water_level": (0.3, 1.2),
    "rainfall_24h": (0.0, 40.0),
    "supply_chloride": (20.0, 180.0),
}
THRESHOLDS = {"salinity": 1.0, "water_level": 1.5, "rainfall_24h": 100.0, "supply_chloride": 250.0}
SOURCES = 10_000
DISTRICTS = 100
RULES = 1_000
BREACHING_EVERY = 100  # one source in 100 reports salinity above its rules
PROBE_RULE_METRIC = "salinity"
PROBE_VALUE = 9.5


def source_id(i: int) -> str:
    return f"st-{i:05d}"


def setup(db_url: str, *, with_rules: bool) -> None:
    """10,000 sources in 100 districts; 1,000 district rules (or none); seeded rules off."""
    with psycopg.connect(libpq_url(db_url)) as conn:
        conn.execute("UPDATE alert_rule SET enabled = false")
        ids = [source_id(i) for i in range(SOURCES)]
        conn.execute(
            "INSERT INTO source (id, sector_id, district) "
            "SELECT u.id, %s, 'd' || lpad(((u.n - 1) %% %s)::text, 2, '0') "
            "FROM unnest(%s::text[]) WITH ORDINALITY AS u(id, n)",
            (SECTOR, DISTRICTS, ids),
        )
        if not with_rules:
            return
        rows: list[tuple[str, str, str, float, int, str | None]] = []
        for k in range(RULES):
            district, j = k % DISTRICTS, k // DISTRICTS
            metric = METRICS[j % len(METRICS)]
            severity = "critical" if j >= len(METRICS) * 2 else "warning"
            value = THRESHOLDS[metric] * (1 + 0.5 * (j // len(METRICS)))
            for_s = 600 if severity == "critical" else 0
            rows.append((f"bench rule {k}", metric, severity, value, for_s, f"d{district:02d}"))
        # a sector-wide rule the latency probes trip at once
        rows.append(("bench probe", PROBE_RULE_METRIC, "critical", 9.0, 0, None))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO alert_rule (name, kind, sector_id, metric, severity, direction, "
                "threshold, inclusive, for_s, district) "
                "VALUES (%s, 'threshold', 'water', %s, %s, 'above', %s, false, %s, %s)",
                rows,
            )


def payloads(count: int, base: datetime, seed: int) -> list[tuple[str, bytes]]:
    """`count` messages of 25 samples x 4 metrics, one source each, sources in turn."""
    rnd = random.Random(seed)
    out = []
    for n in range(count):
        i = n % SOURCES
        first = base + timedelta(seconds=(n // SOURCES) * 25)
        samples = []
        for j in range(25):
            values = {m: round(rnd.uniform(*NORMAL[m]), 3) for m in METRICS}
            if i % BREACHING_EVERY == 0:
                values["salinity"] = round(rnd.uniform(1.2, 4.0), 3)
            ts = int((first + timedelta(seconds=j)).timestamp() * 1000)
            samples.append({"ts": ts, "values": values})
        out.append((f"ioc/v1/{SECTOR}/{source_id(i)}/telemetry", orjson.dumps(samples)))
    return out


def build(messages: Sequence[tuple[str, bytes]], rules: Rules) -> list[Item]:
    now = datetime.now(UTC)
    return [
        build_item(t, p, received_at=now, rules=rules, max_payload_bytes=1 << 20)
        for t, p in messages
    ]


def drain(db_url: str, items: list[Item], *, engine: AlertEngine | None) -> float:
    """Readings per second committed by one writer for these items."""
    writer = Writer(
        db_url,
        hooks=[engine] if engine else [],
        queue_max_rows=1 << 30,
        queue_max_bytes=1 << 40,
    )
    left = [len(items)]
    done = threading.Event()

    def committed(_: Item) -> None:
        left[0] -= 1
        if left[0] == 0:
            done.set()

    for item in items:
        item.done = committed
    writer.start()
    started = time.perf_counter()
    for item in items:
        writer.submit(item)
    done.wait(1800)
    elapsed = time.perf_counter() - started
    writer.stop()
    return sum(len(i.readings) for i in items) / elapsed


def measure_overhead(server: str, readings: int, rounds: int) -> None:
    rules = Rules.from_profile(load_profile(PROFILE))
    count = readings // 100
    rates: dict[str, list[float]] = {"no rules": [], "1,000 rules": []}
    outcomes: list[int] = []
    for r in range(rounds):
        base = datetime.now(UTC) - timedelta(hours=20) + timedelta(minutes=r)
        messages = payloads(count, base, seed=r)
        for label, with_rules in (("no rules", False), ("1,000 rules", True)):
            with fresh_database(server, "alerts", f"{r}_{int(with_rules)}") as db_url:
                setup(db_url, with_rules=with_rules)
                engine = AlertEngine(reopen_window_s=0) if with_rules else None
                rates[label].append(drain(db_url, build(messages, rules), engine=engine))
                if with_rules:
                    with psycopg.connect(libpq_url(db_url)) as conn:
                        row = conn.execute("SELECT count(*) FROM alert").fetchone()
                        outcomes.append(int(row[0]) if row else 0)
    plain = statistics.median(rates["no rules"])
    ruled = statistics.median(rates["1,000 rules"])
    print(f"ingest writer, {readings:,} readings in 100-reading messages, {rounds} rounds each")
    for label, values in rates.items():
        shown = ", ".join(f"{v:,.0f}" for v in values)
        print(f"  {label:<12} median {statistics.median(values):>10,.0f} readings/s  ({shown})")
    ok = plain / ruled <= 1.3
    print(
        f"  overhead {plain / ruled:.2f}x ({'meets' if ok else 'MISSES'} target <= 1.3x); "
        f"alerts opened per round: {outcomes}"
    )


def split(
    messages: Sequence[tuple[str, bytes]], parts: int, *, reverse: bool
) -> list[tuple[str, bytes]]:
    """Each message cut into `parts` messages of consecutive samples; with `reverse`, the
    newest part first, so every later part holds readings older than ones already stored."""
    out: list[tuple[str, bytes]] = []
    for topic, payload in messages:
        samples = orjson.loads(payload)
        size = -(-len(samples) // parts)
        pieces = [samples[i : i + size] for i in range(0, len(samples), size)]
        if reverse:
            pieces.reverse()
        out.extend((topic, orjson.dumps(piece)) for piece in pieces)
    return out


def measure_late(server: str, readings: int, rounds: int) -> None:
    """The cost of late readings: the same readings with 1,000 rules, each source's message cut
    in 5, delivered oldest part first or newest part first (4 parts in 5 then arrive late)."""
    rules = Rules.from_profile(load_profile(PROFILE))
    count = readings // 100
    rates: dict[str, list[float]] = {"in order": [], "late": []}
    outcomes: dict[str, list[list[tuple[object, ...]]]] = {"in order": [], "late": []}
    for r in range(rounds):
        base = datetime.now(UTC) - timedelta(hours=20) + timedelta(minutes=r)
        messages = payloads(count, base, seed=r)
        for label, reverse in (("in order", False), ("late", True)):
            with fresh_database(server, "alerts", f"late{r}_{int(reverse)}") as db_url:
                setup(db_url, with_rules=True)
                items = build(split(messages, 5, reverse=reverse), rules)
                engine = AlertEngine(reopen_window_s=0)
                rates[label].append(drain(db_url, items, engine=engine))
                with psycopg.connect(libpq_url(db_url)) as conn:
                    rows = conn.execute(
                        "SELECT cause_key, condition_started_at, condition_fired_at, "
                        "condition_ended_at, severity, peak_severity, status FROM alert "
                        "WHERE NOT retracted ORDER BY cause_key, condition_started_at"
                    ).fetchall()
                    outcomes[label].append(list(rows))
    print(f"late readings, {readings:,} readings in 20-reading messages, {rounds} rounds each")
    for label, values in rates.items():
        shown = ", ".join(f"{v:,.0f}" for v in values)
        print(f"  {label:<9} median {statistics.median(values):>10,.0f} readings/s  ({shown})")
    ratio = statistics.median(rates["in order"]) / statistics.median(rates["late"])
    same = outcomes["in order"] == outcomes["late"]
    counts = [len(a) for a in outcomes["late"]]
    print(
        f"  late costs {ratio:.2f}x; alerts per round {counts}, "
        f"{'the same' if same else 'NOT the same'} as in order"
    )


def measure_latency(server: str, seconds: float, background_rate: float, tmp: Path) -> None:
    with (
        EmbeddedBroker(tmp / "mqtt", kind="mosquitto") as broker,
        fresh_database(server, "alerts", "latency") as db_url,
    ):
        setup(db_url, with_rules=True)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IOC_")},
            "IOC_DATABASE_URL": db_url,
            "IOC_MQTT_URL": broker.url,
            "IOC_PROFILE": PROFILE,
            "IOC_ALERTS_REOPEN_WINDOW_S": "0",
            "IOC_LOG_LEVEL": "WARNING",
        }
        ioc = str(Path(sys.executable).with_name("ioc"))
        worker = subprocess.Popen([ioc, "ingest"], env=env, stdout=subprocess.DEVNULL)
        notified: dict[int, float] = {}
        stop = threading.Event()
        listening = threading.Event()

        def listen() -> None:
            with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
                conn.execute("LISTEN ioc_alert_event")
                listening.set()
                while not stop.is_set():
                    for n in conn.notifies(timeout=0.2):
                        notified[int(n.payload)] = time.time()

        listener = threading.Thread(target=listen)
        listener.start()
        listening.wait(10)
        endpoint = parse_mqtt_url(broker.url)
        client = paho_client(endpoint, "bench-alerts-pub")
        client.max_inflight_messages_set(1000)
        client.connect(endpoint.host, endpoint.port)
        client.loop_start()
        time.sleep(3)  # the worker connects and subscribes
        rnd = random.Random(7)
        per_s = background_rate / 100
        probes: dict[str, float] = {}
        started = time.perf_counter()
        sent = 0
        next_probe = 0.0
        while (elapsed := time.perf_counter() - started) < seconds:
            while sent < per_s * elapsed:
                i = rnd.randrange(SOURCES)
                now_ms = int(time.time() * 1000)
                samples = [
                    {
                        "ts": now_ms - 1000 * (24 - j),
                        "values": {m: round(rnd.uniform(*NORMAL[m]), 3) for m in METRICS},
                    }
                    for j in range(25)
                ]
                client.publish(
                    f"ioc/v1/{SECTOR}/{source_id(i)}/telemetry", orjson.dumps(samples), qos=1
                )
                sent += 1
            if elapsed >= next_probe:
                probe = f"probe-{len(probes):04d}"
                body = orjson.dumps({"values": {PROBE_RULE_METRIC: PROBE_VALUE}})
                probes[probe] = time.time()
                client.publish(f"ioc/v1/{SECTOR}/{probe}/telemetry", body, qos=1)
                next_probe += 0.2
            time.sleep(0.002)
        achieved = sent * 100 / (time.perf_counter() - started)
        # background sources are drawn at random: a few samples repeat and are stored once
        wait_for_readings(db_url, sent * 100 + len(probes), timeout_s=120, stall_s=3)
        time.sleep(1)
        stop.set()
        listener.join()
        client.disconnect()
        client.loop_stop()
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        with psycopg.connect(libpq_url(db_url)) as conn:
            rows = conn.execute(
                "SELECT e.id, a.source_id FROM alert_event e JOIN alert a ON a.id = e.alert_id "
                "WHERE e.kind = 'opened' AND a.source_id LIKE 'probe-%'"
            ).fetchall()
    lags = sorted((notified[eid] - probes[src]) * 1000 for eid, src in rows if eid in notified)
    if len(lags) < 2:
        print(f"latency: only {len(lags)} probe alerts were notified")
        return
    q = statistics.quantiles(lags, n=100, method="inclusive")
    ok = q[98] <= 100
    print(
        f"publish-to-NOTIFY of an opening alert, {len(lags)} of {len(probes)} probes, "
        f"background {achieved:,.0f} readings/s: p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, "
        f"max {lags[-1]:.1f} ms ({'meets' if ok else 'MISSES'} target p99 <= 100 ms)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "IOC_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server where databases may be created and dropped",
    )
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=30)
    parser.add_argument("--background-rate", type=float, default=10_000)
    parser.add_argument("--quick", action="store_true", help="a tenth of the volume")
    args = parser.parse_args(argv)
    if args.quick:
        args.readings //= 10
        args.latency_seconds /= 3
    print(f"ioc alerts benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores")
    measure_overhead(args.database_url, args.readings, args.rounds)
    measure_late(args.database_url, args.readings, args.rounds)
    with tempfile.TemporaryDirectory(prefix="ioc-bench-") as tmp:
        measure_latency(args.database_url, args.latency_seconds, args.background_rate, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
