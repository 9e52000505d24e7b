"""The telemetry simulator: believable values, alert-worthy episodes, bad input on purpose.

Pure tests drive the value model and the message stream with chosen clock times; the last tests
publish through a real broker and read everything back.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import StringIO
from itertools import pairwise
from statistics import mean
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import orjson
import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from alerts.evaluation import run_group
from alerts.rules import Rule, RuleIndex
from alerts.seed import seeds
from ingest.simulator import (
    BAD_KINDS,
    BadKind,
    Message,
    MessageStream,
    SimulationConfig,
    SimulatorStats,
    TelemetryPublisher,
    run_simulation,
)
from ingest.simulator_curves import (
    DemoSchedule,
    SourcePlan,
    TelemetryModel,
    is_count,
    plan_sources,
)
from ioc.catalogue import Profile, load_profile
from ioc.embedded_pg import free_port
from ioc.errors import BrokerError, ConfigError
from ioc.mqtt import paho_client, parse_mqtt_url
from ioc.vocabulary import Severity

PROFILES = ("mekong", "bac-lieu", "binh-phuoc")
TZ = ZoneInfo("Asia/Ho_Chi_Minh")
# A Monday in the dry season, when salinity intrusion is the Mekong delta's worry.
DAY0 = datetime(2025, 3, 10, tzinfo=TZ)
T0_MS = int(DAY0.timestamp() * 1000)
DEADLINE_S = 15.0
# Clock skew a consumer tolerates before calling a timestamp "in the future".
FUTURE_TOLERANCE_MS = 60_000


def at(day: int, hour: int, minute: int = 0) -> int:
    """Epoch ms of a local time `day` days after DAY0."""
    return int((DAY0 + timedelta(days=day, hours=hour, minutes=minute)).timestamp() * 1000)


def with_metric(sources: tuple[SourcePlan, ...], metric_id: str) -> list[SourcePlan]:
    return [s for s in sources if any(m.id == metric_id for m in s.metrics)]


# --- what a consumer makes of a message ---------------------------------------------------


def classify(topic: str, payload: bytes, profile: Profile, now_ms: int) -> tuple[str | None, int]:
    """(why the message is bad, or None; how many readings it carries) per DESIGN section 4."""
    root, version, sector_id, source_id, channel = topic.split("/")
    assert (root, version) == ("ioc", "v1")
    assert channel in ("telemetry", "senml")
    sector = profile.sector(sector_id)
    if sector is None:
        return BadKind.UNKNOWN_SECTOR, 0
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return BadKind.MALFORMED_JSON, 0
    readings: list[tuple[int, str, Any]] = []
    if channel == "senml":
        assert isinstance(doc, list)
        base_name, base_time = "", 0.0
        for record in doc:
            base_name = record.get("bn", base_name)
            base_time = record.get("bt", base_time)
            name = base_name + record["n"]
            assert name.startswith(f"{source_id}:")
            metric = sector.metric(record["n"])
            assert metric is not None
            assert record["u"] == metric.unit
            ts = round((base_time + record.get("t", 0)) * 1000)
            readings.append((ts, name.removeprefix(f"{source_id}:"), record["v"]))
    else:
        items = doc if isinstance(doc, list) else [doc]
        for item in items:
            assert isinstance(item["ts"], int)
            readings += [(item["ts"], k, v) for k, v in item["values"].items()]
    for ts, name, value in readings:
        metric = sector.metric(name)
        if metric is None:
            return BadKind.UNKNOWN_METRIC, 0
        if isinstance(value, str):
            return BadKind.STRING_VALUE, 0
        if not metric.contains(value):
            return BadKind.OUT_OF_RANGE, 0
        if ts > now_ms + FUTURE_TOLERANCE_MS:
            return BadKind.FUTURE_TIMESTAMP, 0
    return None, len(readings)


# --- values -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROFILES)
@pytest.mark.parametrize("anomalies", [None, 1.0], ids=["default-anomalies", "hourly-anomalies"])
def test_values_stay_in_range_across_a_day(name: str, anomalies: float | None) -> None:
    profile = load_profile(name)
    sources = plan_sources(profile, 6 * len(profile.sectors))
    extra = {} if anomalies is None else {"anomaly_probability_per_source_h": anomalies}
    model = TelemetryModel(profile, seed=11, **extra)
    reported: set[tuple[str, str]] = set()
    for source in sources:
        for minute in range(0, 24 * 60, 10):
            ts = at(0, 0, minute)
            values = model.sample(source, ts)
            assert set(values) == {m.id for m in source.metrics}
            episode = model.episode_at(source, ts)
            for metric in source.metrics:
                value = values[metric.id]
                reported.add((source.sector_id, metric.id))
                assert metric.min <= value <= metric.max, (source.source_id, metric.id, value)
                if metric.unit == "%":
                    assert 0 <= value <= 100
                if is_count(metric):
                    assert isinstance(value, int)
                    assert value >= 0
                if episode is None or episode.metric_id != metric.id:
                    # outside an anomaly episode no default alert threshold is crossed
                    assert not any(t.breached(value) for t in metric.thresholds), (
                        source.source_id,
                        metric.id,
                        value,
                    )
    every_metric = {(s.id, m.id) for s in profile.sectors for m in s.metrics}
    assert reported == every_metric


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    ts_ms=st.integers(min_value=at(-3650, 0), max_value=at(3650, 0)),
    anomalies=st.sampled_from([0.0, 0.05, 1.0]),
)
def test_any_seed_and_instant_gives_valid_readings(seed: int, ts_ms: int, anomalies: float) -> None:
    profile = load_profile("binh-phuoc")
    model = TelemetryModel(profile, seed=seed, anomaly_probability_per_source_h=anomalies)
    for source in plan_sources(profile, 2 * len(profile.sectors)):
        values = model.sample(source, ts_ms)
        for metric in source.metrics:
            assert metric.min <= values[metric.id] <= metric.max
            assert math.isfinite(values[metric.id])


def test_sources_are_spread_over_all_sectors_with_stable_ids() -> None:
    profile = load_profile("bac-lieu")
    sources = plan_sources(profile, 20)
    assert {s.sector_id for s in sources} == {s.id for s in profile.sectors}
    assert len({s.source_id for s in sources}) == 20
    assert sources[0].source_id == "bl-citizen-reports-001"
    assert sources[9].source_id == "bl-security-002"
    # more sources keep the first ones as they were; a run prefix only prepends
    assert plan_sources(profile, 40)[:20] == sources
    prefixed = plan_sources(profile, 20, prefix="run7-")
    assert [p.source_id for p in prefixed] == [f"run7-{s.source_id}" for s in sources]
    assert [p.metrics for p in prefixed] == [s.metrics for s in sources]
    with pytest.raises(ConfigError):
        plan_sources(profile, 3, prefix="Bad/Prefix")


def test_traffic_flow_at_eight_exceeds_flow_at_three() -> None:
    profile = load_profile("mekong")
    model = TelemetryModel(profile, seed=3)
    sources = with_metric(plan_sources(profile, 80), "flow")
    assert len(sources) >= 5
    for source in sources:
        for day in range(7):
            assert model.value(source, "flow", at(day, 8)) > model.value(source, "flow", at(day, 3))


@pytest.mark.parametrize(
    ("profile_name", "metric_id", "high_hour", "low_hour", "ratio"),
    [
        ("mekong", "mean_speed", 3, 8, 1.3),  # free-flowing at night, slow in the rush
        ("mekong", "flow", 17, 12, 1.2),  # the evening peak tops midday
        ("mekong", "aqi", 5, 14, 1.5),  # stagnant air before dawn
        ("mekong", "pm25", 4, 15, 1.5),
        ("binh-phuoc", "bed_occupancy_pct", 14, 3, 1.05),  # admissions by day
        ("binh-phuoc", "emergency_waiting", 15, 2, 1.5),
        ("bac-lieu", "answer_rate_pct", 3, 11, 1.01),  # the call centre is busiest by day
        ("bac-lieu", "calls_waiting", 11, 3, 3.0),
    ],
)
def test_daily_curves(
    profile_name: str, metric_id: str, high_hour: int, low_hour: int, ratio: float
) -> None:
    profile = load_profile(profile_name)
    model = TelemetryModel(profile, seed=4, anomaly_probability_per_source_h=0)
    sources = with_metric(plan_sources(profile, 10 * len(profile.sectors)), metric_id)
    assert sources
    high = mean(model.value(s, metric_id, at(d, high_hour)) for s in sources for d in range(7))
    low = mean(model.value(s, metric_id, at(d, low_hour)) for s in sources for d in range(7))
    assert high > ratio * low


def test_salinity_and_water_level_follow_the_tide() -> None:
    profile = load_profile("mekong")
    model = TelemetryModel(profile, seed=8, anomaly_probability_per_source_h=0)
    source = with_metric(plan_sources(profile, 80), "salinity")[0]
    step_min = 10
    lag_half = round(6.21 * 60 / step_min)  # half a lunar semi-diurnal tide
    lag_full = round(12.42 * 60 / step_min)
    for metric_id in ("salinity", "water_level"):
        series = [model.value(source, metric_id, at(0, 0, m)) for m in range(0, 3 * 1440, step_min)]
        mu = mean(series)
        dev = [v - mu for v in series]

        def corr(lag: int, dev: list[float] = dev) -> float:
            pairs = list(zip(dev, dev[lag:], strict=False))
            num = sum(a * b for a, b in pairs)
            return num / math.sqrt(sum(a * a for a, _ in pairs) * sum(b * b for _, b in pairs))

        assert corr(lag_full) > 0.5, metric_id
        assert corr(lag_half) < -0.3, metric_id


def test_a_salinity_episode_holds_above_critical_longer_than_its_hold_time() -> None:
    profile = load_profile("mekong")
    water = profile.sector("water")
    assert water is not None
    salinity = water.metric("salinity")
    assert salinity is not None
    critical = next(t for t in salinity.thresholds if t.severity is Severity.CRITICAL)
    assert critical.value == 4
    model = TelemetryModel(profile, seed=5)
    step_ms = 60_000
    longest_s = 0.0
    for source in with_metric(plan_sources(profile, 80), "salinity"):
        run: list[int] = []
        for ts in range(at(0, 0), at(14, 0), step_ms):
            value = model.value(source, "salinity", ts)
            if critical.breached(value):
                run.append(ts)
                continue
            if run:
                longest_s = max(longest_s, (run[-1] - run[0]) / 1000)
                # once the episode is over the value falls back below the clear point
                assert critical.clear_at is not None
                assert value < critical.clear_at
                run = []
            if longest_s > critical.for_s:
                break
        if longest_s > critical.for_s:
            break
    assert longest_s > critical.for_s


def test_sources_fall_silent_for_several_intervals_then_come_back() -> None:
    profile = load_profile("mekong")
    model = TelemetryModel(profile, seed=2)
    step_ms = 15_000
    gaps: list[float] = []
    for source in with_metric(plan_sources(profile, 40), "flow"):
        silent_since = None
        for ts in range(at(0, 0), at(2, 0), step_ms):
            if model.is_silent(source, ts):
                silent_since = silent_since or ts
            elif silent_since is not None:
                gaps.append((ts - silent_since) / 1000 / source.expected_interval_s)
                silent_since = None
    assert gaps, "no source went silent in two days"
    assert min(gaps) >= 2.5
    assert max(gaps) <= 9


# --- the message stream -------------------------------------------------------------------


def make_stream(seed: int = 1, **overrides: Any) -> MessageStream:
    fields: dict[str, Any] = {
        "profile": load_profile("mekong"),
        "sources": 24,
        "rate_per_s": 100.0,
    }
    fields.update(overrides)
    return MessageStream(SimulationConfig(**fields), seed=seed)


def drive(stream: MessageStream, count: int, step_ms: int = 10) -> Iterator[tuple[int, Message]]:
    """The stream's messages at a steady clock from T0_MS."""
    for i in range(count):
        now_ms = T0_MS + i * step_ms
        message = stream.next_message(now_ms)
        if message is not None:
            yield now_ms, message


