"""Policy changes (e.g. a calibrated ``accept_at``): recorded with who, when and why,
and applied over keel.yaml when Keel starts. keel.yaml stays the declared default;
the store holds what the control plane changed since."""

from __future__ import annotations

import time
from typing import Any

import orjson

from keel.store.db import Store

FIELDS = frozenset({"accept_at", "refuse_below"})


def record_policy_change(store: Store, feature: str, field: str, old: float | None,
                         new: float, *, actor: str, source: str, details: dict[str, Any]) -> None:
    if field not in FIELDS:
        raise ValueError(f"unknown policy field {field!r}")
    from keel.control import audit  # here: the gateway imports this module, never the control plane

    conn = store.connect()
    try:
        with conn:
            store.lock(conn, "audit")
            conn.execute(
                "INSERT INTO policy_changes (feature, field, old_value, new_value, actor, source,"
                " details, ts) VALUES (?,?,?,?,?,?,?,?)",
                (feature, field, old, new, actor, source, orjson.dumps(details).decode(), time.time()))
            audit.append(conn, actor, "policy.change", f"{feature}/policy.{field}",
                         {"from": old, "to": new, "source": source})
    finally:
        conn.close()


def policy_overrides(store: Store) -> dict[str, dict[str, float]]:
    """The latest value of each changed field, per feature."""
    conn = store.connect()
    try:
        rows = conn.execute(
            "SELECT feature, field, new_value FROM policy_changes ORDER BY ts, id").fetchall()
    finally:
        conn.close()
    out: dict[str, dict[str, float]] = {}
    for feature, field, value in rows:
        out.setdefault(feature, {})[field] = value
    return out


def policy_history(store: Store, feature: str) -> list[dict[str, Any]]:
    conn = store.connect()
    try:
        rows = conn.execute("SELECT * FROM policy_changes WHERE feature = ? ORDER BY ts, id",
                            (feature,)).fetchall()
    finally:
        conn.close()
    return [{**dict(r), "details": orjson.loads(r["details"])} for r in rows]
