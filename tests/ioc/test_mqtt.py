"""The broker check logs in to a real broker and says why when it cannot."""

from __future__ import annotations

import pytest

from ioc.embedded_pg import free_port
from ioc.errors import BrokerError, ConfigError
from ioc.mqtt import parse_mqtt_url, ping_broker


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
