"""Render an alert as an OASIS Common Alerting Protocol 1.2 message (XML).

One message per alert event: the first (opened) is an `Alert`; later events are `Update`s
(a severity raised or lowered carries the severity at that event), and resolution or a
retraction is a `Cancel`, each referencing the first message. Two info blocks carry the
same alert in Vietnamese and in English. The area is the source's location (a small circle)
and its district.
"""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row

from alerts.lifecycle import NOTE_KINDS
from alerts.titles import SEVERITY_VI
from ioc.vocabulary import OPERATORS, operator_symbol

CAP_NS: Final = "urn:oasis:names:tc:emergency:cap:1.2"

# CAP categories by sector (CAP 1.2 section 3.2.2, `category`)
CATEGORY: Final[Mapping[str, str]] = MappingProxyType(
    {
        "water": "Env",
        "flood": "Met",
        "environment": "Env",
        "traffic": "Transport",
        "health": "Health",
        "security": "Security",
        "infosec": "Security",
        "public_services": "Infra",
        "land_construction": "Infra",
        "education": "Other",
        "citizen_reports": "Other",
        "hotline": "Other",
        "socio_economic": "Other",
        "tourism": "Other",
    }
)
SEVERITY: Final = MappingProxyType({"critical": "Severe", "warning": "Moderate", "info": "Minor"})
URGENCY: Final = MappingProxyType(
    {"critical": "Immediate", "warning": "Expected", "info": "Future"}
)
MSG_TYPE: Final = MappingProxyType(
    {
        "opened": "Alert",
        "updated": "Update",
        "escalated": "Update",
        "acknowledged": "Update",
        "reopened": "Update",
        "raised": "Update",
        "lowered": "Update",
        "resolved": "Cancel",
        "retracted": "Cancel",
    }
)
ENDED: Final = frozenset({"resolved", "retracted"})  # nothing left to do: AllClear, Past
POINT_RADIUS_KM: Final = 0.5  # a sensor or camera: a small circle around it


@dataclass(frozen=True)
class CapAlert:
    """Everything one CAP message says, as plain values."""

    alert_id: int
    event_id: int  # the alert event this message announces
    event_kind: str
    event_at: datetime
    first_event_id: int  # the `opened` event: the message later ones reference
    first_at: datetime
    severity: str  # at this event
    status: str  # at this event
    sector_id: str
    sector_vi: str
    sector_en: str
    title: str  # Vietnamese
    title_en: str | None = None
    rule_kind: str | None = None
    metric: str | None = None
    metric_vi: str | None = None
    metric_en: str | None = None
    unit: str | None = None
    value: float | None = None  # the reading this event is about, else the alert's latest
    threshold: float | None = None
    operator: str | None = None
    source_id: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    district: str | None = None
    district_vi: str | None = None
    district_en: str | None = None
    agency_description: str | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)


def cap_time(at: datetime, zone: ZoneInfo) -> str:
    """CAP dateTime: local time with a numeric offset, whole seconds, never `Z`."""
    local = at.astimezone(zone).replace(microsecond=0)
    text = local.isoformat()
    return text[:-6] + "+00:00" if text.endswith("Z") else text


def _token(text: str) -> str:
    """CAP identifiers and senders may not hold spaces, commas, `<` or `&`."""
    return "".join("-" if c in " ,<&" else c for c in text)


def identifier(sender: str, alert_id: int, event_id: int) -> str:
    """The identifier of the message announcing one alert event."""
    return _token(f"{sender}.alert.{alert_id}.{event_id}")


def _event_names(a: CapAlert) -> tuple[str, str]:
    if a.rule_kind == "silence":
        return "mất tín hiệu nguồn dữ liệu", "data source silent"
    if a.metric:
        return a.metric_vi or a.metric, a.metric_en or a.metric
    return a.title, a.title


