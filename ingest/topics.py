"""The MQTT topic scheme `ioc/v1/{sector}/{source_id}/{kind}` (DESIGN section 4)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, get_args

from ingest import reasons
from ioc.errors import DecodeError
from ioc.settings import SubscriptionMode
from ioc.vocabulary import TOPIC_ROOT

PREFIX: Final = f"{TOPIC_ROOT}/"
MessageKind = Literal["telemetry", "senml", "status", "event"]
"""What the last topic level says a message holds."""
KINDS: Final[tuple[str, ...]] = get_args(MessageKind)
SHARE_GROUP: Final = "ioc-ingest"
PLAIN_SUBSCRIPTION: Final = f"{PREFIX}+/+/+"
SUBSCRIPTION: Final = f"$share/{SHARE_GROUP}/{PLAIN_SUBSCRIPTION}"
OUTBOUND_PREFIX: Final = f"{PREFIX}alerts/"
# A pool's catch-all worker publishes one of these to itself (see Assignment.others); it
# matches the wildcard but no sector filter, and no sector id starts with "_".
MARKER_FILTER: Final = f"{PREFIX}_ingest/+/marker"

SECTOR_ID_PATTERN: Final = r"^[a-z][a-z0-9_]{0,62}$"
SOURCE_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"
"""What a sector or source id may be (a topic level; also the API's path and body rule)."""
_SECTOR_RE: Final = re.compile(SECTOR_ID_PATTERN[1:-1])
_SOURCE_RE: Final = re.compile(SOURCE_ID_PATTERN[1:-1])


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


def sector_filter(sector: str) -> str:
    """The topic filter of every message of one sector."""
    return f"{PREFIX}{sector}/+/+"


def shared_filter(group: str) -> str:
    """The wildcard as a shared subscription of `group` (MQTT 5)."""
    return f"$share/{group}/{PLAIN_SUBSCRIPTION}"


def marker_topic(client_id: str) -> str:
    """Where the catch-all worker `client_id` publishes its marker."""
    return f"{PREFIX}_ingest/{client_id}/marker"


@dataclass(frozen=True, slots=True)
class Assignment:
    """The topic filters one worker of a pool holds in its persistent session."""

    filters: tuple[str, ...]
    # filters an earlier layout (other worker count, mode or profile) may have left in the
    # session: unsubscribed at every connect, after `filters` are in place
    stale: tuple[str, ...] = ()
    # sector filters other workers hold, for the catch-all worker (the wildcard): once its
    # marker came back, their messages are acknowledged unprocessed (the owners store them)
    others: tuple[str, ...] = ()


def assign(
    sectors: Sequence[str],
    workers: int,
    *,
    mode: SubscriptionMode = "partitioned",
    group: str = SHARE_GROUP,
    known_sectors: Iterable[str] = (),
) -> list[Assignment]:
    """What each of `workers` workers subscribes to, and drops from earlier layouts.

    partitioned: worker 0 holds the wildcard (its own sectors, sectors not in the profile,
    off-scheme topics); the profile's sectors are dealt out over workers 1..N-1 and 0, each
    as a plain subscription. shared: every worker holds `$share/{group}/ioc/v1/+/+/+`.
    `known_sectors` (the catalogue's) widen what is unsubscribed as stale.
    """
    if workers < 1:
        raise ValueError("a pool has at least one worker")
    every = {PLAIN_SUBSCRIPTION, shared_filter(group)}
    every |= {sector_filter(s) for s in (*sectors, *known_sectors)}
    if mode == "shared":
        shared = (shared_filter(group),)
        return [Assignment(shared, _stale(every, shared)) for _ in range(workers)]
    if workers > 1 and workers > len(sectors):
        raise ValueError(
            f"{workers} partitioned workers for {len(sectors)} sectors: at most one worker "
            "per sector (shared subscriptions spread one sector over several workers)"
        )
    owned: list[list[str]] = [[] for _ in range(workers)]
    for j, sector in enumerate(sectors):
        # worker 0 also receives everything else through the wildcard: it is dealt last
        owned[(j + 1) % workers].append(sector_filter(sector))
    out = []
    for i in range(workers):
        filters: tuple[str, ...]
        if i == 0:
            filters = (PLAIN_SUBSCRIPTION,)
            others = tuple(f for k in range(1, workers) for f in owned[k])
        else:
            filters, others = tuple(owned[i]), ()
        out.append(Assignment(filters, _stale(every, filters), others))
    return out


def _stale(every: set[str], filters: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(every - set(filters)))
