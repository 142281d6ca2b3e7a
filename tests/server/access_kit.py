"""What the access tests share: a Keel with two features (``f`` and ``g``) and a key
per role, plus feature-limited ones."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from keel.control import keys
from keel.gateway import Keel
from keel.server import create_app
from keel.spec import KeelSpec, parse_spec
from keel.store import Store
from tests.conftest import basic_feature, settings_in

ROLES: tuple[keys.Role, ...] = keys.ROLES
LIMITED = {"app_f": ("app", ["f"]), "viewer_f": ("viewer", ["f"]),
           "reviewer_f": ("reviewer", ["f"]), "admin_f": ("admin", ["f"])}


def two_features() -> KeelSpec:
    return parse_spec({"providers": {"p1": {"type": "scripted"}, "p2": {"type": "scripted"}},
                       "features": {"f": basic_feature(), "g": basic_feature()}})


def make_keel(tmp_path: Path, **settings: Any) -> Keel:
    return Keel(two_features(), replace(settings_in(tmp_path), **settings))


def create_keys(store: Store) -> dict[str, str]:
    """name -> key: one per role (named after it) and the LIMITED ones."""
    out = {}
    for role in ROLES:
        out[role] = keys.create(store, role, role, actor="test")[1]
    for name, (role, features) in LIMITED.items():
        out[name] = keys.create(store, name, role, features, actor="test")[1]
    return out


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@asynccontextmanager
async def served(keel: Keel) -> AsyncIterator[httpx.AsyncClient]:
    async with keel, httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(keel)),
                                       base_url="http://keel") as client:
        yield client


def walk(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path template) of every route of an app, included routers too."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:  # FastAPI's lazily included router
            context = getattr(route, "include_context", None)
            yield from walk([*inner.routes, *getattr(inner, "_low_priority_routes", [])],
                            prefix + getattr(context, "prefix", ""))
            continue
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                yield method, prefix + route.path
