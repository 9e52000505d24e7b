"""Pure decoders: (topic, payload bytes) in, samples and problems or a DecodeError out."""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
from pydantic import ValidationError

from ingest import reasons
from ingest.events import TIME_ERROR, EventIn
from ingest.timestamps import EARLIEST, MAX_EPOCH_S, parse_time
from ingest.topics import Topic, parse_topic
from ioc.errors import DecodeError
from ioc.vocabulary import SourceStatus

# RFC 8428 section 4.5.3: a SenML time below 2**28 is relative to now.
SENML_RELATIVE_LIMIT_S: Final = 2**28
# RFC 8428 section 4.4: the SenML version this decoder implements; a pack of a later one is
# refused as a whole.
SENML_VERSION: Final = 10
STATUSES: Final = frozenset({SourceStatus.ONLINE.value, SourceStatus.OFFLINE.value})
"""What a status message may say of its source (`unknown` is the server's word, not a source's)."""
# The longest metric name stored (catalogue ids have at most 63 characters).
MAX_METRIC_CHARS: Final = 64
_MAX_DETAIL_CHARS: Final = 300

# Shows untrusted values in details: escaped (repr), and cut at any depth or size, so that a
# deeply nested value cannot exhaust the recursion limit.
_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxstring = _repr.maxother = 80
_repr.maxlong = 40


@dataclass(slots=True)
class Sample:
    """One decoded value of one metric at one time."""

    metric: str
    ts: datetime
    value: float
    relative: bool = False
    """Timed from the receipt of the message (no time sent, or a SenML relative time)."""
    unit: str | None = None
    """The unit the value was sent in (SenML `u` or `bu`); None when not said."""


@dataclass(slots=True)
class Problem:
    """A part of a message that is refused while the rest is kept."""

    reason: str
    detail: str
    metric: str | None = None


@dataclass(slots=True)
class Message:
    """A decoded message: samples (telemetry, SenML), a status, or an agency event."""

    topic: Topic
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    status: str | None = None
    event: EventIn | None = None


def short_repr(value: object) -> str:
    """An untrusted value as shown in a detail: escaped, bounded in depth and length."""
    try:
        text = _repr.repr(value)
    except ValueError:  # an int beyond the digits Python converts to text
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _MAX_DETAIL_CHARS else text[: _MAX_DETAIL_CHARS - 1] + "…"


def shown_name(name: str) -> str:
    """A metric name as shown in a detail: as is when plain, else escaped and cut."""
    if name and len(name) <= MAX_METRIC_CHARS and name.isprintable():
        return name
    return short_repr(name)


def _load(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(reasons.MALFORMED, f"not JSON: {exc}") from None


def _number(metric: str, raw: object, problems: list[Problem]) -> float | None:
    """The value as a float, or None with the problem recorded."""
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int | float):
        try:
            value = float(raw)
        except OverflowError:
            value = math.inf
        if math.isfinite(value):
            return value
        problems.append(
            Problem(
                reasons.NOT_FINITE, f"{shown_name(metric)}: {short_repr(raw)} is not finite", metric
            )
        )
        return None
    problems.append(
        Problem(
            reasons.NOT_NUMERIC, f"{shown_name(metric)}: {short_repr(raw)} is not a number", metric
        )
    )
    return None


def _telemetry_object(
    item: object, where: str, received_at: datetime, out: list[Sample], problems: list[Problem]
) -> None:
    if not isinstance(item, dict):
        problems.append(Problem(reasons.MALFORMED, f"{where}is not an object"))
        return
    values = item.get("values")
    if not isinstance(values, dict) or not values:
        problems.append(Problem(reasons.MALFORMED, f'{where}has no "values" object'))
        return
    raw_ts = item.get("ts")
    relative = raw_ts is None
    if relative:
        ts = received_at
    else:
        try:
            ts = parse_time(raw_ts)
        except DecodeError as exc:
            for metric in values:
                problems.append(Problem(exc.reason, f"{where}{exc.detail}", metric))
            return
    for metric, raw in values.items():
        value = _number(metric, raw, problems)
        if value is not None:
            out.append(Sample(metric, ts, value, relative))


