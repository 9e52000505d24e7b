"""Websocket benchmark: 1,000 clients on `/ws/alerts`, 50 alert events a second while ingest
stores 10,000 readings a second; latency from the MQTT publish that trips a rule to receipt by
each client, events missed, API memory.

Not a test: it prints figures. Usage (PostgreSQL reachable, `mosquitto` on PATH):

    .venv/bin/python bench/ws.py [--clients 1000] [--rate 50] [--readings-rate 10000]
                                 [--seconds 60] [--quick]

Everything runs on this machine, each part in a process of its own, and stops by itself:

* a fresh database (`bench_ws_*`, migrated, the mekong profile synced and its rules seeded;
  dropped at the end); a Mosquitto of its own (or the broker at `--mqtt-url`);
* the API: `ioc serve` (one uvicorn process; its RSS read from /proc);
* ingest: `ioc ingest` (one worker), with the alert engine;
* a background publisher: ordinary telemetry (100-reading messages of 25 samples x 4 water
  metrics, stamped with the time of publishing, values below every threshold: trips nothing);
* a tripping publisher: agency events over MQTT (`ioc/v1/{sector}/{source}/event`, severity
  warning or critical, a new `external_ref` each), which the profile's event rule of the sector
  turns into a new alert at once: one publish, one alert, one `opened` alert event. The title
  carries the time of publishing (time.time_ns) and comes back in the document every client
  gets (`event.alert.title`);
* websocket clients spread over several processes (bench/ws_clients.py).

Baseline, in the same run and the same processes: 1 client, no background telemetry, the same
event rate. The ratio loaded p99 / baseline p99 is printed.

Where the time goes, per event: publish -> start of the ingest transaction that stored it
(`alert_event.at`, now() of that transaction), -> its NOTIFY received by a LISTEN connection
of this process (about the commit), -> receipt by the clients. Also printed: the API's CPU
time per event message delivered (what one core could send at most), and the CPU of every
part over the window (other work on the machine shows as the rest).

After the window the clients are waited for (up to `--drain-max`, while they still receive)
so that "missed" counts events never delivered, not late ones. A full run takes 3 to 7
minutes; `--quick` (100 clients, 10 s) about 40 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx
import orjson
import paho.mqtt.client as paho
import psutil
import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from benchlib import PROFILE, fresh_database  # noqa: E402

from ioc.catalogue import load_profile  # noqa: E402
from ioc.db import libpq_url  # noqa: E402
from ioc.embedded_broker import EmbeddedBroker  # noqa: E402
from ioc.embedded_pg import free_port  # noqa: E402
from ioc.keys import create_key  # noqa: E402
from ioc.mqtt import end_session, paho_client, parse_mqtt_url  # noqa: E402
from ioc.settings import DEVELOPMENT_PEPPER  # noqa: E402

DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/postgres"
BG_SECTOR = "water"
BG_METRICS = ("salinity", "water_level", "rainfall_24h", "supply_chloride")
BG_NORMAL = {  # below every threshold of the profile
    "salinity": (0.1, 0.8),
    "water_level": (0.3, 1.2),
    "rainfall_24h": (0.0, 40.0),
    "supply_chloride": (20.0, 180.0),
}
BG_SOURCES = 1000
BG_SAMPLES = 25  # x 4 metrics = 100 readings a message
TITLE = "wsb"  # alert titles: "wsb {phase} {n} {publish time_ns}"
MiB = 2**20


# -- child roles: the publishers -------------------------------------------------------------


def _publisher(mqtt_url: str, name: str) -> paho.Client:
    endpoint = parse_mqtt_url(mqtt_url)
    client = paho_client(endpoint, f"{name}-{os.getpid()}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.connect(endpoint.host, endpoint.port)
    client.loop_start()
    if not connected.wait(10):
        raise SystemExit(f"{name}: could not connect to {mqtt_url}")
    return client


def role_background(mqtt_url: str, rate: float, out: Path) -> None:
    """Ordinary telemetry at `rate` readings/s in 100-reading messages until SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client = _publisher(mqtt_url, "bench-ws-bg")
    rnd = random.Random(11)
    per_s = rate / (BG_SAMPLES * len(BG_METRICS))
    # each source reports every BG_SOURCES / per_s seconds: its samples cover that span
    step_ms = max(1, int(1000 * BG_SOURCES / per_s / BG_SAMPLES))
    sent = 0
    started = time.monotonic()
    while not stop.is_set():
        due = int(per_s * (time.monotonic() - started))
        while sent < due:
            now_ms = time.time_ns() // 1_000_000
            samples = [
                {
                    "ts": now_ms - step_ms * (BG_SAMPLES - 1 - j),
                    "values": {m: round(rnd.uniform(*BG_NORMAL[m]), 3) for m in BG_METRICS},
                }
                for j in range(BG_SAMPLES)
            ]
            topic = f"ioc/v1/{BG_SECTOR}/ws-bg-{sent % BG_SOURCES:04d}/telemetry"
            client.publish(topic, orjson.dumps(samples), qos=1)
            sent += 1
        stop.wait(0.005)
    elapsed = time.monotonic() - started
    client.disconnect()
    client.loop_stop()
    out.write_text(json.dumps({"messages": sent, "readings": sent * 100, "seconds": elapsed}))


