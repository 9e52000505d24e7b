"""Both embedded brokers carry a QoS 1 message from a publisher to a subscriber."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from ioc.embedded_broker import EmbeddedBroker
from tests.support.services import missing


def _round_trip(port: int) -> bytes:
    got: list[bytes] = []
    arrived = threading.Event()
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ioc-test-rt")

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.payload)
        arrived.set()

    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe("ioc/v1/water/st-1/telemetry", qos=1)
        assert subscribed.wait(10)
        client.publish(
            "ioc/v1/water/st-1/telemetry", b'{"values":{"salinity":1.2}}', qos=1
        ).wait_for_publish(10)
        assert arrived.wait(10)
    finally:
        client.loop_stop()
        client.disconnect()
    return got[0]


@pytest.mark.parametrize("kind", ["amqtt", "mosquitto"])
def test_embedded_broker_round_trip(tmp_path: Path, kind: str) -> None:
    if kind == "mosquitto" and shutil.which("mosquitto") is None:
        missing("mosquitto is not on PATH")
    with EmbeddedBroker(tmp_path, kind=kind) as broker:  # type: ignore[arg-type]
        assert broker.kind == kind
        assert _round_trip(broker.port or 0) == b'{"values":{"salinity":1.2}}'
