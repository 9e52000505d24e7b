"""Prometheus metrics: request latency by route template, and figures read from the database."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import Api
from tests.support.ingest import query


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_count_requests_by_route_template_and_read_the_database(api: Api) -> None:
    query(
        api.db_url,
        "INSERT INTO source (id, sector_id, status) VALUES ('m-1', 'water', 'online'), "
        "('m-2', 'water', 'offline')",
    )
    query(
        api.db_url,
        "INSERT INTO alert (cause_key, sector_id, severity, status, title) VALUES "
        "('t:1', 'water', 'critical', 'open', 'x'), ('t:2', 'water', 'warning', 'acknowledged', "
        "'y'), ('t:3', 'water', 'warning', 'resolved', 'z')",
    )
    admin = api.as_("admin")
    for event_id in (11, 12):  # two paths, one route template
        await api.http.get(f"/api/v1/events/{event_id}", headers=admin)
    answer = await api.http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples = _samples(answer.text)
    count = samples[
        (
            "ioc_http_request_seconds_count",
            (("method", "GET"), ("route", "/api/v1/events/{event_id}"), ("status", "404")),
        )
    ]
    assert count >= 2
    assert samples[("ioc_alerts_active", (("severity", "critical"), ("status", "open")))] == 1
    assert (
        samples[("ioc_alerts_active", (("severity", "warning"), ("status", "acknowledged")))] == 1
    )
    assert not any(
        name == "ioc_alerts_active" and ("status", "resolved") in labels for name, labels in samples
    )
    assert samples[("ioc_sources", (("sector", "water"), ("status", "offline")))] == 1
