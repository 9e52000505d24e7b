"""The broker check logs in to a real broker and says why when it cannot."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid

import paho.mqtt.client as paho
import pytest

from ioc.embedded_pg import free_port
from ioc.errors import BrokerError, ConfigError
from ioc.mqtt import (
    connect_properties,
    end_session,
    paho_client,
    parse_mqtt_url,
    ping_broker,
    process_client_id,
    touch_session,
)
from tests.support.ingest import publish_all


async def test_ping_a_real_broker(mqtt_url: str) -> None:
    await ping_broker(parse_mqtt_url(mqtt_url))


async def test_ping_a_closed_port_fails_with_the_address() -> None:
    port = free_port()
    with pytest.raises(BrokerError, match=f"127.0.0.1:{port}"):
        await ping_broker(parse_mqtt_url(f"mqtt://127.0.0.1:{port}"), timeout_s=2)


def test_url_parts() -> None:
    ep = parse_mqtt_url("mqtts://op%40ioc:p%3Ass@broker.example:8884")
    assert (ep.host, ep.port, ep.username, ep.password, ep.tls) == (
        "broker.example",
        8884,
        "op@ioc",
        "p:ss",
        True,
    )
    assert parse_mqtt_url("mqtt://b").port == 1883
    with pytest.raises(ConfigError):
        parse_mqtt_url("http://b")


def _resume(mqtt_url: str, client_id: str, topic: str | None = None) -> tuple[bool, int]:
    """Connect with clean start off; (session present, messages received within 1 s)."""
    endpoint = parse_mqtt_url(mqtt_url)
    client = paho_client(endpoint, client_id, persistent=True)
    got: list[bytes] = []
    present: list[bool] = []
    ready = threading.Event()

    def on_connect(c: paho.Client, u: object, flags: paho.ConnectFlags, *rest: object) -> None:
        present.append(flags.session_present)
        if topic is not None:
            c.subscribe(topic, qos=1)
        else:
            ready.set()

    client.on_connect = on_connect
    client.on_subscribe = lambda *args: ready.set()
    client.on_message = lambda c, u, msg: got.append(msg.payload)
    try:
        client.connect(
            endpoint.host,
            endpoint.port,
            clean_start=False,
            properties=connect_properties(session_expiry_s=3600),
        )
        client.loop_start()
        assert ready.wait(10)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not got:
            time.sleep(0.05)  # a queued message would arrive at once
    finally:
        client.disconnect()
        client.loop_stop()
    return present[0], len(got)


def test_end_session_drops_a_persistent_session_and_its_backlog(mqtt_url: str) -> None:
    client_id, topic = f"test-end-{uuid.uuid4().hex[:8]}", f"test/end/{uuid.uuid4().hex[:8]}"
    _resume(mqtt_url, client_id, topic)  # the session now holds a subscription
    publish_all(mqtt_url, [(topic, b"kept")])
    assert _resume(mqtt_url, client_id) == (True, 1)  # the session kept it while away
    publish_all(mqtt_url, [(topic, b"dropped")])
    assert end_session(mqtt_url, client_id)
    assert _resume(mqtt_url, client_id) == (False, 0)


def test_touch_session_looks_and_subscribes_without_taking_a_message(mqtt_url: str) -> None:
    client_id, topic = f"test-touch-{uuid.uuid4().hex[:8]}", f"test/touch/{uuid.uuid4().hex[:8]}"
    # looking at a session that does not exist leaves none behind
    assert not touch_session(mqtt_url, client_id, session_expiry_s=600)
    assert not touch_session(mqtt_url, client_id, session_expiry_s=600)
    # subscribing creates it; what arrives afterwards waits in it, also past another look
    assert not touch_session(mqtt_url, client_id, session_expiry_s=600, subscribe=[topic])
    publish_all(mqtt_url, [(topic, b"kept")])
    assert touch_session(mqtt_url, client_id, session_expiry_s=600)
    assert _resume(mqtt_url, client_id) == (True, 1)
    assert end_session(mqtt_url, client_id)


def test_process_client_ids_differ_between_processes() -> None:
    here = process_client_id("ioc-alerts")
    there = subprocess.run(
        [
            sys.executable,
            "-c",
            "from ioc.mqtt import process_client_id as p; print(p('ioc-alerts'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert here.startswith("ioc-alerts-") and there.startswith("ioc-alerts-")
    assert here != there
    assert here == process_client_id("ioc-alerts")  # stable within a process


async def test_ping_a_listener_that_never_answers_fails_within_the_timeout() -> None:
    """A port that accepts connections but says nothing (not a broker, or a hung one)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with pytest.raises(BrokerError, match="did not answer"):
            await ping_broker(parse_mqtt_url(f"mqtt://127.0.0.1:{port}"), timeout_s=1)
