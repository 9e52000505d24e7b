"""`ioc demo` as a newcomer runs it: embedded database and broker, API ready, clean stop."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time

import httpx
import pytest

from ioc.embedded_pg import free_port
from tests.support.cli import IOC, clean_env, run_ioc
from tests.support.ingest import query, wait_until
from tests.support.services import shared_tmp

pytestmark = pytest.mark.embedded

READY_DEADLINE_S = 90
KEY = re.compile(r"ioc_[a-z0-9]{8}_[A-Za-z0-9_-]{20,}")


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
        # the key it prints opens the API
        key = wait_until(
            lambda: next((m.group(0) for line in lines if (m := KEY.search(line))), None),
            what="the demo's key",
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
