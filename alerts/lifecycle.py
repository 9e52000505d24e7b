"""Alert lifecycle: open, update, reopen, escalate, acknowledge, resolve; each transition appends
an `alert_event` row and NOTIFYs `ioc_alert_event` with its id, in the caller's transaction.

At most one alert per cause is active (open or acknowledged): a partial unique index guarantees
it, and every path that may activate an alert first takes a transaction-scoped advisory lock on
the cause, so concurrent workers serialize instead of colliding on that index.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

import psycopg
from psycopg.types.json import Jsonb

from ioc.errors import IocError

EventKind = Literal[
    "opened",
    "updated",
    "raised",
    "lowered",
    "escalated",
    "acknowledged",
    "resolved",
    "reopened",
    "retracted",
]
NOTIFY_CHANNEL: Final = "ioc_alert_event"
SYSTEM_ACTOR: Final = "system"

Cursor = psycopg.Cursor[Any]


class AlertNotFound(IocError):
    """No alert with that id."""


class AlertConflict(IocError):
    """The transition does not apply to the alert's current status."""


@dataclass(frozen=True, slots=True)
class Cause:
    """What an alert is about: a rule on a source, or an agency event."""

    key: str
    sector: str
    severity: str
    title: str
    rule_id: int | None = None
    rule_kind: str | None = None
    source_id: str | None = None
    metric: str | None = None
    event_id: int | None = None


def cause_key(rule_id: int, source_id: str | None = None, event_id: int | None = None) -> str:
    """The key of one cause: `rule:R:source:S` or `rule:R:event:E`."""
    if event_id is not None:
        return f"rule:{rule_id}:event:{event_id}"
    return f"rule:{rule_id}:source:{source_id}"


def record(
    cur: Cursor,
    alert_id: int,
    kind: EventKind,
    *,
    actor: str = SYSTEM_ACTOR,
    detail: dict[str, Any] | None = None,
) -> int:
    """Append an alert event (with the alert's current severity and status) and NOTIFY it."""
    cur.execute(
        "WITH e AS (INSERT INTO alert_event (alert_id, kind, severity, status, actor, detail) "
        "SELECT id, %s, severity, status, %s, %s FROM alert WHERE id = %s RETURNING id) "
        "SELECT id, pg_notify(%s, id::text) FROM e",
        (kind, actor, Jsonb(detail or {}), alert_id, NOTIFY_CHANNEL),
    )
    row = cur.fetchone()
    if row is None:
        raise AlertNotFound(f"alert {alert_id} does not exist")
    return int(row[0])


def _lock_cause(cur: Cursor, key: str) -> None:
    cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))


_INSERT_ALERT: Final = (
    "INSERT INTO alert (cause_key, rule_id, rule_kind, sector_id, source_id, metric, "
    "event_id, severity, title, last_value, last_seen_at, detail) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (cause_key) WHERE status <> 'resolved' DO NOTHING RETURNING id"
)
_UPDATE_ACTIVE: Final = (
    "UPDATE alert SET occurrences = occurrences + 1, last_value = %s, last_seen_at = %s, "
    "updated_at = now(), confirmed_at = now() WHERE cause_key = %s AND status <> 'resolved' RETURNING id"
)
_REOPEN: Final = (
    "UPDATE alert SET status = 'open', resolved_at = NULL, resolved_by = NULL, "
    "acknowledged_at = NULL, acknowledged_by = NULL, escalation_level = 0, "
    "occurrences = occurrences + 1, last_value = %s, last_seen_at = %s, updated_at = now(), "
    "transitioned_at = now(), confirmed_at = now(), condition_ended_at = NULL "
    "WHERE id = (SELECT id FROM alert WHERE cause_key = %s AND status = 'resolved' "
    "AND resolved_at >= %s ORDER BY resolved_at DESC LIMIT 1) "
    "AND NOT EXISTS (SELECT 1 FROM alert WHERE cause_key = %s AND status <> 'resolved') "
    "RETURNING id"
)


def fire(
    cur: Cursor,
    cause: Cause,
    *,
    value: float | None,
    at: datetime,
    detail: dict[str, Any] | None = None,
    reopen_window_s: float = 0.0,
    serialized: bool = False,
) -> tuple[int, EventKind]:
    """The cause's condition holds: update its active alert, reopen one resolved within
    `reopen_window_s`, or open a new one. Returns (alert id, what happened).

    `serialized`: the caller already holds a lock that orders every writer of this cause
    (the rule state row); otherwise a transaction advisory lock on the cause is taken.
    """
    if not serialized:
        _lock_cause(cur, cause.key)
    info = {"value": value, "at": at.isoformat(), **(detail or {})}
    if reopen_window_s > 0:
        cur.execute(
            _REOPEN,
            (value, at, cause.key, at - timedelta(seconds=reopen_window_s), cause.key),
        )
        row = cur.fetchone()
        if row is not None:
            alert_id = int(row[0])
            record(cur, alert_id, "reopened", detail=info)
            return alert_id, "reopened"
    cur.execute(
        _INSERT_ALERT,
        (
            cause.key,
            cause.rule_id,
            cause.rule_kind,
            cause.sector,
            cause.source_id,
            cause.metric,
            cause.event_id,
            cause.severity,
            cause.title,
            value,
            at,
            Jsonb(info),
        ),
    )
    row = cur.fetchone()
    if row is not None:
        alert_id = int(row[0])
        record(cur, alert_id, "opened", detail=info)
        return alert_id, "opened"
    cur.execute(_UPDATE_ACTIVE, (value, at, cause.key))
    row = cur.fetchone()
    assert row is not None  # the insert met this cause's active alert, locked against change
    alert_id = int(row[0])
    record(cur, alert_id, "updated", detail=info)
    return alert_id, "updated"


