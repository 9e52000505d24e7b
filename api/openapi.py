"""The OpenAPI document, made consistent in one place: every error answer is declared as
`application/problem+json` with the Problem schema, every route behind a key declares its
bearer security and its 401, 403 and 429 answers, and every route that takes input its 422."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fastapi.routing
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from api.auth import require
from api.problems import PROBLEM_JSON, ProblemBody

_REF_TEMPLATE = "#/components/schemas/{model}"
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_AUTH_ANSWERS = {
    "401": "No valid API key (send `Authorization: Bearer ioc_…`)",
    "403": "The key's role, or its sectors, do not allow this",
    "429": "Too many requests for this agency key; retry after `Retry-After` seconds",
}


def api_routes(app: FastAPI) -> Iterator[tuple[str, set[str], APIRoute]]:
    """(full path, methods, route) of every API route, through included routers."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if contexts is None:  # FastAPI before routers kept their inclusion (app.routes is flat)
        for route in app.routes:
            if isinstance(route, APIRoute):
                yield route.path, set(route.methods or ()), route
        return
    for context in contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute):
            yield str(context.path), set(route.methods or ()), route


def needs_key(route: APIRoute) -> require | None:
    """The permission check a route depends on, if any."""
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, require):
            return dep.call
        stack.extend(dep.dependencies)
    return None


def _takes_input(op: dict[str, Any]) -> bool:
    return bool(op.get("parameters") or op.get("requestBody"))


def install(app: FastAPI) -> None:
    """Replace `app.openapi` with the normalised document (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        components = doc.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas["Problem"] = ProblemBody.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        schemas.update(schemas["Problem"].pop("$defs", {}))
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "ioc_<prefix>_<secret>"}
        }
        keyed = {
            (method.lower(), path)
            for path, methods, route in api_routes(app)
            if needs_key(route) is not None
            for method in methods
        }
        for path, ops in doc.get("paths", {}).items():
            for method, op in ops.items():
                responses: dict[str, Any] = op.setdefault("responses", {})
                if (method, path) in keyed:
                    op["security"] = [{"bearer": []}]
                    for code, text in _AUTH_ANSWERS.items():
                        responses.setdefault(code, {"description": text})
                if _takes_input(op):
                    responses.setdefault("422", {"description": "Invalid request"})
                if method in ("post", "put", "patch"):
                    responses.setdefault("413", {"description": "Request body too large"})
                for code, answer in responses.items():
                    if code[0] in "45":
                        if answer.get("description") == "Validation Error":
                            answer["description"] = "Invalid request: `errors` names each field"
                        answer["content"] = {PROBLEM_JSON: {"schema": _PROBLEM_REF}}
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
