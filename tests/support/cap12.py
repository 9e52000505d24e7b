"""Checks of a CAP 1.2 document, written from the OASIS CAP 1.2 standard (section 3, the
element tables, and the XML schema's sequences and enumerations in its Appendix)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Final

NS: Final = "urn:oasis:names:tc:emergency:cap:1.2"
UNBOUNDED: Final = 10**9

# (element, min, max) in the order the schema's xs:sequence requires
ALERT: Final = [
    ("identifier", 1, 1), ("sender", 1, 1), ("sent", 1, 1), ("status", 1, 1),
    ("msgType", 1, 1), ("source", 0, 1), ("scope", 1, 1), ("restriction", 0, 1),
    ("addresses", 0, 1), ("code", 0, UNBOUNDED), ("note", 0, 1), ("references", 0, 1),
    ("incidents", 0, 1), ("info", 0, UNBOUNDED),
]  # fmt: skip
INFO: Final = [
    ("language", 0, 1), ("category", 1, UNBOUNDED), ("event", 1, 1),
    ("responseType", 0, UNBOUNDED), ("urgency", 1, 1), ("severity", 1, 1),
    ("certainty", 1, 1), ("audience", 0, 1), ("eventCode", 0, UNBOUNDED),
    ("effective", 0, 1), ("onset", 0, 1), ("expires", 0, 1), ("senderName", 0, 1),
    ("headline", 0, 1), ("description", 0, 1), ("instruction", 0, 1), ("web", 0, 1),
    ("contact", 0, 1), ("parameter", 0, UNBOUNDED), ("resource", 0, UNBOUNDED),
    ("area", 0, UNBOUNDED),
]  # fmt: skip
AREA: Final = [
    ("areaDesc", 1, 1), ("polygon", 0, UNBOUNDED), ("circle", 0, UNBOUNDED),
    ("geocode", 0, UNBOUNDED), ("altitude", 0, 1), ("ceiling", 0, 1),
]  # fmt: skip
PAIR: Final = [("valueName", 1, 1), ("value", 1, 1)]
ENUMS: Final = {
    "status": {"Actual", "Exercise", "System", "Test", "Draft"},
    "msgType": {"Alert", "Update", "Cancel", "Ack", "Error"},
    "scope": {"Public", "Restricted", "Private"},
    "category": {"Geo", "Met", "Safety", "Security", "Rescue", "Fire", "Health", "Env",
                 "Transport", "Infra", "CBRNE", "Other"},
    "responseType": {"Shelter", "Evacuate", "Prepare", "Execute", "Avoid", "Monitor",
                     "Assess", "AllClear", "None"},
    "urgency": {"Immediate", "Expected", "Future", "Past", "Unknown"},
    "severity": {"Extreme", "Severe", "Moderate", "Minor", "Unknown"},
    "certainty": {"Observed", "Likely", "Possible", "Unlikely", "Unknown"},
}  # fmt: skip
# the schema's dateTime restriction: a numeric offset, no "Z", no fractions of a second
DATETIME: Final = re.compile(r"^\d\d\d\d-\d\d-\d\dT\d\d:\d\d:\d\d[-+]\d\d:\d\d$")
TOKEN: Final = re.compile(r"^[^\s,<&]+$")  # identifier and sender
NUMBER: Final = r"-?\d+(\.\d+)?"
CIRCLE: Final = re.compile(rf"^({NUMBER}),({NUMBER}) (\d+(\.\d+)?)$")
LANGUAGE: Final = re.compile(r"^[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*$")  # RFC 3066


def _local(el: ET.Element) -> str:
    ns, _, tag = el.tag[1:].partition("}")
    assert ns == NS, f"{tag} is in namespace {ns!r}, not CAP 1.2"
    return tag


def _sequence(parent: ET.Element, spec: list[tuple[str, int, int]], where: str) -> None:
    tags = [_local(c) for c in parent]
    i = 0
    for name, low, high in spec:
        n = 0
        while i < len(tags) and tags[i] == name:
            i, n = i + 1, n + 1
        assert low <= n <= high, f"{where}: {name} occurs {n} times, expected {low}..{high}"
    assert i == len(tags), f"{where}: unexpected or misplaced element {tags[i]!r}"


def _text(parent: ET.Element, tag: str) -> str | None:
    el = parent.find(f"{{{NS}}}{tag}")
    return None if el is None else (el.text or "")


def check(document: bytes) -> ET.Element:
    """Raise AssertionError naming the first violation; return the root when valid."""
    root = ET.fromstring(document)
    assert _local(root) == "alert", "the root element must be <alert>"
    _sequence(root, ALERT, "alert")
    for tag in ("identifier", "sender"):
        value = _text(root, tag)
        assert value and TOKEN.match(value), f"{tag} {value!r} has spaces, commas, < or &"
    sent = _text(root, "sent")
    assert sent and DATETIME.match(sent), f"sent {sent!r} is not a CAP dateTime"
    for tag in ("status", "msgType", "scope"):
        assert _text(root, tag) in ENUMS[tag], f"{tag} {_text(root, tag)!r} not allowed"
    scope = _text(root, "scope")
    if scope == "Restricted":
        assert _text(root, "restriction"), "scope Restricted requires a restriction"
    if scope == "Private":
        assert _text(root, "addresses"), "scope Private requires addresses"
    references = _text(root, "references")
    if references is not None:
        for ref in references.split():
            parts = ref.split(",")
            assert len(parts) == 3 and DATETIME.match(parts[2]), f"bad reference {ref!r}"
    for i, info in enumerate(root.findall(f"{{{NS}}}info")):
        where = f"info[{i}]"
        _sequence(info, INFO, where)
        language = _text(info, "language")
        assert language is None or LANGUAGE.match(language), f"{where}: language {language!r}"
        for tag in ("category", "responseType"):
            for el in info.findall(f"{{{NS}}}{tag}"):
                assert el.text in ENUMS[tag], f"{where}: {tag} {el.text!r} not allowed"
        for tag in ("urgency", "severity", "certainty"):
            assert _text(info, tag) in ENUMS[tag], f"{where}: {tag} {_text(info, tag)!r}"
        for tag in ("effective", "onset", "expires"):
            value = _text(info, tag)
            assert value is None or DATETIME.match(value), f"{where}: {tag} {value!r}"
        for tag in ("parameter", "eventCode"):
            for el in info.findall(f"{{{NS}}}{tag}"):
                _sequence(el, PAIR, f"{where}/{tag}")
        for j, area in enumerate(info.findall(f"{{{NS}}}area")):
            _sequence(area, AREA, f"{where}/area[{j}]")
            for circle in area.findall(f"{{{NS}}}circle"):
                m = CIRCLE.match(circle.text or "")
                assert m, f"circle {circle.text!r} is not 'lat,lon radius'"
                assert -90 <= float(m.group(1)) <= 90 and -180 <= float(m.group(3)) <= 180
            for el in area.findall(f"{{{NS}}}geocode"):
                _sequence(el, PAIR, f"{where}/area[{j}]/geocode")
            if _text(area, "ceiling") is not None:
                assert _text(area, "altitude") is not None, "ceiling requires altitude"
    return root
