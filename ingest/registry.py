"""Source registration: the services that create a source before it reports, and change what
telemetry does not say about it (name, district, location, expected reporting interval).

Ingest registers a source from its first message with only its id and sector; the writer's
upsert touches status and times only, so what is set here is never overwritten by telemetry.
Each service writes its audit row in the caller's transaction."""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Final, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from ingest.topics import SECTOR_ID_PATTERN, SOURCE_ID_PATTERN
from ioc.audit import record_audit
from ioc.errors import Conflict, InvalidInput, NotFound
from ioc.vocabulary import SourceStatus

MAX_NAME_CHARS: Final = 200
MAX_KIND_CHARS: Final = 64
MAX_DISTRICT_CHARS: Final = 64
MAX_INTERVAL_S: Final = 366 * 86_400
"""The longest expected reporting interval a source may declare (a yearly figure)."""

_SECTOR_RE: Final = re.compile(SECTOR_ID_PATTERN)
_SOURCE_RE: Final = re.compile(SOURCE_ID_PATTERN)
_COLUMNS: Final = (
    "id, sector_id, name, kind, district, latitude, longitude, interval_s, status, "
    "last_seen_at, last_reading_at, created_at"
)


class _Unchanged(Enum):
    UNCHANGED = "unchanged"


UNCHANGED: Final = _Unchanged.UNCHANGED
"""The default of `update_source`'s fields: leave this one as it is."""
Keep = Literal[_Unchanged.UNCHANGED]


