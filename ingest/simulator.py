"""Telemetry simulator: realistic readings for every sector of a profile, published over MQTT.

Two halves. `MessageStream` is pure: given the wall-clock time it says which message to send
next (topic and payload bytes), deterministic given a seed. `TelemetryPublisher` is the edge:
a paho MQTT v5 client that paces the stream at a steady rate with QoS 1 and a bounded number
of unacknowledged messages. Values come from `ingest.simulator_curves`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import orjson
import paho.mqtt.client as paho
import psycopg
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ingest.simulator_curves import (
    ANOMALY_PROBABILITY_PER_SOURCE_H,
    SILENCE_PROBABILITY_PER_WINDOW,
    DemoPlan,
    DemoSchedule,
    Episode,
    Outage,
    SourcePlan,
    TelemetryModel,
    intrusion_stations,
    plan_sources,
    profile_abbreviation,
)
from ingest.simulator_places import place_sources
from ioc.catalogue import Profile
from ioc.errors import BrokerError, ConfigError
from ioc.mqtt import Protocol, paho_client, parse_mqtt_url
from ioc.vocabulary import TOPIC_ROOT, SourceStatus

log = logging.getLogger(__name__)

QOS = 1
SENML_SHARE = 0.10
BAD_FRACTION = 0.005
MAX_BATCH_SAMPLES = 1000
MAX_IN_FLIGHT_MESSAGES = 200
CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_S = 30
# Time to wait for the broker to acknowledge what is still in flight when the run ends.
DRAIN_TIMEOUT_S = 10.0
# Behind schedule by more than this (the broker stalled), the pacing starts afresh instead of
# bursting to catch up.
MAX_LAG_S = 1.0
SILENT_COUNT_REFRESH_S = 1.0
FUTURE_SKEW_MS = 3_600_000
UNKNOWN_SECTOR = "no_such_sector"
UNKNOWN_METRIC = "no_such_metric"
STRING_VALUE = "n/a"


class BadKind(StrEnum):
    """Ways a deliberately bad message is wrong, sent in this order, round and round."""

    MALFORMED_JSON = "malformed_json"
    UNKNOWN_METRIC = "unknown_metric"
    OUT_OF_RANGE = "out_of_range"
    STRING_VALUE = "string_value"
    FUTURE_TIMESTAMP = "future_timestamp"
    UNKNOWN_SECTOR = "unknown_sector"


BAD_KINDS: tuple[BadKind, ...] = tuple(BadKind)


def topic(sector_id: str, source_id: str, channel: str) -> str:
    """`ioc/v1/{sector}/{source_id}/{channel}` (channel: telemetry, senml or status)."""
    return f"{TOPIC_ROOT}/{sector_id}/{source_id}/{channel}"


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate and how fast; `duration_s=None` runs until stopped. `demo`: follow
    the demo's schedule (alerts from the first seconds, cameras offline, salinity intrusions)
    besides the drawn anomalies and silences."""

    profile: Profile
    sources: int = 50
    rate_per_s: float = 10.0
    duration_s: float | None = None
    batch: int = 1
    seed: int | None = None
    bad_fraction: float = BAD_FRACTION
    senml_share: float = SENML_SHARE
    anomaly_probability_per_source_h: float = ANOMALY_PROBABILITY_PER_SOURCE_H
    silence_probability_per_window: float = SILENCE_PROBABILITY_PER_WINDOW
    source_prefix: str = ""
    max_in_flight: int = MAX_IN_FLIGHT_MESSAGES
    mqtt_protocol: Protocol = "5"
    demo: DemoSchedule | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.sources < 1:
            problems.append(f"sources must be at least 1 (got {self.sources})")
        if not (self.rate_per_s > 0 and math.isfinite(self.rate_per_s)):
            problems.append(f"rate must be a positive number of messages/s (got {self.rate_per_s})")
        if self.duration_s is not None and not self.duration_s > 0:
            problems.append(f"duration must be positive seconds (got {self.duration_s})")
        if not 1 <= self.batch <= MAX_BATCH_SAMPLES:
            problems.append(f"batch must be within 1..{MAX_BATCH_SAMPLES} (got {self.batch})")
        if self.max_in_flight < 1:
            problems.append(f"max in flight must be at least 1 (got {self.max_in_flight})")
        for name in ("bad_fraction", "senml_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name.replace('_', ' ')} must be within [0, 1]")
        if problems:
            raise ConfigError("simulator: " + "; ".join(problems))