def _descriptions(a: CapAlert) -> tuple[str, str]:
    where_vi = f" tại {a.source_id}" if a.source_id else ""
    where_en = f" at {a.source_id}" if a.source_id else ""
    if a.rule_kind == "threshold" and a.value is not None:
        limit = f" ({a.operator} {a.threshold:g} {a.unit or ''})".rstrip() if a.threshold else ""
        vi = f"{a.metric_vi or a.metric}{where_vi}: {a.value:g} {a.unit or ''}{limit}."
        en = f"{a.metric_en or a.metric}{where_en}: {a.value:g} {a.unit or ''}{limit}."
    elif a.rule_kind == "silence":
        vi = f"Nguồn dữ liệu{where_vi} không gửi số liệu quá thời gian cho phép."
        en = f"Source{where_en} has sent no readings for longer than allowed."
    else:
        vi = en = a.agency_description or a.title
    if a.event_kind == "resolved":
        vi, en = f"Đã kết thúc. {vi}", f"Ended. {en}"
    elif a.event_kind == "retracted":
        vi = f"Rút lại: số liệu đến muộn cho thấy điều kiện không kéo dài đủ lâu. {vi}"
        en = f"Withdrawn: late readings show the condition did not last long enough. {en}"
    elif a.event_kind == "escalated":
        vi, en = f"Chưa được xử lý, nâng mức cảnh báo. {vi}", f"Not yet handled, escalated. {en}"
    elif a.event_kind == "raised":
        vi = f"Mức độ tăng lên {SEVERITY_VI.get(a.severity, a.severity)}. {vi}"
        en = f"Severity raised to {a.severity}. {en}"
    elif a.event_kind == "lowered":
        vi = f"Mức độ giảm xuống {SEVERITY_VI.get(a.severity, a.severity)}. {vi}"
        en = f"Severity lowered to {a.severity}. {en}"
    return " ".join(vi.split()), " ".join(en.split())


def render(
    a: CapAlert,
    *,
    sender: str,
    sender_name: str,
    zone: ZoneInfo,
    scope: str = "Restricted",
    restriction: str = "IOC operators and responding agencies",
) -> bytes:
    """The CAP 1.2 XML document (UTF-8) announcing one alert event."""
    ET.register_namespace("", CAP_NS)

    def sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
        el = ET.SubElement(parent, f"{{{CAP_NS}}}{tag}")
        if text is not None:
            el.text = text
        return el

    sender = _token(sender)
    root = ET.Element(f"{{{CAP_NS}}}alert")
    sub(root, "identifier", identifier(sender, a.alert_id, a.event_id))
    sub(root, "sender", sender)
    sub(root, "sent", cap_time(a.event_at, zone))
    sub(root, "status", "Actual")
    msg_type = MSG_TYPE.get(a.event_kind, "Update")
    if a.event_id == a.first_event_id:
        msg_type = "Alert"
    sub(root, "msgType", msg_type)
    sub(root, "scope", scope)
    if scope == "Restricted":
        sub(root, "restriction", restriction)
    if msg_type != "Alert":
        first = identifier(sender, a.alert_id, a.first_event_id)
        sub(root, "references", f"{sender},{first},{cap_time(a.first_at, zone)}")
    sub(root, "incidents", f"alert-{a.alert_id}")
    vi, en = _descriptions(a)
    event_vi, event_en = _event_names(a)
    ended = a.event_kind in ENDED
    for language, sector_name, event, headline, description, district_name in (
        ("vi-VN", a.sector_vi, event_vi, a.title, vi, a.district_vi),
        ("en-US", a.sector_en, event_en, a.title_en or a.title, en, a.district_en),
    ):
        info = sub(root, "info")
        sub(info, "language", language)
        sub(info, "category", CATEGORY.get(a.sector_id, "Other"))
        sub(info, "event", f"{sector_name}: {event}")
        sub(info, "responseType", "AllClear" if ended else "Monitor")
        sub(info, "urgency", "Past" if ended else URGENCY[a.severity])
        sub(info, "severity", SEVERITY[a.severity])
        sub(info, "certainty", "Observed")
        sub(info, "senderName", sender_name)
        sub(info, "headline", headline[:160])
        sub(info, "description", description)
        params = {
            "ioc:alert_id": str(a.alert_id),
            "ioc:event": a.event_kind,
            "ioc:status": a.status,
            **({"ioc:metric": a.metric} if a.metric else {}),
            **({"ioc:value": f"{a.value:g}"} if a.value is not None else {}),
            **dict(a.parameters),
        }
        for name, value in params.items():
            p = sub(info, "parameter")
            sub(p, "valueName", name)
            sub(p, "value", value)
        area = sub(info, "area")
        place = district_name or a.source_id or sector_name
        sub(area, "areaDesc", place)
        if a.latitude is not None and a.longitude is not None:
            sub(area, "circle", f"{a.latitude:.6f},{a.longitude:.6f} {POINT_RADIUS_KM:g}")
        if a.district:
            g = sub(area, "geocode")
            sub(g, "valueName", "ioc:district")
            sub(g, "value", a.district)
    ET.indent(root)
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document


