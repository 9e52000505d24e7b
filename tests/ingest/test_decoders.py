"""Decoders: every payload form, and nothing but DecodeError on arbitrary input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import reasons
from ingest.decoders import decode, decode_event, decode_senml, decode_status, decode_telemetry
from ingest.topics import SUBSCRIPTION, is_outbound, parse_topic
from ioc.errors import DecodeError

NOW = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
LIMIT = 256 * 1024


def _dumps(doc: object) -> bytes:
    return orjson.dumps(doc)


# --- topics --------------------------------------------------------------------------------


def test_topic_parts() -> None:
    topic = parse_topic("ioc/v1/water/tram-ca-mau.01/telemetry")
    assert (topic.sector, topic.source_id, topic.kind) == ("water", "tram-ca-mau.01", "telemetry")
    assert str(topic) == "ioc/v1/water/tram-ca-mau.01/telemetry"


@pytest.mark.parametrize(
    "topic",
    [
        "ioc/v2/water/s1/telemetry",
        "ioc/v1/water/s1",
        "ioc/v1/water/s1/telemetry/extra",
        "ioc/v1/water/s1/readings",
        "ioc/v1/Water/s1/telemetry",
        "ioc/v1/water/-s1/telemetry",
        "",
    ],
)
def test_off_scheme_topics_are_bad_topic(topic: str) -> None:
    with pytest.raises(DecodeError) as err:
        parse_topic(topic)
    assert err.value.reason == reasons.BAD_TOPIC


def test_outbound_alert_topics_are_not_input() -> None:
    assert is_outbound("ioc/v1/alerts/water/critical")
    assert not is_outbound("ioc/v1/water/s1/telemetry")
    assert SUBSCRIPTION == "$share/ioc-ingest/ioc/v1/+/+/+"


# --- native JSON ---------------------------------------------------------------------------


def test_telemetry_object_with_epoch_ms() -> None:
    ts_ms = int(NOW.timestamp() * 1000) - 5000
    samples, problems = decode_telemetry(
        _dumps({"ts": ts_ms, "values": {"salinity": 1.5, "water_level": 2}}), received_at=NOW
    )
    assert problems == []
    assert [(s.metric, s.value) for s in samples] == [("salinity", 1.5), ("water_level", 2.0)]
    assert samples[0].ts == NOW - timedelta(seconds=5)


def test_telemetry_iso_time_with_offset_and_missing_time() -> None:
    samples, _ = decode_telemetry(
        _dumps({"ts": "2026-11-23T10:00:00+07:00", "values": {"aqi": 80}}), received_at=NOW
    )
    assert samples[0].ts == NOW
    samples, _ = decode_telemetry(_dumps({"values": {"aqi": 80}}), received_at=NOW)
    assert samples[0].ts == NOW  # no ts: time of receipt


def test_gateway_batch_keeps_good_items_and_reports_bad_ones() -> None:
    payload = _dumps(
        [
            {"ts": "2026-11-23T02:59:00Z", "values": {"aqi": 70}},
            {"ts": "yesterday", "values": {"aqi": 71}},
            {"ts": "2026-11-23T02:58:00Z", "values": {"aqi": "high", "pm25": True}},
            "junk",
        ]
    )
    samples, problems = decode_telemetry(payload, received_at=NOW)
    assert [(s.metric, s.value) for s in samples] == [("aqi", 70.0), ("pm25", 1.0)]
    assert sorted(p.reason for p in problems) == [
        reasons.BAD_TIME,
        reasons.MALFORMED,
        reasons.NOT_NUMERIC,
    ]


def test_naive_time_is_refused_with_a_hint() -> None:
    _, problems = decode_telemetry(
        _dumps({"ts": "2026-11-23T10:00:00", "values": {"aqi": 1}}), received_at=NOW
    )
    assert problems[0].reason == reasons.BAD_TIME
    assert "UTC offset" in problems[0].detail


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"{", b"42", b'"text"', b"[]", b'{"ts": 1}', b'{"values": []}', b"NaN"],
)
def test_malformed_telemetry(payload: bytes) -> None:
    with pytest.raises(DecodeError) as err:
        decode_telemetry(payload, received_at=NOW)
    assert err.value.reason == reasons.MALFORMED


def test_numbers_json_cannot_hold_make_the_message_malformed() -> None:
    # NaN, Infinity and numbers beyond a double are not JSON: the parser refuses the message
    for raw in (b"NaN", b"Infinity", b"1" + b"0" * 400):
        with pytest.raises(DecodeError) as err:
            decode_telemetry(b'{"values": {"aqi": ' + raw + b"}}", received_at=NOW)
        assert err.value.reason == reasons.MALFORMED


def test_a_value_that_overflows_is_not_finite() -> None:
    payload = _dumps([{"bv": 1.5e308, "n": "aqi", "v": 1.5e308}, {"n": "pm25", "v": 3}])
    samples, problems = decode_senml(payload, received_at=NOW)
    assert [p.reason for p in problems] == [reasons.NOT_FINITE]
    assert [s.metric for s in samples] == ["pm25"]


# --- SenML ---------------------------------------------------------------------------------


def test_senml_base_fields_and_relative_time() -> None:
    bt = NOW.timestamp()
    payload = _dumps(
        [
            {"bn": "urn:dev:tram-01:", "bt": bt, "bu": "‰", "n": "salinity", "v": 1.2},
            {"n": "salinity", "v": 1.4, "t": 60},
            {"n": "pump_on", "vb": True},
            {"n": "note", "vs": "ok"},
            {"n": "blob", "vd": "aGk="},
        ]
    )
    samples, problems = decode_senml(payload, received_at=NOW)
    assert [(s.metric, s.value, s.ts) for s in samples] == [
        ("salinity", 1.2, NOW),
        ("salinity", 1.4, NOW + timedelta(seconds=60)),
        ("pump_on", 1.0, NOW),
    ]
    assert [p.reason for p in problems] == [reasons.NOT_NUMERIC, reasons.NOT_NUMERIC]
    assert "vs values are not stored" in problems[0].detail


def test_senml_times_below_2_pow_28_are_relative_to_now() -> None:
    samples, _ = decode_senml(_dumps([{"n": "aqi", "v": 50, "t": -120}]), received_at=NOW)
    assert samples[0].ts == NOW - timedelta(minutes=2)


def test_senml_base_value_is_added() -> None:
    samples, _ = decode_senml(_dumps([{"bv": 10, "n": "aqi", "v": 5}]), received_at=NOW)
    assert samples[0].value == 15.0


@pytest.mark.parametrize(
    "payload",
    [b"{}", b"[]", b"[1, 2]", _dumps([{"n": "aqi"}]), _dumps([{"bn": 5, "n": "aqi", "v": 1}])],
)
def test_malformed_senml(payload: bytes) -> None:
    with pytest.raises(DecodeError) as err:
        decode_senml(payload, received_at=NOW)
    assert err.value.reason == reasons.MALFORMED


def test_senml_must_understand_fields_are_refused() -> None:
    with pytest.raises(DecodeError):
        decode_senml(_dumps([{"n": "aqi", "v": 1, "new_": 1}]), received_at=NOW)


# --- status and events ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "status"),
    [(b"online", "online"), (b" OFFLINE\n", "offline"), (b'"online"', "online"),
     (b'{"status": "offline"}', "offline")],
)  # fmt: skip
def test_status_forms(payload: bytes, status: str) -> None:
    assert decode_status(payload) == status


def test_bad_status() -> None:
    with pytest.raises(DecodeError) as err:
        decode_status(b"sleeping")
    assert err.value.reason == reasons.MALFORMED


def test_event_schema() -> None:
    event = decode_event(
        _dumps(
            {
                "kind": "flood",
                "severity": "critical",
                "title": "Ngập sâu đường Trần Phú",
                "description": "Nước ngập 40 cm",
                "location": {"lat": 9.29, "lon": 105.72, "name": "Trần Phú"},
                "occurred_at": "2026-11-23T09:30:00+07:00",
                "external_ref": "CB-2026-0042",
            }
        )
    )
    assert event.severity == "critical"
    assert event.occurred_at == datetime(2026, 11, 23, 2, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"kind": "flood", "severity": "huge", "title": "x"}, "severity"),
        ({"kind": "flood", "severity": "info"}, "title"),
        ({"kind": "flood", "severity": "info", "title": "x", "colour": "red"}, "colour"),
        ({"kind": "flood", "severity": "info", "title": "x", "occurred_at": "soon"}, "occurred_at"),
    ],
)
def test_bad_events_name_the_field(doc: dict[str, object], field: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode_event(_dumps(doc))
    assert err.value.reason == reasons.MALFORMED
    assert field in err.value.detail


def test_payload_limit() -> None:
    with pytest.raises(DecodeError) as err:
        decode("ioc/v1/water/s1/telemetry", b" " * 101, received_at=NOW, max_payload_bytes=100)
    assert err.value.reason == reasons.TOO_LARGE


# --- arbitrary input -----------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(["ts", "values", "n", "v", "vb", "vs", "bn", "bt", "t", "bv", "x_",
                         "kind", "severity", "title", "aqi", "status", "location"]),
        children,
        max_size=5,
    ),
    max_leaves=12,
)  # fmt: skip
_topics = st.one_of(
    st.text(max_size=60),
    st.builds(
        "ioc/v1/{}/{}/{}".format,
        st.sampled_from(["water", "Water", "", "a/b"]),
        st.text(max_size=10),
        st.sampled_from(["telemetry", "senml", "status", "event", "x"]),
    ),
)


def _decode_or_documented_error(topic: str, payload: bytes) -> None:
    reason = None
    try:
        decode(topic, payload, received_at=NOW, max_payload_bytes=LIMIT)
    except DecodeError as exc:
        reason = exc.reason
    assert reason is None or reason in reasons.ALL


@settings(max_examples=300, deadline=None)
@given(topic=_topics, payload=st.binary(max_size=200))
def test_arbitrary_bytes_and_topics_raise_only_decode_error(topic: str, payload: bytes) -> None:
    _decode_or_documented_error(topic, payload)


@settings(max_examples=500, deadline=None)
@given(
    kind=st.sampled_from(["telemetry", "senml", "status", "event"]),
    doc=_json,
)
def test_arbitrary_json_raises_only_decode_error(kind: str, doc: object) -> None:
    payload = json.dumps(doc).encode()  # stdlib: integers beyond 64 bits too
    _decode_or_documented_error(f"ioc/v1/water/s1/{kind}", payload)
