"""MQTT URLs and a reachability check of a broker."""

from __future__ import annotations

import asyncio
import ssl
import struct
import threading
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ioc.errors import BrokerError, ConfigError


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


def _utf8(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("!H", len(raw)) + raw


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(endpoint: MqttEndpoint, client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT packet with a clean session."""
    flags = 0x02
    payload = _utf8(client_id)
    if endpoint.username is not None:
        flags |= 0x80
        payload += _utf8(endpoint.username)
        if endpoint.password is not None:
            flags |= 0x40
            payload += _utf8(endpoint.password)
    body = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", 10) + payload
    return bytes([0x10]) + _remaining_length(len(body)) + body


async def ping_broker(endpoint: MqttEndpoint, *, timeout_s: float = 3.0) -> None:
    """Connect, log in and disconnect; BrokerError says why it failed."""
    context = ssl.create_default_context() if endpoint.tls else None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                endpoint.host, endpoint.port, ssl=context
            )
            try:
                writer.write(connect_packet(endpoint, "ioc-readyz"))
                await writer.drain()
                connack = await reader.readexactly(4)
                if connack[0] != 0x20:
                    raise BrokerError(f"unexpected reply from broker: {connack[0]:#x}")
                if connack[3] != 0:
                    raise BrokerError(f"broker refused the connection (code {connack[3]})")
                writer.write(b"\xe0\x00")
                await writer.drain()
            finally:
                writer.close()
    except TimeoutError:
        raise BrokerError(f"broker {endpoint.host}:{endpoint.port} did not answer") from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise BrokerError(f"broker {endpoint.host}:{endpoint.port} unreachable: {exc}") from None


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


def end_session(mqtt_url: str, client_id: str, *, timeout_s: float = 10.0) -> bool:
    """Remove a persistent session and its backlog from the broker (a clean connect with
    session expiry 0, then disconnect); True once the broker accepted the connection."""
    endpoint = parse_mqtt_url(mqtt_url)
    client = paho_client(endpoint, client_id)
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.connect(
        endpoint.host,
        endpoint.port,
        clean_start=True,
        properties=connect_properties(session_expiry_s=0),
    )
    client.loop_start()
    try:
        return connected.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
