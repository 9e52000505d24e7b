"""Reading times as sent by devices: ISO 8601 with an offset, or epoch milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from ingest import reasons
from ioc.errors import DecodeError

# Years 1970 to 9999 (UTC): outside them a time is not plausible, and arithmetic on it can
# leave the range of `datetime`; both forms of a time are held to the same span.
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
MAX_EPOCH_MS: Final = 253_402_300_799_999
MAX_EPOCH_S: Final = MAX_EPOCH_MS / 1000
_SHOWN_CHARS: Final = 64


def out_of_span(raw: object) -> DecodeError:
    """The error for a time outside the years 1970 to 9999 (UTC)."""
    return DecodeError(reasons.BAD_TIME, f"time {_shown(raw)} is outside the years 1970 to 9999")


def _shown(raw: object) -> str:
    if isinstance(raw, str):
        return repr(raw[:_SHOWN_CHARS])
    if isinstance(raw, float):
        return repr(raw)
    if isinstance(raw, int) and abs(raw) < 10**30:
        return str(raw)
    return f"of type {type(raw).__name__}"


def parse_time(raw: object) -> datetime:
    """An aware UTC datetime from ISO 8601 text (offset required) or epoch milliseconds."""
    if isinstance(raw, bool):
        raise DecodeError(reasons.BAD_TIME, f"time {raw!r} is neither ISO 8601 nor epoch ms")
    if isinstance(raw, int | float):
        # Compared before any conversion: this also refuses NaN and ints too large for a float.
        if not 0 <= raw <= MAX_EPOCH_MS:
            raise DecodeError(reasons.BAD_TIME, f"epoch milliseconds {_shown(raw)} out of range")
        try:
            return datetime.fromtimestamp(raw / 1000, UTC)
        except (OverflowError, ValueError, OSError):
            # the last millisecond of 9999 can round up into the year 10000
            raise out_of_span(raw) from None
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise DecodeError(reasons.BAD_TIME, f"time {_shown(raw)} is not ISO 8601") from None
        if parsed.tzinfo is None:
            raise DecodeError(
                reasons.BAD_TIME, f"time {_shown(raw)} has no UTC offset (add Z or +07:00)"
            )
        try:
            utc = parsed.astimezone(UTC)
        except OverflowError:
            # e.g. 0001-01-01T00:00:00+07:00 is in the year 0 in UTC
            raise out_of_span(raw) from None
        if utc < EARLIEST:
            raise out_of_span(raw)
        return utc
    raise DecodeError(reasons.BAD_TIME, f"time of type {type(raw).__name__} is not understood")