@dataclass(frozen=True)
class Message:
    """One MQTT message to publish, and what it carries."""

    topic: str
    payload: bytes
    source_id: str
    readings: int = 0
    senml: bool = False
    bad: BadKind | None = None
    episodes_started: tuple[Episode, ...] = ()
    outage_started: Outage | None = None


def _json_records(samples: list[tuple[int, dict[str, float]]], batch: bool) -> bytes:
    records = [{"ts": ts, "values": values} for ts, values in samples]
    return orjson.dumps(records if batch else records[0])


def _senml_pack(
    source: SourcePlan, samples: list[tuple[int, dict[str, float]]], units: Mapping[str, str]
) -> bytes:
    # Base time is the newest sample; older samples carry a negative offset in seconds.
    base_ms = samples[-1][0]
    pack: list[dict[str, Any]] = []
    for ts, values in samples:
        for name, value in values.items():
            record: dict[str, Any] = {"n": name, "u": units[name], "v": value}
            if ts != base_ms:
                record["t"] = (ts - base_ms) / 1000
            pack.append(record)
    pack[0] = {"bn": f"{source.source_id}:", "bt": base_ms / 1000, **pack[0]}
    return orjson.dumps(pack)


class MessageStream:
    """The sequence of messages the simulator publishes; pure and deterministic given a seed."""

    def __init__(self, config: SimulationConfig, *, seed: int) -> None:
        self.config = config
        self.seed = seed
        self.sources = plan_sources(config.profile, config.sources, prefix=config.source_prefix)
        self.model = TelemetryModel(
            config.profile,
            seed=seed,
            anomaly_probability_per_source_h=config.anomaly_probability_per_source_h,
            silence_probability_per_window=config.silence_probability_per_window,
        )
        self._rng = random.Random(f"{seed}|stream")  # noqa: S311 (simulation, not secrets)
        # A shuffled round robin, so one sector's sources are not all published in a row.
        self._order = list(self.sources)
        self._rng.shuffle(self._order)
        self._next = 0
        self._bad_sent = 0
        self._last_ts_ms: dict[str, int] = {}
        self._last_episode: dict[str, float] = {}
        self._since_ms: int | None = None
        self.demo: DemoPlan | None = None  # from the first message on, when configured
        self._status_due: deque[Message] = deque()
        self._units = {s.id: {m.id: m.unit for m in s.metrics} for s in config.profile.sectors}
        # Each source reports about once per round; a batch spreads its samples over that time.
        self._round_ms = max(1, round(1000 * len(self.sources) / config.rate_per_s))

    @property
    def has_intrusions(self) -> bool:
        """Whether the demo's schedule has intrusions to make among these sources."""
        demo = self.config.demo
        return demo is not None and bool(intrusion_stations(self.sources, demo.intrusion_metric))

    def status(self, payload: SourceStatus) -> list[Message]:
        """One status message (`online` or `offline`) per source."""
        return [
            Message(topic(s.sector_id, s.source_id, "status"), payload.encode(), s.source_id)
            for s in self.sources
        ]

    def silent_count(self, now_ms: int) -> int:
        """How many sources are silent at `now_ms`."""
        return sum(self.model.is_silent(s, now_ms) for s in self.sources)

    def next_message(self, now_ms: int) -> Message | None:
        """The next message at wall-clock `now_ms`, or None if every source is silent."""
        if self._since_ms is None:
            # The first samples reach back one round: episodes from then on count as new.
            self._since_ms = now_ms - self._round_ms
            if self.config.demo is not None:
                self.demo = self.model.start_demo(self.config.demo, self.sources, now_ms)
        if self.demo is not None:
            status = self._demo_status(now_ms)
            if status is not None:
                return status
        source = self._next_source(now_ms)
        if source is None:
            return None
        if self.config.bad_fraction and self._rng.random() < self.config.bad_fraction:
            kind = BAD_KINDS[self._bad_sent % len(BAD_KINDS)]
            self._bad_sent += 1
            return self._bad(kind, source, now_ms)
        samples = [(ts, self.model.sample(source, ts)) for ts in self._timestamps(source, now_ms)]
        started = self._new_episodes(source, [ts for ts, _ in samples])
        readings = sum(len(values) for _, values in samples)
        if self.config.senml_share and self._rng.random() < self.config.senml_share:
            payload = _senml_pack(source, samples, self._units[source.sector_id])
            return Message(
                topic(source.sector_id, source.source_id, "senml"),
                payload,
                source.source_id,
                readings=readings,
                senml=True,
                episodes_started=started,
            )
        return Message(
            topic(source.sector_id, source.source_id, "telemetry"),
            _json_records(samples, batch=self.config.batch > 1),
            source.source_id,
            readings=readings,
            episodes_started=started,
        )

    def _demo_status(self, now_ms: int) -> Message | None:
        """A camera of the demo going offline or coming back says so first (a last will)."""
        assert self.demo is not None
        for source, status, outage in self.demo.due_changes(now_ms / 1000):
            self._status_due.append(
                Message(
                    topic(source.sector_id, source.source_id, "status"),
                    status.encode(),
                    source.source_id,
                    outage_started=outage if status is SourceStatus.OFFLINE else None,
                )
            )
        return self._status_due.popleft() if self._status_due else None

    def _next_source(self, now_ms: int) -> SourcePlan | None:
        for _ in range(len(self._order)):
            source = self._order[self._next]
            self._next = (self._next + 1) % len(self._order)
            if not self.model.is_silent(source, now_ms):
                return source
        return None

    def _timestamps(self, source: SourcePlan, now_ms: int) -> list[int]:
        """`batch` sample times up to now since the source's last message, strictly rising."""
        batch = self.config.batch
        last = self._last_ts_ms.get(source.source_id, now_ms - self._round_ms)
        step = max(1, (now_ms - last) // batch)
        stamps = [now_ms - (batch - 1 - i) * step for i in range(batch)]
        # Never repeat or go back in time for a series: (series, ts) is unique downstream.
        floor = last + 1
        fixed = []
        for ts in stamps:
            ts = max(ts, floor)
            fixed.append(ts)
            floor = ts + 1
        self._last_ts_ms[source.source_id] = fixed[-1]
        return fixed

    def _new_episodes(self, source: SourcePlan, stamps: list[int]) -> tuple[Episode, ...]:
        """Episodes that begin in these samples (ones already running at start do not count)."""
        started = []
        for ts in stamps:
            episode = self.model.episode_at(source, ts)
            if episode is None or self._last_episode.get(source.key) == episode.start_s:
                continue
            self._last_episode[source.key] = episode.start_s
            if self._since_ms is not None and episode.start_s * 1000 >= self._since_ms:
                started.append(episode)
        return tuple(started)

    def _bad(self, kind: BadKind, source: SourcePlan, now_ms: int) -> Message:
        metric = self._rng.choice(source.metrics)
        where = topic(source.sector_id, source.source_id, "telemetry")
        good: dict[str, Any] = {"ts": now_ms, "values": self.model.sample(source, now_ms)}
        body: dict[str, Any]
        if kind is BadKind.MALFORMED_JSON:
            raw = orjson.dumps(good)
            # Cut mid-object: the closing brace is gone, so no parser accepts it.
            return Message(where, raw[: len(raw) // 2], source.source_id, bad=kind)
        if kind is BadKind.UNKNOWN_METRIC:
            body = {"ts": now_ms, "values": {UNKNOWN_METRIC: 1.0}}
        elif kind is BadKind.OUT_OF_RANGE:
            lo, hi = metric.min, metric.max
            body = {"ts": now_ms, "values": {metric.id: hi + max(1.0, hi - lo)}}
        elif kind is BadKind.STRING_VALUE:
            body = {"ts": now_ms, "values": {metric.id: STRING_VALUE}}
        elif kind is BadKind.FUTURE_TIMESTAMP:
            body = {**good, "ts": now_ms + FUTURE_SKEW_MS}
        else:
            where = topic(UNKNOWN_SECTOR, source.source_id, "telemetry")
            body = good
        return Message(where, orjson.dumps(body), source.source_id, bad=kind)


@dataclass(frozen=True)
class SimulatorStats:
    """What a run has published so far."""

    seed: int
    sources: int
    messages: int = 0
    readings: int = 0
    senml_messages: int = 0
    bad_messages: int = 0
    bad_by_kind: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    status_messages: int = 0
    anomalies_started: int = 0
    outages_started: int = 0
    sources_silent: int = 0
    acknowledged: int = 0
    in_flight: int = 0
    elapsed_s: float = 0.0

    @property
    def rate_per_s(self) -> float:
        """Telemetry messages per second over the run so far."""
        return self.messages / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def readings_per_s(self) -> float:
        """Good readings per second over the run so far."""
        return self.readings / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _InFlight:
    """Message ids sent with QoS 1 and not yet acknowledged by the broker."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: set[int] = set()
        # paho may report the acknowledgement before publish() has returned the message id.
        self._early: set[int] = set()
        self.acknowledged = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._pending)

    def sent(self, mid: int) -> None:
        with self._cond:
            if mid in self._early:
                self._early.discard(mid)
            else:
                self._pending.add(mid)

    def acked(self, mid: int) -> None:
        with self._cond:
            self.acknowledged += 1
            if mid in self._pending:
                self._pending.discard(mid)
            else:
                self._early.add(mid)
            self._cond.notify_all()

    def wait_below(self, limit: int, deadline: float, stop: Callable[[], bool]) -> bool:
        """Wait until fewer than `limit` are pending; False on deadline or stop."""
        with self._cond:
            while len(self._pending) >= limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or stop():
                    return False
                self._cond.wait(min(remaining, 0.1))
            return True


class TelemetryPublisher:
    """Publishes a `MessageStream` to a broker at a steady rate until its duration or `stop`."""

    def __init__(
        self,
        mqtt_url: str,
        config: SimulationConfig,
        *,
        stop: threading.Event | None = None,
        show_progress: bool = False,
        console: Console | None = None,
    ) -> None:
        self.config = config
        self.seed = config.seed if config.seed is not None else secrets.randbits(32)
        self.stream = MessageStream(config, seed=self.seed)
        self._endpoint = parse_mqtt_url(mqtt_url)
        self._stop = stop if stop is not None else threading.Event()
        self._show_progress = show_progress
        self._console = console
        self._in_flight = _InFlight()
        self._connected = threading.Event()
        self._refused: str | None = None
        self._closing = False
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._bad_by_kind: dict[str, int] = {}
        self._silent = 0
        self._last_anomaly = "-"
        self._started_at: float | None = None
        self._ended_at: float | None = None

    # -- public --

    def stop(self) -> None:
        """Ask a running `run` to finish (same as setting the `stop` event)."""
        self._stop.set()

    def stats(self) -> SimulatorStats:
        """A snapshot of the run's statistics; safe to call from any thread."""
        with self._lock:
            counts = dict(self._counts)
            bad = dict(self._bad_by_kind)
            silent = self._silent
            start, end = self._started_at, self._ended_at
        finished = end if end is not None else time.monotonic()
        elapsed = 0.0 if start is None else finished - start
        return SimulatorStats(
            seed=self.seed,
            sources=len(self.stream.sources),
            messages=counts.get("messages", 0),
            readings=counts.get("readings", 0),
            senml_messages=counts.get("senml", 0),
            bad_messages=counts.get("bad", 0),
            bad_by_kind=MappingProxyType(bad),
            status_messages=counts.get("status", 0),
            anomalies_started=counts.get("anomalies", 0),
            outages_started=counts.get("outages", 0),
            sources_silent=silent,
            acknowledged=self._in_flight.acknowledged,
            in_flight=len(self._in_flight),
            elapsed_s=elapsed,
        )

    def run(self) -> SimulatorStats:
        """Connect, announce the sources online, publish until done, then say offline."""
        cfg = self.config
        log.info(
            "simulator starting",
            extra={
                "profile": cfg.profile.name,
                "sources": cfg.sources,
                "rate_per_s": cfg.rate_per_s,
                "batch": cfg.batch,
                "duration_s": cfg.duration_s,
                "seed": self.seed,
                "demo": cfg.demo is not None,
            },
        )
        client = self._connect()
        try:
            with self._display():
                for message in self.stream.status(SourceStatus.ONLINE):
                    if not self._send(client, message, deadline=None):
                        break
                try:
                    self._publish_loop(client)
                except KeyboardInterrupt:
                    # Ctrl-C at `ioc simulate` ends the run cleanly, with its summary.
                    log.info("simulator interrupted")
                    self._stop.set()
                with self._lock:
                    self._ended_at = time.monotonic()
                # A clean stop looks like every gateway signing off.
                end_by = time.monotonic() + DRAIN_TIMEOUT_S
                for message in self.stream.status(SourceStatus.OFFLINE):
                    if not self._send(client, message, deadline=end_by):
                        break
                self._drain(time.monotonic() + DRAIN_TIMEOUT_S)
        finally:
            self._closing = True
            client.disconnect()
            client.loop_stop()
        stats = self.stats()
        log.info(
            "simulator finished",
            extra={
                "messages": stats.messages,
                "readings": stats.readings,
                "bad_messages": stats.bad_messages,
                "anomalies_started": stats.anomalies_started,
                "outages_started": stats.outages_started,
                "elapsed_s": round(stats.elapsed_s, 3),
                "rate_per_s": round(stats.rate_per_s, 1),
                "unacknowledged": stats.in_flight,
            },
        )
        return stats

    # -- connection --

    def _connect(self) -> paho.Client:
        ep = self._endpoint
        where = f"{ep.host}:{ep.port}"
        client = paho_client(
            ep, f"ioc-sim-{secrets.token_hex(6)}", protocol=self.config.mqtt_protocol
        )
        client.max_inflight_messages_set(self.config.max_in_flight)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        try:
            client.connect(ep.host, ep.port, keepalive=KEEPALIVE_S)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise BrokerError(f"broker {where} unreachable: {reason}") from None
        client.loop_start()
        if not self._connected.wait(CONNECT_TIMEOUT_S) or self._refused is not None:
            client.loop_stop()
            with contextlib.suppress(OSError):
                client.disconnect()
            if self._refused is not None:
                raise BrokerError(f"broker {where} refused the connection: {self._refused}")
            raise BrokerError(f"broker {where} did not answer within {CONNECT_TIMEOUT_S:g} s")
        return client

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
        elif self._connected.is_set():
            log.info("simulator reconnected to the broker")
        self._connected.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self._closing:
            log.warning(
                "simulator lost the broker; reconnecting", extra={"reason": str(reason_code)}
            )

    def _on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        self._in_flight.acked(mid)

    # -- publishing --

    def _send(self, client: paho.Client, message: Message, *, deadline: float | None) -> bool:
        """Publish once there is room in flight; False if stopped or past `deadline`."""
        if deadline is None:
            room = self._in_flight.wait_below(
                self.config.max_in_flight, math.inf, self._stop.is_set
            )
        else:
            room = self._in_flight.wait_below(self.config.max_in_flight, deadline, lambda: False)
        if not room:
            return False
        info = client.publish(message.topic, message.payload, qos=QOS)
        # Without a connection paho keeps the QoS 1 message and sends it on reconnect.
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            log.warning("publish failed", extra={"topic": message.topic, "rc": int(info.rc)})
            return False
        self._in_flight.sent(info.mid)
        self._count(message)
        return True

    def _count(self, message: Message) -> None:
        # The live table would be torn by log lines; it shows the latest anomaly itself.
        level = logging.DEBUG if self._show_progress else logging.INFO
        with self._lock:
            c = self._counts
            if message.topic.endswith("/status"):
                c["status"] = c.get("status", 0) + 1
                if message.outage_started is not None:
                    c["outages"] = c.get("outages", 0) + 1
            else:
                self._count_telemetry(message)
        outage = message.outage_started
        if outage is not None:
            log.log(
                level,
                "simulated outage",
                extra={
                    "source": message.source_id,
                    "silent_s": round(outage.end_s - outage.start_s),
                },
            )
        for episode in message.episodes_started:
            log.log(
                level,
                "simulated anomaly",
                extra={
                    "kind": episode.kind,
                    "source": message.source_id,
                    "metric": episode.metric_id,
                    "threshold": episode.threshold.value,
                    "direction": episode.threshold.direction.value,
                    "target": round(episode.target, 3),
                    "duration_s": round(episode.end_s - episode.start_s),
                },
            )

    def _count_telemetry(self, message: Message) -> None:
        """Count a telemetry message (the caller holds the lock)."""
        c = self._counts
        c["messages"] = c.get("messages", 0) + 1
        c["readings"] = c.get("readings", 0) + message.readings
        if message.senml:
            c["senml"] = c.get("senml", 0) + 1
        if message.bad is not None:
            c["bad"] = c.get("bad", 0) + 1
            kind = message.bad.value
            self._bad_by_kind[kind] = self._bad_by_kind.get(kind, 0) + 1
        c["anomalies"] = c.get("anomalies", 0) + len(message.episodes_started)
        for episode in message.episodes_started:
            self._last_anomaly = (
                f"{message.source_id} {episode.metric_id} "
                f"{episode.threshold.direction.value} {episode.threshold.value:g}"
            )

    def _publish_loop(self, client: paho.Client) -> None:
        rate = self.config.rate_per_s
        duration = self.config.duration_s
        start = time.monotonic()
        with self._lock:
            self._started_at = start
        base, slot = start, 0
        next_silent_check = start
        while not self._stop.is_set():
            now = time.monotonic()
            if duration is not None and now - start >= duration:
                break
            # Message k is due at base + k / rate: an absolute schedule never drifts.
            due = base + slot / rate
            if due > now:
                if duration is not None:
                    due = min(due, start + duration)
                self._stop.wait(due - now)
                continue
            if now - due > MAX_LAG_S:
                base, slot = now, 0
            slot += 1
            now_ms = time.time_ns() // 1_000_000
            message = self.stream.next_message(now_ms)
            if message is not None and not self._send(client, message, deadline=None):
                break
            if now >= next_silent_check:
                silent = self.stream.silent_count(now_ms)
                with self._lock:
                    self._silent = silent
                next_silent_check = now + SILENT_COUNT_REFRESH_S

    def _drain(self, deadline: float) -> None:
        while len(self._in_flight) and time.monotonic() < deadline:
            self._in_flight.wait_below(1, deadline, lambda: False)
        if len(self._in_flight):
            log.warning(
                "broker did not acknowledge every message",
                extra={"unacknowledged": len(self._in_flight)},
            )

    # -- display --

    @contextlib.contextmanager
    def _display(self) -> Iterator[None]:
        """The live table while the body runs, when progress is on."""
        if not self._show_progress:
            yield
            return
        console = self._console or Console(stderr=True)
        # Rich redraws from its own thread, reading the statistics under their lock.
        with Live(console=console, get_renderable=self._table, refresh_per_second=4):
            yield
        if not console.is_terminal:
            # Rich ends a live display with a newline only on a terminal.
            console.line()

    def _table(self) -> Table:
        s = self.stats()
        cfg = self.config
        with self._lock:
            last_anomaly = self._last_anomaly
        table = Table(title=f"ioc simulate: {cfg.profile.name}", show_header=False)
        table.add_column(style="bold")
        table.add_column(justify="right")
        planned = f" / {cfg.duration_s:g}" if cfg.duration_s is not None else ""
        rows = [
            ("elapsed", f"{s.elapsed_s:.1f}{planned} s"),
            ("rate", f"{s.rate_per_s:,.1f} / {cfg.rate_per_s:g} msg/s"),
            ("readings/s", f"{s.readings_per_s:,.0f}"),
            ("messages", f"{s.messages:,} ({s.senml_messages:,} SenML)"),
            ("readings", f"{s.readings:,}"),
            ("bad messages", f"{s.bad_messages:,}"),
            ("anomalies started", f"{s.anomalies_started:,}"),
            ("outages started", f"{s.outages_started:,}"),
            ("latest anomaly", last_anomaly),
            ("sources", f"{s.sources:,} ({s.sources_silent:,} silent now)"),
            ("in flight", f"{s.in_flight:,} (acknowledged {s.acknowledged:,})"),
            ("seed", str(s.seed)),
        ]
        for name, value in rows:
            table.add_row(name, value)
        return table


def demo_schedule(*, sweep_interval_s: float, min_silence_s: float) -> DemoSchedule:
    """The demo's schedule, its outages timed for an alerts service that sweeps every
    `sweep_interval_s` and calls no source silent sooner than `min_silence_s`."""
    return DemoSchedule(sweep_interval_s=sweep_interval_s, min_silence_s=min_silence_s)


def simulated_ids(profiles: Iterable[Profile]) -> str:
    """A regular expression (PostgreSQL's and Python's) matching the ids the simulator gives
    the sources of these profiles (run without a source prefix), whatever their number."""
    chosen = list(profiles)
    tags = sorted({re.escape(profile_abbreviation(p.name)) for p in chosen})
    sectors = sorted({re.escape(s.id.replace("_", "-")) for p in chosen for s in p.sectors})
    return f"^({'|'.join(tags)})-({'|'.join(sectors)})-[0-9]{{3}}$"


def source_ids(config: SimulationConfig) -> list[str]:
    """The ids of the sources a run with `config` publishes for."""
    return [
        s.source_id
        for s in plan_sources(config.profile, config.sources, prefix=config.source_prefix)
    ]


def place_simulated_sources(
    conn: psycopg.Connection[Any], config: SimulationConfig, *, actor: str
) -> int:
    """A district and a position for every source a run with `config` publishes for (the
    screen's maps); see `ingest.simulator_places`. The caller commits."""
    plans = plan_sources(config.profile, config.sources, prefix=config.source_prefix)
    return place_sources(conn, config.profile, plans, actor=actor)


def run_simulation(
    mqtt_url: str,
    config: SimulationConfig,
    *,
    stop: threading.Event | None = None,
    show_progress: bool = False,
    console: Console | None = None,
) -> SimulatorStats:
    """Publish simulated telemetry for `config` to the broker at `mqtt_url`; blocks."""
    publisher = TelemetryPublisher(
        mqtt_url, config, stop=stop, show_progress=show_progress, console=console
    )
    return publisher.run()
