"""Rule backtest: the alerts a proposed rule would have opened over a past range of stored data.

Threshold and deviation rules run the engine's own evaluation (`alerts.evaluation.run_group`,
on a group of this rule alone) over each covered source's stored readings of the metric, in
reading-time order from a normal state, streamed from a server-side cursor in chunks (a chunk
boundary is a batch boundary for the engine: the state carries over). Alerts follow the
engine's lifecycle: one per condition, or one for conditions that begin within the reopen
window of the previous one's end; a manual-resolve rule's alert stays active to the end.

Silence rules look for gaps between a source's stored readings longer than its allowance
(reading time; the sweeper judges receipt time on its own clock, so live alerts fire up to a
sweep later). Event rules match the stored agency events of the range.

Operator timers (escalation, auto-resolution) run on wall time and are not part of it.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import psycopg

from alerts.evaluation import Reading, State, run_group
from alerts.rule_service import (
    Issue,
    RuleDefinition,
    RuleInvalid,
    check,
    in_sector,
    known_district,
    one,
)
from alerts.rules import SEVERITY_RANK, Group, Rule

MAX_RANGE_S: Final = 31 * 86_400
MAX_ALERTS: Final = 1000
CHUNK_ROWS: Final = 5000
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(2200, 1, 1, tzinfo=UTC)
_CURSOR: Final = "ioc_backtest"


class BacktestInvalid(RuleInvalid):
    """The backtest's range or scope is wrong (the fields are the request's, not the rule's)."""


@dataclass(frozen=True, slots=True)
class BacktestAlert:
    """An alert the rule would have opened (condition times are reading times)."""

    source_id: str | None
    source_name: str | None
    started_at: datetime  # the condition's first breaching reading (silence: the last reading)
    fired_at: datetime  # when it had lasted long enough: the alert opens
    resolved_at: datetime | None  # when the condition ended; None: still active at the end
    severity: str  # at the end
    peak_severity: str
    peak_value: float | None  # the most abnormal reading (above: highest, below: lowest)
    min_value: float | None
    max_value: float | None
    occurrences: int = 1  # conditions joined in this alert (reopen window)
    event_id: int | None = None


@dataclass(frozen=True, slots=True)
class Backtest:
    """What a backtest found."""

    start: datetime
    end: datetime
    timezone: str
    sources: int  # sources evaluated
    readings: int  # readings evaluated
    events: int  # events evaluated
    total: int  # alerts found
    alerts: list[BacktestAlert]  # the earliest `max_alerts` by fire time
    truncated: bool
    max_alerts: int
    per_day: list[tuple[date, int]]  # alerts opened per day (profile time zone), every day
    by_severity: dict[str, int]  # alerts by peak severity
    reopen_window_s: float


def backtest(
    conn: psycopg.Connection[Any],
    *,
    definition: RuleDefinition,
    start: datetime,
    end: datetime,
    timezone: str,
    source_id: str | None = None,
    district: str | None = None,
    districts: Collection[str] | None = None,
    reopen_window_s: float = 0.0,
    min_silence_s: float = 60.0,
    max_alerts: int = MAX_ALERTS,
    chunk_rows: int = CHUNK_ROWS,
    now: datetime | None = None,
) -> Backtest:
    """The alerts `definition` would have opened from `start` (inclusive) to `end`
    (exclusive), on the sources it covers (narrowed to `source_id` or `district`).
    RuleInvalid for the definition, BacktestInvalid for the range or scope."""
    check(conn, definition, districts=districts, name=False)
    _check_request(conn, definition, start, end, source_id, district, districts)
    rule = definition.to_rule()
    found = _Found(ZoneInfo(timezone), start, end, max_alerts)
    job = _Job(conn, start, end, source_id, district, chunk_rows, found)
    if rule.kind in ("threshold", "deviation"):
        _readings_rule(job, definition.group(), reopen_window_s)
    elif rule.kind == "silence":
        _silence_rule(job, rule, min(end, now or datetime.now(UTC)), min_silence_s)
    else:
        _event_rule(job, rule)
    counts = job.counts
    return Backtest(
        start=start,
        end=end,
        timezone=timezone,
        sources=counts.sources,
        readings=counts.readings,
        events=counts.events,
        total=found.total,
        alerts=found.kept(),
        truncated=found.total > max_alerts,
        max_alerts=max_alerts,
        per_day=found.days(),
        by_severity=dict(found.by_severity),
        reopen_window_s=reopen_window_s,
    )


