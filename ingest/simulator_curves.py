"""Pure value generation for the telemetry simulator: source plans, daily curves, episodes.

Everything here is a function of (seed, source, metric, time): no I/O, no clock, no global
random state, so a value can be recomputed and tested at any instant.
"""

from __future__ import annotations

import calendar
import heapq
import math
import random
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import partial
from itertools import pairwise
from typing import Literal, TypeVar
from zoneinfo import ZoneInfo

from alerts.rules import SILENCE_FACTOR_DEFAULT
from ioc.catalogue import Metric, Profile, Threshold
from ioc.errors import ConfigError
from ioc.vocabulary import Direction, Severity, SourceStatus

HOUR_S = 3600
# Tidal constituents of the South China Sea coast: M2 (lunar semi-diurnal) dominates the
# Mekong mouths, K1 adds the diurnal inequality, and spring/neap tides modulate both.
TIDE_M2_PERIOD_S = 44_712.0
TIDE_K1_PERIOD_S = 86_164.0
SPRING_NEAP_PERIOD_S = 1_275_782.0
# Weather-like wandering of a level over days, so two days never look identical.
DRIFT_PERIODS_S = (458_000.0, 1_010_000.0)
PER_SOURCE_SCALE_RANGE = (0.75, 1.25)
DAY_TOTAL_SPREAD = 0.12

ANOMALY_PROBABILITY_PER_SOURCE_H = 0.05
# An episode lasts a few times the threshold's hold time, so the alert really opens.
ANOMALY_LENGTH_IN_FOR_S = (2.0, 4.0)
# Thresholds with no hold time still get an episode long enough to be seen on a screen.
ANOMALY_MIN_BASIS_S = 300
ANOMALY_EXCESS_ABOVE = (0.1, 0.6)
ANOMALY_EXCESS_BELOW = (0.05, 0.4)
ANOMALY_WOBBLE = 0.02

SILENCE_PROBABILITY_PER_WINDOW = 0.25
SILENCE_WINDOW_IN_INTERVALS = 60
SILENCE_LENGTH_IN_INTERVALS = (3.0, 8.0)

# Share of sources that report only part of their sector's metrics (older stations, feeds).
SUBSET_SOURCE_SHARE = 0.3
SUBSET_KEEP_PROBABILITY = 0.6

_CACHE_MAX_ENTRIES = 200_000
_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,40}$")
_COUNT_UNITS = frozenset({"count", "cases", "events", "vehicles"})


class Curve(StrEnum):
    """Shape of a metric over the local day, as a factor in [0, 1]."""

    FLAT = "flat"
    RUSH = "rush"  # morning and evening commutes
    DAY = "day"  # waking hours, top in the early afternoon
    OFFICE = "office"  # office hours only
    NIGHT = "night"  # top before dawn, bottom mid-afternoon (stagnant night air)
    EVENING = "evening"  # top in the evening


class Kind(StrEnum):
    """How a metric's value is built from its shape."""

    LEVEL = "level"  # level + swing x daily curve
    TIDAL = "tidal"  # level + swing x tide
    TODAY = "today"  # running total since local midnight
    MONTH = "month"  # running total since the 1st of the month (level per day)
    YEAR = "year"  # share of the year's plan reached so far (level at year end)


@dataclass(frozen=True)
class Shape:
    """How one metric behaves: typical level, daily swing, noise and slow drift."""

    kind: Kind
    level: float
    swing: float = 0.0
    curve: Curve = Curve.FLAT
    noise: float = 0.0
    drift: float = 0.0
    scaled: bool = True
    decimals: int = 2
    integer: bool = False
    lag_s: float = 0.0


# A level that differs between sources (busy and quiet roads), and one that does not (shares).
_level = partial(Shape, Kind.LEVEL)
_steady = partial(Shape, Kind.LEVEL, scaled=False)


def _today(per_day: float, curve: Curve) -> Shape:
    return Shape(Kind.TODAY, per_day, curve=curve)


