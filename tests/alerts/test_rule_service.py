"""Rule changes: checked against the catalogue and the database with the field named, audited in
their own transaction, seen by the ingest engine, kept by re-seeding when they touch seeded
rules, and leaving no alert that nothing would ever resolve."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from pydantic import ValidationError

from alerts.engine import AlertEngine
from alerts.rule_service import (
    RuleDefinition,
    RuleInvalid,
    RuleNameTaken,
    RuleNotFound,
    check,
    create_rule,
    delete_rule,
    follows_profile,
    problems,
    update_rule,
)
from ingest.items import Item
from ioc.db import libpq_url
from tests.support.alerts import engine_writer, feed
from tests.support.ingest import make_item, query, sync, unique

pytestmark = pytest.mark.timeout(120)

T0 = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
MEKONG_DISTRICTS = ["bac-lieu-city"]

FLOW: dict[str, Any] = {
    "name": "flow above 1000",
    "kind": "threshold",
    "sector_id": "traffic",
    "metric": "flow",
    "severity": "warning",
    "direction": "above",
    "threshold": 1000,
    "clear_at": 800,
}


def definition(**changes: Any) -> RuleDefinition:
    return RuleDefinition.model_validate({**FLOW, **changes})


def flow(source: str, samples: list[tuple[float, float]]) -> Item:
    body = [
        {"ts": int((T0 + timedelta(minutes=m)).timestamp() * 1000), "values": {"flow": v}}
        for m, v in samples
    ]
    return make_item(f"ioc/v1/traffic/{source}/telemetry", body)


def connect(db_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(libpq_url(db_url))


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"metric": None}, ["metric"]),
        ({"direction": None, "threshold": None}, ["direction", "threshold"]),
        ({"clear_at": 1000}, ["clear_at"]),  # not below the threshold of an "above" rule
        ({"direction": "below", "clear_at": 900}, ["clear_at"]),
        ({"kind": "silence"}, ["metric", "direction", "threshold", "clear_at"]),
        (
            {
                "kind": "event",
                "metric": None,
                "direction": None,
                "threshold": None,
                "clear_at": None,
                "for_s": 60,
            },
            ["for_s"],
        ),
        ({"district": "bac-lieu-city", "source_id": "x"}, ["district"]),
        ({"params": {"factor": 2}}, ["params.factor"]),
    ],
)
def test_a_definition_that_does_not_hold_names_its_fields(
    changes: dict[str, Any], fields: list[str]
) -> None:
    assert [i.field for i in problems(definition(**changes))] == fields


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"for_s": -1}, "for_s"),
        ({"severity": "urgent"}, "severity"),
        ({"kind": "forecast"}, "kind"),
        ({"threshold": float("nan")}, "threshold"),
        ({"name": "  "}, "name"),
        ({"params": {"factor": True}}, "params.factor"),
        ({"params": {"colour": "red"}}, "params.colour"),
        ({"sector_id": "Water!"}, "sector_id"),
    ],
)
def test_a_malformed_definition_is_refused_by_its_model(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        definition(**changes)
    locs = [".".join(str(p) for p in e["loc"]) for e in caught.value.errors()]
    assert locs
    assert all(loc.startswith(field) for loc in locs), locs


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sector_id": "nowhere"}, "sector_id"),
        ({"metric": "salinity"}, "metric"),  # a metric of another sector
        ({"threshold": 50_000, "clear_at": None}, "threshold"),  # flow is 0 to 20,000
        ({"source_id": "no-such-source"}, "source_id"),
        ({"district": "atlantis"}, "district"),
    ],
)
def test_a_definition_is_checked_against_the_catalogue_and_the_database(
    synced_db: str, changes: dict[str, Any], field: str
) -> None:
    with connect(synced_db) as conn, pytest.raises(RuleInvalid) as caught:
        check(conn, definition(**changes), districts=MEKONG_DISTRICTS)
    assert [i.field for i in caught.value.issues] == [field]


def test_a_source_of_another_sector_is_not_a_scope(synced_db: str) -> None:
    query(synced_db, "INSERT INTO source (id, sector_id) VALUES ('tram-man', 'water')")
    with connect(synced_db) as conn:
        with pytest.raises(RuleInvalid) as caught:
            check(conn, definition(source_id="tram-man"))
        assert [i.field for i in caught.value.issues] == ["source_id"]
        query(synced_db, "INSERT INTO source (id, sector_id) VALUES ('cam-1', 'traffic')")
        check(conn, definition(source_id="cam-1"))


def test_a_rule_and_its_audit_row_are_written_together(synced_db: str) -> None:
    with connect(synced_db) as conn:
        done = create_rule(conn, definition=definition(), actor="key:ab:admin")
    rows = query(
        synced_db,
        "SELECT actor, action, target, detail FROM audit_log WHERE action = 'rule.create'",
    )
    assert rows == [
        (
            "key:ab:admin",
            "rule.create",
            f"rule:{done.rule_id}",
            {"definition": definition().columns()},
        )
    ]
    stored = query(
        synced_db,
        "SELECT origin, kind, threshold, clear_at, params, enabled FROM alert_rule WHERE id = %s",
        (done.rule_id,),
    )
    assert stored == [("user", "threshold", 1000.0, 800.0, {}, True)]
    with connect(synced_db) as conn:
        create_rule(conn, definition=definition(name="rolled back"), actor="a")
        conn.rollback()
    assert query(synced_db, "SELECT count(*) FROM alert_rule WHERE name = 'rolled back'") == [(0,)]
    assert query(synced_db, "SELECT count(*) FROM audit_log") == [(1,)]


def test_a_name_is_taken_once(synced_db: str) -> None:
    with connect(synced_db) as conn:
        first = create_rule(conn, definition=definition(), actor="a").rule_id
        with pytest.raises(RuleNameTaken):
            create_rule(conn, definition=definition(threshold=2000), actor="a")
        other = create_rule(conn, definition=definition(name="other"), actor="a").rule_id
        with pytest.raises(RuleNameTaken):
            update_rule(conn, rule_id=other, definition=definition(), actor="a")
        update_rule(conn, rule_id=first, definition=definition(threshold=1500), actor="a")


def test_an_update_audits_the_fields_it_changed_and_nothing_when_none(synced_db: str) -> None:
    with connect(synced_db) as conn:
        rule_id = create_rule(conn, definition=definition(), actor="a").rule_id
        same = update_rule(conn, rule_id=rule_id, definition=definition(), actor="b")
        assert same.changed == {}
        done = update_rule(
            conn, rule_id=rule_id, definition=definition(threshold=1200, for_s=300), actor="b"
        )
    assert done.changed == {
        "threshold": {"from": 1000.0, "to": 1200.0},
        "for_s": {"from": 0, "to": 300},
    }
    rows = query(synced_db, "SELECT actor, detail FROM audit_log WHERE action = 'rule.update'")
    assert rows == [("b", {"changed": done.changed})]


def test_the_engine_sees_every_write(synced_db: str) -> None:
    engine = AlertEngine(rules_check_s=0.0)

    def thresholds() -> list[tuple[str, float | None]]:
        with connect(synced_db) as conn:
            index = engine.rules(conn)
        return [(r.name, r.value) for r in index.thresholds("traffic", "flow", "any")]

    assert thresholds() == []
    with connect(synced_db) as conn:
        rule_id = create_rule(conn, definition=definition(), actor="a").rule_id
    assert thresholds() == [("flow above 1000", 1000.0)]
    for value in (1100.0, 1200.0, 1300.0):  # each write moves the version, however fast
        with connect(synced_db) as conn:
            update_rule(
                conn,
                rule_id=rule_id,
                definition=definition(threshold=value, clear_at=value - 200),
                actor="a",
            )
        assert thresholds() == [("flow above 1000", value)]
    with connect(synced_db) as conn:
        update_rule(conn, rule_id=rule_id, definition=definition(enabled=False), actor="a")
    assert thresholds() == []
    with connect(synced_db) as conn:
        update_rule(conn, rule_id=rule_id, definition=definition(), actor="a")
    assert thresholds() == [("flow above 1000", 1000.0)]
    with connect(synced_db) as conn:
        delete_rule(conn, rule_id=rule_id, actor="a")
    assert thresholds() == []


def test_an_edited_seeded_rule_is_kept_by_the_next_reseed(synced_db: str) -> None:
    key = "water/salinity/above/warning"
    with connect(synced_db) as conn:
        row = conn.execute(
            "SELECT id, name, sector_id, metric, severity, direction, threshold, inclusive, "
            "for_s, clear_at FROM alert_rule WHERE seed_key = %s",
            (key,),
        ).fetchone()
        assert row is not None
        rule_id = row[0]
        seeded = RuleDefinition(
            name=row[1],
            kind="threshold",
            sector_id=row[2],
            metric=row[3],
            severity=row[4],
            direction=row[5],
            threshold=row[6],
            inclusive=row[7],
            for_s=row[8],
            clear_at=row[9],
        )
        assert update_rule(conn, rule_id=rule_id, definition=seeded, actor="a").changed == {}
        update_rule(
            conn,
            rule_id=rule_id,
            definition=seeded.model_copy(update={"threshold": 1.5}),
            actor="a",
        )
    sync(synced_db)  # as `ioc db upgrade` does
    assert _seeded(synced_db, key) == [(1.5, True, False)]
    with connect(synced_db) as conn:  # put back as seeded: it follows the profile again
        update_rule(conn, rule_id=rule_id, definition=seeded, actor="a")
    sync(synced_db)
    assert _seeded(synced_db, key) == [(1.0, True, True)]


def _seeded(db_url: str, key: str) -> list[tuple[Any, ...]]:
    with connect(db_url) as conn:
        cur = conn.cursor(row_factory=dict_row)
        rows = cur.execute("SELECT * FROM alert_rule WHERE seed_key = %s", (key,)).fetchall()
    return [(r["threshold"], r["enabled"], follows_profile(r)) for r in rows]


def test_a_deleted_seeded_rule_is_not_seeded_again(synced_db: str) -> None:
    key = "water/salinity/above/critical"
    (rule_id, name), *_ = query(
        synced_db, "SELECT id, name FROM alert_rule WHERE seed_key = %s", (key,)
    )
    with connect(synced_db) as conn:
        delete_rule(conn, rule_id=rule_id, actor="a")
        with pytest.raises(RuleNotFound):
            delete_rule(conn, rule_id=rule_id, actor="a")
    sync(synced_db)
    sync(synced_db)
    rows = query(
        synced_db, "SELECT origin, enabled, name FROM alert_rule WHERE seed_key = %s", (key,)
    )
    assert rows == [("deleted", False, f"{name} [deleted {rule_id}]")]
    with connect(synced_db) as conn:  # its name is free again
        create_rule(
            conn,
            definition=definition(
                name=name, sector_id="water", metric="salinity", threshold=4, clear_at=3.5
            ),
            actor="a",
        )
    detail = query(synced_db, "SELECT detail FROM audit_log WHERE action = 'rule.delete'")
    assert detail[0][0]["seed_key"] == key
    assert detail[0][0]["definition"]["threshold"] == 4.0


@pytest.mark.parametrize("how", ["delete", "disable", "move"])
def test_a_rule_that_stops_watching_resolves_its_active_alert(synced_db: str, how: str) -> None:
    with connect(synced_db) as conn:
        rule_id = create_rule(conn, definition=definition(), actor="a").rule_id
    source = unique("flow")
    with engine_writer(synced_db) as writer:
        feed(writer, flow(source, [(0, 1500.0), (1, 1600.0)]))
    (alert_id,) = query(
        synced_db, "SELECT id FROM alert WHERE source_id = %s AND status = 'open'", (source,)
    )[0]
    with connect(synced_db) as conn:
        if how == "delete":
            done = delete_rule(conn, rule_id=rule_id, actor="key:ab:admin")
        elif how == "disable":
            done = update_rule(
                conn, rule_id=rule_id, definition=definition(enabled=False), actor="key:ab:admin"
            )
        else:
            done = update_rule(
                conn,
                rule_id=rule_id,
                definition=definition(metric="mean_speed", threshold=100, clear_at=80),
                actor="key:ab:admin",
            )
    assert done.resolved_alerts == [alert_id]
    events = query(
        synced_db,
        "SELECT kind, actor, detail->>'reason' FROM alert_event WHERE alert_id = %s "
        "ORDER BY id DESC LIMIT 1",
        (alert_id,),
    )
    reason = {"delete": "rule deleted", "disable": "rule disabled"}.get(how, "rule changed: metric")
    assert events == [("resolved", "key:ab:admin", reason)]
    assert query(synced_db, "SELECT count(*) FROM alert_state WHERE rule_id = %s", (rule_id,)) == [
        (0,)
    ]
    audit = query(synced_db, "SELECT detail FROM audit_log WHERE action LIKE 'rule.%%' ORDER BY id")
    assert audit[-1][0]["resolved_alerts"] == [alert_id]


def test_a_threshold_change_leaves_the_alert_to_the_engine(synced_db: str) -> None:
    with connect(synced_db) as conn:
        rule_id = create_rule(conn, definition=definition(), actor="a").rule_id
    source = unique("flow")
    with engine_writer(synced_db, rules_check_s=0.0) as writer:
        feed(writer, flow(source, [(0, 1500.0)]))
        with connect(synced_db) as conn:
            done = update_rule(
                conn, rule_id=rule_id, definition=definition(threshold=1400), actor="a"
            )
        assert done.resolved_alerts == []
        feed(writer, flow(source, [(1, 1300.0)]))  # below the new threshold, above clear
        rows = query(synced_db, "SELECT status FROM alert WHERE source_id = %s", (source,))
        assert rows == [("open",)]
        feed(writer, flow(source, [(2, 700.0)]))
    rows = query(synced_db, "SELECT status, resolved_by FROM alert WHERE source_id = %s", (source,))
    assert rows == [("resolved", "engine")]
