"""Bucketed aggregates on a real PostgreSQL, checked against a Python reference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from ioc.errors import QueryError
from ioc.timeseries import aggregate
from tests.support.readings import START, copy_readings, reference, sample_readings

ROWS = sample_readings()
RANGE = (START + timedelta(hours=5, minutes=7), START + timedelta(days=11, hours=3))


@pytest.fixture
async def loaded(engine: AsyncEngine, db_url: str) -> AsyncEngine:
    copy_readings(db_url, ROWS)
    return engine


async def _ask(engine: AsyncEngine, **kwargs: object) -> dict[tuple[int, datetime], object]:
    async with engine.connect() as conn:
        points = await aggregate(conn, series_ids=[1, 2, 3], start=RANGE[0], end=RANGE[1], **kwargs)  # type: ignore[arg-type]
    return {(p.series_id, p.bucket): p.value for p in points}


def _assert_same(
    got: dict[tuple[int, datetime], object], want: dict[tuple[int, datetime], float | int]
) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


@pytest.mark.parametrize("fn", ["avg", "min", "max", "sum", "count", "last"])
async def test_each_function_matches_the_reference(loaded: AsyncEngine, fn: str) -> None:
    got = await _ask(loaded, bucket="1h", fn=fn, tz="Asia/Ho_Chi_Minh")
    _assert_same(
        got,
        reference(ROWS, bucket="1h", fn=fn, tz="Asia/Ho_Chi_Minh", start=RANGE[0], end=RANGE[1]),
    )


@pytest.mark.parametrize("bucket", ["1m", "15m", "6h", "1d", "1w", "1mo"])
async def test_each_bucket_width_matches_the_reference(loaded: AsyncEngine, bucket: str) -> None:
    got = await _ask(loaded, bucket=bucket, fn="avg", tz="Asia/Ho_Chi_Minh")
    _assert_same(
        got,
        reference(
            ROWS, bucket=bucket, fn="avg", tz="Asia/Ho_Chi_Minh", start=RANGE[0], end=RANGE[1]
        ),
    )


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata", "Europe/Berlin"])
async def test_days_follow_the_asked_time_zone(loaded: AsyncEngine, tz: str) -> None:
    got = await _ask(loaded, bucket="1d", fn="count", tz=tz)
    _assert_same(got, reference(ROWS, bucket="1d", fn="count", tz=tz, start=RANGE[0], end=RANGE[1]))
    # every reading of the widened range is counted exactly once
    assert sum(v for v in got.values()) == sum(  # type: ignore[misc]
        reference(ROWS, bucket="1d", fn="count", tz=tz, start=RANGE[0], end=RANGE[1]).values()
    )


async def test_gap_fill_shows_the_silent_day_of_a_series(loaded: AsyncEngine) -> None:
    got = await _ask(loaded, bucket="6h", fn="count", tz="Asia/Ho_Chi_Minh", gap_fill=True)
    series2 = {b: v for (s, b), v in got.items() if s == 2}
    silent = [b for b, v in series2.items() if v == 0]
    # series 2 is silent from day 3 to day 4.5: four to six whole 6-hour buckets
    assert 4 <= len(silent) <= 6
    assert all(START + timedelta(days=3) <= b < START + timedelta(days=4, hours=12) for b in silent)
    # every series has every bucket of the range
    assert len(got) == 3 * len(series2)
    averages = await _ask(loaded, bucket="6h", fn="avg", tz="Asia/Ho_Chi_Minh", gap_fill=True)
    assert all(averages[(2, b)] is None for b in silent)


async def test_unknown_series_and_bad_questions(loaded: AsyncEngine) -> None:
    async with loaded.connect() as conn:
        assert (
            await aggregate(
                conn, series_ids=[999], start=RANGE[0], end=RANGE[1], bucket="1h", fn="avg"
            )
            == []
        )
        with pytest.raises(QueryError, match="unknown function"):
            await aggregate(
                conn, series_ids=[1], start=RANGE[0], end=RANGE[1], bucket="1h", fn="median"
            )
        with pytest.raises(QueryError, match="time zone"):
            await aggregate(
                conn,
                series_ids=[1],
                start=RANGE[0],
                end=RANGE[1],
                bucket="1h",
                fn="avg",
                tz="Mars/Olympus",
            )


async def test_answers_are_in_utc_ordered_by_series_then_bucket(loaded: AsyncEngine) -> None:
    async with loaded.connect() as conn:
        points = await aggregate(
            conn,
            series_ids=[3, 1],
            start=RANGE[0],
            end=RANGE[1],
            bucket="1d",
            fn="max",
            tz="Asia/Ho_Chi_Minh",
        )
    keys = [(p.series_id, p.bucket) for p in points]
    assert keys == sorted(keys)
    assert all(p.bucket.tzinfo == UTC for p in points)
