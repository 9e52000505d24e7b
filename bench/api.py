"""HTTP API benchmark: the operations overview, telemetry aggregates and the CSV export over
10 million readings of 10,000 sources (the 11 sectors of binh-phuoc).

Not a test: it prints figures. Usage (PostgreSQL reachable):

    .venv/bin/python bench/api.py [--database-url URL] [--readings N] [--seconds S] [--quick]

The database is filled with SQL (10,000 sources, one series each, readings every 43.2 minutes
over 30 days: 1,000 per series; some open alerts). The API runs as a real uvicorn server in a
process of its own (its RSS is sampled); the load comes from keep-alive connections of this
process (bench/httpload.py). Each figure is printed with a ratio against a baseline measured
in the same run: `/healthz` for request rates (the framework's floor on this machine), a
direct COPY of the same rows for the export, raw rows for the continuous aggregates.

No native TimescaleDB server is reachable here: the continuous-aggregate ratio is measured on
the WASM TimescaleDB the tests use (PGlite, one session), through `ioc.timeseries.aggregate`
rather than the API (the API holds several connections; PGlite serves one). Its absolute
times say nothing about a native server; the ratio shows the aggregates' effect.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchlib import fresh_database
from httpload import LoadResult, run_load

from ioc.db import libpq_url
from ioc.embedded_pg import free_port
from ioc.keys import create_key
from ioc.settings import DEVELOPMENT_PEPPER

PROFILE = "binh-phuoc"
SOURCES = 10_000
PER_SERIES = 1_000
SPAN = timedelta(days=30)
PANEL_SECTOR = "traffic"
PANEL_METRIC = "mean_speed"
DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/postgres"

_FILL_SOURCES = """
WITH s AS (
    SELECT id, name_vi, kpis, row_number() OVER (ORDER BY display_order) - 1 AS k,
           count(*) OVER () AS n
    FROM sector WHERE active
)
INSERT INTO source (id, sector_id, name, kind, district, latitude, longitude, interval_s,
                    status, last_seen_at, last_reading_at)
SELECT s.id || '-' || g, s.id, 'Trạm ' || s.name_vi || ' số ' || g, 'sensor',
       (ARRAY['dong-xoai','binh-long','phuoc-long','chon-thanh','bu-dang','bu-dop','bu-gia-map',
              'dong-phu','hon-quan','loc-ninh','phu-rieng'])[1 + g %% 11],
       11.3 + (g %% 100) / 250.0, 106.6 + (g %% 97) / 250.0, 2592,
       CASE WHEN g %% 20 = 0 THEN 'offline' ELSE 'online' END, now(), now()
FROM s, generate_series(1, %(sources)s::int) g
WHERE g %% s.n = s.k
"""
_FILL_SERIES = """
INSERT INTO series (source_id, metric)
SELECT src.id, sec.kpis ->> (split_part(src.id, '-', 2)::int % jsonb_array_length(sec.kpis))
FROM source src JOIN sector sec ON sec.id = src.sector_id
"""
# one chunk of sources at a time, to show progress and keep transactions moderate
_FILL_READINGS = """
INSERT INTO reading (series_id, ts, value)
SELECT se.id, %(end)s - make_interval(secs => i * %(step_s)s),
       50 + 20 * sin(i / 12.0 + se.id) + (se.id %% 7)
FROM series se, generate_series(0, %(per)s - 1) i
WHERE se.id %% %(chunks)s = %(chunk)s
"""
_FILL_ALERTS = """
INSERT INTO alert (cause_key, sector_id, source_id, severity, status, title, metric,
                   rule_kind, opened_at)
SELECT 'bench:' || src.id, src.sector_id, src.id,
       (ARRAY['info','warning','critical'])[1 + n % 3], 'open', 'Cảnh báo thử ' || src.id,
       'x', 'threshold', now()
