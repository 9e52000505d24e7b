"""The TimescaleDB layout: hypertable, policies, continuous aggregates, and answers equal to
plain PostgreSQL's on identical data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from ioc import migrate
from ioc.db import libpq_url, make_engine, sqlalchemy_url
from ioc.storage import ensure_retention_policy
from ioc.timeseries import Bucket, aggregate, choose_relation, detect_storage, zone
from tests.support.readings import START, copy_readings, sample_readings

pytestmark = pytest.mark.timescale

ROWS = sample_readings()
RANGE = (START + timedelta(hours=5, minutes=7), START + timedelta(days=11, hours=3))
CAGGS = ["reading_1d", "reading_1h", "reading_1m"]


def _one(url: str, query: str, *params: object) -> object:
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    return None if row is None else row[0]


def _all(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(libpq_url(url)) as conn:
        return conn.execute(query).fetchall()


def _refresh(url: str) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for view in reversed(CAGGS):
            conn.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, NULL)")


@pytest.fixture(scope="module")
def ts_db(timescale_url: str) -> str:
    """The TimescaleDB server, migrated to head with sample readings stored and refreshed."""
    migrate.upgrade(timescale_url, timescale="on", retention_days=365)
    if not _one(timescale_url, "SELECT count(*) FROM reading"):
        copy_readings(timescale_url, ROWS)
        _refresh(timescale_url)
    return timescale_url


@pytest.fixture
async def ts_engine(ts_db: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(ts_db, poolclass=NullPool)  # the server takes one connection at once
    yield engine
    await engine.dispose()


def test_migrations_up_down_up_on_timescale(timescale_url: str) -> None:
    migrate.upgrade(timescale_url, timescale="on")
    assert migrate.current(timescale_url) == migrate.head_revision()
    migrate.downgrade(timescale_url, "base")
    assert migrate.current(timescale_url) is None
    # alembic keeps its own (now empty) version table after a downgrade to base
    assert (
        _all(
            timescale_url,
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'alembic_version'",
        )
        == []
    )
    assert (
        _one(
            timescale_url, "SELECT count(*) FROM timescaledb_information.jobs WHERE job_id >= 1000"
        )
        == 0
    )
    migrate.upgrade(timescale_url, timescale="on")
    assert migrate.current(timescale_url) == migrate.head_revision()


def test_reading_is_a_hypertable_with_one_day_chunks(ts_db: str) -> None:
    assert _one(
        ts_db,
        "SELECT time_interval FROM timescaledb_information.dimensions "
        "WHERE hypertable_name = 'reading'",
    ) == timedelta(days=1)
    assert (
        _one(
            ts_db,
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'reading'",
        )
        >= 11
    )  # type: ignore[operator]


def test_compression_and_retention_policies(ts_db: str) -> None:
    segment = _one(
        ts_db,
        "SELECT segmentby_column_index FROM "
        "timescaledb_information.compression_settings "
        "WHERE hypertable_name = 'reading' AND attname = 'series_id'",
    )
    assert segment == 1
    jobs = dict(
        _all(
            ts_db,
            "SELECT proc_name, config::text FROM timescaledb_information.jobs "
            "WHERE hypertable_name = 'reading'",
        )
    )
    assert '"7 days"' in str(jobs["policy_compression"])
    assert '"365 days"' in str(jobs["policy_retention"])


def test_retention_follows_the_setting_at_start(ts_db: str) -> None:
    engine = create_engine(sqlalchemy_url(ts_db), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            assert ensure_retention_policy(conn, 90) is True
        with engine.begin() as conn:
            assert ensure_retention_policy(conn, 90) is False
        assert '"90 days"' in str(
            _one(
                ts_db,
                "SELECT config::text FROM "
                "timescaledb_information.jobs WHERE proc_name = "
                "'policy_retention'",
            )
        )
        with engine.begin() as conn:
            ensure_retention_policy(conn, 365)
    finally:
        engine.dispose()


def test_continuous_aggregates_are_hierarchical_with_refresh_policies(ts_db: str) -> None:
    caggs = dict(
        _all(
            ts_db,
            "SELECT view_name, view_definition FROM timescaledb_information.continuous_aggregates",
        )
    )
    assert sorted(caggs) == CAGGS
    assert "reading_1m" in str(caggs["reading_1h"])
    assert "reading_1h" in str(caggs["reading_1d"])
    refreshed = {
        r[0]
        for r in _all(
            ts_db,
            "SELECT hypertable_name FROM "
            "timescaledb_information.jobs WHERE proc_name = "
            "'policy_refresh_continuous_aggregate'",
        )
    }
    assert len(refreshed) == 3
    # refreshed: the materialised minutes hold every stored reading
    assert _one(ts_db, "SELECT sum(count) FROM reading_1m") == len(ROWS)
    assert _one(ts_db, "SELECT sum(count) FROM reading_1d") == len(ROWS)


async def test_storage_detection_finds_the_aggregates(ts_engine: AsyncEngine) -> None:
    async with ts_engine.connect() as conn:
        storage = await detect_storage(conn)
    assert [view for _, view in storage.caggs] == ["reading_1m", "reading_1h", "reading_1d"]


QUESTIONS = [
    ("1m", "avg", "Asia/Ho_Chi_Minh"),
    ("15m", "sum", "Asia/Ho_Chi_Minh"),
    ("1h", "avg", "Asia/Ho_Chi_Minh"),
    ("1h", "last", "Asia/Ho_Chi_Minh"),
    ("6h", "min", "Asia/Ho_Chi_Minh"),
    ("1d", "max", "Asia/Ho_Chi_Minh"),
    ("1d", "count", "Asia/Ho_Chi_Minh"),
    ("1d", "avg", "UTC"),
    ("1d", "last", "Asia/Kolkata"),
    ("1w", "sum", "Asia/Ho_Chi_Minh"),
    ("1mo", "count", "UTC"),
    ("1mo", "avg", "Asia/Ho_Chi_Minh"),
]


async def _answers(
    engine: AsyncEngine,
    bucket: str,
    fn: str,
    tz: str,
    *,
    start: datetime,
    end: datetime,
    ids: list[int],
) -> dict[tuple[int, datetime], object]:
    async with engine.connect() as conn:
        points = await aggregate(
            conn, series_ids=ids, start=start, end=end, bucket=bucket, fn=fn, tz=tz, gap_fill=True
        )
    return {(p.series_id, p.bucket): p.value for p in points}


@pytest.fixture
async def plain_engine(engine: AsyncEngine, db_url: str) -> AsyncEngine:
    copy_readings(db_url, ROWS)
    return engine


@pytest.mark.parametrize(("bucket", "fn", "tz"), QUESTIONS)
async def test_same_answer_as_plain_postgresql(
    ts_engine: AsyncEngine, plain_engine: AsyncEngine, bucket: str, fn: str, tz: str
) -> None:
    kwargs = {"start": RANGE[0], "end": RANGE[1], "ids": [1, 2, 3]}
    on_ts = await _answers(ts_engine, bucket, fn, tz, **kwargs)  # type: ignore[arg-type]
    on_pg = await _answers(plain_engine, bucket, fn, tz, **kwargs)  # type: ignore[arg-type]
    assert on_ts.keys() == on_pg.keys()
    for key, value in on_pg.items():
        if value is None:  # a gap-filled bucket without readings
            assert on_ts[key] is None, key
        else:
            assert on_ts[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
    assert sum(1 for v in on_pg.values() if v not in (None, 0)) > 0


@pytest.mark.parametrize(
    ("bucket", "tz", "view"),
    [
        ("1m", "Asia/Ho_Chi_Minh", "reading_1m"),
        ("1h", "Asia/Ho_Chi_Minh", "reading_1h"),
        ("1d", "UTC", "reading_1d"),
    ],
)
async def test_timescale_answers_come_from_the_aggregates(
    ts_engine: AsyncEngine, bucket: str, tz: str, view: str
) -> None:
    async with ts_engine.connect() as conn:
        storage = await detect_storage(conn)
    relation, _ = choose_relation(Bucket.parse(bucket), zone(tz), RANGE[0], RANGE[1], storage)
    assert relation == view


async def test_fresh_readings_show_before_any_refresh(
    ts_db: str, ts_engine: AsyncEngine, plain_engine: AsyncEngine, db_url: str
) -> None:
    # real-time aggregation: rows newer than the last refresh are read from the hypertable
    now = datetime.now(UTC).replace(microsecond=0)
    fresh = [(now - timedelta(minutes=m), 9, float(m)) for m in range(1, 90)]
    copy_readings(ts_db, fresh)
    copy_readings(db_url, fresh)
    kwargs = {"start": now - timedelta(hours=2), "end": now + timedelta(minutes=1), "ids": [9]}
    for bucket in ("1m", "1h"):
        on_ts = await _answers(ts_engine, bucket, "sum", "UTC", **kwargs)  # type: ignore[arg-type]
        on_pg = await _answers(plain_engine, bucket, "sum", "UTC", **kwargs)  # type: ignore[arg-type]
        assert on_ts.keys() == on_pg.keys()
        for key, value in on_pg.items():
            assert on_ts[key] == (None if value is None else pytest.approx(value)), key
        assert sum(v for v in on_ts.values() if v) == sum(range(1, 90))  # type: ignore[misc]
