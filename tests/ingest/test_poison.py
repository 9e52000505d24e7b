"""No message stops the consumer: poison payloads, defects of ours, generated hostile input.

Every test publishes through a real broker to a real consumer and writer, then publishes a good
message and checks that it is stored: the worker carried on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import reasons
from ingest.validation import Rules
from tests.support.ingest import (
    RULES,
    publish_all,
    query,
    running_consumer,
    unique,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)


def _good(source: str) -> tuple[str, bytes]:
    return f"ioc/v1/water/{source}/telemetry", orjson.dumps({"values": {"salinity": 0.5}})


def _stored(db_url: str, source: str) -> bool:
    return bool(query(db_url, "SELECT 1 FROM reading_named WHERE source_id = %s", (source,)))


def _rejects(db_url: str, source: str) -> list[tuple[Any, ...]]:
    return query(
        db_url,
        "SELECT reason, detail FROM ingest_reject WHERE source_id = %s ORDER BY id",
        (source,),
    )


def test_the_issues_poison_messages_are_bad_time_rejects(synced_db: str, mqtt_url: str) -> None:
    src, after = unique("p1"), unique("after")
    event = {"kind": "flood", "severity": "warning", "title": "Ngập"}
    poison = [
        (f"ioc/v1/water/{src}/telemetry",
         b'{"ts":"0001-01-01T00:00:00+07:00","values":{"salinity":1}}'),
        (f"ioc/v1/water/{src}/telemetry",
         b'{"ts":"9999-12-31T23:59:59-07:00","values":{"salinity":1}}'),
        (f"ioc/v1/water/{src}/senml", b'[{"n":"salinity","v":1,"t":-1e11}]'),
        (f"ioc/v1/water/{src}/event",
         orjson.dumps({**event, "occurred_at": "0001-01-01T00:00:00+07:00"})),
    ]  # fmt: skip
    with running_consumer(synced_db, mqtt_url) as consumer:
        publish_all(mqtt_url, [*poison, _good(after)])
        wait_until(lambda: _stored(synced_db, after), what="the good message after the poison")
        rejects = wait_until(lambda: len(r := _rejects(synced_db, src)) == 4 and r, what="rejects")
        assert not consumer.failed
        assert consumer.internal_errors == 0
    assert [r[0] for r in rejects] == [reasons.BAD_TIME] * 4
    assert not _stored(synced_db, src)


class _Defective(dict[str, Any]):
    """Sector rules that fail for one sector, as a defect of ours would."""

    def __getitem__(self, key: str) -> Any:
        if key == "environment":
            raise ZeroDivisionError("a defect for the test")
        return super().__getitem__(key)


def test_an_unexpected_exception_becomes_an_internal_reject(
    synced_db: str, mqtt_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    src, after = unique("env"), unique("after")
    rules = Rules(_Defective(RULES.sectors))
    bad = (f"ioc/v1/environment/{src}/telemetry", orjson.dumps({"values": {"aqi": 20}}))
    with (
        caplog.at_level(logging.ERROR, logger="ioc.ingest.consumer"),
        running_consumer(synced_db, mqtt_url, rules=rules) as consumer,
    ):
        publish_all(mqtt_url, [bad, bad, _good(after)])
        wait_until(lambda: _stored(synced_db, after), what="the good message after the defect")
        rejects = wait_until(lambda: len(r := _rejects(synced_db, src)) == 2 and r, what="rejects")
        assert not consumer.failed
    assert [r[0] for r in rejects] == [reasons.INTERNAL] * 2
    assert "ZeroDivisionError: a defect for the test" in rejects[0][1]
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1  # logged once, the second time one line
    assert len([r for r in caplog.records if "failed again" in r.getMessage()]) == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_network_thread_is_reported(synced_db: str, mqtt_url: str) -> None:
    """If paho's thread dies anyway, `failed` says so, and the worker exits to be restarted."""
    src = unique("dead")
    with running_consumer(synced_db, mqtt_url) as consumer:
        assert not consumer.failed

        def explode(*args: object) -> None:
            raise RuntimeError("a callback paho does not survive")

        consumer._client.on_message = explode
        publish_all(mqtt_url, [_good(src)])
        wait_until(lambda: consumer.failed, what="the consumer to report its dead thread")


