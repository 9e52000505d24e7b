"""Decoders: every payload form, and nothing but DecodeError on arbitrary input."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ingest import reasons
from ingest.decoders import (
    MAX_METRIC_CHARS,
    decode,
    decode_event,
    decode_senml,
    decode_status,
    decode_telemetry,
)
from ingest.items import Item, build_item
from ingest.topics import SUBSCRIPTION, is_outbound, parse_topic
from ingest.validation import Rules
from ioc.catalogue import load_profile
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


@pytest.mark.parametrize(
    ("pack", "version"),
    [([{"bver": 11, "n": "aqi", "v": 1}], 11),
     ([{"n": "aqi", "v": 1}, {"bver": 12, "n": "pm25", "v": 2}], 12),
     ([{"bver": 2**63, "n": "aqi", "v": 1}], 2**63)],
)  # fmt: skip
def test_a_senml_version_above_10_rejects_the_whole_pack(pack: list[object], version: int) -> None:
    with pytest.raises(DecodeError) as err:
        decode_senml(_dumps(pack), received_at=NOW)
    assert err.value.reason == reasons.MALFORMED
    assert "version" in err.value.detail and str(version) in err.value.detail


@pytest.mark.parametrize("version", [10, 10.0, 5, 1])
def test_senml_versions_up_to_10_are_read(version: float) -> None:
    samples, problems = decode_senml(
        _dumps([{"bver": version, "n": "aqi", "v": 1}]), received_at=NOW
    )
    assert (len(samples), problems) == (1, [])


@pytest.mark.parametrize("version", ["10", 10.5, True, 0, -1, None, 1e300])
def test_a_senml_version_must_be_a_positive_integer(version: object) -> None:
    with pytest.raises(DecodeError) as err:
        decode_senml(_dumps([{"bver": version, "n": "aqi", "v": 1}]), received_at=NOW)
    assert err.value.reason == reasons.MALFORMED
    assert "bver" in err.value.detail


def test_senml_units_come_from_u_or_the_base_unit() -> None:
    payload = _dumps(
        [
            {"bu": "g/L", "n": "salinity", "v": 1},
            {"n": "water_level", "u": "cm", "v": 120},
            {"n": "salinity", "v": 2, "t": 1},
            {"bu": "", "n": "aqi", "v": 3},
            {"n": "aqi", "u": 5, "v": 4, "t": 1},
        ]
    )
    samples, problems = decode_senml(payload, received_at=NOW)
    assert [(s.metric, s.unit) for s in samples] == [
        ("salinity", "g/L"),
        ("water_level", "cm"),
        ("salinity", "g/L"),
        ("aqi", None),
    ]
    assert [p.reason for p in problems] == [reasons.MALFORMED]
    assert "u must be a string" in problems[0].detail


def test_telemetry_has_no_unit() -> None:
    samples, _ = decode_telemetry(_dumps({"values": {"aqi": 1}}), received_at=NOW)
    assert samples[0].unit is None


# --- poison input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ts",
    ["0001-01-01T00:00:00+07:00", "9999-12-31T23:59:59-07:00", "0001-01-01T00:00:00Z",
     "1969-12-31T23:59:59.999999Z", "10000-01-01T00:00:00Z", -1, 253402300799999.99, 1e300,
     2**64 - 1, -(2**63)],
)  # fmt: skip
def test_times_outside_the_years_1970_to_9999_are_bad_time(ts: object) -> None:
    samples, problems = decode_telemetry(
        _dumps({"ts": ts, "values": {"salinity": 1}}), received_at=NOW
    )
    assert samples == []
    assert [p.reason for p in problems] == [reasons.BAD_TIME]


def test_the_first_and_last_instants_of_the_calendar_range_are_read() -> None:
    samples, _ = decode_telemetry(
        _dumps(
            [
                {"ts": "1970-01-01T07:00:00+07:00", "values": {"aqi": 1}},
                {"ts": "9999-12-31T23:59:59.999999Z", "values": {"aqi": 1}},
                {"ts": 253402300799999, "values": {"aqi": 1}},
            ]
        ),
        received_at=NOW,
    )
    assert [s.ts.year for s in samples] == [1970, 9999, 9999]


@pytest.mark.parametrize(
    "record",
    [{"n": "salinity", "v": 1, "t": -1e11},
     {"n": "salinity", "v": 1, "t": -(2**63)},
     {"n": "salinity", "v": 1, "t": 2**63 - 1},
     {"n": "salinity", "v": 1, "t": 1e20},
     {"n": "salinity", "v": 1, "t": -1e300},
     {"n": "salinity", "v": 1, "bt": -1.7e308, "t": -1.7e308},
     {"n": "salinity", "v": 1, "bt": 1.7e308, "t": 1.7e308},
     {"n": "salinity", "v": 1, "t": -2e9}],
)  # fmt: skip
def test_senml_times_of_any_size_are_bad_time(record: dict[str, object]) -> None:
    samples, problems = decode_senml(_dumps([{"n": "aqi", "v": 1}, record]), received_at=NOW)
    assert [s.metric for s in samples] == ["aqi"]
    assert [p.reason for p in problems] == [reasons.BAD_TIME]
    assert "record 1" in problems[0].detail


@pytest.mark.parametrize("depth", [50, 1000, 1024])
@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_deeply_nested_values_are_refused_without_recursion(depth: int, opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    nested = opener * (depth - 2) + b"1" + closer * (depth - 2)  # depth counts the wrappers
    _, problems = decode_telemetry(b'{"values": {"aqi": ' + nested + b"}}", received_at=NOW)
    assert [p.reason for p in problems] == [reasons.NOT_NUMERIC]
    assert len(problems[0].detail) < 400
    _, problems = decode_senml(b'[{"n": "aqi", "v": ' + nested + b"}]", received_at=NOW)
    assert [p.reason for p in problems] == [reasons.NOT_NUMERIC]


def test_nesting_beyond_the_parser_limit_is_malformed() -> None:
    with pytest.raises(DecodeError) as err:
        decode_telemetry(
            b'{"values": {"aqi": ' + b"[" * 1100 + b"]" * 1100 + b"}}", received_at=NOW
        )
    assert err.value.reason == reasons.MALFORMED


@pytest.mark.parametrize(
    "payload",
    [rb'{"values": {"\ud800": 1}}', rb'{"values": {"a\udfffb": 1}}',
     b'{"values": {"\xed\xa0\x80": 1}}', b'{"values": {"\xff": 1}}'],
)  # fmt: skip
def test_lone_surrogates_and_invalid_utf8_are_malformed(payload: bytes) -> None:
    with pytest.raises(DecodeError) as err:
        decode_telemetry(payload, received_at=NOW)
    assert err.value.reason == reasons.MALFORMED


@pytest.mark.parametrize("name", ["a\u0000b", "\u202e" * 500, "x" * 10_000, "\u0007"])
def test_odd_metric_names_are_shown_escaped_and_short_in_problems(name: str) -> None:
    _, problems = decode_telemetry(_dumps({"values": {name: "high"}}), received_at=NOW)
    assert [p.reason for p in problems] == [reasons.NOT_NUMERIC]
    detail = problems[0].detail
    assert detail.isprintable() and len(detail) < 400


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
        ({"kind": "flood", "severity": "info", "title": "x\u0000"}, "title"),
        ({"kind": "flood", "severity": "info", "title": "x", "description": "a\u0000b"},
         "description"),
        ({"kind": "flood", "severity": "info", "title": "x", "location": "\u0000"}, "location"),
        ({"kind": "flood", "severity": "info", "title": "x",
          "location": {"lat": 1, "lon": 2, "name": "\u0000"}}, "EventLocation.name"),
        ({"kind": "flood", "severity": "info", "title": "x", "district": "d\u0000"}, "district"),
        ({"kind": "flood", "severity": "info", "title": "x", "external_ref": "\u0000"},
         "external_ref"),
        ({"kind": "flood", "severity": "info", "title": "x", "attributes": {"a\u0000": 1}},
         "attributes"),
        ({"kind": "flood", "severity": "info", "title": "x", "attributes": {"a": [["\u0000"]]}},
         "attributes"),
    ],
)  # fmt: skip
def test_bad_events_name_the_field(doc: dict[str, object], field: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode_event(_dumps(doc))
    assert err.value.reason == reasons.MALFORMED
    assert field in err.value.detail
    assert "\x00" not in err.value.detail


def test_event_text_with_nul_is_refused_because_postgresql_text_cannot_hold_it() -> None:
    with pytest.raises(DecodeError) as err:
        decode_event(_dumps({"kind": "flood", "severity": "info", "title": "a\u0000b"}))
    assert "NUL" in err.value.detail


def test_event_attributes_nested_too_deep_are_refused() -> None:
    deep: object = 1
    for _ in range(40):
        deep = {"a": deep}
    with pytest.raises(DecodeError) as err:
        decode_event(
            _dumps({"kind": "flood", "severity": "info", "title": "x", "attributes": deep})
        )
    assert err.value.reason == reasons.MALFORMED
    assert "attributes" in err.value.detail and "deep" in err.value.detail


@pytest.mark.parametrize(
    "occurred_at",
    ["soon", "2026-11-23T10:00:00", True, [1], -1, "0001-01-01T00:00:00+07:00",
     "9999-12-31T23:59:59-07:00", "1969-12-31T23:59:59Z"],
)  # fmt: skip
def test_an_event_with_a_bad_time_is_bad_time(occurred_at: object) -> None:
    doc = {"kind": "flood", "severity": "info", "title": "x", "occurred_at": occurred_at}
    with pytest.raises(DecodeError) as err:
        decode_event(_dumps(doc))
    assert err.value.reason == reasons.BAD_TIME
    assert "occurred_at" in err.value.detail


def test_an_event_with_a_bad_time_and_other_faults_is_malformed() -> None:
    doc = {"kind": "flood", "severity": "huge", "title": "x", "occurred_at": "soon"}
    with pytest.raises(DecodeError) as err:
        decode_event(_dumps(doc))
    assert err.value.reason == reasons.MALFORMED
    assert "more" in err.value.detail


def test_event_times_at_the_limits_of_the_calendar() -> None:
    for text, at in [
        ("1970-01-01T07:00:00+07:00", datetime(1970, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:59:59+07:00", datetime(9999, 12, 31, 16, 59, 59, tzinfo=UTC)),
    ]:
        event = decode_event(
            _dumps({"kind": "flood", "severity": "info", "title": "x", "occurred_at": text})
        )
        assert event.occurred_at == at


def test_payload_limit() -> None:
    with pytest.raises(DecodeError) as err:
        decode("ioc/v1/water/s1/telemetry", b" " * 101, received_at=NOW, max_payload_bytes=100)
    assert err.value.reason == reasons.TOO_LARGE


# --- arbitrary input -----------------------------------------------------------------------

RULES = Rules.from_profile(load_profile("mekong"))
RULES_ACCEPT = Rules.from_profile(load_profile("mekong"), unknown_metrics="accept")

# Characters that trip storage or display: NUL and other controls, format marks (RTL
# override, zero width), line separators, combining marks, lone surrogates, the last code point.
_ODD_CHARS = (
    "\x00\x01\x1f\x7f\x85\u200b\u200e\u200f\u202e\u2028\u0301\u0336\ufeff\ud800\udfff\U0010ffff"
)
_chars = st.characters() | st.sampled_from(list(_ODD_CHARS + "مếx_:/"))
_texts = st.text(_chars, max_size=12) | st.builds(
    lambda c, n: c * n, st.sampled_from(["a", "é", "\u0301", "\x00", "\u202e"]), st.integers(0, 300)
)
_metrics = st.sampled_from(["salinity", "water_level", "rainfall_24h", "supply_chloride", "aqi",
                            "turbidity", "x" * 64, "x" * 65, ""]) | _texts  # fmt: skip
_extreme_datetimes = st.sampled_from(
    [
        datetime(1, 1, 1),
        datetime(1970, 1, 1),
        datetime(1969, 12, 31, 23, 59, 59),
        datetime(2026, 11, 23, 3, 0),
        datetime(9999, 12, 31, 23, 59, 59, 999999),
    ]
)
_offsets = st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-1439, 1439))
_iso_times = st.builds(
    lambda at, tz: at.replace(tzinfo=tz).isoformat(),
    st.datetimes() | _extreme_datetimes,
    _offsets | st.just(UTC) | st.none(),
)
_epochs = (
    st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, -1, 2**28, 253402300799999, 253402300800000, 253402300799999.99,
                       1e11, -1e11, 5e-324, 1.7976931348623157e308, -(2**63), 2**64 - 1])
)  # fmt: skip
_times = _iso_times | _epochs | _texts | st.none() | st.booleans()
_numbers = (
    st.floats()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([1e308, -1e308, 5e-324, -5e-324, 0.0, -0.0, 2**63, 2**64, -(2**63) - 1])
)
_values = _numbers | st.booleans() | st.none() | _texts | st.lists(st.integers(), max_size=2)
_units = st.sampled_from(["‰", "g/L", "g/l", "mg/L", "Cel", "°C", "K", "m", "cm", "mm", "km",
                          "%", "%RH", "/", "ug/m3", "km/h", "m/s", "furlong", "", "\x00",
                          "\ud800"])  # fmt: skip
_json = st.recursive(
    st.none() | st.booleans() | _numbers | _texts,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(["ts", "values", "n", "v", "vb", "vs", "bn", "bt", "t", "bv", "bu", "u",
                         "bver", "x_", "kind", "severity", "title", "aqi", "status", "location",
                         "occurred_at", "attributes"]) | _texts,
        children,
        max_size=5,
    ),
    max_leaves=12,
)  # fmt: skip
_readings = st.fixed_dictionaries(
    {"values": st.dictionaries(_metrics, _values, min_size=1, max_size=4)},
    optional={"ts": _times},
)
_telemetry = _readings | st.lists(_readings, min_size=1, max_size=4)
_senml_times = (
    _epochs
    | st.floats(-1e6, 1e6)  # relative to the receipt
    | st.floats(NOW.timestamp() - 1e6, NOW.timestamp() + 1e3)  # absolute, near now
    | st.sampled_from([-1e11, 1e11, 2**28 - 1, -(2**28), -1e300, 60, -60])
)
# Mostly records a device could send (name, value, maybe time and unit), some of anything.
_senml_record = st.fixed_dictionaries(
    {"n": _metrics, "v": _numbers},
    optional={"t": _senml_times, "u": _units, "bu": _units, "bt": _senml_times,
              "bn": st.sampled_from(["urn:dev:x:", "a/", ""])},
) | st.fixed_dictionaries(
    {},
    optional={"bn": _texts, "bt": _senml_times, "bu": _units, "bv": _numbers,
              "bver": st.sampled_from([10, 11, 0, 10.0, "10"]), "n": _metrics, "u": _units,
              "v": _values, "vb": _values, "vs": _texts, "t": _senml_times, "x_": st.just(1)},
)  # fmt: skip
_senml = st.lists(_senml_record, min_size=1, max_size=5)
_event = st.fixed_dictionaries(
    {"kind": st.just("flood") | st.sampled_from(["Flood", "", "a\x00"]),
     "severity": st.just("info") | st.sampled_from(["x", ""]), "title": _texts},
    optional={"description": _texts, "district": _texts, "external_ref": _texts,
              "occurred_at": _times, "attributes": st.dictionaries(_texts, _json, max_size=3),
              "location": _texts | st.fixed_dictionaries(
                  {"lat": _numbers, "lon": _numbers}, optional={"name": _texts})},
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


def _encode(doc: object, ascii_only: bool) -> bytes:
    """JSON as a device might send it: stdlib escapes lone surrogates, or writes them raw."""
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def _decode_or_documented_error(topic: str, payload: bytes) -> None:
    reason = None
    try:
        decode(topic, payload, received_at=NOW, max_payload_bytes=LIMIT)
    except DecodeError as exc:
        reason = exc.reason
    assert reason is None or reason in reasons.ALL


def _storable(text: str) -> bool:
    """Whether PostgreSQL text (UTF-8) can hold it: no NUL, no lone surrogate."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _sound_item(topic: str, payload: bytes, rules: Rules) -> Item:
    """build_item never raises, and everything it keeps is storable and valid."""
    item = build_item(topic, payload, received_at=NOW, rules=rules, max_payload_bytes=LIMIT)
    for reject in item.rejects:
        assert reject.reason in reasons.ALL
        assert reject.detail and _storable(reject.detail)
    assert sum(item.reject_counts.values()) >= len(item.rejects)
    metrics = rules.sectors.get(item.sector or "", {})
    seen = set()
    for r in item.readings:
        assert math.isfinite(r.value)
        assert NOW - rules.retention <= r.ts <= NOW + rules.future_tolerance
        assert r.catalogued == (r.metric in metrics)
        assert r.catalogued or rules.unknown_metrics == "accept"
        assert 0 < len(r.metric) <= MAX_METRIC_CHARS and r.metric.isprintable()
        if r.catalogued:
            assert metrics[r.metric].low <= r.value <= metrics[r.metric].high
        assert (r.metric, r.ts) not in seen
        seen.add((r.metric, r.ts))
    if item.event is not None:
        event = item.event
        texts = [event.kind, event.title, event.description, event.district, event.external_ref]
        loc = event.location
        texts.append(loc if isinstance(loc, str) else loc.name if loc is not None else None)
        assert all(_storable(t) for t in texts if t is not None)
        assert _storable(json.dumps(event.attributes, ensure_ascii=False))
        at = event.occurred_at
        assert at is None or datetime(1970, 1, 1, tzinfo=UTC) <= at
    return item


