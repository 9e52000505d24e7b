"""`ioc alerts` as a process: notifies on MQTT as alerts open, stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from tests.support.alerts import engine_writer, feed, subscribed
from tests.support.cli import IOC, clean_env
from tests.support.ingest import make_item, query, sync, unique, wait_until

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
            out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "alerts: sweeping every 1 s" in out