def _check_request(
    conn: psycopg.Connection[Any],
    d: RuleDefinition,
    start: datetime,
    end: datetime,
    source_id: str | None,
    district: str | None,
    districts: Collection[str] | None,
) -> None:
    issues: list[Issue] = []
    if start.tzinfo is None or end.tzinfo is None:
        issues.append(Issue("from", "give times with a UTC offset"))
    elif not EARLIEST <= start < LATEST:
        issues.append(Issue("from", "must lie between 1970 and 2200"))
    elif not EARLIEST < end <= LATEST:
        issues.append(Issue("to", "must lie between 1970 and 2200"))
    elif end <= start:
        issues.append(Issue("to", "must be later than from"))
    elif (end - start).total_seconds() > MAX_RANGE_S:
        issues.append(Issue("to", f"a backtest covers at most {MAX_RANGE_S // 86_400} days"))
    if source_id is not None and not in_sector(conn, d.sector_id, source_id):
        issues.append(Issue("source_id", f"no source {source_id!r} in sector {d.sector_id}"))
    if district is not None and not known_district(conn, d.sector_id, district, districts):
        issues.append(Issue("district", f"no district {district!r} in the profile"))
    if issues:
        raise BacktestInvalid(issues)


# -- what was found ------------------------------------------------------------------------


@dataclass(slots=True)
class _Counts:
    sources: int = 0
    readings: int = 0
    events: int = 0


class _Found:
    """Alerts as they are found: all counted, the earliest `limit` by fire time kept."""

    def __init__(self, zone: ZoneInfo, start: datetime, end: datetime, limit: int) -> None:
        self.zone = zone
        self.start = start
        self.end = end
        self.limit = limit
        self.total = 0
        self.by_severity: dict[str, int] = {}
        self.by_day: dict[date, int] = {}
        self._heap: list[tuple[float, int, BacktestAlert]] = []  # latest fire on top

    def add(self, alert: BacktestAlert) -> None:
        self.total += 1
        self.by_severity[alert.peak_severity] = self.by_severity.get(alert.peak_severity, 0) + 1
        day = alert.fired_at.astimezone(self.zone).date()
        self.by_day[day] = self.by_day.get(day, 0) + 1
        entry = (-alert.fired_at.timestamp(), -self.total, alert)
        if len(self._heap) < self.limit:
            heapq.heappush(self._heap, entry)
        elif self.limit > 0 and entry > self._heap[0]:
            heapq.heapreplace(self._heap, entry)

    def add_maybe(self, alert: BacktestAlert | None) -> None:
        if alert is not None:
            self.add(alert)

    def kept(self) -> list[BacktestAlert]:
        alerts = [entry[2] for entry in self._heap]
        return sorted(alerts, key=lambda a: (a.fired_at, a.source_id or "", a.started_at))

    def days(self) -> list[tuple[date, int]]:
        first = self.start.astimezone(self.zone).date()
        last = (self.end - timedelta(microseconds=1)).astimezone(self.zone).date()
        out: list[tuple[date, int]] = []
        day = first
        while day <= last:
            out.append((day, self.by_day.get(day, 0)))
            day += timedelta(days=1)
        return out


@dataclass(slots=True)
class _Job:
    """One backtest's range, scope and findings."""

    conn: psycopg.Connection[Any]
    start: datetime
    end: datetime
    source_id: str | None
    district: str | None
    chunk_rows: int
    found: _Found
    counts: _Counts = field(default_factory=_Counts)

    def chunks(self, sql: str, params: tuple[Any, ...]) -> Iterator[list[Any]]:
        """The rows of a query in chunks, from a server-side cursor."""
        with self.conn.cursor(name=_CURSOR) as cur:
            cur.itersize = self.chunk_rows
            cur.execute(sql, params)
            while chunk := cur.fetchmany(self.chunk_rows):
                yield chunk


# -- threshold and deviation rules ---------------------------------------------------------

_SERIES: Final = """
SELECT se.id, se.source_id, s.name, s.district
FROM series se JOIN source s ON s.id = se.source_id
WHERE s.sector_id = %(sector)s AND se.metric = %(metric)s
  AND (%(source)s::text IS NULL OR s.id = %(source)s)
  AND (%(district)s::text IS NULL OR s.district = %(district)s)
ORDER BY se.source_id
"""
_READINGS: Final = (
    "SELECT ts, value FROM reading WHERE series_id = %s AND ts >= %s AND ts < %s ORDER BY ts"
)


@dataclass(slots=True)
class _Alert:
    """An alert being followed on one source."""

    started: datetime
    fired: datetime
    severity: str
    peak: str
    low: float | None = None
    high: float | None = None
    ended: datetime | None = None
    occurrences: int = 1

    def see(self, value: float) -> None:
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)


