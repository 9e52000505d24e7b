"""A TCP forwarder on 127.0.0.1 that a test can take down (connections refused) and bring back."""

from __future__ import annotations

import selectors
import socket
import threading
from typing import Self

_CHUNK = 65536


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; `down()` refuses connections and cuts open ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.accepted = 0
        """Connections accepted while up."""

    def up(self) -> None:
        """Listen (again) on the same port."""
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            listener.setblocking(False)
            self._listener = listener

    def down(self) -> None:
        """Stop listening (new connections are refused) and cut every open connection."""
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for a, b in self._pairs:
                a.close()
                b.close()
            self._pairs.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                listener = self._listener
                pairs = list(self._pairs)
            sel = selectors.DefaultSelector()
            try:
                if listener is not None:
                    sel.register(listener, selectors.EVENT_READ, None)
                for a, b in pairs:
                    sel.register(a, selectors.EVENT_READ, b)
                    sel.register(b, selectors.EVENT_READ, a)
                for key, _ in sel.select(timeout=0.05):
                    self._handle(key)
            except (OSError, ValueError):
                continue  # a socket closed by down() meanwhile: look again
            finally:
                sel.close()

    def _handle(self, key: selectors.SelectorKey) -> None:
        sock = key.fileobj
        assert isinstance(sock, socket.socket)
        peer = key.data
        if peer is None:
            client, _ = sock.accept()
            client.setblocking(True)
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                return
            with self._lock:
                if self._listener is None:  # went down meanwhile
                    client.close()
                    server.close()
                    return
                self.accepted += 1
                self._pairs.append((client, server))
            return
        data = b""
        try:
            data = sock.recv(_CHUNK)
            if data:
                peer.sendall(data)
        except OSError:
            data = b""
        if not data:
            with self._lock:
                self._pairs = [p for p in self._pairs if sock not in p]
            sock.close()
            peer.close()

    def __enter__(self) -> Self:
        self.up()
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.down()