def touch(cur: Cursor, alert_ids: list[int], values: list[float], seen: list[datetime]) -> None:
    """Record the latest value of alerts whose condition still holds (no event: not news)."""
    if not alert_ids:
        return
    cur.execute(
        "UPDATE alert a SET last_value = u.value, last_seen_at = greatest(a.last_seen_at, u.seen), "
        "confirmed_at = now() "
        "FROM unnest(%s::bigint[], %s::float8[], %s::timestamptz[]) AS u(id, value, seen) "
        "WHERE a.id = u.id AND a.status <> 'resolved'",
        (alert_ids, values, seen),
    )


def close(
    cur: Cursor,
    alert_id: int,
    *,
    actor: str = SYSTEM_ACTOR,
    detail: dict[str, Any] | None = None,
) -> int | None:
    """Resolve an active alert; the event id, or None when it was not active."""
    cur.execute(
        "UPDATE alert SET status = 'resolved', resolved_at = now(), resolved_by = %s, "
        "updated_at = now() WHERE id = %s AND status <> 'resolved' RETURNING id",
        (actor, alert_id),
    )
    if cur.fetchone() is None:
        return None
    # a threshold that still holds should alert again after its duration, not stay mute
    cur.execute(
        "UPDATE alert_state SET state = 'normal', pending_since = NULL, alert_id = NULL, "
        "updated_at = now() WHERE alert_id = %s "
        "AND rule_id IN (SELECT id FROM alert_rule WHERE kind IN ('threshold', 'deviation'))",
        (alert_id,),
    )
    return record(cur, alert_id, "resolved", actor=actor, detail=detail)


def escalate(cur: Cursor, alert_id: int, level: int, *, detail: dict[str, Any]) -> int | None:
    """Raise an unacknowledged alert's escalation level; the event id, or None if it moved on."""
    cur.execute(
        "UPDATE alert SET escalation_level = %s, updated_at = now(), transitioned_at = now() "
        "WHERE id = %s AND status = 'open' AND escalation_level < %s RETURNING id",
        (level, alert_id, level),
    )
    if cur.fetchone() is None:
        return None
    return record(cur, alert_id, "escalated", detail={"level": level, **detail})


# -- service functions for the API -----------------------------------------------------------


def _status(cur: Cursor, alert_id: int) -> str:
    # rule state before alert: the order the engine locks them in
    cur.execute("SELECT 1 FROM alert_state WHERE alert_id = %s FOR UPDATE", (alert_id,))
    cur.execute("SELECT status FROM alert WHERE id = %s FOR UPDATE", (alert_id,))
    row = cur.fetchone()
    if row is None:
        raise AlertNotFound(f"alert {alert_id} does not exist")
    return str(row[0])


def acknowledge(
    conn: psycopg.Connection[Any], alert_id: int, *, actor: str, note: str | None = None
) -> int:
    """An operator takes an open alert; the alert event id. Caller owns the transaction."""
    with conn.cursor() as cur:
        status = _status(cur, alert_id)
        if status != "open":
            raise AlertConflict(f"alert {alert_id} is {status}, not open")
        cur.execute(
            "UPDATE alert SET status = 'acknowledged', acknowledged_at = now(), "
            "acknowledged_by = %s, updated_at = now(), transitioned_at = now() WHERE id = %s",
            (actor, alert_id),
        )
        return record(cur, alert_id, "acknowledged", actor=actor, detail=_note(note))


def resolve(
    conn: psycopg.Connection[Any], alert_id: int, *, actor: str, note: str | None = None
) -> int:
    """An operator resolves an active alert; the alert event id. Caller owns the transaction."""
    with conn.cursor() as cur:
        status = _status(cur, alert_id)
        if status == "resolved":
            raise AlertConflict(f"alert {alert_id} is already resolved")
        event_id = close(cur, alert_id, actor=actor, detail=_note(note))
        assert event_id is not None  # the row is locked and active
        return event_id


def _note(note: str | None) -> dict[str, Any]:
    return {"note": note} if note else {}
