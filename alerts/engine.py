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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, Protocol

import psycopg

from alerts import lifecycle
from alerts.evaluation import State, Transition, evaluate
from alerts.rules import Rule, RuleIndex

log = logging.getLogger("ioc.alerts.engine")

RULES_CHECK_S: Final = 5.0
DISTRICT_CACHE_S: Final = 60.0
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
_STATE_COLUMNS: Final = (
    "s.rule_id, s.source_id, s.state, s.pending_since, s.last_ts, s.last_value, s.alert_id, "
    "s.stat_mean, s.stat_var, s.stat_samples"
)
_LOCK_STATE: Final = f"""
SELECT {_STATE_COLUMNS}
FROM alert_state s JOIN unnest(%s::int[], %s::text[]) AS k(rule_id, source_id)
  ON s.rule_id = k.rule_id AND s.source_id = k.source_id
ORDER BY s.rule_id, s.source_id
FOR UPDATE OF s
"""
_LOCK_ACTIVE: Final = f"""
SELECT {_STATE_COLUMNS}
FROM alert_state s JOIN unnest(%s::int[], %s::text[]) AS k(rule_id, source_id)
  ON s.rule_id = k.rule_id AND s.source_id = k.source_id
WHERE s.state <> 'normal'
ORDER BY s.rule_id, s.source_id
FOR UPDATE OF s
"""
_STORED_SINCE: Final = """
SELECT r.series_id, r.ts FROM reading r
JOIN unnest(%s::int[], %s::timestamptz[]) AS k(series_id, since)
  ON r.series_id = k.series_id AND r.ts >= k.since
"""
_SAVE_STATE: Final = """
UPDATE alert_state s
SET state = u.state, pending_since = u.pending_since, last_ts = u.last_ts,
    last_value = u.last_value, alert_id = u.alert_id, stat_mean = u.stat_mean,
    stat_var = u.stat_var, stat_samples = u.stat_samples, updated_at = now()
FROM unnest(%s::int[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[],
            %s::float8[], %s::bigint[], %s::float8[], %s::float8[], %s::int[])
     AS u(rule_id, source_id, state, pending_since, last_ts, last_value, alert_id, stat_mean,
          stat_var, stat_samples)
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

    @property
    def source_sectors(self) -> Mapping[str, str]:
        """The registered sector of each source in the batch."""
        ...


@dataclass(slots=True)
class _Series:
    """One series' readings in a batch."""

    sid: int
    readings: list[tuple[datetime, float]]


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
        self._district_of: dict[str, str | None] = {}
        self._districts_at = 0.0
        self.last: Outcome = Outcome()
        self.failures = 0

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
        """Evaluate in a savepoint of the batch transaction. A lost connection or a deadlock
        propagates (the writer retries the whole batch); any other failure of the engine is
        logged and counted, and the batch's readings are stored without alert evaluation
        rather than refused."""
        try:
            with conn.transaction():
                self.last = self.evaluate(conn, batch)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except Exception:
            self.failures += 1
            log.exception("alert evaluation failed; the batch is stored without it")

    def evaluate(self, conn: psycopg.Connection[Any], batch: EngineBatch) -> Outcome:
        """Evaluate one batch inside its transaction."""
        index = self.rules(conn)
        if not index:
            return Outcome()
        # the source's registered sector, never the topic of one of its messages
        sectors = batch.source_sectors
        series: dict[tuple[str, str], _Series] = {}
        for sid, source, metric, ts, value in batch.readings:
            view = series.get((source, metric))
            if view is None:
                series[(source, metric)] = _Series(sid, [(ts, value)])
            else:
                view.readings.append((ts, value))
        counts = [0, 0, 0]  # opened, updated, resolved
        with conn.cursor() as cur:
            districts = self._districts(cur, index, {s for s, _ in series})
            pairs: dict[tuple[int, str], _Series] = {}
            breaching: set[tuple[int, str]] = set()
            for (source, metric), view in series.items():
                sector = sectors.get(source)
                if sector is None:
                    continue
                rules = index.thresholds(sector, metric, source, districts.get(source))
                if not rules:
                    continue
                values = [v for _, v in view.readings]
                low, high = min(values), max(values)
                for rule in rules:
                    pairs[(rule.id, source)] = view
                    # a deviation rule's statistics move with every reading
                    if rule.kind == "deviation" or rule.breached(
                        high if rule.direction == "above" else low
                    ):
                        breaching.add((rule.id, source))
            if pairs:
                self._thresholds(cur, index, pairs, breaching, counts)
            self._silence_recovered(cur, index, sectors, {s for s, _ in series}, counts)
            self._events(cur, index, batch.events, counts)
        return Outcome(len(pairs), *counts)

    # -- thresholds ------------------------------------------------------------------------

    def _thresholds(
        self,
        cur: lifecycle.Cursor,
        index: RuleIndex,
        pairs: dict[tuple[int, str], _Series],
        breaching: set[tuple[int, str]],
        counts: list[int],
    ) -> None:
        """Evaluate the pairs that can change: those breached in this batch and those whose
        state is pending or firing. A quiet pair in normal state stays normal: no I/O."""
        keys = sorted(pairs)
        cur.execute(_LOCK_ACTIVE, ([k[0] for k in keys], [k[1] for k in keys]))
        rows = {(r[0], r[1]): r for r in cur.fetchall()}
        need = sorted(breaching - rows.keys())
        if need:
            rule_ids, sources = [k[0] for k in need], [k[1] for k in need]
            cur.execute(_ENSURE_STATE, (rule_ids, sources))
            cur.execute(_LOCK_STATE, (rule_ids, sources))
            rows.update({(r[0], r[1]): r for r in cur.fetchall()})
        seen = self._seen_before(cur, [pairs[k] for k, r in rows.items() if r[2] == "normal"])
        saved: list[tuple[int, str, State, int | None]] = []
        touched: tuple[list[int], list[float], list[datetime]] = ([], [], [])
        for key in sorted(rows):
            rule_id, source, phase, since, last_ts, last_value, alert_id = rows[key][:7]
            rule = index.by_id[rule_id]
            view = pairs[key]
            mean, var, samples = rows[key][7:10]
            before = State(phase, since, last_ts, last_value, mean, var, samples)
            watermark = seen.get(view.sid) if phase == "normal" else None
            start = before
            if watermark is not None and (last_ts is None or watermark > last_ts):
                start = replace(before, last_ts=watermark)
            after, transitions = evaluate(rule, start, view.readings)
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
                    [s[2].mean for s in saved],
                    [s[2].var for s in saved],
                    [s[2].samples for s in saved],
                ),
            )
        lifecycle.touch(cur, *touched)

    @staticmethod
    def _seen_before(cur: lifecycle.Cursor, views: list[_Series]) -> dict[int, datetime]:
        """Per series, the newest reading stored before this batch and not older than it.

        A pair in normal state keeps no reading clock of its own (quiet batches write
        nothing), so this is what tells a late breaching reading from a new one.
        """
        if not views:
            return {}
        unique = {v.sid: v for v in views}
        sids = sorted(unique)
        cur.execute(_STORED_SINCE, (sids, [min(unique[s].readings)[0] for s in sids]))
        mine = {sid: {ts for ts, _ in unique[sid].readings} for sid in sids}
        out: dict[int, datetime] = {}
        for sid, ts in cur.fetchall():
            if ts in mine[sid]:
                continue  # this batch's own row (or the same reading again)
            if sid not in out or ts > out[sid]:
                out[sid] = ts
        return out

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
                title=(
                    f"{rule.metric} {t.value:g} {rule.operator} {rule.value:g} at {source}"
                    if rule.kind == "threshold"
                    else f"{rule.metric} {t.value:g} far from its recent mean at {source}"
                ),
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
                serialized=True,  # the alert_state row of (rule, source) is locked
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
        sectors: Mapping[str, str],
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

    def _districts(
        self, cur: lifecycle.Cursor, index: RuleIndex, sources: set[str]
    ) -> dict[str, str | None]:
        """Districts of the batch's sources, when some rule is scoped to a district (cached
        for `DISTRICT_CACHE_S`: a source moved to another district is seen within that)."""
        if not index.uses_districts or not sources:
            return {}
        now = time.monotonic()
        if now - self._districts_at > DISTRICT_CACHE_S:
            self._district_of.clear()
            self._districts_at = now
        missing = sorted(s for s in sources if s not in self._district_of)
        if missing:
            cur.execute("SELECT id, district FROM source WHERE id = ANY(%s)", (missing,))
            self._district_of.update({str(i): d for i, d in cur.fetchall()})
        return self._district_of