# -- generated hostile input ---------------------------------------------------------------

_limits = st.sampled_from(
    [
        "0001-01-01T00:00:00+07:00",
        "0001-01-01T00:00:00-23:59",
        "9999-12-31T23:59:59-07:00",
        "9999-12-31T23:59:59.999999+00:00",
        "1970-01-01T00:00:00Z",
        -1,
        0,
        2**63,
        -(2**63),
        10**400,
        1e308,
        -1e308,
        5e-324,
        253_402_300_800_000,
    ]
)
_floats = st.floats(allow_nan=True, allow_infinity=True) | st.integers(
    min_value=-(10**400), max_value=10**400
)
_names = st.text(max_size=40) | st.sampled_from(
    ["salinity\x00", "\x00", "sal\u202einity", "é" * 300, "x" * 100_000, "\ud800", "a/b:c", ""]
)
_json = st.recursive(
    st.none() | st.booleans() | _floats | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_time = _limits | _floats | st.text(max_size=40) | st.datetimes().map(lambda d: d.isoformat())


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@st.composite
def _hostile(draw: Callable[..., Any], source: str) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["telemetry", "senml", "event", "status", "raw"]))
    sector = draw(st.sampled_from(["water", "environment", "nosuch"]))
    topic = f"ioc/v1/{sector}/{source}/{'telemetry' if kind == 'raw' else kind}"
    if kind == "telemetry":
        values = draw(st.dictionaries(_names, _floats | _json, max_size=3))
        doc: Any = {"ts": draw(_time), "values": values}
        if draw(st.booleans()):
            doc = [doc, {"values": {"salinity": draw(_floats)}}]
    elif kind == "senml":
        doc = [
            {
                "bn": draw(_names),
                "bt": draw(_floats),
                "n": draw(_names),
                "u": draw(st.sampled_from(["Cel", "g/l", "‰", "mm", "%RH", "\x00", ""])),
                "v": draw(_floats),
                "t": draw(_floats),
                "bver": draw(st.integers(min_value=-5, max_value=10**30)),
            }
        ]
    elif kind == "event":
        doc = {
            "kind": draw(_names),
            "severity": draw(st.sampled_from(["info", "warning", "critical", "x"])),
            "title": draw(_names),
            "occurred_at": draw(_time),
            "location": draw(st.one_of(_names, _json)),
            "attributes": draw(_json),
        }
    elif kind == "status":
        return topic, draw(st.binary(max_size=40))
    else:
        return topic, draw(st.binary(max_size=200) | st.just(_deep(draw(st.integers(1, 5000)))))
    try:
        return topic, orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        return topic, repr(doc).encode("utf-8", "surrogatepass")


@settings(
    max_examples=8,
    deadline=None,
    # a few large, hostile payloads per example is the point; each example costs a broker round
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
def test_generated_hostile_messages_never_stop_the_consumer(
    synced_db: str, mqtt_url: str, data: st.DataObject
) -> None:
    src, after = unique("fz"), unique("after")
    messages = data.draw(st.lists(_hostile(src), min_size=10, max_size=30))
    with running_consumer(synced_db, mqtt_url) as consumer:
        publish_all(mqtt_url, [*messages, _good(after)])
        wait_until(lambda: _stored(synced_db, after), what="the good message after the fuzz")
        wait_until(lambda: consumer.writer.pending()[0] == 0, what="the writer to drain")
        assert not consumer.failed
        assert consumer.internal_errors == 0, "a decoder raised on generated input"
        assert consumer.writer.alive
    # everything refused was refused for what it is, never left to the database to refuse
    refused = query(
        synced_db,
        "SELECT reason, detail FROM ingest_reject WHERE reason = %s",
        (reasons.WRITE_FAILED,),
    )
    assert refused == []
