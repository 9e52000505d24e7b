"""The CSV export: its columns, names and times, the BOM and file name; and, through a real
server process, a million rows streamed in flat memory, and a client that leaves mid-stream
releasing its database connection."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psutil
import pytest

from api.export import content_disposition, filename
from ioc.embedded_pg import free_port
from tests.support.api import Api, bearer, make_key
from tests.support.ingest import query, sync, wait_until
from tests.support.services import create_database, drop_database, unique_name

EXPORT = "/api/v1/telemetry/export.csv"
HEADER = "time,sector,source_id,source_name,district,metric,value,unit"
T0 = datetime(2026, 2, 28, 17, 0, tzinfo=UTC)  # 2026-03-01 00:00 at +07:00
ROOT = Path(__file__).resolve().parents[2]


def _load(db_url: str) -> None:
    query(
        db_url,
        "INSERT INTO source (id, sector_id, name, district) VALUES "
        "('dai-ngai', 'water', 'Trạm Đại Ngãi', 'coastal-district'), "
        "('long-phu', 'water', 'Trạm Long Phú, cống số 2', NULL)",
    )
    query(
        db_url,
        "INSERT INTO series (source_id, metric) VALUES "
        "('dai-ngai', 'salinity'), ('dai-ngai', 'water_level'), ('long-phu', 'salinity')",
    )
    query(
        db_url,
        "INSERT INTO reading (ts, series_id, value) "
        "SELECT %s::timestamptz + v.at, s.id, v.value FROM series s "
        "JOIN (VALUES ('dai-ngai', 'salinity', interval '5 min', 2.5), "
        "             ('dai-ngai', 'salinity', interval '0 min', 2.25), "
        "             ('dai-ngai', 'water_level', interval '1.5 s', 1.1), "
        "             ('long-phu', 'salinity', interval '1 min', 0.8), "
        "             ('long-phu', 'salinity', interval '2 days', 9.9)) "
        "  AS v(source_id, metric, at, value) "
        "  ON v.source_id = s.source_id AND v.metric = s.metric",
        (T0,),
    )


async def export(api: Api, role: str = "analyst", **params: Any) -> httpx.Response:
    params = {
        "sector": "water",
        "from": T0.isoformat(),
        "to": (T0 + timedelta(hours=1)).isoformat(),
        **params,
    }
    return await api.http.get(EXPORT, params=params, headers=api.as_(role))


def rows(answer: httpx.Response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(answer.content.decode("utf-8").removeprefix("\ufeff"))))


async def test_the_csv_has_the_header_the_rows_and_the_names_intact(api: Api) -> None:
    _load(api.db_url)
    answer = await export(api)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert not answer.content.startswith(b"\xef\xbb\xbf")
    assert rows(answer) == [
        HEADER.split(","),
        [
            "2026-03-01T00:00:00+07:00",
            "water",
            "dai-ngai",
            "Trạm Đại Ngãi",
            "coastal-district",
            "salinity",
            "2.25",
            "‰",
        ],
        [
            "2026-03-01T00:05:00+07:00",
            "water",
            "dai-ngai",
            "Trạm Đại Ngãi",
            "coastal-district",
            "salinity",
            "2.5",
            "‰",
        ],
        [
            "2026-03-01T00:00:01.500000+07:00",
            "water",
            "dai-ngai",
            "Trạm Đại Ngãi",
            "coastal-district",
            "water_level",
            "1.1",
            "m",
        ],
        [
            "2026-03-01T00:01:00+07:00",
            "water",
            "long-phu",
            "Trạm Long Phú, cống số 2",
            "",
            "salinity",
            "0.8",
            "‰",
        ],
    ]
    assert answer.headers["content-disposition"] == (
        'attachment; filename="ioc-water-all-20260301T0000+0700-20260301T0100+0700.csv"'
    )
    one = await export(api, metric="salinity", source="long-phu")
    assert [r[2] for r in rows(one)[1:]] == ["long-phu"]
    assert "ioc-water-salinity-" in one.headers["content-disposition"]
    district = await export(api, district="coastal-district")
    assert {r[2] for r in rows(district)[1:]} == {"dai-ngai"}


async def test_bom_for_excel_and_times_in_utc(api: Api) -> None:
    _load(api.db_url)
    answer = await export(api, bom="true", tz="utc", metric="salinity", source="dai-ngai")
    assert answer.status_code == 200, answer.text
    assert answer.content.startswith(b"\xef\xbb\xbf" + HEADER.encode() + b"\n")
    assert [r[0] for r in rows(answer)[1:]] == [
        "2026-02-28T17:00:00+00:00",
        "2026-02-28T17:05:00+00:00",
    ]
    assert answer.headers["content-disposition"] == (
        'attachment; filename="ioc-water-salinity-20260228T1700Z-20260228T1800Z.csv"'
    )


async def test_an_empty_range_still_has_its_header(api: Api) -> None:
    _load(api.db_url)
    later = {
        "from": (T0 + timedelta(days=10)).isoformat(),
        "to": (T0 + timedelta(days=11)).isoformat(),
    }
    assert (await export(api, **later)).text == HEADER + "\n"
    nobody = await export(api, source="nowhere", bom="true")
    assert nobody.content == b"\xef\xbb\xbf" + HEADER.encode() + b"\n"


async def test_export_questions_are_checked_and_scoped(api: Api) -> None:
    assert (await export(api, metric="flow")).status_code == 422
    assert (await export(api, tz="Europe/Paris")).status_code == 422
    assert (await export(api, **{"from": "2026-03-01T00:00:00"})).status_code == 422
    assert (await export(api, role="viewer")).status_code == 403
    agency = api.as_("agency", sectors=["traffic"])
    params = {
        "sector": "water",
        "from": T0.isoformat(),
        "to": (T0 + timedelta(hours=1)).isoformat(),
    }
    assert (await api.http.get(EXPORT, params=params, headers=agency)).status_code == 403


def test_file_names_are_ascii_with_a_utf8_form_when_needed() -> None:
    zone = ZoneInfo("Asia/Ho_Chi_Minh")
    name = filename("water", "salinity", T0, T0 + timedelta(days=1), zone)
    assert name == "ioc-water-salinity-20260301T0000+0700-20260302T0000+0700.csv"
    assert content_disposition(name) == f'attachment; filename="{name}"'
    assert content_disposition("độ-mặn.csv") == (
        "attachment; filename=\"do-man.csv\"; filename*=UTF-8''%C4%91%E1%BB%99-m%E1%BA%B7n.csv"
    )


# --- a real server process -----------------------------------------------------------------

MILLION = 1_000_000
SOURCES = 20


class Server:
    """The API in a uvicorn process of its own, on a database with a million readings."""

    def __init__(self, db_url: str, process: subprocess.Popen[bytes], base: str) -> None:
        self.db_url = db_url
        self.process = process
        self.base = base
        self.headers = bearer(make_key(db_url, "analyst"))

    @property
    def rss(self) -> int:
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def url(self, **params: str) -> str:
        everything = {
            "sector": "water",
            "metric": "salinity",
            "from": T0.isoformat(),
            "to": (T0 + timedelta(days=30)).isoformat(),
            **params,
        }
        return self.base + EXPORT + "?" + httpx.QueryParams(everything).__str__()


@pytest.fixture(scope="module")
def server(pg_server: str, template_db: str) -> Iterator[Server]:
    name = unique_name("ioc_export")
    db_url = create_database(pg_server, name, template=template_db)
    process: subprocess.Popen[bytes] | None = None
    try:
        sync(db_url)
        query(
            db_url,
            "INSERT INTO source (id, sector_id, name, district) "
            "SELECT 'tram-' || g, 'water', CASE WHEN g = 1 THEN 'Trạm Đại Ngãi' "
            "ELSE 'Trạm số ' || g END, 'coastal-district' FROM generate_series(1, %s) g",
            (SOURCES,),
        )
        query(
            db_url,
            "INSERT INTO series (source_id, metric) SELECT 'tram-' || g, 'salinity' "
            "FROM generate_series(1, %s) g",
            (SOURCES,),
        )
        # every 10 s for each source: 20 x 50,000 readings over 5.8 days
        query(
            db_url,
            "INSERT INTO reading (ts, series_id, value) "
            "SELECT %s::timestamptz + make_interval(secs => i * 10), s.id, (i %% 4000) / 100.0 "
            "FROM series s, generate_series(0, %s - 1) i",
            (T0, MILLION // SOURCES),
        )
        query(db_url, "ANALYZE reading")
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("IOC_")}
        env |= {
            "IOC_DATABASE_URL": db_url,
            "IOC_PROFILE": "mekong",
            "PYTHONPATH": str(ROOT),
        }
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "api.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=ROOT,
            env=env,
        )
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert process is not None and process.poll() is None, "the server exited"
            try:
                return httpx.get(base + "/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout_s=30, what="the API server")
        yield Server(db_url, process, base)
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        drop_database(pg_server, name)


def test_a_million_rows_stream_through_flat_server_memory(server: Server) -> None:
    with httpx.Client(timeout=60) as client:
        warm = client.get(
            server.url(to=(T0 + timedelta(hours=1)).isoformat()), headers=server.headers
        )
        assert warm.status_code == 200, warm.text
        assert warm.text.count("\n") == 1 + SOURCES * 360
        baseline = peak = server.rss
        lines = size = 0
        first = b""
        started = time.perf_counter()
        with client.stream("GET", server.url(), headers=server.headers) as answer:
            assert answer.status_code == 200
            for chunk in answer.iter_bytes(1 << 20):
                if not first:
                    first = chunk
                lines += chunk.count(b"\n")
                size += len(chunk)
                peak = max(peak, server.rss)
        seconds = time.perf_counter() - started
    assert lines == 1 + MILLION
    assert size > 60 * 2**20
    header, row = (line.decode("utf-8") for line in first.split(b"\n")[:2])
    assert header == HEADER
    assert row.startswith("2026-03-01T00:00:00+07:00,water,tram-1,Trạm Đại Ngãi,")
    growth = peak - baseline
    print(f"{MILLION / seconds:,.0f} rows/s, {size / 2**20:.0f} MiB, RSS +{growth / 2**20:.1f} MiB")
    assert growth < 40 * 2**20, f"server RSS grew {growth / 2**20:.1f} MiB"


def _copies(server: Server) -> int:
    """Backends held by an export now: running its COPY, or between two (in its transaction;
    the socket buffers may hold a series' rows)."""
    return int(
        query(
            server.db_url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND state <> 'idle' "
            "AND query LIKE 'COPY (SELECT%%'",
        )[0][0]
    )


def _backends(server: Server) -> int:
    return int(
        query(
            server.db_url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )[0][0]
    )


def test_a_client_leaving_mid_stream_releases_the_connection(server: Server) -> None:
    before = _backends(server)
    with ExitStack() as stack:
        clients = [stack.enter_context(httpx.Client(timeout=60)) for _ in range(4)]
        readers = []
        for client in clients:
            answer = stack.enter_context(client.stream("GET", server.url(), headers=server.headers))
            assert answer.status_code == 200
            readers.append(answer.iter_bytes(1 << 16))
            next(readers[-1])  # the stream is running, then nobody reads
        wait_until(lambda: _copies(server) == 4, timeout_s=10, what="four exports running")
        busy = httpx.get(server.url(), headers=server.headers, timeout=10)
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "5"
    # the clients are gone: their COPYs stop and their connections close
    wait_until(lambda: _copies(server) == 0, timeout_s=10, what="the exports to stop")
    wait_until(lambda: _backends(server) <= before, timeout_s=10, what="the connections to go")
    again = httpx.get(
        server.url(to=(T0 + timedelta(minutes=10)).isoformat()), headers=server.headers
    )
    assert again.status_code == 200
    assert again.text.count("\n") == 1 + SOURCES * 60
