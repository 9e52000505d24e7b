"""Notifiers: alert events go out after commit, on MQTT and to webhooks (and to the transition
log, `alerts.transitions`), from `alert_event`.

Each channel has a cursor (`notify_cursor.last_id`: the `seq` of the last alert event it
finished) and delivers in commit order (`alert_event.seq`), at least once: an event committed
after a newer-numbered one is not skipped. A failing channel retries the same event with
capped backoff and records every attempt in `alert_delivery`; nothing is lost while it is
down, because the events stay in `alert_event`. A receiver that refuses an event for good
(HTTP 4xx other than 408 and 429) gets it recorded as failed and the channel moves on. One
dispatcher per channel runs at a time (a session advisory lock); others wait as standbys.
Notifiers run in their own threads or process, never in the ingest path.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import httpx
import orjson
import psycopg
from psycopg.rows import dict_row

from alerts.lifecycle import NOTE_KINDS
from ioc.db import libpq_url
from ioc.mqtt import Protocol, paho_client, parse_mqtt_url, process_client_id
from ioc.settings import WebhookConfig
from ioc.vocabulary import SEVERITY_RANK, TOPIC_ROOT

log = logging.getLogger("ioc.alerts.notify")

BATCH: Final = 200
BACKOFF_START_S: Final = 1.0
BACKOFF_MAX_S: Final = 300.0
IDLE_POLL_S: Final = 5.0
HTTP_TIMEOUT_S: Final = 10.0
SIGNATURE_HEADER: Final = "X-IOC-Signature"
MQTT_TOPIC_PREFIX: Final = f"{TOPIC_ROOT}/alerts"

# alert events past a `seq`, in commit order, with their alert (what every channel sends)
EVENTS_AFTER: Final = """
SELECT e.id, e.seq, e.kind, e.severity, e.status, e.actor, e.detail, e.at,
       a.id AS alert_id, a.cause_key, a.sector_id, a.source_id, a.metric, a.rule_id,
       a.rule_kind, a.event_id, a.title, a.title_en, a.last_value, a.occurrences,
       a.escalation_level, a.opened_at, a.acknowledged_by, a.resolved_by, a.peak_severity,
       a.condition_started_at, a.condition_fired_at, a.condition_ended_at, a.retracted,
       a.assigned_to, a.public
