"""The alerts process (`ioc alerts`, also inside `ioc demo`): the sweeper and the notifiers."""

from __future__ import annotations

import logging
import threading

from alerts.notify import Dispatcher, channels_for
from alerts.sweeper import Sweeper, sweep_config
from ioc.settings import Settings

log = logging.getLogger("ioc.alerts")


def run_alerts(settings: Settings, *, database_url: str, stop: threading.Event) -> None:
    """Sweep and notify until `stop` is set; each part on a thread of its own."""
    mqtt_url = settings.mqtt_url.get_secret_value() if settings.mqtt_url else None
    channels = channels_for(
        settings.alerts_webhooks,
        mqtt_url if settings.alerts_mqtt else None,
        protocol=settings.mqtt_protocol,
    )
    sweeper = Sweeper(
        database_url, sweep_config(settings), interval_s=settings.alerts_sweep_interval_s
    )
    threads = [threading.Thread(target=sweeper.run, args=(stop,), name="alerts-sweeper")]
    threads += [
        threading.Thread(
            target=Dispatcher(database_url, channel).run, args=(stop,), name=channel.name
        )
        for channel in channels
    ]
    for t in threads:
        t.start()
    log.info(
        "alerts running",
        extra={
            "sweep_interval_s": settings.alerts_sweep_interval_s,
            "channels": [c.name for c in channels],
        },
    )
    try:
        stop.wait()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
