"""Telemetry over HTTP: aggregates checked against values computed by hand, gap fill, the
caps, raw readings in keyset pages, and HTTP ingest (scope, rejects, alerts, audit)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from api.routers.telemetry import carry_forward, reduce
from ioc.timeseries import Agg
from tests.support.api import Api
from tests.support.ingest import query, unique

AGG = "/api/v1/telemetry/aggregate"
RAW = "/api/v1/telemetry/raw"
POST = "/api/v1/telemetry"
LOCAL = "+07:00"
# 2026-03-01 00:00 in Asia/Ho_Chi_Minh
T0 = datetime(2026, 2, 28, 17, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    """T0 plus minutes."""
    return T0 + timedelta(minutes=minutes)


def store(
    db_url: str,
    source: str,
    readings: Sequence[tuple[datetime, float]],
    *,
    metric: str = "salinity",
    sector: str = "water",
    name: str | None = None,
    district: str | None = None,
) -> int:
    """A source (made if new), its series of `metric` and these readings; the series id."""
    query(
        db_url,
        "INSERT INTO source (id, sector_id, name, district) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (id) DO NOTHING",
        (source, sector, name, district),
    )
    rows = query(
        db_url,
        "INSERT INTO series (source_id, metric) VALUES (%s, %s) "
        "ON CONFLICT (source_id, metric) DO UPDATE SET metric = excluded.metric RETURNING id",
        (source, metric),
    )
    series_id = int(rows[0][0])
    if readings:
        query(
            db_url,
            "INSERT INTO reading (ts, series_id, value) "
            "SELECT unnest(%s::timestamptz[]), %s, unnest(%s::float8[])",
            ([t for t, _ in readings], series_id, [v for _, v in readings]),
        )
    return series_id


def two_stations(db_url: str) -> None:
    """A: 1.0 at 00:10, 3.0 at 00:40, 5.0 at 01:20; B: 10.0 at 00:30, 20.0 at 02:30 (local)."""
    store(
        db_url,
        "tram-a",
        [(at(10), 1.0), (at(40), 3.0), (at(80), 5.0)],
        name="Trạm Đại Ngãi",
        district="coastal-district",
    )
    store(
        db_url,
        "tram-b",
        [(at(30), 10.0), (at(150), 20.0)],
        name="Trạm Long Phú",
        district="estuary-district",
    )


async def ask(api: Api, role: str = "analyst", **params: Any) -> Any:
    params = {"sector": "water", "metric": "salinity", "bucket": "1h", **params}
    for key in ("from", "to"):
        if isinstance(params.get(key), datetime):
            params[key] = params[key].isoformat()
    return await api.http.get(AGG, params=params, headers=api.as_(role))


async def lines(api: Api, **params: Any) -> dict[str | None, list[tuple[str, Any]]]:
    answer = await ask(api, **{"from": at(0), "to": at(180), **params})
    assert answer.status_code == 200, answer.text
    return {
        s["source_id"]: [(p["t"], p["v"]) for p in s["points"]] for s in answer.json()["series"]
    }


def hour(h: int) -> str:
    return f"2026-03-01T{h:02d}:00:00{LOCAL}"


async def test_each_function_per_source_matches_the_values_by_hand(api: Api) -> None:
    two_stations(api.db_url)
    want = {
        "avg": {
            "tram-a": [(hour(0), 2.0), (hour(1), 5.0)],
            "tram-b": [(hour(0), 10.0), (hour(2), 20.0)],
        },
        "min": {
            "tram-a": [(hour(0), 1.0), (hour(1), 5.0)],
            "tram-b": [(hour(0), 10.0), (hour(2), 20.0)],
        },
        "max": {
            "tram-a": [(hour(0), 3.0), (hour(1), 5.0)],
            "tram-b": [(hour(0), 10.0), (hour(2), 20.0)],
        },
        "sum": {
            "tram-a": [(hour(0), 4.0), (hour(1), 5.0)],
            "tram-b": [(hour(0), 10.0), (hour(2), 20.0)],
        },
        "count": {"tram-a": [(hour(0), 2), (hour(1), 1)], "tram-b": [(hour(0), 1), (hour(2), 1)]},
        "last": {
            "tram-a": [(hour(0), 3.0), (hour(1), 5.0)],
            "tram-b": [(hour(0), 10.0), (hour(2), 20.0)],
        },
    }
    for fn, expected in want.items():
        assert await lines(api, fn=fn) == expected, fn


async def test_per_all_combines_the_sources_bucket_by_bucket(api: Api) -> None:
    two_stations(api.db_url)
    want = {
        "avg": [(hour(0), 6.0), (hour(1), 5.0), (hour(2), 20.0)],  # mean of 2.0 and 10.0
        "min": [(hour(0), 1.0), (hour(1), 5.0), (hour(2), 20.0)],
        "max": [(hour(0), 10.0), (hour(1), 5.0), (hour(2), 20.0)],
        "sum": [(hour(0), 14.0), (hour(1), 5.0), (hour(2), 20.0)],
        "count": [(hour(0), 3), (hour(1), 1), (hour(2), 1)],
        "last": [(hour(0), 6.5), (hour(1), 5.0), (hour(2), 20.0)],  # mean of 3.0 and 10.0
    }
    for fn, expected in want.items():
        assert await lines(api, fn=fn, per="all") == {None: expected}, fn


async def test_the_answer_names_the_question_and_widens_the_range(api: Api) -> None:
    two_stations(api.db_url)
    answer = await ask(api, **{"from": at(15), "to": at(165), "district": "coastal-district"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert {k: body[k] for k in ("sector", "metric", "unit", "bucket", "fn", "tz")} == {
        "sector": "water",
        "metric": "salinity",
        "unit": "‰",
        "bucket": "1h",
        "fn": "avg",
        "tz": "Asia/Ho_Chi_Minh",
    }
    assert (body["from"], body["to"]) == (hour(0), hour(3))
    assert body["sources"] == [{"source_id": "tram-a", "name": "Trạm Đại Ngãi"}]
    assert [s["name"] for s in body["series"]] == ["Trạm Đại Ngãi"]
    one = await ask(api, **{"from": at(0), "to": at(180), "source": "tram-b"})
    assert [s["source_id"] for s in one.json()["series"]] == ["tram-b"]
    nobody = await ask(api, **{"from": at(0), "to": at(180), "source": "nowhere"})
    assert nobody.status_code == 200
    assert nobody.json()["series"] == []


async def test_gap_fill_none_null_and_previous(api: Api) -> None:
    two_stations(api.db_url)
    window = {"from": at(-60), "to": at(240)}  # 23:00 the day before .. 04:00
    before = "2026-02-28T23:00:00+07:00"
    a = await lines(api, **window, gap_fill="none", source="tram-a")
    assert a == {"tram-a": [(hour(0), 2.0), (hour(1), 5.0)]}
    a = await lines(api, **window, gap_fill="null", source="tram-a")
    assert a == {
        "tram-a": [(before, None), (hour(0), 2.0), (hour(1), 5.0), (hour(2), None), (hour(3), None)]
    }
    a = await lines(api, **window, gap_fill="previous", source="tram-a")
    assert a == {
        "tram-a": [(before, None), (hour(0), 2.0), (hour(1), 5.0), (hour(2), 5.0), (hour(3), 5.0)]
    }
    counts = await lines(api, **window, gap_fill="previous", fn="count", source="tram-a")
    assert counts == {
        "tram-a": [(before, 0), (hour(0), 2), (hour(1), 1), (hour(2), 0), (hour(3), 0)]
    }
    # combined: each source carries its own value forward before they are summed
    total = await lines(api, **window, gap_fill="previous", fn="sum", per="all")
    assert total == {
        None: [(before, None), (hour(0), 14.0), (hour(1), 15.0), (hour(2), 25.0), (hour(3), 25.0)]
    }
    total = await lines(api, **window, gap_fill="null", fn="sum", per="all")
    assert total == {
        None: [(before, None), (hour(0), 14.0), (hour(1), 5.0), (hour(2), 20.0), (hour(3), None)]
    }
    # no source at all: every bucket still there when filled
    empty = await lines(api, **window, gap_fill="null", per="all", district="inland-district")
    assert [v for _, v in empty[None]] == [None] * 5


async def test_day_buckets_follow_the_profile_time_zone(api: Api) -> None:
    # 23:30 on 1 March and 00:30 on 2 March, local time: two days, not one (as in UTC)
    store(api.db_url, "tram-a", [(at(23 * 60 + 30), 1.0), (at(24 * 60 + 30), 3.0)])
    answer = await ask(api, bucket="1d", fn="count", **{"from": at(0), "to": at(48 * 60)})
    assert answer.status_code == 200, answer.text
    points = answer.json()["series"][0]["points"]
    assert points == [
        {"t": "2026-03-01T00:00:00+07:00", "v": 1},
        {"t": "2026-03-02T00:00:00+07:00", "v": 1},
    ]


def _problem(answer: Any, status: int = 422) -> str:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    detail: str = answer.json()["detail"]
    return detail


async def test_questions_too_wide_or_malformed_are_422_saying_why(api: Api) -> None:
    month = {"from": at(0), "to": at(30 * 24 * 60)}
    assert "use a wider bucket" in _problem(await ask(api, bucket="1m", **month))
    assert "divide it evenly" in _problem(await ask(api, bucket="7m", **month))
    assert "query.bucket" in _problem(await ask(api, bucket="fortnight", **month))
    naive = await ask(api, **{"from": "2026-03-01T00:00:00", "to": at(60)})
    assert "query.from" in _problem(naive)
    assert "not a metric of sector 'water'" in _problem(await ask(api, metric="aqi", **month))
    assert "unknown sector" in _problem(await ask(api, sector="nowhere", **month))
    backwards = await ask(api, **{"from": at(60), "to": at(0)})
    assert "must be after from" in _problem(backwards)
    assert "query.fn" in _problem(await ask(api, fn="median", **month))
    assert "query.gap_fill" in _problem(await ask(api, gap_fill="zero", **month))
    far = await ask(api, **{"from": "0001-01-01T00:00:00+05:00", "to": at(0)})
    assert "1970" in _problem(far)


async def test_too_many_points_in_all_is_the_timeseries_cap(api: Api) -> None:
    # 30 series x 19,872 buckets of a minute is over the 500,000 points one question may cost
    query(
        api.db_url,
        "INSERT INTO source (id, sector_id) "
        "SELECT 'cap-' || g, 'water' FROM generate_series(1, 30) g",
    )
    query(
        api.db_url,
        "INSERT INTO series (source_id, metric) SELECT 'cap-' || g, 'salinity' "
        "FROM generate_series(1, 30) g",
    )
    detail = _problem(await ask(api, bucket="1m", **{"from": at(0), "to": at(19_872)}))
    assert "more than 500000" in detail
    assert "fewer series" in detail


async def test_agency_keys_read_their_own_sectors_only(api: Api) -> None:
    two_stations(api.db_url)
    agency = api.as_("agency", sectors=["water"])
    params = {"metric": "salinity", "from": at(0).isoformat(), "to": at(180).isoformat()}
    own = await api.http.get(AGG, params={"sector": "water", **params}, headers=agency)
    assert own.status_code == 200
    other = await api.http.get(
        AGG, params={"sector": "traffic", "metric": "flow", **params}, headers=agency
    )
    assert other.status_code == 403
    raw = await api.http.get(RAW, params={"sector": "traffic", **params}, headers=agency)
    assert raw.status_code == 403
    viewer = await api.http.get(
        RAW, params={"sector": "water", **params}, headers=api.as_("viewer")
    )
    assert viewer.status_code == 403  # panels yes, history no


async def test_a_repeated_question_is_answered_from_memory_for_a_moment(api: Api) -> None:
    two_stations(api.db_url)
    first = await lines(api, source="tram-a")
    store(api.db_url, "tram-a", [(at(170), 7.0)])
    assert await lines(api, source="tram-a") == first  # the same panel, polled again
    other = await lines(api, source="tram-a", fn="max")  # another question: computed now
    assert other["tram-a"][-1] == (hour(2), 7.0)


def test_how_values_are_carried_and_combined() -> None:
    assert carry_forward([None, 1.0, None, 2.0, None]) == [None, 1.0, 1.0, 2.0, 2.0]
    assert reduce([1.0, None, 3.0], Agg.AVG) == 2.0
    assert reduce([1.0, None, 3.0], Agg.LAST) == 2.0
    assert reduce([1.0, 3.0], Agg.MIN) == 1.0
    assert reduce([1.0, 3.0], Agg.MAX) == 3.0
    assert reduce([1.0, 3.0], Agg.SUM) == 4.0
    assert reduce([2, 0], Agg.COUNT) == 2
    assert reduce([None], Agg.COUNT) == 0
    assert reduce([None, None], Agg.AVG) is None


# --- raw readings --------------------------------------------------------------------------


async def test_raw_readings_come_in_keyset_pages_by_time_then_series(api: Api) -> None:
    a = store(api.db_url, "tram-a", [(at(m), float(m)) for m in (0, 5, 10, 15, 20)])
    b = store(api.db_url, "tram-b", [(at(m), 100.0 + m) for m in (5, 10, 12)])
    store(api.db_url, "tram-a", [(at(5), 9.5)], metric="water_level")
    params = {
        "sector": "water",
        "metric": "salinity",
        "from": at(0).isoformat(),
        "to": at(20).isoformat(),
        "limit": 3,
    }
    seen: list[tuple[str, str, float]] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await api.http.get(
            RAW,
            params={**params, **({"cursor": cursor} if cursor else {})},
            headers=api.as_("analyst"),
        )
        assert page.status_code == 200, page.text
        body = page.json()
        pages += 1
        seen += [(i["ts"], i["source_id"], i["value"]) for i in body["items"]]
        assert all(i["metric"] == "salinity" for i in body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert a < b  # at the same time, tram-a's reading comes first

    def t(minute: int) -> str:
        return f"2026-03-01T00:{minute:02d}:00{LOCAL}"

    assert seen == [
        (t(0), "tram-a", 0.0),
        (t(5), "tram-a", 5.0),
        (t(5), "tram-b", 105.0),
        (t(10), "tram-a", 10.0),
        (t(10), "tram-b", 110.0),
        (t(12), "tram-b", 112.0),
        (t(15), "tram-a", 15.0),
    ]
    assert pages == 3
    levels = await api.http.get(
        RAW,
        params={**params, "metric": "water_level", "source": "tram-a"},
        headers=api.as_("analyst"),
    )
    assert [(i["metric"], i["value"]) for i in levels.json()["items"]] == [("water_level", 9.5)]
    bad = await api.http.get(RAW, params={**params, "cursor": "bm9wZQ"}, headers=api.as_("analyst"))
    assert bad.status_code == 422


# --- HTTP ingest ---------------------------------------------------------------------------


def _now_local() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


async def post(
    api: Api,
    body: Any,
    *,
    role: str = "agency",
    content_type: str = "application/json",
    **params: str,
) -> Any:
    headers = api.as_(role, sectors=["water"] if role == "agency" else [])
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return await api.http.post(
        POST,
        params={"sector": "water", **params},
        content=content,
        headers={**headers, "Content-Type": content_type},
    )


async def test_an_agency_posts_readings_of_its_sector_and_they_are_stored_and_audited(
    api: Api,
) -> None:
    source = unique("tram")
    answer = await post(
        api, {"ts": _now_local(), "values": {"salinity": 2.5, "water_level": 1.1}}, source=source
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 2, "rejected": 0, "reasons": {}}
    stored = query(
        api.db_url,
        "SELECT metric, value FROM reading_named WHERE source_id = %s ORDER BY metric",
        (source,),
    )
    assert stored == [("salinity", 2.5), ("water_level", 1.1)]
    audit = query(
        api.db_url,
        "SELECT actor, target, detail->>'readings' FROM audit_log WHERE action = 'telemetry.post'",
    )
    assert len(audit) == 1
    actor, target, readings = audit[0]
    assert actor.startswith("key:") and target == f"source:{source}" and readings == "2"


async def test_an_agency_may_not_post_to_another_sector(api: Api) -> None:
    answer = await post(api, {"values": {"flow": 100}}, source=unique("cam"), sector="traffic")
    assert answer.status_code == 403
    assert "traffic" in answer.json()["detail"]


async def test_bad_values_are_counted_as_rejected_and_kept_like_mqtts(api: Api) -> None:
    source = unique("tram")
    body = {"values": {"salinity": "cao", "water_level": 1.2, "aqi": 40, "rainfall_24h": 5000}}
    answer = await post(api, body, source=source)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "accepted": 1,
        "rejected": 3,
        "reasons": {"not_numeric": 1, "unknown_metric": 1, "out_of_range": 1},
    }
    kept = query(
        api.db_url,
        "SELECT reason, topic FROM ingest_reject WHERE source_id = %s ORDER BY reason",
        (source,),
    )
    topic = f"ioc/v1/water/{source}/telemetry"
    assert kept == [("not_numeric", topic), ("out_of_range", topic), ("unknown_metric", topic)]


async def test_a_message_with_nothing_accepted_is_422_with_the_reasons(api: Api) -> None:
    source = unique("tram")
    answer = await post(api, {"values": {"salinity": -3}}, source=source)
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["type"] == "urn:ioc:problem:rejected"
    assert (body["accepted"], body["rejected"], body["reasons"]) == (0, 1, {"out_of_range": 1})
    malformed = await post(api, b"{not json", source=source)
    assert malformed.status_code == 422
    assert malformed.json()["reasons"] == {"malformed": 1}
    reasons = query(
        api.db_url, "SELECT reason FROM ingest_reject WHERE source_id = %s ORDER BY 1", (source,)
    )
    assert reasons == [("malformed",), ("out_of_range",)]
    bad_id = await post(api, {"values": {"salinity": 1}}, source="no spaces/here")
    assert bad_id.status_code == 422


async def test_a_batch_and_senml_are_taken_as_on_mqtt(api: Api) -> None:
    source = unique("tram")
    now = datetime.now(UTC).replace(microsecond=0)
    batch = [
        {"ts": (now - timedelta(minutes=10)).isoformat(), "values": {"salinity": 1.5}},
        {"ts": int((now - timedelta(minutes=5)).timestamp() * 1000), "values": {"salinity": 1.6}},
    ]
    answer = await post(api, batch, source=source)
    assert answer.json()["accepted"] == 2
    senml = [{"bn": f"{source}:", "n": "water_level", "u": "m", "v": 0.9}]
    answer = await post(api, senml, source=source, content_type="application/senml+json")
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1
    count = query(api.db_url, "SELECT count(*) FROM reading_named WHERE source_id = %s", (source,))
    assert count == [(3,)]


async def test_a_reading_that_breaches_a_seeded_rule_opens_an_alert(api: Api) -> None:
    source = unique("tram")
    # the mekong profile: rainfall_24h above 100 mm is a warning at once
    answer = await post(api, {"values": {"rainfall_24h": 150}}, source=source)
    assert answer.status_code == 200, answer.text
    alerts = query(
        api.db_url,
        "SELECT severity, status, metric FROM alert WHERE source_id = %s",
        (source,),
    )
    assert alerts == [("warning", "open", "rainfall_24h")]


async def test_a_source_of_another_sector_is_refused_as_wrong_sector(api: Api) -> None:
    source = unique("tram")
    assert (await post(api, {"values": {"salinity": 1}}, source=source)).status_code == 200
    moved = await post(api, {"values": {"flow": 10}}, role="admin", source=source, sector="traffic")
    assert moved.status_code == 422
    assert moved.json()["reasons"] == {"wrong_sector": 1}


@pytest.mark.parametrize("role", ["operator", "analyst", "viewer"])
async def test_roles_without_telemetry_write_may_not_post(api: Api, role: str) -> None:
    answer = await post(api, {"values": {"salinity": 1}}, role=role, source="tram-x")
    assert answer.status_code == 403
