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

from ioc.errors import Conflict, NotFound
from ioc.vocabulary import SEVERITY_RANK

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
    "commented",
    "assigned",
    "published",
    "unpublished",
]
NOTE_KINDS: Final = frozenset({"commented", "assigned", "published", "unpublished"})
"""Events that record what people said or decided about an alert (a comment, an assignee, the
public flag) without changing its condition or status: history, not news for a CAP message."""
NOTIFY_CHANNEL: Final = "ioc_alert_event"
SYSTEM_ACTOR: Final = "system"

Cursor = psycopg.Cursor[Any]


class AlertNotFound(NotFound):
    """No alert with that id."""


class AlertConflict(Conflict):
    """The transition does not apply to the alert's current status."""


@dataclass(frozen=True, slots=True)
class Cause:
    """What an alert is about: a rule group on a source, a silence, or an agency event."""

    key: str
    sector: str
    severity: str
    title: str  # Vietnamese
    rule_id: int | None = None
    rule_kind: str | None = None
    source_id: str | None = None
    metric: str | None = None
    event_id: int | None = None
    title_en: str | None = None


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


# an alert is listed in the public CAP feed when its rule says so (`params.public`); a rule of
# its group that says so publishes it when the alert moves to that rule (never withdraws it)
_PUBLIC_OF: Final = (
    "coalesce((SELECT r.params -> 'public' = 'true'::jsonb FROM alert_rule r WHERE r.id = {}), "
    "false)"
)
_RULE_PUBLIC: Final = _PUBLIC_OF.format("%s")
_KEEP_PUBLIC: Final = "public = public OR " + _PUBLIC_OF.format("%(rule_id)s") + ", "
# a severity's rank in SQL, from the one table of ranks
_RANK_SQL: Final = (
    "CASE {} "
    + " ".join(f"WHEN '{name}' THEN {rank}" for name, rank in SEVERITY_RANK.items())
    + " ELSE -1 END"
)
_INSERT_ALERT: Final = (
    "INSERT INTO alert (cause_key, rule_id, rule_kind, sector_id, source_id, metric, "
    "event_id, severity, peak_severity, title, title_en, last_value, last_seen_at, "
    "condition_started_at, condition_fired_at, detail, public) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
    + _RULE_PUBLIC
    + ") ON CONFLICT (cause_key) WHERE status <> 'resolved' DO NOTHING RETURNING id"
)
_UPDATE_ACTIVE: Final = (
    "UPDATE alert SET occurrences = occurrences + 1, last_value = %s, last_seen_at = %s, "
    "updated_at = now(), confirmed_at = now() "
    "WHERE cause_key = %s AND status <> 'resolved' RETURNING id, severity"
)
# reopen the cause's latest alert whose condition ended (by reading time) shortly before this
# one began; never one a person or the sweeper closed, nor one late readings withdrew
_REOPEN: Final = (
    "UPDATE alert SET status = 'open', resolved_at = NULL, resolved_by = NULL, "
    "acknowledged_at = NULL, acknowledged_by = NULL, escalation_level = 0, "
    "occurrences = occurrences + 1, last_value = %(value)s, last_seen_at = %(at)s, "
    "severity = %(severity)s, peak_severity = CASE WHEN "
    + _RANK_SQL.format("%(severity)s")
    + " > "
    + _RANK_SQL.format("coalesce(peak_severity, severity)")
    + " THEN %(severity)s ELSE coalesce(peak_severity, severity) END, "
    "title = %(title)s, title_en = %(title_en)s, rule_id = %(rule_id)s, "
    + _KEEP_PUBLIC
    + "updated_at = now(), transitioned_at = now(), confirmed_at = now(), "
    "condition_ended_at = NULL "
    "WHERE id = (SELECT id FROM alert WHERE cause_key = %(key)s AND status = 'resolved' "
    "AND NOT retracted AND condition_ended_at BETWEEN %(window)s AND %(started)s "
    "ORDER BY condition_ended_at DESC LIMIT 1) "
    "AND NOT EXISTS (SELECT 1 FROM alert WHERE cause_key = %(key)s AND status <> 'resolved') "
    "RETURNING id"
)
_CHANGE_SEVERITY: Final = (
    "UPDATE alert a SET severity = %(severity)s, peak_severity = CASE WHEN "
    + _RANK_SQL.format("%(severity)s")
    + " > "
    + _RANK_SQL.format("coalesce(old.peak, old.severity)")
    + " THEN %(severity)s ELSE coalesce(old.peak, old.severity) END, "
    "title = %(title)s, title_en = %(title_en)s, rule_id = %(rule_id)s, "
    + _KEEP_PUBLIC
    + "last_value = %(value)s, last_seen_at = greatest(a.last_seen_at, %(at)s), "
    "status = CASE WHEN %(raise)s THEN 'open' ELSE a.status END, "
    "acknowledged_at = CASE WHEN %(raise)s THEN NULL ELSE a.acknowledged_at END, "
    "acknowledged_by = CASE WHEN %(raise)s THEN NULL ELSE a.acknowledged_by END, "
    "updated_at = now(), transitioned_at = now(), confirmed_at = now() "
    "FROM (SELECT id, severity, peak_severity AS peak FROM alert "
    "      WHERE id = %(id)s AND status <> 'resolved' FOR UPDATE) old "
    "WHERE a.id = old.id RETURNING old.severity"
)


