"""`ioc demo` as a newcomer runs it: embedded database and broker, API ready, the first alert
within a minute and logged, the screen signed in as an operator, one demo per data dir, clean
stop."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from alerts.service import RETIRED_NOTE, retire_sources
from alerts.sweeper import SweepConfig, sweep
from ingest.simulator import simulated_ids
from ioc.catalogue import bundled_profile_names, load_profile
from ioc.db import libpq_url
from ioc.embedded_pg import free_port
from tests.support.alerts import engine_writer, feed
from tests.support.cli import IOC, clean_env, run_ioc
from tests.support.ingest import make_item, query, wait_until
from tests.support.services import shared_tmp

pytestmark = pytest.mark.embedded

READY_DEADLINE_S = 90
KEY = re.compile(r"ioc_[a-z0-9]{8}_[A-Za-z0-9_-]{20,}")
ADMIN_KEY = re.compile(r"^key +(ioc_[a-z0-9]{8}_[A-Za-z0-9_-]{20,}) +\(admin")
# what the issue asks of the demo: the first alerts within a minute of start
FIRST_ALERT_S = 60


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_serves_a_ready_api_and_stops_everything(stop: signal.Signals) -> None:
    data_dir = shared_tmp("ioc-demo-")
    port = free_port()
    proc = subprocess.Popen(
        [IOC, "demo", "--port", str(port)],
        env=clean_env(IOC_DATA_DIR=str(data_dir), IOC_PROFILE="mekong"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + READY_DEADLINE_S
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        assert ready is not None and ready.status_code == 200, proc.poll()
        assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
        # the simulator publishes through the broker and ingest stores it: live data
        port_line = (data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[3]
        db = f"postgresql://postgres@127.0.0.1:{int(port_line)}/ioc"
        wait_until(lambda: query(db, "SELECT count(*) FROM reading")[0][0] > 0, what="readings")
        sectors = query(db, "SELECT count(DISTINCT sector_id) FROM source")[0][0]
        assert sectors >= 2
        # the admin key it prints opens the API
        key = wait_until(
            lambda: next((m.group(1) for line in lines if (m := ADMIN_KEY.search(line))), None),
            what="the demo's admin key",
        )
        overview = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/sectors",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert overview.status_code == 200
        assert {s["id"] for s in overview.json()["sectors"]} >= {"water"}
        if stop is signal.SIGINT:  # once: a second demo on the same port stops at once
            started = time.monotonic()
            second = run_ioc(
                "demo",
                "--port",
                str(port),
                timeout=60,
                IOC_DATA_DIR=str(data_dir),
                IOC_PROFILE="mekong",
            )
            assert second.returncode == 1, second.stdout + second.stderr
            assert second.stderr.strip().startswith("error:")
            assert len(second.stderr.strip().splitlines()) == 1
            assert "another ioc demo" in second.stderr
            assert time.monotonic() - started < 20
            again = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            assert again.status_code == 200  # the first one is untouched
    finally:
        proc.send_signal(stop)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:  # it did not stop: kill it, so no later test inherits it
                proc.kill()
                proc.wait()
        reader.join(10)
        proc.stdout.close()
    output = "".join(lines)
    assert proc.returncode == 0, output
    assert "ioc demo" in output and "mekong" in output
    # the embedded PostgreSQL was stopped on exit
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()


class Demo:
    """An `ioc demo` process and what it printed, line by line."""

    def __init__(self, data_dir: Path, port: int, *args: str, **env: str) -> None:
        self.data_dir = data_dir
        self.port = port
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [IOC, "demo", "--port", str(port), *args],
            env=clean_env(IOC_DATA_DIR=str(data_dir), **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        self.lines.extend(self.proc.stdout)

    def line(self, pattern: str) -> re.Match[str] | None:
        """The first line printed so far that matches `pattern`."""
        found = re.compile(pattern)
        return next((m for line in list(self.lines) if (m := found.search(line))), None)

    def database(self) -> str | None:
        """The URL of its embedded database once it is up."""
        try:
            port_line = (self.data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[3]
        except (OSError, IndexError):
            return None
        return f"postgresql://postgres@127.0.0.1:{int(port_line)}/ioc"

    def stop(self) -> str:
        """Ctrl-C, then all it printed."""
        try:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:  # it did not stop: kill it, so no later test inherits it
                self.proc.kill()
                self.proc.wait()
            self._reader.join(10)
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        return "".join(self.lines)


@contextmanager
def running_demo(data_dir: Path, *args: str, **env: str) -> Iterator[Demo]:
    demo = Demo(data_dir, free_port(), *args, **env)
    try:
        yield demo
    finally:
        if demo.proc.poll() is None:
            demo.stop()


def _count(db: str | None, sql: str) -> int:
    if db is None:
        return 0
    try:
        return int(query(db, sql)[0][0])
    except psycopg.Error:  # not up, or not migrated yet
        return 0


def test_demo_alerts_within_a_minute_logs_each_transition_and_signs_in_an_operator() -> None:
    data_dir = shared_tmp("ioc-demo-")
    with running_demo(data_dir, "--profile", "binh-phuoc") as demo:
        # the first alert row, measured from the start of the process
        wait_until(
            lambda: _count(demo.database(), "SELECT count(*) FROM alert"),
            timeout_s=2 * FIRST_ALERT_S,
            what="the first alert",
        )
        first_alert_s = time.monotonic() - demo.started
        wait_until(
            lambda: demo.line(r" INFO ioc\.alerts\.transitions alert opened alert=\d+ "),
            timeout_s=2 * FIRST_ALERT_S,
            what="the transition on the console",
        )
        first_line_s = time.monotonic() - demo.started
        assert first_alert_s <= FIRST_ALERT_S, first_alert_s
        assert first_line_s <= FIRST_ALERT_S, first_line_s
        db = demo.database()
        assert db is not None

        # the screen's address carries an operator key that works against the API
        match = wait_until(
            lambda: demo.line(rf"^screen +http://127\.0\.0\.1:{demo.port}/#key=(ioc_\S+) "),
            what="the screen's address",
        )
        operator_key = match.group(1)
        assert query(
            db,
            "SELECT role FROM api_key WHERE name = 'ioc demo operator' AND revoked_at IS NULL",
        ) == [("operator",)]
        api = f"http://127.0.0.1:{demo.port}/api/v1"
        auth = {"Authorization": f"Bearer {operator_key}"}

        def sectors() -> httpx.Response | None:
            try:
                response = httpx.get(f"{api}/sectors", headers=auth, timeout=10)
            except httpx.TransportError:
                return None  # not listening yet
            return response

        answer = wait_until(sectors, timeout_s=READY_DEADLINE_S, what="the API")
        assert answer.status_code == 200
        # the simulated sources stand in the profile's districts, for the screen's map
        placed = httpx.get(f"{api}/sources", params={"limit": 200}, headers=auth, timeout=10)
        assert placed.status_code == 200, placed.text
        items = placed.json()["items"]
        assert items and all(s["district"] and s["latitude"] is not None for s in items)
        assert len(answer.json()["sectors"]) == 11  # --profile binh-phuoc

        def acknowledge_one() -> int | None:
            rows = query(db, "SELECT id FROM alert WHERE status = 'open' ORDER BY id LIMIT 1")
            if not rows:
                return None
            alert_id = int(rows[0][0])
            response = httpx.post(f"{api}/alerts/{alert_id}/ack", headers=auth, timeout=10)
            # 409: the engine resolved it in between; take the next one
            assert response.status_code in (200, 409), response.text
            return alert_id if response.status_code == 200 else None

        acknowledged = wait_until(acknowledge_one, timeout_s=120, what="an alert to acknowledge")
        logged = wait_until(
            lambda: demo.line(rf"alert acknowledged alert={acknowledged} .*ioc demo operator"),
            what="the acknowledgement on the console",
        )
        assert "\n" not in logged.string.rstrip("\n")

        # a second demo on another port with the same data stops at once, touching nothing
        second = run_ioc("demo", "--port", str(free_port()), timeout=60, IOC_DATA_DIR=str(data_dir))
        assert second.returncode == 1, second.stdout + second.stderr
        assert second.stderr.strip().startswith("error:")
        assert len(second.stderr.strip().splitlines()) == 1
        assert f"another ioc demo (pid {demo.proc.pid}) is running on the data dir" in second.stderr
        assert str(data_dir) in second.stderr
        assert httpx.get(f"http://127.0.0.1:{demo.port}/readyz", timeout=5).status_code == 200
        output = demo.stop()
    assert demo.proc.returncode == 0, output
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()
    print(f"first alert {first_alert_s:.1f} s after start, logged at {first_line_s:.1f} s")


def test_an_earlier_runs_simulated_sources_are_retired(synced_db: str) -> None:
    """What `ioc demo --profile mekong` does on data a bac-lieu demo left: that run's sources
    would look silent for ever; their alerts are resolved and silence no longer waits for
    them. This run's sources and sources that are not simulated stay as they are."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    left, kept, real = "bl-security-001", "mk-security-001", "tram-dai-ngai"
    with engine_writer(synced_db) as writer:
        for source, sector in ((left, "security"), (kept, "security"), (real, "water")):
            values = {"crowd_alerts": 3} if sector == "security" else {"salinity": 0.3}
            feed(
                writer,
                make_item(f"ioc/v1/{sector}/{source}/telemetry", {"ts": now_ms, "values": values}),
            )
    assert query(synced_db, "SELECT source_id, status FROM alert ORDER BY source_id") == [
        (left, "open"),
        (kept, "open"),
    ]
    pattern = simulated_ids([load_profile(n) for n in bundled_profile_names()])
    done = retire_sources(synced_db, pattern, keep=[kept], actor="cli:test")
    assert (done.sources, done.alerts_resolved) == (1, 1)
    assert query(
        synced_db,
        "SELECT a.source_id, a.status, a.resolved_by, e.detail->>'note' FROM alert a "
        "JOIN alert_event e ON e.alert_id = a.id AND e.kind = 'resolved' ORDER BY a.source_id",
    ) == [(left, "resolved", "cli:test", RETIRED_NOTE)]
    assert query(
        synced_db, "SELECT id, status, last_reading_at IS NULL FROM source ORDER BY id"
    ) == [(left, "offline", True), (kept, "online", False), (real, "online", False)]
    # an hour later nothing has reported: only the sources still expected are silent
    with psycopg.connect(libpq_url(synced_db)) as conn:
        sweep(conn, SweepConfig(), now=datetime.now(UTC) + timedelta(hours=1))
    silent = query(
        synced_db, "SELECT source_id FROM alert WHERE rule_kind = 'silence' ORDER BY source_id"
    )
    assert silent == [(kept,), (real,)]
    # a second start has nothing more to retire
    again = retire_sources(synced_db, pattern, keep=[kept], actor="cli:test")
    assert (again.sources, again.alerts_resolved) == (0, 0)
