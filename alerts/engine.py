"""The alert engine inside the ingest batch transaction: readings, rule state and alert changes
commit together, before the MQTT acknowledgement.

Per batch it evaluates only the rules indexed under the batch's (sector, metric) pairs, locks
the matching `alert_state` rows in one order (so concurrent workers feeding one source take
turns), applies the pure evaluation, and writes state back in one statement.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

import psycopg

from alerts import lifecycle
from alerts.evaluation import State, Transition, evaluate_threshold
from alerts.rules import Rule, RuleIndex

log = logging.getLogger("ioc.alerts.engine")

RULES_CHECK_S: Final = 5.0
ENGINE_ACTOR: Final = "engine"

_LOAD_RULES: Final = """
SELECT id, name, kind, sector_id, severity, metric, direction, threshold, inclusive, for_s,
       clear_at, district, source_id, manual_resolve, params
FROM alert_rule WHERE enabled
"""
_RULES_VERSION: Final = "SELECT count(*), max(updated_at), max(id) FROM alert_rule WHERE enabled"
_ENSURE_STATE: Final = """
INSERT INTO alert_state (rule_id, source_id)
SELECT * FROM unnest(%s::int[], %s::text[]) ON CONFLICT DO NOTHING
"""
_LOCK_STATE: Final = """
SELECT s.rule_id, s.source_id, s.state, s.pending_since, s.last_ts, s.last_value, s.alert_id
FROM alert_state s JOIN unnest(%s::int[], %s::text[]) AS k(rule_id, source_id)
  ON s.rule_id = k.rule_id AND s.source_id = k.source_id
ORDER BY s.rule_id, s.source_id
FOR UPDATE OF s
"""
_SAVE_STATE: Final = """
UPDATE alert_state s
SET state = u.state, pending_since = u.pending_since, last_ts = u.last_ts,
    last_value = u.last_value, alert_id = u.alert_id, updated_at = now()
