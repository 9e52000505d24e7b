"""Reason codes for rejected input, as stored in `ingest_reject.reason` and counted."""

from __future__ import annotations

from typing import Final

BAD_TOPIC: Final = "bad_topic"
TOO_LARGE: Final = "too_large"
MALFORMED: Final = "malformed"
BAD_TIME: Final = "bad_time"
UNKNOWN_SECTOR: Final = "unknown_sector"
UNKNOWN_METRIC: Final = "unknown_metric"
UNKNOWN_SOURCE: Final = "unknown_source"
NOT_NUMERIC: Final = "not_numeric"
NOT_FINITE: Final = "not_finite"
OUT_OF_RANGE: Final = "out_of_range"
FUTURE_TIME: Final = "future_time"
TOO_OLD: Final = "too_old"
WRONG_SECTOR: Final = "wrong_sector"
UNIT_MISMATCH: Final = "unit_mismatch"
DUPLICATE: Final = "duplicate"

ALL: Final = (
    BAD_TOPIC,
    TOO_LARGE,
    MALFORMED,
    BAD_TIME,
    UNKNOWN_SECTOR,
    UNKNOWN_METRIC,
    UNKNOWN_SOURCE,
    NOT_NUMERIC,
    NOT_FINITE,
    OUT_OF_RANGE,
    FUTURE_TIME,
    TOO_OLD,
    WRONG_SECTOR,
    UNIT_MISMATCH,
    DUPLICATE,
)

# Not bad input: the database refused an item that it could not store even alone (e.g. its
# sector row is missing); it is kept here rather than retried forever or dropped.
WRITE_FAILED: Final = "write_failed"

# Not bad input either: handling the message raised an unexpected exception (a defect of ours);
# the message is kept here with the error so that it neither stops the worker nor gets lost.
INTERNAL: Final = "internal"
