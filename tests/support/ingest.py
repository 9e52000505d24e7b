"""Ingest test helpers: a synced database, a real publisher, a running consumer, polling."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import paho.mqtt.client as paho
import psycopg
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from alerts.seed import seed_rules
from ingest.consumer import Consumer, ConsumerConfig
from ingest.items import Item, build_item
from ingest.validation import Rules
from ingest.writer import Writer
from ioc.catalogue import Profile, load_profile
from ioc.db import libpq_url, sqlalchemy_url
from ioc.mqtt import Protocol, end_session, paho_client, parse_mqtt_url
from ioc.sync import sync_profile

T = TypeVar("T")
PROFILE: Profile = load_profile("mekong")
RULES = Rules.from_profile(PROFILE)


def sync(db_url: str, profile: Profile = PROFILE) -> None:
    """Write the profile's sectors and seed its alert rules, as `ioc db upgrade` does."""
    engine = create_engine(sqlalchemy_url(db_url), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            sync_profile(conn, profile)
            seed_rules(conn, profile)
    finally:
        engine.dispose()


def query(db_url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """All rows of one statement (none for a statement without rows), on a fresh connection."""
    with psycopg.connect(libpq_url(db_url), connect_timeout=5) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def wait_until(probe: Callable[[], T], *, timeout_s: float = 30.0, what: str = "condition") -> T:
    """Poll `probe` until it returns something truthy; fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    last: T = probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}: {last!r}")
        time.sleep(0.05)
        last = probe()
    return last


def make_item(topic: str, body: object, *, rules: Rules = RULES) -> Item:
    """An item as a worker builds it from one message (JSON of `body`) received now."""
    return build_item(
        topic,
        orjson.dumps(body),
        received_at=datetime.now(UTC),
        rules=rules,
        max_payload_bytes=1 << 20,
    )


def unique(prefix: str) -> str:
    """A name no other test uses (source ids, client ids, share groups)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def readings_checksum(rows: Iterable[tuple[str, str, float, float]]) -> tuple[int, str]:
    """(count, digest) of (source, metric, epoch ms, value) rows, independent of order."""
    lines = sorted(f"{s}|{m}|{round(t)}|{v!r}" for s, m, t, v in rows)
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()


def stored_checksum(db_url: str, source_prefix: str) -> tuple[int, str]:
    """Checksum of the readings stored for sources whose id starts with `source_prefix`."""
    rows = query(
        db_url,
        "SELECT source_id, metric, extract(epoch FROM ts) * 1000, value FROM reading_named "
        "WHERE source_id LIKE %s",
        (source_prefix + "%",),
    )
    return readings_checksum((str(s), str(m), float(t), float(v)) for s, m, t, v in rows)


class Publisher:
    """A real MQTT v5 publisher that waits for the broker's PUBACK of every message."""

    def __init__(self, mqtt_url: str, *, max_inflight: int = 500, protocol: Protocol = "5") -> None:
        self._client = paho_client(parse_mqtt_url(mqtt_url), unique("test-pub"), protocol=protocol)
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(0)
        endpoint = parse_mqtt_url(mqtt_url)
        self._client.connect(endpoint.host, endpoint.port, keepalive=30)
        self._client.loop_start()
        self._infos: list[paho.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        """Publish one message (does not wait)."""
        self._infos.append(self._client.publish(topic, payload, qos=qos))

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait until the broker acknowledged everything published so far."""
        deadline = time.monotonic() + timeout_s
        for info in self._infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        self._infos.clear()

    def close(self) -> None:
        """Flush and disconnect."""
        self.flush()
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish_all(
    mqtt_url: str, messages: Iterable[tuple[str, bytes]], *, qos: int = 1, protocol: Protocol = "5"
) -> None:
    """Publish every message and wait for the broker to acknowledge all of them."""
    with Publisher(mqtt_url, protocol=protocol) as pub:
        for topic, payload in messages:
            pub.publish(topic, payload, qos=qos)


@contextmanager
def running_consumer(
    db_url: str,
    mqtt_url: str,
    *,
    client_id: str | None = None,
    group: str | None = None,
    rules: Rules = RULES,
    keep_session: bool = False,
    max_payload_bytes: int = 256 * 1024,
    protocol: Protocol = "5",
    **writer_options: Any,
) -> Iterator[Consumer]:
    """A consumer and writer on a test's own share group, stopped (and its session removed)."""
    client_id = client_id or unique("test-ingest")
    group = group or unique("grp")
    writer = Writer(db_url, **writer_options)
    consumer = Consumer(
        ConsumerConfig(
            mqtt_url=mqtt_url,
            client_id=client_id,
            session_expiry_s=300,
            max_payload_bytes=max_payload_bytes,
            subscription=f"$share/{group}/ioc/v1/+/+/+" if protocol == "5" else "ioc/v1/+/+/+",
            protocol=protocol,
        ),
        rules=rules,
        writer=writer,
    )
    writer.start()
    try:
        consumer.start()
        yield consumer
    finally:
        consumer.stop()  # stops the writer too, also when start() failed
        if not keep_session and protocol == "5":
            end_session(mqtt_url, client_id)


@contextmanager
def tables_locked(db_url: str, *tables: str) -> Iterator[None]:
    """Hold an EXCLUSIVE lock on `tables`: reads pass, a worker's writes wait inside its batch."""
    with psycopg.connect(libpq_url(db_url)) as conn:
        conn.execute(f"LOCK TABLE {', '.join(tables)} IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


def lock_waiters(db_url: str) -> int:
    """How many other sessions on the database wait for a lock."""
    rows = query(
        db_url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
    )
    return int(rows[0][0])
