"""The pipeline entry for HTTP ingest (`POST /api/v1/telemetry`, `/events`).

The same decoders, validation, reject table and batching writer as MQTT: a request's
readings join the next batch, and the answer comes once they are committed.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ingest.items import AuditNote, Item, build_item
from ingest.topics import PREFIX, MessageKind
from ingest.validation import Rules
from ingest.writer import Writer
from ioc.errors import IngestError


@dataclass(frozen=True)
class IngestResult:
    """What became of one posted message."""

    accepted: int
    rejected: int
    reasons: dict[str, int] = field(default_factory=dict)
    event_id: int | None = None
    """Id of the stored event (None for telemetry, or an event already stored before)."""
    duplicate_of: int | None = None
    """Id of the event an earlier copy of this one stored."""


def _result(item: Item) -> IngestResult:
    return IngestResult(
        accepted=len(item.readings),
        rejected=sum(item.reject_counts.values()),
        reasons=dict(item.reject_counts),
        event_id=item.event_id,
        duplicate_of=item.duplicate_of,
    )


class HttpIngest:
    """Posts messages into a running writer and waits for their commit."""

    def __init__(self, writer: Writer, rules: Rules, *, max_payload_bytes: int) -> None:
        self.writer = writer
        self.rules = rules
        self.max_payload_bytes = max_payload_bytes

    def submit(
        self,
        *,
        sector: str,
        source_id: str,
        kind: MessageKind,
        payload: bytes,
        audit: AuditNote | None = None,
    ) -> Future[IngestResult]:
        """Queue one message (blocking while the queue is full); the future ends at commit."""
        future: Future[IngestResult] = Future()
        item = build_item(
            f"{PREFIX}{sector}/{source_id}/{kind}",
            payload,
            received_at=datetime.now(UTC),
            rules=self.rules,
            max_payload_bytes=self.max_payload_bytes,
        )
        item.audit = audit
        item.done = lambda done: future.set_result(_result(done))
        if not self.writer.submit(item):
            raise IngestError("unavailable", "ingest is stopping; try again")
        return future

    async def ingest(
        self,
        *,
        sector: str,
        source_id: str,
        kind: MessageKind = "telemetry",
        payload: bytes,
        audit: AuditNote | None = None,
        timeout_s: float = 30.0,
    ) -> IngestResult:
        """Decode, validate and store one message; counts of accepted and rejected readings.
        With `audit`, the audit row is written in the batch's transaction."""
        future = await asyncio.to_thread(
            functools.partial(
                self.submit,
                sector=sector,
                source_id=source_id,
                kind=kind,
                payload=payload,
                audit=audit,
            )
        )
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            raise IngestError(
                "timeout", f"not committed within {timeout_s:g} s (database unavailable?)"
            ) from None
