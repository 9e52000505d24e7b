"""API keys: made once and shown once, stored under a keyed hash, found by their prefix.

A key is `ioc_<prefix>_<secret>`: 8 characters of lookup prefix (stored in clear, unique,
shown in listings and the audit log) and 32 bytes of random secret. Such a secret cannot be
guessed, so a slow password hash buys nothing; HMAC-SHA256 under a server-side pepper
(`IOC_API_KEY_PEPPER`) keeps a stolen table useless without the pepper and costs microseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ioc.audit import record_audit
from ioc.errors import InvalidInput
from ioc.vocabulary import Role

KEY_PREFIX = "ioc_"
_PREFIX_LEN = 8
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


class ApiKeyError(InvalidInput):
    """A key that cannot be made or found as asked."""


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    id: int
    name: str
    prefix: str
    role: Role
    sectors: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def actor(self) -> str:
        """How the audit log names the holder of this key."""
        return f"key:{self.prefix}:{self.name}"


def _from_row(row: dict[str, Any]) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        role=Role(row["role"]),
        sectors=tuple(row["sectors"] or ()),
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


def digest(pepper: str, secret: str) -> str:
    """The stored form of a key's secret part."""
    return hmac.new(pepper.encode(), secret.encode(), hashlib.sha256).hexdigest()


def split(token: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed key, else None."""
    if not token.startswith(KEY_PREFIX):
        return None
    prefix, sep, secret = token[len(KEY_PREFIX) :].partition("_")
    if not sep or len(prefix) != _PREFIX_LEN or not 20 <= len(secret) <= 100:
        return None
    return prefix, secret


_COLUMNS = "id, name, prefix, role, sectors, created_at, last_used_at, revoked_at"


def create_key(
    conn: psycopg.Connection[Any],
    *,
    name: str,
    role: Role | str,
    sectors: Sequence[str] = (),
    pepper: str,
    actor: str,
) -> tuple[ApiKey, str]:
    """Store a new key and return it with its full text, which is never shown again."""
    role = Role(role)
    name = name.strip()
    if not name:
        raise ApiKeyError("a key needs a name")
    wanted = sorted(set(sectors))
    if role is Role.AGENCY and not wanted:
        raise ApiKeyError("an agency key needs its sectors (--sectors a,b)")
    if wanted:
        known = {r[0] for r in conn.execute("SELECT id FROM sector WHERE id = ANY(%s)", (wanted,))}
        unknown = [s for s in wanted if s not in known]
        if unknown:
            raise ApiKeyError(f"unknown sector(s): {', '.join(unknown)}")
    prefix = "".join(secrets.choice(_ALPHABET) for _ in range(_PREFIX_LEN))
    secret = secrets.token_urlsafe(32)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"INSERT INTO api_key (name, prefix, key_hash, role, sectors) "
            f"VALUES (%s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (name, prefix, digest(pepper, secret), role.value, wanted),
        )
        row = cur.fetchone()
    assert row is not None
    key = _from_row(row)
    record_audit(
        conn,
        actor=actor,
        action="key.create",
        target=f"key:{key.prefix}",
        detail={"name": name, "role": role.value, "sectors": wanted},
    )
    return key, f"{KEY_PREFIX}{prefix}_{secret}"


def list_keys(conn: psycopg.Connection[Any], *, include_revoked: bool = False) -> list[ApiKey]:
    """Every key, oldest first."""
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM api_key{where} ORDER BY id")
        return [_from_row(r) for r in cur.fetchall()]


def revoke_key(conn: psycopg.Connection[Any], *, prefix: str, actor: str) -> ApiKey:
    """Revoke the key with this prefix (or its full text); it stops working at once."""
    if (parts := split(prefix)) is not None:
        prefix = parts[0]
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"UPDATE api_key SET revoked_at = coalesce(revoked_at, now()) WHERE prefix = %s "
            f"RETURNING {_COLUMNS}",
            (prefix,),
        )
        row = cur.fetchone()
    if row is None:
        raise ApiKeyError(f"no key with prefix {prefix!r}")
    key = _from_row(row)
    record_audit(conn, actor=actor, action="key.revoke", target=f"key:{key.prefix}")
    return key


def replace_named_key(
    conn: psycopg.Connection[Any], *, name: str, role: Role | str, pepper: str, actor: str
) -> tuple[ApiKey, str]:
    """Revoke the live keys called `name` and make a new one (`ioc demo`'s key each start)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT prefix FROM api_key WHERE name = %s AND revoked_at IS NULL", (name,))
        for row in cur.fetchall():
            revoke_key(conn, prefix=row["prefix"], actor=actor)
    return create_key(conn, name=name, role=role, pepper=pepper, actor=actor)