def test_same_seed_gives_the_same_messages() -> None:
    def run(seed: int) -> list[tuple[str, bytes]]:
        stream = make_stream(seed, batch=3, bad_fraction=0.02)
        return [(m.topic, m.payload) for _, m in drive(stream, 3000)]

    first = run(42)
    assert first == run(42)
    assert first != run(43)


def test_bad_messages_come_at_the_configured_fraction_in_every_kind() -> None:
    profile = load_profile("mekong")
    stream = make_stream(9)
    sent = list(drive(stream, 40_000))
    bad = [m for _, m in sent if m.bad is not None]
    assert 0.004 <= len(bad) / len(sent) <= 0.006
    # the kinds take turns
    assert [m.bad for m in bad[: 2 * len(BAD_KINDS)]] == [*BAD_KINDS, *BAD_KINDS]
    for now_ms, message in sent:
        reason, readings = classify(message.topic, message.payload, profile, now_ms)
        assert reason == message.bad, message
        assert readings == message.readings


def test_bad_message_payloads() -> None:
    profile = load_profile("mekong")
    stream = make_stream(3, bad_fraction=1.0, senml_share=0.0)
    seen: dict[BadKind, tuple[str, bytes, int]] = {}
    for now_ms, message in drive(stream, len(BAD_KINDS)):
        assert message.bad is not None
        seen[message.bad] = (message.topic, message.payload, now_ms)
    assert set(seen) == set(BAD_KINDS)

    topic, payload, _ = seen[BadKind.MALFORMED_JSON]
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(payload)
    assert topic.endswith("/telemetry")

    _, payload, _ = seen[BadKind.UNKNOWN_METRIC]
    assert orjson.loads(payload)["values"] == {"no_such_metric": 1.0}

    topic, payload, _ = seen[BadKind.OUT_OF_RANGE]
    sector = profile.sector(topic.split("/")[2])
    assert sector is not None
    [(name, value)] = orjson.loads(payload)["values"].items()
    metric = sector.metric(name)
    assert metric is not None
    assert value > metric.max

    _, payload, _ = seen[BadKind.STRING_VALUE]
    [value] = orjson.loads(payload)["values"].values()
    assert value == "n/a"

    _, payload, now_ms = seen[BadKind.FUTURE_TIMESTAMP]
    assert orjson.loads(payload)["ts"] == now_ms + 3_600_000

    topic, payload, _ = seen[BadKind.UNKNOWN_SECTOR]
    assert topic.startswith("ioc/v1/no_such_sector/")
    assert orjson.loads(payload)["values"]


