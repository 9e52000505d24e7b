"""Alert test helpers: a writer with its own alert engine, feeding it, dispatching, listening."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from alerts.engine import AlertEngine
from alerts.notify import Channel, Dispatcher
from ingest.items import Item
from ingest.writer import Writer
from ioc.mqtt import paho_client, parse_mqtt_url
from tests.support.ingest import unique


@contextmanager
def engine_writer(db_url: str, **engine_args: float) -> Iterator[Writer]:
    """A writer with its own alert engine, as one ingest worker has."""
    writer = Writer(db_url, hooks=[AlertEngine(**engine_args)])
    writer.start()
    try:
        yield writer
    finally:
        writer.stop()


def feed(writer: Writer, *items: Item) -> None:
    """Submit items one after another, each committed before the next."""
    for item in items:
        done = threading.Event()
        item.done = lambda _item, done=done: done.set()
        assert writer.submit(item, timeout_s=30)
        assert done.wait(30), writer.last_error


@contextmanager
def dispatching(db_url: str, channel: Channel, **options: float) -> Iterator[Dispatcher]:
    """A dispatcher whose connection (and channel lock) and channel are closed afterwards."""
    dispatcher = Dispatcher(db_url, channel, **options)
    try:
        yield dispatcher
    finally:
        try:
            dispatcher.close_connection()
        finally:
            channel.close()


@contextmanager
def subscribed(mqtt_url: str, topic_filter: str) -> Iterator[list[tuple[str, bytes]]]:
    """A live MQTT subscription; yields the (topic, payload) list it fills."""
    endpoint = parse_mqtt_url(mqtt_url)
    got: list[tuple[str, bytes]] = []
    client = paho_client(endpoint, unique("test-sub"))
    ready = threading.Event()
    client.on_connect = lambda c, *args: c.subscribe(topic_filter, qos=1)
    client.on_subscribe = lambda *args: ready.set()
    client.on_message = lambda c, u, msg: got.append((msg.topic, bytes(msg.payload)))
    try:
        client.connect(endpoint.host, endpoint.port)
        client.loop_start()
        assert ready.wait(10), f"could not subscribe to {topic_filter}"
        yield got
    finally:
        client.disconnect()
        client.loop_stop()
