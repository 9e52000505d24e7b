"""What the writer takes: one message's readings, rejects, status or event, and its ack."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from ingest import reasons
from ingest.decoders import Problem, decode
from ingest.events import EventIn
from ingest.topics import parse_topic
from ingest.validation import Checked, Rules, check_samples
from ioc.errors import DecodeError

_MAX_DETAIL_CHARS = 2000


@dataclass(slots=True)
class RejectRow:
    """A row of `ingest_reject`: the whole raw payload and why (part of) it was refused."""

    reason: str
    detail: str
    topic: str | None
    payload: bytes
    source_id: str | None
    received_at: datetime


@dataclass(slots=True)
class AuditNote:
    """An audit row to write with an item: who did it and what."""

    actor: str
    action: str


@dataclass(slots=True)
class Item:
    """One message on its way to the database; `done` runs once it is committed."""

    topic: str | None
    payload: bytes
    received_at: datetime
    sector: str | None = None
    source_id: str | None = None
    readings: list[Checked] = field(default_factory=list)
    rejects: list[RejectRow] = field(default_factory=list)
    reject_counts: Counter[str] = field(default_factory=Counter)
    status: str | None = None
    event: EventIn | None = None
    done: Callable[[Item], None] | None = None
    event_id: int | None = None  # set by the writer when the event was stored
    duplicate_of: int | None = None
    """Set by the writer when the event was stored before (by an earlier copy): its id."""
    audit: AuditNote | None = None
    """Who sent it (HTTP ingest): the writer adds this audit row in the batch transaction."""
    redelivered: bool = False
    """The broker marked it as possibly delivered before (MQTT DUP flag)."""
    connection_lost: Callable[[], bool] | None = None
    """True once the connection that delivered it dropped (its copy will come again)."""
    stamped_at: datetime = field(init=False)
    """The receipt time its receipt-timed readings count from (a redelivery's is restamped)."""

    def __post_init__(self) -> None:
        self.stamped_at = self.received_at

    @property
    def rows(self) -> int:
        """Weight of the item in the queue and in a batch."""
        return max(1, len(self.readings))

    @property
    def size(self) -> int:
        """Bytes the item holds, roughly (payload plus per-reading overhead)."""
        return len(self.payload) + 64 * len(self.readings)

    def reject_all(self, reason: str, detail: str) -> None:
        """Turn the whole item into one reject (its readings, event and status dropped)."""
        counted = max(1, len(self.readings)) if self.readings else 1
        self.readings = []
        self.status = None
        self.event = None
        self.rejects = [
            RejectRow(reason, detail, self.topic, self.payload, self.source_id, self.received_at)
        ]
        self.reject_counts = Counter({reason: counted})


def _group(problems: list[Problem], item: Item) -> None:
    by_reason: dict[str, list[str]] = {}
    for p in problems:
        by_reason.setdefault(p.reason, []).append(p.detail)
        item.reject_counts[p.reason] += 1
    for reason, details in by_reason.items():
        detail = "; ".join(details)
        if len(detail) > _MAX_DETAIL_CHARS:
            detail = detail[: _MAX_DETAIL_CHARS - 1] + "…"
        item.rejects.append(
            RejectRow(reason, detail, item.topic, item.payload, item.source_id, item.received_at)
        )


def build_item(
    topic: str,
    payload: bytes,
    *,
    received_at: datetime,
    rules: Rules,
    max_payload_bytes: int,
) -> Item:
    """Decode and validate one message into an item; never raises for bad input."""
    item = Item(topic=topic, payload=payload, received_at=received_at)
    try:
        message = decode(
            topic, payload, received_at=received_at, max_payload_bytes=max_payload_bytes
        )
    except DecodeError as exc:
        with contextlib.suppress(DecodeError):
            item.source_id = parse_topic(topic).source_id
        item.reject_all(exc.reason, exc.detail)
        return item
    item.sector = message.topic.sector
    item.source_id = message.topic.source_id
    if not rules.knows_sector(item.sector):
        item.reject_all(reasons.UNKNOWN_SECTOR, f"sector {item.sector!r} is not in the profile")
        return item
    item.status = message.status
    item.event = message.event
    problems = message.problems
    if message.samples:
        item.readings, more = check_samples(
            item.sector, message.samples, now=received_at, rules=rules
        )
        problems = problems + more
    _group(problems, item)
    return item
