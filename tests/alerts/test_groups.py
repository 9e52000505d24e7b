"""One alert per sensor condition: a salinity sensor's warning and critical rules make one alert
whose severity rises and falls, through the real ingest writer and alert engine."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from alerts import lifecycle
from ingest.items import Item
from ingest.writer import Writer
from ioc.db import libpq_url
from tests.support.alerts import engine_writer, feed
from tests.support.ingest import make_item, query, unique

pytestmark = pytest.mark.timeout(120)

T0 = (datetime.now(UTC) - timedelta(hours=6)).replace(second=0, microsecond=0)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def salinity(source: str, samples: list[tuple[float, float]]) -> Item:
    body = [{"ts": int(at(m).timestamp() * 1000), "values": {"salinity": v}} for m, v in samples]
    return make_item(f"ioc/v1/water/{source}/telemetry", body)


def history(db_url: str, source: str) -> list[tuple[object, ...]]:
    return query(
        db_url,
        "SELECT e.kind, e.severity, e.status FROM alert_event e "
        "JOIN alert a ON a.id = e.alert_id WHERE a.source_id = %s ORDER BY e.id",
        (source,),
    )


def test_warning_then_critical_then_back_is_one_alert_with_its_severity_history(
    synced_db: str,
) -> None:
    source = unique("dai-ngai")
    query(
        synced_db,
        "INSERT INTO source (id, sector_id, name) VALUES (%s, 'water', %s)",
        (source, "Trạm Đại Ngãi"),
    )
    with engine_writer(synced_db, reopen_window_s=300) as writer:
        feed(writer, salinity(source, [(m, 2.0) for m in range(16)]))  # warning after 15 min
        feed(writer, salinity(source, [(m, 4.5) for m in range(16, 32)]))  # critical after 15
        rows = query(
            synced_db,
            "SELECT severity, peak_severity, status, title, title_en, condition_started_at, "
            "condition_fired_at FROM alert WHERE source_id = %s",
            (source,),
        )
        assert rows == [
            (
                "critical",
                "critical",
                "open",
                "Độ mặn 4,5 ‰ vượt ngưỡng nguy hiểm 4 ‰ tại Trạm Đại Ngãi",
                "Salinity 4.5 ‰ above critical 4 ‰ at Trạm Đại Ngãi",
                at(0),
                at(15),
            )
        ]
        feed(writer, salinity(source, [(32, 3.7)]))  # between 3.5 and 4: still critical
        assert query(synced_db, "SELECT severity FROM alert WHERE source_id = %s", (source,)) == [
            ("critical",)
        ]
        feed(writer, salinity(source, [(33, 3.0)]))  # below 3.5: back to warning
        feed(writer, salinity(source, [(34, 0.9)]))  # between 0.8 and 1: still warning
        feed(writer, salinity(source, [(35, 0.5)]))  # below the lowest clear level
    assert history(synced_db, source) == [
        ("opened", "warning", "open"),
        ("raised", "critical", "open"),
        ("lowered", "warning", "open"),
        ("resolved", "warning", "resolved"),
    ]
    rows = query(
        synced_db,
        "SELECT count(*), min(peak_severity), min(title), min(condition_ended_at) FROM alert "
        "WHERE source_id = %s",
        (source,),
    )
    assert rows == [
        (1, "critical", "Độ mặn 3 ‰ vượt ngưỡng cảnh báo 1 ‰ tại Trạm Đại Ngãi", at(35))
    ]


def test_a_rise_asks_for_attention_again_after_an_acknowledgement(synced_db: str) -> None:
    source = unique("ack")
    with engine_writer(synced_db) as writer:
        feed(writer, salinity(source, [(m, 2.0) for m in range(16)]))
        (alert_id,) = query(synced_db, "SELECT id FROM alert WHERE source_id = %s", (source,))[0]
        with psycopg.connect(libpq_url(synced_db)) as conn:
            lifecycle.acknowledge(conn, alert_id, actor="operator:lan")
        feed(writer, salinity(source, [(m, 5.0) for m in range(16, 32)]))
    rows = query(
        synced_db, "SELECT status, severity, acknowledged_by FROM alert WHERE id = %s", (alert_id,)
    )
    assert rows == [("open", "critical", None)]
    assert [k for k, _, _ in history(synced_db, source)] == ["opened", "acknowledged", "raised"]


def test_two_workers_on_one_sensor_keep_one_active_alert_for_its_group(synced_db: str) -> None:
    """Two engines feed alternate minutes of one sensor swinging between warning, critical
    and clear: the group never has two active alerts, and no batch fails on it."""
    source = unique("race")
    pattern = [2.0] * 10 + [5.0] * 20 + [0.5] * 10  # 40 minutes a cycle
    with engine_writer(synced_db) as w1, engine_writer(synced_db) as w2:

        def run(writer: Writer, parity: int) -> None:
            for cycle in range(4):
                base = cycle * 40
                samples = [(base + m, pattern[m]) for m in range(parity, 40, 2)]
                for i in range(0, len(samples), 5):
                    feed(writer, salinity(source, samples[i : i + 5]))

        threads = [threading.Thread(target=run, args=(w, p)) for p, w in enumerate((w1, w2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    assert query(synced_db, "SELECT count(*) FROM reading") == [(160,)]
    assert query(synced_db, "SELECT reason FROM ingest_reject") == []
    active = query(
        synced_db,
        "SELECT count(*) FROM alert WHERE source_id = %s AND status <> 'resolved'",
        (source,),
    )
    assert active[0][0] <= 1
    keys = query(synced_db, "SELECT DISTINCT cause_key FROM alert WHERE source_id = %s", (source,))
    assert keys == [(f"threshold:water:salinity:above:sector:source:{source}",)]
