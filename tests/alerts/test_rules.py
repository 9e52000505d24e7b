"""Rule scoping and the index that finds the rules of a reading."""

from __future__ import annotations

from alerts.rules import Rule, RuleIndex


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
    ids = lambda rules: sorted(r.id for r in rules)  # noqa: E731
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
