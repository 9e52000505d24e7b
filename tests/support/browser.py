"""Browser test helpers: Debian's Chromium driven by Playwright (headless, launched by its
path), the screen opened signed in, screenshots into the git-ignored `tests/screenshots/`, and
an API server that can be stopped and started again on the same port (a reconnect)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from api.app import create_app
from ioc.embedded_pg import free_port
from tests.support.api import api_settings
from tests.support.services import missing

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "screenshots"
START_TIMEOUT_S = 30.0
UNREACHABLE_TILES = "http://127.0.0.1:9/{z}/{x}/{y}.png"
"""A tile server that is not there (port 9, discard: nothing listens), as on an isolated
network."""


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless; skipped when absent (failed under IOC_REQUIRE_ALL)."""
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is not installed (pip install -e '.[test]')")
        raise
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


class Screen:
    """One browser page on the screen, with what it logged."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def shot(self, name: str) -> Path:
        """A screenshot of the viewport, as `tests/screenshots/<name>.png`."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def tiles(self) -> Any:
        return self.page.locator('[data-testid="tile"]')

    def alert(self, alert_id: int) -> Any:
        return self.page.locator(f'[data-testid="alert-item"][data-alert-id="{alert_id}"]')


@contextmanager
def screen(
    browser: Browser,
    base_url: str,
    key: str | None,
    *,
    width: int = 1920,
    height: int = 1080,
    language: str | None = None,
) -> Iterator[Screen]:
    """A fresh browser context (its own storage) on the screen, signed in through the
    address fragment when `key` is given, as `ioc demo` prints it."""
    context = browser.new_context(viewport={"width": width, "height": height}, locale="vi-VN")
    try:
        if language is not None:
            context.add_init_script(f"localStorage.setItem('ioc.lang', '{language}')")
        page = context.new_page()
        page.set_default_timeout(15_000)
        view = Screen(page)
        page.goto(f"{base_url}/" + (f"#key={key}" if key else ""))
        page.wait_for_selector('body[data-ready="true"]')
        yield view
    finally:
        context.close()


class RestartableServer:
    """The API on a real uvicorn on one port, on a thread; `stop()` then `start()` brings it
    back at the same address (websocket clients see their connection drop, then return)."""

    def __init__(self, db_url: str, **overrides: Any) -> None:
        self.db_url = db_url
        self.overrides = overrides
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        app = create_app(api_settings(self.db_url, **self.overrides))
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="test-uvicorn-screen", daemon=True)
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError(f"the API server did not start on port {self.port}")
            time.sleep(0.02)
        self._server, self._thread = server, thread

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(START_TIMEOUT_S)
            if self._thread.is_alive():
                raise AssertionError("the API server did not stop")
        self._server = self._thread = None

    def __enter__(self) -> RestartableServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
