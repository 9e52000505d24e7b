"""Operator services on alerts the engine opened: each change, its history event (NOTIFYed)
and its audit row land together, or not at all."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from alerts import actions
from alerts.lifecycle import NOTIFY_CHANNEL, AlertConflict, AlertNotFound
from ioc.db import libpq_url
from tests.support.alerts import engine_writer, feed
from tests.support.ingest import make_item, query, unique

pytestmark = pytest.mark.timeout(120)


def open_alert(db_url: str, *, public_rule: bool = False) -> int:
    """An alert the engine opens on a reading of fatal accidents (critical at once)."""
    if public_rule:
        query(
            db_url,
            "UPDATE alert_rule SET params = params || '{\"public\": true}' "
            "WHERE kind = 'threshold' AND metric = 'fatal_accidents'",
        )
    source = unique("cam-nga-tu")
    at = int((datetime.now(UTC) - timedelta(minutes=5)).timestamp() * 1000)
    with engine_writer(db_url) as writer:
        feed(
            writer,
            make_item(
                f"ioc/v1/traffic/{source}/telemetry", {"ts": at, "values": {"fatal_accidents": 2}}
            ),
        )
    ((alert_id,),) = query(db_url, "SELECT id FROM alert WHERE source_id = %s", (source,))
    return int(alert_id)


@pytest.fixture
def conn(synced_db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(libpq_url(synced_db)) as c:
        yield c


def history(db_url: str, alert_id: int) -> list[tuple[Any, ...]]:
    return query(
        db_url,
        "SELECT kind, status, actor, detail FROM alert_event WHERE alert_id = %s ORDER BY id",
        (alert_id,),
    )


def audit(db_url: str, alert_id: int) -> list[tuple[Any, ...]]:
    return query(
        db_url,
        "SELECT actor, action, detail FROM audit_log WHERE target = %s ORDER BY id",
        (f"alert:{alert_id}",),
    )


def test_each_action_appends_its_event_and_its_audit_row(
    synced_db: str, conn: psycopg.Connection[Any]
) -> None:
    alert_id = open_alert(synced_db)
    who = "key:ab12:Trực ban"
    ack = actions.acknowledge(conn, alert_id=alert_id, actor=who, note="đang xử lý")
    said = actions.comment(conn, alert_id=alert_id, actor=who, text="Đội CSGT đã tới")
    given = actions.assign(conn, alert_id=alert_id, actor=who, to="Phòng CSGT")
    shown = actions.publish(conn, alert_id=alert_id, actor=who, public=True)
    done = actions.resolve(conn, alert_id=alert_id, actor=who)
    conn.commit()
    assert len({ack, said, given, shown, done}) == 5
    assert history(synced_db, alert_id)[1:] == [
        ("acknowledged", "acknowledged", who, {"note": "đang xử lý"}),
        ("commented", "acknowledged", who, {"text": "Đội CSGT đã tới"}),
        ("assigned", "acknowledged", who, {"to": "Phòng CSGT", "from": None}),
        ("published", "acknowledged", who, {}),
        ("resolved", "resolved", who, {}),
    ]
    assert [(actor, action) for actor, action, _ in audit(synced_db, alert_id)] == [
        (who, "alert.acknowledge"),
        (who, "alert.comment"),
        (who, "alert.assign"),
        (who, "alert.publish"),
        (who, "alert.resolve"),
    ]
    details = [d for _, _, d in audit(synced_db, alert_id)]
    assert details[0] == {"event_id": ack, "note": "đang xử lý"}
    assert details[1] == {"event_id": said, "text": "Đội CSGT đã tới"}
    assert details[2] == {"event_id": given, "to": "Phòng CSGT"}
    assert details[3] == {"event_id": shown, "public": True}
    assert query(
        synced_db, "SELECT status, assigned_to, public FROM alert WHERE id = %s", (alert_id,)
    ) == [("resolved", "Phòng CSGT", True)]


def test_a_refused_action_leaves_no_event_and_no_audit_row(
    synced_db: str, conn: psycopg.Connection[Any]
) -> None:
    alert_id = open_alert(synced_db)
    actions.resolve(conn, alert_id=alert_id, actor="op")
    conn.commit()
    before = (history(synced_db, alert_id), audit(synced_db, alert_id))
    for act in (
        lambda: actions.acknowledge(conn, alert_id=alert_id, actor="op"),
        lambda: actions.resolve(conn, alert_id=alert_id, actor="op"),
        lambda: actions.assign(conn, alert_id=alert_id, actor="op", to="someone"),
    ):
        with pytest.raises(AlertConflict):
            act()
        conn.rollback()
    with pytest.raises(AlertNotFound):
        actions.comment(conn, alert_id=alert_id + 1000, actor="op", text="x")
    conn.rollback()
    assert (history(synced_db, alert_id), audit(synced_db, alert_id)) == before
    # a resolved alert still takes comments and may be withdrawn from the public feed
    actions.comment(conn, alert_id=alert_id, actor="op", text="hậu kiểm xong")
    conn.commit()
    assert history(synced_db, alert_id)[-1][0] == "commented"


def test_assigning_or_publishing_to_the_same_value_changes_nothing(
    synced_db: str, conn: psycopg.Connection[Any]
) -> None:
    alert_id = open_alert(synced_db)
    assert actions.assign(conn, alert_id=alert_id, actor="op", to="A") is not None
    assert actions.assign(conn, alert_id=alert_id, actor="op", to="A") is None
    assert actions.assign(conn, alert_id=alert_id, actor="op", to=None) is not None
    assert actions.publish(conn, alert_id=alert_id, actor="op", public=False) is None
    conn.commit()
    assert [k for k, *_ in history(synced_db, alert_id)] == ["opened", "assigned", "assigned"]
    assert history(synced_db, alert_id)[-1][3] == {"to": None, "from": "A"}
    assert len(audit(synced_db, alert_id)) == 2


def test_an_alert_of_a_public_rule_is_public_from_the_start(synced_db: str) -> None:
    private = open_alert(synced_db)
    public = open_alert(synced_db, public_rule=True)
    rows = query(synced_db, "SELECT id, public FROM alert WHERE id IN (%s, %s)", (private, public))
    assert dict(rows) == {private: False, public: True}


def test_the_events_are_notified_on_commit(synced_db: str, conn: psycopg.Connection[Any]) -> None:
    alert_id = open_alert(synced_db)
    with psycopg.connect(libpq_url(synced_db), autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        said = actions.comment(conn, alert_id=alert_id, actor="op", text="một")
        given = actions.assign(conn, alert_id=alert_id, actor="op", to="B")
        conn.commit()
        got = [int(n.payload) for n in listener.notifies(timeout=10, stop_after=2)]
    assert got == [said, given]


def test_an_alert_rising_to_a_public_rule_of_its_group_becomes_public(synced_db: str) -> None:
    query(
        synced_db,
        "UPDATE alert_rule SET params = params || '{\"public\": true}' "
        "WHERE kind = 'threshold' AND metric = 'salinity' AND severity = 'critical'",
    )
    source = unique("tram-man")
    t0 = datetime.now(UTC) - timedelta(hours=2)

    def readings(value: float, start: int) -> list[dict[str, Any]]:
        return [
            {
                "ts": int((t0 + timedelta(minutes=m)).timestamp() * 1000),
                "values": {"salinity": value},
            }
            for m in range(start, start + 16)
        ]

    topic = f"ioc/v1/water/{source}/telemetry"
    state = "SELECT severity, public FROM alert WHERE source_id = %s"
    with engine_writer(synced_db) as writer:
        feed(writer, make_item(topic, readings(2.0, 0)))
        assert query(synced_db, state, (source,)) == [("warning", False)]
        feed(writer, make_item(topic, readings(5.0, 16)))
        assert query(synced_db, state, (source,)) == [("critical", True)]
        feed(writer, make_item(topic, readings(2.0, 32)))
    # lowered again, it stays public: published alerts are withdrawn by people only
    assert query(synced_db, state, (source,)) == [("warning", True)]
