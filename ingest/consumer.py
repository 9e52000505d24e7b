"""The MQTT consumer: shared subscription, persistent session, ack only after commit."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ingest import metrics, reasons
from ingest.items import Item, build_item
from ingest.topics import SUBSCRIPTION, is_outbound, parse_topic
from ingest.validation import Rules
from ingest.writer import Writer
from ioc.errors import BrokerError, DecodeError
from ioc.mqtt import Protocol, connect_properties, paho_client, parse_mqtt_url

log = logging.getLogger("ioc.ingest.consumer")

KEEPALIVE_S: Final = 30
CONNECT_TIMEOUT_S: Final = 10.0
RECONNECT_MIN_S: Final = 1
RECONNECT_MAX_S: Final = 30
ACK_FLUSH_S: Final = 2.0


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

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (BrokerError if the broker cannot be reached) and start consuming."""
        try:
            if self.config.protocol == "5":
                self._client.connect(
                    self._endpoint.host,
                    self._endpoint.port,
                    keepalive=KEEPALIVE_S,
                    clean_start=False,
                    properties=connect_properties(
                        session_expiry_s=self.config.session_expiry_s,
                        receive_maximum=self.config.receive_maximum,
                    ),
                )
            else:  # 3.1.1: the persistent session comes from clean_session=False
                self._client.connect(
                    self._endpoint.host, self._endpoint.port, keepalive=KEEPALIVE_S
                )
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

    def stop(self, *, drain_timeout_s: float = 30.0) -> bool:
        """Stop taking messages, commit and ack what is queued, disconnect (session kept)."""
        self._accepting = False
        drained = self.writer.stop(timeout_s=drain_timeout_s)
        deadline = time.monotonic() + ACK_FLUSH_S
        while self._client.want_write() and time.monotonic() < deadline:
            time.sleep(0.01)  # the network thread sends the last acks
        self._client.disconnect()
        self._client.loop_stop()
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
            log.error("broker refused the connection", extra={"reason": str(reason_code)})
            return
        self._generation += 1
        self.session_present = flags.session_present
        if self.config.protocol == "5":
            client.subscribe(self.config.subscription, options=SubscribeOptions(qos=1))
        else:
            client.subscribe(self.config.subscription, qos=1)
        log.info(
            "connected to broker",
            extra={
                "client_id": self.config.client_id,
                "session_present": flags.session_present,
                "subscription": self.config.subscription,
            },
        )
        self._connected.set()

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
                extra={"subscription": self.config.subscription, "reason": ", ".join(refused)},
            )
            return
        self._subscribed.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        self._connected.clear()
        if self._accepting:
            log.warning("disconnected from broker", extra={"reason": str(reason_code)})

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
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
        item.redelivered = bool(msg.dup)
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
