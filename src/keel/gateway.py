"""The app object: settings, compiled features, providers, the store and its writer.

``Keel`` is the async core every surface uses (HTTP server, CLI, library).
:class:`SyncKeel` is the thin blocking facade over the same object.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import anyio.from_thread

from keel.errors import ConfigError, KeelError
from keel.feature import Feature
from keel.pipeline import Pipeline
from keel.pricing import Pricing
from keel.providers import Provider, build_provider
from keel.settings import Settings
from keel.spec import KeelSpec, ProviderSpec, load_spec
from keel.stages.circuit import Circuits
from keel.stages.record import EventWriter
from keel.store import SQLiteStore
from keel.streaming import StreamStart
from keel.types import JSON, Call, Delta, Outcome


class TraceIds:
    """128-bit random trace ids (W3C trace-context width). A seeded PRNG, not
    os.urandom per call: the syscall costs ~50 µs on some sandboxed kernels."""

    def __init__(self) -> None:
        self._rng = random.Random(os.urandom(32))

    def new(self) -> str:
        return f"{self._rng.getrandbits(128):032x}"


class Keel:
    def __init__(self, spec: KeelSpec, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.spec = spec
        self.store = SQLiteStore(self.settings.database)
        self.writer = EventWriter(self.store, batch_size=self.settings.event_batch_size)
        provider_specs = {"local": ProviderSpec(type="local"), **spec.providers}
        used = {v.provider for f in spec.features.values() for v in f.versions.values()}
        self.providers: dict[str, Provider] = {
            name: build_provider(name, pspec, self.settings.extra_provider_types)
            for name, pspec in provider_specs.items()
            if name in used
        }
        self.circuits = Circuits()
        self.features = {
            name: Feature(name, fspec, spec, self.providers, self.circuits)
            for name, fspec in spec.features.items()
        }
        self.pricing = Pricing(spec.pricing)
        self.pipeline = Pipeline(
            self.features, self.writer.submit, self.pricing,
            store_payloads=self.settings.store_payloads,
        )
        self._trace_ids = TraceIds()
        self._started = False

    @classmethod
    def from_config(cls, settings: Settings | None = None) -> Keel:
        settings = settings or Settings.from_env()
        return cls(load_spec(settings.config), settings)

    async def start(self) -> None:
        """Migrate the store, start the writer, connect providers, load every version."""
        if self._started:
            return
        self.store.migrate()
        self.writer.start()
        try:
            for name, provider in self.providers.items():
                try:
                    await provider.start()
                except KeelError as exc:
                    raise ConfigError(f"providers.{name}: {exc.message}") from None
            for fname, feature in self.features.items():
                for vname, target in feature.targets.items():
                    try:
                        await target.provider.prepare(target.template)
                    except KeelError as exc:
                        raise ConfigError(f"features.{fname}.versions.{vname}: {exc.message}") from None
        except BaseException:
            await self.close()
            raise
        self._started = True

    async def close(self) -> None:
        """Close providers, then drain the event writer: nothing accepted is lost."""
        for provider in self.providers.values():
            await provider.close()
        self.writer.close()
        self._started = False

    def new_trace_id(self) -> str:
        return self._trace_ids.new()

    async def __aenter__(self) -> Keel:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(
        self,
        feature: str,
        input: dict[str, JSON],
        *,
        user: str | None = None,
        key: str | None = None,
        trace_id: str | None = None,
        body_bytes: int = 0,
        options: dict[str, JSON] | None = None,
    ) -> Outcome:
        call = Call(feature, input, trace_id or self._trace_ids.new(), user, key, body_bytes,
                    options or {})
        return await self.pipeline.run(call)

    def stream(
        self,
        feature: str,
        input: dict[str, JSON],
        *,
        user: str | None = None,
        key: str | None = None,
        trace_id: str | None = None,
        body_bytes: int = 0,
        options: dict[str, JSON] | None = None,
    ) -> AsyncIterator[StreamStart | Delta | Outcome]:
        """Deltas as they arrive, then the Outcome (see :mod:`keel.streaming`)."""
        call = Call(feature, input, trace_id or self._trace_ids.new(), user, key, body_bytes,
                    options or {})
        return self.pipeline.stream(call)


class SyncKeel:
    """Blocking facade: runs a :class:`Keel` on an event loop in a background thread."""

    def __init__(self, keel: Keel, portal: anyio.from_thread.BlockingPortal) -> None:
        self.keel = keel
        self._portal = portal

    def call(self, feature: str, input: dict[str, JSON], **kwargs: Any) -> Outcome:
        async def run() -> Outcome:
            return await self.keel.call(feature, input, **kwargs)

        return self._portal.call(run)

    def flush(self) -> None:
        self.keel.writer.flush()


@contextmanager
def open_sync(settings: Settings | None = None, spec: KeelSpec | None = None) -> Iterator[SyncKeel]:
    """``with keel.open_sync() as k: k.call("intent", {"text": ...})``"""
    settings = settings or Settings.from_env()
    keel = Keel(spec or load_spec(settings.config), settings)
    with anyio.from_thread.start_blocking_portal() as portal:
        portal.call(keel.start)
        try:
            yield SyncKeel(keel, portal)
        finally:
            portal.call(keel.close)
