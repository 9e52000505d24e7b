"""The agency event schema, shared by MQTT `.../event` and `POST /api/v1/events`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ingest.timestamps import parse_time
from ioc.errors import DecodeError


class EventLocation(BaseModel):
    """A point, optionally named."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    name: str | None = Field(default=None, max_length=300)


class EventIn(BaseModel):
    """An incident, citizen report or outage reported by a sector agency."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_.\-]*$")
    severity: Literal["info", "warning", "critical"]
    title: str = Field(min_length=1, max_length=300)
    description: str | None = Field(default=None, max_length=10_000)
    location: EventLocation | str | None = None
    district: str | None = Field(default=None, max_length=64)
    occurred_at: datetime | None = None
    external_ref: str | None = Field(default=None, min_length=1, max_length=200)
    attributes: dict[str, Any] = Field(default_factory=dict)

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _time(cls, value: object) -> object:
        if value is None:
            return None
        try:
            return parse_time(value)
        except DecodeError as exc:
            raise ValueError(exc.detail) from None

    @field_validator("location", mode="before")
    @classmethod
    def _location(cls, value: object) -> object:
        if isinstance(value, str) and not 1 <= len(value) <= 300:
            raise ValueError("a location name has 1 to 300 characters")
        return value
