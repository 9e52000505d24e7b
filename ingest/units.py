"""Units a device may send for a catalogue unit, and the conversion to it (pure, no I/O).

A unit is accepted for a catalogue unit when it is the same unit under another name (`Cel`
for `°C`, `ug/m3` for `µg/m³`) or a fixed linear scale of it (`cm` for `m`, `m/s` for
`km/h`); temperatures also take an offset (`K`). Names are matched exactly, case included
(SenML units are case-sensitive: `mm` is not `Mm`). Names come from the SenML units registry
(RFC 8428 section 12.1) and its secondary units (RFC 8798), plus the spellings people write.

Two choices are approximations, made for water in the Mekong delta:
- salinity: 1 g/L is taken as 1 ‰ (and 1 mg/L as 1 ppm). Exactly, ‰ is g/kg; brackish and
  sea water weigh 1.000 to 1.025 kg/L, so the error is at most 2.5 %, within what field
  sensors resolve. PSU (practical salinity) is also read as ‰ (within 0.5 %).
- `%` is a percentage (0 to 100), as in the catalogue. RFC 8428 registered `%` as a
  deprecated name of the ratio `/` (0 to 1), but devices sending `%` mean percent; a device
  that sends a ratio says `/`, which is multiplied by 100.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Final

# A family maps each unit name to its size in the family's base unit: a factor, or for
# temperatures (factor, offset) with base = value * factor + offset. Factors are written as
# exact fractions so that every pair converts as exactly as a float allows.
_Size = str | tuple[str, str]

_FAMILIES: Final[dict[str, dict[str, _Size]]] = {
    "length": {"m": "1", "mm": "1/1000", "cm": "1/100", "km": "1000"},
    "time": {"s": "1", "ms": "1/1000", "min": "60", "h": "3600", "d": "86400"},
    "speed": {"km/h": "1", "m/s": "18/5"},
    "temperature": {"°C": "1", "Cel": "1", "K": ("1", "-273.15")},
    "percent": {"%": "1", "/100": "1", "%RH": "1", "/": "100"},
    "salinity": {
        "‰": "1", "/1000": "1", "ppt": "1", "g/kg": "1", "psu": "1", "PSU": "1",
        "g/L": "1", "g/l": "1", "kg/m3": "1", "/": "1000",
        "ppm": "1/1000", "mg/L": "1/1000", "mg/l": "1/1000",
    },
    "water concentration": {
        "mg/L": "1", "mg/l": "1", "ppm": "1", "g/L": "1000", "g/l": "1000", "kg/m3": "1000",
        "ug/L": "1/1000", "µg/L": "1/1000", "μg/L": "1/1000",
    },
    "air concentration": {
        "µg/m³": "1", "μg/m³": "1", "ug/m3": "1", "µg/m3": "1", "μg/m3": "1", "ug/m³": "1",
        "mg/m3": "1000", "mg/m³": "1000", "kg/m3": "1000000000",
    },
    "sound level A": {"dBA": "1", "dB(A)": "1"},
    "events per hour": {"events/h": "1", "1/min": "60", "1/s": "3600"},
    "vehicles per hour": {"vehicles/h": "1", "1/min": "60", "1/s": "3600"},
}  # fmt: skip

# Which family a catalogue unit converts within (a unit in no family accepts only itself).
_FAMILY_OF_TARGET: Final = {
    **dict.fromkeys(("m", "mm", "cm", "km"), "length"),
    **dict.fromkeys(("s", "ms", "min", "h", "d"), "time"),
    **dict.fromkeys(("km/h", "m/s"), "speed"),
    **dict.fromkeys(("°C", "Cel", "K"), "temperature"),
    "%": "percent",
    "‰": "salinity",
    **dict.fromkeys(("mg/L", "mg/l"), "water concentration"),
    **dict.fromkeys(("µg/m³", "μg/m³", "ug/m3"), "air concentration"),
    "dBA": "sound level A",
    "events/h": "events per hour",
    "vehicles/h": "vehicles per hour",
}

_Rule = tuple[float, float, float]  # target = value * numerator / denominator + offset


def _exact(size: _Size) -> tuple[Fraction, Fraction]:
    factor, offset = size if isinstance(size, tuple) else (size, "0")
    return Fraction(factor), Fraction(offset)


def _rule(unit: _Size, target: _Size) -> _Rule:
    (f_unit, o_unit), (f_target, o_target) = _exact(unit), _exact(target)
    scale = f_unit / f_target
    # Numerator and denominator kept apart: dividing by 1000 rounds once, where multiplying
    # by the float nearest 0.001 would not always give the float nearest the result.
    return float(scale.numerator), float(scale.denominator), float((o_unit - o_target) / f_target)


_RULES: Final[dict[str, dict[str, _Rule]]] = {
    target: {
        unit: _rule(size, _FAMILIES[family][target]) for unit, size in _FAMILIES[family].items()
    }
    for target, family in _FAMILY_OF_TARGET.items()
}
_NONE: Final[dict[str, _Rule]] = {}


def convert(value: float, unit: str, target: str) -> float | None:
    """`value` in `unit` expressed in `target`, or None when `unit` is not accepted for it."""
    if unit == target:
        return value
    rule = _RULES.get(target, _NONE).get(unit)
    if rule is None:
        return None
    numerator, denominator, offset = rule
    return value * numerator / denominator + offset


def accepted_units(target: str) -> tuple[str, ...]:
    """The units accepted for a catalogue unit, the unit itself first."""
    return (target, *(u for u in _RULES.get(target, _NONE) if u != target))
