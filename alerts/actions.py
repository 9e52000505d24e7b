"""What operators do to alerts: acknowledge, resolve, comment, assign, publish.

Each service is the one implementation the API and the CLI call: a plain function on a psycopg
connection whose transaction the caller owns. It changes the alert through `alerts.lifecycle`
(which appends the `alert_event` row and NOTIFYs it) and writes the audit row in the same
transaction, so either both are kept or neither.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg

from alerts import lifecycle
from ioc.audit import record_audit

MAX_TEXT_CHARS: Final = 2000
"""The longest comment or note an operator may write."""
MAX_ASSIGNEE_CHARS: Final = 200


def _target(alert_id: int) -> str:
    return f"alert:{alert_id}"


def _note(note: str | None) -> dict[str, Any]:
    return {"note": note} if note else {}


def acknowledge(
    conn: psycopg.Connection[Any], *, alert_id: int, actor: str, note: str | None = None
) -> int:
    """Take an open alert (AlertConflict unless open); the alert event id."""
    event_id = lifecycle.acknowledge(conn, alert_id, actor=actor, note=note)
    record_audit(
        conn,
        actor=actor,
        action="alert.acknowledge",
        target=_target(alert_id),
        detail={"event_id": event_id, **_note(note)},
    )
    return event_id


def resolve(
    conn: psycopg.Connection[Any], *, alert_id: int, actor: str, note: str | None = None
) -> int:
    """Close an active alert (AlertConflict when already resolved); the alert event id."""
    event_id = lifecycle.resolve(conn, alert_id, actor=actor, note=note)
    record_audit(
        conn,
        actor=actor,
        action="alert.resolve",
        target=_target(alert_id),
        detail={"event_id": event_id, **_note(note)},
    )
    return event_id


def comment(conn: psycopg.Connection[Any], *, alert_id: int, actor: str, text: str) -> int:
    """Add an operator's note to an alert's history (any status); the alert event id."""
    with conn.cursor() as cur:
        event_id = lifecycle.comment(cur, alert_id, actor=actor, text=text)
    record_audit(
        conn,
        actor=actor,
        action="alert.comment",
        target=_target(alert_id),
        detail={"event_id": event_id, "text": text},
    )
    return event_id


def assign(
    conn: psycopg.Connection[Any], *, alert_id: int, actor: str, to: str | None
) -> int | None:
    """Hand an active alert to an agency or a person, or to nobody (`to` None); the alert event
    id, or None (and no audit row) when it was assigned so already."""
    with conn.cursor() as cur:
        event_id = lifecycle.assign(cur, alert_id, actor=actor, to=to)
    if event_id is not None:
        record_audit(
            conn,
            actor=actor,
            action="alert.assign",
            target=_target(alert_id),
            detail={"event_id": event_id, "to": to},
        )
    return event_id


def publish(
    conn: psycopg.Connection[Any], *, alert_id: int, actor: str, public: bool
) -> int | None:
    """List an alert in the public CAP feed (`public` True) or withdraw it; the alert event id,
    or None (and no audit row) when it was so already."""
    with conn.cursor() as cur:
        event_id = lifecycle.set_public(cur, alert_id, actor=actor, public=public)
    if event_id is not None:
        record_audit(
            conn,
            actor=actor,
            action="alert.publish",
            target=_target(alert_id),
            detail={"event_id": event_id, "public": public},
        )
    return event_id
