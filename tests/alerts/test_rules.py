"""Rule scoping and the index that finds the rules of a reading."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from alerts.rules import Group, Rule, RuleIndex, group_key
from ioc.db import libpq_url


def rule(rule_id: int, **scope: str) -> Rule:
    return Rule(
        id=rule_id,
        name=f"r{rule_id}",
        kind="threshold",
        sector="water",
        severity="warning",
        metric="salinity",
        direction="above",
        value=1.0,
        **scope,  # type: ignore[arg-type]
    )


def test_the_index_returns_sector_wide_district_and_source_rules_that_cover_a_source() -> None:
    index = RuleIndex(
        [
            rule(1),
            rule(2, district="vinh-thuan"),
            rule(3, district="an-bien"),
            rule(4, source_id="tram-1"),
            Rule(id=5, name="silent", kind="silence", sector="water", severity="warning"),
        ]
    )

    def ids(rules: list[Rule]) -> list[int]:
        return sorted(r.id for r in rules)

    assert ids(index.thresholds("water", "salinity", "tram-1", "vinh-thuan")) == [1, 2, 4]
    assert ids(index.thresholds("water", "salinity", "tram-2", "an-bien")) == [1, 3]
    assert ids(index.thresholds("water", "salinity", "tram-2", None)) == [1]
    assert index.thresholds("water", "water_level", "tram-1", "vinh-thuan") == []
    assert index.thresholds("traffic", "salinity", "tram-1", None) == []
    assert [r.id for r in index.silence("water")] == [5]
    assert index.uses_districts
    for r in index.thresholds("water", "salinity", "tram-1", "vinh-thuan"):
        assert r.covers("tram-1", "vinh-thuan")


def test_event_rules_match_kinds_and_severity() -> None:
    r = Rule(
        id=9,
        name="dikes",
        kind="event",
        sector="water",
        severity="warning",
        params={"kinds": ["dike_breach"]},
    )
    assert r.matches_event("dike_breach", "critical")
    assert not r.matches_event("dike_breach", "info")
    assert not r.matches_event("flood_report", "critical")


# -- groups ---------------------------------------------------------------------------------


def threshold(rule_id: int, severity: str = "warning", **fields: Any) -> Rule:
    base: dict[str, Any] = {
        "id": rule_id,
        "name": f"r{rule_id}",
        "kind": "threshold",
        "sector": "water",
        "severity": severity,
        "metric": "salinity",
        "direction": "above",
        "value": 1.0,
    }
    return Rule(**(base | fields))


def deviation(rule_id: int) -> Rule:
    return Rule(
        id=rule_id,
        name=f"d{rule_id}",
        kind="deviation",
        sector="water",
        severity="warning",
        metric="salinity",
    )


def test_severities_of_one_metric_direction_and_scope_share_a_group_key() -> None:
    warning = threshold(1, value=1.0)
    critical = threshold(2, "critical", value=4.0, inclusive=True, for_s=600, clear_at=3.5)
    assert group_key(warning) == group_key(critical) == "threshold:water:salinity:above:sector"
    assert group_key(threshold(3, district="an-bien")) == (
        "threshold:water:salinity:above:district=an-bien"
    )
    assert group_key(threshold(4, "critical", source_id="tram-1")) == (
        "threshold:water:salinity:above:source=tram-1"
    )


def test_group_keys_tell_apart_scope_direction_metric_and_sector() -> None:
    key = group_key(threshold(1))
    others = [
        threshold(2, district="an-bien"),
        threshold(3, district="vinh-thuan"),
        threshold(4, source_id="tram-1"),
        threshold(5, direction="below", value=0.1),
        threshold(6, metric="water_level"),
        threshold(7, sector="environment"),
    ]
    keys = [group_key(r) for r in others]
    assert key not in keys and len(set(keys)) == len(keys)
    # a source rule is scoped to its source, whatever district it also names
    assert group_key(threshold(8, source_id="tram-1", district="an-bien")) == group_key(others[2])


def test_rules_other_than_thresholds_are_groups_of_their_own() -> None:
    assert group_key(deviation(10)) != group_key(deviation(11))
    assert group_key(deviation(10)) != group_key(threshold(10))
    silence = Rule(id=12, name="silent", kind="silence", sector="water", severity="warning")
    assert group_key(silence) != group_key(deviation(10))


def test_the_index_groups_warning_and_critical_of_one_scope_ordered_by_severity() -> None:
    critical = threshold(1, "critical", value=4.0)
    info = threshold(2, "info", value=0.5)
    warning = threshold(3, value=1.0)
    also_warning = threshold(4, value=1.5)
    index = RuleIndex([critical, warning, also_warning, info])
    [group] = index.groups("water", "salinity", "tram-1", "an-bien")
    assert group.rules == (info, warning, also_warning, critical)  # by severity, then id
    assert group.lead == info
    assert group.kind == "threshold"
    assert group.key == group_key(critical)
    assert group.cause("tram-1") == f"{group.key}:source:tram-1"


def test_the_index_keeps_scopes_directions_and_deviation_rules_in_groups_of_their_own() -> None:
    sector_wide = [threshold(1), threshold(2, "critical", value=4.0)]
    district = [threshold(3, district="an-bien"), threshold(4, "critical", district="an-bien")]
    source = threshold(5, source_id="tram-1")
    low = threshold(6, direction="below", value=0.1)
    spikes = [deviation(7), deviation(8)]
    index = RuleIndex([*sector_wide, *district, source, low, *spikes])

    def members(source_id: str, district_name: str | None) -> set[tuple[int, ...]]:
        groups = index.groups("water", "salinity", source_id, district_name)
        assert len({g.key for g in groups}) == len(groups)
        return {tuple(r.id for r in g.rules) for g in groups}

    assert members("tram-1", "an-bien") == {(1, 2), (3, 4), (5,), (6,), (7,), (8,)}
    assert members("tram-2", "an-bien") == {(1, 2), (3, 4), (6,), (7,), (8,)}
    assert members("tram-2", "vinh-thuan") == {(1, 2), (6,), (7,), (8,)}
    assert members("tram-2", None) == {(1, 2), (6,), (7,), (8,)}
    kinds = {g.rules[0].id: g.kind for g in index.groups("water", "salinity", "tram-2", None)}
    assert kinds == {1: "threshold", 6: "threshold", 7: "deviation", 8: "deviation"}
    assert index.groups("water", "water_level", "tram-1", "an-bien") == ()
    assert index.groups("traffic", "salinity", "tram-1", None) == ()
    # every rule a source's readings can match is in exactly one of its groups
    for sid, dist in [("tram-1", "an-bien"), ("tram-2", None)]:
        grouped = [r.id for g in index.groups("water", "salinity", sid, dist) for r in g.rules]
        assert sorted(grouped) == sorted(
            r.id for r in index.thresholds("water", "salinity", sid, dist)
        )


# -- what ends a group's condition, in Python and in SQL ------------------------------------

WARNING_AND_CRITICAL = Group(
    "salinity",
    (
        threshold(1, value=1.0, inclusive=True, clear_at=0.8),
        threshold(2, "critical", value=4.0, inclusive=True, clear_at=3.5),
    ),
)


def test_a_group_is_cleared_only_by_a_value_that_ends_every_rule() -> None:
    group = WARNING_AND_CRITICAL
    assert group.clears_all(0.79)
    assert not group.clears_all(0.8)  # not past warning's clear value
    assert not group.clears_all(0.9)  # warning's hysteresis band
    assert not group.clears_all(3.6)  # and critical's
    assert not group.clears_all(5.0)
    without = Group("k", (threshold(3, value=1.0, inclusive=False),))
    assert without.clears_all(1.0) and not without.clears_all(1.01)
    low = Group("k", (threshold(4, direction="below", value=2.0, clear_at=2.5),))
    assert low.clears_all(2.51) and not low.clears_all(2.5) and not low.clears_all(2.2)
    assert Group("rule:7", (deviation(7),)).clears_all(123.0)


def _around(*limits: float) -> list[float]:
    out: list[float] = []
    for limit in limits:
        out += [limit, math.nextafter(limit, -math.inf), math.nextafter(limit, math.inf)]
        out += [limit - 0.5, limit + 0.5]
    return out


RESET_CASES: list[tuple[str, Group]] = [
    ("above inclusive", Group("k", (threshold(1, value=1.0, inclusive=True),))),
    ("above exclusive", Group("k", (threshold(1, value=1.0, inclusive=False),))),
    ("below inclusive", Group("k", (threshold(1, direction="below", value=-2.5, inclusive=True),))),
    ("below exclusive", Group("k", (threshold(1, direction="below", value=0.1),))),
    ("above clear_at", Group("k", (threshold(1, value=1.0, inclusive=True, clear_at=0.8),))),
    ("below clear_at", Group("k", (threshold(1, direction="below", value=2.0, clear_at=2.5),))),
    ("warning and critical", WARNING_AND_CRITICAL),
    (
        "mixed",
        Group(
            "k",
            (
                threshold(1, value=0.1, clear_at=1e-7),
                threshold(2, "critical", value=3e16, inclusive=True),
            ),
        ),
    ),
    ("deviation", Group("rule:7", (deviation(7),))),
]


@pytest.fixture(scope="module")
def pg(pg_server: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(libpq_url(pg_server), autocommit=True) as conn:
        yield conn


@pytest.mark.parametrize(("case", "group"), RESET_CASES, ids=[c[0] for c in RESET_CASES])
def test_the_sql_reset_condition_agrees_with_clears_all(
    pg: psycopg.Connection[tuple[Any, ...]], case: str, group: Group
) -> None:
    limits = [x for r in group.rules for x in (r.value, r.clear_at) if x is not None]
    for value in sorted({0.0, -1e9, 1e9, *_around(*limits)}):
        row = pg.execute(
            f"SELECT {group.reset_sql()} FROM (VALUES (%s::float8)) AS t(value)",
            (value,),
        ).fetchone()
        assert row == (group.clears_all(value),), (case, value, group.reset_sql())
