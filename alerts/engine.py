"""The alert engine inside the ingest batch transaction: readings, rule state and alert changes
commit together, before the MQTT acknowledgement.

Per batch it looks only at the rule groups indexed under the batch's (sector, metric) pairs and
only at readings the batch stored for the first time (a redelivered reading changes nothing).
It locks the groups' `alert_state` rows in one order (so concurrent workers feeding one source
take turns). Readings newer than everything stored for their series run the rules on from the
saved state; a reading older than one already stored (late, within the lateness horizon) makes
the engine judge the stored readings again from the last reading before it that cleared the
condition, and reconcile the alerts of that stretch with what it finds: which alerts exist, and
their condition times by reading time, do not depend on the order readings arrived in.
"""

from __future__ import annotations

import logging
import operator
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import psycopg
from psycopg.rows import class_row, dict_row

from alerts import lifecycle
from alerts.evaluation import Change, Phase, Reading, State, run_group
from alerts.rules import Group, Rule, RuleIndex
from alerts.titles import MetricText, deviation_titles, threshold_titles

log = logging.getLogger("ioc.alerts.engine")

RULES_CHECK_S: Final = 5.0
DISTRICT_CACHE_S: Final = 60.0
ENGINE_ACTOR: Final = "engine"
LATENESS_S: Final = 86_400.0
MAX_CHAIN: Final = 16
_VALUE: Final = operator.itemgetter(
    1
)  # alerts followed back through reopen windows before giving up

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
# every rule state of the batch's sources (rows exist only for groups that were ever judged)
_LOCK_SOURCES: Final = f"""
SELECT {_STATE_COLUMNS}
FROM alert_state s WHERE s.source_id = ANY(%s::text[])
ORDER BY s.rule_id, s.source_id
FOR UPDATE OF s
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
# the newest reading before `lo` (not older than the horizon) after which the group is normal
# whatever came before; whether readings lie in that range, and before it
_ANCHOR: Final = """
SELECT (SELECT max(ts) FROM reading WHERE series_id = %(sid)s AND ts >= %(floor)s
          AND ts < %(lo)s AND ({reset})) AS anchor,
       EXISTS (SELECT 1 FROM reading WHERE series_id = %(sid)s AND ts >= %(floor)s
               AND ts < %(lo)s) AS inside,
       EXISTS (SELECT 1 FROM reading WHERE series_id = %(sid)s AND ts < %(floor)s) AS older
"""
# the earliest start of the cause's alerts that may join a condition after `base`
_CHAINED: Final = """
SELECT min(condition_started_at) FROM alert
WHERE cause_key = %s AND NOT retracted AND condition_started_at <= %s
  AND coalesce(condition_ended_at, 'infinity') >= %s
"""
# which of these causes have an alert whose condition overlaps the given reading-time range
_COVERED: Final = """
SELECT DISTINCT a.cause_key FROM alert a
JOIN unnest(%s::text[], %s::timestamptz[], %s::timestamptz[]) AS k(cause_key, lo, hi)
  ON a.cause_key = k.cause_key AND a.condition_started_at <= k.hi
 AND coalesce(a.condition_ended_at, 'infinity') >= k.lo
WHERE NOT a.retracted
"""
_WINDOW: Final = "SELECT ts, value FROM reading WHERE series_id = %s AND ts > %s ORDER BY ts"
_ALERTS_AFTER: Final = """
SELECT id, status, resolved_by, condition_started_at, condition_ended_at FROM alert
WHERE cause_key = %s AND NOT retracted AND condition_started_at > %s
ORDER BY condition_started_at, id
FOR UPDATE
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

    @property
    def source_districts(self) -> Mapping[str, str | None]:
        """The registered district of each source in the batch."""
        ...

    @property
    def series(self) -> Mapping[int, tuple[str, str, list[tuple[datetime, float]]]]:
        """With `known`: per series, (source, metric, its readings in the batch)."""
        ...

    @property
    def known(self) -> set[tuple[int, datetime]] | None:
        """(series_id, ts) of the batch's readings stored before it; the others are new."""
        ...

    @property
    def newest_before(self) -> Mapping[int, datetime | None]:
        """Per series with new readings, its newest reading stored before the batch."""
        ...