def decode_telemetry(
    payload: bytes, *, received_at: datetime
) -> tuple[list[Sample], list[Problem]]:
    """Native JSON: {"ts", "values"} or a list of them (a gateway batch)."""
    doc = _load(payload)
    samples: list[Sample] = []
    problems: list[Problem] = []
    if isinstance(doc, list):
        if not doc:
            raise DecodeError(reasons.MALFORMED, "empty batch")
        for index, item in enumerate(doc):
            _telemetry_object(item, f"item {index}: ", received_at, samples, problems)
    elif isinstance(doc, dict):
        _telemetry_object(doc, "", received_at, samples, problems)
    else:
        raise DecodeError(reasons.MALFORMED, "expected an object or a list of objects")
    if not samples and problems and all(p.reason == reasons.MALFORMED for p in problems):
        raise DecodeError(reasons.MALFORMED, problems[0].detail)
    return samples, problems


def _metric_of(name: str) -> str:
    """The metric named by a resolved SenML name: what follows its last ':' or '/'."""
    for sep in (":", "/"):
        name = name.rpartition(sep)[2]
    return name


def decode_senml(payload: bytes, *, received_at: datetime) -> tuple[list[Sample], list[Problem]]:
    """SenML JSON (RFC 8428): base fields, relative times, v, vb stored; vs, vd, s refused."""
    doc = _load(payload)
    if not isinstance(doc, list) or not doc:
        raise DecodeError(reasons.MALFORMED, "SenML is a non-empty JSON array of records")
    samples: list[Sample] = []
    problems: list[Problem] = []
    base_name, base_time, base_value = "", 0.0, 0.0
    base_unit: str | None = None
    for index, record in enumerate(doc):
        where = f"record {index}: "
        if not isinstance(record, dict):
            problems.append(Problem(reasons.MALFORMED, f"{where}is not an object"))
            continue
        if "bver" in record:
            _check_version(record["bver"])  # a later version refuses the whole pack
        try:
            if "bn" in record:
                base_name = _text(record["bn"], "bn")
            if "bt" in record:
                base_time = _finite(record["bt"], "bt")
            if "bv" in record:
                base_value = _finite(record["bv"], "bv")
            if "bu" in record:
                base_unit = _unit(record["bu"], "bu")
            must_understand = [k for k in record if isinstance(k, str) and k.endswith("_")]
            if must_understand:
                raise DecodeError(
                    reasons.MALFORMED, f"unknown field {short_repr(must_understand[0])}"
                )
            name = base_name + (_text(record["n"], "n") if "n" in record else "")
            has_value = any(k in record for k in ("v", "vb", "vs", "vd", "s"))
            if not has_value:
                if "n" in record:
                    raise DecodeError(reasons.MALFORMED, f"{short_repr(name)} has no value")
                continue  # a record of base fields only
            metric = _metric_of(name)
            if not metric:
                raise DecodeError(reasons.MALFORMED, "a record without a name")
            unit = _unit(record["u"], "u") if "u" in record else base_unit
            t = base_time + (_finite(record["t"], "t") if "t" in record else 0.0)
            relative = t < SENML_RELATIVE_LIMIT_S
            ts = _relative_time(received_at, t) if relative else _absolute_time(t)
        except DecodeError as exc:
            problems.append(Problem(exc.reason, where + exc.detail))
            continue
        if "v" in record:
            raw = record["v"]
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                problems.append(
                    Problem(
                        reasons.NOT_NUMERIC,
                        f"{shown_name(metric)}: v {short_repr(raw)} is not a number",
                        metric,
                    )
                )
                continue
            value = _number(metric, base_value + raw, problems)
        elif "vb" in record:
            raw = record["vb"]
            if not isinstance(raw, bool):
                problems.append(
                    Problem(
                        reasons.NOT_NUMERIC,
                        f"{shown_name(metric)}: vb {short_repr(raw)} is not a boolean",
                        metric,
                    )
                )
                continue
            value = 1.0 if raw else 0.0
        else:
            kind = next(k for k in ("vs", "vd", "s") if k in record)
            problems.append(
                Problem(
                    reasons.NOT_NUMERIC,
                    f"{shown_name(metric)}: {kind} values are not stored",
                    metric,
                )
            )
            continue
        if value is not None:
            samples.append(Sample(metric, ts, value, relative, unit))
    if not samples and problems and all(p.reason == reasons.MALFORMED for p in problems):
        raise DecodeError(reasons.MALFORMED, problems[0].detail)
    return samples, problems