@settings(max_examples=300, deadline=None)
@given(topic=_topics, payload=st.binary(max_size=200))
def test_arbitrary_bytes_and_topics_raise_only_decode_error(topic: str, payload: bytes) -> None:
    _decode_or_documented_error(topic, payload)
    _sound_item(topic, payload, RULES)


@settings(max_examples=500, deadline=None)
@given(
    kind=st.sampled_from(["telemetry", "senml", "status", "event"]),
    doc=_json,
    ascii_only=st.booleans(),
)
def test_arbitrary_json_raises_only_decode_error(kind: str, doc: object, ascii_only: bool) -> None:
    payload = _encode(doc, ascii_only)  # stdlib: integers beyond 64 bits too
    _decode_or_documented_error(f"ioc/v1/water/s1/{kind}", payload)
    _sound_item(f"ioc/v1/water/s1/{kind}", payload, RULES_ACCEPT)


@settings(max_examples=600, deadline=None)
@given(doc=_telemetry, ascii_only=st.booleans(), accept=st.booleans())
@example(
    doc={"ts": "0001-01-01T00:00:00+07:00", "values": {"salinity": 1}},
    ascii_only=True,
    accept=False,
)
@example(
    doc={"ts": "9999-12-31T23:59:59-07:00", "values": {"salinity": 1}},
    ascii_only=True,
    accept=False,
)
@example(doc={"values": {"a\x00b": 1}}, ascii_only=True, accept=True)
@example(
    doc=[{"ts": 0, "values": {"aqi": 1}}, {"values": {"aqi": 2}}, {"values": {"aqi": 3}}],
    ascii_only=True,
    accept=True,
)
def test_any_telemetry_makes_a_sound_item(doc: object, ascii_only: bool, accept: bool) -> None:
    _sound_item("ioc/v1/water/p1/telemetry", _encode(doc, ascii_only),
                RULES_ACCEPT if accept else RULES)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(doc=_senml, ascii_only=st.booleans(), accept=st.booleans())