# Typical behaviour of the catalogue's metrics; a metric not listed gets a shape derived from
# its range and thresholds. Levels are "a normal day" in a province of about a million people.
SHAPES: dict[str, Shape] = {
    # citizen reports
    "open_reports": _level(120, swing=40, curve=Curve.OFFICE, noise=4, drift=20),
    "new_reports": _today(60, Curve.OFFICE),
    "on_time_resolution_pct": _steady(94.5, noise=0.6, drift=1.5),
    "median_handling_h": _level(30, noise=1.5, drift=6, decimals=1),
    "satisfaction_pct": _steady(86, noise=1.0, drift=3),
    "hotline_1022_contacts": _today(160, Curve.OFFICE),
    # hotline
    "calls": _today(900, Curve.OFFICE),
    "answer_rate_pct": _steady(97, swing=-3, curve=Curve.OFFICE, noise=0.7, drift=0.8),
    "mean_wait_s": _level(15, swing=15, curve=Curve.OFFICE, noise=3, drift=4, decimals=0),
    "calls_waiting": _level(1, swing=7, curve=Curve.OFFICE, noise=1.2),
    "automated_share_pct": _steady(42, swing=-6, curve=Curve.OFFICE, noise=1.5, drift=4),
    # public services
    "dossiers_received": _today(450, Curve.OFFICE),
    "on_time_dossiers_pct": _steady(98.3, noise=0.4, drift=0.6),
    "overdue_dossiers": _level(0),
    "online_share_pct": _steady(68, noise=0.5, drift=5),
    "index_766_score": _steady(82, noise=0.2, drift=2),
    # socio-economic statistics
    "budget_revenue_pct": Shape(Kind.YEAR, 106, scaled=False, decimals=1),
    "budget_spending_pct": Shape(Kind.YEAR, 94, scaled=False, decimals=1),
    "investment_disbursement_pct": Shape(Kind.YEAR, 82, scaled=False, decimals=1),
    "cpi_yoy_pct": _steady(3.1, noise=0.02, drift=0.35),
    "grdp_growth_pct": _steady(7.2, noise=0.02, drift=0.5),
    # security
    "ai_camera_events": _level(12, swing=50, curve=Curve.EVENING, noise=4),
    "crowd_alerts": _level(0),
    "cameras_offline_pct": _steady(1.8, noise=0.25, drift=0.6),
    "incidents": _today(9, Curve.EVENING),
    # traffic
    "flow": _level(120, swing=2600, curve=Curve.RUSH, noise=60),
    "mean_speed": _steady(60, swing=-40, curve=Curve.RUSH, noise=2, decimals=1),
    "accidents": _today(3.5, Curve.RUSH),
    "fatal_accidents": _level(0),
    # health
    "bed_occupancy_pct": _steady(79, swing=9, curve=Curve.DAY, noise=0.8, drift=2.5, decimals=1),
    "emergency_waiting": _level(6, swing=22, curve=Curve.DAY, noise=2.5),
    "outpatient_visits": _today(2800, Curve.OFFICE),
    "dengue_cases": _level(45, noise=0.8, drift=15),
    # education
    "attendance_pct": _steady(96.5, noise=0.4, drift=0.8),
    "dropout_pct": _steady(0.45, noise=0.03, drift=0.12),
    "pupils_enrolled": _level(185_000, drift=1500),
    "teacher_shortfall": _level(420, drift=25),
    "graduation_pass_pct": _steady(98.2, drift=0.5),
    # online information
    "mentions": _today(24_000, Curve.EVENING),
    "negative_share_pct": _steady(12, swing=3, curve=Curve.EVENING, noise=1, drift=3, decimals=1),
    "flagged_items": _today(35, Curve.EVENING),
    # information security
    "attacks_blocked": _today(60_000, Curve.FLAT),
    "infected_hosts": _level(0),
    "portal_uptime_pct": _steady(99.95, noise=0.02),
    "open_vulnerabilities": _level(24, drift=6),
    # environment
    "aqi": _level(28, swing=32, curve=Curve.NIGHT, noise=4, drift=6, integer=True),
    "pm25": _level(12, swing=16, curve=Curve.NIGHT, noise=2, drift=4, decimals=1),
    "pm10": _level(25, swing=30, curve=Curve.NIGHT, noise=3, drift=6, decimals=1),
    "noise": _steady(52, swing=18, curve=Curve.RUSH, noise=1.5, decimals=1),
    # water: salinity peaks an hour or two after high water as the salt wedge moves upstream
    "salinity": Shape(Kind.TIDAL, 0.35, swing=0.18, noise=0.015, drift=0.1, lag_s=5400),
    "water_level": Shape(Kind.TIDAL, 0.35, swing=0.75, noise=0.02, drift=0.12, scaled=False),
    "rainfall_24h": _level(14, noise=0.3, drift=12, decimals=1),
    "supply_chloride": Shape(Kind.TIDAL, 85, swing=20, noise=2, drift=15, lag_s=7200, decimals=1),
    "salinity_4ppt_reach_km": _level(32, noise=0.1, drift=8, decimals=1),
    # tourism
    "visitors": _today(3200, Curve.DAY),
    "complaints": _level(0),
    "room_occupancy_pct": _steady(58, noise=0.5, drift=8, decimals=1),
    "tourism_revenue": Shape(Kind.MONTH, 4.2, decimals=1),
    # land and construction
    "overdue_land_dossiers": _level(0),
    "land_dossiers_pending": _level(1250, swing=60, curve=Curve.OFFICE, noise=3, drift=80),
    "building_violations": _level(36, drift=6),
    "building_permits": Shape(Kind.MONTH, 7),
}


# --- curves --------------------------------------------------------------------------------


def _bump(hour: float, start: float, end: float) -> float:
    if not start <= hour <= end:
        return 0.0
    return math.sin(math.pi * (hour - start) / (end - start))


def _peak(hour: float, centre: float, width: float) -> float:
    return math.exp(-0.5 * ((hour - centre) / width) ** 2)


def daily_factor(curve: Curve, hour: float) -> float:
    """The curve's factor in [0, 1] at a local hour of the day (0 <= hour < 24)."""
    if curve is Curve.RUSH:
        rush = _peak(hour, 7.5, 1.1) + 0.95 * _peak(hour, 17.5, 1.3)
        return min(1.0, 0.08 + 0.5 * _bump(hour, 5.0, 22.0) + 0.42 * rush)
    if curve is Curve.DAY:
        return _bump(hour, 6.0, 22.0)
    if curve is Curve.OFFICE:
        return _bump(hour, 7.0, 17.0) ** 2
    if curve is Curve.NIGHT:
        return 0.5 + 0.5 * math.cos(2 * math.pi * (hour - 5.0) / 24)
    if curve is Curve.EVENING:
        return 0.5 + 0.5 * math.cos(2 * math.pi * (hour - 20.0) / 24)
    return 0.0


_STEPS_PER_H = 4
# Activity never stops completely at night: a floor under every curve's weight.
_NIGHT_FLOOR = 0.15


def _cumulative_table(curve: Curve) -> list[float]:
    steps = 24 * _STEPS_PER_H
    weights = [
        1.0 if curve is Curve.FLAT else _NIGHT_FLOOR + daily_factor(curve, (i + 0.5) / 4)
        for i in range(steps)
    ]
    total = sum(weights)
    table = [0.0]
    for w in weights:
        table.append(table[-1] + w / total)
    return table


_CUMULATIVE = {curve: _cumulative_table(curve) for curve in Curve}


