"""Unit aliases and scales: what a device may send for each catalogue unit."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.units import accepted_units, convert
from ioc.catalogue import bundled_profile_names, load_catalogue, load_profile


def _catalogue_units() -> set[str]:
    units = {m.unit for s in load_catalogue().values() for m in s.metrics}
    for name in bundled_profile_names():
        units |= {m.unit for s in load_profile(name).sectors for m in s.metrics}
    return units


@pytest.mark.parametrize(
    ("value", "unit", "target", "expected"),
    [(1.5, "g/L", "‰", 1.5), (1.5, "g/l", "‰", 1.5), (1.5, "ppt", "‰", 1.5),
     (1500, "mg/L", "‰", 1.5), (0.0015, "/", "‰", 1.5), (1.5, "/1000", "‰", 1.5),
     (20.5, "Cel", "°C", 20.5), (300, "K", "°C", 26.85),
     (25, "mm", "m", 0.025), (2.5, "cm", "m", 0.025), (1.2, "km", "m", 1200),
     (0.025, "m", "mm", 25), (2.5, "cm", "mm", 25), (1200, "m", "km", 1.2),
     (55, "%RH", "%", 55), (0.55, "/", "%", 55), (55, "/100", "%", 55),
     (35, "ug/m3", "µg/m³", 35), (35, "μg/m³", "µg/m³", 35), (0.035, "mg/m3", "µg/m³", 35),
     (250, "mg/l", "mg/L", 250), (0.25, "g/L", "mg/L", 250), (10, "m/s", "km/h", 36),
     (90, "min", "h", 1.5), (5400, "s", "h", 1.5), (1.5, "min", "s", 90), (250, "ms", "s", 0.25),
     (60, "dB(A)", "dBA", 60), (2, "1/min", "vehicles/h", 120), (1, "1/s", "events/h", 3600)],
)  # fmt: skip
def test_conversions(value: float, unit: str, target: str, expected: float) -> None:
    assert convert(value, unit, target) == pytest.approx(expected, rel=1e-12)


def test_decimal_scales_are_exact_where_the_decimal_result_is() -> None:
    assert convert(25, "mm", "m") == 0.025
    assert convert(0.025, "m", "mm") == 25.0
    assert convert(150, "cm", "m") == 1.5
    assert convert(1500, "mg/L", "‰") == 1.5


@pytest.mark.parametrize(
    ("unit", "target"),
    [("%", "‰"), ("G/L", "‰"), ("m", "‰"), ("furlong", "m"), ("Cel", "%"), ("dB", "dBA"),
     ("cm", "count"), ("", "m"), ("\x00", "m"), ("m", "unheard-of")],
)  # fmt: skip
def test_units_that_are_not_accepted_give_none(unit: str, target: str) -> None:
    assert convert(1.0, unit, target) is None


@given(unit=st.text(max_size=20), value=st.floats(allow_nan=False))
def test_a_unit_converts_to_itself_unchanged(unit: str, value: float) -> None:
    assert convert(value, unit, unit) == value


def test_every_catalogue_unit_accepts_itself_first() -> None:
    for unit in _catalogue_units():
        accepted = accepted_units(unit)
        assert accepted[0] == unit
        assert len(set(accepted)) == len(accepted)


def test_every_accepted_unit_converts() -> None:
    for target in _catalogue_units() | {"°C"}:
        for unit in accepted_units(target):
            out = convert(12.5, unit, target)
            assert out is not None and math.isfinite(out), (unit, target)


def test_an_unknown_catalogue_unit_accepts_only_itself() -> None:
    assert accepted_units("NTU") == ("NTU",)


def test_scales_are_consistent_both_ways() -> None:
    for target in ("m", "mm", "km", "h", "s", "km/h", "%", "mg/L"):
        for unit in accepted_units(target):
            there = convert(7.0, unit, target)
            assert there is not None
            if target in accepted_units(unit):
                assert convert(there, target, unit) == pytest.approx(7.0, rel=1e-12)