def rank(severity: str | None) -> int:
    """Severities in order: info 0, warning 1, critical 2 (none: -1)."""
    return SEVERITY_RANK.get(severity or "", -1)


def severity_change(old: str | None, new: str) -> EventKind:
    """The event of a condition's severity moving from `old` to `new`."""
    return "raised" if rank(new) > rank(old) else "lowered"


def fire(
    cur: Cursor,
    cause: Cause,
    *,
    value: float | None,
    at: datetime,
    started: datetime | None = None,
    detail: dict[str, Any] | None = None,
    reopen_window_s: float = 0.0,
    serialized: bool = False,
) -> tuple[int, EventKind]:
    """The cause's condition holds since `started` and fired at `at` (reading time for
    readings): open an alert, or reopen the cause's alert whose condition ended at most
    `reopen_window_s` before `started`; if the cause already has an active alert, bring its
    severity to the cause's (raised, lowered) or count one more occurrence (updated).
    Returns (alert id, what happened).

    `serialized`: the caller already holds a lock that orders every writer of this cause
    (the rule state rows); otherwise a transaction advisory lock on the cause is taken.
    """
    if not serialized:
        _lock_cause(cur, cause.key)
    started = started or at
    info = {"value": value, "at": at.isoformat(), **(detail or {})}
    if reopen_window_s > 0:
        cur.execute(
            _REOPEN,
            {
                "value": value,
                "at": at,
                "severity": cause.severity,
                "title": cause.title,
                "title_en": cause.title_en,
                "rule_id": cause.rule_id,
                "key": cause.key,
                "window": started - timedelta(seconds=reopen_window_s),
                "started": started,
            },
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
            cause.severity,
            cause.title,
            cause.title_en,
            value,
            at,
            started,
            at,
            Jsonb(info),
            cause.rule_id,
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
    if row[1] != cause.severity and value is not None:
        changed = change_severity(cur, alert_id, cause, value=value, at=at, detail=detail)
        if changed is not None:
            return alert_id, changed
    record(cur, alert_id, "updated", detail=info)
    return alert_id, "updated"


def change_severity(
    cur: Cursor,
    alert_id: int,
    cause: Cause,
    *,
    value: float,
    at: datetime,
    detail: dict[str, Any] | None = None,
) -> EventKind | None:
    """An active alert's condition rose or fell to `cause.severity` (titles follow); a rise
    asks for attention again (status back to open). The event kind, or None if the alert was
    not active or already at that severity."""
    cur.execute(
        "SELECT severity FROM alert WHERE id = %s AND status <> 'resolved' FOR UPDATE", (alert_id,)
    )
    row = cur.fetchone()
    if row is None or row[0] == cause.severity:
        return None
    kind = severity_change(row[0], cause.severity)
    cur.execute(
        _CHANGE_SEVERITY,
        {
            "severity": cause.severity,
            "title": cause.title,
            "title_en": cause.title_en,
            "rule_id": cause.rule_id,
            "value": value,
            "at": at,
            "raise": kind == "raised",
            "id": alert_id,
        },
    )
    if cur.fetchone() is None:
        return None
    info = {"value": value, "at": at.isoformat(), "from": row[0], **(detail or {})}
    record(cur, alert_id, kind, detail=info)
    return kind


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
    ended: datetime | None = None,
    last: tuple[datetime, float] | None = None,
    reset_state: bool = True,
) -> int | None:
    """Resolve an active alert; the event id, or None when it was not active.

    `ended`: the reading time at which its condition ended (None: someone closed it while it
    may still hold); `last`: the last reading while it held. `reset_state`: the rule timers
    restart (a threshold that still holds alerts again after its duration, not stays mute).
    """
    cur.execute(
        "UPDATE alert SET status = 'resolved', resolved_at = now(), resolved_by = %s, "
        "updated_at = now(), condition_ended_at = %s, "
        "last_value = coalesce(%s, last_value), last_seen_at = coalesce(%s, last_seen_at) "
        "WHERE id = %s AND status <> 'resolved' RETURNING id",
        (actor, ended, last[1] if last else None, last[0] if last else None, alert_id),
    )
    if cur.fetchone() is None:
        return None
    if reset_state:
        cur.execute(
            "UPDATE alert_state SET state = 'normal', pending_since = NULL, alert_id = NULL, "
            "updated_at = now() WHERE alert_id = %s "
            "AND rule_id IN (SELECT id FROM alert_rule WHERE kind IN ('threshold', 'deviation'))",
            (alert_id,),
        )
    return record(cur, alert_id, "resolved", actor=actor, detail=detail)


