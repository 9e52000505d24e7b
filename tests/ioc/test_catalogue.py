"""Bundled profiles load as documented; a broken profile file is reported precisely."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from ioc.catalogue import bundled_profile_names, load_catalogue, load_profile
from ioc.errors import ProfileError
from ioc.vocabulary import (
    OPERATORS,
    SEVERITIES,
    Direction,
    DirectionName,
    Severity,
    SeverityName,
    breaches,
    operator_symbol,
)

BAC_LIEU = [
    "citizen_reports",
    "security",
    "traffic",
    "health",
    "education",
    "online_info",
    "public_services",
    "hotline",
]
BINH_PHUOC = [
    "socio_economic",
    "public_services",
    "traffic",
    "security",
    "citizen_reports",
    "health",
    "education",
    "land_construction",
    "infosec",
    "online_info",
    "tourism",
]


def test_three_profiles_are_bundled() -> None:
    assert {"bac-lieu", "binh-phuoc", "mekong"} <= set(bundled_profile_names())


def test_bac_lieu_has_its_eight_sectors_in_order() -> None:
    assert [s.id for s in load_profile("bac-lieu").sectors] == BAC_LIEU


def test_binh_phuoc_has_its_eleven_sectors_and_socio_economic_indicators() -> None:
    profile = load_profile("binh-phuoc")
    assert [s.id for s in profile.sectors] == BINH_PHUOC
    socio = profile.sector("socio_economic")
    assert socio is not None
    ids = {m.id for m in socio.metrics}
    assert {"budget_revenue_pct", "investment_disbursement_pct", "cpi_yoy_pct"} <= ids


def test_mekong_salinity_warns_at_1_and_is_critical_at_4_permille() -> None:
    water = load_profile("mekong").sector("water")
    assert water is not None
    salinity = water.metric("salinity")
    assert salinity is not None and salinity.unit == "‰"
    by_severity = {t.severity: t for t in salinity.thresholds}
    assert by_severity[Severity.WARNING].value == 1
    assert by_severity[Severity.CRITICAL].value == 4
    assert by_severity[Severity.WARNING].breached(1.0)
    assert not by_severity[Severity.WARNING].breached(0.99)
    assert {"water_level", "rainfall_24h"} <= {m.id for m in water.metrics}


def test_mekong_environment_carries_the_vn_aqi_bands() -> None:
    env = load_profile("mekong").sector("environment")
    assert env is not None
    aqi = env.metric("aqi")
    assert aqi is not None
    assert [b.upto for b in aqi.bands] == [50, 100, 150, 200, 300, None]
    assert any(t.direction is Direction.ABOVE and t.value == 100 for t in aqi.thresholds)


def test_every_kpi_names_a_metric_of_its_sector() -> None:
    for name in bundled_profile_names():
        for sector in load_profile(name).sectors:
            assert sector.kpis, f"{name}/{sector.id} has no headline KPI"
            assert all(sector.metric(k) for k in sector.kpis)


def test_catalogue_has_the_fourteen_reference_sectors() -> None:
    assert len(load_catalogue()) == 14


def test_a_user_profile_file_can_reference_and_add(tmp_path: Path) -> None:
    path = tmp_path / "my-city.yaml"
    path.write_text(
        "title_vi: Thành phố thử\ntitle_en: Test city\ntimezone: Asia/Ho_Chi_Minh\n"
        "sectors:\n"
        "  - id: water\n"
        "    only_metrics: [salinity]\n"
        "    kpis: [salinity]\n"
        "  - id: ports\n"
        "    name_vi: Cảng biển\n    name_en: Ports\n    colour: '#336699'\n"
        "    metrics:\n"
        "      - {id: ships_waiting, unit: count, name_vi: Tàu chờ, name_en: Ships waiting,"
        " interval_s: 600, min: 0, max: 500}\n",
        encoding="utf-8",
    )
    profile = load_profile(str(path))
    assert profile.name == "my-city"
    assert [s.id for s in profile.sectors] == ["water", "ports"]
    assert [m.id for m in profile.sectors[0].metrics] == ["salinity"]
    assert [s.order for s in profile.sectors] == [10, 20]


def test_a_mistake_names_file_path_and_field(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        "title_vi: x\ntitle_en: x\nsectors:\n  - id: water\n    metrics:\n"
        "      - id: salinity\n        min: 10\n        max: 5\n",
        encoding="utf-8",
    )
    with pytest.raises(ProfileError) as err:
        load_profile(str(path))
    message = str(err.value)
    assert str(path) in message
    assert "sectors.0.metrics.0" in message
    assert "min" in message


def test_an_unknown_sector_without_definition_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("title_vi: x\ntitle_en: x\nsectors:\n  - id: ports\n", encoding="utf-8")
    with pytest.raises(ProfileError, match=r"sectors\.0: sector 'ports' is not in the catalogue"):
        load_profile(str(path))


def test_unknown_fields_and_bad_yaml_are_refused(tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        "title_vi: x\ntitle_en: x\nsectors:\n  - id: water\n    colr: '#000000'\n", encoding="utf-8"
    )
    with pytest.raises(ProfileError, match=r"sectors\.0\.colr"):
        load_profile(str(typo))
    broken = tmp_path / "broken.yaml"
    broken.write_text("title_vi: [unclosed\n", encoding="utf-8")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(str(broken))


def test_unknown_profile_name_lists_the_bundled_ones() -> None:
    with pytest.raises(ProfileError, match="bac-lieu"):
        load_profile("atlantis")


def test_the_shared_vocabulary_agrees_with_itself() -> None:
    """One definition of severities and directions: the enums, the type names and the ranks."""
    assert get_args(SeverityName) == tuple(s.value for s in Severity) == SEVERITIES
    assert get_args(DirectionName) == tuple(d.value for d in Direction)
    assert [s.rank for s in Severity] == [0, 1, 2]
    assert {operator_symbol(d, i): (d, i) for d, i in OPERATORS.values()} == dict(OPERATORS)
    for symbol, (direction, inclusive) in OPERATORS.items():
        assert operator_symbol(direction, inclusive) == symbol
        assert breaches(4.0, direction, 4.0, inclusive) is inclusive
    assert breaches(5.0, "above", 4.0, False) and breaches(3.0, "below", 4.0, False)
    assert not breaches(3.0, "above", 4.0, True) and not breaches(5.0, "below", 4.0, True)


@pytest.mark.parametrize(
    ("name", "south", "north", "west", "east"),
    [("bac-lieu", 8.9, 9.7, 105.2, 105.9), ("binh-phuoc", 11.2, 12.3, 106.4, 107.5)],
)
def test_every_district_of_a_province_has_a_centre_inside_the_province(
    name: str, south: float, north: float, west: float, east: float
) -> None:
    for district in load_profile(name).districts:
        assert district.latitude is not None and district.longitude is not None, district.id
        assert south < district.latitude < north and west < district.longitude < east, district.id


def test_a_district_centre_needs_both_coordinates(tmp_path: Path) -> None:
    path = tmp_path / "half.yaml"
    path.write_text(
        "title_vi: x\ntitle_en: x\nsectors:\n  - id: water\n"
        "districts:\n  - {id: a, name_vi: A, name_en: A, latitude: 9.5}\n",
        encoding="utf-8",
    )
    with pytest.raises(ProfileError, match="latitude and longitude go together"):
        load_profile(str(path))
