"""Bucket arithmetic and the choice between raw rows and continuous aggregates (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from ioc.errors import QueryError
from ioc.timeseries import (
    CAGG_VIEWS,
    Agg,
    Bucket,
    Storage,
    bucket_floor,
    bucket_starts,
    choose_relation,
    plan,
)

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
KOLKATA = ZoneInfo("Asia/Kolkata")  # UTC+05:30
BERLIN = ZoneInfo("Europe/Berlin")  # has daylight saving
TS = Storage(CAGG_VIEWS)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "label", ["1m", "5m", "15m", "30m", "1h", "2h", "6h", "12h", "1d", "1w", "1mo"]
)
def test_supported_buckets_parse(label: str) -> None:
    assert Bucket.parse(label).label == label


@pytest.mark.parametrize("label", ["7m", "5h", "24h", "0m", "2d", "1y", "", "m"])
def test_buckets_that_do_not_tile_a_day_are_refused(label: str) -> None:
    with pytest.raises(QueryError):
        Bucket.parse(label)


def test_day_buckets_start_at_local_midnight() -> None:
    # 18:30 UTC on 1 March is 01:30 on 2 March in Viet Nam
    t = datetime(2026, 3, 1, 18, 30, tzinfo=UTC)
    assert bucket_floor(t, Bucket.parse("1d"), HCM) == datetime(2026, 3, 1, 17, 0, tzinfo=UTC)
    assert bucket_floor(t, Bucket.parse("1d"), ZoneInfo("UTC")) == datetime(2026, 3, 1, tzinfo=UTC)


def test_weeks_start_on_monday_and_months_on_the_first_local_day() -> None:
    t = datetime(2026, 4, 16, 3, 0, tzinfo=UTC)  # Thursday
    assert bucket_floor(t, Bucket.parse("1w"), HCM) == datetime(2026, 4, 12, 17, tzinfo=UTC)
    assert bucket_floor(t, Bucket.parse("1mo"), HCM) == datetime(2026, 3, 31, 17, tzinfo=UTC)


def test_month_buckets_follow_the_calendar_across_a_year_end() -> None:
    starts = list(
        bucket_starts(
            datetime(2025, 11, 20, tzinfo=UTC),
            datetime(2026, 2, 2, tzinfo=UTC),
            Bucket.parse("1mo"),
            HCM,
        )
    )
    assert [s.astimezone(HCM).strftime("%Y-%m-%d %H:%M") for s in starts] == [
        "2025-11-01 00:00",
        "2025-12-01 00:00",
        "2026-01-01 00:00",
        "2026-02-01 00:00",
    ]


def test_the_local_day_of_a_daylight_saving_switch_is_23_hours() -> None:
    starts = list(
        bucket_starts(
            datetime(2026, 3, 28, 12, tzinfo=UTC),
            datetime(2026, 3, 31, tzinfo=UTC),
            Bucket.parse("1d"),
            BERLIN,
        )
    )
    widths = [b - a for a, b in pairwise(starts)]
    assert widths == [timedelta(hours=24), timedelta(hours=23), timedelta(hours=24)]


def test_fixed_buckets_count_from_local_midnight() -> None:
    t = datetime(2026, 1, 1, 2, 40, tzinfo=UTC)  # 08:10 in Kolkata
    assert bucket_floor(t, Bucket.parse("6h"), KOLKATA) == datetime(2026, 1, 1, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("bucket", "tz", "expected"),
    [
        ("1m", HCM, "reading_1m"),
        ("15m", HCM, "reading_1m"),
        ("1h", HCM, "reading_1h"),
        ("6h", HCM, "reading_1h"),
        ("1d", HCM, "reading_1h"),  # local days are 17:00 UTC: hourly buckets tile them
        ("1d", ZoneInfo("UTC"), "reading_1d"),
        ("1mo", ZoneInfo("UTC"), "reading_1d"),
        ("1w", HCM, "reading_1h"),
        ("1h", KOLKATA, "reading_1m"),  # half-hour offset: hourly caggs do not line up
        ("1d", KOLKATA, "reading_1m"),
        ("1d", BERLIN, "reading_1h"),
    ],
)
def test_coarsest_aggregate_that_tiles_the_buckets_is_chosen(
    bucket: str, tz: ZoneInfo, expected: str
) -> None:
    relation, _ = choose_relation(Bucket.parse(bucket), tz, T0, T1, TS)
    assert relation == expected


def test_plain_postgresql_always_reads_raw_rows() -> None:
    relation, _ = choose_relation(Bucket.parse("1d"), HCM, T0, T1, Storage())
    assert relation == "reading"


def test_range_is_widened_to_whole_buckets() -> None:
    p = plan(
        start=datetime(2026, 1, 1, 10, 7, tzinfo=UTC),
        end=datetime(2026, 1, 1, 10, 52, tzinfo=UTC),
        bucket=Bucket.parse("15m"),
        fn=Agg.AVG,
        tz=HCM,
        storage=Storage(),
        series_count=1,
    )
    assert (p.start, p.end) == (
        datetime(2026, 1, 1, 10, 0, tzinfo=UTC),
        datetime(2026, 1, 1, 11, 0, tzinfo=UTC),
    )


def test_questions_too_large_or_malformed_are_refused() -> None:
    kwargs = {"bucket": Bucket.parse("1m"), "fn": Agg.AVG, "tz": HCM, "storage": Storage()}
    with pytest.raises(QueryError, match="points"):
        plan(start=T0, end=T0 + timedelta(days=365), series_count=10, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(QueryError, match="after start"):
        plan(start=T1, end=T0, series_count=1, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(QueryError, match="UTC offset"):
        plan(start=datetime(2026, 1, 1), end=T1, series_count=1, **kwargs)  # type: ignore[arg-type]
