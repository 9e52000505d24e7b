"""The periodic sweeper: silence detection, escalation of unacknowledged critical alerts, and
auto-resolution of alerts nothing has confirmed for a long time.

Escalation and auto-resolution are operator timers: they run on wall time (the `now` of the
sweep) from the alert's latest transition (`transitioned_at`) and latest confirmation
(`confirmed_at`), never on the time readings carry, which may be hours old.

Each sweep is one transaction that first takes a transaction-scoped advisory lock; a second
sweeper running at the same time finds it taken and skips that round, so several sweepers are
safe. Silence takes the source row lock before the rule state lock, the order ingest uses.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row

from alerts import lifecycle
from alerts.engine import load_rules
from alerts.evaluation import is_silent
from alerts.rules import SILENCE_FACTOR_DEFAULT, Rule
from alerts.titles import silence_titles
from ioc.db import libpq_url
from ioc.settings import Settings

log = logging.getLogger("ioc.alerts.sweeper")

_Named = psycopg.Cursor[dict[str, Any]]

SWEEP_LOCK_KEY: Final = 0x10C_A1E7  # the advisory lock all sweepers contend for
SWEEPER_ACTOR: Final = "sweeper"

_SILENCE_CANDIDATES: Final = """
SELECT id, district, last_reading_at, interval_s FROM (
    SELECT s.id, s.district, s.last_reading_at,
           coalesce(s.interval_s, (
               SELECT min((m->>'interval_s')::int)
               FROM series se, sector sc, jsonb_array_elements(sc.metrics) m
               WHERE se.source_id = s.id AND sc.id = s.sector_id AND m->>'id' = se.metric))
           AS interval_s
    FROM source s
    WHERE s.sector_id = %(sector)s AND s.last_reading_at IS NOT NULL
      AND s.last_reading_at < %(now)s::timestamptz - make_interval(secs => %(floor)s)
      AND NOT EXISTS (SELECT 1 FROM alert_state st
                      WHERE st.rule_id = %(rule)s AND st.source_id = s.id
                        AND st.state = 'firing')
) c
WHERE last_reading_at < %(now)s::timestamptz - make_interval(secs => greatest(
    %(floor)s, coalesce(%(after_s)s, %(factor)s * interval_s)))
ORDER BY id
"""


@dataclass(frozen=True)
class SweepConfig:
    """What the sweeper does and when."""

    escalate_after_s: float = 900.0
    escalate_max_level: int = 3
    auto_resolve_s: float = 86_400.0
    min_silence_s: float = 60.0  # never call a source silent sooner than this


@dataclass(frozen=True)
class SweepReport:
    """What one sweep did (`ran` is False when another sweeper held the lock)."""

    ran: bool
    silenced: int = 0
    escalated: int = 0
    auto_resolved: int = 0


def sweep(
    conn: psycopg.Connection[Any], config: SweepConfig, *, now: datetime | None = None
) -> SweepReport:
    """One sweep in its own transaction on `conn` (committed here)."""
    now = now or datetime.now(UTC)
    # `cur` for lifecycle calls and single values, `named` for rows read by column name
    with (
        conn.transaction(),
        conn.cursor() as cur,
        conn.cursor(row_factory=dict_row) as named,
    ):
        cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (SWEEP_LOCK_KEY,))
        row = cur.fetchone()
        if row is None or not row[0]:
            return SweepReport(ran=False)
        rules = load_rules(conn)
        silenced = sum(_silence(cur, named, rule, config, now) for rule in rules.silence())
        escalated = _escalate(cur, named, config, now)
        resolved = _auto_resolve(cur, named, config, now)
    return SweepReport(True, silenced, escalated, resolved)


def _silence(
    cur: lifecycle.Cursor, named: _Named, rule: Rule, config: SweepConfig, now: datetime
) -> int:
    named.execute(
        _SILENCE_CANDIDATES,
        {
            "sector": rule.sector,
            "now": now,
            "floor": config.min_silence_s,
            "rule": rule.id,
            "after_s": rule.params.get("after_s"),
            "factor": float(rule.params.get("factor", SILENCE_FACTOR_DEFAULT)),
        },
    )
    opened = 0
    for candidate in named.fetchall():
        source = candidate["id"]
        after_s = rule.silence_after_s(candidate["interval_s"])
        # the query compared with the allowance already; no interval known: no allowance
        if after_s is None or not rule.covers(source, candidate["district"]):
            continue
        # lock the source (ingest updates it in every batch), then look again
        named.execute(
            "SELECT last_reading_at, coalesce(name, id) AS name FROM source "
            "WHERE id = %s FOR UPDATE",
            (source,),
        )
        locked = named.fetchone()
        if locked is None:
            continue
        last_reading_at: datetime = locked["last_reading_at"]
        if not is_silent(last_reading_at, now, max(after_s, config.min_silence_s)):
            continue
        cur.execute(
            "INSERT INTO alert_state (rule_id, source_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (rule.id, source),
        )
        cur.execute(
            "SELECT state FROM alert_state WHERE rule_id = %s AND source_id = %s FOR UPDATE",
            (rule.id, source),
        )
        state = cur.fetchone()
        if state is not None and state[0] == "firing":
            continue
        silent_s = (now - last_reading_at).total_seconds()
        title, title_en = silence_titles(str(locked["name"]), silent_s)
        cause = lifecycle.Cause(
            key=lifecycle.cause_key(rule.id, source),
            sector=rule.sector,
            severity=rule.severity,
            title=title,
            title_en=title_en,
            rule_id=rule.id,
            rule_kind=rule.kind,
            source_id=source,
        )
        alert_id, _ = lifecycle.fire(
            cur,
            cause,
            serialized=True,  # the alert_state row is locked
            value=None,
            at=now,
            started=last_reading_at,
            detail={
                "rule": rule.name,
                "last_reading_at": last_reading_at.isoformat(),
                "allowed_s": after_s,
            },
        )
        cur.execute(
            "UPDATE alert_state SET state = 'firing', pending_since = %s, alert_id = %s, "
            "updated_at = now() WHERE rule_id = %s AND source_id = %s",
            (last_reading_at, alert_id, rule.id, source),
        )
        opened += 1
    return opened


def _escalate(cur: lifecycle.Cursor, named: _Named, config: SweepConfig, now: datetime) -> int:
    """One level for each open critical alert nobody acted on for `escalate_after_s` of wall
    time since its latest transition (opened, reopened, raised, escalated): never more than
    one level a sweep, and a reopened alert starts counting again."""
    if config.escalate_max_level <= 0:
        return 0
    # status = 'open' and transitioned_at: ix_alert_open_transitioned
    alerts = named.execute(
        "SELECT id, escalation_level, transitioned_at FROM alert "
        "WHERE status = 'open' AND transitioned_at <= %s "
        "AND severity = 'critical' AND escalation_level < %s "
        "ORDER BY id FOR UPDATE SKIP LOCKED",
        (now - timedelta(seconds=config.escalate_after_s), config.escalate_max_level),
    ).fetchall()
    done = 0
    for alert in alerts:
        unattended_s = (now - alert["transitioned_at"]).total_seconds()
        detail = {"unacknowledged_s": round(unattended_s)}
        # the next level counts from this sweep's clock, the one compared with above
        level = alert["escalation_level"] + 1
        if lifecycle.escalate(cur, alert["id"], level, detail=detail, at=now):
            done += 1
    return done


_QUIET_ALERTS: Final = """
SELECT a.id, greatest(a.confirmed_at, a.transitioned_at) AS quiet_since
FROM alert a LEFT JOIN alert_rule r ON r.id = a.rule_id
WHERE ((a.status = 'open' AND a.transitioned_at <= %(cutoff)s)
       OR (a.status = 'acknowledged' AND a.transitioned_at <= %(cutoff)s))
  AND a.confirmed_at <= %(cutoff)s
  AND coalesce(a.rule_kind, '') <> 'silence' AND NOT coalesce(r.manual_resolve, false)