def event_payload(phase: str, n: int, tag: str, published_ns: int) -> bytes:
    return orjson.dumps(
        {
            "kind": "bench",
            "severity": "critical" if n % 2 else "warning",
            "title": f"{TITLE} {phase} {n} {published_ns}",
            "external_ref": f"{TITLE}-{tag}-{phase}-{n}",
        }
    )


def event_topic(sectors: Sequence[str], n: int) -> str:
    sector = sectors[n % len(sectors)]
    return f"ioc/v1/{sector}/ws-agency-{sector}/event"


def role_trips(mqtt_url: str, phase: str, rate: float, count: int, tag: str, out: Path) -> None:
    """`count` rule-tripping agency events at `rate` a second, each stamped when published."""
    sectors = [s.id for s in load_profile(PROFILE).sectors]
    client = _publisher(mqtt_url, "bench-ws-trips")
    published: dict[int, int] = {}
    infos = []
    t0 = time.monotonic() + 0.1
    for n in range(count):
        delay = t0 + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        ns = time.time_ns()
        infos.append(client.publish(event_topic(sectors, n), event_payload(phase, n, tag, ns), 1))
        published[n] = ns
    for info in infos:
        info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()
    out.write_text(
        json.dumps(
            {
                "published": published,
                "seconds": time.monotonic() - t0,
                "cpu_s": time.process_time(),
            }
        )
    )


# -- services ------------------------------------------------------------------------------


