"""MQTT URLs and a reachability check of a broker."""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ioc.errors import BrokerError, ConfigError
from ioc.settings import host_tag


@dataclass(frozen=True)
class MqttEndpoint:
    """Where a broker is and how to log in to it."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_mqtt_url(url: str) -> MqttEndpoint:
    """mqtt://user:pass@host:port (mqtts:// for TLS) into its parts."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp") or not parts.hostname:
        raise ConfigError(f"not an MQTT URL: {url!r} (expected mqtt://host:port)")
    tls = parts.scheme == "mqtts"
    return MqttEndpoint(
        host=parts.hostname,
        port=parts.port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )


def check_broker(endpoint: MqttEndpoint, *, timeout_s: float = 3.0) -> None:
    """Connect with paho, wait for the broker's CONNACK and disconnect; BrokerError says why
    it failed (unreachable, silent, or refusing the login)."""
    client = paho_client(endpoint, f"ioc-readyz-{os.urandom(4).hex()}")
    client.connect_timeout = timeout_s
    answers: list[ReasonCode] = []
    client.on_connect = lambda _c, _u, _flags, reason, _props=None: answers.append(reason)
    where = f"{endpoint.host}:{endpoint.port}"
    deadline = time.monotonic() + timeout_s
    try:
        client.connect(endpoint.host, endpoint.port, keepalive=max(5, int(timeout_s) + 1))
        while not answers and time.monotonic() < deadline:
            client.loop(timeout=0.05)
    except OSError as exc:
        raise BrokerError(f"broker {where} unreachable: {exc}") from None
    finally:
        if answers and not answers[0].is_failure:
            client.disconnect()
            client.loop(timeout=0.05)  # sends the DISCONNECT
        sock = client.socket()
        if sock is not None:
            sock.close()  # a throwaway client: nothing else will close it
    if not answers:
        raise BrokerError(f"broker {where} did not answer")
    if answers[0].is_failure:
        raise BrokerError(f"broker {where} refused the connection: {answers[0]}")


async def ping_broker(endpoint: MqttEndpoint, *, timeout_s: float = 3.0) -> None:
    """`check_broker` off the event loop."""
    await asyncio.to_thread(check_broker, endpoint, timeout_s=timeout_s)


Protocol = Literal["5", "3.1.1"]


def paho_client(
    endpoint: MqttEndpoint,
    client_id: str = "",
    *,
    manual_ack: bool = False,
    protocol: Protocol = "5",
    persistent: bool = False,
) -> paho.Client:
    """A paho client for `endpoint` (MQTT 5 unless told 3.1.1), credentials and TLS set.

    `persistent` matters for 3.1.1 only (clean session off); MQTT 5 sets it when connecting.
    """
    if protocol == "5":
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            manual_ack=manual_ack,
        )
    else:
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=not persistent,
            manual_ack=manual_ack,
        )
    if endpoint.username is not None:
        client.username_pw_set(endpoint.username, endpoint.password)
    if endpoint.tls:
        client.tls_set_context(ssl.create_default_context())
    return client


def connect_properties(*, session_expiry_s: int, receive_maximum: int | None = None) -> Properties:
    """CONNECT properties: keep the session `session_expiry_s` seconds; cap unacked messages."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry_s
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    return props


def disconnect_properties(*, session_expiry_s: int) -> Properties:
    """DISCONNECT properties: `session_expiry_s` 0 ends the session as the client leaves."""
    props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry_s
    return props


def process_client_id(prefix: str) -> str:
    """`prefix-host-pid`: a client id no other process uses (for clients without a session)."""
    return f"{prefix}-{host_tag()}-{os.getpid()}"


def end_session(
    mqtt_url: str, client_id: str, *, timeout_s: float = 10.0, protocol: Protocol = "5"
) -> bool:
    """Remove a persistent session and its backlog from the broker (a clean connect with
    session expiry 0, then disconnect); True once the broker accepted the connection."""
    endpoint = parse_mqtt_url(mqtt_url)
    client = paho_client(endpoint, client_id, protocol=protocol)  # 3.1.1: clean session
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    if protocol == "5":
        client.connect(
            endpoint.host,
            endpoint.port,
            clean_start=True,
            properties=connect_properties(session_expiry_s=0),
        )
    else:
        client.connect(endpoint.host, endpoint.port)
    client.loop_start()
    try:
        return connected.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()


def touch_session(
    mqtt_url: str,
    client_id: str,
    *,
    session_expiry_s: int,
    subscribe: Sequence[str] = (),
    protocol: Protocol = "5",
    timeout_s: float = 10.0,
) -> bool:
    """Resume `client_id`'s persistent session without taking a message from it (nothing is
    acknowledged: what the broker sends is sent again later), subscribe it to `subscribe`,
    and leave; True when the session existed. A session this call created only to look
    is removed again (when `subscribe` is empty). BrokerError when the broker cannot be
    reached or refuses."""
    endpoint = parse_mqtt_url(mqtt_url)
    client = paho_client(endpoint, client_id, manual_ack=True, protocol=protocol, persistent=True)
    connack: list[tuple[bool, ReasonCode]] = []
    acked: list[list[ReasonCode]] = []
    connected, subscribed = threading.Event(), threading.Event()

    def on_connect(
        c: paho.Client, u: Any, flags: paho.ConnectFlags, rc: ReasonCode, p: Any
    ) -> None:
        connack.append((flags.session_present, rc))
        connected.set()

    def on_subscribe(c: paho.Client, u: Any, mid: int, rcs: list[ReasonCode], p: Any) -> None:
        acked.append(rcs)
        subscribed.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    where = f"MQTT broker {endpoint.host}:{endpoint.port}"
    try:
        if protocol == "5":
            # one message at most is sent before the SUBACK (and stays unacknowledged)
            props = connect_properties(session_expiry_s=session_expiry_s, receive_maximum=1)
            client.connect(endpoint.host, endpoint.port, clean_start=False, properties=props)
        else:
            client.connect(endpoint.host, endpoint.port)
    except OSError as exc:
        raise BrokerError(f"{where} unreachable: {exc}") from None
    client.loop_start()
    end_now = False
    try:
        if not connected.wait(timeout_s):
            raise BrokerError(f"{where} did not answer the connection of {client_id!r}")
        present, rc = connack[0]
        if rc.is_failure:
            raise BrokerError(f"{where} refused the connection of {client_id!r}: {rc}")
        if subscribe:
            if protocol == "5":
                opts = SubscribeOptions(
                    qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
                )
                client.subscribe([(f, opts) for f in subscribe])
            else:
                client.subscribe([(f, 1) for f in subscribe])
            if not subscribed.wait(timeout_s):
                raise BrokerError(f"{where} did not acknowledge the subscription of {client_id!r}")
            refused = [str(r) for r in acked[0] if r.is_failure]
            if refused:
                raise BrokerError(f"{where} refused a subscription of {client_id!r}: {refused}")
        end_now = not present and not subscribe
    finally:
        if end_now and protocol == "5":
            client.disconnect(properties=disconnect_properties(session_expiry_s=0))
        else:
            client.disconnect()
        client.loop_stop()
    if end_now and protocol != "5":
        end_session(mqtt_url, client_id, timeout_s=timeout_s, protocol=protocol)
    return present
