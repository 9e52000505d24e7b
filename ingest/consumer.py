"""The MQTT consumer: persistent session, its subscriptions, ack only after commit."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ingest import metrics, reasons
from ingest.items import Item, build_item
from ingest.topics import (
    MARKER_FILTER,
    SUBSCRIPTION,
    Assignment,
    is_outbound,
    marker_topic,
    parse_topic,
)
from ingest.validation import Rules
from ingest.writer import Writer
from ioc.errors import BrokerError, DecodeError
from ioc.mqtt import (
    Protocol,
    connect_properties,
    disconnect_properties,
    paho_client,
    parse_mqtt_url,
)
from ioc.mqtt import end_session as _end_session

log = logging.getLogger("ioc.ingest.consumer")

KEEPALIVE_S: Final = 30
CONNECT_TIMEOUT_S: Final = 10.0
RECONNECT_MIN_S: Final = 1
# capped back-off of connection attempts: a broker back from an outage is found this soon
RECONNECT_MAX_S: Final = 5
ACK_FLUSH_S: Final = 2.0
SESSION_TAKEN_OVER: Final = 142  # MQTT 5 DISCONNECT reason: the same client id connected


@dataclass(frozen=True)
class ConsumerConfig:
    """How the consumer connects and what it accepts."""

    mqtt_url: str
    client_id: str
    session_expiry_s: int = 7 * 24 * 3600
    max_payload_bytes: int = 256 * 1024
    receive_maximum: int = 1000
    subscription: str = SUBSCRIPTION
    protocol: Protocol = "5"
    # a pool worker's filters (and those to drop from earlier layouts); None: `subscription`
    assignment: Assignment | None = None

    @property
    def assigned(self) -> Assignment:
        """What the consumer subscribes to and unsubscribes from at every connect."""
        return self.assignment or Assignment((self.subscription,))


class Consumer:
    """Feeds MQTT messages through decode and validation into a writer; acks after commit."""

    def __init__(self, config: ConsumerConfig, *, rules: Rules, writer: Writer) -> None:
        self.config = config
        self.rules = rules
        self.writer = writer
        self._endpoint = parse_mqtt_url(config.mqtt_url)
        self._client = paho_client(
            self._endpoint,
            config.client_id,
            manual_ack=True,
            protocol=config.protocol,
            persistent=True,
        )
        self._client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        # A message's ack is valid only on the connection that delivered it: after a
        # reconnect the broker redelivers unacked messages and may reuse their packet ids.
        self._generation = 0
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._accepting = True
        self._started = False
        self._logged_failures: set[tuple[str, str, int]] = set()
        self.session_present: bool | None = None
        self.received = 0
        self.internal_errors = 0
        self._setup_subscriptions()

    # -- lifecycle -------------------------------------------------------------------------

    def _setup_subscriptions(self) -> None:
        assignment = self.config.assigned
        self._filters = assignment.filters
        self._stale = assignment.stale
        self._awaiting: set[int] = set()  # SUBSCRIBE/UNSUBSCRIBE of this connection unanswered
        self._marker = uuid.uuid4().hex.encode()  # this process's marker payload
        self.armed = False
        self.dropped = 0  # other workers' messages acknowledged unprocessed (catch-all)
        self.intercepted = 0  # markers of any pool worker, acknowledged and ignored
        self._client.on_unsubscribe = self._on_unsubscribe
        self._client.on_connect_fail = self._on_connect_fail
        self._client.message_callback_add(MARKER_FILTER, self._on_marker)
        for topic_filter in assignment.others:
            self._client.message_callback_add(topic_filter, self._on_other)

    def _connect_kwargs(self) -> dict[str, Any]:
        if self.config.protocol == "5":
            return {
                "keepalive": KEEPALIVE_S,
                "clean_start": False,
                "properties": connect_properties(
                    session_expiry_s=self.config.session_expiry_s,
                    receive_maximum=self.config.receive_maximum,
                ),
            }
        # 3.1.1: the persistent session comes from clean_session=False
        return {"keepalive": KEEPALIVE_S}

    def start(self) -> None:
        """Connect (BrokerError if the broker cannot be reached) and start consuming."""
        try:
            self._client.connect(self._endpoint.host, self._endpoint.port, **self._connect_kwargs())
        except OSError as exc:
            raise BrokerError(
                f"MQTT broker {self._endpoint.host}:{self._endpoint.port} unreachable: {exc}"
            ) from None
        self._client.loop_start()
        self._started = True
        # started means subscribed: a message published after start() returns is ours
        if not (
            self._connected.wait(CONNECT_TIMEOUT_S) and self._subscribed.wait(CONNECT_TIMEOUT_S)
        ):
            self._client.loop_stop()
            raise BrokerError(
                f"MQTT broker {self._endpoint.host}:{self._endpoint.port} did not accept "
                f"the connection or subscription of {self.config.client_id!r}"
            )

    def start_background(self) -> None:
        """Start connecting and consuming without waiting: connection attempts are retried
        with capped back-off (logged) until `stop`; `wait_subscribed` says when it holds its
        subscriptions."""
        self._client.connect_async(
            self._endpoint.host, self._endpoint.port, **self._connect_kwargs()
        )
        self._client.loop_start()
        self._started = True

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Wait until the broker answered this connection's SUBSCRIBE and UNSUBSCRIBE."""
        return self._subscribed.wait(timeout_s)

    @property
    def subscribed(self) -> bool:
        """Whether the broker answered this connection's SUBSCRIBE and UNSUBSCRIBE."""
        return self._subscribed.is_set()

    @property
    def flushed(self) -> bool:
        """Whether nothing (acknowledgements included) waits to be sent to the broker."""
        return not self._client.want_write()

    def stop(self, *, drain_timeout_s: float = 30.0, end_session: bool = False) -> bool:
        """Stop taking messages, commit and ack what is queued, disconnect (session kept, or
        with `end_session` removed once everything received was committed)."""
        self._accepting = False
        drained = self.writer.stop(timeout_s=drain_timeout_s)
        deadline = time.monotonic() + ACK_FLUSH_S
        while self._client.want_write() and time.monotonic() < deadline:
            time.sleep(0.01)  # the network thread sends the last acks
        ending = end_session and drained
        ended = ending and self.config.protocol == "5" and self.connected
        if ended:
            self._client.disconnect(properties=disconnect_properties(session_expiry_s=0))
        else:
            self._client.disconnect()
        self._client.loop_stop()
        if ending and not ended:  # not connected now, or 3.1.1: a clean connect removes it
            _end_session(self.config.mqtt_url, self.config.client_id, protocol=self.config.protocol)
        return drained

    @property
    def connected(self) -> bool:
        """Whether the consumer is connected right now."""
        return self._connected.is_set()

    @property
    def failed(self) -> bool:
        """Whether the network thread died: nothing more is received, the process must exit.

        paho ends its thread on an exception it does not handle itself; it then clears
        `_thread` (its own attribute: no public way to learn that the loop is gone)."""
        return self._started and self._accepting and self._client._thread is None

    # -- callbacks (network thread) --------------------------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            log.error(
                "broker refused the connection; retrying",
                extra={"client_id": self.config.client_id, "reason": str(reason_code)},
            )
            return
        self._generation += 1
        self.session_present = flags.session_present
        self._subscribed.clear()
        self._awaiting.clear()
        # A resumed session may hold filters of an earlier layout: the new ones go first, so
        # that no message falls between the two (the broker handles them in order).
        if self._filters:
            if self.config.protocol == "5":
                # retained messages only for a filter the session did not hold yet
                opts = SubscribeOptions(
                    qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
                )
                _, mid = client.subscribe([(f, opts) for f in self._filters])
            else:
                _, mid = client.subscribe([(f, 1) for f in self._filters])
            if mid is not None:
                self._awaiting.add(mid)
        if self._stale:
            _, mid = client.unsubscribe(list(self._stale))
            if mid is not None:
                self._awaiting.add(mid)
        log.info(
            "connected to broker",
            extra={
                "client_id": self.config.client_id,
                "session_present": flags.session_present,
                "subscription": ", ".join(self._filters) or "none",
            },
        )
        self._connected.set()
        if not self._awaiting:
            self._settled()

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Any,
    ) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            log.error(
                "broker refused the subscription",
                extra={"subscription": ", ".join(self._filters), "reason": ", ".join(refused)},
            )
            return
        self._answered(mid)

    def _on_unsubscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Any,
    ) -> None:
        # MQTT 5 says which filters the session held (3.1.1 gives no reason codes)
        removed = [f for f, rc in zip(self._stale, reason_codes, strict=False) if rc.value == 0]
        if removed:
            log.info(
                "unsubscribed filters an earlier layout left in the session",
                extra={"client_id": self.config.client_id, "filters": removed},
            )
        self._answered(mid)

    def _answered(self, mid: int) -> None:
        self._awaiting.discard(mid)
        if not self._awaiting:
            self._settled()

    def _settled(self) -> None:
        self._subscribed.set()
        if self.config.assigned.others and not self.armed:
            # Until this comes back through the wildcard, the session may still hold messages
            # queued before the other workers' sessions held their sectors: keep them all.
            self._client.publish(marker_topic(self.config.client_id), self._marker, qos=1)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        log.warning(
            "MQTT broker unreachable; retrying",
            extra={
                "client_id": self.config.client_id,
                "broker": f"{self._endpoint.host}:{self._endpoint.port}",
                "retry_max_s": RECONNECT_MAX_S,
            },
        )

    def _on_marker(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.intercepted += 1
        self._ack(self._generation, msg.mid, msg.qos)
        mine = msg.topic == marker_topic(self.config.client_id) and msg.payload == self._marker
        if mine and not self.armed:
            self.armed = True
            log.info(
                "catch-all worker leaves the other workers' sectors to them",
                extra={"client_id": self.config.client_id},
            )

    def _on_other(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if not self.armed:
            # Its owner may have stored its own copy already (this worker was away while the
            # owner ran): taken as a possible redelivery, it stores nothing twice then.
            self._handle(msg, maybe_seen=True)
            return
        self.dropped += 1  # the sector's owner holds its own copy
        self._ack(self._generation, msg.mid, msg.qos)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        self._connected.clear()
        self._subscribed.clear()
        if reason_code.value == SESSION_TAKEN_OVER:
            log.error(
                "another client connected with this client id and took the session over: "
                "every ingest process needs its own IOC_INGEST_CLIENT_ID",
                extra={"client_id": self.config.client_id},
            )
        elif self._accepting:
            log.warning("disconnected from broker", extra={"reason": str(reason_code)})

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._handle(msg)

    def _handle(self, msg: paho.MQTTMessage, *, maybe_seen: bool = False) -> None:
        generation, mid, qos = self._generation, msg.mid, msg.qos
        topic = msg.topic
        if is_outbound(topic):
            self._ack(generation, mid, qos)  # our own alert publications: not input
            return
        if not self._accepting:
            return  # not acked: redelivered to the next session
        self.received += 1
        payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
        received_at = datetime.now(UTC)
        try:
            item = build_item(
                topic,
                payload,
                received_at=received_at,
                rules=self.rules,
                max_payload_bytes=self.config.max_payload_bytes,
            )
        except Exception as exc:  # noqa: BLE001
            # A defect of ours, not bad input: keep the message with the error rather than
            # let it kill the network thread (and the next delivery of it, again and again).
            item = self._internal_error(topic, payload, received_at, exc)
        kind = topic.rsplit("/", 1)[-1]
        metrics.MESSAGES.labels(kind if kind in _KINDS else "other").inc()
        item.redelivered = bool(msg.dup) or maybe_seen
        if qos > 0:
            acker = _Acker(self, generation, mid, qos)
            item.done = acker
            item.connection_lost = acker.connection_lost
        # Blocks while the writer's queue is full: the broker then holds the backlog.
        self.writer.submit(item)

    def _internal_error(
        self, topic: str, payload: bytes, received_at: datetime, exc: Exception
    ) -> Item:
        self.internal_errors += 1
        tb = traceback.extract_tb(exc.__traceback__)
        where = (type(exc).__name__, tb[-1].filename, tb[-1].lineno or 0) if tb else ("", "", 0)
        if where in self._logged_failures:
            log.error(
                "message handling failed again (traceback logged before)",
                extra={"topic": topic[:200], "error": repr(exc)[:300]},
            )
        else:
            self._logged_failures.add(where)
            log.error(
                "message handling failed; kept as a reject",
                exc_info=exc,
                extra={"topic": topic[:200]},
            )
        item = Item(topic=topic, payload=payload, received_at=received_at)
        with contextlib.suppress(DecodeError):
            item.source_id = parse_topic(topic).source_id
        item.reject_all(reasons.INTERNAL, f"{type(exc).__name__}: {exc}"[:2000])
        return item

    def _ack(self, generation: int, mid: int, qos: int) -> None:
        if qos > 0 and generation == self._generation:
            self._client.ack(mid, qos)


_KINDS: Final = frozenset(("telemetry", "senml", "status", "event"))


class _Acker:
    """Acknowledges one message once the writer committed it."""

    __slots__ = ("consumer", "generation", "mid", "qos")

    def __init__(self, consumer: Consumer, generation: int, mid: int, qos: int) -> None:
        self.consumer = consumer
        self.generation = generation
        self.mid = mid
        self.qos = qos

    def __call__(self, item: Item) -> None:
        self.consumer._ack(self.generation, self.mid, self.qos)

    def connection_lost(self) -> bool:
        """Whether the connection that delivered the message dropped: the broker redelivers it."""
        return self.generation != self.consumer._generation