_LOAD: Final = """
SELECT a.id AS alert_id, e.id AS event_id, e.kind, e.at, f.id AS first_id, f.at AS first_at,
       e.severity, e.status, a.sector_id, sc.name_vi AS sector_vi, sc.name_en AS sector_en,
       a.title, a.title_en, a.rule_kind, a.metric, a.last_value, r.threshold, r.direction,
       r.inclusive, a.source_id, s.latitude, s.longitude, s.district,
       ev.description AS agency_description, sc.metrics, e.detail
FROM alert_event e
JOIN alert a ON a.id = e.alert_id
JOIN sector sc ON sc.id = a.sector_id
JOIN LATERAL (SELECT id, at FROM alert_event WHERE alert_id = a.id ORDER BY id LIMIT 1) f ON true
LEFT JOIN alert_rule r ON r.id = a.rule_id
LEFT JOIN source s ON s.id = a.source_id
LEFT JOIN event ev ON ev.id = a.event_id
WHERE e.id = %s
"""


_READING_EVENTS: Final = frozenset({"opened", "updated", "reopened", "raised", "lowered"})


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def load(
    conn: psycopg.Connection[Any], alert_event_id: int, districts: Sequence[Any] = ()
) -> CapAlert | None:
    """The CAP view of one alert event (None if there is no such event).

    `districts` are the profile's districts (objects with id, name_vi, name_en).
    """
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_LOAD, (alert_event_id,)).fetchone()
    if row is None:
        return None
    kind, metric, district = row["kind"], row["metric"], row["district"]
    value, threshold = row["last_value"], row["threshold"]
    m: dict[str, Any] = next((x for x in row["metrics"] or () if x.get("id") == metric), {})
    op = None
    if row["direction"] is not None:
        op = operator_symbol(row["direction"], bool(row["inclusive"]))
    # an event about a breaching reading carries that reading and the limit it crossed (a
    # severity change moves the alert to another rule of its group); others show the latest
    detail = row["detail"] if isinstance(row["detail"], dict) and kind in _READING_EVENTS else {}
    if _is_number(detail.get("value")):
        value = float(detail["value"])
        if _is_number(detail.get("threshold")) and detail.get("operator") in OPERATORS:
            threshold, op = float(detail["threshold"]), str(detail["operator"])
    names = {d.id: d for d in districts}
    d = names.get(district)
    return CapAlert(
        alert_id=row["alert_id"],
        event_id=row["event_id"],
        event_kind=kind,
        event_at=row["at"],
        first_event_id=row["first_id"],
        first_at=row["first_at"],
        severity=row["severity"],
        status=row["status"],
        sector_id=row["sector_id"],
        sector_vi=row["sector_vi"],
        sector_en=row["sector_en"],
        title=row["title"],
        title_en=row["title_en"],
        rule_kind=row["rule_kind"],
        metric=metric,
        metric_vi=m.get("name_vi"),
        metric_en=m.get("name_en"),
        unit=m.get("unit"),
        value=value,
        threshold=threshold,
        operator=op,
        source_id=row["source_id"],
        latitude=row["latitude"],
        longitude=row["longitude"],
        district=district,
        district_vi=d.name_vi if d else None,
        district_en=d.name_en if d else None,
        agency_description=row["agency_description"],
    )