def retract(cur: Cursor, alert_id: int, *, actor: str, detail: dict[str, Any]) -> int | None:
    """Withdraw an alert that late readings showed never held long enough: resolved and marked
    retracted (kept, with its history). The event id, or None if already retracted."""
    cur.execute(
        "UPDATE alert SET status = 'resolved', retracted = true, "
        "resolved_at = coalesce(resolved_at, now()), resolved_by = coalesce(resolved_by, %s), "
        "updated_at = now() WHERE id = %s AND NOT retracted RETURNING id",
        (actor, alert_id),
    )
    if cur.fetchone() is None:
        return None
    return record(cur, alert_id, "retracted", actor=actor, detail=detail)


@dataclass(frozen=True, slots=True)
class Span:
    """A condition's alert as late readings reshaped it (reading times): one or more episodes
    close enough to count as one alert."""

    severity: str
    peak: str
    rule_id: int
    title: str
    title_en: str
    started: datetime
    fired: datetime
    ended: datetime | None
    last: tuple[datetime, float]
    occurrences: int


def revise(cur: Cursor, alert_id: int, span: Span) -> tuple[str, str | None, bool] | None:
    """Bring an alert in line with its span; (old status, old severity, whether its condition
    times changed), or None when it is gone."""
    cur.execute(
        "UPDATE alert a SET severity = %(severity)s, peak_severity = %(peak)s, "
        "rule_id = %(rule_id)s, title = %(title)s, title_en = %(title_en)s, "
        + _KEEP_PUBLIC
        + "condition_started_at = %(started)s, condition_fired_at = %(fired)s, "
        "condition_ended_at = %(ended)s, last_seen_at = %(seen)s, last_value = %(value)s, "
        "occurrences = %(occurrences)s, updated_at = now(), confirmed_at = now() "
        "FROM (SELECT id, status, severity, condition_started_at AS s, condition_fired_at AS f, "
        "      condition_ended_at AS e FROM alert WHERE id = %(id)s FOR UPDATE) old "
        "WHERE a.id = old.id "
        "RETURNING old.status, old.severity, "
        "(old.s, old.f, old.e) IS DISTINCT FROM "
        "(%(started)s::timestamptz, %(fired)s::timestamptz, %(ended)s::timestamptz)",
        {
            "severity": span.severity,
            "peak": span.peak,
            "rule_id": span.rule_id,
            "title": span.title,
            "title_en": span.title_en,
            "started": span.started,
            "fired": span.fired,
            "ended": span.ended,
            "seen": span.last[0],
            "value": span.last[1],
            "occurrences": span.occurrences,
            "id": alert_id,
        },
    )
    row = cur.fetchone()
    return None if row is None else (str(row[0]), row[1], bool(row[2]))


def reactivate(cur: Cursor, alert_id: int, *, detail: dict[str, Any]) -> int | None:
    """Reopen a resolved alert whose condition late readings showed still holds (unless its
    cause has another active alert); the event id, or None."""
    cur.execute(
        "UPDATE alert a SET status = 'open', resolved_at = NULL, resolved_by = NULL, "
        "acknowledged_at = NULL, acknowledged_by = NULL, escalation_level = 0, "
        "updated_at = now(), transitioned_at = now(), confirmed_at = now() "
        "WHERE id = %s AND status = 'resolved' AND NOT retracted AND NOT EXISTS "
        "(SELECT 1 FROM alert b WHERE b.cause_key = a.cause_key AND b.status <> 'resolved') "
        "RETURNING id",
        (alert_id,),
    )
    if cur.fetchone() is None:
        return None
    return record(cur, alert_id, "reopened", detail=detail)


