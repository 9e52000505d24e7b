"""`ioc alerts` as a process: notifies on MQTT as alerts open, stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest

from ioc.embedded_pg import free_port
from tests.support.alerts import engine_writer, feed, subscribed
from tests.support.cli import IOC, clean_env
from tests.support.ingest import (
    end_session,
    make_item,
    publish_all,
    query,
    sync,
    unique,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


def test_ioc_alerts_publishes_new_alert_events_and_stops_on_sigterm(
    db_url: str, mqtt_url: str
) -> None:
    sync(db_url)
    env = clean_env(
        IOC_DATABASE_URL=db_url,
        IOC_MQTT_URL=mqtt_url,
        IOC_PROFILE="mekong",
        IOC_ALERTS_SWEEP_INTERVAL_S="1",
    )
    source = unique("tram-svc")
    with subscribed(mqtt_url, "ioc/v1/alerts/water/#") as got:
        proc = subprocess.Popen([IOC, "alerts"], env=env, stdout=subprocess.PIPE, text=True)
        try:
            wait_until(
                lambda: (
                    query(db_url, "SELECT count(*) FROM notify_cursor WHERE channel = 'mqtt'")
                    == [(1,)]
                ),
                what="the MQTT notifier to start",
            )
            t0 = datetime.now(UTC) - timedelta(hours=1)
            body = [
                {
                    "ts": int((t0 + timedelta(minutes=m)).timestamp() * 1000),
                    "values": {"salinity": 2},
                }
                for m in range(16)
            ]
            with engine_writer(db_url) as writer:
                feed(writer, make_item(f"ioc/v1/water/{source}/telemetry", body))
            wait_until(
                lambda: any(orjson.loads(p)["alert"]["source_id"] == source for _, p in got),
                what="the alert on MQTT",
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                out, _ = proc.communicate(timeout=60)
            finally:
                _reap(proc)
    assert proc.returncode == 0
    assert "alerts: sweeping every 1 s" in out


def test_ioc_serve_with_workers_ingests_and_alerts_in_one_process(
    db_url: str, mqtt_url: str
) -> None:
    port = free_port()
    client_id = unique("serve-ingest")
    env = clean_env(
        IOC_DATABASE_URL=db_url,
        IOC_MQTT_URL=mqtt_url,
        IOC_PROFILE="mekong",
        IOC_HTTP_PORT=str(port),
        IOC_INGEST_CLIENT_ID=client_id,
        IOC_INGEST_SHARE_GROUP=unique("serve-group"),
    )
    source = unique("tram-serve")
    proc = subprocess.Popen([IOC, "serve", "--with-workers"], env=env, stdout=subprocess.DEVNULL)
    try:
        wait_until(
            lambda: _healthy(port) and query(db_url, "SELECT count(*) FROM notify_cursor")[0][0],
            timeout_s=60,
            what="the API and the alert notifier",
        )
        t0 = datetime.now(UTC) - timedelta(hours=1)
        body = [
            {"ts": int((t0 + timedelta(minutes=m)).timestamp() * 1000), "values": {"salinity": 5}}
            for m in range(16)
        ]
        last_publish = [0.0]

        def stored() -> bool:
            # publish again now and then: the worker may not have subscribed yet at first,
            # and readings are idempotent
            if time.monotonic() - last_publish[0] > 1.0:
                topic = f"ioc/v1/water/{source}/telemetry"
                publish_all(mqtt_url, [(topic, orjson.dumps(body))])
                last_publish[0] = time.monotonic()
            rows = query(
                db_url, "SELECT count(*) FROM reading_named WHERE source_id = %s", (source,)
            )
            return rows == [(16,)]

        wait_until(stored, timeout_s=60, what="the worker inside serve to store readings")
        wait_until(
            lambda: (
                query(db_url, "SELECT severity FROM alert WHERE source_id = %s", (source,))
                == [("critical",)]
            ),  # one alert: the warning (>= 1) and critical (>= 4) salinity rules are a group
            what="the alerts",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            _reap(proc)
            end_session(mqtt_url, f"{client_id}-0")
    assert proc.returncode == 0


def _reap(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """Kill a process that did not stop on SIGTERM, so no test inherits it."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
