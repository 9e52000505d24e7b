"""Alert titles in Vietnamese and English: the value, the threshold and its severity, the place."""

from __future__ import annotations

from dataclasses import replace

import pytest

from alerts.rules import Rule, Severity
from alerts.titles import (
    MetricText,
    deviation_titles,
    number_en,
    number_vi,
    silence_titles,
    threshold_titles,
)

SALINITY = MetricText("Độ mặn", "Salinity", "‰")
WATER_LEVEL = MetricText("Mực nước", "Water level", "m")
AQI = MetricText("Chỉ số chất lượng không khí", "Air quality index")  # no unit
CRITICAL = Rule(
    id=2,
    name="salinity critical",
    kind="threshold",
    sector="water",
    severity="critical",
    metric="salinity",
    direction="above",
    value=4.0,
    inclusive=True,
    for_s=600,
    clear_at=3.5,
)


def test_a_critical_salinity_title_names_value_threshold_severity_and_place() -> None:
    assert threshold_titles(CRITICAL, SALINITY, 4.5, "Trạm Đại Ngãi") == (
        "Độ mặn 4,5 ‰ vượt ngưỡng nguy hiểm 4 ‰ tại Trạm Đại Ngãi",
        "Salinity 4.5 ‰ above critical 4 ‰ at Trạm Đại Ngãi",
    )


@pytest.mark.parametrize(
    ("severity", "vi", "en"),
    [("info", "thông tin", "info"), ("warning", "cảnh báo", "warning")],
)
def test_each_severity_is_named_in_both_languages(severity: Severity, vi: str, en: str) -> None:
    rule = replace(CRITICAL, severity=severity, value=1.0)
    assert threshold_titles(rule, SALINITY, 1.25, "Trạm 1") == (
        f"Độ mặn 1,25 ‰ vượt ngưỡng {vi} 1 ‰ tại Trạm 1",
        f"Salinity 1.25 ‰ above {en} 1 ‰ at Trạm 1",
    )


def test_a_below_rule_says_below() -> None:
    low = replace(CRITICAL, direction="below", value=0.5, clear_at=0.7)
    assert threshold_titles(low, WATER_LEVEL, 0.35, "Cống Cái Lớn") == (
        "Mực nước 0,35 m dưới ngưỡng nguy hiểm 0,5 m tại Cống Cái Lớn",
        "Water level 0.35 m below critical 0.5 m at Cống Cái Lớn",
    )


def test_a_metric_without_unit_shows_bare_numbers() -> None:
    rule = replace(CRITICAL, severity="warning", metric="aqi", value=150.0, clear_at=None)
    assert threshold_titles(rule, AQI, 182.0, "Ninh Kiều") == (
        "Chỉ số chất lượng không khí 182 vượt ngưỡng cảnh báo 150 tại Ninh Kiều",
        "Air quality index 182 above warning 150 at Ninh Kiều",
    )
    assert deviation_titles(AQI, 300.5, "Ninh Kiều")[1] == (
        "Air quality index 300.5 far from its recent mean at Ninh Kiều"
    )


@pytest.mark.parametrize(
    ("value", "en", "vi"),
    [
        (4.0, "4", "4"),
        (4.5, "4.5", "4,5"),
        (0.25, "0.25", "0,25"),
        (1.2345678, "1.235", "1,235"),  # at most three decimals, rounded
        (2.1004, "2.1", "2,1"),  # no trailing zeros after rounding
        (0.0, "0", "0"),
        (-0.0, "0", "0"),
        (-0.0004, "0", "0"),  # rounds to zero: no "-0"
        (-1.5, "-1.5", "-1,5"),
        (1234.5, "1234.5", "1234,5"),
        (100.0, "100", "100"),
        (10.0005001, "10.001", "10,001"),
    ],
)
def test_numbers_have_at_most_three_decimals_and_the_vietnamese_decimal_comma(
    value: float, en: str, vi: str
) -> None:
    assert number_en(value) == en
    assert number_vi(value) == vi


def test_a_rule_without_a_value_shows_the_reading_as_the_limit() -> None:
    rule = replace(CRITICAL, value=None)
    vi, en = threshold_titles(rule, SALINITY, 4.5, "X")
    assert vi == "Độ mặn 4,5 ‰ vượt ngưỡng nguy hiểm 4,5 ‰ tại X"
    assert en == "Salinity 4.5 ‰ above critical 4.5 ‰ at X"


def test_a_deviation_title_names_the_value_and_the_place() -> None:
    load = MetricText("Số bệnh nhân cấp cứu", "ER patients", "người")
    assert deviation_titles(load, 60.0, "Bệnh viện Đa khoa") == (
        "Số bệnh nhân cấp cứu 60 người bất thường so với trung bình gần đây tại Bệnh viện Đa khoa",
        "ER patients 60 người far from its recent mean at Bệnh viện Đa khoa",
    )


@pytest.mark.parametrize(("silent_s", "minutes"), [(1800.0, 30), (60.0, 1), (3629.0, 60)])
def test_a_silence_title_gives_whole_minutes(silent_s: float, minutes: int) -> None:
    assert silence_titles("Trạm Đại Ngãi", silent_s) == (
        f"Trạm Đại Ngãi mất tín hiệu {minutes} phút",
        f"Trạm Đại Ngãi silent for {minutes} min",
    )
