"""How long an ingest worker takes from process start to a subscription the broker answered.

Not a test: it prints figures. Usage (PostgreSQL reachable, `mosquitto` on PATH):

    .venv/bin/python bench/worker_start.py [--database-url URL] [--repeat 5] [--tree PATH]

Everything runs against a Mosquitto of its own and a fresh database (dropped afterwards).
Times are medians over --repeat runs, from the moment the bench spawns a process (the monotonic
clock is the same in every process), in milliseconds.

1. The phases of one worker start, measured inside a worker-like process that runs the real
   code path step by step: interpreter up, `import ingest.worker`, settings and profile,
   a database connection, MQTT CONNACK, SUBACK.
2. Suspects, one by one: importing the whole CLI (what a worker started as `ioc ingest ...`
   pays), `prepare()` (migrations and profile sync), a SUBACK queued behind a session's
   backlog, a session taken over from a connection still open or from a frozen process.
3. End to end through `ioc ingest --workers 2` of the source tree given by --tree (default:
   this one; give an older checkout to compare): cold start to the first worker subscribed,
   and a worker killed with SIGKILL to its replacement subscribed, with and without a backlog.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROFILE = "mekong"
EXPIRY_S = 3600
BENCH = (sys.executable, str(Path(__file__).resolve()))
IOC = str(Path(sys.executable).with_name("ioc"))


# -- the probe: a worker start, phase by phase (runs in a child process) --------------------


def role_probe(t0: float, client_id: str, backlog_wait: bool) -> None:
    """Print `phase seconds-since-spawn` lines while starting like a pool worker does."""
    marks: list[tuple[str, float]] = [("interpreter", time.monotonic() - t0)]
    from ingest.consumer import Consumer
    from ingest.worker import assignments_for, client_id_for, consumer_config, rules_for
    from ingest.worker import writer_for as make_writer

    marks.append(("imports", time.monotonic() - t0))
    from ioc.catalogue import load_profile
    from ioc.settings import load_settings

    settings = load_settings()
    profile = load_profile(settings.profile)
    assignment = assignments_for(settings, profile, 1)[0]
    marks.append(("settings+profile", time.monotonic() - t0))
    import psycopg

    from ioc.db import libpq_url

    assert settings.database_url is not None
    assert settings.mqtt_url is not None
    db_url = settings.database_url.get_secret_value()
    with psycopg.connect(libpq_url(db_url)) as conn:
        conn.execute("SELECT 1")
    marks.append(("database connected", time.monotonic() - t0))
    writer = make_writer(settings, db_url)
    cid = client_id or client_id_for(settings, 0)
    consumer = Consumer(
        consumer_config(settings, settings.mqtt_url.get_secret_value(), cid, assignment),
        rules=rules_for(settings, profile),
        writer=writer,
    )
    writer.start()
    consumer.start_background()
    while not consumer.connected:
        time.sleep(0.0005)
    marks.append(("CONNACK", time.monotonic() - t0))
    consumer.wait_subscribed(120)
    marks.append(("SUBACK", time.monotonic() - t0))
    for name, at in marks:
        print(f"{name}\t{at:.6f}", flush=True)
    if backlog_wait:  # leave the backlog where it was: nothing acknowledged
        os._exit(0)
    consumer.stop(drain_timeout_s=5)


# -- helpers --------------------------------------------------------------------------------


def row(label: str, ms: float, note: str = "") -> None:
    """One figure of the report."""
    print(f"  {label:<44}{ms:>8.0f}" + (f"  ({note})" if note else ""))


def median_ms(values: Sequence[float]) -> float:
    """Median, seconds to milliseconds."""
    return statistics.median(values) * 1000


def timed_process(argv: Sequence[str], env: dict[str, str]) -> float:
    """Seconds a command takes to run to completion."""
    t0 = time.monotonic()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def probe(env: dict[str, str], client_id: str = "", backlog_wait: bool = False) -> dict[str, float]:
    """Run the probe once; its phase times in seconds since spawn."""
    t0 = time.monotonic()
    out = subprocess.run(
        [*BENCH, "--role", "probe", "--t0", repr(t0)]
        + (["--client-id", client_id] if client_id else [])
        + (["--backlog-wait"] if backlog_wait else []),
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {k: float(v) for k, v in (line.split("\t") for line in out.strip().splitlines())}


def publish_backlog(mqtt_url: str, count: int, sector: str = "water") -> None:
    """`count` one-reading messages on `sector`, acknowledged by the broker."""
    import orjson

    from tests.support.ingest import Publisher

    base_ms = int(time.time() * 1000) - 3_600_000
    with Publisher(mqtt_url, max_inflight=1000) as pub:
        for n in range(count):
            body = orjson.dumps({"ts": base_ms + n, "values": {"salinity": 1.0}})
            pub.publish(f"ioc/v1/{sector}/bench-{n % 100}/telemetry", body)


def connack_s(mqtt_url: str, client_id: str) -> float:
    """Seconds from CONNECT to CONNACK (resuming `client_id`'s session)."""
    from ioc.mqtt import connect_properties, paho_client, parse_mqtt_url

    endpoint = parse_mqtt_url(mqtt_url)
    client = paho_client(endpoint, client_id, manual_ack=True, persistent=True)
    done = threading.Event()
    client.on_connect = lambda *args: done.set()
    t0 = time.monotonic()
    client.connect(
        endpoint.host,
        endpoint.port,
        clean_start=False,
        properties=connect_properties(session_expiry_s=EXPIRY_S, receive_maximum=1),
    )
    client.loop_start()
    done.wait(60)
    elapsed = time.monotonic() - t0
    client.disconnect()
    client.loop_stop()
    return elapsed


@contextmanager
def held_connection(mqtt_url: str, client_id: str, *, frozen: bool) -> Iterator[None]:
    """A process connected as `client_id` (SIGSTOPped when `frozen`: its socket stays open
    but it answers nothing, as a hung or half-dead worker)."""
    proc = subprocess.Popen(
        [*BENCH, "--role", "hold", "--client-id", client_id, "--mqtt-url", mqtt_url],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "up"
        if frozen:
            proc.send_signal(signal.SIGSTOP)
        yield
    finally:
        proc.kill()
        proc.wait()


def role_hold(mqtt_url: str, client_id: str) -> None:
    """Stay connected as `client_id` (until killed)."""
    from ioc.mqtt import connect_properties, paho_client, parse_mqtt_url

    endpoint = parse_mqtt_url(mqtt_url)
    client = paho_client(endpoint, client_id, persistent=True)
    up = threading.Event()
    client.on_connect = lambda *args: up.set()
    client.connect(
        endpoint.host,
        endpoint.port,
        keepalive=30,
        clean_start=False,
        properties=connect_properties(session_expiry_s=EXPIRY_S),
    )
    client.loop_start()
    up.wait(10)
    print("up", flush=True)
    threading.Event().wait()


def children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


class LogWatch:
    """Reads a process's output on a thread; remembers when each line arrived."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._cond:
                self.lines.append((time.monotonic(), line))
                self._cond.notify_all()

    def wait(self, match: Callable[[str], bool], after: float, timeout_s: float = 120) -> float:
        """Arrival time of the first matching line that arrived after `after`."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for at, line in self.lines:
                    if at >= after and match(line):
                        return at
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = "".join(line for _, line in self.lines[-20:])
                    raise TimeoutError(f"no matching log line; the last ones:\n{tail}")
                self._cond.wait(left)


def running(worker: int) -> Callable[[str], bool]:
    """Matches worker `worker`'s "ingest worker running" line (old and new code)."""
    return lambda line: "ingest worker running" in line and f"worker={worker} " in line + " "


# -- measurements ----------------------------------------------------------------------------


@contextmanager
def tree_database(server_url: str, tree: Path, env: dict[str, str]) -> Iterator[str]:
    """A new database migrated by `tree`'s own `ioc db upgrade` (its migrations may differ)."""
    import psycopg
    from psycopg import sql

    from ioc.db import libpq_url
    from ioc.runtime import ensure_database

    name = f"bench_start_tree_{os.getpid()}"
    url = ensure_database(server_url, name)
    try:
        subprocess.run(
            [IOC, "db", "upgrade"],
            env={**env, "PYTHONPATH": str(tree), "IOC_DATABASE_URL": url},
            cwd=tree,  # `python -m` children look in the working directory first
            check=True,
            stdout=subprocess.DEVNULL,
        )
        yield url
    finally:
        with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def end_to_end(
    env: dict[str, str], tree: Path, mqtt_url: str, repeat: int, backlog: int
) -> dict[str, list[float]]:
    """`ioc ingest --workers 2` of `tree`: cold start, and worker 1 killed and replaced."""
    figures: dict[str, list[float]] = {"cold": [], "restart": [], "restart+backlog": []}
    child_env = {**env, "PYTHONPATH": str(tree)}
    ioc = IOC
    for _ in range(repeat):
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [ioc, "ingest", "--workers", "2"],
            env=child_env,
            cwd=tree,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        watch = LogWatch(proc.stdout)
        try:
            first = watch.wait(lambda line: "ingest worker running" in line, t0)
            figures["cold"].append(first - t0)
            watch.wait(running(1), t0)
            watch.wait(running(0), t0)
            for with_backlog in (False, True):
                pid = _worker_pid(proc.pid, watch)
                if with_backlog:
                    # stop it taking messages, let the broker queue them, then kill it
                    os.kill(pid, signal.SIGSTOP)
                    publish_backlog(mqtt_url, backlog)
                killed = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                back = watch.wait(running(1), killed)
                figures["restart+backlog" if with_backlog else "restart"].append(back - killed)
                time.sleep(1.0)  # let the replacement settle before the next kill
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    return figures


def _worker_pid(pool_pid: int, watch: LogWatch) -> int:
    """Pid of worker 1: its log line says it (new code), else the child started for it."""
    for _, line in reversed(watch.lines):
        if running(1)(line) and " pid=" in line:
            return int(line.split(" pid=")[1].split()[0])
    kids = sorted(children(pool_pid))
    return kids[-1]  # old code: worker 1 is the second child


def run(args: argparse.Namespace) -> int:
    from benchlib import fresh_database
    from pydantic import SecretStr

    from alerts.seed import seed_rules
    from ioc.embedded_broker import EmbeddedBroker
    from ioc.mqtt import end_session
    from ioc.runtime import prepare
    from ioc.settings import Settings

    store = Path(tempfile.mkdtemp(prefix="bench-start-"))
    with (
        EmbeddedBroker(store, kind="mosquitto") as broker,
        fresh_database(args.database_url, "start", str(os.getpid())) as db_url,
    ):
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IOC_")},
            "IOC_DATABASE_URL": db_url,
            "IOC_MQTT_URL": broker.url,
            "IOC_PROFILE": PROFILE,
            "IOC_INGEST_CLIENT_ID": "bench-start",
            "IOC_LOG_LEVEL": "INFO",
            "IOC_DATA_DIR": str(store),
        }
        print(f"worker start, median of {args.repeat} (ms since the process was spawned)\n")
        runs = [probe(env) for _ in range(args.repeat)]
        previous = 0.0
        for phase in runs[0]:
            at = median_ms([r[phase] for r in runs])
            row(phase, at, f"+{at - previous:.0f}")
            previous = at

        print("\nsuspects (ms)\n")
        py = [sys.executable, "-c"]
        base = median_ms([timed_process([*py, "pass"], env) for _ in range(args.repeat)])
        row("python -c 'pass'", base)
        for what in ("ingest.worker", "ioc.cli"):
            took = [timed_process([*py, f"import {what}"], env) for _ in range(args.repeat)]
            row(f"python -c 'import {what}'", median_ms(took))
        settings = Settings(database_url=SecretStr(db_url), profile=PROFILE)
        prep = []
        for _ in range(3):
            t0 = time.monotonic()
            prepare(db_url, settings, then=seed_rules)
            prep.append(time.monotonic() - t0)
        row("prepare() at head (migrations, sync)", median_ms(prep))
        # a session with a backlog: the broker sends it first, the SUBACK comes after
        cid = "bench-start-backlog"
        probe(env, cid, backlog_wait=True)
        publish_backlog(broker.url, args.backlog)
        late = probe(env, cid, backlog_wait=True)
        fresh = runs[0]
        row("CONNACK to SUBACK, empty session", (fresh["SUBACK"] - fresh["CONNACK"]) * 1000)
        row(
            f"CONNACK to SUBACK, {args.backlog:,} queued",
            (late["SUBACK"] - late["CONNACK"]) * 1000,
        )
        end_session(broker.url, cid)
        for frozen in (False, True):
            cid = f"bench-takeover-{int(frozen)}"
            with held_connection(broker.url, cid, frozen=frozen):
                took_s = connack_s(broker.url, cid)
            row(f"CONNACK, id held by a {'frozen' if frozen else 'live'} client", took_s * 1000)
            end_session(broker.url, cid)

        tree = Path(args.tree).resolve()
        print(f"\nioc ingest --workers 2 of {tree}, median of {args.repeat} (ms)\n")
        with tree_database(args.database_url, tree, env) as tree_db:
            tree_env = {**env, "IOC_DATABASE_URL": tree_db}
            figures = end_to_end(tree_env, tree, broker.url, args.repeat, args.backlog)
        row("start to the first worker subscribed", median_ms(figures["cold"]))
        row("SIGKILL to the replacement subscribed", median_ms(figures["restart"]), "1st exit")
        row(
            f"the same, {args.backlog:,} queued for it",
            median_ms(figures["restart+backlog"]),
            "2nd exit within a minute",
        )
        for i in range(3):
            end_session(broker.url, f"bench-start-{i}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--role", choices=("main", "probe", "hold"), default="main")
    parser.add_argument("--mqtt-url", default="")
    parser.add_argument("--t0", type=float, default=0.0)
    parser.add_argument("--client-id", default="")
    parser.add_argument("--backlog-wait", action="store_true")
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "IOC_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server where databases may be created and dropped",
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--tree", default=str(ROOT), help="source tree of `ioc ingest`")
    args: Any = parser.parse_args(argv)
    if args.role == "probe":
        role_probe(args.t0, args.client_id, args.backlog_wait)
        return 0
    if args.role == "hold":
        role_hold(args.mqtt_url, args.client_id)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
