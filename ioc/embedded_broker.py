"""An embedded MQTT broker on 127.0.0.1: a `mosquitto` binary when on PATH, else amqtt.

Mosquitto runs as a child process with persistence in the data directory; amqtt runs in a
thread of this process with its own event loop. amqtt speaks MQTT 3.1.1 only (no shared
subscriptions), so Mosquitto is preferred whenever it is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from ioc.embedded_pg import free_port
from ioc.errors import BrokerError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 20
Kind = Literal["auto", "mosquitto", "amqtt"]


def _mosquitto_conf(port: int, store: Path) -> str:
    return "\n".join(
        [
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {store}/",
            "autosave_interval 10",
            # Keep the backlog of persistent ingest sessions while the database is down.
            "max_queued_messages 1000000",
            "max_inflight_messages 1000",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "",
        ]
    )


def _wait_port(port: int, deadline: float, alive: Any) -> None:
    while time.monotonic() < deadline:
        if not alive():
            raise BrokerError(f"embedded broker exited before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise BrokerError(f"embedded broker did not listen on 127.0.0.1:{port}")


class EmbeddedBroker:
    """Start and stop an MQTT broker on 127.0.0.1; `url` is its mqtt:// URL."""

    def __init__(self, data_dir: Path, *, kind: Kind = "auto", port: int | None = None) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.port = port
        self.kind: Kind = kind
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None

    @property
    def url(self) -> str:
        """mqtt:// URL of the running broker."""
        if self.port is None:
            raise BrokerError("embedded broker is not started")
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> str:
        """Start the broker and return its URL."""
        binary = shutil.which("mosquitto")
        if self.kind == "mosquitto" and binary is None:
            raise BrokerError("mosquitto is not on PATH")
        self.port = self.port or free_port()
        if binary is not None and self.kind in ("auto", "mosquitto"):
            self.kind = "mosquitto"
            self._start_mosquitto(binary)
        else:
            self.kind = "amqtt"
            self._start_amqtt()
        log.info("embedded MQTT broker started", extra={"kind": self.kind, "port": self.port})
        return self.url

    def _start_mosquitto(self, binary: str) -> None:
        store = self.data_dir / "mosquitto"
        store.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # Mosquitto started as root drops to the 'mosquitto' user, which must own the store.
            with contextlib.suppress(KeyError):
                user = pwd.getpwnam("mosquitto")
                os.chown(store, user.pw_uid, user.pw_gid)
        conf = self.data_dir / "mosquitto.conf"
        assert self.port is not None
        conf.write_text(_mosquitto_conf(self.port, store))
        # A session of its own: Ctrl-C in a terminal signals the whole foreground group, and
        # the broker must outlive the ingest worker's last acknowledgements; stop() ends it.
        self._proc = subprocess.Popen(  # noqa: S603
            [binary, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        proc = self._proc
        try:
            _wait_port(self.port, time.monotonic() + START_TIMEOUT_S, lambda: proc.poll() is None)
        except BrokerError:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            self.stop()
            raise BrokerError(f"mosquitto failed to start: {err.strip()[-300:]}") from None

    def _start_amqtt(self) -> None:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        started: Future[None] = Future()
        loop = asyncio.new_event_loop()

        async def run() -> None:
            try:
                self._broker = Broker(config, loop=loop)
                await self._broker.start()
            except Exception as exc:  # noqa: BLE001  (handed to the starting thread)
                started.set_exception(exc)
                return
            started.set_result(None)

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(run())
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="amqtt-broker", daemon=True)
        self._thread.start()
        try:
            started.result(timeout=START_TIMEOUT_S)
        except Exception as exc:
            raise BrokerError(f"amqtt failed to start: {exc}") from exc

    def stop(self) -> None:
        """Stop the broker (Mosquitto saves its persistence file on a clean stop)."""
        if self._proc is not None:
            proc, self._proc = self._proc, None
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            if proc.stderr:
                proc.stderr.close()
        if self._loop is not None and self._thread is not None:
            loop, self._loop = self._loop, None
            if self._broker is not None:
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=10)
            self._thread = None
            loop.close()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