@dataclass(slots=True)
class _SourceRun:
    """The rule run over one source's readings, chunk by chunk, as the engine runs it batch
    by batch: states carry over, and the alerts follow the changes."""

    group: Group
    reopen_window_s: float
    states: dict[int, State] = field(default_factory=dict)
    held: bool = False
    holding: bool = False  # the condition holds after the last reading (extremes tracked)
    carry: list[Reading] = field(default_factory=list)  # since the earliest pending start
    active: _Alert | None = None
    closed: _Alert | None = None  # the last resolved one, until it can no longer reopen
    done: list[_Alert] = field(default_factory=list)

    def feed(self, chunk: list[Reading]) -> None:
        outcome = run_group(self.group, self.states, chunk, active=self.held)
        readings = self.carry + chunk
        i = 0
        for change in outcome.changes:
            while readings[i][0] < change.ts:
                if self.holding and self.active is not None:
                    self.active.see(readings[i][1])
                i += 1
            if change.kind == "clear":
                self.holding = False
                if self.active is not None and not self.group.manual_resolve:
                    self.active.ended = change.ts
                    self.closed, self.active = self.active, None
                i += 1
                continue
            assert change.rule is not None
            severity = change.rule.severity
            if change.kind == "fire":
                alert = self._open(change.since, change.ts, severity)
                # the condition began at its first breaching reading, maybe chunks ago
                j = bisect_left(readings, change.since, key=lambda r: r[0])
                for k in range(j, i):
                    alert.see(readings[k][1])
                self.holding = True
            else:
                assert self.active is not None  # a rise or fall happens while it holds
                alert = self.active
            alert.severity = severity
            if SEVERITY_RANK[severity] > SEVERITY_RANK[alert.peak]:
                alert.peak = severity
            alert.see(readings[i][1])
            i += 1
        if self.holding and self.active is not None:
            for k in range(i, len(readings)):
                self.active.see(readings[k][1])
        self.states = outcome.states
        self.held = self.holding = outcome.held
        self.carry = [] if self.held else self._pending(readings)

    def _open(self, since: datetime, at: datetime, severity: str) -> _Alert:
        """The alert a condition beginning at `since` joins or opens."""
        if self.active is not None:  # a manual-resolve alert still active
            self.active.occurrences += 1
            return self.active
        closed = self.closed
        if (
            closed is not None
            and closed.ended is not None
            and self.reopen_window_s > 0
            and (since - closed.ended).total_seconds() <= self.reopen_window_s
        ):
            closed.ended = None
            closed.occurrences += 1
            self.active, self.closed = closed, None
            return closed
        if closed is not None:
            self.done.append(closed)
            self.closed = None
        self.active = _Alert(since, at, severity, severity)
        return self.active

    def _pending(self, readings: list[Reading]) -> list[Reading]:
        """The readings from the earliest pending start on: a condition firing later begins
        there."""
        starts = [
            s.pending_since
            for s in self.states.values()
            if s.phase != "normal" and s.pending_since is not None
        ]
        if not starts:
            return []
        return readings[bisect_left(readings, min(starts), key=lambda r: r[0]) :]

    def finish(self) -> list[_Alert]:
        out = self.done
        if self.closed is not None:
            out.append(self.closed)
        if self.active is not None:
            out.append(self.active)
        return out


def _readings_rule(job: _Job, group: Group, reopen_window_s: float) -> None:
    rule = group.lead
    series = job.conn.execute(
        _SERIES,
        {
            "sector": rule.sector,
            "metric": rule.metric,
            "source": job.source_id,
            "district": job.district,
        },
    ).fetchall()
    for sid, source, name, source_district in series:
        if not rule.covers(source, source_district):
            continue
        job.counts.sources += 1
        run = _SourceRun(group, reopen_window_s)
        for chunk in job.chunks(_READINGS, (sid, job.start, job.end)):
            job.counts.readings += len(chunk)
            run.feed(chunk)
        for alert in run.finish():
            job.found.add(_result(rule, source, name, alert))


def _result(rule: Rule, source: str, name: str | None, a: _Alert) -> BacktestAlert:
    peak_value = a.high if rule.direction == "above" else a.low if rule.direction else None
    return BacktestAlert(
        source_id=source,
        source_name=name,
        started_at=a.started,
        fired_at=a.fired,
        resolved_at=a.ended,
        severity=a.severity,
        peak_severity=a.peak,
        peak_value=peak_value,
        min_value=a.low,
        max_value=a.high,
        occurrences=a.occurrences,
    )


# -- silence rules -------------------------------------------------------------------------