@dataclass
class Procs:
    """Every process this run started, stopped in `stop_all` (reverse order)."""

    started: list[subprocess.Popen[Any]] = field(default_factory=list)

    def start(self, cmd: list[str], **kw: Any) -> subprocess.Popen[Any]:
        proc: subprocess.Popen[Any] = subprocess.Popen(cmd, **kw)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.started):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def child_cmd(role: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--role", role, *args]


def base_env(db_url: str, mqtt_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOC_")}
    return env | {
        "IOC_DATABASE_URL": db_url,
        "IOC_MQTT_URL": mqtt_url,
        "IOC_PROFILE": PROFILE,
        "IOC_LOG_LEVEL": "WARNING",
    }


def start_api(procs: Procs, env: dict[str, str], profile: str | None) -> tuple[str, psutil.Process]:
    """`ioc serve` in a process of its own (under cProfile, writing to `profile`, if given)."""
    port = free_port()
    ioc = (
        [sys.executable, "-m", "cProfile", "-o", profile, "-m", "ioc"]
        if profile
        else [str(Path(sys.executable).with_name("ioc"))]
    )
    proc = procs.start([*ioc, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        with suppress(httpx.HTTPError):
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return base, psutil.Process(proc.pid)
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the API server did not start")
        time.sleep(0.2)


def rss(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM (peak RSS) of a process from /proc, bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found["VmRSS"], found["VmHWM"]


class RssSampler:
    """The API's RSS every 0.2 s; the peak seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with suppress(OSError, KeyError):
                self.peak = max(self.peak, rss(self.pid)[0])
            self._stop.wait(0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class Listener:
    """A LISTEN connection on `ioc_alert_event`: when each event id was notified (ns)."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.at: dict[int, int] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise SystemExit("could not LISTEN")

    def _run(self) -> None:
        with psycopg.connect(libpq_url(self.db_url), autocommit=True) as conn:
            conn.execute("LISTEN ioc_alert_event")
            self._ready.set()
            while not self._stop.is_set():
                for n in conn.notifies(timeout=0.2):
                    self.at[int(n.payload)] = time.time_ns()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class ClientProcs:
    """Websocket client processes (bench/ws_clients.py) and their line protocol."""

    def __init__(
        self,
        procs: Procs,
        url: str,
        key: str,
        sizes: list[int],
        tmp: Path,
        tag: str,
        *,
        deflate: bool,
    ) -> None:
        self.outs = [tmp / f"clients-{tag}-{i}.json" for i in range(len(sizes))]
        self.popens: list[subprocess.Popen[str]] = []
        for i, size in enumerate(sizes):
            cmd = [
                sys.executable,
                str(HERE / "ws_clients.py"),
                *("--url", url, "--key", key, "--clients", str(size), "--out", str(self.outs[i])),
                *(["--check"] if i == 0 else []),
                *([] if deflate else ["--no-deflate"]),
            ]
            self.popens.append(
                procs.start(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            )

    def _line(self, proc: subprocess.Popen[str], timeout_s: float) -> str:
        assert proc.stdout is not None
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(_readline(proc.stdout)), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not got:
            raise SystemExit(f"a client process did not answer within {timeout_s:.0f} s")
        return got[0].strip()

    def wait_ready(self, timeout_s: float) -> None:
        for proc in self.popens:
            line = self._line(proc, timeout_s)
            if not line.startswith("ready"):
                raise SystemExit(f"a client process said {line!r}")

    def _say(self, proc: subprocess.Popen[str], line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()

    def counts(self) -> tuple[int, int, int, int]:
        """Events received per client (fewest, most), all together, and connections open."""
        low, high, total, open_ = 1 << 62, 0, 0, 0
        for proc in self.popens:
            self._say(proc, "count")
            _, a, b, c, d = self._line(proc, 30).split()
            low, high = min(low, int(a)), max(high, int(b))
            total, open_ = total + int(c), open_ + int(d)
        return low, high, total, open_

    def stop(self) -> list[dict[str, Any]]:
        for proc in self.popens:
            self._say(proc, "stop")
        for proc in self.popens:
            self._line(proc, 120)
            proc.wait(60)
        return [orjson.loads(out.read_bytes()) for out in self.outs]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.popens]


def _readline(stream: IO[str] | None) -> str:
    return stream.readline() if stream is not None else ""


# -- CPU accounting --------------------------------------------------------------------------


def _cpu(pid: int) -> float:
    with suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    return 0.0


class CpuAccount:
    """CPU seconds of groups of processes between `start` and `stop`, and the machine's."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    @staticmethod
    def _named(name: str) -> list[int]:
        return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == name]

    def _snapshot(self) -> dict[int, float]:
        pids = {pid for pids in self.groups.values() for pid in pids}
        pids |= set(self._named("postgres")) | set(self._named("mosquitto"))
        return {pid: _cpu(pid) for pid in pids}

    def start(self) -> None:
        self._groups_at_start = {
            **self.groups,
            "postgres (all)": self._named("postgres"),
            "mosquitto": self._named("mosquitto"),
        }
        self._t0 = time.monotonic()
        self._machine0 = psutil.cpu_times()
        self._cpu0 = self._snapshot()

    def stop(self) -> tuple[float, dict[str, float], float]:
        """Seconds, CPU seconds per group, machine busy fraction (of all cores)."""
        cpu1 = self._snapshot()
        elapsed = time.monotonic() - self._t0
        machine1 = psutil.cpu_times()
        groups = {
            **self.groups,
            "postgres (all)": self._named("postgres"),
            "mosquitto": self._named("mosquitto"),
        }
        used = {
            name: sum(cpu1.get(p, _cpu(p)) - self._cpu0.get(p, 0.0) for p in pids)
            for name, pids in groups.items()
        }
        idle0 = self._machine0.idle + getattr(self._machine0, "iowait", 0.0)
        idle1 = machine1.idle + getattr(machine1, "iowait", 0.0)
        total0, total1 = sum(self._machine0), sum(machine1)
        busy = 1 - (idle1 - idle0) / (total1 - total0) if total1 > total0 else float("nan")
        return elapsed, used, busy


# -- figures ---------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of sorted values (nearest rank)."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def dist(values: list[float]) -> str:
    values.sort()
    return (
        f"p50 {pct(values, 0.5):.1f} ms, p95 {pct(values, 0.95):.1f} ms, "
        f"p99 {pct(values, 0.99):.1f} ms, max {values[-1] if values else float('nan'):.1f} ms"
    )


@dataclass
class Event:
    seq: int
    id: int
    n: int
    published_ns: int
    txn_ns: int
    notified_ns: int | None = None


def phase_events(db_url: str, phase: str) -> dict[int, Event]:
    """The phase's alert events by cursor, with the publish time their title carries."""
    with psycopg.connect(libpq_url(db_url)) as conn:
        rows = conn.execute(
            "SELECT e.seq, e.id, a.title, e.at "
            "FROM alert_event e JOIN alert a ON a.id = e.alert_id "
            "WHERE a.title LIKE %s AND e.seq IS NOT NULL ORDER BY e.seq",
            (f"{TITLE} {phase} %",),
        ).fetchall()
    out = {}
    for seq, eid, title, at in rows:
        _, _, n, ns = str(title).split()
        at_ns = int(at.timestamp() * 1e6) * 1000
        out[int(seq)] = Event(int(seq), int(eid), int(n), int(ns), at_ns)
    return out


def count_phase(db_url: str, phase: str) -> int:
    with psycopg.connect(libpq_url(db_url)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM alert_event e JOIN alert a ON a.id = e.alert_id "
            "WHERE a.title LIKE %s AND e.seq IS NOT NULL",
            (f"{TITLE} {phase} %",),
        ).fetchone()
    return int(row[0]) if row else 0


def other_events(db_url: str, after_phase: str, phase: str) -> list[tuple[str, str, str, int]]:
    """Alert events committed after `after_phase`'s that are not `phase`'s: (kind, rule kind,
    title start, count)."""
    with psycopg.connect(libpq_url(db_url)) as conn:
        rows = conn.execute(
            "SELECT e.kind, a.rule_kind, left(a.title, 24), count(*) "
            "FROM alert_event e JOIN alert a ON a.id = e.alert_id "
            "WHERE e.seq > (SELECT coalesce(max(e2.seq), 0) FROM alert_event e2 "
            "               JOIN alert a2 ON a2.id = e2.alert_id WHERE a2.title LIKE %s) "
            "AND a.title NOT LIKE %s GROUP BY 1, 2, 3 ORDER BY 4 DESC",
            (f"{TITLE} {after_phase} %", f"{TITLE} {phase} %"),
        ).fetchall()
    return [(str(k), str(r), str(t), int(n)) for k, r, t, n in rows]


def count_readings(db_url: str) -> int:
    with psycopg.connect(libpq_url(db_url)) as conn:
        row = conn.execute("SELECT count(*) FROM reading").fetchone()
    return int(row[0]) if row else 0


@dataclass
class PhaseResult:
    label: str
    clients: int
    sent: int
    committed: int
    received_min: int
    received_max: int
    missed: int
    duplicates: int
    reconnects: int
    closes: dict[str, int]
    errors: list[str]
    latencies: list[float]
    p99: float
    to_txn: list[float]
    to_notify: list[float]
    notify_to_receipt: list[float]
    notify_to_last: list[float]
    checked: int
    check_mismatches: int


def analyse(
    label: str,
    db_url: str,
    phase: str,
    published: dict[int, int],
    results: list[dict[str, Any]],
    notified: dict[int, int],
) -> PhaseResult:
    events = phase_events(db_url, phase)
    for event in events.values():
        event.notified_ns = notified.get(event.id)
    expected = set(events)
    latencies: list[float] = []
    notify_to_receipt: list[float] = []
    last_receipt: dict[int, int] = {}
    per_client: list[int] = []
    missed = duplicates = reconnects = 0
    closes: dict[str, int] = {}
    errors: list[str] = []
    checked = mismatches = 0
    for result in results:
        for title_cursor in result["checked"]:
            cursor, title = title_cursor
            if cursor in events:
                checked += 1
                ns = int(str(title).split()[3])
                e = events[cursor]
                mismatches += ns != e.published_ns or published.get(e.n) != ns
        for client in result["clients"]:
            reconnects += client["reconnects"]
            for close in client["closes"]:
                closes[close] = closes.get(close, 0) + 1
            errors += client["errors"]
            seen: set[int] = set()
            for cursor, ns in zip(client["cursors"], client["received_ns"], strict=True):
                if cursor not in events:
                    continue
                event = events[cursor]
                if cursor in seen:
                    duplicates += 1
                    continue
                seen.add(cursor)
                latencies.append((ns - event.published_ns) / 1e6)
                if event.notified_ns is not None:
                    notify_to_receipt.append((ns - event.notified_ns) / 1e6)
                last_receipt[cursor] = max(last_receipt.get(cursor, 0), ns)
            per_client.append(len(seen))
            missed += len(expected - seen)
    ordered = sorted(latencies)
    return PhaseResult(
        label=label,
        clients=len(per_client),
        sent=len(published),
        committed=len(events),
        received_min=min(per_client, default=0),
        received_max=max(per_client, default=0),
        missed=missed,
        duplicates=duplicates,
        reconnects=reconnects,
        closes=closes,
        errors=errors[:5],
        latencies=ordered,
        p99=pct(ordered, 0.99),
        to_txn=[(e.txn_ns - e.published_ns) / 1e6 for e in events.values()],
        to_notify=[
            (e.notified_ns - e.published_ns) / 1e6 for e in events.values() if e.notified_ns
        ],
        notify_to_receipt=notify_to_receipt,
        notify_to_last=[
            (last_receipt[s] - e.notified_ns) / 1e6
            for s, e in events.items()
            if e.notified_ns and s in last_receipt
        ],
        checked=checked,
        check_mismatches=mismatches,
    )


def report(r: PhaseResult) -> None:
    print(f"{r.label}")
    print(
        f"  clients {r.clients}; events published {r.sent}, committed {r.committed}; "
        f"received per client min {r.received_min}, max {r.received_max}; "
        f"missed (total over clients) {r.missed}; duplicates {r.duplicates}"
    )
    if r.reconnects or r.closes or r.errors:
        print(f"  reconnects {r.reconnects}; closes {r.closes}; errors {r.errors}")
    print(
        f"  documents checked (publish time in the title = the one published): {r.checked}, "
        f"mismatches {r.check_mismatches}"
    )
    print(f"  publish -> receipt ({len(r.latencies):,} receipts): {dist(list(r.latencies))}")
    print("  where the time goes:")
    print(f"    publish -> ingest transaction start (alert_event.at): {dist(r.to_txn)}")
    print(f"    publish -> NOTIFY at a LISTEN connection (~commit): {dist(r.to_notify)}")
    print(f"    NOTIFY -> receipt, every receipt: {dist(r.notify_to_receipt)}")
    print(f"    NOTIFY -> receipt by the last client, per event: {dist(r.notify_to_last)}")


# -- phases ----------------------------------------------------------------------------------


def wait_committed(db_url: str, phase: str, expected: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        got = count_phase(db_url, phase)
        if got >= expected or time.monotonic() > deadline:
            return got
        time.sleep(0.25)


def wait_received(
    clients: ClientProcs, expected: int, stall_s: float, cap_s: float
) -> tuple[int, int, float]:
    """Wait until every client has `expected` events, or no client received anything for
    `stall_s`, or `cap_s` passed: (fewest, most, seconds waited)."""
    started = time.monotonic()
    best, since = -1, started
    while True:
        low, high, total, _ = clients.counts()
        now = time.monotonic()
        if total > best:
            best, since = total, now
        if low >= expected or now - since > stall_s or now - started > cap_s:
            return low, high, now - started
        time.sleep(0.5)


def start_trips(
    procs: Procs, mqtt_url: str, phase: str, rate: float, count: int, tag: str, tmp: Path
) -> tuple[subprocess.Popen[Any], Path]:
    out = tmp / f"trips-{phase}.json"
    proc = procs.start(
        child_cmd("trips", "--mqtt-url", mqtt_url, "--phase", phase, "--rate", str(rate),
                  "--count", str(count), "--tag", tag, "--out", str(out))
    )  # fmt: skip
    return proc, out


def finish_trips(
    proc: subprocess.Popen[Any], out: Path, timeout_s: float
) -> tuple[dict[int, int], float]:
    """When each event was published, by number (once the publisher has ended); the
    publisher's CPU seconds."""
    proc.wait(timeout_s)
    if proc.returncode != 0:
        raise SystemExit(f"the tripping publisher failed ({proc.returncode})")
    data = json.loads(out.read_text())
    return {int(k): int(v) for k, v in data["published"].items()}, float(data["cpu_s"])


def warm_up_ingest(db_url: str, mqtt_url: str, tag: str) -> None:
    """Publish events until the ingest worker, once subscribed, turns one into an alert."""
    sectors = [s.id for s in load_profile(PROFILE).sectors]
    client = _publisher(mqtt_url, "bench-ws-warm")
    try:
        deadline = time.monotonic() + 60
        n = 0
        while count_phase(db_url, "W") == 0:
            if time.monotonic() > deadline:
                raise SystemExit("ingest did not turn an event into an alert within 60 s")
            client.publish(
                event_topic(sectors, n), event_payload("W", n, tag, time.time_ns()), qos=1
            )
            n += 1
            time.sleep(0.5)
    finally:
        client.disconnect()
        client.loop_stop()


def split(clients: int, processes: int) -> list[int]:
    processes = max(1, min(processes, clients))
    return [clients // processes + (i < clients % processes) for i in range(processes)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("IOC_BENCH_DATABASE_URL", DEFAULT_DB),
        help="a PostgreSQL server where databases may be created and dropped",
    )
    parser.add_argument(
        "--mqtt-url",
        default=os.environ.get("IOC_BENCH_MQTT_URL"),
        help="an MQTT broker to use; default: a Mosquitto of this run's own (a shared broker "
        "mixes in other users' messages, and their ingest workers take the bench's)",
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--rate", type=float, default=50, help="alert events per second")
    parser.add_argument("--readings-rate", type=float, default=10_000, help="background readings/s")
    parser.add_argument("--seconds", type=float, default=60, help="measured window")
    parser.add_argument("--warmup", type=float, default=10, help="background before the window")
    parser.add_argument("--baseline-seconds", type=float, default=20)
    parser.add_argument(
        "--drain-max",
        type=float,
        default=300,
        help="longest wait, after the window, for the clients to receive every event",
    )
    parser.add_argument("--no-deflate", action="store_true", help="clients offer no compression")
    parser.add_argument("--quick", action="store_true", help="100 clients, 10 s: a smoke run")
    parser.add_argument(
        "--api-profile",
        metavar="PATH",
        help="run the API under cProfile and write its profile here (slows it down)",
    )
    # child roles
    parser.add_argument("--role", choices=["background", "trips"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "background":
        role_background(args.mqtt_url, args.readings_rate, Path(args.out))
        return 0
    if args.role == "trips":
        role_trips(args.mqtt_url, args.phase, args.rate, args.count, args.tag, Path(args.out))
        return 0
    if args.quick:
        args.clients = min(args.clients, 100)
        args.client_processes = min(args.client_processes, 2)
        args.seconds, args.warmup, args.baseline_seconds = 10.0, 3.0, 5.0
    with tempfile.TemporaryDirectory(prefix="ioc-bench-ws-") as tmp:
        run(args, Path(tmp))
    return 0


def run(args: argparse.Namespace, tmp: Path) -> None:
    tag = f"{os.getpid()}"
    client_id = f"bench-ws-{tag}"
    procs = Procs()
    with ExitStack() as stack:
        if args.mqtt_url is None:
            broker = stack.enter_context(EmbeddedBroker(tmp / "mqtt", kind="mosquitto"))
            mqtt_url, which = broker.url, "a Mosquitto of its own"
        else:
            mqtt_url, which = args.mqtt_url, "shared"
        print(
            f"ioc websocket benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
            f"{os.cpu_count()} cores, broker {mqtt_url} ({which})"
        )
        idle_busy = psutil.cpu_percent(interval=3)
        print(
            f"machine before the run: {idle_busy:.0f} % busy over 3 s, load average "
            f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} (other work on the machine skews "
            "every figure)"
        )
        db_url = stack.enter_context(fresh_database(args.database_url, "ws", "run"))
        stack.callback(end_session, mqtt_url, f"{client_id}-0")
        stack.callback(procs.stop_all)
        with psycopg.connect(libpq_url(db_url)) as conn:
            _, key = create_key(
                conn, name="bench ws", role="viewer", pepper=DEVELOPMENT_PEPPER, actor="bench"
            )
        env = base_env(db_url, mqtt_url)
        base, api = start_api(procs, env, args.api_profile)
        ws_url = base.replace("http://", "ws://") + "/ws/alerts"
        ioc = str(Path(sys.executable).with_name("ioc"))
        ingest = procs.start(
            [ioc, "ingest"],
            env=env | {"IOC_INGEST_CLIENT_ID": client_id, "IOC_INGEST_STATS_INTERVAL_S": "3600"},
        )
        listener = Listener(db_url)
        stack.callback(listener.close)
        warm_up_ingest(db_url, mqtt_url, tag)
        deflate = not args.no_deflate
        print(
            f"API: ioc serve (pid {api.pid}); ingest: ioc ingest, 1 worker; clients "
            f"{'offer' if deflate else 'do not offer'} permessage-deflate"
        )

        # baseline: 1 client, no background telemetry
        count_b = max(1, round(args.rate * args.baseline_seconds))
        one = ClientProcs(procs, ws_url, key, [1], tmp, "b", deflate=deflate)
        one.wait_ready(120)
        trips, out = start_trips(procs, mqtt_url, "B", args.rate, count_b, tag, tmp)
        published_b, _ = finish_trips(trips, out, count_b / args.rate + 120)
        wait_committed(db_url, "B", count_b, 60)
        wait_received(one, count_b, 10, 60)
        baseline = analyse(
            f"baseline: 1 client, no background telemetry, {args.rate:g} events/s for "
            f"{args.baseline_seconds:g} s",
            db_url,
            "B",
            published_b,
            one.stop(),
            listener.at,
        )
        report(baseline)

        # loaded
        rss_start, _ = rss(api.pid)
        api_cpu_0 = api.cpu_times()
        sampler = RssSampler(api.pid)
        stack.callback(sampler.close)
        sizes = split(args.clients, args.client_processes)
        connect_t0 = time.monotonic()
        crowd = ClientProcs(procs, ws_url, key, sizes, tmp, "l", deflate=deflate)
        crowd.wait_ready(300)
        connect_s = time.monotonic() - connect_t0
        rss_connected, _ = rss(api.pid)
        open_ = crowd.counts()[3]
        bg_out = tmp / "background.json"
        background = procs.start(
            child_cmd("background", "--mqtt-url", mqtt_url, "--readings-rate",
                      str(args.readings_rate), "--out", str(bg_out))
        )  # fmt: skip
        time.sleep(args.warmup)
        cpu = CpuAccount(
            {
                "API (ioc serve)": [api.pid],
                "ingest (pool + worker)": [
                    ingest.pid,
                    *(c.pid for c in psutil.Process(ingest.pid).children(recursive=True)),
                ],
                "websocket clients": crowd.pids,
                "background publisher": [background.pid],
                "this script": [os.getpid()],
            }
        )
        count_l = max(1, round(args.rate * args.seconds))
        readings_0, t0 = count_readings(db_url), time.monotonic()
        trips, out = start_trips(procs, mqtt_url, "L", args.rate, count_l, tag, tmp)
        cpu.start()
        trips.wait(count_l / args.rate + 120)
        cpu_s, cpu_used, busy = cpu.stop()
        published_l, cpu_used["tripping publisher"] = finish_trips(trips, out, 1)
        readings_1, t1 = count_readings(db_url), time.monotonic()
        background.send_signal(signal.SIGTERM)
        background.wait(30)
        bg = json.loads(bg_out.read_text())
        committed = wait_committed(db_url, "L", count_l, 60)
        low, high, drain_s = wait_received(crowd, committed, 15, args.drain_max)
        api_cpu_1 = api.cpu_times()
        api_user = api_cpu_1.user - api_cpu_0.user
        api_system = api_cpu_1.system - api_cpu_0.system
        api_cpu_s = api_user + api_system
        rss_end, hwm = rss(api.pid)
        sampler.close()
        results = crowd.stop()
        time.sleep(1)
        rss_after, _ = rss(api.pid)
        loaded = analyse(
            f"loaded: {args.clients} clients in {len(sizes)} processes, {args.rate:g} events/s "
            f"for {args.seconds:g} s, background {args.readings_rate:,.0f} readings/s",
            db_url,
            "L",
            published_l,
            results,
            listener.at,
        )
        print(f"clients connected: {open_} of {args.clients} (all live after {connect_s:.1f} s)")
        report(loaded)
        others = other_events(db_url, "B", "L")
        if others:
            print(f"  other alert events since the baseline (kind, rule, title, count): {others}")
        ok = loaded.p99 <= 100 and loaded.missed == 0
        print(
            f"  target p99 <= 100 ms and nothing missed: {'MEETS' if ok else 'MISSES'}; "
            f"ratio loaded p99 / baseline p99 = {loaded.p99 / baseline.p99:.2f} "
            f"({loaded.p99:.1f} / {baseline.p99:.1f} ms)"
        )
        print(
            f"  ingest: published {bg['readings'] / bg['seconds']:,.0f} readings/s; stored "
            f"{(readings_1 - readings_0) / (t1 - t0):,.0f} readings/s over the window "
            f"(database count, {readings_1 - readings_0:,} in {t1 - t0:.1f} s)"
        )
        print(
            f"  API RSS: start {rss_start / MiB:.0f} MiB, {args.clients} clients connected "
            f"{rss_connected / MiB:.0f} MiB, peak {max(sampler.peak, rss_end) / MiB:.0f} MiB "
            f"(VmHWM {hwm / MiB:.0f} MiB), end of window {rss_end / MiB:.0f} MiB, "
            f"after the clients left {rss_after / MiB:.0f} MiB"
        )
        known = sum(cpu_used.values())
        ncpu = os.cpu_count() or 1
        shares = ", ".join(f"{k} {100 * v / cpu_s:.0f} %" for k, v in cpu_used.items())
        print(
            f"  CPU over the window ({cpu_s:.1f} s, % of one core): {shares}; machine busy "
            f"{100 * busy:.0f} % of {ncpu} cores = {100 * busy * ncpu:.0f} % of one core, of "
            f"which {100 * max(0.0, busy * ncpu * cpu_s - known) / cpu_s:.0f} % outside these "
            f"processes (other users of the machine)"
        )
        delivered = len(loaded.latencies)
        print(
            f"  after the window, the clients were waited for {drain_s:.0f} s (received per "
            f"client: min {low}, max {high}); the API used {api_cpu_s:.1f} CPU s from the first "
            f"client connecting to then ({api_user:.1f} user, {api_system:.1f} system): "
            f"{1e6 * api_cpu_s / max(1, delivered):.0f} us per event message delivered "
            f"({delivered:,}), i.e. at most "
            f"{delivered / api_cpu_s if api_cpu_s else float('nan'):,.0f} messages/s on a whole "
            f"core; the load asks for {args.clients * args.rate:,.0f}/s"
        )


if __name__ == "__main__":
    raise SystemExit(main())
