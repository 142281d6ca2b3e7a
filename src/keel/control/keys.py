"""API keys in the store: created (and shown) once, kept only as a sha256 digest, listed
by id and prefix, revoked. Every creation and revocation is an audit row.

A key is ``keel_`` and 43 URL-safe characters (256 random bits), so a plain sha256 is
enough to store it: nothing can be guessed back from the digest. Its id, the first 12
hex digits of the digest, is what events, ledgers and listings show. Keys in
``KEEL_API_KEYS`` (:attr:`keel.settings.Settings.api_keys`) are never stored; they act
as admin keys with the same kind of id.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson

from keel.control import audit
from keel.errors import InvalidRequest, KeyExists, KeyNotFound
from keel.store.db import Connection, Store
from keel.types import JSON

Role = Literal["admin", "app", "reviewer", "viewer"]
ROLES: tuple[Role, ...] = get_args(Role)
ROLE_HELP: dict[Role, str] = {
    "admin": "everything: the control plane, keys, the audit trail, and all the rest",
    "app": "call features: /v1/* (feature calls, chat completions, embeddings), feedback",
    "reviewer": "the review queue: /api/reviews* and the /review page",
    "viewer": "read only: GET of the dashboard's data, stats, events, versions, rollouts, "
              "datasets, drift, SLOs, budgets, and /metrics",
}
PREFIX = "keel_"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$")
_COLUMNS = ("id, digest, prefix, name, role, features, created_by, created_at, revoked_by,"
            " revoked_at")


def digest(key: str | bytes) -> str:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


def key_id(key: str | bytes) -> str:
    """The short id of a key: the first 12 hex digits of its sha256."""
    return digest(key)[:12]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: the key it came with (or ``anonymous`` with no keys at all)."""

    id: str
    name: str
    role: Role
    features: frozenset[str] | None = None  # None: every feature

    @property
    def actor(self) -> str:
        """How the audit trail and the control plane record this caller."""
        return f"key:{self.name}"

    def allows_feature(self, feature: str) -> bool:
        return self.features is None or feature in self.features


ANONYMOUS = Principal("", "anonymous", "admin")  # no keys exist, on a loopback address


def env_principal(key: str) -> Principal:
    """A key from KEEL_API_KEYS: an admin named by its id (the actor the control plane
    recorded for such keys before there were names)."""
    kid = key_id(key)
    return Principal(kid, kid, "admin")


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    prefix: str
    name: str
    role: Role
    features: tuple[str, ...] | None
    created_by: str
    created_at: float
    revoked_by: str | None
    revoked_at: float | None

    @property
    def principal(self) -> Principal:
        return Principal(self.id, self.name, self.role,
                         None if self.features is None else frozenset(self.features))

    def to_json(self) -> dict[str, JSON]:
        return {"id": self.id, "prefix": self.prefix, "name": self.name, "role": self.role,
                "features": None if self.features is None else list(self.features),
                "created_by": self.created_by, "created_at": self.created_at,
                "revoked_by": self.revoked_by, "revoked_at": self.revoked_at,
                "active": self.revoked_at is None}


def _key(row: Any) -> ApiKey:
    features = None if row["features"] is None else tuple(orjson.loads(row["features"]))
    return ApiKey(row["id"], row["prefix"], row["name"], row["role"], features,
                  row["created_by"], row["created_at"], row["revoked_by"], row["revoked_at"])


def check_role(role: str) -> Role:
    for known in ROLES:
        if role == known:
            return known
    raise InvalidRequest(f"unknown role {role!r}: use one of {', '.join(ROLES)}", param="role")


def _check(name: str, features: Iterable[str] | None) -> tuple[str, ...] | None:
    if not NAME.match(name):
        raise InvalidRequest(f"key name {name!r} must be 1-64 letters, digits, '.', '_', '@', "
                             "':' or '-', starting with a letter or digit", param="name")
    if features is None:
        return None
    out = tuple(sorted(set(features)))
    if not out or any(not f for f in out):
        raise InvalidRequest("features, when given, must be a non-empty list of feature names",
                             param="features")
    return out


def create(store: Store, name: str, role: str, features: Sequence[str] | None = None, *,
           actor: str) -> tuple[ApiKey, str]:
    """A new key: its record and the key itself, which is not kept (show it once)."""
    checked_role, scoped = check_role(role), _check(name, features)
    secret = PREFIX + secrets.token_urlsafe(32)
    full = digest(secret)
    record = ApiKey(full[:12], secret[:len(PREFIX) + 4], name, checked_role, scoped, actor,
                    time.time(), None, None)
    with store.connection() as conn, conn:
        store.lock(conn, "audit")
        if conn.execute("SELECT 1 FROM api_keys WHERE name = ? AND revoked_at IS NULL",
                        (name,)).fetchone():
            raise KeyExists(f"a live key is already named {name!r}: pick another name, or "
                            "revoke that key first (`keel keys list` shows it)")
        conn.execute(
            f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (record.id, full, record.prefix, name, checked_role,
             None if scoped is None else orjson.dumps(list(scoped)).decode(), actor,
             record.created_at, None, None))
        audit.append(conn, actor, "key.create", f"key:{record.id}",
                     {"name": name, "role": checked_role, "features": scoped})
    return record, secret


def revoke(store: Store, kid: str, *, actor: str) -> ApiKey:
    """Revoke a key by id (or by its unique name); revoking it again changes nothing.
    Servers stop taking it within their key cache's lifetime (a few seconds)."""
    now = time.time()
    with store.connection() as conn, conn:
        store.lock(conn, "audit")
        row = _find(conn, kid)
        if row["revoked_at"] is not None:
            return _key(row)
        conn.execute("UPDATE api_keys SET revoked_by = ?, revoked_at = ? WHERE id = ?",
                     (actor, now, row["id"]))
        audit.append(conn, actor, "key.revoke", f"key:{row['id']}",
                     {"name": row["name"], "role": row["role"]})
        return _key(_find(conn, row["id"]))


def _find(conn: Connection, kid: str) -> Any:
    row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (kid,)).fetchone()
    if row is None:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE name = ?"
                            " ORDER BY revoked_at IS NULL DESC, created_at DESC",
                            (kid,)).fetchall()
        row = rows[0] if rows else None
    if row is None:
        raise KeyNotFound(f"no API key with id or name {kid!r}; `keel keys list` shows them")
    return row


def list_keys(store: Store, *, include_revoked: bool = False) -> list[ApiKey]:
    sql = f"SELECT {_COLUMNS} FROM api_keys"
    if not include_revoked:
        sql += " WHERE revoked_at IS NULL"
    with store.connection() as conn:
        return [_key(r) for r in conn.execute(sql + " ORDER BY created_at, id").fetchall()]


def live_digests(store: Store) -> dict[str, Principal]:
    """digest -> principal of every live key: what a server's key cache holds."""
    with store.connection() as conn:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE revoked_at IS NULL").fetchall()
    return {r["digest"]: _key(r).principal for r in rows}
