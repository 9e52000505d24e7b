"""Keyset pagination: a list answers at most `limit` items and an opaque cursor for the next."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel, Field
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.elements import ColumnElement

from api.problems import Problem

T = TypeVar("T")
S = TypeVar("S", bound="Select[*tuple[Any, ...]]")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class Page(BaseModel, Generic[T]):
    """One page of a list; pass `next_cursor` as `cursor` for the next (null: the last page)."""

    items: list[T]
    next_cursor: str | None = Field(default=None, examples=[None])


def encode(values: Sequence[Any]) -> str:
    """The cursor of a row, from its sort key."""
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(orjson.dumps(plain)).decode().rstrip("=")


def decode(cursor: str, kinds: Sequence[type]) -> list[Any]:
    """The sort key a cursor holds; a malformed cursor is a 422."""
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(raw, list) or len(raw) != len(kinds):
            raise ValueError("wrong length")
        out: list[Any] = []
        for value, kind in zip(raw, kinds, strict=True):
            if value is None:
                out.append(None)
            elif kind is datetime:
                parsed = datetime.fromisoformat(value)
                if parsed.tzinfo is None:
                    raise ValueError("naive time")
                out.append(parsed)
            elif kind is int:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError("not an integer")
                out.append(value)
            else:
                out.append(kind(value))
        return out
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise Problem(
            422,
            "Invalid request",
            f"query.cursor: not a cursor of this list ({exc})",
            kind="validation",
        ) from None


def after(
    stmt: S,
    columns: Sequence[ColumnElement[Any] | InstrumentedAttribute[Any]],
    key: Sequence[Any] | None,
    *,
    descending: bool,
) -> S:
    """Rows strictly after `key` in the order of `columns` (all ascending or all descending;
    the last column is unique and never null)."""
    order = [c.desc() if descending else c.asc() for c in columns]
    stmt = stmt.order_by(*order)
    if key is None:
        return stmt
    clauses: list[ColumnElement[bool]] = []
    for i, (column, value) in enumerate(zip(columns, key, strict=True)):
        equal = [c == v for c, v in zip(columns[:i], key[:i], strict=True)]
        step = column < value if descending else column > value
        clauses.append(and_(*equal, step))
    return stmt.where(or_(*clauses))


def page(rows: Sequence[T], limit: int, key_of: Any) -> tuple[list[T], str | None]:
    """Cut a fetch of `limit + 1` rows into a page and the cursor of the next one."""
    items = list(rows[:limit])
    if len(rows) <= limit:
        return items, None
    return items, encode(key_of(items[-1]))