def insert_span(cur: Cursor, cause: Cause, span: Span, *, actor: str) -> int:
    """Record a condition late readings revealed: an alert opened (and resolved at once when
    the condition has ended by now). An active span meeting the cause's active alert revises
    that alert instead. The alert id."""
    info = {"reason": "late readings", "since": span.started.isoformat()}
    ended = span.ended is not None
    cur.execute(
        "INSERT INTO alert (cause_key, rule_id, rule_kind, sector_id, source_id, metric, "
        "severity, peak_severity, title, title_en, last_value, last_seen_at, "
        "condition_started_at, condition_fired_at, condition_ended_at, occurrences, detail, "
        "status, resolved_at, resolved_by, public) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
        "%s, CASE WHEN %s THEN now() END, %s, " + _RULE_PUBLIC + ") "
        "ON CONFLICT (cause_key) WHERE status <> 'resolved' DO NOTHING RETURNING id",
        (
            cause.key,
            span.rule_id,
            cause.rule_kind,
            cause.sector,
            cause.source_id,
            cause.metric,
            span.severity,
            span.peak,
            span.title,
            span.title_en,
            span.last[1],
            span.last[0],
            span.started,
            span.fired,
            span.ended,
            span.occurrences,
            Jsonb(info),
            "resolved" if ended else "open",
            ended,
            actor if ended else None,
            span.rule_id,
        ),
    )
    row = cur.fetchone()
    if row is not None:
        alert_id = int(row[0])
        record(cur, alert_id, "opened", detail=info)
        if ended:  # it began and ended before anyone could know: opened and resolved at once
            record(cur, alert_id, "resolved", actor=actor, detail=info)
        return alert_id
    # an active span meeting the cause's active alert (one late readings did not reach)
    cur.execute(
        "SELECT id FROM alert WHERE cause_key = %s AND status <> 'resolved' FOR UPDATE",
        (cause.key,),
    )
    found = cur.fetchone()
    assert found is not None  # the insert met it
    alert_id = int(found[0])
    revise(cur, alert_id, span)
    record(cur, alert_id, "updated", detail=info)
    return alert_id


def escalate(
    cur: Cursor,
    alert_id: int,
    level: int,
    *,
    detail: dict[str, Any],
    at: datetime | None = None,
) -> int | None:
    """Raise an unacknowledged alert's escalation level at wall time `at` (default: now), from
    which the next level counts; the event id, or None if it moved on."""
    cur.execute(
        "UPDATE alert SET escalation_level = %s, updated_at = now(), "
        "transitioned_at = coalesce(%s, now()) "
        "WHERE id = %s AND status = 'open' AND escalation_level < %s RETURNING id",
        (level, at, alert_id, level),
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


def comment(cur: Cursor, alert_id: int, *, actor: str, text: str) -> int:
    """An operator's note on an alert, in any status, listed in its history; the event id."""
    _status(cur, alert_id)
    return record(cur, alert_id, "commented", actor=actor, detail={"text": text})


def assign(cur: Cursor, alert_id: int, *, actor: str, to: str | None) -> int | None:
    """Hand an active alert to an agency or a person (None: nobody); the event id, or None when
    it was assigned so already."""
    status = _status(cur, alert_id)
    if status == "resolved":
        raise AlertConflict(f"alert {alert_id} is resolved; only an active alert is assigned")
    cur.execute("SELECT assigned_to FROM alert WHERE id = %s", (alert_id,))  # locked above
    row = cur.fetchone()
    before = None if row is None else row[0]
    if before == to:
        return None
    cur.execute(
        "UPDATE alert SET assigned_to = %s, updated_at = now() WHERE id = %s", (to, alert_id)
    )
    return record(cur, alert_id, "assigned", actor=actor, detail={"to": to, "from": before})


def set_public(cur: Cursor, alert_id: int, *, actor: str, public: bool) -> int | None:
    """List an alert in the public CAP feed or withdraw it; the event id, or None when it was
    so already."""
    _status(cur, alert_id)
    cur.execute(
        "UPDATE alert SET public = %s, updated_at = now() WHERE id = %s AND public <> %s "
        "RETURNING id",
        (public, alert_id, public),
    )
    if cur.fetchone() is None:
        return None
    return record(cur, alert_id, "published" if public else "unpublished", actor=actor)
