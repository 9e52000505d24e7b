"""The operations screen's files and configuration, without a browser: `/` serves the page and
everything it loads with the right types, the page's config is public and outside the API
schema, the vendored libraries carry their licences and the bytes VENDORED.md names, every
label exists in both languages, and the files mounted at `/` never shadow the API."""

from __future__ import annotations

import hashlib
import json
import re
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError
from starlette.routing import Mount
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from alerts.lifecycle import EventKind
from api.app import create_app
from api.screen import CONFIG_PATH, MOUNT_NAME, STATIC, content_security_policy, tile_origin
from ioc.settings import OSM_TILE_URL, Settings
from ioc.vocabulary import ALERT_STATUSES, SEVERITIES, SOURCE_STATUSES
from tests.support.api import Api, api_settings, bearer, running_api
from tests.support.browser import UNREACHABLE_TILES
from tests.support.server import served

VENDORED = STATIC / "vendor" / "VENDORED.md"
LANGUAGES = ("vi", "en")
TYPES = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "javascript",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


def _strings(code: str) -> dict[str, str]:
    return dict(json.loads((STATIC / "i18n" / f"{code}.json").read_text("utf-8")))


def _modules() -> list[Path]:
    return sorted((STATIC / "js").glob("*.js"))


async def test_the_page_is_served_at_the_root_under_a_content_security_policy(api: Api) -> None:
    page = await api.http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="js/main.js">' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["cache-control"] == "no-cache"
    same = await api.http.get("/index.html")
    assert same.status_code == 200 and same.text == page.text


async def test_every_file_the_page_loads_is_served_with_its_type(api: Api) -> None:
    html = (STATIC / "index.html").read_text("utf-8")
    wanted = set(re.findall(r'(?:src|href)="([^"#:]+)"', html))
    for module in _modules():
        text = module.read_text("utf-8")
        wanted |= {f"js/{m}" for m in re.findall(r"from '\./([\w-]+\.js)'", text)}
    wanted |= {f"i18n/{code}.json" for code in LANGUAGES}
    assert {"js/main.js", "css/screen.css", "vendor/uplot/uPlot.iife.min.js"} <= wanted
    assert {f"js/{m.name}" for m in _modules()} <= wanted, "a module nothing imports"
    for path in sorted(wanted):
        answer = await api.http.get(f"/{path}")
        assert answer.status_code == 200, path
        assert TYPES[Path(path).suffix] in answer.headers["content-type"], path
        assert answer.headers["x-content-type-options"] == "nosniff"


async def test_the_config_is_public_and_not_part_of_the_api_schema(synced_db: str) -> None:
    async with running_api(synced_db, map_tile_url=UNREACHABLE_TILES) as api:
        answer = await api.http.get(CONFIG_PATH)
        assert answer.status_code == 200
        config = answer.json()
        assert config["profile"]["name"] == "mekong"
        assert config["language"] == "vi" and config["languages"] == ["vi", "en"]
        assert config["map"]["tile_url"] == UNREACHABLE_TILES
        assert "OpenStreetMap" in config["map"]["attribution"]
        assert (
            "img-src 'self' data: http://127.0.0.1:9"
            in (await api.http.get("/")).headers["content-security-policy"]
        )
        schema = (await api.http.get("/openapi.json")).json()
        assert CONFIG_PATH not in schema["paths"] and "/" not in schema["paths"]
    async with running_api(synced_db, map_tile_url="") as api:
        assert (await api.http.get(CONFIG_PATH)).json()["map"]["tile_url"] == ""


async def test_the_mount_shadows_no_route_of_the_api(api: Api) -> None:
    assert (await api.http.get("/healthz")).json() == {"status": "ok"}
    assert (await api.http.get("/docs")).headers["content-type"].startswith("text/html")
    assert "paths" in (await api.http.get("/openapi.json")).json()
    assert (await api.http.get("/metrics")).status_code == 200
    assert (await api.http.get("/docs-assets/swagger-ui.css")).status_code == 200
    sectors = await api.http.get("/api/v1/sectors", headers=api.as_("viewer"))
    assert sectors.status_code == 200 and sectors.json()["sectors"]
    for path in ("/api/v1/nothing-here", "/api/v1/sectors/x/y/z", "/no-such-file.js"):
        missing = await api.http.get(path, headers=api.as_("viewer"))
        assert missing.status_code == 404, path
        assert missing.headers["content-type"] == "application/problem+json", path
        assert missing.json()["status"] == 404
    no_key = await api.http.get("/api/v1/sectors")
    assert no_key.status_code == 401
    assert no_key.headers["content-type"] == "application/problem+json"
    posted = await api.http.post("/", content=b"{}")
    assert posted.status_code == 405
    assert posted.headers["content-type"] == "application/problem+json"
    escape = await api.http.get("/../pyproject.toml")
    assert escape.status_code == 404