def day_share(curve: Curve, hour: float) -> float:
    """Share of a day's total that has happened by a local hour, following the curve."""
    table = _CUMULATIVE[curve]
    pos = min(max(hour, 0.0), 24.0) * _STEPS_PER_H
    i = min(int(pos), len(table) - 2)
    return table[i] + (table[i + 1] - table[i]) * (pos - i)


def tide(t_s: float, phase: float) -> float:
    """Normalised tide in [-1, 1] at epoch seconds: semi-diurnal, spring/neap, diurnal."""
    m2 = math.cos(2 * math.pi * t_s / TIDE_M2_PERIOD_S + phase)
    spring = 0.8 + 0.2 * math.cos(2 * math.pi * t_s / SPRING_NEAP_PERIOD_S + phase)
    k1 = 0.2 * math.cos(2 * math.pi * t_s / TIDE_K1_PERIOD_S + 1.3 * phase)
    return (m2 * spring + k1) / 1.2


def slow_drift(t_s: float, phase: float) -> float:
    """A smooth wander in [-1, 1] over several days."""
    a = math.sin(2 * math.pi * t_s / DRIFT_PERIODS_S[0] + phase)
    b = math.sin(2 * math.pi * t_s / DRIFT_PERIODS_S[1] + 1.7 * phase)
    return 0.6 * a + 0.4 * b


# --- metric properties ---------------------------------------------------------------------


def is_count(metric: Metric) -> bool:
    """Whether the metric counts things (reported as a non-negative integer)."""
    return metric.unit.split("/")[0].strip() in _COUNT_UNITS


def value_bounds(metric: Metric) -> tuple[float, float]:
    """The interval every simulated value of the metric stays in."""
    lo, hi = metric.min, metric.max
    if metric.unit == "%":
        lo, hi = max(lo, 0.0), min(hi, 100.0)
    if is_count(metric):
        lo, hi = float(math.ceil(max(lo, 0.0))), float(math.floor(hi))
    # A profile's odd range (a share above 100, counts below zero) wins over the conventions.
    return (lo, hi) if lo <= hi else (metric.min, metric.max)


def _fallback_shape(metric: Metric) -> Shape:
    lo, hi = value_bounds(metric)
    above = [t.value for t in metric.thresholds if t.direction is Direction.ABOVE]
    below = [t.value for t in metric.thresholds if t.direction is Direction.BELOW]
    normal_lo = max([lo, *below])
    normal_hi = min([hi, *above])
    span = max(normal_hi - normal_lo, 0.0)
    if metric.thresholds:
        level = normal_lo + 0.5 * span
    elif is_count(metric):
        level = normal_lo + 0.01 * span
    else:
        level = normal_lo + 0.3 * span
    unit_scaled = metric.unit != "%"
    return Shape(
        Kind.LEVEL,
        level,
        swing=0.1 * level,
        curve=Curve.DAY,
        noise=0.01 * span,
        drift=0.05 * span,
        scaled=unit_scaled,
    )


def shape_of(metric: Metric) -> Shape:
    """How the simulator makes values of this metric."""
    return SHAPES.get(metric.id) or _fallback_shape(metric)


def _step(metric: Metric) -> float:
    lo, hi = value_bounds(metric)
    return 1.0 if is_count(metric) else max((hi - lo) * 1e-3, 1e-3)


def _normal_side_limit(metric: Metric, threshold: Threshold) -> float:
    """The furthest a normal value may go towards this threshold (its clear point)."""
    edge = threshold.clear_at if threshold.clear_at is not None else threshold.value
    if is_count(metric):
        edge = math.floor(edge) if threshold.direction is Direction.ABOVE else math.ceil(edge)
    if threshold.breached(edge):
        edge += -_step(metric) if threshold.direction is Direction.ABOVE else _step(metric)
    return edge


def breach_target(metric: Metric, threshold: Threshold, u: float) -> float | None:
    """A value past the threshold (u in [0, 1] picks how far), or None if none fits."""
    lo, hi = value_bounds(metric)
    first, last = (
        ANOMALY_EXCESS_ABOVE if threshold.direction is Direction.ABOVE else ANOMALY_EXCESS_BELOW
    )
    excess = max(abs(threshold.value) * (first + (last - first) * u), _step(metric))
    up = threshold.direction is Direction.ABOVE
    target = threshold.value + excess if up else threshold.value - excess
    if is_count(metric):
        target = math.ceil(target) if up else math.floor(target)
    target = min(max(target, lo), hi)
    return float(target) if threshold.breached(target) else None


def _worst_threshold(metric: Metric) -> Threshold | None:
    order = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}
    usable = [t for t in metric.thresholds if breach_target(metric, t, 0.0) is not None]
    return max(usable, key=lambda t: order[t.severity], default=None)


# --- sources -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourcePlan:
    """One simulated source: its id, sector, the metrics it reports and its character."""

    source_id: str
    key: str  # the id without the run's prefix: seeds everything about the source
    sector_id: str
    metrics: tuple[Metric, ...]
    scale: float
    phase: float  # radians: shifts tides and drift between stations
    expected_interval_s: int


