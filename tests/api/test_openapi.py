"""The OpenAPI document is complete: every operation is summarised, described, tagged and
declares its answers; errors are problem+json; keyed operations declare bearer security."""

from __future__ import annotations

from typing import Any

import pytest

from api.app import create_app
from tests.support.api import api_settings

DOC: dict[str, Any] = create_app(api_settings("postgresql://nobody@127.0.0.1:1/none")).openapi()
OPERATIONS = [
    pytest.param(path, method, op, id=f"{method.upper()} {path}")
    for path, ops in DOC["paths"].items()
    for method, op in ops.items()
]


def test_keyed_operations_declare_bearer_security() -> None:
    assert DOC["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


@pytest.mark.parametrize(("path", "method", "op"), OPERATIONS)
def test_every_operation_is_documented(path: str, method: str, op: dict[str, Any]) -> None:
    assert op.get("summary"), "no summary"
    assert op.get("description"), "no description"
    assert op.get("tags"), "no tag"
    answers = op["responses"]
    assert any(code.startswith("2") for code in answers), "no success answer"
    for code, answer in answers.items():
        if code[0] in "45":
            assert list(answer["content"]) == ["application/problem+json"], code
    public = path.startswith("/api/v1/cap/") or not path.startswith("/api/v1/")
    assert bool(op.get("security")) is not public, "security declared where no key is asked"
    if not public:
        assert {"401", "403", "429"} <= set(answers)
    body = op.get("requestBody", {}).get("content", {}).get("application/json")
    if body is not None:
        schema = body["schema"]
        if "$ref" in schema:
            schema = DOC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        fields = schema.get("properties", {}).values()
        assert (
            body.get("example")
            or body.get("examples")
            or schema.get("examples")
            or (fields and all("examples" in f for f in fields))
        ), "the request body has no example"
