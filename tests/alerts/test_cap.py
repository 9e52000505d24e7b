"""CAP 1.2 output, checked against the standard's element rules."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest

from alerts import cap, lifecycle
from ioc.catalogue import load_profile
from ioc.db import libpq_url
from tests.support.alerts import engine_writer, feed
from tests.support.cap12 import NS, check
from tests.support.ingest import make_item, query, sync

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
OPENED_AT = datetime(2026, 3, 10, 1, 30, 15, 123456, tzinfo=UTC)
SALINITY = cap.CapAlert(
    alert_id=42,
    event_id=100,
    event_kind="opened",
    event_at=OPENED_AT,
    first_event_id=100,
    first_at=OPENED_AT,
    severity="critical",
    status="open",
    sector_id="water",
    sector_vi="Tài nguyên nước",
    sector_en="Water resources",
    title="salinity 4.6 >= 4 at tram-cai-lon",
    rule_kind="threshold",
    metric="salinity",
    metric_vi="Độ mặn",
    metric_en="Salinity",
    unit="‰",
    value=4.6,
    threshold=4.0,
    operator=">=",
    source_id="tram-cai-lon",
    latitude=9.6,
    longitude=105.45,
    district="vinh-thuan",
    district_vi="Huyện Vĩnh Thuận",
    district_en="Vinh Thuan district",
)


def render(a: cap.CapAlert) -> bytes:
    return cap.render(a, sender="ioc.mekong.example", sender_name="IOC Mekong", zone=HCM)


def text(root: object, path: str) -> list[str]:
    import xml.etree.ElementTree as ET

    assert isinstance(root, ET.Element)
    return [el.text or "" for el in root.findall(path.replace("c:", f"{{{NS}}}"))]


def test_an_opened_alert_is_a_valid_cap_alert_in_vietnamese_and_english() -> None:
    root = check(render(SALINITY))
    assert text(root, "c:msgType") == ["Alert"]
    assert text(root, "c:sent") == ["2026-03-10T08:30:15+07:00"]
    assert text(root, "c:identifier") == ["ioc.mekong.example.alert.42.100"]
    assert text(root, "c:info/c:language") == ["vi-VN", "en-US"]
    assert text(root, "c:info/c:category") == ["Env", "Env"]
    assert text(root, "c:info/c:severity") == ["Severe", "Severe"]
    assert text(root, "c:info/c:urgency") == ["Immediate", "Immediate"]
    assert text(root, "c:info/c:certainty") == ["Observed", "Observed"]
    assert text(root, "c:info/c:event") == ["Tài nguyên nước: Độ mặn", "Water resources: Salinity"]
    vi, en = text(root, "c:info/c:description")
    assert vi == "Độ mặn tại tram-cai-lon: 4.6 ‰ (>= 4 ‰)."
    assert en == "Salinity at tram-cai-lon: 4.6 ‰ (>= 4 ‰)."
    assert text(root, "c:info/c:area/c:areaDesc") == ["Huyện Vĩnh Thuận", "Vinh Thuan district"]
    assert text(root, "c:info/c:area/c:circle") == ["9.600000,105.450000 0.5"] * 2
    assert text(root, "c:references") == []


def test_later_events_update_or_cancel_the_first_message() -> None:
    later = OPENED_AT + timedelta(minutes=20)
    escalated = replace(SALINITY, event_id=101, event_kind="escalated", event_at=later)
    root = check(render(escalated))
    assert text(root, "c:msgType") == ["Update"]
    assert text(root, "c:references") == [
        "ioc.mekong.example,ioc.mekong.example.alert.42.100,2026-03-10T08:30:15+07:00"
    ]
    resolved = replace(
        SALINITY, event_id=102, event_kind="resolved", event_at=later, status="resolved"
    )
    root = check(render(resolved))
    assert text(root, "c:msgType") == ["Cancel"]
    assert text(root, "c:info/c:urgency") == ["Past", "Past"]
    assert text(root, "c:info/c:responseType") == ["AllClear", "AllClear"]


def test_an_alert_without_location_or_district_is_still_valid() -> None:
    bare = replace(
        SALINITY, latitude=None, longitude=None, district=None, district_vi=None, district_en=None
    )
    root = check(render(bare))
    assert text(root, "c:info/c:area/c:areaDesc") == ["tram-cai-lon", "tram-cai-lon"]
    assert text(root, "c:info/c:area/c:circle") == []


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda d: d.replace(b"+07:00</sent>", b"Z</sent>"), "not a CAP dateTime"),
        (lambda d: d.replace(b"<status>Actual", b"<status>Real"), "status"),
        (lambda d: re.sub(rb"<restriction>.*?</restriction>", b"", d), "requires a restriction"),
        (
            lambda d: d.replace(b"<urgency>", b"<severity>X</severity><urgency>", 1),
            "urgency occurs 0 times",
        ),
    ],
)
def test_the_checker_catches_what_the_standard_forbids(change: object, complaint: str) -> None:
    assert callable(change)
    with pytest.raises(AssertionError, match=complaint):
        check(change(render(SALINITY)))


def test_a_stored_alert_renders_from_the_database(db_url: str) -> None:
    sync(db_url)
    with psycopg.connect(libpq_url(db_url)) as conn:
        conn.execute(
            "INSERT INTO source (id, sector_id, latitude, longitude, district) "
            "VALUES ('tram-x', 'water', 9.3, 105.7, 'vinh-thuan')"
        )
    t0 = datetime.now(UTC) - timedelta(hours=1)
    body = [
        {"ts": int((t0 + timedelta(minutes=m)).timestamp() * 1000), "values": {"salinity": 1.4}}
        for m in range(16)
    ]
    with engine_writer(db_url) as writer:
        feed(writer, make_item("ioc/v1/water/tram-x/telemetry", body))
    ((alert_id,),) = query(db_url, "SELECT id FROM alert")
    assert isinstance(alert_id, int)
    with psycopg.connect(libpq_url(db_url)) as conn:
        lifecycle.resolve(conn, alert_id, actor="operator:hoa")
        conn.commit()
        events = [int(str(r[0])) for r in query(db_url, "SELECT id FROM alert_event ORDER BY id")]
        profile = load_profile("mekong")
        messages = [cap.load(conn, e, profile.districts) for e in events]
    zone = ZoneInfo(profile.timezone)
    docs = []
    for m in messages:
        assert m is not None
        docs.append(check(cap.render(m, sender="ioc.test", sender_name="IOC", zone=zone)))
    assert [text(d, "c:msgType")[0] for d in docs] == ["Alert", "Cancel"]
    assert text(docs[0], "c:info/c:severity") == ["Moderate", "Moderate"]
    assert text(docs[0], "c:info/c:area/c:circle") == ["9.300000,105.700000 0.5"] * 2
    assert (
        "Độ mặn" in text(docs[0], "c:info/c:event")[0]
        or "salinity" in text(docs[0], "c:info/c:event")[0]
    )


def test_severity_changes_update_and_a_retraction_cancels_the_first_message() -> None:
    later = OPENED_AT + timedelta(minutes=5)
    english = replace(SALINITY, title_en="Salinity 4.6 ‰ above critical 4 ‰ at tram-cai-lon")
    first = "ioc.mekong.example,ioc.mekong.example.alert.42.100,2026-03-10T08:30:15+07:00"

    raised = replace(english, event_id=101, event_kind="raised", event_at=later)
    root = check(render(raised))
    assert text(root, "c:msgType") == ["Update"]
    assert text(root, "c:references") == [first]
    assert text(root, "c:info/c:severity") == ["Severe", "Severe"]
    assert text(root, "c:info/c:urgency") == ["Immediate", "Immediate"]
    assert text(root, "c:info/c:responseType") == ["Monitor", "Monitor"]
    vi, en = text(root, "c:info/c:description")
    assert vi == "Mức độ tăng lên nguy hiểm. Độ mặn tại tram-cai-lon: 4.6 ‰ (>= 4 ‰)."
    assert en == "Severity raised to critical. Salinity at tram-cai-lon: 4.6 ‰ (>= 4 ‰)."
    assert text(root, "c:info/c:headline") == [SALINITY.title, english.title_en]

    lowered = replace(
        english,
        event_id=102,
        event_kind="lowered",
        event_at=later,
        severity="warning",
        value=2.5,
        threshold=1.0,
    )
    root = check(render(lowered))
    assert text(root, "c:msgType") == ["Update"]
    assert text(root, "c:references") == [first]
    assert text(root, "c:info/c:severity") == ["Moderate", "Moderate"]
    assert text(root, "c:info/c:urgency") == ["Expected", "Expected"]
    vi, en = text(root, "c:info/c:description")
    assert vi == "Mức độ giảm xuống cảnh báo. Độ mặn tại tram-cai-lon: 2.5 ‰ (>= 1 ‰)."
    assert en == "Severity lowered to warning. Salinity at tram-cai-lon: 2.5 ‰ (>= 1 ‰)."

    retracted = replace(
        english, event_id=103, event_kind="retracted", event_at=later, status="resolved"
    )
    root = check(render(retracted))
    assert text(root, "c:msgType") == ["Cancel"]
    assert text(root, "c:references") == [first]
    assert text(root, "c:info/c:urgency") == ["Past", "Past"]
    assert text(root, "c:info/c:responseType") == ["AllClear", "AllClear"]
    vi, en = text(root, "c:info/c:description")
    assert vi.startswith("Rút lại: số liệu đến muộn cho thấy điều kiện không kéo dài đủ lâu. ")
    assert en.startswith("Withdrawn: late readings show the condition did not last long enough. ")


def test_without_an_english_title_the_english_headline_is_the_title() -> None:
    root = check(render(SALINITY))
    assert text(root, "c:info/c:headline") == [SALINITY.title, SALINITY.title]


def test_stored_severity_changes_and_a_retraction_render_from_the_database(
    synced_db: str,
) -> None:
    """Each message carries the severity recorded with its event, the reading and limit it
    was about, and references the opening message; the alert's titles in both languages."""
    with psycopg.connect(libpq_url(synced_db)) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO source (id, sector_id, latitude, longitude, district) "
            "VALUES ('tram-y', 'water', 9.3, 105.7, 'vinh-thuan')"
        )
        cur.execute(
            "SELECT severity, id FROM alert_rule WHERE kind = 'threshold' AND metric = 'salinity'"
        )
        rules = {str(s): int(i) for s, i in cur.fetchall()}
        cur.execute(
            "INSERT INTO alert (cause_key, rule_id, rule_kind, sector_id, source_id, metric, "
            "severity, peak_severity, title, title_en, last_value, last_seen_at) VALUES "
            "('test:tram-y', %s, 'threshold', 'water', 'tram-y', 'salinity', 'warning', "
            "'warning', 'Độ mặn 1,4 ‰ vượt ngưỡng cảnh báo 1 ‰ tại tram-y', "
            "'Salinity 1.4 ‰ above warning 1 ‰ at tram-y', 1.4, now()) RETURNING id",
            (rules["warning"],),
        )
        row = cur.fetchone()
        assert row is not None
        alert_id = int(row[0])
        reading = {"operator": ">=", "at": datetime.now(UTC).isoformat()}
        events = [
            lifecycle.record(cur, alert_id, "opened", detail={**reading, "value": 1.4,
                                                              "threshold": 1.0}),
        ]  # fmt: skip
        cur.execute(
            "UPDATE alert SET severity = 'critical', peak_severity = 'critical', rule_id = %s, "
            "title = 'Độ mặn 4,6 ‰ vượt ngưỡng nguy hiểm 4 ‰ tại tram-y', "
            "title_en = 'Salinity 4.6 ‰ above critical 4 ‰ at tram-y', last_value = 4.6 "
            "WHERE id = %s",
            (rules["critical"], alert_id),
        )
        events.append(
            lifecycle.record(
                cur, alert_id, "raised", detail={**reading, "value": 4.6, "threshold": 4.0}
            )
        )
        cur.execute(
            "UPDATE alert SET severity = 'warning', rule_id = %s, "
            "title = 'Độ mặn 2,5 ‰ vượt ngưỡng cảnh báo 1 ‰ tại tram-y', "
            "title_en = 'Salinity 2.5 ‰ above warning 1 ‰ at tram-y', last_value = 2.5 "
            "WHERE id = %s",
            (rules["warning"], alert_id),
        )
        events.append(
            lifecycle.record(
                cur, alert_id, "lowered", detail={**reading, "value": 2.5, "threshold": 1.0}
            )
        )
        cur.execute(
            "UPDATE alert SET status = 'resolved', resolved_at = now(), resolved_by = 'engine', "
            "retracted = true WHERE id = %s",
            (alert_id,),
        )
        events.append(lifecycle.record(cur, alert_id, "retracted"))
        conn.commit()
        profile = load_profile("mekong")
        messages = [cap.load(conn, e, profile.districts) for e in events]
    zone = ZoneInfo(profile.timezone)
    docs = []
    for m in messages:
        assert m is not None
        docs.append(check(cap.render(m, sender="ioc.test", sender_name="IOC", zone=zone)))
    assert [text(d, "c:msgType") for d in docs] == [["Alert"], ["Update"], ["Update"], ["Cancel"]]
    assert [text(d, "c:info/c:severity") for d in docs] == [
        ["Moderate", "Moderate"],
        ["Severe", "Severe"],
        ["Moderate", "Moderate"],
        ["Moderate", "Moderate"],
    ]
    (opening,) = text(docs[0], "c:identifier")
    assert opening == f"ioc.test.alert.{alert_id}.{events[0]}"
    for d in docs[1:]:
        (ref,) = text(d, "c:references")
        assert ref.startswith(f"ioc.test,{opening},")
    assert text(docs[0], "c:info/c:language") == ["vi-VN", "en-US"]
    descriptions = [text(d, "c:info/c:description") for d in docs]
    assert descriptions[1] == [
        "Mức độ tăng lên nguy hiểm. Độ mặn tại tram-y: 4.6 ‰ (>= 4 ‰).",
        "Severity raised to critical. Salinity at tram-y: 4.6 ‰ (>= 4 ‰).",
    ]
    assert descriptions[2] == [
        "Mức độ giảm xuống cảnh báo. Độ mặn tại tram-y: 2.5 ‰ (>= 1 ‰).",
        "Severity lowered to warning. Salinity at tram-y: 2.5 ‰ (>= 1 ‰).",
    ]
    vi, en = descriptions[3]
    assert vi.startswith("Rút lại: số liệu đến muộn cho thấy điều kiện không kéo dài đủ lâu.")
    assert en.startswith("Withdrawn: late readings show the condition did not last long enough.")
    assert text(docs[3], "c:info/c:responseType") == ["AllClear", "AllClear"]
    assert text(docs[3], "c:info/c:urgency") == ["Past", "Past"]
    # the opening message describes its own reading, though the alert moved on since
    assert descriptions[0][1] == "Salinity at tram-y: 1.4 ‰ (>= 1 ‰)."
    assert text(docs[3], "c:info/c:headline") == [
        "Độ mặn 2,5 ‰ vượt ngưỡng cảnh báo 1 ‰ tại tram-y",
        "Salinity 2.5 ‰ above warning 1 ‰ at tram-y",
    ]
