"""Reading times as sent by devices: ISO 8601 with an offset, or epoch milliseconds."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Final

from ingest import reasons
from ioc.errors import DecodeError

# Years 1970 to 9999: outside it a number is not a plausible epoch in milliseconds.
MAX_EPOCH_MS: Final = 253_402_300_799_999


def parse_time(raw: object) -> datetime:
    """An aware UTC datetime from ISO 8601 text (offset required) or epoch milliseconds."""
    if isinstance(raw, bool):
        raise DecodeError(reasons.BAD_TIME, f"time {raw!r} is neither ISO 8601 nor epoch ms")
    if isinstance(raw, int | float):
        if not math.isfinite(raw) or not 0 <= raw <= MAX_EPOCH_MS:
            raise DecodeError(reasons.BAD_TIME, f"epoch milliseconds {raw!r} out of range")
        return datetime.fromtimestamp(raw / 1000, UTC)
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise DecodeError(reasons.BAD_TIME, f"time {raw[:64]!r} is not ISO 8601") from None
        if parsed.tzinfo is None:
            raise DecodeError(
                reasons.BAD_TIME, f"time {raw[:64]!r} has no UTC offset (add Z or +07:00)"
            )
        return parsed.astimezone(UTC)
    raise DecodeError(reasons.BAD_TIME, f"time of type {type(raw).__name__} is not understood")