def profile_abbreviation(name: str) -> str:
    """Short tag of a profile name for source ids: bac-lieu -> bl, mekong -> mk."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    if not words:
        return "x"
    if len(words) > 1:
        return "".join(w[0] for w in words)
    word = words[0]
    consonant = next((c for c in word[1:] if c not in "aeiouy"), word[1:2])
    return word[0] + consonant


def _seeded(*parts: object) -> random.Random:
    # String seeds go through SHA-512 in `random`, so they are stable across runs and
    # independent of PYTHONHASHSEED.
    return random.Random("|".join(str(p) for p in parts))  # noqa: S311 (simulation, not secrets)


def plan_sources(profile: Profile, count: int, *, prefix: str = "") -> tuple[SourcePlan, ...]:
    """`count` sources spread evenly over the profile's sectors, with stable ids."""
    if count < 1:
        raise ConfigError(f"the simulator needs at least one source, not {count}")
    if prefix and not _PREFIX_RE.match(prefix):
        raise ConfigError(
            f"source prefix {prefix!r} must be lowercase letters, digits, '.', '_' or '-'"
        )
    sectors = sorted(profile.sectors, key=lambda s: s.order)
    tag = profile_abbreviation(profile.name)
    plans: list[SourcePlan] = []
    for k in range(count):
        sector = sectors[k % len(sectors)]
        key = f"{tag}-{sector.id.replace('_', '-')}-{k // len(sectors) + 1:03d}"
        rng = _seeded("plan", key)
        metrics = sector.metrics
        if len(metrics) > 1 and rng.random() < SUBSET_SOURCE_SHARE:
            kept = tuple(m for m in metrics if rng.random() < SUBSET_KEEP_PROBABILITY)
            metrics = kept or (rng.choice(metrics),)
        plans.append(
            SourcePlan(
                source_id=prefix + key,
                key=key,
                sector_id=sector.id,
                metrics=metrics,
                scale=rng.uniform(*PER_SOURCE_SCALE_RANGE),
                phase=rng.uniform(0.0, 2 * math.pi),
                expected_interval_s=min(m.interval_s for m in metrics),
            )
        )
    return tuple(plans)


# --- episodes and the model ----------------------------------------------------------------


EpisodeKind = Literal["anomaly", "intrusion"]


@dataclass(frozen=True)
class Episode:
    """An anomaly: one metric of one source held past a threshold for a while.

    An `intrusion` (salinity pushing inland) does not jump: it climbs from `base` to `target`
    over `rise_s`, holds, and falls back over `fall_s` before `end_s`.
    """

    source_key: str
    metric_id: str
    threshold: Threshold
    start_s: float
    end_s: float
    target: float
    kind: EpisodeKind = "anomaly"
    base: float = 0.0
    rise_s: float = 0.0
    fall_s: float = 0.0

    def active(self, t_s: float) -> bool:
        """Whether the episode covers epoch second `t_s`."""
        return self.start_s <= t_s < self.end_s

    def envelope(self, t_s: float) -> float:
        """How far the value has gone from `base` towards `target` at `t_s`, in [0, 1]."""
        if not self.active(t_s):
            return 0.0
        up = 1.0 if self.rise_s <= 0 else (t_s - self.start_s) / self.rise_s
        down = 1.0 if self.fall_s <= 0 else (self.end_s - t_s) / self.fall_s
        return max(0.0, min(1.0, up, down))


_V = TypeVar("_V")


def _bounded_put(cache: dict[tuple[str, int], _V], key: tuple[str, int], value: _V) -> None:
    if len(cache) >= _CACHE_MAX_ENTRIES:
        cache.clear()
    cache[key] = value


@dataclass(frozen=True, slots=True)
class _Rule:
    """What the model needs of a metric on every sample, computed once."""

    metric: Metric
    shape: Shape
    lo: float
    hi: float
    normal_lo: float
    normal_hi: float
    integer: bool
    drift_phase: float

    @classmethod
    def of(cls, metric: Metric) -> _Rule:
        shape = shape_of(metric)
        lo, hi = value_bounds(metric)
        normal_lo, normal_hi = lo, hi
        for t in metric.thresholds:
            limit = _normal_side_limit(metric, t)
            if t.direction is Direction.ABOVE:
                normal_hi = min(normal_hi, limit)
            else:
                normal_lo = max(normal_lo, limit)
        return cls(
            metric=metric,
            shape=shape,
            lo=lo,
            hi=hi,
            normal_lo=normal_lo,
            normal_hi=normal_hi,
            integer=shape.integer or is_count(metric),
            # each metric of a source drifts on its own, but the same way on every run
            drift_phase=(zlib.crc32(metric.id.encode()) % 628) / 100,
        )

    def finish(self, value: float) -> float:
        """Clamp into the metric's bounds and round as the metric is reported."""
        value = min(max(value, self.lo), self.hi)
        if self.integer:
            return int(min(max(round(value), math.ceil(self.lo)), math.floor(self.hi)))
        return min(max(round(value, self.shape.decimals), self.lo), self.hi)