ORDER BY a.id
FOR UPDATE OF a SKIP LOCKED
"""


def _auto_resolve(cur: lifecycle.Cursor, named: _Named, config: SweepConfig, now: datetime) -> int:
    """Resolve active alerts that neither a reading nor a transition confirmed for
    `auto_resolve_s` of wall time (silence alerts and manual-resolve rules excepted)."""
    if config.auto_resolve_s <= 0:
        return 0
    # greatest(confirmed_at, transitioned_at) <= cutoff, spelt so an index on either can serve
    cutoff = now - timedelta(seconds=config.auto_resolve_s)
    alerts = named.execute(_QUIET_ALERTS, {"cutoff": cutoff}).fetchall()
    done = 0
    for alert in alerts:
        quiet_s = round((now - alert["quiet_since"]).total_seconds())
        detail = {"reason": "timeout", "quiet_s": quiet_s}
        if lifecycle.close(cur, alert["id"], actor=SWEEPER_ACTOR, detail=detail):
            done += 1
    return done


def sweep_config(settings: Settings) -> SweepConfig:
    """The sweeper's configuration from the settings."""
    return SweepConfig(
        escalate_after_s=settings.alerts_escalate_after_s,
        escalate_max_level=settings.alerts_escalate_max_level,
        auto_resolve_s=settings.alerts_auto_resolve_s,
        min_silence_s=settings.alerts_min_silence_s,
    )


class Sweeper:
    """Runs `sweep` every `interval_s` on its own connection until stopped."""

    def __init__(self, database_url: str, config: SweepConfig, *, interval_s: float) -> None:
        self._conninfo = libpq_url(database_url)
        self.config = config
        self.interval_s = interval_s
        self.last: SweepReport | None = None

    def sweep_now(self) -> SweepReport:
        """One sweep on a connection of its own."""
        with psycopg.connect(self._conninfo, application_name="ioc-alerts") as conn:
            self.last = sweep(conn, self.config)
        return self.last

    def run(self, stop: threading.Event) -> None:
        """Sweep until `stop` is set; a failed sweep is logged and retried next round."""
        conn: psycopg.Connection[Any] | None = None
        while not stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self._conninfo, application_name="ioc-alerts")
                self.last = sweep(conn, self.config)
                if self.last.silenced or self.last.escalated or self.last.auto_resolved:
                    log.info(
                        "alert sweep",
                        extra={
                            "silenced": self.last.silenced,
                            "escalated": self.last.escalated,
                            "auto_resolved": self.last.auto_resolved,
                        },
                    )
            except psycopg.Error as exc:
                log.warning("alert sweep failed", extra={"error": str(exc).strip()[:300]})
                if conn is not None:
                    conn.close()
                conn = None
            stop.wait(self.interval_s)
        if conn is not None:
            conn.close()
