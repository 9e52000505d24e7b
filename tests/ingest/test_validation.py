"""check_samples alone: units, duplicates, names and the catalogue unit in the rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ingest import reasons
from ingest.decoders import MAX_METRIC_CHARS, Sample
from ingest.validation import Limits, Rules, check_samples
from ioc.catalogue import load_profile

NOW = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
PROFILE = load_profile("mekong")
ACCEPT = Rules.from_profile(PROFILE, unknown_metrics="accept")


def test_rules_carry_the_catalogue_unit() -> None:
    water = Rules.from_profile(PROFILE).sectors["water"]
    assert (water["salinity"].unit, water["water_level"].unit) == ("‰", "m")
    assert water["salinity"] == Limits(0.0, 40.0, "‰")


def test_limits_without_a_unit_take_any_unit_unconverted() -> None:
    rules = Rules(sectors={"lab": {"x": Limits(0, 10)}})
    kept, problems = check_samples(
        "lab", [Sample("x", NOW, 5.0, unit="furlong")], now=NOW, rules=rules
    )
    assert [(c.metric, c.value) for c in kept] == [("x", 5.0)]
    assert problems == []


@pytest.mark.parametrize("name", ["\ud800", "a\udfffb", "\x00", "x" * (MAX_METRIC_CHARS + 1)])
def test_names_that_cannot_be_stored_are_refused_however_they_came(name: str) -> None:
    kept, problems = check_samples("water", [Sample(name, NOW, 1.0)], now=NOW, rules=ACCEPT)
    assert kept == []
    assert [p.reason for p in problems] == [reasons.UNKNOWN_METRIC]
    problems[0].detail.encode()  # no lone surrogate left in the detail


def test_the_longest_name_stored() -> None:
    name = "x" * MAX_METRIC_CHARS
    kept, _ = check_samples("water", [Sample(name, NOW, 1.0)], now=NOW, rules=ACCEPT)
    assert [c.metric for c in kept] == [name]


def test_a_conversion_that_overflows_is_not_finite() -> None:
    kept, problems = check_samples(
        "water", [Sample("water_level", NOW, 1e306, unit="km")], now=NOW, rules=ACCEPT
    )
    assert kept == []
    assert [p.reason for p in problems] == [reasons.NOT_FINITE]


def test_duplicates_compare_the_instant_not_the_offset() -> None:
    at = NOW - timedelta(minutes=1)
    same = at.astimezone(datetime.now(UTC).astimezone().tzinfo)
    samples = [Sample("salinity", at, 1.0), Sample("salinity", same, 2.0, unit="g/L")]
    kept, problems = check_samples("water", samples, now=NOW, rules=ACCEPT)
    assert [c.value for c in kept] == [1.0]
    assert [p.reason for p in problems] == [reasons.DUPLICATE]


def test_the_relative_flag_is_kept() -> None:
    kept, _ = check_samples(
        "water", [Sample("salinity", NOW, 1.0, relative=True, unit="g/L")], now=NOW, rules=ACCEPT
    )
    assert kept[0].relative
