"""Alert titles in Vietnamese and English: what happens, where, with the value and its unit.

"Độ mặn 4,5 ‰ vượt ngưỡng nguy hiểm 4 ‰ tại Trạm Đại Ngãi" /
"Salinity 4.5 ‰ above critical 4 ‰ at Trạm Đại Ngãi".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from alerts.rules import Rule

SEVERITY_VI: Final = {"info": "thông tin", "warning": "cảnh báo", "critical": "nguy hiểm"}
SEVERITY_EN: Final = {"info": "info", "warning": "warning", "critical": "critical"}


@dataclass(frozen=True, slots=True)
class MetricText:
    """How a metric is named and measured, from the sector catalogue."""

    name_vi: str
    name_en: str
    unit: str = ""


def number_vi(value: float) -> str:
    """A number as Vietnamese writes it: decimal comma, at most three decimals."""
    return number_en(value).replace(".", ",")


def number_en(value: float) -> str:
    """A number with at most three decimals and no trailing zeros."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _with_unit(number: str, unit: str) -> str:
    return f"{number} {unit}" if unit else number


def threshold_titles(rule: Rule, metric: MetricText, value: float, place: str) -> tuple[str, str]:
    """(vi, en) titles of a threshold condition at the severity of `rule`."""
    limit = rule.value if rule.value is not None else value
    above = rule.direction != "below"
    vi = (
        f"{metric.name_vi} {_with_unit(number_vi(value), metric.unit)} "
        f"{'vượt' if above else 'dưới'} ngưỡng {SEVERITY_VI[rule.severity]} "
        f"{_with_unit(number_vi(limit), metric.unit)} tại {place}"
    )
    en = (
        f"{metric.name_en} {_with_unit(number_en(value), metric.unit)} "
        f"{'above' if above else 'below'} {SEVERITY_EN[rule.severity]} "
        f"{_with_unit(number_en(limit), metric.unit)} at {place}"
    )
    return vi, en


def deviation_titles(metric: MetricText, value: float, place: str) -> tuple[str, str]:
    """(vi, en) titles of a value far from its source's recent mean."""
    return (
        f"{metric.name_vi} {_with_unit(number_vi(value), metric.unit)} bất thường "
        f"so với trung bình gần đây tại {place}",
        f"{metric.name_en} {_with_unit(number_en(value), metric.unit)} far from its recent "
        f"mean at {place}",
    )


def silence_titles(place: str, silent_s: float) -> tuple[str, str]:
    """(vi, en) titles of a source that stopped sending readings."""
    minutes = round(silent_s / 60)
    return (
        f"{place} mất tín hiệu {minutes} phút",
        f"{place} silent for {minutes} min",
    )
