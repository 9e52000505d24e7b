"""The OpenAPI contract, fuzzed: schemathesis generates requests for every operation of the
app's own schema against a real server; no answer may be a 5xx, have an undeclared content
type, or break its declared schema. Examples per operation: IOC_CONTRACT_EXAMPLES (default 40)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

from api.app import create_app
from tests.support.api import api_settings, bearer, make_key
from tests.support.ingest import sync
from tests.support.server import served
from tests.support.services import create_database, drop_database, unique_name

EXAMPLES = int(os.environ.get("IOC_CONTRACT_EXAMPLES", "40"))

schema = schemathesis.openapi.from_dict(
    create_app(api_settings("postgresql://nobody@127.0.0.1:1/none")).openapi()
)


@pytest.fixture(scope="module")
def server(pg_server: str, template_db: str) -> Iterator[tuple[str, dict[str, str]]]:
    name = unique_name("ioc_contract")
    url = create_database(pg_server, name, template=template_db)
    try:
        sync(url)
        headers = bearer(make_key(url, "admin"))
        with served(url, api_rate_limit_per_min=1_000_000) as base:
            yield base, headers
    finally:
        drop_database(pg_server, name)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_operation_keeps_its_contract(
    case: schemathesis.Case, server: tuple[str, dict[str, str]]
) -> None:
    base, headers = server
    case.call_and_validate(
        base_url=base,
        headers=headers,
        checks=[not_a_server_error, content_type_conformance, response_schema_conformance],
        timeout=30,
    )