def test_batches_and_senml_follow_the_contract() -> None:
    profile = load_profile("mekong")
    stream = make_stream(6, batch=5, bad_fraction=0.0)
    last_ts: dict[str, int] = {}
    senml = 0
    sent = list(drive(stream, 3000, step_ms=7))
    for now_ms, message in sent:
        reason, readings = classify(message.topic, message.payload, profile, now_ms)
        assert reason is None
        assert readings == message.readings > 0
        doc = orjson.loads(message.payload)
        if message.senml:
            senml += 1
            assert message.topic.endswith("/senml")
            assert doc[0]["bn"] == f"{message.source_id}:"
            stamps = sorted({round((doc[0]["bt"] + r.get("t", 0)) * 1000) for r in doc})
        else:
            assert message.topic.endswith("/telemetry")
            assert isinstance(doc, list)
            stamps = [item["ts"] for item in doc]
        # a gateway batch: five samples, rising, never before the source's previous message
        assert len(stamps) == 5
        assert stamps == sorted(set(stamps))
        assert stamps[0] > last_ts.get(message.source_id, 0)
        assert stamps[-1] <= now_ms + 5
        last_ts[message.source_id] = stamps[-1]
    assert 0.07 <= senml / len(sent) <= 0.13


def test_a_silent_source_publishes_nothing() -> None:
    stream = make_stream(4, silence_probability_per_window=1.0, bad_fraction=0.0)
    by_id = {s.source_id: s for s in stream.sources}
    silenced = 0
    for now_ms, message in drive(stream, 20_000, step_ms=500):
        assert not stream.model.is_silent(by_id[message.source_id], now_ms)
        silenced = max(silenced, stream.silent_count(now_ms))
    assert silenced > 0