async def test_the_screen_is_mounted_last_and_unknown_sockets_are_refused(db_url: str) -> None:
    app = create_app(api_settings(db_url))
    last = app.routes[-1]
    assert isinstance(last, Mount) and last.name == MOUNT_NAME and last.path == ""
    assert not any(isinstance(r, Mount) and r.name == MOUNT_NAME for r in app.routes[:-1])
    with served(db_url) as base:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(base.replace("http://", "ws://") + "/ws/nothing-here"):
                pass
        assert refused.value.response.status_code == 403  # as the router refuses it


def test_vendored_libraries_carry_their_licences_and_the_bytes_named() -> None:
    text = VENDORED.read_text("utf-8")
    rows = re.findall(r"^\| `([^`]+)` \| `[^`]+` \| `([0-9a-f]{64})` \|$", text, re.MULTILINE)
    named: dict[str, str] = dict(rows)
    vendor = STATIC / "vendor"
    files = {str(p.relative_to(vendor)) for p in vendor.rglob("*") if p.is_file() and p != VENDORED}
    assert files == set(named), "every vendored file, and only those, is in VENDORED.md"
    for path, digest in named.items():
        assert hashlib.sha256((vendor / path).read_bytes()).hexdigest() == digest, path
    assert "MIT License" in (vendor / "uplot" / "LICENSE").read_text("utf-8")
    assert "BSD 2-Clause" in (vendor / "leaflet" / "LICENSE").read_text("utf-8")
    for name in ("uplot@1.6.32", "leaflet@1.9.4"):
        assert name in text
    served = re.findall(r'src="(vendor/[^"]+)"', (STATIC / "index.html").read_text("utf-8"))
    assert served and all(s.removeprefix("vendor/") in named for s in served)


def test_every_label_exists_in_both_languages() -> None:
    vi, en = (_strings(code) for code in LANGUAGES)
    assert set(vi) == set(en)
    assert all(isinstance(v, str) for v in (*vi.values(), *en.values()))
    used: set[str] = set()
    html = (STATIC / "index.html").read_text("utf-8")
    used |= set(re.findall(r'data-i18n(?:-[a-z-]+)?="([^"]+)"', html))
    for module in _modules():
        used |= set(re.findall(r"\bt\('([\w.]+)'", module.read_text("utf-8")))
        used |= set(re.findall(r"'((?:action|sector|detail)\.[\w.]+)'", module.read_text("utf-8")))
    families = {
        "severity": SEVERITIES,
        "alert_status": ALERT_STATUSES,
        "source_status": SOURCE_STATUSES,
        "kind": typing.get_args(EventKind),
        "status": ("unknown", "normal", "offline", *SEVERITIES),
        "conn": ("connecting", "connected", "reconnecting", "offline"),
        "sources": ("online", "offline", "unknown"),
        "action.done": ("ack", "resolve", "comment"),
    }
    used |= {f"{family}.{name}" for family, names in families.items() for name in names}
    assert len(used) > 80
    assert sorted(used - set(vi)) == []
    unused = {k for k in vi if not k.startswith("unit.")} - used
    assert sorted(unused) == []


async def test_a_viewer_key_reads_what_the_screen_needs(api: Api) -> None:
    """Every role may open the screen: the routes it reads need panels.read and alerts.read."""
    headers = api.as_("viewer")
    for path in ("/api/v1/profile", "/api/v1/sectors", "/api/v1/alerts?status=open"):
        assert (await api.http.get(path, headers=headers)).status_code == 200, path
    acted = await api.http.post("/api/v1/alerts/1/ack", headers=bearer(api.key("viewer")))
    assert acted.status_code == 403 and acted.json()["detail"]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("ftp://tiles.example/{z}/{x}/{y}.png", "http(s)"),
        ("tiles.example/{z}/{x}/{y}.png", "http(s)"),
        ("https://tiles.example/{z}/{x}.png", "lacks {y}"),
        ("//tiles.example/{z}/{x}/{y}.png", "http(s)"),
    ],
)
def test_a_bad_tile_url_is_refused(value: str, error: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(error)):
        Settings(map_tile_url=value)


def test_tile_settings_and_the_image_origin_they_allow() -> None:
    assert Settings().map_tile_url == OSM_TILE_URL
    assert Settings(map_tile_url="  ").map_tile_url == ""
    assert Settings(map_tile_url="/tiles/{z}/{x}/{y}.png").map_tile_url.startswith("/tiles/")
    assert tile_origin(OSM_TILE_URL) == "https://tile.openstreetmap.org"
    assert tile_origin("https://{s}.tiles.example:8443/{z}/{x}/{y}.png") == (
        "https://*.tiles.example:8443"
    )
    assert tile_origin("/tiles/{z}/{x}/{y}.png") is None
    assert tile_origin("") is None
    assert "img-src 'self' data:;" in content_security_policy(Settings(map_tile_url=""))
