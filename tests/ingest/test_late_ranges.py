"""The late-range hook and the rules behind it: which readings count as late, what ranges
they make, what the refresh job may refresh; on plain PostgreSQL the hook does nothing."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from ingest.items import Item, build_item
from ingest.late_ranges import LateRanges
from ingest.writer import Writer
from ioc.cagg_refresh import (
    SAFETY_MARGIN,
    CaggRefresher,
    Policy,
    RefreshReport,
    Tracking,
    floor_to,
    late_horizon,
    late_ranges,
    refresh_windows,
)
from ioc.db import libpq_url, with_database
from ioc.timeseries import aggregate
from tests.support.ingest import RULES, sync, wait_until
from tests.support.readings import reference
from tests.support.services import create_database, drop_database, unique_name

H = timedelta(hours=1)
T0 = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
VIEWS = ["reading_1m", "reading_1h", "reading_1d"]
MIGRATION_POLICIES = {
    "reading_1m": Policy(3 * H, timedelta(minutes=1), timedelta(minutes=1)),
    "reading_1h": Policy(timedelta(days=3), H, timedelta(minutes=30)),
    "reading_1d": Policy(timedelta(days=10), timedelta(days=1), 2 * H),
}


def test_the_horizon_is_the_hourly_watermark_under_the_migration_policies() -> None:
    # reading_1h reads younger readings in real time; older ones would wait for its policy
    assert late_horizon(MIGRATION_POLICIES, VIEWS) == H - SAFETY_MARGIN


def test_the_horizon_follows_the_policies() -> None:
    only_minutes = {"reading_1m": Policy(3 * H, timedelta(minutes=1), timedelta(minutes=1))}
    assert late_horizon(only_minutes, ["reading_1m"]) == 3 * H - timedelta(minutes=1) - (
        SAFETY_MARGIN
    )
    unbounded = {"reading_1m": Policy(None, timedelta(minutes=1), timedelta(minutes=1))}
    assert late_horizon(unbounded, ["reading_1m"]) is None  # the policy reaches any reading
    assert late_horizon({}, []) is None  # no aggregates, nothing can be late
    # an aggregate without a policy catches up only through the job: every reading is late
    missing = dict(MIGRATION_POLICIES)
    del missing["reading_1h"]
    assert late_horizon(missing, VIEWS) == timedelta(0)
    up_to_now = dict(MIGRATION_POLICIES, reading_1d=Policy(timedelta(days=10), None, H))
    assert late_horizon(up_to_now, VIEWS) == timedelta(0)


def test_the_cutoff_counts_on_the_database_clock() -> None:
    tracking = Tracking(horizon=H, clock_skew=timedelta(seconds=30))
    assert tracking.cutoff(T0) == T0 - H + timedelta(seconds=30)
    assert Tracking(horizon=None, clock_skew=timedelta(0)).cutoff(T0) is None


def test_late_readings_make_a_few_whole_hours() -> None:
    times = [T0 + timedelta(minutes=m) for m in (5, 55, 70, 240, 241)]
    assert late_ranges(times) == [(T0, T0 + 2 * H), (T0 + 4 * H, T0 + 5 * H)]
    assert late_ranges(times, max_count=1) == [(T0, T0 + 5 * H)]
    # a 30-hour backfill is one range
    backfill = [T0 + timedelta(minutes=5 * i) for i in range(360)]
    assert late_ranges(backfill) == [(T0, T0 + 30 * H)]
    assert floor_to(T0 + timedelta(minutes=59, seconds=59), H) == T0


def test_refresh_windows_are_whole_buckets_below_the_watermark() -> None:
    ranges = [(T0 + timedelta(minutes=20), T0 + timedelta(minutes=100))]
    assert refresh_windows(ranges, H, T0 + 5 * H) == [(T0, T0 + 2 * H)]
    assert refresh_windows(ranges, H, T0 + H) == [(T0, T0 + H)]
    assert refresh_windows(ranges, H, T0) == []  # all above it: read in real time
    day = timedelta(days=1)
    assert refresh_windows(ranges, day, T0 + day) == [(T0, T0 + day)]
    assert refresh_windows(ranges, day, T0 + 10 * H) == []
    many = [(T0 + 2 * i * H, T0 + (2 * i + 1) * H) for i in range(40)]
    assert len(refresh_windows(many, H, T0 + 100 * H)) == 16


def _items(source: str, times: list[datetime]) -> list[Item]:
    now = datetime.now(UTC)
    body = [
        {"ts": int(t.timestamp() * 1000), "values": {"water_level": t.minute / 10}} for t in times
    ]
    return [
        build_item(
            f"ioc/v1/water/{source}/telemetry",
            orjson.dumps(body),
            received_at=now,
            rules=RULES,
            max_payload_bytes=1 << 20,
        )
    ]


async def test_on_plain_postgresql_the_hook_writes_nothing(
    engine: AsyncEngine, db_url: str
) -> None:
    sync(db_url)
    hook = LateRanges()
    now = floor_to(datetime.now(UTC), timedelta(minutes=1))
    late = [now - timedelta(hours=31) + timedelta(minutes=10 * i) for i in range(180)]
    items = _items("plain-gw", late) + _items("plain-gw", [now - timedelta(minutes=1)])
    writer = Writer(db_url, hooks=[hook])
    writer.start()
    done: list[Item] = []
    try:
        for item in items:
            assert not item.rejects
            item.done = done.append
            writer.submit(item)
        wait_until(lambda: len(done) == len(items), what="the commit")
    finally:
        writer.stop()
    assert hook.failures == 0
    assert hook.recorded == 0
    with psycopg.connect(libpq_url(db_url)) as conn:
        assert conn.execute("SELECT to_regclass('cagg_refresh_pending')").fetchone() == (None,)
        rows = [
            (r[0], int(r[1]), float(r[2]))
            for r in conn.execute(
                "SELECT ts, series_id, value FROM reading_named WHERE source_id = 'plain-gw'"
            ).fetchall()
        ]
    assert len(rows) == 181
    span = (now - timedelta(hours=32), now + timedelta(minutes=1))
    for bucket, fn in (("1h", "sum"), ("1d", "count"), ("15m", "last")):
        async with engine.connect() as conn:
            points = await aggregate(
                conn,
                series_ids=[rows[0][1]],
                start=span[0],
                end=span[1],
                bucket=bucket,
                fn=fn,
                tz="Asia/Ho_Chi_Minh",
            )
        got = {(p.series_id, p.bucket): p.value for p in points}
        want = reference(
            rows, bucket=bucket, fn=fn, tz="Asia/Ho_Chi_Minh", start=span[0], end=span[1]
        )
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == pytest.approx(value), (bucket, fn, key)


def test_the_refresh_loop_outlives_database_errors(pg_server: str) -> None:
    name = unique_name("ioc_late")
    url = with_database(pg_server, name)  # not created yet: the first rounds cannot connect
    refresher = CaggRefresher(url, interval_s=0.02, untracked_interval_s=0.02)
    stop = threading.Event()
    thread = threading.Thread(target=refresher.run, args=(stop,), name="test-cagg-refresh")
    thread.start()
    try:
        wait_until(lambda: refresher.failures >= 1, what="a failed round")
        create_database(pg_server, name)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            # the table alone, on plain PostgreSQL: found, but no aggregate to refresh
            conn.execute(
                "CREATE TABLE cagg_refresh_pending (id bigint GENERATED ALWAYS AS IDENTITY "
                "PRIMARY KEY, lo timestamptz NOT NULL, hi timestamptz NOT NULL)"
            )
        wait_until(lambda: refresher.last == RefreshReport(), what="a round that worked")
        failed = refresher.failures
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute(
                "INSERT INTO cagg_refresh_pending (lo, hi) VALUES (now() - interval '1 day', now())"
            )
        # the refresh itself fails here (no TimescaleDB catalogue): logged, tried again
        wait_until(lambda: refresher.failures >= failed + 2, what="failed refreshes")
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(10)
        drop_database(pg_server, name)
    assert not thread.is_alive()