def test_bad_settings_are_refused() -> None:
    profile = load_profile("mekong")
    with pytest.raises(ConfigError, match="rate"):
        SimulationConfig(profile=profile, rate_per_s=0)
    with pytest.raises(ConfigError, match="batch"):
        SimulationConfig(profile=profile, batch=0)
    with pytest.raises(ConfigError, match="sources"):
        SimulationConfig(profile=profile, sources=0)


# --- against a real broker ----------------------------------------------------------------


class Collector:
    """Subscribes to every ioc/v1 source topic and keeps what one run's sources publish."""

    def __init__(self, mqtt_url: str, prefix: str) -> None:
        self.prefix = prefix
        self.lock = threading.Lock()
        self.telemetry: list[tuple[str, bytes, int]] = []
        self.status: list[tuple[str, bytes]] = []
        self._subscribed = threading.Event()
        endpoint = parse_mqtt_url(mqtt_url)
        self.client = paho_client(endpoint, f"sim-test-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(endpoint.host, endpoint.port)
        self.client.subscribe("ioc/v1/+/+/+", qos=1)
        self.client.loop_start()
        assert self._subscribed.wait(DEADLINE_S), "no SUBACK from the broker"

    def _on_subscribe(self, *_: object) -> None:
        self._subscribed.set()

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        source_id = msg.topic.split("/")[3]
        if not source_id.startswith(self.prefix):
            return
        with self.lock:
            if msg.topic.endswith("/status"):
                self.status.append((msg.topic, bytes(msg.payload)))
            else:
                self.telemetry.append((msg.topic, bytes(msg.payload), time.time_ns() // 1_000_000))

    def wait_for(self, telemetry: int, status: int = 0) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.telemetry) >= telemetry and len(self.status) >= status:
                    return
            time.sleep(0.02)
        with self.lock:
            got = (len(self.telemetry), len(self.status))
        pytest.fail(f"waited for {telemetry} telemetry and {status} status messages, got {got}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def collector(mqtt_url: str, prefix: str) -> Iterator[Collector]:
    c = Collector(mqtt_url, prefix)
    try:
        yield c
    finally:
        c.close()


def check_received(collector: Collector, stats: SimulatorStats, profile: Profile) -> None:
    """What arrived is exactly what the publisher says it sent."""
    # nothing more may be on its way once the counts match
    collector.wait_for(stats.messages, 2 * stats.sources)
    with collector.lock:
        telemetry = list(collector.telemetry)
        status = list(collector.status)
    assert len(telemetry) == stats.messages
    assert stats.acknowledged == stats.messages + stats.status_messages
    assert stats.in_flight == 0
    reasons: Counter[str] = Counter()
    readings = senml = 0
    for topic, payload, received_ms in telemetry:
        reason, count = classify(topic, payload, profile, received_ms)
        reasons[reason or "good"] += 1
        readings += count
        senml += topic.endswith("/senml")
    assert readings == stats.readings
    assert senml == stats.senml_messages
    assert reasons["good"] == stats.messages - stats.bad_messages
    assert {k: v for k, v in reasons.items() if k != "good"} == dict(stats.bad_by_kind)
    payloads = Counter(p for _, p in status)
    assert payloads == {b"online": stats.sources, b"offline": stats.sources}
    assert len({t for t, _ in status}) == stats.sources


def test_publishes_at_the_rate_asked_through_a_real_broker(
    mqtt_url: str, prefix: str, collector: Collector
) -> None:
    profile = load_profile("mekong")
    config = SimulationConfig(
        profile=profile,
        sources=12,
        rate_per_s=40,
        duration_s=2.0,
        batch=2,
        seed=1,
        bad_fraction=0.1,
        source_prefix=prefix,
    )
    stats = run_simulation(mqtt_url, config)
    assert abs(stats.messages - 80) <= 2
    assert 1.9 <= stats.elapsed_s <= 2.5
    assert stats.bad_messages > 0
    check_received(collector, stats, profile)


def test_runs_in_the_background_until_stopped(
    mqtt_url: str, prefix: str, collector: Collector
) -> None:
    profile = load_profile("bac-lieu")
    stop = threading.Event()
    config = SimulationConfig(
        profile=profile, sources=8, rate_per_s=50, seed=2, source_prefix=prefix
    )
    out = StringIO()
    publisher = TelemetryPublisher(
        mqtt_url,
        config,
        stop=stop,
        show_progress=True,
        console=Console(file=out, width=100, force_terminal=False),
    )
    results: list[SimulatorStats] = []
    thread = threading.Thread(target=lambda: results.append(publisher.run()), daemon=True)
    thread.start()
    try:
        collector.wait_for(telemetry=30)
        assert publisher.stats().messages >= 30
    finally:
        stop.set()
        thread.join(DEADLINE_S)
    assert not thread.is_alive()
    [stats] = results
    check_received(collector, stats, profile)
    assert "anomalies started" in out.getvalue()


def test_an_unreachable_broker_is_one_clear_error() -> None:
    port = free_port()
    config = SimulationConfig(profile=load_profile("mekong"), sources=2, duration_s=1)
    with pytest.raises(BrokerError, match=f"127.0.0.1:{port}") as caught:
        run_simulation(f"mqtt://127.0.0.1:{port}", config)
    assert "\n" not in str(caught.value)


# --- the demo's schedule --------------------------------------------------------------------

DEMO_SOURCES = 40
DEMO_RATE = 20.0
DEMO_STEP_MS = 50  # the publisher's pace at 20 messages/s


@dataclass
class DemoRun:
    """What a demo stream published over a stretch of simulated time, as a consumer sees it."""

    stream: MessageStream
    origin_ms: int
    readings: dict[tuple[str, str, str], list[tuple[datetime, float]]]
    telemetry_at: dict[str, list[int]]  # source id -> publish times (ms)
    status: list[tuple[int, str, str]]  # (ms, source id, payload)

    def changes(self, profile: Profile) -> list[Change]:
        """What the profile's default threshold rules make of the readings, in time order."""
        index = RuleIndex(threshold_rules(profile))
        out = []
        for (sector, source, metric), readings in self.readings.items():
            for group in index.groups(sector, metric, source):
                for change in run_group(group, {}, readings).changes:
                    at = change.ts.timestamp() - self.origin_ms / 1000
                    out.append(Change(at, change.kind, sector, source, metric, change.severity))
        return sorted(out)


class Change(NamedTuple):
    """A rule group's severity change: `at` seconds after the demo's first message."""

    at: float
    kind: str
    sector: str
    source: str
    metric: str
    severity: str | None


def threshold_rules(profile: Profile) -> list[Rule]:
    """The profile's default threshold rules, as `ioc db upgrade` seeds them."""
    rules = []
    for rule_id, definition in enumerate(seeds(profile).values()):
        if definition["kind"] != "threshold":
            continue
        rules.append(
            Rule(
                id=rule_id,
                name=definition["name"],
                kind="threshold",
                sector=definition["sector_id"],
                severity=definition["severity"],
                metric=definition["metric"],
                direction=definition["direction"],
                value=definition["threshold"],
                inclusive=definition["inclusive"],
                for_s=definition["for_s"],
                clear_at=definition["clear_at"],
            )
        )
    return rules


def run_demo(name: str, minutes: float, *, seed: int = 1, drawn: bool = False) -> DemoRun:
    """The demo's stream for `minutes` of simulated time from T0_MS, decoded. `drawn`: keep the
    anomalies and silences drawn at random (off: only the schedule makes alerts)."""
    profile = load_profile(name)
    off = (
        {}
        if drawn
        else {"anomaly_probability_per_source_h": 0, "silence_probability_per_window": 0}
    )
    config = SimulationConfig(
        profile=profile,
        sources=DEMO_SOURCES,
        rate_per_s=DEMO_RATE,
        demo=DemoSchedule(),
        **off,
    )
    stream = MessageStream(config, seed=seed)
    run = DemoRun(stream, T0_MS, defaultdict(list), defaultdict(list), [])
    for i in range(round(minutes * 60_000 / DEMO_STEP_MS)):
        now_ms = T0_MS + i * DEMO_STEP_MS
        message = stream.next_message(now_ms)
        if message is None:
            continue
        if message.topic.endswith("/status"):
            run.status.append((now_ms, message.source_id, message.payload.decode()))
            continue
        run.telemetry_at[message.source_id].append(now_ms)
        if message.bad is not None:
            continue
        sector = message.topic.split("/")[2]
        doc = orjson.loads(message.payload)
        if message.senml:
            samples = [(doc[0]["bt"] + r.get("t", 0), r["n"], r["v"]) for r in doc]
        else:
            samples = [(doc["ts"] / 1000, k, v) for k, v in doc["values"].items()]
        for t_s, metric, value in samples:
            run.readings[(sector, message.source_id, metric)].append(
                (datetime.fromtimestamp(t_s, UTC), float(value))
            )
    return run


@pytest.fixture(scope="module")
def demo_runs() -> dict[str, DemoRun]:
    """Each profile's demo over 12 minutes, with only the schedule making alerts."""
    return {name: run_demo(name, 12) for name in PROFILES}


@pytest.mark.parametrize("name", PROFILES)
def test_the_demo_opens_an_alert_within_seconds_then_a_steady_trickle(
    name: str, demo_runs: dict[str, DemoRun]
) -> None:
    run = demo_runs[name]
    changes = run.changes(load_profile(name))
    fires = [c for c in changes if c.kind == "fire"]
    clears = [c for c in changes if c.kind == "clear"]
    # the first anomaly trips a rule without a hold time a few seconds in
    assert fires and fires[0].at <= 10, fires[:1]
    # then one every 30-60 s (and a publish round): never a quiet minute
    times = [0.0] + [c.at for c in fires] + [12 * 60.0]
    assert max(b - a for a, b in pairwise(times)) <= DemoSchedule().anomaly_gap_s[1] + 5, times
    assert 12 <= len(fires) <= 24
    # and the alerts resolve: each anomaly ends, past the rule's clear point
    assert len(clears) >= len(fires) - 4
    # across the sectors
    assert len({c.sector for c in fires}) >= min(5, len(load_profile(name).sectors) - 1)


def test_the_demo_is_the_same_for_the_same_seed() -> None:
    first = run_demo("bac-lieu", 4, seed=7)
    again = run_demo("bac-lieu", 4, seed=7)
    other = run_demo("bac-lieu", 4, seed=8)
    assert first.stream.demo is not None and again.stream.demo is not None
    assert first.stream.demo.episodes == again.stream.demo.episodes
    assert first.stream.demo.outages == again.stream.demo.outages
    assert first.readings == again.readings
    assert other.stream.demo is not None
    assert other.stream.demo.episodes != first.stream.demo.episodes


@pytest.mark.parametrize("name", PROFILES)
def test_a_camera_goes_offline_long_enough_for_the_silence_rule(
    name: str, demo_runs: dict[str, DemoRun]
) -> None:
    run = demo_runs[name]
    schedule = DemoSchedule()
    offline = [(ms, source) for ms, source, payload in run.status if payload == "offline"]
    online = [(ms, source) for ms, source, payload in run.status if payload == "online"]
    assert offline and online
    went_ms, camera = offline[0]
    back_ms = next(ms for ms, source in online if source == camera)
    assert camera.split("-")[1] == "security"
    assert went_ms - run.origin_ms <= (schedule.first_outage_s + 1) * 1000
    sent = run.telemetry_at[camera]
    before = max(ms for ms in sent if ms <= went_ms)
    after = min(ms for ms in sent if ms >= back_ms)
    # the silence rule (3 x the 60 s interval of its metrics) and a sweep every 15 s have
    # passed, and the alert shows for a while before the camera is back
    gap_s = (after - before) / 1000
    assert gap_s >= 3 * 60 + schedule.sweep_interval_s + 60
    assert not any(before < ms < after for ms in sent)
    # and it reports as before, every round
    assert after - before < 400_000


def test_salinity_intrudes_past_both_levels_then_recedes() -> None:
    """For mekong: warning after its 15 minutes above 1 ‰, raised to critical after 15 above
    4 ‰, lowered below 3.5 ‰, resolved below 0.8 ‰, all within half an hour."""
    profile = load_profile("mekong")
    run = run_demo("mekong", 30)
    changes = [c for c in run.changes(profile) if c.metric == "salinity"]
    stations = {c.source for c in changes}
    assert len(stations) == 1
    kinds = [(c.kind, c.severity) for c in changes]
    assert kinds == [
        ("fire", "warning"),
        ("raise", "critical"),
        ("lower", "warning"),
        ("clear", None),
    ]
    fired, raised, lowered, cleared = (c.at for c in changes)
    assert 15 * 60 <= fired <= 20 * 60
    assert raised - fired < 5 * 60
    assert raised < lowered < cleared <= 30 * 60
    # it rises over a few minutes: no jump, from normal water to past the critical level
    [station] = stations
    values = [v for _, v in run.readings[("water", station, "salinity")]]
    assert values[0] < 1.0
    assert max(values) > 4.0
    steps = [abs(b - a) for a, b in pairwise(values)]
    assert max(steps) < 0.2


def test_the_demo_schedule_is_explicit_and_off_by_default() -> None:
    assert SimulationConfig(profile=load_profile("mekong")).demo is None
    stream = make_stream(2)
    list(drive(stream, 100))
    assert stream.demo is None
    with pytest.raises(ConfigError, match="anomaly starts"):
        DemoSchedule(anomaly_starts_s=(20.0, 5.0))
    with pytest.raises(ConfigError, match="anomaly_gap_s"):
        DemoSchedule(anomaly_gap_s=(60.0, 30.0))