@dataclass(slots=True)
class _Work:
    """One rule group on one source in a batch: its new readings, in order and late."""

    group: Group
    source: str
    metric: str
    sid: int
    fresh: list[Reading]
    late: list[Reading]
    high: float | None  # of the fresh readings
    low: float | None


@dataclass(frozen=True, slots=True)
class _StateRow:
    """An `alert_state` row as `_STATE_COLUMNS` reads it."""

    rule_id: int
    source_id: str
    state: Phase
    pending_since: datetime | None
    last_ts: datetime | None
    last_value: float | None
    alert_id: int | None
    stat_mean: float | None
    stat_var: float | None
    stat_samples: int

    def as_state(self) -> State:
        """The rule's state for evaluation."""
        return State(
            phase=self.state,
            pending_since=self.pending_since,
            last_ts=self.last_ts,
            last_value=self.last_value,
            mean=self.stat_mean,
            var=self.stat_var,
            samples=self.stat_samples,
        )


@dataclass(frozen=True, slots=True)
class _AlertRow:
    """An alert of a cause as `_ALERTS_AFTER` reads it."""

    id: int
    status: str
    resolved_by: str | None
    condition_started_at: datetime
    condition_ended_at: datetime | None


_STATE_ROW: Final = class_row(_StateRow)
_ALERT_ROW: Final = class_row(_AlertRow)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one batch did to alerts (for metrics and tests)."""

    evaluated: int = 0
    opened: int = 0
    updated: int = 0
    resolved: int = 0
    reevaluated: int = 0  # groups judged again for late readings
    retracted: int = 0


def load_metric_texts(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], MetricText]:
    """Names and units of every catalogued metric, by (sector, metric)."""
    out: dict[tuple[str, str], MetricText] = {}
    for sector, metrics in conn.execute("SELECT id, metrics FROM sector").fetchall():
        for m in metrics or []:
            out[(sector, m["id"])] = MetricText(
                m.get("name_vi") or m["id"], m.get("name_en") or m["id"], m.get("unit") or ""
            )
    return out


def load_rules(conn: psycopg.Connection[Any]) -> RuleIndex:
    """The enabled rules, indexed."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_LOAD_RULES).fetchall()
    return RuleIndex(
        Rule(
            id=r["id"],
            name=r["name"],
            kind=r["kind"],
            sector=r["sector_id"],
            severity=r["severity"],
            metric=r["metric"],
            direction=r["direction"],
            value=r["threshold"],
            inclusive=r["inclusive"],
            for_s=r["for_s"],
            clear_at=r["clear_at"],
            district=r["district"],
            source_id=r["source_id"],
            manual_resolve=r["manual_resolve"],
            params=r["params"] or {},
        )
        for r in rows
    )


