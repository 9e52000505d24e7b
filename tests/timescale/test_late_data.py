"""Late data on TimescaleDB: a gateway offline for 30 hours uploads what it buffered.

The refresh policies re-materialise only their recent window, so by themselves the
continuous aggregates never get the backfill. The writer hook lists its ranges, `aggregate`
answers them from raw rows at once, and the refresh job puts them into the aggregates.

PGlite runs no background jobs: the policy jobs are run with `CALL run_job` as a native
server's scheduler would, and the refresh job is run explicitly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from ingest.items import Item, build_item
from ingest.late_ranges import LateRanges
from ingest.writer import BatchHook, Writer
from ioc import migrate
from ioc.cagg_refresh import SAFETY_MARGIN, CaggRefresher, RefreshReport, detect, floor_to
from ioc.db import libpq_url, make_engine
from ioc.timeseries import Bucket, Storage, aggregate, choose_relation, detect_storage, zone
from tests.support.ingest import RULES, sync, wait_until

pytestmark = pytest.mark.timescale

STEP = timedelta(minutes=5)
OUTAGE = (timedelta(hours=31), timedelta(hours=1))
"""The gateway was silent from 31 hours ago until 1 hour ago."""
METER_GAP = (timedelta(days=4, hours=6), timedelta(days=4))
"""A meter's six hours four days ago came in late too (beyond even reading_1d's watermark)."""
VIEWS = (("reading_1m", "1 minute"), ("reading_1h", "1 hour"), ("reading_1d", "1 day"))
QUESTIONS = [
    ("1m", "sum", "UTC"),
    ("15m", "avg", "Asia/Ho_Chi_Minh"),
    ("1h", "count", "UTC"),
    ("1h", "last", "Asia/Ho_Chi_Minh"),
    ("6h", "max", "Asia/Ho_Chi_Minh"),
    ("1d", "sum", "UTC"),
    ("1d", "count", "Asia/Ho_Chi_Minh"),
]


def _conn(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=10)


def _rows(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with _conn(url) as conn:
        cur = conn.execute(sql, params or None)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description is not None else []


def _fresh(url: str) -> None:
    if migrate.current(url) is not None:
        migrate.downgrade(url, "base")
    migrate.upgrade(url, timescale="on", retention_days=365)


@pytest.fixture
def ts_url(timescale_url: str) -> Iterator[str]:
    """The TimescaleDB server migrated afresh, left empty and migrated afterwards."""
    _fresh(timescale_url)
    sync(timescale_url)
    try:
        yield timescale_url
    finally:
        _fresh(timescale_url)


@pytest.fixture
async def ts_engine(ts_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(ts_url, poolclass=NullPool)  # the server takes one connection at once
    yield engine
    await engine.dispose()


def _items(source: str, times: list[datetime], received_at: datetime) -> list[Item]:
    """Gateway batches of an hour of readings each, two metrics per reading."""
    items = []
    for i in range(0, len(times), 12):
        body = [
            {
                "ts": int(t.timestamp() * 1000),
                "values": {"water_level": 1 + (t.minute % 17) / 10, "salinity": t.hour / 10},
            }
            for t in times[i : i + 12]
        ]
        items.append(
            build_item(
                f"ioc/v1/water/{source}/telemetry",
                orjson.dumps(body),
                received_at=received_at,
                rules=RULES,
                max_payload_bytes=1 << 20,
            )
        )
    return items


def _write(url: str, items: list[Item], hooks: list[BatchHook]) -> None:
    # one connection at a time on this server: the writer's is closed before the test reads
    writer = Writer(url, hooks=hooks)
    writer.start()
    done: list[Item] = []
    try:
        for item in items:
            assert not item.rejects, item.rejects
            item.done = done.append
            writer.submit(item)
        wait_until(lambda: len(done) == len(items), what="the commit")
    finally:
        writer.stop()


def _every(start: datetime, end: datetime) -> list[datetime]:
    out = []
    t = start
    while t < end:
        out.append(t)
        t += STEP
    return out


def _run_policies(url: str) -> None:
    """Run each refresh policy once, finest first, as the scheduler of a native server."""
    jobs = dict(
        _rows(
            url,
            "SELECT ca.view_name, j.job_id FROM timescaledb_information.jobs j "
            "JOIN timescaledb_information.continuous_aggregates ca "
            "ON j.hypertable_name IN (ca.view_name, ca.materialization_hypertable_name) "
            "WHERE j.proc_name = 'policy_refresh_continuous_aggregate'",
        )
    )
    assert sorted(jobs) == sorted(view for view, _ in VIEWS)
    with _conn(url) as conn:
        for view, _ in VIEWS:
            conn.execute("CALL run_job(%s)", (jobs[view],))


def _series(url: str, source: str) -> list[int]:
    return [
        int(r[0])  # type: ignore[call-overload]
        for r in _rows(url, "SELECT id FROM series WHERE source_id = %s ORDER BY id", source)
    ]


Cells = dict[tuple[int, datetime], tuple[int, float]]


def _view_vs_raw(url: str, view: str, width: str, ids: list[int]) -> tuple[Cells, Cells]:
    """(count, sum) per series and bucket, read from the aggregate and from raw rows."""
    from_view = _rows(
        url,
        f"SELECT series_id, bucket, count, sum FROM {view} WHERE series_id = ANY(%s)",
        ids,
    )
    from_raw = _rows(
        url,
        "SELECT series_id, time_bucket(%s::interval, ts), count(*), sum(value) FROM reading "
        "WHERE series_id = ANY(%s) GROUP BY 1, 2",
        width,
        ids,
    )
    return _cells(from_view), _cells(from_raw)


def _cells(rows: list[tuple[object, ...]]) -> Cells:
    return {(int(r[0]), r[1]): (int(r[2]), float(r[3])) for r in rows}  # type: ignore[arg-type, call-overload, misc]


def _assert_same_cells(got: Cells, want: Cells, view: str) -> None:
    assert got.keys() == want.keys(), view
    for key, (count, total) in want.items():
        assert got[key][0] == count, (view, key)
        assert got[key][1] == pytest.approx(total, rel=1e-9), (view, key)


async def _answers(
    engine: AsyncEngine,
    question: tuple[str, str, str],
    ids: list[int],
    span: tuple[datetime, datetime],
    storage: Storage | None = None,
) -> dict[tuple[int, datetime], object]:
    bucket, fn, tz = question
    async with engine.connect() as conn:
        points = await aggregate(
            conn,
            series_ids=ids,
            start=span[0],
            end=span[1],
            bucket=bucket,
            fn=fn,
            tz=tz,
            storage=storage,
        )
    return {(p.series_id, p.bucket): p.value for p in points}


async def _assert_answers_match_raw(
    engine: AsyncEngine, ids: list[int], span: tuple[datetime, datetime]
) -> None:
    async with engine.connect() as conn:
        storage = await detect_storage(conn)
    assert storage.timescale and storage.pending
    for question in QUESTIONS:
        bucket, _, tz = question
        # the question is one the aggregates serve (not raw rows for other reasons)
        relation, _ = choose_relation(Bucket.parse(bucket), zone(tz), *span, storage)
        assert relation.startswith("reading_"), question
        got = await _answers(engine, question, ids, span)
        raw = await _answers(engine, question, ids, span, storage=Storage())
        assert got.keys() == raw.keys(), question
        for key, value in raw.items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (question, key)


async def test_a_30_hour_backfill_reaches_the_answers_and_then_the_aggregates(
    ts_url: str, ts_engine: AsyncEngine
) -> None:
    now = floor_to(datetime.now(UTC), timedelta(minutes=1))
    since = now - timedelta(days=5)
    gone, back = now - OUTAGE[0], now - OUTAGE[1]
    meter_gone, meter_back = now - METER_GAP[0], now - METER_GAP[1]
    # on time: a steady source all along; the gateway and the meter outside their gaps
    _write(ts_url, _items("late-steady", _every(since, now), now), hooks=[])
    _write(ts_url, _items("late-gw", _every(since, gone) + _every(back, now), now), hooks=[])
    meter = _every(since, meter_gone) + _every(meter_back, now)
    _write(ts_url, _items("late-meter", meter, now), hooks=[])
    # what the policies would have materialised had they run all along, then one run of each
    with _conn(ts_url) as conn:
        for view, width in (("reading_1m", "1m"), ("reading_1h", "1h"), ("reading_1d", "1d")):
            upto = floor_to(now - Bucket.parse(width).width, Bucket.parse(width).width)
            conn.execute(
                f"CALL refresh_continuous_aggregate('{view}', NULL, %s::timestamptz)", (upto,)
            )
    _run_policies(ts_url)
    ids = (
        _series(ts_url, "late-gw") + _series(ts_url, "late-meter") + _series(ts_url, "late-steady")
    )
    span = (since, now + timedelta(minutes=1))
    await _assert_answers_match_raw(ts_engine, ids, span)

    # yesterday's chunk (most of the outage) and older ones are compressed before the
    # backfill lands in them
    assert _rows(
        ts_url,
        "SELECT compress_chunk(c) FROM show_chunks('reading', older_than => %s::timestamptz) c",
        floor_to(now, timedelta(days=1)),
    )
    for t in (gone, meter_gone):
        assert _rows(
            ts_url,
            "SELECT is_compressed FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'reading' AND range_start <= %s AND range_end > %s",
            t,
            t,
        ) == [(True,)]
    hook = LateRanges()
    backfill = _every(gone, back)
    _write(
        ts_url,
        _items("late-gw", backfill, now)
        + _items("late-meter", _every(meter_gone, meter_back), now),
        hooks=[hook],
    )
    assert hook.failures == 0
    assert hook.recorded >= 1
    pending = _rows(ts_url, "SELECT lo, hi FROM cagg_refresh_pending")
    for t in [*backfill, *_every(meter_gone, meter_back)]:
        assert any(lo <= t < hi for lo, hi in pending), t  # type: ignore[operator]

    _run_policies(ts_url)
    late = _series(ts_url, "late-gw") + _series(ts_url, "late-meter")
    minutes, raw = _view_vs_raw(ts_url, "reading_1m", "1 minute", late)
    # the policies alone leave most of the backfill out of the aggregates
    assert sum(c for c, _ in minutes.values()) < sum(c for c, _ in raw.values())

    # (a) right away: buckets overlapping a pending range are answered from raw rows
    await _assert_answers_match_raw(ts_engine, ids, span)

    # (b) the refresh job puts the backfill into every aggregate and empties the list
    report = CaggRefresher(ts_url).refresh_now()
    assert report is not None and report.ran and report.rows >= 1
    assert {view for view, _, _ in report.windows} == {view for view, _ in VIEWS}
    assert _rows(ts_url, "SELECT count(*) FROM cagg_refresh_pending")[0][0] == 0
    for view, width in VIEWS:
        _assert_same_cells(*_view_vs_raw(ts_url, view, width, ids), view)
    await _assert_answers_match_raw(ts_engine, ids, span)

    # the job left the policies' ground alone: a reading of this minute shows in every
    # width at once (a refresh up to tomorrow would have hidden today's new readings)
    fresh_at = datetime.now(UTC) - timedelta(seconds=20)
    _write(ts_url, _items("late-gw", [fresh_at], fresh_at), hooks=[hook])
    _run_policies(ts_url)
    for view, width in VIEWS:
        _assert_same_cells(*_view_vs_raw(ts_url, view, width, ids), view)
    assert _rows(ts_url, "SELECT count(*) FROM cagg_refresh_pending")[0][0] == 0


def test_on_time_readings_record_no_range(ts_url: str) -> None:
    hook = LateRanges()
    now = datetime.now(UTC)
    _write(ts_url, _items("late-live", _every(now - timedelta(minutes=50), now), now), [hook])
    assert hook.failures == 0
    assert hook.recorded == 0
    assert _rows(ts_url, "SELECT count(*) FROM cagg_refresh_pending")[0][0] == 0


def test_the_horizon_comes_from_the_policies(ts_url: str) -> None:
    with _conn(ts_url) as conn:
        tracking = detect(conn)
    # readings younger than reading_1h's end offset are read in real time above its watermark
    assert tracking is not None
    assert tracking.horizon == timedelta(hours=1) - SAFETY_MARGIN


def test_nothing_materialised_yet_means_nothing_to_refresh(ts_url: str) -> None:
    with _conn(ts_url) as conn:
        conn.execute(
            "INSERT INTO cagg_refresh_pending (lo, hi) "
            "VALUES (now() - interval '2 days', now() - interval '1 day')"
        )
    # every aggregate reads its source in real time: the range is done with at once
    assert CaggRefresher(ts_url).refresh_now() == RefreshReport(rows=1)
    assert _rows(ts_url, "SELECT count(*) FROM cagg_refresh_pending")[0][0] == 0