FROM unnest(%s::int[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[],
            %s::float8[], %s::bigint[])
     AS u(rule_id, source_id, state, pending_since, last_ts, last_value, alert_id)
WHERE s.rule_id = u.rule_id AND s.source_id = u.source_id
"""
_SILENCE_RECOVERED: Final = """
UPDATE alert_state s SET state = 'normal', alert_id = NULL, updated_at = now()
FROM (SELECT rule_id, source_id, alert_id FROM alert_state
      WHERE rule_id = ANY(%s) AND source_id = ANY(%s) AND state = 'firing'
      ORDER BY rule_id, source_id FOR UPDATE) AS old
WHERE s.rule_id = old.rule_id AND s.source_id = old.source_id
RETURNING old.rule_id, old.source_id, old.alert_id
"""


class EngineBatch(Protocol):
    """What the engine needs of an ingest batch (`ingest.writer.Batch` has it)."""

    @property
    def readings(self) -> list[tuple[int, str, str, datetime, float]]: ...

    @property
    def items(self) -> Sequence[Any]: ...

    @property
    def events(self) -> Sequence[Any]: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one batch did to alerts (for metrics and tests)."""

    evaluated: int = 0
    opened: int = 0
    updated: int = 0
    resolved: int = 0


def load_rules(conn: psycopg.Connection[Any]) -> RuleIndex:
    """The enabled rules, indexed."""
    rows = conn.execute(_LOAD_RULES).fetchall()
    return RuleIndex(
        Rule(
            id=r[0],
            name=r[1],
            kind=r[2],
            sector=r[3],
            severity=r[4],
            metric=r[5],
            direction=r[6],
            value=r[7],
            inclusive=r[8],
            for_s=r[9],
            clear_at=r[10],
            district=r[11],
            source_id=r[12],
            manual_resolve=r[13],
            params=r[14] or {},
        )
        for r in rows
    )


class AlertEngine:
    """A writer hook (`Writer(hooks=[engine])`): evaluates each batch in its transaction."""

    def __init__(self, *, reopen_window_s: float = 0.0, rules_check_s: float = RULES_CHECK_S):
        self.reopen_window_s = reopen_window_s
        self.rules_check_s = rules_check_s
        self._index: RuleIndex | None = None
        self._version: tuple[Any, ...] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.last: Outcome = Outcome()

    def rules(self, conn: psycopg.Connection[Any]) -> RuleIndex:
        """The rule index, reloaded when the rules changed (checked every few seconds)."""
        now = time.monotonic()
        with self._lock:
            if self._index is not None and now - self._checked < self.rules_check_s:
                return self._index
            version = tuple(conn.execute(_RULES_VERSION).fetchone() or ())
            if self._index is None or version != self._version:
                self._index = load_rules(conn)
                self._version = version
                log.info("alert rules loaded", extra={"rules": len(self._index)})
            self._checked = now
            return self._index

    def invalidate(self) -> None:
        """Reload the rules at the next batch."""
        with self._lock:
            self._index = None

    def __call__(self, conn: psycopg.Connection[Any], batch: EngineBatch) -> None:
        self.last = self.evaluate(conn, batch)

    def evaluate(self, conn: psycopg.Connection[Any], batch: EngineBatch) -> Outcome:
        """Evaluate one batch inside its transaction."""
        index = self.rules(conn)
        if not index:
            return Outcome()
        sectors = {i.source_id: i.sector for i in batch.items if i.source_id and i.sector}
        series: dict[tuple[str, str], list[tuple[datetime, float]]] = defaultdict(list)
        for _, source, metric, ts, value in batch.readings:
            series[(source, metric)].append((ts, value))
        counts = [0, 0, 0]  # opened, updated, resolved
        with conn.cursor() as cur:
            districts = self._districts(cur, index, {s for s, _ in series})
            pairs: dict[tuple[int, str], list[tuple[datetime, float]]] = {}
            for (source, metric), readings in series.items():
                sector = sectors.get(source)
                if sector is None:
                    continue
                for rule in index.thresholds(sector, metric):
                    if rule.covers(source, districts.get(source)):
                        pairs[(rule.id, source)] = readings
            if pairs:
                self._thresholds(cur, index, pairs, counts)
            self._silence_recovered(cur, index, sectors, {s for s, _ in series}, counts)
            self._events(cur, index, batch.events, counts)
        return Outcome(len(pairs), *counts)

    # -- thresholds ------------------------------------------------------------------------

    def _thresholds(
        self,
        cur: lifecycle.Cursor,
        index: RuleIndex,
        pairs: dict[tuple[int, str], list[tuple[datetime, float]]],
        counts: list[int],
    ) -> None:
        keys = sorted(pairs)
        rule_ids = [k[0] for k in keys]
        sources = [k[1] for k in keys]
        cur.execute(_ENSURE_STATE, (rule_ids, sources))
        cur.execute(_LOCK_STATE, (rule_ids, sources))
        saved: list[tuple[int, str, State, int | None]] = []
        touched: tuple[list[int], list[float], list[datetime]] = ([], [], [])
        for rule_id, source, phase, since, last_ts, last_value, alert_id in cur.fetchall():
            rule = index.by_id[rule_id]
            before = State(phase, since, last_ts, last_value)
            after, transitions = evaluate_threshold(rule, before, pairs[(rule_id, source)])
            if after == before:
                continue
            for t in transitions:
                alert_id = self._apply(cur, rule, source, t, alert_id, counts)
            if after.phase == "firing" and alert_id is not None and not transitions:
                assert after.last_ts is not None
                assert after.last_value is not None
                touched[0].append(alert_id)
                touched[1].append(after.last_value)
                touched[2].append(after.last_ts)
            saved.append((rule_id, source, after, alert_id))
        if saved:
            cur.execute(
                _SAVE_STATE,
                (
                    [s[0] for s in saved],
                    [s[1] for s in saved],
                    [s[2].phase for s in saved],
                    [s[2].pending_since for s in saved],
                    [s[2].last_ts for s in saved],
                    [s[2].last_value for s in saved],
                    [s[3] for s in saved],
                ),
            )
        lifecycle.touch(cur, *touched)

    def _apply(
        self,
        cur: lifecycle.Cursor,
        rule: Rule,
        source: str,
        t: Transition,
        alert_id: int | None,
        counts: list[int],
    ) -> int | None:
        detail = {
            "rule": rule.name,
            "operator": rule.operator,
            "threshold": rule.value,
            "clear_at": rule.clear_at,
            "for_s": rule.for_s,
            "since": t.since.isoformat(),
        }
        if t.kind == "fire":
            cause = lifecycle.Cause(
                key=lifecycle.cause_key(rule.id, source),
                sector=rule.sector,
                severity=rule.severity,
                title=f"{rule.metric} {t.value:g} {rule.operator} {rule.value:g} at {source}",
                rule_id=rule.id,
                rule_kind=rule.kind,
                source_id=source,
                metric=rule.metric,
            )
            new_id, what = lifecycle.fire(
                cur,
                cause,
                value=t.value,
                at=t.ts,
                detail=detail,
                reopen_window_s=self.reopen_window_s,
            )
            counts[0 if what == "opened" else 1] += 1
            return new_id
        if alert_id is not None and not rule.manual_resolve:
            detail["value"] = t.value
            detail["at"] = t.ts.isoformat()
            if lifecycle.close(cur, alert_id, actor=ENGINE_ACTOR, detail=detail) is not None:
                counts[2] += 1
            return None
        return alert_id if rule.manual_resolve else None

    # -- silence and events ----------------------------------------------------------------

    @staticmethod
    def _silence_recovered(
        cur: lifecycle.Cursor,
        index: RuleIndex,
        sectors: dict[str, str],
        sources: set[str],
        counts: list[int],
    ) -> None:
        rule_ids = sorted(
            {r.id for s in {sectors.get(x) for x in sources} if s for r in index.silence(s)}
        )
        if not rule_ids or not sources:
            return
        cur.execute(_SILENCE_RECOVERED, (rule_ids, sorted(sources)))
        for rule_id, source, alert_id in cur.fetchall():
            if alert_id is None or index.by_id[rule_id].manual_resolve:
                continue
            if lifecycle.close(
                cur,
                alert_id,
                actor=ENGINE_ACTOR,
                detail={"reason": "readings returned", "source": source},
            ):
                counts[2] += 1

    @staticmethod
    def _events(
        cur: lifecycle.Cursor, index: RuleIndex, events: Iterable[Any], counts: list[int]
    ) -> None:
        for item in events:
            event = item.event
            if event is None or item.event_id is None or item.sector is None:
                continue
            for rule in index.events(item.sector):
                if not rule.matches_event(event.kind, event.severity):
                    continue
                severity = (
                    event.severity if rule.params.get("use_event_severity", True) else rule.severity
                )
                cause = lifecycle.Cause(
                    key=lifecycle.cause_key(rule.id, event_id=item.event_id),
                    sector=item.sector,
                    severity=severity,
                    title=event.title,
                    rule_id=rule.id,
                    rule_kind=rule.kind,
                    source_id=item.source_id,
                    event_id=item.event_id,
                )
                lifecycle.fire(
                    cur,
                    cause,
                    value=None,
                    at=event.occurred_at or item.received_at,
                    detail={"rule": rule.name, "event_kind": event.kind},
                )
                counts[0] += 1

    @staticmethod
    def _districts(
        cur: lifecycle.Cursor, index: RuleIndex, sources: set[str]
    ) -> dict[str, str | None]:
        if not index.uses_districts or not sources:
            return {}
        cur.execute("SELECT id, district FROM source WHERE id = ANY(%s)", (sorted(sources),))
        return {str(i): d for i, d in cur.fetchall()}
