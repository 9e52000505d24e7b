"""The public CAP feed, read without a key as an aggregator reads it: an Atom index of the active
public alerts whose links serve valid CAP 1.2 documents."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest

from tests.support.alerts import engine_writer, feed
from tests.support.api import Api, running_api
from tests.support.cap12 import NS, check
from tests.support.ingest import make_item, query, unique

pytestmark = pytest.mark.timeout(120)

ATOM = "{http://www.w3.org/2005/Atom}"
FEED = "/api/v1/cap/alerts.atom"


def open_alert(db_url: str, sector: str, metric: str, value: float) -> int:
    """An alert the engine opens on one reading (a rule without a duration)."""
    source = unique(f"{sector}-tram")
    at = int((datetime.now(UTC) - timedelta(minutes=5)).timestamp() * 1000)
    with engine_writer(db_url) as writer:
        feed(writer, make_item(f"ioc/v1/{sector}/{source}/telemetry",
                               {"ts": at, "values": {metric: value}}))  # fmt: skip
    ((alert_id,),) = query(db_url, "SELECT id FROM alert WHERE source_id = %s", (source,))
    return int(alert_id)


def make_rule_public(db_url: str, metric: str) -> None:
    query(
        db_url,
        "UPDATE alert_rule SET params = params || '{\"public\": true}' "
        "WHERE kind = 'threshold' AND metric = %s",
        (metric,),
    )


def entries(document: bytes) -> list[ET.Element]:
    root = ET.fromstring(document)
    assert root.tag == f"{ATOM}feed"
    for tag in ("id", "title", "updated", "author"):
        assert root.find(f"{ATOM}{tag}") is not None, tag
    return root.findall(f"{ATOM}entry")


def cap_link(entry: ET.Element) -> str:
    (link,) = [
        el
        for el in entry.findall(f"{ATOM}link")
        if el.get("rel") == "alternate" and el.get("type") == "application/cap+xml"
    ]
    href = link.get("href")
    assert href
    return href


async def test_the_feed_lists_active_public_alerts_and_links_their_cap(api: Api) -> None:
    make_rule_public(api.db_url, "fatal_accidents")
    by_rule = open_alert(api.db_url, "traffic", "fatal_accidents", 3)
    private = open_alert(api.db_url, "water", "rainfall_24h", 180)
    by_hand = open_alert(api.db_url, "health", "bed_occupancy_pct", 99)
    ended = open_alert(api.db_url, "traffic", "fatal_accidents", 1)
    operator = api.as_("operator")
    published = await api.http.post(
        f"/api/v1/alerts/{by_hand}/publish", json={"public": True}, headers=operator
    )
    assert published.json()["public"] is True
    assert (await api.http.post(f"/api/v1/alerts/{ended}/resolve", headers=operator)).is_success

    answer = await api.http.get(FEED)  # no key
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/atom+xml"
    listed = entries(answer.content)
    links = [cap_link(e) for e in listed]
    assert sorted(links) == sorted(
        f"http://ioc/api/v1/cap/alerts/{i}.xml" for i in (by_rule, by_hand)
    )
    for entry in listed:
        assert entry.findtext(f"{ATOM}id") == cap_link(entry)
        assert entry.findtext(f"{ATOM}title")
        assert entry.findtext(f"{ATOM}summary")
        assert (entry.findtext(f"{ATOM}updated") or "").endswith("+07:00")
    for link in links:
        document = await api.http.get(urlsplit(link).path)  # no key
        assert document.status_code == 200
        assert document.headers["content-type"] == "application/cap+xml"
        root = check(document.content)
        assert root.findtext(f"{{{NS}}}scope") == "Public"
        assert root.find(f"{{{NS}}}restriction") is None

    # a resolved public alert is still served (a Cancel); a private one is not, nor a stranger
    gone = await api.http.get(f"/api/v1/cap/alerts/{ended}.xml")
    assert gone.status_code == 200
    assert check(gone.content).findtext(f"{{{NS}}}msgType") == "Cancel"
    for hidden in (private, private + 10_000):
        refused = await api.http.get(f"/api/v1/cap/alerts/{hidden}.xml")
        assert refused.status_code == 404
        assert refused.headers["content-type"] == "application/problem+json"
    assert (await api.http.get(f"/api/v1/cap/alerts/{2**70}.xml")).status_code == 422

    # withdrawn: off the feed, and its document no longer served
    await api.http.post(
        f"/api/v1/alerts/{by_hand}/publish", json={"public": False}, headers=operator
    )
    assert [cap_link(e) for e in entries((await api.http.get(FEED)).content)] == [
        f"http://ioc/api/v1/cap/alerts/{by_rule}.xml"
    ]
    assert (await api.http.get(f"/api/v1/cap/alerts/{by_hand}.xml")).status_code == 404


async def test_an_empty_feed_is_a_valid_feed(api: Api) -> None:
    answer = await api.http.get(FEED)
    assert answer.status_code == 200
    assert entries(answer.content) == []


async def test_links_use_the_configured_public_url(synced_db: str) -> None:
    make_rule_public(synced_db, "fatal_accidents")
    alert_id = open_alert(synced_db, "traffic", "fatal_accidents", 2)
    async with running_api(synced_db, api_public_url="https://ioc.example.gov.vn/") as api:
        root = ET.fromstring((await api.http.get(FEED)).content)
    assert root.findtext(f"{ATOM}id") == "https://ioc.example.gov.vn/api/v1/cap/alerts.atom"
    (entry,) = root.findall(f"{ATOM}entry")
    assert cap_link(entry) == f"https://ioc.example.gov.vn/api/v1/cap/alerts/{alert_id}.xml"


async def test_text_xml_cannot_carry_is_left_out_not_served_broken(api: Api) -> None:
    make_rule_public(api.db_url, "fatal_accidents")
    alert_id = open_alert(api.db_url, "traffic", "fatal_accidents", 2)
    query(
        api.db_url,
        "UPDATE alert SET title = 'Tai nạn\x07 tại <ngã tư> & cầu', title_en = 'Crash\x0b' "
        "WHERE id = %s",
        (alert_id,),
    )
    (entry,) = entries((await api.http.get(FEED)).content)
    assert entry.findtext(f"{ATOM}title") == "Tai nạn tại <ngã tư> & cầu"
    assert entry.findtext(f"{ATOM}summary") == "Crash"
    root = check((await api.http.get(f"/api/v1/cap/alerts/{alert_id}.xml")).content)
    assert root.findtext(f"{{{NS}}}info/{{{NS}}}headline") == "Tai nạn tại <ngã tư> & cầu"
