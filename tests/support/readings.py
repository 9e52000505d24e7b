"""Sample readings and an independent Python reference for bucketed aggregates."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg

from ioc.db import libpq_url
from ioc.timeseries import Agg, Bucket, bucket_floor

Row = tuple[datetime, int, float]

START = datetime(2026, 3, 28, 15, 0, tzinfo=UTC)


def sample_readings(seed: int = 7, days: int = 12) -> list[Row]:
    """Three series at irregular times across local midnights, with a silent stretch."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for series_id, step_s in ((1, 47), (2, 600), (3, 3600)):
        t = START + timedelta(seconds=rng.randint(0, 59))
        end = START + timedelta(days=days)
        while t < end:
            # series 2 goes silent for a day and a half: gap-fill must show it
            silent = series_id == 2 and START + timedelta(days=3) <= t < START + timedelta(
                days=4, hours=12
            )
            if not silent:
                rows.append((t, series_id, round(rng.uniform(-50, 150), 3)))
            t += timedelta(seconds=step_s + rng.randint(0, step_s // 3))
    return rows


def copy_readings(url: str, rows: list[Row]) -> None:
    """Store rows in `reading` with COPY."""
    with psycopg.connect(libpq_url(url)) as conn, conn.cursor() as cur:
        with cur.copy("COPY reading (ts, series_id, value) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()


def reference(
    rows: list[Row], *, bucket: str, fn: str, tz: str, start: datetime, end: datetime
) -> dict[tuple[int, datetime], float | int]:
    """What `aggregate` must answer, computed in Python over the raw rows."""
    spec, zone, agg = Bucket.parse(bucket), ZoneInfo(tz), Agg(fn)
    lo = bucket_floor(start, spec, zone)
    hi_bucket = bucket_floor(end - timedelta(microseconds=1), spec, zone)
    groups: dict[tuple[int, datetime], list[tuple[datetime, float]]] = defaultdict(list)
    for ts, sid, value in rows:
        b = bucket_floor(ts, spec, zone)
        if lo <= b <= hi_bucket:
            groups[(sid, b)].append((ts, value))
    out: dict[tuple[int, datetime], float | int] = {}
    for key, items in groups.items():
        out[key] = _reduce(agg, items)
    return out


def _reduce(agg: Agg, items: list[tuple[datetime, float]]) -> float | int:
    values = [v for _, v in items]
    if agg is Agg.AVG:
        return sum(values) / len(values)
    if agg is Agg.MIN:
        return min(values)
    if agg is Agg.MAX:
        return max(values)
    if agg is Agg.SUM:
        return sum(values)
    if agg is Agg.COUNT:
        return len(values)
    return max(items)[1]
