"""MQTT to database through a real broker: every payload form, rejects, duplicates, sharing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from ingest import reasons
from ingest.consumer import Consumer
from ioc.embedded_broker import EmbeddedBroker
from tests.support.ingest import (
    Publisher,
    publish_all,
    query,
    readings_checksum,
    running_consumer,
    stored_checksum,
    unique,
    wait_until,
)
from tests.support.services import shared_tmp

NOW = datetime.now(UTC).replace(microsecond=0)


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _count(db_url: str, sql: str, *params: object) -> int:
    return int(query(db_url, sql, params)[0][0])


def test_every_payload_form_is_stored(synced_db: str, mqtt_url: str) -> None:
    src = unique("tram")
    messages = [
        (f"ioc/v1/water/{src}/telemetry",
         orjson.dumps({"ts": _ms(NOW), "values": {"salinity": 1.1, "water_level": 1.6}})),
        (f"ioc/v1/water/{src}/telemetry",
         orjson.dumps([{"ts": (NOW - timedelta(minutes=m)).isoformat(),
                        "values": {"salinity": 1.0 + m / 10}} for m in (1, 2, 3)])),
        (f"ioc/v1/water/{src}/senml",
         orjson.dumps([{"bn": f"{src}:", "bt": NOW.timestamp() - 600, "n": "rainfall_24h",
                        "u": "mm", "v": 12.5}, {"n": "rainfall_24h", "v": 13.0, "t": 60}])),
        (f"ioc/v1/environment/{src}-aq/telemetry", orjson.dumps({"values": {"aqi": 88}})),
        (f"ioc/v1/water/{src}/status", b"offline"),
        (f"ioc/v1/water/{src}/event",
         orjson.dumps({"kind": "salinity_intrusion", "severity": "warning",
                       "title": "Mặn xâm nhập sâu", "external_ref": src})),
    ]  # fmt: skip
    with running_consumer(synced_db, mqtt_url):
        publish_all(mqtt_url, messages)
        wait_until(
            lambda: _count(synced_db, "SELECT count(*) FROM event WHERE external_ref = %s", src),
            what="the event",
        )
        wait_until(
            lambda: (
                _count(
                    synced_db,
                    "SELECT count(*) FROM reading_named WHERE source_id LIKE %s",
                    src + "%",
                )
                == 8
            ),
            what="8 readings",
        )
    rows = query(
        synced_db,
        "SELECT source_id, metric, value FROM reading_named WHERE source_id LIKE %s "
        "ORDER BY source_id, metric, ts",
        (src + "%",),
    )
    assert rows == [
        (src, "rainfall_24h", 12.5),
        (src, "rainfall_24h", 13.0),
        (src, "salinity", 1.3),
        (src, "salinity", 1.2),
        (src, "salinity", 1.1),
        (src, "salinity", 1.1),
        (src, "water_level", 1.6),
        (f"{src}-aq", "aqi", 88.0),
    ]
    assert query(synced_db, "SELECT status FROM source WHERE id = %s", (src,)) == [("offline",)]
    assert query(synced_db, "SELECT sector_id FROM source WHERE id = %s", (f"{src}-aq",)) == [
        ("environment",)
    ]


def test_each_reject_reason_keeps_the_raw_payload(synced_db: str, mqtt_url: str) -> None:
    src = unique("bad")
    future = _ms(NOW + timedelta(hours=1))
    cases = {
        reasons.BAD_TOPIC: (f"ioc/v1/water/{src}/readings", b'{"values": {"salinity": 1}}'),
        reasons.TOO_LARGE: (f"ioc/v1/water/{src}/telemetry",
                            b'{"values": {"salinity": 1}}' + b" " * 5000),
        reasons.MALFORMED: (f"ioc/v1/water/{src}/telemetry", b"\xff\xfe not json"),
        reasons.UNKNOWN_SECTOR: (f"ioc/v1/mars/{src}/telemetry", b'{"values": {"salinity": 1}}'),
        reasons.UNKNOWN_METRIC: (f"ioc/v1/water/{src}/telemetry", b'{"values": {"spin": 1}}'),
        reasons.NOT_NUMERIC: (f"ioc/v1/water/{src}/telemetry", b'{"values": {"salinity": "1.2"}}'),
        reasons.NOT_FINITE: (f"ioc/v1/water/{src}/senml",
                             b'[{"bv": 1e308, "n": "salinity", "v": 1e308}]'),
        reasons.OUT_OF_RANGE: (f"ioc/v1/water/{src}/telemetry", b'{"values": {"salinity": -3}}'),
        reasons.FUTURE_TIME: (f"ioc/v1/water/{src}/telemetry",
                              b'{"ts": %d, "values": {"salinity": 1}}' % future),
        reasons.TOO_OLD: (f"ioc/v1/water/{src}/telemetry",
                          b'{"ts": "2020-01-01T00:00:00Z", "values": {"salinity": 1}}'),
        reasons.BAD_TIME: (f"ioc/v1/water/{src}/telemetry",
                           b'{"ts": "noon", "values": {"salinity": 1}}'),
    }  # fmt: skip
    with running_consumer(synced_db, mqtt_url, max_batch_rows=3, max_payload_bytes=4096):
        publish_all(mqtt_url, cases.values())
        rows = wait_until(
            lambda: (
                r
                if len(
                    r := query(
                        synced_db,
                        "SELECT reason, topic, payload, detail FROM ingest_reject "
                        "WHERE topic LIKE %s",
                        (f"%/{src}/%",),
                    )
                )
                >= len(cases)
                else None
            ),
            what="a reject row per reason",
        )
    by_reason = {r[0]: r for r in rows}
    assert set(by_reason) == set(cases)
    for reason, (topic, payload) in cases.items():
        assert by_reason[reason][1] == topic
        assert bytes(by_reason[reason][2]) == payload, reason
        assert by_reason[reason][3]  # a detail for the operator
    assert _count(synced_db, "SELECT count(*) FROM reading") == 0


def test_a_message_delivered_twice_stores_its_readings_once(synced_db: str, mqtt_url: str) -> None:
    src = unique("dup")
    payload = orjson.dumps({"ts": _ms(NOW), "values": {"salinity": 2.0, "water_level": 1.0}})
    with running_consumer(synced_db, mqtt_url) as consumer:
        publish_all(mqtt_url, [(f"ioc/v1/water/{src}/telemetry", payload)] * 3)
        # all three copies were taken in, written and acknowledged
        wait_until(
            lambda: consumer.received == 3 and consumer.writer.pending()[0] == 0,
            what="three deliveries written",
        )
    assert _count(synced_db, "SELECT count(*) FROM reading") == 2


def test_our_own_alert_publications_are_not_taken_as_input(synced_db: str, mqtt_url: str) -> None:
    src = unique("t")
    with running_consumer(synced_db, mqtt_url):
        publish_all(
            mqtt_url,
            [
                ("ioc/v1/alerts/water/critical", b'{"alert": 1}'),
                (f"ioc/v1/water/{src}/telemetry", b'{"values": {"salinity": 1}}'),
            ],
        )
        wait_until(lambda: _count(synced_db, "SELECT count(*) FROM reading"), what="a reading")
    assert _count(synced_db, "SELECT count(*) FROM ingest_reject") == 0


def test_two_workers_on_the_shared_subscription_split_the_load(
    synced_db: str, mqtt_url: str
) -> None:
    src = unique("shared")
    published = []
    group = unique("grp")
    with (
        running_consumer(synced_db, mqtt_url, group=group) as first,
        running_consumer(synced_db, mqtt_url, group=group) as second,
        Publisher(mqtt_url) as pub,
    ):
        for i in range(1000):
            ts = _ms(NOW) - i * 1000
            source = f"{src}-{i % 10}"
            value = round(1 + (i % 30) / 10, 1)
            pub.publish(
                f"ioc/v1/water/{source}/telemetry",
                orjson.dumps({"ts": ts, "values": {"salinity": value}}),
            )
            published.append((source, "salinity", float(ts), value))
        pub.flush()
        wait_until(
            lambda: stored_checksum(synced_db, src)[0] >= len(published),
            what="every reading",
        )
        counts = (first.received, second.received)
    assert stored_checksum(synced_db, src) == readings_checksum(published)
    assert sum(counts) == 1000
    assert min(counts) > 100, counts  # both took a real share


def test_a_full_queue_stops_reading_and_loses_nothing(synced_db: str, mqtt_url: str) -> None:
    import psycopg

    from ioc.db import libpq_url

    src = unique("bp")
    published = []
    with (
        psycopg.connect(libpq_url(synced_db)) as blocker,
        running_consumer(synced_db, mqtt_url, queue_max_rows=20, max_batch_rows=5) as c,
    ):
        blocker.execute("LOCK TABLE source IN EXCLUSIVE MODE")
        with Publisher(mqtt_url) as pub:
            for i in range(200):
                ts = _ms(NOW) - i * 1000
                pub.publish(
                    f"ioc/v1/water/{src}/telemetry",
                    orjson.dumps({"ts": ts, "values": {"salinity": 1.5}}),
                )
                published.append((src, "salinity", float(ts), 1.5))
        wait_until(lambda: c.writer.pending()[0] >= 20, what="a full queue")
        assert c.writer.pending()[0] <= 20 + 1  # bounded while the database is stuck
        assert c.received < 200  # the rest waits at the broker
        blocker.rollback()
        wait_until(lambda: stored_checksum(synced_db, src)[0] == 200, what="the backlog stored")
    assert stored_checksum(synced_db, src) == readings_checksum(published)


def test_consumer_reports_an_unreachable_broker(synced_db: str) -> None:
    from ingest.consumer import ConsumerConfig
    from ingest.writer import Writer
    from ioc.embedded_pg import free_port
    from ioc.errors import BrokerError
    from tests.support.ingest import RULES

    consumer = Consumer(
        ConsumerConfig(mqtt_url=f"mqtt://127.0.0.1:{free_port()}", client_id=unique("x")),
        rules=RULES,
        writer=Writer(synced_db),
    )
    with pytest.raises(BrokerError, match="unreachable"):
        consumer.start()


def test_mqtt_3_1_1_brokers_such_as_amqtt_work_with_one_worker(synced_db: str) -> None:
    # the demo's fallback broker when no mosquitto binary is installed speaks 3.1.1 only
    src = unique("v311")
    with (
        EmbeddedBroker(shared_tmp("ioc-amqtt-"), kind="amqtt") as broker,
        running_consumer(synced_db, broker.url, protocol="3.1.1"),
    ):
        publish_all(
            broker.url,
            [(f"ioc/v1/water/{src}/telemetry", b'{"values": {"salinity": %d}}' % i)
             for i in range(1, 6)],
            protocol="3.1.1",
        )  # fmt: skip
        wait_until(lambda: stored_checksum(synced_db, src)[0] == 5, what="five readings")
