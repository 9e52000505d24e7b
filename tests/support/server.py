"""A real uvicorn serving the app on 127.0.0.1, on a thread of the test process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from api.app import create_app
from ioc.embedded_pg import free_port
from tests.support.api import api_settings

START_TIMEOUT_S = 30.0


@contextmanager
def served(db_url: str, **overrides: Any) -> Iterator[str]:
    """The app on a free port; yields its base URL; stops it (lifespan included) on exit."""
    port = free_port()
    app = create_app(api_settings(db_url, **overrides))
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("the API server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)