class TelemetryModel:
    """Values of every metric of every source at any instant, deterministic given a seed."""

    def __init__(
        self,
        profile: Profile,
        *,
        seed: int,
        anomaly_probability_per_source_h: float = ANOMALY_PROBABILITY_PER_SOURCE_H,
        silence_probability_per_window: float = SILENCE_PROBABILITY_PER_WINDOW,
    ) -> None:
        if not 0.0 <= anomaly_probability_per_source_h <= 1.0:
            raise ConfigError("anomaly probability per source-hour must be within [0, 1]")
        if not 0.0 <= silence_probability_per_window <= 1.0:
            raise ConfigError("silence probability must be within [0, 1]")
        self.profile = profile
        self.seed = seed
        self.anomaly_probability_per_source_h = anomaly_probability_per_source_h
        self.silence_probability_per_window = silence_probability_per_window
        self._tz = ZoneInfo(profile.timezone)
        self._rules: dict[tuple[str, str], _Rule] = {}
        self._episodes: dict[tuple[str, int], Episode | None] = {}
        self._silences: dict[tuple[str, int], tuple[float, float] | None] = {}
        self._day_totals: dict[tuple[str, int], float] = {}
        self._candidates: dict[str, tuple[tuple[Metric, Threshold], ...]] = {}
        self._lookbacks: dict[str, int] = {}
        self.demo: DemoPlan | None = None

    def start_demo(
        self, schedule: DemoSchedule, sources: Sequence[SourcePlan], origin_ms: int
    ) -> DemoPlan:
        """Follow the demo's schedule from `origin_ms` on, besides the drawn episodes."""
        self.demo = DemoPlan(self, sources, schedule, origin_ms)
        return self.demo

    # -- values --

    def sample(self, source: SourcePlan, ts_ms: int) -> dict[str, float]:
        """Readings of all the source's metrics at `ts_ms` (counts as int)."""
        t_s = ts_ms / 1000
        local, hour = self._local(t_s)
        episode = self.episode_at(source, ts_ms)
        rng = _seeded(self.seed, "noise", source.key, ts_ms)
        out: dict[str, float] = {}
        for metric in source.metrics:
            rule = self._rule(source.sector_id, metric)
            if episode is not None and episode.metric_id == metric.id:
                if episode.kind == "intrusion":
                    out[metric.id] = self._ramp_value(rule, episode, t_s, rng)
                    continue
                raw = self._episode_value(rule, episode, rng)
            else:
                raw = self._normal(source, rule, t_s, local, hour, rng)
                raw = max(min(raw, rule.normal_hi), rule.normal_lo)
            out[metric.id] = rule.finish(raw)
        return out

    def normal_value(self, source: SourcePlan, metric_id: str, ts_ms: int) -> float:
        """What one metric of the source reads at `ts_ms` outside any episode."""
        metric = next((m for m in source.metrics if m.id == metric_id), None)
        if metric is None:
            raise ConfigError(f"source {source.source_id} does not report {metric_id}")
        rule = self._rule(source.sector_id, metric)
        t_s = ts_ms / 1000
        local, hour = self._local(t_s)
        rng = _seeded(self.seed, "noise", source.key, ts_ms, metric_id)
        raw = self._normal(source, rule, t_s, local, hour, rng)
        return rule.finish(max(min(raw, rule.normal_hi), rule.normal_lo))

    def _local(self, t_s: float) -> tuple[datetime, float]:
        local = datetime.fromtimestamp(t_s, self._tz)
        return local, local.hour + local.minute / 60 + local.second / 3600

    def value(self, source: SourcePlan, metric_id: str, ts_ms: int) -> float:
        """One metric's reading at `ts_ms`."""
        return self.sample(source, ts_ms)[metric_id]

    def _rule(self, sector_id: str, metric: Metric) -> _Rule:
        key = (sector_id, metric.id)
        rule = self._rules.get(key)
        if rule is None:
            rule = self._rules[key] = _Rule.of(metric)
        return rule

    def _normal(
        self,
        source: SourcePlan,
        rule: _Rule,
        t_s: float,
        local: datetime,
        hour: float,
        rng: random.Random,
    ) -> float:
        shape = rule.shape
        scale = source.scale if shape.scaled else 1.0
        if shape.kind is Kind.TODAY:
            total = shape.level * scale * self._day_total_factor(source, rule.metric, local)
            return total * day_share(shape.curve, hour)
        if shape.kind is Kind.MONTH:
            return shape.level * scale * (local.day - 1 + hour / 24)
        if shape.kind is Kind.YEAR:
            days = 366 if calendar.isleap(local.year) else 365
            return shape.level * (local.timetuple().tm_yday - 1 + hour / 24) / days
        if shape.kind is Kind.TIDAL:
            cycle = tide(t_s - shape.lag_s, source.phase)
        else:
            cycle = daily_factor(shape.curve, hour)
        value = scale * (shape.level + shape.swing * cycle)
        if shape.drift:
            value += shape.drift * slow_drift(t_s, source.phase + rule.drift_phase)
        if shape.noise:
            value += rng.gauss(0.0, shape.noise)
        return value

    def _day_total_factor(self, source: SourcePlan, metric: Metric, local: datetime) -> float:
        key = (f"{source.key}/{metric.id}", local.toordinal())
        cached = self._day_totals.get(key)
        if cached is not None:
            return cached
        factor = max(0.0, _seeded(self.seed, "day", *key).gauss(1.0, DAY_TOTAL_SPREAD))
        _bounded_put(self._day_totals, key, factor)
        return factor

    def _episode_value(self, rule: _Rule, episode: Episode, rng: random.Random) -> float:
        value = episode.target * (1.0 + rng.gauss(0.0, ANOMALY_WOBBLE))
        value = min(max(value, rule.lo), rule.hi)
        if rule.integer:
            value = float(round(value))
        # The wobble must never let the value slip back across: the alert would reset.
        return value if episode.threshold.breached(value) else episode.target

    def _ramp_value(self, rule: _Rule, episode: Episode, t_s: float, rng: random.Random) -> float:
        smooth = episode.base + (episode.target - episode.base) * episode.envelope(t_s)
        noisy = smooth + rng.gauss(0.0, rule.shape.noise) if rule.shape.noise else smooth
        value, curve = rule.finish(noisy), rule.finish(smooth)
        # Noise must not take the value across a threshold the curve has not crossed (or back
        # over one it has): a rule's hold timer would restart and the alert come late.
        if any(t.breached(value) != t.breached(curve) for t in rule.metric.thresholds):
            return curve
        return value

    # -- anomaly episodes --

    def _anomaly_candidates(self, source: SourcePlan) -> tuple[tuple[Metric, Threshold], ...]:
        found = self._candidates.get(source.key)
        if found is None:
            pairs = [(m, _worst_threshold(m)) for m in source.metrics]
            found = tuple((m, t) for m, t in pairs if t is not None)
            self._candidates[source.key] = found
        return found

    def _episode_in_hour(self, source: SourcePlan, hour: int) -> Episode | None:
        key = (source.key, hour)
        if key in self._episodes:
            return self._episodes[key]
        episode = None
        candidates = self._anomaly_candidates(source)
        rng = _seeded(self.seed, "anomaly", source.key, hour)
        if candidates and rng.random() < self.anomaly_probability_per_source_h:
            metric, threshold = rng.choice(candidates)
            basis = max(threshold.for_s, ANOMALY_MIN_BASIS_S)
            start = hour * HOUR_S + rng.random() * HOUR_S
            target = breach_target(metric, threshold, rng.random())
            if target is not None:
                episode = Episode(
                    source_key=source.key,
                    metric_id=metric.id,
                    threshold=threshold,
                    start_s=start,
                    end_s=start + rng.uniform(*ANOMALY_LENGTH_IN_FOR_S) * basis,
                    target=target,
                )
        _bounded_put(self._episodes, key, episode)
        return episode

    def _lookback_h(self, source: SourcePlan) -> int:
        """How many hours back an episode still running now may have started."""
        hours = self._lookbacks.get(source.key)
        if hours is None:
            longest = max(
                (max(t.for_s, ANOMALY_MIN_BASIS_S) for _, t in self._anomaly_candidates(source)),
                default=0,
            )
            hours = self._lookbacks[source.key] = math.ceil(
                ANOMALY_LENGTH_IN_FOR_S[1] * longest / HOUR_S
            )
        return hours

    def episode_at(self, source: SourcePlan, ts_ms: int) -> Episode | None:
        """The anomaly episode of the source running at `ts_ms`, if any: the demo's, else the
        latest started of the drawn ones."""
        if self.demo is not None:
            planned = self.demo.episode_at(source, ts_ms / 1000)
            if planned is not None:
                return planned
        return self.drawn_episode_at(source, ts_ms)

    def drawn_episode_at(self, source: SourcePlan, ts_ms: int) -> Episode | None:
        """The episode drawn at random (hour by hour) running at `ts_ms`, if any."""
        if self.anomaly_probability_per_source_h <= 0.0:
            return None
        t_s = ts_ms / 1000
        hour = math.floor(t_s / HOUR_S)
        for h in range(hour, hour - self._lookback_h(source) - 1, -1):
            episode = self._episode_in_hour(source, h)
            if episode is not None and episode.active(t_s):
                return episode
        return None

    def episodes_between(self, source: SourcePlan, start_ms: int, end_ms: int) -> list[Episode]:
        """Episodes of the source that start within [start_ms, end_ms)."""
        if self.anomaly_probability_per_source_h <= 0.0:
            return []
        first, last = math.floor(start_ms / 1000 / HOUR_S), math.floor(end_ms / 1000 / HOUR_S)
        found = (self._episode_in_hour(source, h) for h in range(first, last + 1))
        return [e for e in found if e is not None and start_ms <= e.start_s * 1000 < end_ms]

    # -- silence --

    def _silence_in_window(self, source: SourcePlan, window: int) -> tuple[float, float] | None:
        key = (source.key, window)
        if key in self._silences:
            return self._silences[key]
        span: tuple[float, float] | None = None
        rng = _seeded(self.seed, "silence", source.key, window)
        if rng.random() < self.silence_probability_per_window:
            interval = source.expected_interval_s
            length = rng.uniform(*SILENCE_LENGTH_IN_INTERVALS) * interval
            start = rng.uniform(0.0, SILENCE_WINDOW_IN_INTERVALS * interval - length)
            span = (start, start + length)
        _bounded_put(self._silences, key, span)
        return span

    def is_silent(self, source: SourcePlan, ts_ms: int) -> bool:
        """Whether the source has gone quiet at `ts_ms` (it publishes nothing then): in one of
        the demo's outages or in a drawn silence."""
        if self.demo is not None and self.demo.offline(source, ts_ms / 1000):
            return True
        return self.drawn_silence(source, ts_ms)

    def drawn_silence(self, source: SourcePlan, ts_ms: int) -> bool:
        """Whether the source is in a silence drawn at random (window by window) at `ts_ms`."""
        if self.silence_probability_per_window <= 0.0:
            return False
        window_s = SILENCE_WINDOW_IN_INTERVALS * source.expected_interval_s
        # Shift each source's windows so silences do not line up across sources.
        t_s = ts_ms / 1000 + source.phase / (2 * math.pi) * window_s
        window = math.floor(t_s / window_s)
        span = self._silence_in_window(source, window)
        return span is not None and span[0] <= t_s - window * window_s < span[1]


