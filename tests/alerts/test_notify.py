"""Notifiers against a real broker and a local HTTP server: order, retries, signatures."""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import psycopg
import pytest
from pydantic import SecretStr

from alerts import actions, lifecycle
from alerts.notify import MqttChannel, WebhookChannel, _lock_key
from ingest.items import Item
from ioc.db import libpq_url
from ioc.embedded_pg import free_port
from ioc.settings import WebhookConfig
from tests.support.alerts import dispatching, engine_writer, feed, subscribed
from tests.support.ingest import make_item, query, unique, wait_until

pytestmark = pytest.mark.timeout(120)

T0 = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
SECRET = "bí-mật"


class Receiver:
    """A local webhook receiver answering with scripted status codes (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                code = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([503, 503])
    try:
        yield r
    finally:
        r.close()


def breach(source: str) -> Item:
    body = [
        {"ts": int((T0 + timedelta(minutes=m)).timestamp() * 1000), "values": {"salinity": 1.5}}
        for m in range(16)
    ]
    return make_item(f"ioc/v1/water/{source}/telemetry", body)


def webhook(url: str, **extra: Any) -> WebhookChannel:
    return WebhookChannel(WebhookConfig(name="ops", url=url, secret=SecretStr(SECRET), **extra))


def deliveries(db_url: str) -> list[tuple[object, ...]]:
    return query(
        db_url,
        "SELECT channel, attempt, ok, status_code FROM alert_delivery ORDER BY id",
    )


def test_a_webhook_gets_each_event_signed_after_retries(synced_db: str, receiver: Receiver) -> None:
    with dispatching(synced_db, webhook(receiver.url), backoff_start_s=0.01) as dispatcher:
        assert dispatcher.dispatch_pending() == 0  # the channel starts from now
        with engine_writer(synced_db) as writer:
            feed(writer, breach("tram-w1"))
        assert dispatcher.dispatch_pending() == 1
    assert len(receiver.requests) == 3  # 503, 503, then 200
    headers, body = receiver.requests[-1]
    assert all(b == body for _, b in receiver.requests)
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["x-ioc-signature"] == expected
    doc = orjson.loads(body)
    assert (doc["kind"], doc["alert"]["source_id"], doc["alert"]["status"]) == (
        "opened",
        "tram-w1",
        "open",
    )
    assert headers["x-ioc-event-id"] == str(doc["id"])
    assert deliveries(synced_db) == [
        ("webhook:ops", 1, False, 503),
        ("webhook:ops", 2, False, 503),
        ("webhook:ops", 3, True, 200),
    ]
    assert query(synced_db, "SELECT last_id FROM notify_cursor") == [(doc["id"],)]


def test_a_refused_event_is_recorded_and_the_channel_moves_on(synced_db: str) -> None:
    refusing = Receiver([422])
    try:
        with dispatching(synced_db, webhook(refusing.url), backoff_start_s=0.01) as dispatcher:
            dispatcher.dispatch_pending()
            with engine_writer(synced_db) as writer:
                feed(writer, breach("tram-w2"))
            assert dispatcher.dispatch_pending() == 1
    finally:
        refusing.close()
    assert deliveries(synced_db) == [("webhook:ops", 1, False, 422)]


def test_filtered_events_are_skipped(synced_db: str, receiver: Receiver) -> None:
    with dispatching(synced_db, webhook(receiver.url, min_severity="critical")) as dispatcher:
        dispatcher.dispatch_pending()
        with engine_writer(synced_db) as writer:
            feed(writer, breach("tram-w3"))  # a warning
        assert dispatcher.dispatch_pending() == 1
    assert receiver.requests == []


def test_undelivered_events_wait_in_the_database_until_the_receiver_is_back(
    synced_db: str, receiver: Receiver
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"
    options = {"backoff_start_s": 0.01, "backoff_max_s": 0.05}
    with dispatching(synced_db, webhook(dead), **options) as down:
        down.dispatch_pending()
        with engine_writer(synced_db) as writer:
            feed(writer, breach("tram-w4"))  # ingest commits whatever the notifier does
        stop = threading.Event()
        worker = threading.Thread(target=down.run, args=(stop,))
        worker.start()
        try:
            wait_until(lambda: len(deliveries(synced_db)) >= 3, what="failed attempts")
        finally:
            stop.set()
            worker.join(30)
        assert not worker.is_alive()
    assert all(not ok for _, _, ok, _ in deliveries(synced_db))
    with dispatching(synced_db, webhook(receiver.url), backoff_start_s=0.01) as back:
        assert back.dispatch_pending() == 1  # the same event, from the same cursor
    assert orjson.loads(receiver.requests[-1][1])["alert"]["source_id"] == "tram-w4"


def channel_lock_held(db_url: str, channel: str) -> bool:
    """Whether some session of this database holds the channel's advisory lock."""
    key = _lock_key(channel)
    # pg_locks shows a bigint advisory key as its high and low 32 bits, with objsubid 1
    rows = query(
        db_url,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND classid = %s::bigint::oid AND objid = %s::bigint::oid",
        (key >> 32, key & 0xFFFF_FFFF),
    )
    return rows != [(0,)]


