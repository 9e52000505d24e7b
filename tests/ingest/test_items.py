"""Validation against the profile: what is kept, what is refused and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from ingest import reasons
from ingest.items import Item, build_item
from ingest.validation import Rules
from ioc.catalogue import load_profile

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