@example(doc=[{"n": "salinity", "v": 1, "t": -1e11}], ascii_only=True, accept=False)
@example(doc=[{"n": "salinity", "v": 1}, {"n": "salinity", "v": 2}], ascii_only=True, accept=False)
@example(doc=[{"bu": "g/L", "n": "salinity", "v": 1e308}], ascii_only=True, accept=False)
def test_any_senml_makes_a_sound_item(doc: object, ascii_only: bool, accept: bool) -> None:
    _sound_item("ioc/v1/water/p1/senml", _encode(doc, ascii_only),
                RULES_ACCEPT if accept else RULES)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(doc=_event, ascii_only=st.booleans())
@example(
    doc={
        "kind": "flood",
        "severity": "info",
        "title": "x",
        "occurred_at": "0001-01-01T00:00:00+07:00",
    },
    ascii_only=True,
)
@example(doc={"kind": "flood", "severity": "info", "title": "x\x00"}, ascii_only=True)
def test_any_event_makes_a_sound_item(doc: object, ascii_only: bool) -> None:
    _sound_item("ioc/v1/water/p1/event", _encode(doc, ascii_only), RULES)


@settings(max_examples=60, deadline=None)
@given(
    depth=st.integers(0, 1100),
    opener=st.sampled_from([b"[", b'{"a":']),
    where=st.sampled_from(
        [("telemetry", b'{"values": {"aqi": ', b"}}"), ("senml", b'[{"n": "aqi", "v": ', b"}]"),
         ("senml", b'[{"n": ', b', "v": 1}]'), ("status", b'{"status": ', b"}"), ("x", b"", b""),
         ("event", b'{"kind": "k", "severity": "info", "title": "t", "attributes": {"a": ', b"}}"),
         ("event", b'{"kind": "k", "severity": "info", "title": "t", "location": ', b"}")]
    ),
)  # fmt: skip
@example(depth=1000, opener=b"[", where=("telemetry", b'{"values": {"aqi": ', b"}}"))
@example(depth=1000, opener=b'{"a":', where=("senml", b'[{"n": "aqi", "v": ', b"}]"))
def test_deep_nesting_makes_a_sound_item(
    depth: int, opener: bytes, where: tuple[str, bytes, bytes]
) -> None:
    kind, head, tail = where
    closer = b"]" if opener == b"[" else b"}"
    payload = head + opener * depth + b"1" + closer * depth + tail
    for k in ("telemetry", "senml", "status", "event") if kind == "x" else (kind,):
        _sound_item(f"ioc/v1/water/p1/{k}", payload, RULES_ACCEPT)


@pytest.mark.parametrize(
    ("topic", "payload"),
    [("ioc/v1/water/p1/telemetry", b'{"ts":"0001-01-01T00:00:00+07:00","values":{"salinity":1}}'),
     ("ioc/v1/water/p1/telemetry", b'{"ts":"9999-12-31T23:59:59-07:00","values":{"salinity":1}}'),
     ("ioc/v1/water/p1/senml", b'[{"n":"salinity","v":1,"t":-1e11}]'),
     ("ioc/v1/water/p1/event",
      b'{"kind":"flood","severity":"info","title":"x","occurred_at":"0001-01-01T00:00:00+07:00"}')],
)  # fmt: skip
def test_poison_times_become_one_bad_time_reject(topic: str, payload: bytes) -> None:
    item = _sound_item(topic, payload, RULES)
    assert item.readings == [] and item.event is None
    assert [r.reason for r in item.rejects] == [reasons.BAD_TIME]
    assert item.reject_counts == {reasons.BAD_TIME: 1}
    assert item.rejects[0].payload == payload