class AlertEngine:
    """A writer hook (`Writer(hooks=[engine])`): evaluates each batch in its transaction."""

    wants_new_readings = True  # the writer tells which readings are new, and what came before

    def __init__(
        self,
        *,
        reopen_window_s: float = 0.0,
        lateness_s: float = LATENESS_S,
        rules_check_s: float = RULES_CHECK_S,
    ):
        self.reopen_window_s = reopen_window_s
        self.lateness_s = lateness_s
        self.rules_check_s = rules_check_s
        self._index: RuleIndex | None = None
        self._texts: dict[tuple[str, str], MetricText] = {}
        self._version: tuple[Any, ...] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._district_of: dict[str, str | None] = {}
        self._districts_at = 0.0
        self._names: dict[str, str] = {}
        self.last: Outcome = Outcome()
        self.failures = 0
        self.beyond_horizon = 0
        """Late readings older than the horizon: stored, not judged again."""
        self.unanchored = 0
        """Late readings inside a condition longer than the horizon: stored, not judged again."""

    def rules(self, conn: psycopg.Connection[Any]) -> RuleIndex:
        """The rule index, reloaded when the rules changed (checked every few seconds)."""
        now = time.monotonic()
        with self._lock:
            if self._index is not None and now - self._checked < self.rules_check_s:
                return self._index
            version = tuple(conn.execute(_RULES_VERSION).fetchone() or ())
            if self._index is None or version != self._version:
                self._index = load_rules(conn)
                self._texts = load_metric_texts(conn)
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
        counts = _Counts()
        with conn.cursor() as cur:
            work = self._work(cur, index, batch)
            if work:
                self._groups(cur, work, counts)
            # silence ends with readings only, never with a status ping or an event
            if batch.known is not None:
                sources = {entry[0] for entry in batch.series.values()}
            else:
                sources = {source for _, source, _, _, _ in batch.readings}
            self._silence_recovered(cur, index, batch.source_sectors, sources, counts)
            self._events(cur, index, batch.events, counts)
        return Outcome(
            len(work),
            counts.opened,
            counts.updated,
            counts.resolved,
            counts.reevaluated,
            counts.retracted,
        )

    def _work(self, cur: lifecycle.Cursor, index: RuleIndex, batch: EngineBatch) -> list[_Work]:
        """The groups this batch's new readings reach, with those readings split into fresh
        (newer than anything stored for the series) and late ones within the horizon."""
        known = batch.known
        by_series: Mapping[int, tuple[str, str, list[Reading]]]
        if known is None:  # a writer that does not tell: every reading is new
            grouped: dict[int, tuple[str, str, list[Reading]]] = {}
            for sid, source, metric, ts, value in batch.readings:
                grouped.setdefault(sid, (source, metric, []))[2].append((ts, value))
            by_series = grouped
        elif known:  # stored before: a redelivery changes nothing
            by_series = {
                sid: (source, metric, [r for r in readings if (sid, r[0]) not in known])
                for sid, (source, metric, readings) in batch.series.items()
            }
        else:
            by_series = batch.series
        sectors = batch.source_sectors
        districts = batch.source_districts or self._districts(
            cur, index, {e[0] for e in by_series.values()}
        )
        out: list[_Work] = []
        for sid, (source, metric, readings) in by_series.items():
            sector = sectors.get(source)
            if sector is None or not readings:
                continue
            groups = index.groups(sector, metric, source, districts.get(source))
            if not groups:
                continue
            readings.sort()
            newest = batch.newest_before.get(sid)
            fresh, late = readings, []
            if newest is not None and readings[0][0] <= newest:
                fresh = [r for r in readings if r[0] > newest]
                late = [r for r in readings if r[0] <= newest]
                horizon = newest - timedelta(seconds=self.lateness_s)
                kept = [r for r in late if r[0] >= horizon]
                if len(kept) < len(late):
                    self.beyond_horizon += len(late) - len(kept)
                    log.info(
                        "late readings beyond the lateness horizon stored without alert evaluation",
                        extra={
                            "source": source,
                            "metric": metric,
                            "readings": len(late) - len(kept),
                        },
                    )
                late = kept
            values = list(map(_VALUE, fresh))
            high, low = (max(values), min(values)) if values else (None, None)
            for group in groups:
                out.append(_Work(group, source, metric, sid, fresh, late, high, low))
        return out

    # -- threshold and deviation groups ----------------------------------------------------

    def _groups(self, cur: lifecycle.Cursor, work: list[_Work], counts: _Counts) -> None:
        """Judge the groups that can change: those with a breaching or late reading and those
        not in normal state. A quiet group in normal state stays normal: one locking read."""
        with cur.connection.cursor(row_factory=_STATE_ROW) as state_cur:
            state_cur.execute(_LOCK_SOURCES, (sorted({w.source for w in work}),))
            rows = {(r.rule_id, r.source_id): r for r in state_cur.fetchall()}
            self._drop_harmless_late(cur, work, rows)
            active = [w for w in work if self._may_change(w, rows)]
            if not active:
                return
            wanted = {(r.id, w.source) for w in active for r in w.group.rules}
            missing = sorted(wanted - rows.keys())
            if missing:
                rule_ids = [rule_id for rule_id, _ in missing]
                sources = [source for _, source in missing]
                cur.execute(_ENSURE_STATE, (rule_ids, sources))
                state_cur.execute(_LOCK_STATE, (rule_ids, sources))
                rows.update({(r.rule_id, r.source_id): r for r in state_cur.fetchall()})
        saved: list[tuple[int, str, State, int | None]] = []
        touched: tuple[list[int], list[float], list[datetime]] = ([], [], [])
        for w in sorted(active, key=lambda w: (w.group.key, w.source)):
            states = {r.id: rows[(r.id, w.source)].as_state() for r in w.group.rules}
            ids = (rows[(r.id, w.source)].alert_id for r in w.group.rules)
            alert_id = next((i for i in ids if i), None)
            result = None
            if w.late and w.group.kind == "threshold":
                result = self._reevaluate(cur, w, counts)
            if result is not None:
                new_states, alert_id = result
                held_after = alert_id is not None
            else:
                readings = w.fresh if w.group.kind == "threshold" else w.fresh + w.late
                held = alert_id is not None and any(s.phase != "normal" for s in states.values())
                outcome = run_group(w.group, states, readings, active=held)
                for change in outcome.changes:
                    alert_id = self._apply(cur, w, change, alert_id, counts)
                new_states = outcome.states
                held_after = outcome.held
                if outcome.last_firing is not None and alert_id is not None:
                    touched[0].append(alert_id)
                    touched[1].append(outcome.last_firing[1])
                    touched[2].append(outcome.last_firing[0])
            manual = w.group.manual_resolve
            keep = alert_id if held_after or manual else None
            for rule in w.group.rules:
                after = new_states[rule.id]
                if after != states[rule.id] or rows[(rule.id, w.source)].alert_id != keep:
                    saved.append((rule.id, w.source, after, keep))
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
    def _drop_harmless_late(
        cur: lifecycle.Cursor, work: list[_Work], rows: Mapping[tuple[int, str], _StateRow]
    ) -> None:
        """Forget late readings that cannot change anything, so they cost no re-evaluation: a
        late reading that breaches no rule of its group matters only inside a stretch where
        the condition held or was building up, that is before a rule that is not normal now
        began, or inside the condition of one of the cause's alerts (one query a batch)."""
        ask: list[_Work] = []
        for w in work:
            if not w.late or w.group.kind != "threshold":
                continue
            values = [v for _, v in w.late]
            high, low = max(values), min(values)
            if any(r.breached(high if r.direction == "above" else low) for r in w.group.rules):
                continue
            last = w.late[-1][0]
            starts = [
                row.pending_since
                for r in w.group.rules
                if (row := rows.get((r.id, w.source))) is not None and row.state != "normal"
            ]
            if any(start is not None and start <= last for start in starts):
                continue
            ask.append(w)
        if not ask:
            return
        cur.execute(
            _COVERED,
            (
                [w.group.cause(w.source) for w in ask],
                [w.late[0][0] for w in ask],
                [w.late[-1][0] for w in ask],
            ),
        )
        covered = {str(row[0]) for row in cur.fetchall()}
        for w in ask:
            if w.group.cause(w.source) not in covered:
                w.late = []

    @staticmethod
    def _may_change(w: _Work, rows: Mapping[tuple[int, str], _StateRow]) -> bool:
        if w.late and w.group.kind == "threshold":
            return True
        for rule in w.group.rules:
            row = rows.get((rule.id, w.source))
            if row is not None and (row.state != "normal" or row.alert_id is not None):
                return True
        if w.group.kind == "deviation":
            return True  # its statistics move with every reading
        if w.high is None or w.low is None:
            return False
        return any(
            rule.breached(w.high if rule.direction == "above" else w.low) for rule in w.group.rules
        )

    def _cause(self, cur: lifecycle.Cursor, w: _Work, rule: Rule, value: float) -> lifecycle.Cause:
        """The alert cause of a group on a source at the severity of `rule`, titled."""
        lead = w.group.lead
        text = self._texts.get((lead.sector, w.metric), MetricText(w.metric, w.metric))
        place = self._place(cur, w.source)
        if w.group.kind == "threshold":
            title, title_en = threshold_titles(rule, text, value, place)
        else:
            title, title_en = deviation_titles(text, value, place)
        return lifecycle.Cause(
            key=w.group.cause(w.source),
            sector=lead.sector,
            severity=rule.severity,
            title=title,
            title_en=title_en,
            rule_id=rule.id,
            rule_kind=w.group.kind,
            source_id=w.source,
            metric=w.metric,
        )

    def _apply(
        self,
        cur: lifecycle.Cursor,
        w: _Work,
        change: Change,
        alert_id: int | None,
        counts: _Counts,
    ) -> int | None:
        """Carry one change of a group's severity over to its alert."""
        detail: dict[str, Any] = {"since": change.since.isoformat()}
        if change.rule is not None:
            rule = change.rule
            detail |= {
                "rule": rule.name,
                "operator": rule.operator,
                "threshold": rule.value,
                "clear_at": rule.clear_at,
                "for_s": rule.for_s,
            }
            cause = self._cause(cur, w, rule, change.value)
            if change.kind == "fire" or alert_id is None:
                new_id, what = lifecycle.fire(
                    cur,
                    cause,
                    value=change.value,
                    at=change.ts,
                    started=change.since,
                    detail=detail,
                    reopen_window_s=self.reopen_window_s,
                    serialized=True,  # the group's alert_state rows are locked
                )
                counts.count(what)
                return new_id
            what_changed = lifecycle.change_severity(
                cur, alert_id, cause, value=change.value, at=change.ts, detail=detail
            )
            if what_changed is not None:
                counts.count(what_changed)
            return alert_id
        if alert_id is None or w.group.manual_resolve:
            return alert_id
        detail |= {"value": change.value, "at": change.ts.isoformat()}
        if lifecycle.close(
            cur,
            alert_id,
            actor=ENGINE_ACTOR,
            detail=detail,
            ended=change.ts,
            last=change.last,
            reset_state=False,
        ):
            counts.resolved += 1
        return None

    # -- late readings ---------------------------------------------------------------------

    def _reevaluate(
        self, cur: lifecycle.Cursor, w: _Work, counts: _Counts
    ) -> tuple[dict[int, State], int | None] | None:
        """Judge a group's stored readings again from the last reading before the late ones
        that cleared its condition (following alerts back through the reopen window), and
        reconcile the cause's alerts of that stretch. The group's new states and active alert;
        None when no reading within the horizon before the late ones cleared the condition."""
        group = w.group
        cause = group.cause(w.source)
        anchor_sql = _ANCHOR.format(reset=group.reset_sql())
        horizon = timedelta(seconds=self.lateness_s)
        reopen = timedelta(seconds=self.reopen_window_s)
        lo = w.late[0][0]
        base: datetime | None = None
        with cur.connection.cursor(row_factory=dict_row) as named:
            for _ in range(MAX_CHAIN):
                params = {"sid": w.sid, "floor": lo - horizon, "lo": lo}
                row = named.execute(anchor_sql, params).fetchone()
                assert row is not None
                anchor = row["anchor"]
                if anchor is None and row["inside"] and row["older"]:
                    # the condition may have begun before the horizon: it cannot be judged again
                    self.unanchored += len(w.late)
                    return None
                base = anchor if anchor is not None else lo - horizon
                cur.execute(_CHAINED, (cause, base, base - reopen))
                earlier = (cur.fetchone() or (None,))[0]
                if earlier is None:
                    break
                lo = earlier
            else:
                self.unanchored += len(w.late)
                return None
        assert base is not None
        counts.reevaluated += 1
        cur.execute(_WINDOW, (w.sid, base))
        readings: list[Reading] = [(ts, value) for ts, value in cur.fetchall()]
        outcome = run_group(group, {}, readings)
        spans = self._spans(cur, w, outcome.changes, outcome.last_firing)
        with cur.connection.cursor(row_factory=_ALERT_ROW) as alert_cur:
            existing = alert_cur.execute(_ALERTS_AFTER, (cause, base)).fetchall()
        return outcome.states, self._reconcile(cur, w, existing, spans, counts)

    def _spans(
        self,
        cur: lifecycle.Cursor,
        w: _Work,
        changes: list[Change],
        last_firing: Reading | None,
    ) -> list[lifecycle.Span]:
        """The alerts a run's changes make: one per episode, or per run of episodes each
        beginning within the reopen window of the previous one's end."""
        spans: list[dict[str, Any]] = []
        for change in changes:
            if change.kind == "clear":
                spans[-1]["ended"] = change.ts
                spans[-1]["last"] = change.last
                continue
            assert change.rule is not None
            cause = self._cause(cur, w, change.rule, change.value)
            now = {
                "severity": cause.severity,
                "rule_id": change.rule.id,
                "title": cause.title,
                "title_en": cause.title_en,
                "last": (change.ts, change.value),
            }
            if change.kind != "fire":
                span = spans[-1]
                span.update(now)
                span["peak"] = max(span["peak"], cause.severity, key=lifecycle.rank)
                continue
            previous = spans[-1] if spans else None
            if (
                previous is not None
                and self.reopen_window_s > 0
                and previous["ended"] is not None
                and (change.since - previous["ended"]).total_seconds() <= self.reopen_window_s
            ):
                previous.update(now)
                previous["ended"] = None
                previous["occurrences"] += 1
                previous["peak"] = max(previous["peak"], cause.severity, key=lifecycle.rank)
                continue
            spans.append(
                now
                | {
                    "peak": cause.severity,
                    "started": change.since,
                    "fired": change.ts,
                    "ended": None,
                    "occurrences": 1,
                }
            )
        if spans and spans[-1]["ended"] is None and last_firing is not None:
            spans[-1]["last"] = last_firing
        return [lifecycle.Span(**span) for span in spans]

    def _reconcile(
        self,
        cur: lifecycle.Cursor,
        w: _Work,
        existing: Sequence[_AlertRow],
        spans: list[lifecycle.Span],
        counts: _Counts,
    ) -> int | None:
        """Make the cause's alerts after the anchor match the spans: an alert that still has
        its span is revised (resolved, reopened, raised or lowered as it now stands), a span
        without an alert opens one (resolved at once when it has ended), an alert without a
        span is retracted. An alert a person or the sweeper resolved is left as it is. The id
        of the active alert, if any."""
        matches: list[tuple[lifecycle.Span, _AlertRow | None]] = []
        free = list(existing)
        for span in spans:
            end = span.ended or datetime.max.replace(tzinfo=span.started.tzinfo)
            found = next(
                (
                    a
                    for a in free
                    if a.condition_started_at <= end
                    and (a.condition_ended_at is None or a.condition_ended_at >= span.started)
                ),
                None,
            )
            if found is not None:
                free.remove(found)
            matches.append((span, found))
        detail = {"reason": "late readings"}
        manual = w.group.manual_resolve
        for alert in free:
            if alert.status == "resolved" and alert.resolved_by != ENGINE_ACTOR:
                continue
            if lifecycle.retract(cur, alert.id, actor=ENGINE_ACTOR, detail=detail):
                counts.retracted += 1
        active: int | None = None
        for span, found in matches:
            if found is None:
                active = self._open_span(cur, w, span, counts) or active
                continue
            alert_id = found.id
            if found.status == "resolved" and found.resolved_by != ENGINE_ACTOR:
                continue
            old = lifecycle.revise(cur, alert_id, span)
            if old is None:
                continue
            old_status, old_severity, moved = old
            if span.ended is not None:
                if old_status != "resolved" and not manual:
                    lifecycle.close(
                        cur,
                        alert_id,
                        actor=ENGINE_ACTOR,
                        detail=detail,
                        ended=span.ended,
                        last=span.last,
                        reset_state=False,
                    )
                    counts.resolved += 1
                elif moved or old_severity != span.severity:
                    lifecycle.record(cur, alert_id, "updated", detail=detail)
                    counts.updated += 1
                continue
            active = alert_id
            if old_status == "resolved":
                if lifecycle.reactivate(cur, alert_id, detail=detail):
                    counts.opened += 1
            elif old_severity != span.severity:
                kind = lifecycle.severity_change(old_severity, span.severity)
                lifecycle.record(cur, alert_id, kind, detail=detail)
                counts.count(kind)
            elif moved:
                lifecycle.record(cur, alert_id, "updated", detail=detail)
                counts.updated += 1
        return active

    def _open_span(
        self, cur: lifecycle.Cursor, w: _Work, span: lifecycle.Span, counts: _Counts
    ) -> int | None:
        """Record a span no alert covered: an alert opened, and resolved when it has ended."""
        rule = next(r for r in w.group.rules if r.id == span.rule_id)
        cause = self._cause(cur, w, rule, span.last[1])
        cause = replace(cause, title=span.title, title_en=span.title_en)
        alert_id = lifecycle.insert_span(cur, cause, span, actor=ENGINE_ACTOR)
        counts.opened += 1
        if span.ended is not None:
            counts.resolved += 1
            return None
        return alert_id

    def _place(self, cur: lifecycle.Cursor, source: str) -> str:
        """How titles name a source: its name, else its id."""
        name = self._names.get(source)
        if name is None:
            cur.execute("SELECT coalesce(name, id) FROM source WHERE id = %s", (source,))
            row = cur.fetchone()
            name = str(row[0]) if row else source
            if len(self._names) > 100_000:
                self._names.clear()
            self._names[source] = name
        return name

    # -- silence and events ----------------------------------------------------------------

    @staticmethod
    def _silence_recovered(
        cur: lifecycle.Cursor,
        index: RuleIndex,
        sectors: Mapping[str, str],
        sources: set[str],
        counts: _Counts,
    ) -> None:
        rule_ids = sorted(
            {r.id for s in {sectors.get(x) for x in sources} if s for r in index.silence(s)}
        )
        if not rule_ids or not sources:
            return
        with cur.connection.cursor(row_factory=dict_row) as named:
            recovered = named.execute(_SILENCE_RECOVERED, (rule_ids, sorted(sources))).fetchall()
        for row in recovered:
            alert_id = row["alert_id"]
            if alert_id is None or index.by_id[row["rule_id"]].manual_resolve:
                continue
            if lifecycle.close(
                cur,
                alert_id,
                actor=ENGINE_ACTOR,
                detail={"reason": "readings returned", "source": row["source_id"]},
            ):
                counts.resolved += 1

    @staticmethod
    def _events(
        cur: lifecycle.Cursor, index: RuleIndex, events: Iterable[Any], counts: _Counts
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
                counts.opened += 1

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


@dataclass(slots=True)
class _Counts:
    opened: int = 0
    updated: int = 0
    resolved: int = 0
    reevaluated: int = 0
    retracted: int = 0

    def count(self, kind: str) -> None:
        if kind in ("opened", "reopened", "raised"):
            self.opened += 1
        elif kind == "resolved":
            self.resolved += 1
        else:
            self.updated += 1