# --- the demo's schedule -------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSchedule:
    """The cadence of `ioc demo`, in seconds from the run's first message.

    Threshold anomalies start at `anomaly_starts_s`, then one every `anomaly_gap_s`, each in
    the next sector of a shuffled round, on a rule held at most `max_hold_s` (by default only
    rules without a hold time, so each alert opens as its anomaly starts and the trickle is
    steady; the first anomaly is on the quickest rule there is); each lasts its rule's hold
    time plus `anomaly_extra_s`, so the alert opens and then resolves.

    A camera (a source of `outage_sector`) goes offline from `first_outage_s`: it publishes
    `offline` and stays silent long enough for the silence rule (`silence_factor` x its
    interval, at least `min_silence_s`) and the sweeper (`sweep_interval_s`) to open an alert,
    which then shows for `outage_visible_s` before the camera is back; the next one follows
    `outage_gap_s` later.

    When a source reports `intrusion_metric` with a threshold above, salinity intrudes from
    `first_intrusion_s`: it rises past every threshold over `intrusion_rise_s`, holds until
    the highest threshold's hold time has passed and its alert has shown for
    `intrusion_visible_s`, and recedes over `intrusion_fall_s`; the next intrusion, at another
    station, follows `intrusion_gap_s` later.

    Drawn anomalies and silences go on as without the schedule.
    """

    anomaly_starts_s: tuple[float, ...] = (5.0, 20.0)
    anomaly_gap_s: tuple[float, float] = (30.0, 60.0)
    anomaly_extra_s: tuple[float, float] = (60.0, 150.0)
    max_hold_s: int = 0
    first_outage_s: float = 20.0
    outage_gap_s: float = 240.0
    outage_visible_s: float = 90.0
    outage_sector: str = "security"
    sweep_interval_s: float = 15.0
    min_silence_s: float = 60.0
    silence_factor: float = SILENCE_FACTOR_DEFAULT
    first_intrusion_s: float = 10.0
    intrusion_gap_s: float = 600.0
    intrusion_rise_s: float = 240.0
    intrusion_fall_s: float = 240.0
    intrusion_visible_s: float = 120.0
    intrusion_metric: str = "salinity"

    def __post_init__(self) -> None:
        problems = []
        starts = self.anomaly_starts_s
        if not starts or any(b <= a for a, b in pairwise(starts)):
            problems.append("anomaly starts must be rising seconds")
        for name in ("anomaly_gap_s", "anomaly_extra_s"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                problems.append(f"{name} must be a range of positive seconds")
        for name in (
            "outage_gap_s",
            "outage_visible_s",
            "sweep_interval_s",
            "silence_factor",
            "intrusion_gap_s",
            "intrusion_rise_s",
            "intrusion_fall_s",
            "intrusion_visible_s",
        ):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive")
        if min(starts or (0.0,)) < 0 or self.first_outage_s < 0 or self.first_intrusion_s < 0:
            problems.append("first starts must not be negative")
        if self.max_hold_s < 0:
            problems.append("max_hold_s must not be negative")
        if problems:
            raise ConfigError("demo schedule: " + "; ".join(problems))

    def outage_s(self, interval_s: float) -> float:
        """How long a source with this reporting interval stays offline."""
        allowance = max(self.min_silence_s, self.silence_factor * interval_s)
        return allowance + self.sweep_interval_s + self.outage_visible_s


@dataclass(frozen=True)
class Outage:
    """A source of the demo gone offline: no readings from `start_s` until `end_s`."""

    source_key: str
    start_s: float
    end_s: float

    def active(self, t_s: float) -> bool:
        """Whether the source is offline at epoch second `t_s`."""
        return self.start_s <= t_s < self.end_s


def intrusion_stations(sources: Sequence[SourcePlan], metric_id: str) -> list[SourcePlan]:
    """The sources an intrusion of `metric_id` can happen at: they report it, and it has a
    threshold above."""
    return [
        s
        for s in sources
        if any(
            m.id == metric_id and any(t.direction is Direction.ABOVE for t in m.thresholds)
            for m in s.metrics
        )
    ]


StatusChange = tuple[SourcePlan, SourceStatus, Outage]

_STREAMS = ("anomaly", "intrusion", "outage")


@dataclass
class _Busy:
    """What the demo planned for one source, in start order (never overlapping)."""

    episodes: list[Episode] = field(default_factory=list)
    outages: list[Outage] = field(default_factory=list)


class DemoPlan:
    """The episodes and outages of a `DemoSchedule`, planned in time order as the clock
    reaches them; a function of (seed, sources, schedule, origin) only."""

    def __init__(
        self,
        model: TelemetryModel,
        sources: Sequence[SourcePlan],
        schedule: DemoSchedule,
        origin_ms: int,
    ) -> None:
        self.model = model
        self.schedule = schedule
        self.origin_s = origin_ms / 1000
        self._rng = {name: _seeded(model.seed, "demo", name) for name in _STREAMS}
        self._busy: dict[str, _Busy] = {s.key: _Busy() for s in sources}
        self._sources = {s.key: s for s in sources}
        # anomaly candidates by sector: (source, metric, threshold) a value can breach
        self._candidates: dict[str, list[tuple[SourcePlan, Metric, Threshold]]] = {}
        for source in sources:
            for metric in source.metrics:
                for t in metric.thresholds:
                    usable = breach_target(metric, t, 0.0) is not None
                    if usable and t.for_s <= schedule.max_hold_s:
                        self._candidates.setdefault(source.sector_id, []).append(
                            (source, metric, t)
                        )
        self._quickest = min(
            (t.for_s for found in self._candidates.values() for _, _, t in found), default=0
        )
        self._round: list[str] = []
        cameras = [s for s in sources if s.sector_id == schedule.outage_sector]
        if not cameras:  # no such sector: the sources that report most often
            shortest = min(s.expected_interval_s for s in sources)
            cameras = [s for s in sources if s.expected_interval_s == shortest]
        self._cameras = cameras
        self._stations = intrusion_stations(sources, schedule.intrusion_metric)
        self._stations_round: list[SourcePlan] = []
        self._anomalies = 0
        origin = self.origin_s
        self._next = {
            "anomaly": origin + schedule.anomaly_starts_s[0] if self._candidates else math.inf,
            "intrusion": origin + schedule.first_intrusion_s if self._stations else math.inf,
            "outage": origin + schedule.first_outage_s,
        }
        self._changes: list[tuple[float, int, str, SourceStatus]] = []  # a heap of status changes
        self._change_seq = 0
        self.episodes: list[Episode] = []
        self.outages: list[Outage] = []

    # -- what the model asks --

    def episode_at(self, source: SourcePlan, t_s: float) -> Episode | None:
        """The demo's episode of the source running at `t_s`, if any."""
        self.plan_until(t_s)
        busy = self._busy.get(source.key)
        for episode in reversed(busy.episodes if busy else []):
            if episode.start_s <= t_s:
                return episode if episode.active(t_s) else None
        return None

    def offline(self, source: SourcePlan, t_s: float) -> bool:
        """Whether the source is in one of the demo's outages at `t_s`."""
        self.plan_until(t_s)
        busy = self._busy.get(source.key)
        for outage in reversed(busy.outages if busy else []):
            if outage.start_s <= t_s:
                return outage.active(t_s)
        return False

    def due_changes(self, t_s: float) -> list[StatusChange]:
        """Status changes (offline at an outage's start, online at its end) due by `t_s`, in
        time order, each once."""
        self.plan_until(t_s)
        due: list[StatusChange] = []
        while self._changes and self._changes[0][0] <= t_s:
            at, _, key, status = heapq.heappop(self._changes)
            outage = next(o for o in self._busy[key].outages if o.start_s <= at <= o.end_s)
            due.append((self._sources[key], status, outage))
        return due

    # -- planning --

    def plan_until(self, t_s: float) -> None:
        """Plan every episode and outage starting by `t_s`, in start order."""
        while True:
            stream = min(_STREAMS, key=lambda name: self._next[name])
            at = self._next[stream]
            if at > t_s:
                return
            if stream == "anomaly":
                self._next[stream] = self._plan_anomaly(at)
            elif stream == "intrusion":
                self._next[stream] = self._plan_intrusion(at)
            else:
                self._next[stream] = self._plan_outage(at)

    def _free(self, source: SourcePlan, start_s: float, end_s: float) -> bool:
        """Whether nothing else happens to the source over [start_s, end_s)."""
        busy = self._busy[source.key]
        spans = [(e.start_s, e.end_s) for e in busy.episodes]
        spans += [(o.start_s, o.end_s) for o in busy.outages]
        if any(a < end_s and start_s < b for a, b in spans):
            return False
        at_ms = round(start_s * 1000)
        model = self.model
        return (
            not model.drawn_silence(source, at_ms) and model.drawn_episode_at(source, at_ms) is None
        )

    def _plan_anomaly(self, at: float) -> float:
        rng = self._rng["anomaly"]
        schedule = self.schedule
        k = self._anomalies
        self._anomalies += 1
        if k + 1 < len(schedule.anomaly_starts_s):
            following = self.origin_s + schedule.anomaly_starts_s[k + 1]
        else:
            following = at + rng.uniform(*schedule.anomaly_gap_s)
        longest_extra = schedule.anomaly_extra_s[1]
        for _ in range(len(self._candidates)):
            if not self._round:
                self._round = sorted(self._candidates)
                rng.shuffle(self._round)
            sector = self._round.pop()
            found = [
                (source, metric, t)
                for source, metric, t in self._candidates[sector]
                if (k > 0 or t.for_s == self._quickest)
                and self._free(source, at, at + t.for_s + longest_extra)
            ]
            if not found:
                continue
            source, metric, threshold = rng.choice(found)
            target = breach_target(metric, threshold, rng.random())
            if target is None:
                continue
            length = threshold.for_s + rng.uniform(*schedule.anomaly_extra_s)
            self._add(
                source,
                Episode(source.key, metric.id, threshold, at, at + length, target),
            )
            break
        return following

    def _plan_intrusion(self, at: float) -> float:
        rng = self._rng["intrusion"]
        schedule = self.schedule
        for _ in range(len(self._stations)):
            if not self._stations_round:
                self._stations_round = list(self._stations)
                rng.shuffle(self._stations_round)
            station = self._stations_round.pop()
            metric = next(m for m in station.metrics if m.id == schedule.intrusion_metric)
            above = [t for t in metric.thresholds if t.direction is Direction.ABOVE]
            top = max(above, key=lambda t: t.value)
            base = self.model.normal_value(station, metric.id, round(at * 1000))
            target = breach_target(metric, top, rng.uniform(0.2, 0.6))
            if target is None or target <= base:
                continue
            # the rising curve passes the highest threshold here; its hold time runs from then
            crossing = max(0.0, min(1.0, (top.value - base) / (target - base)))
            fired = at + crossing * schedule.intrusion_rise_s + top.for_s
            fall_from = max(at + schedule.intrusion_rise_s, fired + schedule.intrusion_visible_s)
            end = fall_from + schedule.intrusion_fall_s
            if not self._free(station, at, end):
                continue
            self._add(
                station,
                Episode(
                    station.key,
                    metric.id,
                    top,
                    at,
                    end,
                    target,
                    kind="intrusion",
                    base=base,
                    rise_s=schedule.intrusion_rise_s,
                    fall_s=schedule.intrusion_fall_s,
                ),
            )
            return end + schedule.intrusion_gap_s
        return at + schedule.intrusion_gap_s

    def _plan_outage(self, at: float) -> float:
        rng = self._rng["outage"]
        schedule = self.schedule
        free = [
            s
            for s in self._cameras
            if self._free(s, at, at + schedule.outage_s(s.expected_interval_s))
        ]
        if not free:
            return at + schedule.outage_gap_s
        camera = rng.choice(free)
        outage = Outage(camera.key, at, at + schedule.outage_s(camera.expected_interval_s))
        self._busy[camera.key].outages.append(outage)
        self.outages.append(outage)
        for when, status in (
            (outage.start_s, SourceStatus.OFFLINE),
            (outage.end_s, SourceStatus.ONLINE),
        ):
            self._change_seq += 1
            heapq.heappush(self._changes, (when, self._change_seq, camera.key, status))
        return outage.end_s + schedule.outage_gap_s

    def _add(self, source: SourcePlan, episode: Episode) -> None:
        self._busy[source.key].episodes.append(episode)
        self.episodes.append(episode)
