"""Alert rules seeded from the profile: once, kept when an operator changed them, disabled when
the profile drops them."""

from __future__ import annotations

import psycopg
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from alerts.seed import SeedReport, seed_rules
from ioc.catalogue import load_profile
from ioc.db import libpq_url, sqlalchemy_url
from ioc.sync import sync_profile


def _sync(url: str, name: str) -> SeedReport:
    """The profile's sectors, then its rules, as the composition root does at start."""
    engine = create_engine(sqlalchemy_url(url), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            profile = load_profile(name)
            sync_profile(conn, profile)
            return seed_rules(conn, profile)
    finally:
        engine.dispose()


def _rules(url: str) -> dict[str, tuple[object, ...]]:
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute(
            "SELECT seed_key, kind, severity, threshold, clear_at, for_s, enabled "
            "FROM alert_rule WHERE seed_key IS NOT NULL"
        ).fetchall()
    return {str(r[0]): tuple(r[1:]) for r in rows}


def test_rules_are_seeded_from_the_profile_once(db_url: str) -> None:
    first = _sync(db_url, "mekong")
    rules = _rules(db_url)
    assert first.inserted == len(rules) > 0
    # salinity 1 ‰ warning / 4 ‰ critical with their clear values; a silence and an event
    # rule for every sector
    assert rules["water/salinity/above/warning"] == ("threshold", "warning", 1.0, 0.8, 900, True)
    assert rules["water/salinity/above/critical"][:4] == ("threshold", "critical", 4.0, 3.5)
    assert rules["water/silence"][:2] == ("silence", "warning")
    assert rules["water/events"][:2] == ("event", "warning")
    again = _sync(db_url, "mekong")
    assert (again.inserted, again.updated, again.disabled) == (0, 0, 0)


def _operator_changes(db_url: str, *statements: str) -> None:
    """Mekong's rules seeded, then changed as an operator would."""
    _sync(db_url, "mekong")
    with psycopg.connect(libpq_url(db_url)) as conn:
        for statement in statements:
            conn.execute(statement)


def test_an_operator_change_to_a_seeded_rule_survives_a_restart(db_url: str) -> None:
    _operator_changes(
        db_url,
        "UPDATE alert_rule SET threshold = 1.5, for_s = 300 "
        "WHERE seed_key = 'water/salinity/above/warning'",
        "UPDATE alert_rule SET enabled = false WHERE seed_key = 'water/silence'",
    )
    report = _sync(db_url, "mekong")
    assert report.kept_operator_changes == 2
    rules = _rules(db_url)
    assert rules["water/salinity/above/warning"][2:] == (1.5, 0.8, 300, True)
    assert rules["water/silence"][-1] is False


def test_rules_of_a_dropped_profile_are_disabled_unless_changed(db_url: str) -> None:
    _operator_changes(
        db_url,
        "UPDATE alert_rule SET severity = 'critical' "
        "WHERE seed_key = 'water/salinity/above/warning'",
    )
    report = _sync(db_url, "bac-lieu")
    rules = _rules(db_url)
    assert report.disabled > 0
    assert rules["water/salinity/above/critical"][-1] is False
    assert rules["water/salinity/above/warning"][-1] is True  # the operator's, untouched