def test_one_dispatcher_per_channel(synced_db: str, receiver: Receiver) -> None:
    with dispatching(synced_db, webhook(receiver.url)) as dispatcher:
        dispatcher.dispatch_pending()
        with engine_writer(synced_db) as writer:
            feed(writer, breach("tram-w5"))
        with psycopg.connect(libpq_url(synced_db), autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(%s)", (_lock_key("webhook:ops"),))
            assert channel_lock_held(synced_db, "webhook:ops")
            assert dispatcher.dispatch_pending() == 0  # another dispatcher owns the channel
        # The server ends the closed session, and frees its lock, after close() returns.
        wait_until(
            lambda: not channel_lock_held(synced_db, "webhook:ops"),
            what="the other dispatcher's lock to be released",
        )
        assert dispatcher.dispatch_pending() == 1


def test_alert_events_are_published_on_mqtt(synced_db: str, mqtt_url: str) -> None:
    channel = MqttChannel(mqtt_url, client_id=unique("ioc-alerts"))
    source = unique("tram-m")

    def mine(got: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        return [(t, p) for t, p in got if orjson.loads(p)["alert"]["source_id"] == source]

    with subscribed(mqtt_url, "ioc/v1/alerts/#") as got, dispatching(synced_db, channel) as d:
        d.dispatch_pending()
        with engine_writer(synced_db) as writer:
            feed(writer, breach(source))
        assert d.dispatch_pending() == 1
        wait_until(lambda: mine(got), what="the alert on MQTT")
    ((topic, payload),) = mine(got)
    assert topic == "ioc/v1/alerts/water/warning"
    assert orjson.loads(payload)["kind"] == "opened"
    assert deliveries(synced_db) == [("mqtt", 1, True, None)]


def test_the_document_carries_severity_changes_titles_and_the_condition_clock(
    synced_db: str,
) -> None:
    """Each event tells the severity and status at that event, and the alert's English
    title, peak severity, condition times (reading time) and whether it was retracted."""
    started, fired, ended = T0, T0 + timedelta(minutes=15), T0 + timedelta(minutes=21)
    with psycopg.connect(libpq_url(synced_db)) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO source (id, sector_id) VALUES ('tram-w6', 'water')")
        cur.execute(
            "INSERT INTO alert (cause_key, rule_kind, sector_id, source_id, metric, severity, "
            "peak_severity, title, title_en, last_value, last_seen_at, condition_started_at, "
            "condition_fired_at) VALUES ('test:tram-w6', 'threshold', 'water', 'tram-w6', "
            "'salinity', 'warning', 'warning', 'Độ mặn 1,5 ‰', 'Salinity 1.5 ‰', 1.5, %s, %s, %s) "
            "RETURNING id",
            (fired, started, fired),
        )
        row = cur.fetchone()
        assert row is not None
        alert_id = int(row[0])
    receiver = Receiver([])
    try:
        with dispatching(synced_db, webhook(receiver.url)) as dispatcher:
            assert dispatcher.dispatch_pending() == 0  # the channel starts from now
            with psycopg.connect(libpq_url(synced_db)) as conn, conn.cursor() as cur:
                lifecycle.record(cur, alert_id, "opened")
                cur.execute(
                    "UPDATE alert SET severity = 'critical', peak_severity = 'critical' "
                    "WHERE id = %s",
                    (alert_id,),
                )
                lifecycle.record(cur, alert_id, "raised", detail={"from": "warning"})
                cur.execute(
                    "UPDATE alert SET severity = 'warning', status = 'resolved', "
                    "resolved_at = now(), resolved_by = 'engine', retracted = true, "
                    "condition_ended_at = %s WHERE id = %s",
                    (ended, alert_id),
                )
                lifecycle.record(cur, alert_id, "retracted")
            assert dispatcher.dispatch_pending() == 3
    finally:
        receiver.close()
    docs = [orjson.loads(body) for _, body in receiver.requests]
    assert [(d["kind"], d["alert"]["severity"], d["alert"]["status"]) for d in docs] == [
        ("opened", "warning", "open"),
        ("raised", "critical", "open"),
        ("retracted", "warning", "resolved"),
    ]
    alert = docs[-1]["alert"]
    assert {k: alert[k] for k in ("title", "title_en", "peak_severity", "retracted")} == {
        "title": "Độ mặn 1,5 ‰",
        "title_en": "Salinity 1.5 ‰",
        "peak_severity": "critical",
        "retracted": True,
    }
    assert datetime.fromisoformat(alert["condition_started_at"]) == started
    assert datetime.fromisoformat(alert["condition_fired_at"]) == fired
    assert datetime.fromisoformat(alert["condition_ended_at"]) == ended
    assert (alert["id"], alert["source_id"], alert["resolved_by"]) == (
        alert_id,
        "tram-w6",
        "engine",
    )
    # the alert as it is when the channel reads the event: the later columns show in all three
    assert {d["alert"]["condition_ended_at"] for d in docs} == {alert["condition_ended_at"]}


def test_an_alert_without_condition_times_has_nulls(synced_db: str, receiver: Receiver) -> None:
    with dispatching(synced_db, webhook(receiver.url), backoff_start_s=0.01) as dispatcher:
        dispatcher.dispatch_pending()
        with psycopg.connect(libpq_url(synced_db)) as conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO alert (cause_key, sector_id, severity, title) "
                "VALUES ('test:bare', 'water', 'info', 'thử') RETURNING id"
            )
            row = cur.fetchone()
            assert row is not None
            lifecycle.record(cur, int(row[0]), "opened")
        assert dispatcher.dispatch_pending() == 1
    alert = orjson.loads(receiver.requests[-1][1])["alert"]
    assert alert["title_en"] is None
    assert alert["peak_severity"] is None
    assert alert["retracted"] is False
    assert [alert[f"condition_{k}_at"] for k in ("started", "fired", "ended")] == [None] * 3


def test_notes_on_an_alert_stay_in_the_operations_room(synced_db: str, receiver: Receiver) -> None:
    """Comments, assignments and publication are history, not news: no webhook gets them."""
    with dispatching(synced_db, webhook(receiver.url)) as dispatcher:
        dispatcher.dispatch_pending()
        with engine_writer(synced_db) as writer:
            feed(writer, breach("tram-n1"))
        (alert_id,) = query(synced_db, "SELECT id FROM alert WHERE source_id = 'tram-n1'")[0]
        with psycopg.connect(libpq_url(synced_db)) as conn:
            actions.comment(conn, alert_id=alert_id, actor="key:x:ca 1", text="gọi trạm")
            actions.assign(conn, alert_id=alert_id, actor="key:x:ca 1", to="Chi cục Thủy lợi")
            actions.publish(conn, alert_id=alert_id, actor="key:x:ca 1", public=True)
            actions.acknowledge(conn, alert_id=alert_id, actor="key:x:ca 1")
        assert dispatcher.dispatch_pending() == 5
    kinds = [orjson.loads(body)["kind"] for _, body in receiver.requests]
    assert list(dict.fromkeys(kinds)) == ["opened", "acknowledged"]  # (after two 503s)
    last = orjson.loads(receiver.requests[-1][1])["alert"]
    assert (last["assigned_to"], last["public"]) == ("Chi cục Thủy lợi", True)


def test_an_event_committed_after_a_later_numbered_one_is_still_delivered(
    synced_db: str, receiver: Receiver
) -> None:
    """Transactions commit in any order: a batch still open holds an older event while an
    operator's action commits a newer one. The notifier must deliver both, in commit order."""
    with engine_writer(synced_db) as writer:
        feed(writer, breach("tram-c1"), breach("tram-c2"))
    first, second = (
        row[0]
        for row in query(
            synced_db,
            "SELECT id FROM alert WHERE source_id IN ('tram-c1', 'tram-c2') ORDER BY source_id",
        )
    )
    with dispatching(synced_db, webhook(receiver.url)) as dispatcher:
        dispatcher.dispatch_pending()
        receiver.requests.clear()
        slow = psycopg.connect(libpq_url(synced_db))
        try:
            actions.comment(slow, alert_id=first, actor="key:x:a", text="x")  # not news
            actions.acknowledge(slow, alert_id=first, actor="key:x:a")  # held, uncommitted
            with psycopg.connect(libpq_url(synced_db)) as quick:
                actions.acknowledge(quick, alert_id=second, actor="key:x:b")
            dispatcher.dispatch_pending()
            slow.commit()
        finally:
            slow.close()
        dispatcher.dispatch_pending()
    delivered = [orjson.loads(body)["alert"]["id"] for _, body in receiver.requests]
    assert list(dict.fromkeys(delivered)) == [second, first]
