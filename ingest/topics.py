"""The MQTT topic scheme `ioc/v1/{sector}/{source_id}/{kind}` (DESIGN section 4)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from ingest import reasons
from ioc.errors import DecodeError

PREFIX: Final = "ioc/v1/"
KINDS: Final = ("telemetry", "senml", "status", "event")
SHARE_GROUP: Final = "ioc-ingest"
PLAIN_SUBSCRIPTION: Final = f"{PREFIX}+/+/+"
SUBSCRIPTION: Final = f"$share/{SHARE_GROUP}/{PLAIN_SUBSCRIPTION}"
OUTBOUND_PREFIX: Final = f"{PREFIX}alerts/"

_SECTOR_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,62}")
_SOURCE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")


@dataclass(frozen=True, slots=True)
class Topic:
    """Where a message came from and what it holds."""

    sector: str
    source_id: str
    kind: str

    def __str__(self) -> str:
        return f"{PREFIX}{self.sector}/{self.source_id}/{self.kind}"


def is_outbound(topic: str) -> bool:
    """Whether the topic is one ioc publishes itself (alert events), not input."""
    return topic.startswith(OUTBOUND_PREFIX)


def parse_topic(topic: str) -> Topic:
    """Split a topic into sector, source and kind; DecodeError(bad_topic) when off-scheme."""
    if not topic.startswith(PREFIX):
        raise DecodeError(reasons.BAD_TOPIC, f"topic {topic!r} does not start with {PREFIX!r}")
    parts = topic[len(PREFIX) :].split("/")
    if len(parts) != 3:
        raise DecodeError(
            reasons.BAD_TOPIC, f"topic {topic!r} is not {PREFIX}{{sector}}/{{source_id}}/{{kind}}"
        )
    sector, source_id, kind = parts
    if kind not in KINDS:
        raise DecodeError(
            reasons.BAD_TOPIC, f"topic kind {kind!r} is not one of {', '.join(KINDS)}"
        )
    if not _SECTOR_RE.fullmatch(sector):
        raise DecodeError(reasons.BAD_TOPIC, f"sector {sector!r} is not a sector id")
    if not _SOURCE_RE.fullmatch(source_id):
        raise DecodeError(
            reasons.BAD_TOPIC,
            f"source id {source_id!r} must be 1-128 letters, digits or . _ : - "
            "and start with a letter or digit",
        )
    return Topic(sector=sector, source_id=source_id, kind=kind)
