"""A throwaway PostgreSQL + TimescaleDB server for tests, without Docker.

``tests/timescale/server.mjs`` runs PGlite (PostgreSQL 17 compiled to WASM,
with TimescaleDB bundled) in memory and serves it over the wire protocol on
127.0.0.1. It needs Node.js; its npm packages are installed on first use with
``npm ci`` from the committed lockfile.

PGlite is a single session: the server serves one client connection at a
time and makes further ones wait until the open one is closed, so tests must
not hold two connections at once (use NullPool or a pool of size 1, and a
connect_timeout so that a mistake fails instead of hanging). Each new
connection starts from a clean session (the previous one's transaction rolled
back, its prepared statements, temp tables, LISTENs and settings dropped), but
there is only one database: whatever database name is asked for, the session
is in "template1", and data persist across connections until the server stops.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

SERVER_DIR = Path(__file__).resolve().parent.parent / "timescale"
SERVER_SCRIPT = SERVER_DIR / "server.mjs"

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
NPM_CI_TIMEOUT_S = 600.0

_READY_PREFIX = "READY "


def _missing(what: str, require: bool) -> None:
    if require:
        raise RuntimeError(f"{what} not found on PATH: needed for the TimescaleDB test server")


def _install_is_stale() -> bool:
    """True when node_modules is absent or older than package.json/package-lock.json."""
    marker = SERVER_DIR / "node_modules" / ".package-lock.json"
    if not marker.is_file():
        return True
    installed_at = marker.stat().st_mtime
    return any(
        (SERVER_DIR / name).stat().st_mtime > installed_at
        for name in ("package.json", "package-lock.json")
    )


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """Serialise `npm ci` between concurrent test processes on this machine."""
    key = hashlib.sha256(str(SERVER_DIR).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"ioc-pglite-npm-{key}.lock"
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _npm_ci(npm: str) -> None:
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=SERVER_DIR,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=NPM_CI_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"`npm ci` in {SERVER_DIR} failed with exit code {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )


def _pump_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    """Copy the server's stdout into a queue; None marks EOF (the process ended)."""
    for line in stream:
        lines.put(line)
    lines.put(None)


def _read_stderr(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")


def _stop(proc: subprocess.Popen[str], pump: threading.Thread) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # The process is gone, so its stdout is at EOF and the pump thread ends.
    pump.join(timeout=STOP_TIMEOUT_S)
    if proc.stdout is not None and not pump.is_alive():
        proc.stdout.close()


def _wait_ready(proc: subprocess.Popen[str], lines: queue.Queue[str | None], log: IO[bytes]) -> int:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(
                f"TimescaleDB test server not ready after {STARTUP_TIMEOUT_S:.0f} s:\n"
                + _read_stderr(log)
            )
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            code = proc.wait()
            raise RuntimeError(
                f"TimescaleDB test server exited with code {code} before it was ready:\n"
                + _read_stderr(log)
            )
        if line.startswith(_READY_PREFIX):
            return int(line[len(_READY_PREFIX) :].strip())


@contextlib.contextmanager
def _serve(node: str) -> Iterator[str]:
    env = dict(os.environ, PGLITE_EXIT_ON_STDIN_EOF="1")
    with tempfile.TemporaryFile() as log:
        # Port 0: the server binds a free port itself and reports it, so no
        # other process can take the port between choosing and binding it.
        # stdin stays an open pipe: if this process dies without cleaning up,
        # the pipe closes and the server stops by itself.
        proc = subprocess.Popen(
            [node, str(SERVER_SCRIPT), "0"],
            cwd=SERVER_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            encoding="utf-8",
        )
        assert proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        pump = threading.Thread(target=_pump_lines, args=(proc.stdout, lines), daemon=True)
        pump.start()
        port = None
        try:
            port = _wait_ready(proc, lines, log)
            # The server ignores the user, password and database names (it is
            # always user "postgres" in database "template1") but asks for a
            # password (any will do); it refuses SSL, so libpq's default
            # sslmode=prefer goes on without it.
            yield f"postgresql://postgres:postgres@127.0.0.1:{port}/postgres"
        finally:
            died = proc.poll()
            _stop(proc, pump)
            if port is not None and died is not None:
                warnings.warn(
                    f"TimescaleDB test server had exited with code {died}:\n{_read_stderr(log)}",
                    RuntimeWarning,
                    stacklevel=2,
                )


@contextlib.contextmanager
def pglite_timescale(*, require: bool) -> Iterator[str | None]:
    """Run the in-memory TimescaleDB test server; yield its libpq URL.

    Yields None when Node.js is not installed and ``require`` is false; raises
    RuntimeError when it is not installed and ``require`` is true, or when the
    server cannot be installed or started. The server process is stopped on exit.
    """
    node = shutil.which("node")
    if node is None:
        _missing("node", require)
        yield None
        return
    if _install_is_stale():
        npm = shutil.which("npm")
        if npm is None:
            _missing("npm", require)
            yield None
            return
        with _install_lock():
            if _install_is_stale():
                _npm_ci(npm)
    with _serve(node) as url:
        yield url