FROM alert_event e JOIN alert a ON a.id = e.alert_id
WHERE e.seq > %s ORDER BY e.seq LIMIT %s
"""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one delivery attempt went; `retry` says whether trying again may help."""

    ok: bool
    retry: bool = True
    status_code: int | None = None
    error: str | None = None


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def event_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON document of one alert event (a row of `EVENTS_AFTER`), as every channel sends it.

    `severity` and `status` are the alert's at this event; `title` is Vietnamese, `title_en`
    English; the `condition_*` times are reading times (started, lasted long enough, ended).
    """
    return {
        "id": row["id"],
        "kind": row["kind"],
        "at": row["at"].isoformat(),
        "actor": row["actor"],
        "detail": row["detail"],
        "alert": {
            "id": row["alert_id"],
            "cause_key": row["cause_key"],
            "sector": row["sector_id"],
            "source_id": row["source_id"],
            "metric": row["metric"],
            "rule_id": row["rule_id"],
            "rule_kind": row["rule_kind"],
            "event_id": row["event_id"],
            "severity": row["severity"],
            "status": row["status"],
            "title": row["title"],
            "title_en": row["title_en"],
            "last_value": row["last_value"],
            "occurrences": row["occurrences"],
            "escalation_level": row["escalation_level"],
            "opened_at": row["opened_at"].isoformat(),
            "acknowledged_by": row["acknowledged_by"],
            "resolved_by": row["resolved_by"],
            "peak_severity": row["peak_severity"],
            "condition_started_at": _iso(row["condition_started_at"]),
            "condition_fired_at": _iso(row["condition_fired_at"]),
            "condition_ended_at": _iso(row["condition_ended_at"]),
            "retracted": row["retracted"],
            "assigned_to": row["assigned_to"],
            "public": row["public"],
        },
    }


class Channel(typing.Protocol):
    """Somewhere alert events go."""

    name: str

    def wants(self, doc: dict[str, Any]) -> bool:
        """Whether this channel sends this event at all."""
        ...

    def deliver(self, doc: dict[str, Any], body: bytes) -> Outcome:
        """Try once to deliver one event."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class WebhookChannel:
    """POSTs each event as JSON, signed with HMAC-SHA256 over the body when a secret is set."""

    def __init__(self, config: WebhookConfig, *, timeout_s: float = HTTP_TIMEOUT_S) -> None:
        self.config = config
        self.name = f"webhook:{config.name}"
        self.timeout_s = timeout_s
        # one client per channel: its connection is kept between deliveries
        self._http = httpx.Client(timeout=timeout_s, follow_redirects=False)

    def wants(self, doc: dict[str, Any]) -> bool:
        alert = doc["alert"]
        if self.config.sectors and alert["sector"] not in self.config.sectors:
            return False
        return SEVERITY_RANK[alert["severity"]] >= SEVERITY_RANK[self.config.min_severity]

    def signature(self, body: bytes) -> str | None:
        """The signature header value for a body (None without a secret)."""
        if self.config.secret is None:
            return None
        key = self.config.secret.get_secret_value().encode()
        return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()

    def deliver(self, doc: dict[str, Any], body: bytes) -> Outcome:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "ioc-alerts",
            "X-IOC-Event-Id": str(doc["id"]),
        }
        signature = self.signature(body)
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        try:
            response = self._http.post(self.config.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return Outcome(False, error=f"{type(exc).__name__}: {exc}"[:500])
        code = response.status_code
        if response.is_success:
            return Outcome(True, status_code=code)
        # a refusal (4xx but timeout and too many requests) will not change by retrying
        permanent = 400 <= code < 500 and code not in (408, 429)
        error = f"HTTP {code} {response.reason_phrase}"
        return Outcome(False, retry=not permanent, status_code=code, error=error)

    def close(self) -> None:
        self._http.close()


class MqttChannel:
    """Publishes each event to `ioc/v1/alerts/{sector}/{severity}` (QoS 1, broker-acked)."""

    name = "mqtt"

    def __init__(
        self,
        mqtt_url: str,
        *,
        client_id: str | None = None,
        timeout_s: float = 10.0,
        protocol: Protocol = "5",
    ) -> None:
        self._endpoint = parse_mqtt_url(mqtt_url)
        # one id per process: two notifiers with one id would keep disconnecting each other
        client_id = client_id or process_client_id("ioc-alerts")
        self._client = paho_client(self._endpoint, client_id, protocol=protocol)
        self._client.reconnect_delay_set(1, 30)
        self._started = False
        self.timeout_s = timeout_s

    def wants(self, doc: dict[str, Any]) -> bool:
        return True

    def _ensure(self) -> None:
        if not self._started:
            self._client.connect(self._endpoint.host, self._endpoint.port, keepalive=30)
            self._client.loop_start()
            self._started = True

    def deliver(self, doc: dict[str, Any], body: bytes) -> Outcome:
        alert = doc["alert"]
        topic = f"{MQTT_TOPIC_PREFIX}/{alert['sector']}/{alert['severity']}"
        try:
            self._ensure()
            info = self._client.publish(topic, body, qos=1)
            info.wait_for_publish(self.timeout_s)
        except (OSError, RuntimeError, ValueError) as exc:
            return Outcome(False, error=str(exc)[:500])
        if not info.is_published():
            return Outcome(False, error=f"no PUBACK within {self.timeout_s:g} s")
        return Outcome(True)

    def close(self) -> None:
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False


def _lock_key(channel: str) -> int:
    return int.from_bytes(hashlib.sha256(f"ioc-notify:{channel}".encode()).digest()[:8], "big") >> 1


class Dispatcher:
    """Delivers one channel's events in order from its cursor; one active per channel."""

    def __init__(
        self,
        database_url: str,
        channel: Channel,
        *,
        backoff_start_s: float = BACKOFF_START_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        notes: bool = False,
        record: bool = True,
    ) -> None:
        """`notes`: the channel also gets the operators' notes (comments, assignments,
        publication), which outside receivers do not; `record`: each attempt is recorded in
        `alert_delivery` (the transition log records none)."""
        self._conninfo = libpq_url(database_url)
        self.channel = channel
        self.backoff_start_s = backoff_start_s
        self.backoff_max_s = backoff_max_s
        self.notes = notes
        self.record = record
        self._conn: psycopg.Connection[Any] | None = None
        self.delivered = 0

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._conninfo, autocommit=True, application_name=f"ioc-{self.channel.name}"
            )
            self._conn.execute("LISTEN ioc_alert_event")
        return self._conn

    def _owns_channel(self, conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute(
            "SELECT pg_try_advisory_lock(%s)", (_lock_key(self.channel.name),)
        ).fetchone()
        return bool(row and row[0])

    def _cursor(self, conn: psycopg.Connection[Any]) -> int:
        conn.execute(
            "INSERT INTO notify_cursor (channel, last_id) "
            "VALUES (%s, coalesce((SELECT max(seq) FROM alert_event), 0)) "
            "ON CONFLICT DO NOTHING",
            (self.channel.name,),
        )
        row = conn.execute(
            "SELECT last_id FROM notify_cursor WHERE channel = %s", (self.channel.name,)
        ).fetchone()
        return int(row[0]) if row else 0

    def dispatch_pending(self, stop: threading.Event | None = None) -> int:
        """Deliver everything past the cursor (retrying failures until `stop`); the count."""
        conn = self._connection()
        if not self._owns_channel(conn):
            return 0
        done = 0
        try:
            cursor = self._cursor(conn)
            while True:
                with conn.cursor(row_factory=dict_row) as cur:
                    rows = cur.execute(EVENTS_AFTER, (cursor, BATCH)).fetchall()
                if not rows:
                    return done
                for row in rows:
                    if not self._deliver_one(conn, row, stop):
                        return done
                    cursor = int(row["seq"])
                    conn.execute(
                        "UPDATE notify_cursor SET last_id = %s, updated_at = now() "
                        "WHERE channel = %s",
                        (cursor, self.channel.name),
                    )
                    done += 1
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(self.channel.name),))

    def _deliver_one(
        self, conn: psycopg.Connection[Any], row: Mapping[str, Any], stop: threading.Event | None
    ) -> bool:
        """True once the event is settled (delivered, not wanted, or refused for good)."""
        doc = event_document(row)
        # what people noted about an alert (comments, assignment, publication) is for the
        # operations room, not for outside receivers
        if (row["kind"] in NOTE_KINDS and not self.notes) or not self.channel.wants(doc):
            return True
        body = orjson.dumps(doc)
        backoff = self.backoff_start_s
        attempt = 0
        while True:
            attempt += 1
            outcome = self.channel.deliver(doc, body)
            if self.record:
                conn.execute(
                    "INSERT INTO alert_delivery (alert_event_id, channel, attempt, ok, "
                    "status_code, error) VALUES (%s, %s, %s, %s, %s, %s)",
                    (doc["id"], self.channel.name, attempt, outcome.ok, outcome.status_code,
                     outcome.error),
                )  # fmt: skip
            if outcome.ok:
                self.delivered += 1
                return True
            if not outcome.retry:
                log.warning(
                    "alert event refused",
                    extra={
                        "channel": self.channel.name,
                        "event": doc["id"],
                        "error": outcome.error,
                    },
                )
                return True
            log.warning(
                "alert delivery failed, retrying",
                extra={
                    "channel": self.channel.name,
                    "event": doc["id"],
                    "attempt": attempt,
                    "retry_in_s": backoff,
                    "error": outcome.error,
                },
            )
            if stop is not None and stop.wait(backoff):
                return False
            if stop is None:
                time.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)

    def run(self, stop: threading.Event) -> None:
        """Deliver as events come (NOTIFY wakes it; it also polls) until `stop` is set."""
        while not stop.is_set():
            try:
                self.dispatch_pending(stop)
                conn = self._connection()
                for _ in conn.notifies(timeout=IDLE_POLL_S, stop_after=1):
                    pass
            except psycopg.Error as exc:
                log.warning(
                    "notifier database error",
                    extra={"channel": self.channel.name, "error": str(exc).strip()[:300]},
                )
                self.close_connection()
                stop.wait(IDLE_POLL_S)
        self.close_connection()
        self.channel.close()

    def close_connection(self) -> None:
        """Drop the database connection (and with it the channel lock)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def channels_for(
    webhooks: Sequence[WebhookConfig], mqtt_url: str | None, *, protocol: Protocol = "5"
) -> list[Channel]:
    """The configured channels: MQTT when a broker is set, and each webhook."""
    out: list[Channel] = [WebhookChannel(w) for w in webhooks]
    if mqtt_url is not None:
        out.insert(0, MqttChannel(mqtt_url, protocol=protocol))
    return out
