"""The agency event schema, shared by MQTT `.../event` and `POST /api/v1/events`.

Text is refused (never stripped) when PostgreSQL could not store it: a NUL character
(U+0000) in any text or attribute, or a lone surrogate. `attributes` nest at most
`MAX_ATTRIBUTE_DEPTH` levels, so that storing them never recurses deeply.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

import psycopg
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from ingest import reasons
from ingest.timestamps import parse_time
from ioc.audit import record_audit
from ioc.errors import DecodeError, NotFound
from ioc.vocabulary import EventStatus, SeverityName

MAX_ATTRIBUTE_DEPTH: Final = 16
TIME_ERROR: Final = reasons.BAD_TIME
"""The pydantic error type of a bad `occurred_at`, so that the decoder can name the reason."""


def storable_text(value: str) -> str:
    """The text itself, or ValueError when PostgreSQL text cannot hold it."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (U+0000), which PostgreSQL text cannot store")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError("holds a lone surrogate, which is not valid UTF-8") from None
    return value


Text = Annotated[str, AfterValidator(storable_text)]


def _check_attributes(value: dict[str, Any]) -> dict[str, Any]:
    """Walk the attributes without recursion: depth bounded, every text storable."""
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_ATTRIBUTE_DEPTH:
            raise ValueError(f"nested more than {MAX_ATTRIBUTE_DEPTH} levels deep")
        children = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in children:
            try:
                if isinstance(key, str):
                    storable_text(key)
                if isinstance(child, str):
                    storable_text(child)
            except ValueError as exc:
                raise ValueError(f"a key or text at depth {depth} {exc}") from None
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return value


class EventLocation(BaseModel):
    """A point, optionally named."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    name: Text | None = Field(default=None, max_length=300)


class EventIn(BaseModel):
    """An incident, citizen report or outage reported by a sector agency."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_.\-]*$")
    severity: SeverityName
    title: Text = Field(min_length=1, max_length=300)
    description: Text | None = Field(default=None, max_length=10_000)
    location: EventLocation | str | None = None
    district: Text | None = Field(default=None, max_length=64)
    occurred_at: datetime | None = None
    external_ref: Text | None = Field(default=None, min_length=1, max_length=200)
    attributes: Annotated[dict[str, Any], AfterValidator(_check_attributes)] = Field(
        default_factory=dict
    )

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _time(cls, value: object) -> object:
        if value is None:
            return None
        try:
            return parse_time(value)
        except DecodeError as exc:
            raise PydanticCustomError(TIME_ERROR, "{detail}", {"detail": exc.detail}) from None

    @field_validator("location", mode="before")
    @classmethod
    def _location(cls, value: object) -> object:
        if isinstance(value, str):
            if not 1 <= len(value) <= 300:
                raise ValueError("a location name has 1 to 300 characters")
            storable_text(value)
        return value


def set_event_status(
    conn: psycopg.Connection[Any],
    *,
    event_id: int,
    status: EventStatus | str,
    actor: str,
    note: str | None = None,
) -> str:
    """Move an event to `status` (any of new, in_progress, resolved); the previous status.
    Writes the audit row in the caller's transaction."""
    status = EventStatus(status)
    row = conn.execute("SELECT status FROM event WHERE id = %s FOR UPDATE", (event_id,)).fetchone()
    if row is None:
        raise NotFound(f"event {event_id} does not exist")
    before = str(row[0])
    if before != status:
        conn.execute(
            "UPDATE event SET status = %s, updated_at = now() WHERE id = %s",
            (status.value, event_id),
        )
    detail: dict[str, Any] = {"from": before, "to": status.value}
    if note:
        detail["note"] = note
    record_audit(
        conn, actor=actor, action="event.update", target=f"event:{event_id}", detail=detail
    )
    return before
