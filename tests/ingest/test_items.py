"""Validation against the profile: what is kept, what is refused and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from ingest import reasons
from ingest.items import Item, build_item
from ingest.validation import Limits, Rules
from ioc.catalogue import load_catalogue, load_profile

NOW = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
RULES = Rules.from_profile(load_profile("mekong"))
LIMIT = 256 * 1024


def _item(topic: str, doc: object, rules: Rules = RULES) -> Item:
    return build_item(
        topic, orjson.dumps(doc), received_at=NOW, rules=rules, max_payload_bytes=LIMIT
    )


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def test_good_readings_are_kept_and_bad_ones_become_rejects_with_the_whole_payload() -> None:
    doc = {
        "ts": _ms(NOW),
        "values": {"salinity": 2.5, "water_level": 99.0, "bogus": 1, "rainfall_24h": "x"},
    }
    item = _item("ioc/v1/water/tram-1/telemetry", doc)
    assert [(r.metric, r.value) for r in item.readings] == [("salinity", 2.5)]
    rejects = {r.reason: r for r in item.rejects}
    assert set(rejects) == {reasons.OUT_OF_RANGE, reasons.UNKNOWN_METRIC, reasons.NOT_NUMERIC}
    assert all(r.payload == orjson.dumps(doc) for r in rejects.values())
    assert "water_level" in rejects[reasons.OUT_OF_RANGE].detail
    assert rejects[reasons.UNKNOWN_METRIC].source_id == "tram-1"


@pytest.mark.parametrize(
    ("offset", "reason"),
    [(timedelta(minutes=6), reasons.FUTURE_TIME), (timedelta(days=-400), reasons.TOO_OLD)],
)
def test_time_window(offset: timedelta, reason: str) -> None:
    item = _item("ioc/v1/water/t/telemetry", {"ts": _ms(NOW + offset), "values": {"salinity": 1}})
    assert item.readings == []
    assert [r.reason for r in item.rejects] == [reason]


def test_four_minutes_ahead_is_tolerated() -> None:
    item = _item(
        "ioc/v1/water/t/telemetry", {"ts": _ms(NOW + timedelta(minutes=4)), "values": {"aqi": 1}}
    )
    assert item.rejects == [] or item.rejects[0].reason != reasons.FUTURE_TIME


def test_unknown_sector_rejects_the_message() -> None:
    item = _item("ioc/v1/nowhere/t/telemetry", {"values": {"salinity": 1}})
    assert [r.reason for r in item.rejects] == [reasons.UNKNOWN_SECTOR]
    assert item.reject_counts == {reasons.UNKNOWN_SECTOR: 1}


def test_uncatalogued_metrics_can_be_accepted_and_marked() -> None:
    rules = Rules.from_profile(load_profile("mekong"), unknown_metrics="accept")
    item = _item("ioc/v1/water/t/telemetry", {"values": {"turbidity": 12.0}}, rules)
    assert [(r.metric, r.catalogued) for r in item.readings] == [("turbidity", False)]
    assert item.rejects == []


def test_bad_topic_and_oversized_payload_never_raise() -> None:
    item = build_item("sensors/x", b"{}", received_at=NOW, rules=RULES, max_payload_bytes=LIMIT)
    assert [r.reason for r in item.rejects] == [reasons.BAD_TOPIC]
    item = build_item(
        "ioc/v1/water/t/telemetry", b"x" * 300, received_at=NOW, rules=RULES, max_payload_bytes=200
    )
    assert [r.reason for r in item.rejects] == [reasons.TOO_LARGE]
    assert item.rejects[0].payload == b"x" * 300


# --- metric names the database cannot store ------------------------------------------------

ACCEPT = Rules.from_profile(load_profile("mekong"), unknown_metrics="accept")
CATALOGUE = Rules(
    sectors={
        s.id: {m.id: Limits(m.min, m.max, m.unit) for m in s.metrics}
        for s in load_catalogue().values()
    }
)


@pytest.mark.parametrize(
    ("name", "why"),
    [("a\x00b", "control"), ("tab\there", "control"), ("\x7f", "control"),
     ("rtl\u202eoverride", "control"), ("zero\u200bwidth", "control"),
     ("x" * 65, "65 characters"), ("é" * 200, "200 characters"), ("", "empty")],
)  # fmt: skip
def test_metric_names_that_cannot_be_stored_are_unknown_even_when_accepting(
    name: str, why: str
) -> None:
    item = _item("ioc/v1/water/t/telemetry", {"values": {name: 1.0, "turbidity": 2.0}}, ACCEPT)
    assert [r.metric for r in item.readings] == ["turbidity"]
    assert [r.reason for r in item.rejects] == [reasons.UNKNOWN_METRIC]
    detail = item.rejects[0].detail
    assert why in detail and "\x00" not in detail and len(detail) < 300


@pytest.mark.parametrize("name", ["x" * 64, "độ_mặn", "ملوحة", "e\u0301", "a b", "urn:dev:x"])
def test_odd_but_storable_metric_names_are_accepted_when_accepting(name: str) -> None:
    item = _item("ioc/v1/water/t/telemetry", {"values": {name: 1.0}}, ACCEPT)
    assert [(r.metric, r.catalogued) for r in item.readings] == [(name, False)]


def test_an_unknown_metric_detail_shows_an_odd_name_escaped() -> None:
    item = _item("ioc/v1/water/t/telemetry", {"values": {"a\x00b": 1.0}})
    assert [r.reason for r in item.rejects] == [reasons.UNKNOWN_METRIC]
    assert "'a\\x00b'" in item.rejects[0].detail


# --- duplicates ----------------------------------------------------------------------------


def test_a_second_senml_record_with_the_same_name_and_time_is_a_duplicate() -> None:
    t = NOW.timestamp() - 60
    doc = [
        {"bn": "urn:dev:t1:", "n": "salinity", "v": 1.5, "t": t},
        {"n": "salinity", "v": 1.7, "t": t},
        {"n": "salinity", "v": 1.9, "t": t + 1},
        {"n": "water_level", "v": 0.5, "t": t},
    ]
    item = _item("ioc/v1/water/t/senml", doc)
    assert [(r.metric, r.value) for r in item.readings] == [
        ("salinity", 1.5),
        ("salinity", 1.9),
        ("water_level", 0.5),
    ]
    assert [r.reason for r in item.rejects] == [reasons.DUPLICATE]
    assert item.reject_counts == {reasons.DUPLICATE: 1}
    detail = item.rejects[0].detail
    assert "salinity" in detail and "2026-11-23T02:59:00+00:00" in detail


def test_senml_records_without_time_at_the_same_name_are_duplicates() -> None:
    item = _item("ioc/v1/water/t/senml", [{"n": "aqi", "v": 1}, {"n": "aqi", "v": 2}], ACCEPT)
    assert [(r.value, r.relative) for r in item.readings] == [(1.0, True)]
    assert [r.reason for r in item.rejects] == [reasons.DUPLICATE]


def test_a_gateway_batch_with_the_same_metric_and_time_twice_has_a_duplicate() -> None:
    doc = [
        {"ts": _ms(NOW), "values": {"salinity": 1.0, "water_level": 0.5}},
        {"ts": "2026-11-23T10:00:00+07:00", "values": {"salinity": 2.0}},
        {"ts": _ms(NOW) - 1, "values": {"salinity": 3.0}},
    ]
    item = _item("ioc/v1/water/t/telemetry", doc)
    assert [(r.metric, r.value) for r in item.readings] == [
        ("salinity", 1.0),
        ("water_level", 0.5),
        ("salinity", 3.0),
    ]
    assert [r.reason for r in item.rejects] == [reasons.DUPLICATE]


def test_a_rejected_first_value_leaves_the_second_to_be_kept() -> None:
    doc = [{"values": {"salinity": 99.0}}, {"values": {"salinity": 2.0}}]
    item = _item("ioc/v1/water/t/telemetry", doc)
    assert [r.value for r in item.readings] == [2.0]
    assert [r.reason for r in item.rejects] == [reasons.OUT_OF_RANGE]


# --- units ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "unit", "value", "stored"),
    [("salinity", "‰", 1.5, 1.5), ("salinity", "g/L", 1.5, 1.5), ("salinity", "g/l", 1.5, 1.5),
     ("salinity", "ppt", 1.5, 1.5), ("salinity", "mg/L", 1500, 1.5), ("salinity", "/", 0.0015, 1.5),
     ("water_level", "cm", 150, 1.5), ("water_level", "mm", 1500, 1.5),
     ("rainfall_24h", "m", 0.025, 25.0), ("rainfall_24h", "cm", 2.5, 25.0),
     ("supply_chloride", "mg/l", 250, 250.0), ("supply_chloride", "g/L", 0.25, 250.0)],
)  # fmt: skip
def test_senml_units_are_converted_to_the_catalogue_unit(
    metric: str, unit: str, value: float, stored: float
) -> None:
    item = _item("ioc/v1/water/t/senml", [{"n": metric, "u": unit, "v": value}])
    assert item.rejects == []
    assert [r.metric for r in item.readings] == [metric]
    assert item.readings[0].value == pytest.approx(stored)


@pytest.mark.parametrize(
    ("metric", "unit", "value", "stored"),
    [("pm25", "ug/m3", 35, 35.0), ("pm25", "µg/m3", 35, 35.0), ("pm25", "μg/m³", 35, 35.0),
     ("pm25", "mg/m3", 0.035, 35.0), ("noise", "dB(A)", 60, 60.0)],
)  # fmt: skip
def test_air_units_are_converted(metric: str, unit: str, value: float, stored: float) -> None:
    doc = [{"n": metric, "u": unit, "v": value}]
    item = _item("ioc/v1/environment/t/senml", doc, CATALOGUE)
    assert item.rejects == []
    assert item.readings[0].value == pytest.approx(stored)


def test_speed_and_percent_units_are_converted() -> None:
    item = _item("ioc/v1/traffic/t/senml", [{"n": "mean_speed", "u": "m/s", "v": 10}])
    assert item.readings[0].value == pytest.approx(36.0)
    doc = [{"n": "portal_uptime_pct", "u": "/", "v": 0.995}]
    item = _item("ioc/v1/infosec/t/senml", doc, CATALOGUE)
    assert item.readings[0].value == pytest.approx(99.5)


def test_the_base_unit_applies_to_records_without_their_own() -> None:
    doc = [
        {"bu": "cm", "n": "water_level", "v": 120, "t": -60},
        {"n": "water_level", "v": 130},
        {"n": "rainfall_24h", "u": "mm", "v": 4},
    ]
    item = _item("ioc/v1/water/t/senml", doc)
    assert item.rejects == []
    assert [r.value for r in item.readings] == pytest.approx([1.2, 1.3, 4.0])


@pytest.mark.parametrize(
    ("metric", "unit"),
    [("salinity", "furlong"), ("salinity", "%"), ("water_level", "‰"), ("salinity", "G/L"),
     ("water_level", "\x00"), ("salinity", "x" * 500)],
)  # fmt: skip
def test_a_unit_that_is_not_the_catalogue_unit_is_a_unit_mismatch(metric: str, unit: str) -> None:
    item = _item("ioc/v1/water/t/senml", [{"n": metric, "u": unit, "v": 1}, {"n": "aqi", "v": 1}])
    assert item.readings == []
    by_reason = {r.reason: r.detail for r in item.rejects}
    assert set(by_reason) == {reasons.UNIT_MISMATCH, reasons.UNKNOWN_METRIC}
    detail = by_reason[reasons.UNIT_MISMATCH]
    assert metric in detail and "\x00" not in detail and len(detail) < 400


def test_a_converted_value_is_checked_against_the_range_in_the_catalogue_unit() -> None:
    doc = [
        {"n": "salinity", "u": "mg/L", "v": 50_000},
        {"n": "salinity", "u": "g/L", "v": 1e308, "t": 1},
    ]
    item = _item("ioc/v1/water/t/senml", doc)
    assert item.readings == []
    assert [r.reason for r in item.rejects] == [reasons.OUT_OF_RANGE]
    assert "50" in item.rejects[0].detail


def test_a_unit_on_an_uncatalogued_metric_is_stored_unconverted() -> None:
    item = _item("ioc/v1/water/t/senml", [{"n": "turbidity", "u": "NTU", "v": 12}], ACCEPT)
    assert [(r.metric, r.value, r.catalogued) for r in item.readings] == [
        ("turbidity", 12.0, False)
    ]
    item = _item("ioc/v1/water/t/senml", [{"n": "depth", "u": "cm", "v": 12}], ACCEPT)
    assert [r.value for r in item.readings] == [12.0]


# --- times from the receipt ----------------------------------------------------------------


def test_readings_timed_from_the_receipt_are_marked_relative() -> None:
    item = _item(
        "ioc/v1/water/t/telemetry",
        [{"values": {"salinity": 1}}, {"ts": _ms(NOW) - 1000, "values": {"salinity": 2}}],
    )
    assert [(r.value, r.relative, r.ts == NOW) for r in item.readings] == [
        (1.0, True, True),
        (2.0, False, False),
    ]
    doc = [
        {"n": "aqi", "v": 1, "t": -60},
        {"n": "aqi", "v": 2, "t": NOW.timestamp()},
        {"n": "aqi", "v": 3, "t": -30},
    ]
    item = _item("ioc/v1/environment/t/senml", doc)
    assert [(r.value, r.relative) for r in item.readings] == [
        (1.0, True),
        (2.0, False),
        (3.0, True),
    ]
    item = _item("ioc/v1/water/t/senml", [{"n": "salinity", "u": "g/L", "v": 1.5}])
    assert item.readings[0].relative
