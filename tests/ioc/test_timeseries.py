"""Bucketed aggregates on a real PostgreSQL, checked against a Python reference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from ioc.errors import QueryError
from ioc.timeseries import (
    CAGG_VIEWS,
    Agg,
    Bucket,
    Storage,
    aggregate,
    bucket_floor,
    bucket_spans,
    merge_ranges,
    plan,
    zone,
)
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


# --- late ranges: buckets answered from raw rows while the aggregates lack them ------------

H = timedelta(hours=1)
HCM = zone("Asia/Ho_Chi_Minh")
TS = Storage(CAGG_VIEWS, pending=True)


def test_merge_ranges_unions_and_bridges_the_smallest_gaps() -> None:
    t = START
    ranges = [(t, t + H), (t + H, t + 2 * H), (t + 5 * H, t + 6 * H), (t + 3 * H, t + 4 * H)]
    assert merge_ranges(ranges) == [(t, t + 2 * H), (t + 3 * H, t + 4 * H), (t + 5 * H, t + 6 * H)]
    assert merge_ranges(ranges, 2) == [(t, t + 4 * H), (t + 5 * H, t + 6 * H)]
    assert merge_ranges(ranges, 1) == [(t, t + 6 * H)]
    assert merge_ranges([(t, t), (t + H, t)]) == []


def test_a_late_range_sends_the_buckets_it_overlaps_to_raw_rows() -> None:
    start, end = START, START + timedelta(days=3)
    late = [(START + timedelta(hours=20), START + timedelta(hours=21))]
    p = plan(
        start=start, end=end, bucket=Bucket.parse("1d"), fn=Agg.SUM, tz=HCM, storage=TS,
        series_count=2, late=late,
    )  # fmt: skip
    assert p.relation == "reading_1h"  # local days are whole UTC hours, not UTC days
    # the local (UTC+7) day holding 20:00-21:00 UTC, whole
    day = bucket_floor(late[0][0], Bucket.parse("1d"), HCM)
    assert p.raw_spans == ((day, day + timedelta(days=1)),)
    assert "UNION ALL" in p.sql and "FROM reading " in p.sql
    assert p.params() == {"raw_lo0": day, "raw_hi0": day + timedelta(days=1)}
    # outside the question, or on plain PostgreSQL: nothing changes
    outside = [(end + timedelta(days=1), end + timedelta(days=2))]
    assert plan(
        start=start, end=end, bucket=Bucket.parse("1d"), fn=Agg.SUM, tz=HCM, storage=TS,
        series_count=2, late=outside,
    ).raw_spans == ()  # fmt: skip
    plain = plan(
        start=start, end=end, bucket=Bucket.parse("1h"), fn=Agg.SUM, tz=HCM, storage=Storage(),
        series_count=2, late=late,
    )  # fmt: skip
    assert plain.relation == "reading" and plain.raw_spans == ()


def test_a_late_range_over_the_whole_question_reads_raw_rows_only() -> None:
    p = plan(
        start=START, end=START + H, bucket=Bucket.parse("1m"), fn=Agg.AVG, tz=HCM, storage=TS,
        series_count=1, late=[(START - H, START + 2 * H)],
    )  # fmt: skip
    assert p.relation == "reading"
    assert p.raw_spans == () and "UNION" not in p.sql


def test_spans_are_whole_buckets_of_the_question() -> None:
    bucket = Bucket.parse("15m")
    late = [(START + timedelta(minutes=7), START + timedelta(minutes=8))]
    spans = bucket_spans(late, START, START + H, bucket, HCM)
    assert spans == [(START, START + timedelta(minutes=15))]