class SourceError(InvalidInput):
    """A source definition that cannot be stored; `field` names the part that is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class SourceRecord:
    """A source as stored."""

    id: str
    sector_id: str
    name: str | None
    kind: str | None
    district: str | None
    latitude: float | None
    longitude: float | None
    interval_s: int | None
    status: SourceStatus
    last_seen_at: datetime | None
    last_reading_at: datetime | None
    created_at: datetime


def _record(row: dict[str, Any]) -> SourceRecord:
    return SourceRecord(
        id=row["id"],
        sector_id=row["sector_id"],
        name=row["name"],
        kind=row["kind"],
        district=row["district"],
        latitude=row["latitude"],
        longitude=row["longitude"],
        interval_s=row["interval_s"],
        status=SourceStatus(row["status"]),
        last_seen_at=row["last_seen_at"],
        last_reading_at=row["last_reading_at"],
        created_at=row["created_at"],
    )


# --- checks (pure) -------------------------------------------------------------------------


def _text(field: str, value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value:
        raise SourceError(field, "must not be empty (send null to clear it)")
    if len(value) > limit:
        raise SourceError(field, f"at most {limit} characters")
    if "\x00" in value:
        raise SourceError(field, "must not contain NUL characters")
    return value


def check_district(district: str | None, districts: Collection[str]) -> str | None:
    """The district, stripped; one of `districts` when the profile lists any."""
    value = _text("district", district, MAX_DISTRICT_CHARS)
    if value is not None and districts and value not in districts:
        raise SourceError(
            "district", f"unknown district {value!r}; the profile's: {', '.join(districts)}"
        )
    return value


def check_location(
    latitude: float | None, longitude: float | None
) -> tuple[float | None, float | None]:
    """Both coordinates (WGS 84 degrees) or neither."""
    if (latitude is None) != (longitude is None):
        missing = "longitude" if longitude is None else "latitude"
        raise SourceError(missing, "latitude and longitude are given together (or both null)")
    if latitude is None or longitude is None:
        return None, None
    if not (math.isfinite(latitude) and -90.0 <= latitude <= 90.0):
        raise SourceError("latitude", "must be between -90 and 90 degrees")
    if not (math.isfinite(longitude) and -180.0 <= longitude <= 180.0):
        raise SourceError("longitude", "must be between -180 and 180 degrees")
    return float(latitude), float(longitude)


def check_interval(interval_s: int | None) -> int | None:
    """The expected reporting interval in seconds: positive, at most a year."""
    if interval_s is None:
        return None
    if isinstance(interval_s, bool) or not 0 < interval_s <= MAX_INTERVAL_S:
        raise SourceError("interval_s", f"must be between 1 and {MAX_INTERVAL_S} seconds")
    return int(interval_s)


def _check_sector(conn: psycopg.Connection[Any], sector_id: str) -> None:
    if not _SECTOR_RE.fullmatch(sector_id):
        raise SourceError("sector_id", f"{sector_id!r} is not a sector id")
    row = conn.execute("SELECT active FROM sector WHERE id = %s", (sector_id,)).fetchone()
    if row is None:
        raise SourceError("sector_id", f"unknown sector {sector_id!r}")
    if not row[0]:
        raise SourceError("sector_id", f"sector {sector_id!r} is not in the active profile")


# --- services ------------------------------------------------------------------------------


def register_source(
    conn: psycopg.Connection[Any],
    *,
    actor: str,
    source_id: str,
    sector_id: str,
    name: str | None = None,
    kind: str | None = None,
    district: str | None = None,
    latitude: float | None = None,
    longitude: float | None = None,
    interval_s: int | None = None,
    districts: Collection[str] = (),
) -> SourceRecord:
    """Register a source before it reports (status unknown). `districts`: the profile's, if
    it lists any. SourceError for a wrong field, Conflict when the id is taken."""
    if not _SOURCE_RE.fullmatch(source_id):
        raise SourceError(
            "id",
            f"{source_id!r} is not a source id: 1-128 letters, digits or . _ : - "
            "starting with a letter or digit (it is a level of the MQTT topic)",
        )
    _check_sector(conn, sector_id)
    fields: dict[str, Any] = {
        "sector_id": sector_id,
        "name": _text("name", name, MAX_NAME_CHARS),
        "kind": _text("kind", kind, MAX_KIND_CHARS),
        "district": check_district(district, districts),
        "interval_s": check_interval(interval_s),
    }
    fields["latitude"], fields["longitude"] = check_location(latitude, longitude)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "INSERT INTO source (id, sector_id, name, kind, district, latitude, longitude, "
            "interval_s) VALUES (%(id)s, %(sector_id)s, %(name)s, %(kind)s, %(district)s, "
            "%(latitude)s, %(longitude)s, %(interval_s)s) "
            f"ON CONFLICT (id) DO NOTHING RETURNING {_COLUMNS}",
            {"id": source_id, **fields},
        )
        row = cur.fetchone()
    if row is None:
        raise Conflict(f"source {source_id!r} exists already")
    record_audit(
        conn,
        actor=actor,
        action="source.create",
        target=f"source:{source_id}",
        detail={k: v for k, v in fields.items() if v is not None},
    )
    return _record(row)


def update_source(
    conn: psycopg.Connection[Any],
    *,
    actor: str,
    source_id: str,
    name: str | Keep | None = UNCHANGED,
    district: str | Keep | None = UNCHANGED,
    latitude: float | Keep | None = UNCHANGED,
    longitude: float | Keep | None = UNCHANGED,
    interval_s: int | Keep | None = UNCHANGED,
    districts: Collection[str] = (),
    sectors: Collection[str] | None = None,
) -> SourceRecord:
    """Change what telemetry does not say about a source; None clears a field, UNCHANGED
    leaves it. Latitude and longitude change together. `sectors`: the caller's scope (a source
    outside it is NotFound, as a missing one). The audit detail holds each changed field as
    {"from": old, "to": new}; a change to the same values writes nothing."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM source WHERE id = %s FOR UPDATE", (source_id,))
        row = cur.fetchone()
    if row is None or (sectors is not None and row["sector_id"] not in sectors):
        raise NotFound(f"source {source_id!r} does not exist")
    wanted: dict[str, Any] = {}
    if name is not UNCHANGED:
        wanted["name"] = _text("name", name, MAX_NAME_CHARS)
    if district is not UNCHANGED:
        wanted["district"] = check_district(district, districts)
    if latitude is not UNCHANGED or longitude is not UNCHANGED:
        if latitude is UNCHANGED or longitude is UNCHANGED:
            missing = "longitude" if longitude is UNCHANGED else "latitude"
            raise SourceError(missing, "latitude and longitude are changed together")
        wanted["latitude"], wanted["longitude"] = check_location(latitude, longitude)
    if interval_s is not UNCHANGED:
        wanted["interval_s"] = check_interval(interval_s)
    changed = {k: v for k, v in wanted.items() if row[k] != v}
    if not changed:
        return _record(row)
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in changed
    )
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL("UPDATE source SET {} WHERE id = {} RETURNING {}").format(
                assignments, sql.Placeholder("id"), sql.SQL(_COLUMNS)
            ),
            {**changed, "id": source_id},
        )
        updated = cur.fetchone()
    assert updated is not None  # locked above
    record_audit(
        conn,
        actor=actor,
        action="source.update",
        target=f"source:{source_id}",
        detail={k: {"from": row[k], "to": v} for k, v in changed.items()},
    )
    return _record(updated)
