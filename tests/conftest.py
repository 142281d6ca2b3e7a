"""Shared fixtures. ``ScriptedProvider`` is an in-process provider whose answers and
failures a test scripts; it is registered under the provider type ``scripted``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from keel.errors import ProviderError
from keel.gateway import Keel
from keel.providers.base import ProviderRequest
from keel.settings import Settings
from keel.spec import KeelSpec, ProviderSpec, parse_spec
from keel.types import Completion, Delta, Embeddings, Usage
from tests import backends

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"

Script = Completion | ProviderError | float  # a float: hang for that many seconds
# a stream script: deltas to yield, with a ProviderError or float (hang) anywhere in it
StreamScript = list[Delta | ProviderError | float]


class ScriptedProvider:
    """Answers from a queue of scripted results; the default answer when it is empty."""

    def __init__(self, name: str, spec: ProviderSpec) -> None:
        self.name = name
        self.spec = spec
        self.script: list[Script] = []
        self.default: Completion = Completion(output={"label": "a"}, confidence=0.9,
                                              usage=Usage(10, 2))
        self.requests: list[ProviderRequest] = []
        self.streams: list[StreamScript] = []
        self.default_stream: StreamScript = [Delta(text="hel"), Delta(text="lo"),
                                             Delta(finish_reason="stop", usage=Usage(5, 2))]
        self.started = self.closed = False
        self.streams_closed = 0

    async def start(self) -> None:
        self.started = True

    async def prepare(self, request: ProviderRequest) -> None:
        pass

    async def complete(self, request: ProviderRequest) -> Completion:
        self.requests.append(request)
        item = self.script.pop(0) if self.script else self.default
        if isinstance(item, float):
            await asyncio.sleep(item)
            return self.default
        if isinstance(item, ProviderError):
            raise item
        return item

    async def stream(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        self.requests.append(request)
        script = self.streams.pop(0) if self.streams else list(self.default_stream)
        try:
            for item in script:
                if isinstance(item, float):
                    await asyncio.sleep(item)
                elif isinstance(item, ProviderError):
                    raise item
                else:
                    yield item
        finally:
            self.streams_closed += 1

    async def embed(self, request: ProviderRequest, texts: list[str]) -> Embeddings:
        self.requests.append(request)
        item = self.script.pop(0) if self.script else None
        if isinstance(item, ProviderError):
            raise item
        return Embeddings([[float(len(t)), 1.0] for t in texts], Usage(len(texts), 0), "emb")

    async def close(self) -> None:
        self.closed = True


def spec_with(feature: dict[str, Any], providers: dict[str, Any] | None = None) -> KeelSpec:
    providers = providers or {"p1": {"type": "scripted"}, "p2": {"type": "scripted"}}
    return parse_spec({"providers": providers, "features": {"f": feature}})


def basic_feature(**overrides: Any) -> dict[str, Any]:
    feature: dict[str, Any] = {
        "output": {"kind": "label", "labels": ["a", "b"]},
        "versions": {"v1": {"provider": "p1", "model": "m1", "timeout_s": 0.5},
                     "v2": {"provider": "p2", "model": "m2", "timeout_s": 0.5}},
        "aliases": {"champion": "v1"},
        "fallbacks": ["v2"],
        "retry": {"max_retries": 1, "backoff_s": 0.001, "max_backoff_s": 0.01},
        "validators": [{"type": "allowed_labels", "on_fail": "refuse"}],
        "policy": {"accept_at": 0.5, "refuse_below": 0.1},
        "safe_default": {"label": "unknown"},
    }
    feature.update(overrides)
    return feature


def settings_in(tmp_path: Path) -> Settings:
    return Settings(database=tmp_path / "keel.db",
                    extra_provider_types={"scripted": "tests.conftest:ScriptedProvider"})


@pytest.fixture
async def scripted_keel(tmp_path: Path) -> AsyncIterator[Keel]:
    keel = Keel(spec_with(basic_feature()), settings_in(tmp_path))
    async with keel:
        yield keel


def scripted(keel: Keel, name: str) -> ScriptedProvider:
    provider = keel.providers[name]
    assert isinstance(provider, ScriptedProvider)
    return provider


# --- backends: pytest --backend postgres runs the suite on PostgreSQL (tests/backends.py)

def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backend", choices=("sqlite", "postgres"),
                     default=os.environ.get("KEEL_TEST_BACKEND", "sqlite"),
                     help="the store the suite runs against (default: sqlite)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: reads the SQLite file itself")
    backends.BACKEND = config.getoption("--backend")
    if config.getoption("--backend") == "postgres":
        _drop_test_schemas(stale_only=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    if config.getoption("--backend") == "postgres":
        _drop_test_schemas(stale_only=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--backend") != "postgres":
        return
    skip = pytest.mark.skip(reason="reads the SQLite file itself (runs in the sqlite pass)")
    for item in items:
        if "sqlite_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend under test: "sqlite" or "postgres"."""
    return str(request.config.getoption("--backend"))


def _drop_test_schemas(*, stale_only: bool) -> None:
    """This run's schemas (at the end), or those of runs whose process is gone."""
    import psycopg

    with psycopg.connect(backends.POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                            (backends.SCHEMA_PREFIX + "%",)).fetchall()
        for (name,) in rows:
            pid = name.removeprefix(backends.SCHEMA_PREFIX).split("_")[0]
            mine = name.startswith(backends.RUN_PREFIX)
            alive = pid.isdigit() and Path(f"/proc/{pid}").exists()
            if (mine and not stale_only) or (stale_only and not alive):
                conn.execute(f'DROP SCHEMA "{name}" CASCADE')


@pytest.fixture(autouse=True)
def _backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
             tmp_path: Path) -> Iterator[None]:
    if request.config.getoption("--backend") != "postgres":
        yield
        return
    original = Settings.__init__

    def init(self: Settings, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if self.database_url is None:
            object.__setattr__(self, "database_url", backends.url_for(self.database))

    monkeypatch.setattr(Settings, "__init__", init)
    # servers and CLIs the test starts as subprocesses: the test's main database
    monkeypatch.setenv("KEEL_DATABASE_URL", backends.url_for(tmp_path / "keel.db"))
    from keel.store.postgres import PostgresStore

    opened: list[PostgresStore] = []
    original_store_init = PostgresStore.__init__

    def store_init(self: PostgresStore, *args: Any, **kwargs: Any) -> None:
        original_store_init(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(PostgresStore, "__init__", store_init)
    yield
    for store in opened:  # their idle connections: PostgreSQL allows only so many
        store.close()
