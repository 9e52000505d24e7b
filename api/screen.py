"""The operations screen: the static files of `api/static/` (plain HTML, CSS and ES modules,
with uPlot and Leaflet vendored; no build step, nothing fetched from elsewhere at run time)
served at `/`, and the little it needs to know before it has a key (`/screen/config.json`).

The files are mounted at `/` after every other route: a path the API answers is never taken
by a file, and an unknown path under `/api/v1` still answers a problem+json 404 (the mount
raises the HTTP 404 the application turns into a problem). Websockets to an unknown path are
closed, as the router itself would."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketClose

from ioc.catalogue import Profile
from ioc.settings import Settings

STATIC: Final = Path(__file__).parent / "static"
CONFIG_PATH: Final = "/screen/config.json"
MOUNT_NAME: Final = "screen"
DEFAULT_LANGUAGE: Final = "vi"
LANGUAGES: Final = ("vi", "en")


def tile_origin(tile_url: str) -> str | None:
    """The origin images are loaded from for a tile template (None: this server or no tiles);
    a `{s}` subdomain becomes a `*.` wildcard, as a content security policy writes it."""
    parts = urlsplit(tile_url)
    if not parts.scheme or not parts.netloc:
        return None
    host = parts.netloc.rsplit("@", 1)[-1].replace("{s}", "*")
    return f"{parts.scheme}://{host}"


def content_security_policy(settings: Settings) -> str:
    """Scripts, styles, sockets and data from this server only; images also from the tiles'."""
    images = ["'self'", "data:"]
    origin = tile_origin(settings.map_tile_url)
    if origin is not None:
        images.append(origin)
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            # Leaflet and uPlot position their elements with inline style properties
            "style-src 'self' 'unsafe-inline'",
            f"img-src {' '.join(images)}",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


class ScreenFiles(StaticFiles):
    """The screen's files: revalidated on every load (an upgrade shows at the next reload),
    pages under a content security policy; a websocket to an unknown path is closed."""

    def __init__(self, *, directory: Path, csp: str) -> None:
        super().__init__(directory=directory, html=True)
        self.csp = csp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await WebSocketClose()(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        if str(full_path).endswith(".html"):
            response.headers["Content-Security-Policy"] = self.csp
            response.headers["Referrer-Policy"] = "no-referrer"
        return response


def screen_config(settings: Settings, profile: Profile) -> dict[str, object]:
    """What the page needs before it has a key: the profile it shows, the default language,
    the map tiles and the websocket heartbeat period (to notice a dead connection)."""
    return {
        "profile": {
            "name": profile.name,
            "title_vi": profile.title_vi,
            "title_en": profile.title_en,
            "timezone": profile.timezone,
        },
        "language": DEFAULT_LANGUAGE,
        "languages": list(LANGUAGES),
        "map": {
            "tile_url": settings.map_tile_url,
            "attribution": settings.map_tile_attribution,
        },
        "ws_heartbeat_s": settings.ws_heartbeat_s,
    }


def install(app: FastAPI, settings: Settings, profile: Profile) -> None:
    """Add the config route and mount the files at `/`; call it after every other route."""
    config = screen_config(settings, profile)

    @app.get(CONFIG_PATH, include_in_schema=False)
    async def _config() -> JSONResponse:
        return JSONResponse(config, headers={"Cache-Control": "no-store"})

    files = ScreenFiles(directory=STATIC, csp=content_security_policy(settings))
    app.mount("/", files, name=MOUNT_NAME)
