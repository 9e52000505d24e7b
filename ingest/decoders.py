"""Pure decoders: (topic, payload bytes) in, samples and problems or a DecodeError out."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import orjson
from pydantic import ValidationError

from ingest import reasons
from ingest.events import EventIn
from ingest.timestamps import parse_time
from ingest.topics import Topic, parse_topic
from ioc.errors import DecodeError

# RFC 8428 section 4.5.3: a SenML time below 2**28 is relative to now.
SENML_RELATIVE_LIMIT_S: Final = 2**28
STATUSES: Final = ("online", "offline")
_MAX_DETAIL_CHARS: Final = 300


@dataclass(slots=True)
class Sample:
    """One decoded value of one metric at one time."""

    metric: str
    ts: datetime
    value: float
    relative: bool = False
    """Timed from the receipt of the message (no time sent, or a SenML relative time)."""


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


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_DETAIL_CHARS else text[: _MAX_DETAIL_CHARS - 1] + "…"


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
            Problem(reasons.NOT_FINITE, f"{metric}: {_short(raw)} is not finite", metric)
        )
        return None
    problems.append(
        Problem(reasons.NOT_NUMERIC, f"{metric}: {_short(raw)} is not a number", metric)
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
                problems.append(Problem(exc.reason, f"{where}{exc.detail}", str(metric)))
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
    for index, record in enumerate(doc):
        where = f"record {index}: "
        if not isinstance(record, dict):
            problems.append(Problem(reasons.MALFORMED, f"{where}is not an object"))
            continue
        try:
            if "bn" in record:
                base_name = _text(record["bn"], "bn")
            if "bt" in record:
                base_time = _finite(record["bt"], "bt")
            if "bv" in record:
                base_value = _finite(record["bv"], "bv")
            must_understand = [k for k in record if isinstance(k, str) and k.endswith("_")]
            if must_understand:
                raise DecodeError(reasons.MALFORMED, f"unknown field {must_understand[0]!r}")
            name = base_name + (_text(record["n"], "n") if "n" in record else "")
            has_value = any(k in record for k in ("v", "vb", "vs", "vd", "s"))
            if not has_value:
                if "n" in record:
                    raise DecodeError(reasons.MALFORMED, f"{name!r} has no value")
                continue  # a record of base fields only
            metric = _metric_of(name)
            if not metric:
                raise DecodeError(reasons.MALFORMED, "a record without a name")
            t = base_time + (_finite(record["t"], "t") if "t" in record else 0.0)
            relative = t < SENML_RELATIVE_LIMIT_S
            ts = received_at + timedelta(seconds=t) if relative else parse_time(t * 1000)
        except DecodeError as exc:
            problems.append(Problem(exc.reason, where + exc.detail))
            continue
        if "v" in record:
            raw = record["v"]
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                problems.append(
                    Problem(
                        reasons.NOT_NUMERIC, f"{metric}: v {_short(raw)} is not a number", metric
                    )
                )
                continue
            value = _number(metric, base_value + raw, problems)
        elif "vb" in record:
            raw = record["vb"]
            if not isinstance(raw, bool):
                problems.append(
                    Problem(
                        reasons.NOT_NUMERIC, f"{metric}: vb {_short(raw)} is not a boolean", metric
                    )
                )
                continue
            value = 1.0 if raw else 0.0
        else:
            kind = next(k for k in ("vs", "vd", "s") if k in record)
            problems.append(
                Problem(reasons.NOT_NUMERIC, f"{metric}: {kind} values are not stored", metric)
            )
            continue
        if value is not None:
            samples.append(Sample(metric, ts, value, relative))
    if not samples and problems and all(p.reason == reasons.MALFORMED for p in problems):
        raise DecodeError(reasons.MALFORMED, problems[0].detail)
    return samples, problems


def _text(raw: object, name: str) -> str:
    if not isinstance(raw, str):
        raise DecodeError(reasons.MALFORMED, f"{name} must be a string")
    return raw


def _finite(raw: object, name: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise DecodeError(reasons.MALFORMED, f"{name} must be a finite number")
    return float(raw)


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
    raise DecodeError(reasons.MALFORMED, f"status must be online or offline, got {_short(text)}")


def decode_event(payload: bytes) -> EventIn:
    """An agency event; its sector and source come from the topic."""
    doc = _load(payload)
    try:
        return EventIn.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "event"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise DecodeError(reasons.MALFORMED, f"{where}: {first['msg']}{more}") from None


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
