"""RFC 9457 problem details: every error the API answers is `application/problem+json`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import psycopg
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ioc.errors import Conflict, IngestError, InvalidInput, IocError, NotFound, QueryError

log = logging.getLogger("ioc.api")

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "urn:ioc:problem:"
RETRY_AFTER_S = 5


class FieldError(BaseModel):
    """One invalid part of a request."""

    field: str = Field(examples=["query.bucket"])
    message: str = Field(examples=["unknown bucket '7m'"])


class ProblemBody(BaseModel):
    """An error, per RFC 9457."""

    type: str = Field(default="about:blank", examples=["urn:ioc:problem:validation"])
    title: str = Field(examples=["Invalid request"])
    status: int = Field(examples=[422])
    detail: str = Field(examples=["query.bucket: unknown bucket '7m'"])
    errors: list[FieldError] | None = None


class Problem(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        kind: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.kind = kind
        self.headers = dict(headers or {})
        self.extra = extra


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    kind: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The response of a problem."""
    body = {
        "type": PROBLEM_BASE + kind if kind else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc) or "body"


def validation_problem(errors: list[FieldError]) -> JSONResponse:
    """422 naming every invalid field."""
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
    return problem_response(
        422,
        "Invalid request",
        detail,
        kind="validation",
        errors=[e.model_dump() for e in errors],
    )


# how each error of ours reads over HTTP: status, title, problem type (first match wins)
_IOC_ERRORS: tuple[tuple[type[IocError], int, str, str], ...] = (
    (NotFound, 404, "Not Found", "not-found"),
    (Conflict, 409, "Conflict", "conflict"),
    (InvalidInput, 422, "Invalid request", "validation"),
    (QueryError, 422, "Invalid query", "validation"),
)


def install(app: FastAPI) -> None:
    """Answer every error as problem+json."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            exc.status, exc.title, exc.detail, kind=exc.kind, headers=exc.headers, **exc.extra
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = HTTPStatus(exc.status_code).phrase
        return problem_response(
            exc.status_code, title, str(exc.detail), headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            FieldError(field=_field(e.get("loc", ())), message=str(e.get("msg", "invalid")))
            for e in exc.errors()
        ]
        return validation_problem(errors)

    @app.exception_handler(IocError)
    async def _ioc(request: Request, exc: IocError) -> JSONResponse:
        if isinstance(exc, IngestError):  # the pipeline is stopping or the database is down
            return problem_response(
                503,
                "Service Unavailable",
                str(exc),
                kind="unavailable",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        for cls, status, title, kind in _IOC_ERRORS:
            if isinstance(exc, cls):
                return problem_response(status, title, str(exc), kind=kind)
        log.error("request failed", exc_info=exc, extra={"path": request.url.path})
        return problem_response(500, "Internal Server Error", "the server failed; see its log")

    @app.exception_handler(psycopg.DataError)
    @app.exception_handler(sqlalchemy.exc.DataError)
    async def _data(request: Request, exc: Exception) -> JSONResponse:
        # a value the database cannot hold (NUL in text, a number out of range): the input's
        cause = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        return problem_response(
            422,
            "Invalid request",
            f"a value cannot be stored or compared: {first}",
            kind="validation",
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc, extra={"path": request.url.path})
        return problem_response(500, "Internal Server Error", "the server failed; see its log")


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ProblemBody, "content": {PROBLEM_JSON: {}}, "description": text}
    for status, text in (
        (401, "No valid API key"),
        (403, "The key's role or sectors do not allow this"),
        (422, "Invalid request"),
        (429, "Too many requests for this key"),
    )
}
"""Error answers every authenticated route can give (for the OpenAPI document)."""