def load_latest(
    conn: psycopg.Connection[Any], alert_id: int, districts: Sequence[Any] = ()
) -> CapAlert | None:
    """The CAP view of an alert's latest state: its latest event that changed the alert (a
    comment, an assignment or the public flag is not news); None if there is no such alert."""
    row = conn.execute(
        "SELECT id FROM alert_event WHERE alert_id = %s AND kind <> ALL(%s) "
        "ORDER BY id DESC LIMIT 1",
        (alert_id, sorted(NOTE_KINDS)),
    ).fetchone()
    return None if row is None else load(conn, int(row[0]), districts)


# characters XML 1.0 cannot carry at all (control characters, U+FFFE, U+FFFF)
_NOT_XML: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """Text without the characters XML 1.0 cannot carry (agency reports may hold some)."""
    return _NOT_XML.sub("", text)


def xml_safe(a: CapAlert) -> CapAlert:
    """The same alert with only text XML can carry, ready for `render`."""
    cleaned: dict[str, Any] = {
        f.name: xml_text(value)
        for f in dataclasses.fields(a)
        if isinstance(value := getattr(a, f.name), str)
    }
    cleaned["parameters"] = {xml_text(k): xml_text(v) for k, v in a.parameters.items()}
    return dataclasses.replace(a, **cleaned)


ATOM_NS: Final = "http://www.w3.org/2005/Atom"
CAP_MEDIA_TYPE: Final = "application/cap+xml"
ATOM_MEDIA_TYPE: Final = "application/atom+xml"


@dataclass(frozen=True)
class AtomEntry:
    """One alert in the public feed; `link` (the URL of its CAP document) is also its id."""

    link: str
    title: str
    summary: str
    published: datetime
    updated: datetime
    severity: str
    sector_id: str


def render_atom(
    entries: Sequence[AtomEntry],
    *,
    feed_id: str,
    title: str,
    author: str,
    updated: datetime,
    zone: ZoneInfo,
) -> bytes:
    """An Atom 1.0 feed (RFC 4287) of alerts, each entry linking its CAP 1.2 document, as
    public-alert aggregators read them; `feed_id` is the feed's own URL."""

    def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        el = ET.SubElement(parent, tag, {k: xml_text(v) for k, v in attrs.items()})
        if text is not None:
            el.text = xml_text(text)
        return el

    # the namespace as a plain attribute of the root, not registered process-wide as a prefix
    root = ET.Element("feed", xmlns=ATOM_NS)
    sub(root, "id", feed_id)
    sub(root, "title", title)
    sub(root, "updated", cap_time(updated, zone))
    sub(sub(root, "author"), "name", author)
    sub(root, "link", rel="self", type=ATOM_MEDIA_TYPE, href=feed_id)
    for e in entries:
        entry = sub(root, "entry")
        sub(entry, "id", e.link)
        sub(entry, "title", e.title)
        sub(entry, "published", cap_time(e.published, zone))
        sub(entry, "updated", cap_time(e.updated, zone))
        sub(entry, "summary", e.summary)
        sub(entry, "category", term=e.severity, label=SEVERITY.get(e.severity, e.severity))
        sub(entry, "category", term=e.sector_id, scheme="urn:ioc:sector")
        sub(entry, "link", rel="alternate", type=CAP_MEDIA_TYPE, href=e.link)
    ET.indent(root)
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document