# a source's expected interval: its own, else the shortest of its catalogued metrics (as the
# sweeper reckons it)
_SOURCES: Final = """
SELECT s.id, s.name, s.district,
       coalesce(s.interval_s, (
           SELECT min((m->>'interval_s')::int)
           FROM series se, jsonb_array_elements(sc.metrics) m
           WHERE se.source_id = s.id AND m->>'id' = se.metric)) AS interval_s,
       array(SELECT se.id FROM series se WHERE se.source_id = s.id ORDER BY se.id) AS series
FROM source s JOIN sector sc ON sc.id = s.sector_id
WHERE s.sector_id = %(sector)s
  AND (%(source)s::text IS NULL OR s.id = %(source)s)
  AND (%(district)s::text IS NULL OR s.district = %(district)s)
ORDER BY s.id
"""
# the newest reading before the range, one index probe per series
_BEFORE: Final = """
SELECT max(m) AS last FROM (
    SELECT (SELECT max(ts) FROM reading r WHERE r.series_id = x AND r.ts < %s) AS m
    FROM unnest(%s::int[]) AS x) q
"""
_TIMES: Final = (
    "SELECT ts FROM reading WHERE series_id = ANY(%s) AND ts >= %s AND ts < %s ORDER BY ts"
)


def _silence_rule(job: _Job, rule: Rule, horizon: datetime, min_silence_s: float) -> None:
    sources = job.conn.execute(
        _SOURCES, {"sector": rule.sector, "source": job.source_id, "district": job.district}
    ).fetchall()
    for source, name, source_district, interval_s, series in sources:
        allowance = rule.silence_after_s(interval_s)
        if allowance is None or not series or not rule.covers(source, source_district):
            continue
        after = timedelta(seconds=max(allowance, min_silence_s))
        job.counts.sources += 1
        before = one(job.conn, _BEFORE, (job.start, series))
        last: datetime | None = before["last"] if before else None
        silent = _Silent(source, name, rule.severity, after, job.start, job.end)
        for chunk in job.chunks(_TIMES, (series, job.start, job.end)):
            job.counts.readings += len(chunk)
            for (ts,) in chunk:
                if last is not None and ts - last > after:
                    job.found.add_maybe(silent.alert(last, ts))
                last = ts
        if last is not None and horizon - last > after:
            job.found.add_maybe(silent.alert(last, None))


@dataclass(frozen=True, slots=True)
class _Silent:
    """The silence alerts of one source."""

    source: str
    name: str | None
    severity: str
    after: timedelta
    start: datetime
    end: datetime

    def alert(self, last: datetime, until: datetime | None) -> BacktestAlert | None:
        """The alert of a silence after `last` ending at `until`, if it opened in the range
        (before it, the state at the start is taken as normal)."""
        fired = last + self.after
        if not self.start <= fired < self.end:
            return None
        return BacktestAlert(
            source_id=self.source,
            source_name=self.name,
            started_at=last,
            fired_at=fired,
            resolved_at=until,
            severity=self.severity,
            peak_severity=self.severity,
            peak_value=None,
            min_value=None,
            max_value=None,
        )


# -- event rules ---------------------------------------------------------------------------

_EVENTS: Final = """
SELECT e.id, e.source_id, s.name, e.kind, e.severity, e.occurred_at
FROM event e LEFT JOIN source s ON s.id = e.source_id
WHERE e.sector_id = %s AND e.occurred_at >= %s AND e.occurred_at < %s
  AND (%s::text IS NULL OR e.source_id = %s)
  AND (%s::text IS NULL OR coalesce(e.district, s.district) = %s)
ORDER BY e.occurred_at, e.id
"""


def _event_rule(job: _Job, rule: Rule) -> None:
    sources: set[str | None] = set()
    use_event_severity = bool(rule.params.get("use_event_severity", True))
    scope = (job.source_id, job.source_id, job.district, job.district)
    for chunk in job.chunks(_EVENTS, (rule.sector, job.start, job.end, *scope)):
        job.counts.events += len(chunk)
        for event_id, source, name, kind, severity, occurred_at in chunk:
            sources.add(source)
            if not rule.matches_event(kind, severity):
                continue
            level = severity if use_event_severity else rule.severity
            job.found.add(
                BacktestAlert(
                    source_id=source,
                    source_name=name,
                    started_at=occurred_at,
                    fired_at=occurred_at,
                    resolved_at=None,
                    severity=level,
                    peak_severity=level,
                    peak_value=None,
                    min_value=None,
                    max_value=None,
                    event_id=event_id,
                )
            )
    job.counts.sources = len(sources)
