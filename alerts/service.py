"""The alerts process (`ioc alerts`, also inside `ioc serve --with-workers` and `ioc demo`):
the sweeper, the notifiers and the transition log."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

import psycopg

from alerts import actions
from alerts.notify import Dispatcher, channels_for
from alerts.sweeper import Sweeper, sweep_config
from alerts.transitions import TransitionLog
from ioc.db import libpq_url, redact
from ioc.errors import DatabaseError
from ioc.settings import Settings

log = logging.getLogger("ioc.alerts")


def run_alerts(settings: Settings, *, database_url: str, stop: threading.Event) -> None:
    """Sweep, notify and log every alert transition until `stop` is set; each part on a
    thread of its own."""
    mqtt_url = settings.mqtt_url.get_secret_value() if settings.mqtt_url else None
    channels = channels_for(
        settings.alerts_webhooks,
        mqtt_url if settings.alerts_mqtt else None,
        protocol=settings.mqtt_protocol,
    )
    sweeper = Sweeper(
        database_url, sweep_config(settings), interval_s=settings.alerts_sweep_interval_s
    )
    dispatchers = [Dispatcher(database_url, channel) for channel in channels]
    # every kind of event, notes included, and no delivery rows: it is only a log
    dispatchers.append(Dispatcher(database_url, TransitionLog(), notes=True, record=False))
    threads = [threading.Thread(target=sweeper.run, args=(stop,), name="alerts-sweeper")]
    threads += [
        threading.Thread(target=d.run, args=(stop,), name=d.channel.name) for d in dispatchers
    ]
    for t in threads:
        t.start()
    log.info(
        "alerts running",
        extra={
            "sweep_interval_s": settings.alerts_sweep_interval_s,
            "channels": [d.channel.name for d in dispatchers],
        },
    )
    try:
        stop.wait()
    finally:
        stop.set()
        for t in threads:
            t.join(30)


RETIRED_NOTE: Final = "source retired: no longer reports"


@dataclass(frozen=True)
class Retired:
    """What `retire_sources` did."""

    sources: int
    alerts_resolved: int


def retire_sources(
    database_url: str, pattern: str, *, keep: Collection[str], actor: str
) -> Retired:
    """Retire the sources whose id matches the regular expression `pattern`, but those in
    `keep`: resolve their active alerts (noted, audited, notified like an operator's) and stop
    expecting readings of them, so the silence rules leave them alone (their last reading time
    is cleared and their status set offline; their readings and alerts are kept). A retired
    source that reports again is watched again from its first reading.

    `ioc demo` retires the simulated sources of an earlier run that this run does not
    simulate (another profile's, or more of them)."""
    try:
        with psycopg.connect(libpq_url(database_url)) as conn:
            rows = conn.execute(
                "SELECT id FROM source s WHERE id ~ %s AND NOT (id = ANY(%s)) "
                "AND (last_reading_at IS NOT NULL OR status <> 'offline' "
                "     OR EXISTS (SELECT 1 FROM alert a "
                "                WHERE a.source_id = s.id AND a.status <> 'resolved')) "
                "ORDER BY id FOR UPDATE",
                (pattern, list(keep)),
            ).fetchall()
            ids = [str(row[0]) for row in rows]
            if not ids:
                return Retired(0, 0)
            alerts = conn.execute(
                "SELECT id FROM alert WHERE source_id = ANY(%s) AND status <> 'resolved' "
                "ORDER BY id",
                (ids,),
            ).fetchall()
            for (alert_id,) in alerts:
                actions.resolve(conn, alert_id=int(alert_id), actor=actor, note=RETIRED_NOTE)
            conn.execute(
                "UPDATE source SET last_reading_at = NULL, status = 'offline' WHERE id = ANY(%s)",
                (ids,),
            )
    except psycopg.Error as exc:
        raise DatabaseError(f"retiring sources on {redact(database_url)}: {exc}") from None
    return Retired(len(ids), len(alerts))
