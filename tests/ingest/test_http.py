"""The HTTP ingest entry: same decoding, validation, reject table and writer as MQTT."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from ingest import reasons
from ingest.http import HttpIngest
from ingest.writer import Writer
from ioc.errors import IngestError
from tests.support.ingest import RULES, query, sync


@pytest.fixture
async def pipeline(db_url: str) -> AsyncIterator[HttpIngest]:
    sync(db_url)
    writer = Writer(db_url)
    writer.start()
    yield HttpIngest(writer, RULES, max_payload_bytes=4096)
    await asyncio.to_thread(writer.stop)


async def test_counts_of_accepted_and_rejected_readings(pipeline: HttpIngest, db_url: str) -> None:
    payload = orjson.dumps(
        {"values": {"salinity": 1.5, "water_level": 1.1, "bogus": 2, "rainfall_24h": "lots"}}
    )
    result = await pipeline.ingest(sector="water", source_id="agency-1", payload=payload)
    assert (result.accepted, result.rejected) == (2, 2)
    assert result.reasons == {reasons.UNKNOWN_METRIC: 1, reasons.NOT_NUMERIC: 1}
    assert query(db_url, "SELECT count(*) FROM reading_named WHERE source_id = 'agency-1'") == [
        (2,)
    ]
    assert query(db_url, "SELECT count(*) FROM ingest_reject WHERE source_id = 'agency-1'") == [
        (2,)
    ]


async def test_concurrent_posts_share_batches_and_all_commit(
    pipeline: HttpIngest, db_url: str
) -> None:
    posts = [
        pipeline.ingest(
            sector="environment",
            source_id=f"aq-{i}",
            payload=orjson.dumps({"values": {"aqi": 50 + i, "pm25": 10}}),
        )
        for i in range(40)
    ]
    results = await asyncio.gather(*posts)
    assert sum(r.accepted for r in results) == 80
    assert query(db_url, "SELECT count(*) FROM reading") == [(80,)]
    assert pipeline.writer.batches < 40  # they were batched together


async def test_senml_events_and_whole_message_rejects(pipeline: HttpIngest, db_url: str) -> None:
    senml = orjson.dumps([{"bn": "tram-9:", "n": "salinity", "v": 4.4}])
    result = await pipeline.ingest(sector="water", source_id="tram-9", kind="senml", payload=senml)
    assert result.accepted == 1
    event = orjson.dumps({"kind": "flood", "severity": "critical", "title": "Ngập"})
    stored = await pipeline.ingest(sector="water", source_id="tram-9", kind="event", payload=event)
    assert stored.event_id is not None
    again = await pipeline.ingest(sector="water", source_id="tram-9", kind="event", payload=event)
    assert again.event_id is None  # the same report twice is stored once
    big = await pipeline.ingest(sector="water", source_id="tram-9", payload=b" " * 5000)
    assert big.reasons == {reasons.TOO_LARGE: 1}
    nowhere = await pipeline.ingest(sector="mars", source_id="x", payload=b'{"values": {"a": 1}}')
    assert nowhere.reasons == {reasons.UNKNOWN_SECTOR: 1}
    assert query(db_url, "SELECT count(*) FROM event") == [(1,)]


async def test_a_stopped_pipeline_says_so(pipeline: HttpIngest) -> None:
    await asyncio.to_thread(pipeline.writer.stop)
    with pytest.raises(IngestError) as err:
        await pipeline.ingest(sector="water", source_id="t", payload=b'{"values": {"salinity": 1}}')
    assert err.value.reason == "unavailable"
