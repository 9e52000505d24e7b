"""The audit trail: who changed what, written in the same transaction as the change."""

from __future__ import annotations

import getpass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

INSERT_AUDIT = "INSERT INTO audit_log (actor, action, target, detail) VALUES (%s, %s, %s, %s)"


def record_audit(
    conn: psycopg.Connection[Any],
    *,
    actor: str,
    action: str,
    target: str | None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add one audit row inside the caller's transaction."""
    conn.execute(INSERT_AUDIT, (actor, action, target, Jsonb(detail or {})))


def cli_actor() -> str:
    """The actor name of a change made with the `ioc` command on this machine."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}"