def _relative_time(received_at: datetime, t: float) -> datetime:
    """The receipt time moved by `t` seconds; bad_time when that leaves 1970 to 9999."""
    if not t:
        return received_at  # the common case (no time sent): no arithmetic
    try:
        ts = received_at + timedelta(seconds=t)
    except OverflowError:  # beyond the range of datetime, or of timedelta itself
        ts = None
    if ts is None or ts < EARLIEST:
        raise DecodeError(
            reasons.BAD_TIME, f"time {t:g} s from now is outside the years 1970 to 9999"
        )
    return ts


def _absolute_time(t: float) -> datetime:
    """A SenML time in seconds since 1970 (at least 2**28); bad_time beyond the year 9999."""
    if t <= MAX_EPOCH_S:
        try:
            return datetime.fromtimestamp(t, UTC)
        except (OverflowError, ValueError, OSError):  # rounded up into the year 10000
            pass
    raise DecodeError(reasons.BAD_TIME, f"time {t:g} s is outside the years 1970 to 9999")


def _check_version(raw: object) -> None:
    """Refuse a pack whose `bver` is not a version this decoder implements."""
    if (
        isinstance(raw, bool)
        or not isinstance(raw, int | float)
        or (isinstance(raw, float) and not raw.is_integer())
        or raw < 1
    ):
        raise DecodeError(reasons.MALFORMED, f"bver {short_repr(raw)} is not a positive integer")
    if raw > SENML_VERSION:
        raise DecodeError(
            reasons.MALFORMED,
            f"SenML version {short_repr(raw)} (bver) is later than {SENML_VERSION}, "
            "the version this decoder implements",
        )


def _text(raw: object, name: str) -> str:
    if not isinstance(raw, str):
        raise DecodeError(reasons.MALFORMED, f"{name} must be a string")
    return raw


def _unit(raw: object, name: str) -> str | None:
    """A SenML unit; an empty one is no unit."""
    return _text(raw, name) or None


def _finite(raw: object, name: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise DecodeError(reasons.MALFORMED, f"{name} must be a finite number")
    try:
        value = float(raw)
    except OverflowError:  # an int beyond a double
        value = math.inf
    if not math.isfinite(value):
        raise DecodeError(reasons.MALFORMED, f"{name} must be a finite number")
    return value


def decode_status(payload: bytes) -> str:
    """`online` or `offline`: plain text, a JSON string, or {"status": ...}."""
    text = payload.strip().decode("utf-8", errors="replace").lower()
    if text in STATUSES:
        return text
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        doc = doc.get("status")
    if isinstance(doc, str) and doc.lower() in STATUSES:
        return doc.lower()
    raise DecodeError(
        reasons.MALFORMED, f"status must be online or offline, got {short_repr(text)}"
    )


def decode_event(payload: bytes) -> EventIn:
    """An agency event; its sector and source come from the topic."""
    doc = _load(payload)
    try:
        return EventIn.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        first = errors[0]
        # The loc holds untrusted keys (an unknown field's name): shown escaped when odd.
        where = ".".join(shown_name(p) if isinstance(p, str) else str(p) for p in first["loc"])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        # A bad occurred_at alone is a bad time, as in telemetry; among other faults the
        # event is malformed.
        reason = (
            reasons.BAD_TIME if all(e["type"] == TIME_ERROR for e in errors) else reasons.MALFORMED
        )
        raise DecodeError(reason, f"{where or 'event'}: {first['msg']}{more}") from None


def decode(topic: str, payload: bytes, *, received_at: datetime, max_payload_bytes: int) -> Message:
    """Decode one message; DecodeError when the message as a whole is refused."""
    parsed = parse_topic(topic)
    if len(payload) > max_payload_bytes:
        raise DecodeError(
            reasons.TOO_LARGE, f"payload of {len(payload)} bytes exceeds {max_payload_bytes}"
        )
    message = Message(parsed)
    if parsed.kind == "telemetry":
        message.samples, message.problems = decode_telemetry(payload, received_at=received_at)
    elif parsed.kind == "senml":
        message.samples, message.problems = decode_senml(payload, received_at=received_at)
    elif parsed.kind == "status":
        message.status = decode_status(payload)
    else:
        message.event = decode_event(payload)
    return message