FROM (SELECT id, sector_id, row_number() OVER () AS n FROM source) src
WHERE n % 25 = 0
"""


def fill(url: str, *, sources: int, per_series: int) -> int:
    """Load the data; the number of readings stored."""
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    step_s = SPAN.total_seconds() / per_series
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(_FILL_SOURCES, {"sources": sources})
        conn.execute(_FILL_SERIES)
        chunks = 10
        started = time.perf_counter()
        for chunk in range(chunks):
            conn.execute(
                _FILL_READINGS,
                {"end": end, "step_s": step_s, "per": per_series, "chunks": chunks, "chunk": chunk},
            )
            print(f"  readings: chunk {chunk + 1}/{chunks} ({time.perf_counter() - started:.0f} s)")
        conn.execute(_FILL_ALERTS)
        conn.execute("ANALYZE")
        row = conn.execute("SELECT count(*) FROM reading").fetchone()
    return int(row[0]) if row else 0


@contextmanager
def server(url: str, *, workers: int) -> Iterator[tuple[str, psutil.Process]]:
    """The API in a uvicorn process of its own; its base URL and process."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOC_")}
    env |= {
        "IOC_DATABASE_URL": url,
        "IOC_PROFILE": PROFILE,
        "IOC_LOG_LEVEL": "WARNING",
        "IOC_ALERTS_ENABLED": "false",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the API server did not start")
            time.sleep(0.2)
        yield base, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def tree_rss(proc: psutil.Process) -> int:
    """RSS of the server and its children (uvicorn workers), bytes."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def load(
    base: str, urls: Sequence[str], headers: dict[str, str], *, concurrency: int, seconds: float
) -> LoadResult:
    run_load(base, urls, headers=headers, concurrency=concurrency, seconds=min(2.0, seconds))
    return run_load(base, urls, headers=headers, concurrency=concurrency, seconds=seconds)


def export(
    base: str, path: str, headers: dict[str, str], proc: psutil.Process
) -> tuple[int, float, int, int]:
    """Stream one export: rows, seconds, RSS before, peak RSS while streaming."""
    before = tree_rss(proc)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rows = 0
    started = time.perf_counter()
    try:
        with httpx.stream("GET", base + path, headers=headers, timeout=600) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes(1 << 20):
                rows += chunk.count(b"\n")
    finally:
        done.set()
        sampler.join()
    return rows - 1, time.perf_counter() - started, before, peak[0]


def direct_copy(
    url: str, sector: str, metric: str, start: datetime, end: datetime
) -> tuple[int, float]:
    """The same rows through COPY on a direct connection: rows and seconds (the baseline)."""
    sql = (
        "COPY (SELECT r.ts, se.metric, src.id, src.name, r.value FROM reading r "
        "JOIN series se ON se.id = r.series_id JOIN source src ON src.id = se.source_id "
        f"WHERE src.sector_id = '{sector}' AND se.metric = '{metric}' "
        f"AND r.ts >= '{start.isoformat()}' AND r.ts < '{end.isoformat()}' "
        "ORDER BY r.ts) TO STDOUT WITH (FORMAT csv)"
    )
    rows = 0
    started = time.perf_counter()
    with psycopg.connect(libpq_url(url)) as conn, conn.cursor() as cur, cur.copy(sql) as copy:
        for data in copy:
            rows += bytes(data).count(b"\n")
    return rows, time.perf_counter() - started


def timescale_ratio(series: int, per_series: int) -> None:
    """On the WASM TimescaleDB of the tests (no native server here): the 30 d x 1 h question
    through `ioc.timeseries.aggregate`, from the continuous aggregates and from raw rows."""
    import asyncio

    from sqlalchemy.pool import NullPool

    from ioc import migrate
    from ioc.db import make_engine
    from ioc.timeseries import Storage, aggregate, detect_storage
    from tests.support.pglite import pglite_timescale

    with pglite_timescale(require=True) as ts_url:
        assert ts_url is not None
        migrate.upgrade(ts_url, timescale="on", retention_days=365)
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        step_s = SPAN.total_seconds() / per_series
        started = time.perf_counter()
        with psycopg.connect(libpq_url(ts_url), autocommit=True) as conn:
            conn.execute(
                "INSERT INTO reading (series_id, ts, value) SELECT s, "
                "%(end)s - make_interval(secs => i * %(step)s), 50 + 20 * sin(i / 12.0 + s) "
                "FROM generate_series(1, %(series)s) s, generate_series(0, %(per)s - 1) i",
                {"end": end, "step": step_s, "series": series, "per": per_series},
            )
            for view in ("reading_1m", "reading_1h", "reading_1d"):
                conn.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, NULL)")
        print(
            f"TimescaleDB (PGlite, WASM): {series * per_series:,} readings of {series} series "
            f"stored and aggregated in {time.perf_counter() - started:.0f} s"
        )

        async def timed(storage: Storage | None) -> list[float]:
            engine = make_engine(ts_url, poolclass=NullPool)
            times = []
            try:
                async with engine.connect() as conn:
                    found = await detect_storage(conn)
                    for _ in range(5):
                        t0 = time.perf_counter()
                        await aggregate(
                            conn,
                            series_ids=range(1, series + 1),
                            start=end - SPAN,
                            end=end,
                            bucket="1h",
                            fn="avg",
                            tz="Asia/Ho_Chi_Minh",
                            storage=storage or found,
                        )
                        times.append(time.perf_counter() - t0)
            finally:
                await engine.dispose()
            return sorted(times)

        cagg = asyncio.run(timed(None))
        raw = asyncio.run(timed(Storage()))
        print(
            f"  30 d x 1 h over {series} series: continuous aggregate median "
            f"{1000 * cagg[2]:.0f} ms, raw rows median {1000 * raw[2]:.0f} ms; "
            f"ratio raw/aggregate {raw[2] / cagg[2]:.1f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--database-url", default=os.environ.get("IOC_BENCH_DATABASE_URL", DEFAULT_DB)
    )
    parser.add_argument("--sources", type=int, default=SOURCES)
    parser.add_argument("--per-series", type=int, default=PER_SERIES)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--quick", action="store_true", help="a tenth of the readings")
    parser.add_argument(
        "--timescale-series",
        type=int,
        default=30,
        help="series (a reading a minute for 30 days) for the TimescaleDB (WASM) ratio; 0: skip",
    )
    args = parser.parse_args(argv)
    if args.timescale_series:
        timescale_ratio(args.timescale_series, per_series=43_200)
    per_series = args.per_series // 10 if args.quick else args.per_series
    with fresh_database(args.database_url, "api", "pg", profile=PROFILE) as url:
        print(f"filling {args.sources} sources x {per_series} readings ...")
        started = time.perf_counter()
        readings = fill(url, sources=args.sources, per_series=per_series)
        print(f"{readings:,} readings in {time.perf_counter() - started:.0f} s")
        with psycopg.connect(libpq_url(url)) as conn:
            _, key = create_key(
                conn, name="bench", role="admin", pepper=DEVELOPMENT_PEPPER, actor="bench"
            )
        headers = {"Authorization": f"Bearer {key}"}
        run(url, headers, args)
    return 0


def run(url: str, headers: dict[str, str], args: argparse.Namespace) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    day = {"from": (now - timedelta(days=1)).isoformat(), "to": now.isoformat()}
    month = {"from": (now - SPAN).isoformat(), "to": now.isoformat()}
    panel = "/api/v1/telemetry/aggregate?" + urlencode(
        {"sector": PANEL_SECTOR, "metric": PANEL_METRIC, "bucket": "1m", "fn": "avg", **day}
    )
    combined = panel + "&per=all"
    # questions never asked before (the end moved by whole minutes): each one computed
    fresh = [
        "/api/v1/telemetry/aggregate?"
        + urlencode(
            {
                "sector": PANEL_SECTOR,
                "metric": PANEL_METRIC,
                "bucket": "1m",
                "fn": "avg",
                "per": "all",
                "from": (now - timedelta(days=1, minutes=i)).isoformat(),
                "to": (now - timedelta(minutes=i)).isoformat(),
            }
        )
        for i in range(1, 41)
    ]
    hourly = "/api/v1/telemetry/aggregate?" + urlencode(
        {"sector": PANEL_SECTOR, "metric": PANEL_METRIC, "bucket": "1h", "fn": "avg", **month}
    )
    export_path = "/api/v1/telemetry/export.csv?" + urlencode(
        {"sector": PANEL_SECTOR, "metric": PANEL_METRIC, **month}
    )
    c, secs = args.concurrency, args.seconds
    with server(url, workers=args.workers) as (base, proc):
        floor = load(base, ["/healthz"], {}, concurrency=c, seconds=secs)
        print(floor.line("GET /healthz (baseline)"))
        sectors = load(base, ["/api/v1/sectors"], headers, concurrency=c, seconds=secs)
        print(sectors.line("GET /api/v1/sectors"))
        print(f"  ratio to baseline rate: {sectors.rps / floor.rps:.3f}")
        p = load(base, [panel], headers, concurrency=c, seconds=secs)
        print(p.line("panel 24 h x 1 min"))
        print(f"  ratio to baseline rate: {p.rps / floor.rps:.3f}")
        pa = load(base, [combined], headers, concurrency=c, seconds=secs)
        print(pa.line("panel 24 h x 1 min, sources combined (per=all)"))
        print(f"  ratio to baseline rate: {pa.rps / floor.rps:.3f}")
        cold = run_load(
            base, fresh, headers=headers, concurrency=1, seconds=120, max_requests=len(fresh)
        )
        print(cold.line("panel 24 h x 1 min, per=all, computed afresh (no cache), one at a time"))
        h = load(base, [hourly], headers, concurrency=4, seconds=secs)
        print(h.line("range 30 d x 1 h"))
        rows, seconds, before, peak = export(base, export_path, headers, proc)
        print(
            f"export.csv: {rows:,} rows in {seconds:.1f} s = {rows / seconds:,.0f} rows/s; "
            f"server RSS {before / 2**20:.0f} MiB before, {peak / 2**20:.0f} MiB peak "
            f"(+{(peak - before) / 2**20:.1f} MiB)"
        )
    start = now - SPAN
    base_rows, base_s = direct_copy(url, PANEL_SECTOR, PANEL_METRIC, start, now)
    ratio = (rows / seconds) / (base_rows / base_s)
    print(
        f"  baseline: direct COPY of the same rows {base_rows:,} in {base_s:.1f} s = "
        f"{base_rows / base_s:,.0f} rows/s; ratio export/COPY {ratio:.3f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
