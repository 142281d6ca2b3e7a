"""The app object: settings, compiled features, providers, the store and its writer.

``Keel`` is the async core every surface uses (HTTP server, CLI, library).
:class:`SyncKeel` is the thin blocking facade over the same object.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio.from_thread
import numpy as np
import numpy.typing as npt

from keel.errors import ConfigError, KeelError, VersionNotFound
from keel.feature import Feature
from keel.observability import Observability
from keel.pipeline import Pipeline
from keel.pricing import Pricing
from keel.providers import Provider, ProviderRequest, build_provider
from keel.settings import Settings
from keel.spec import BudgetSpec, KeelSpec, ProviderSpec, VersionSpec, load_spec
from keel.stages.circuit import Circuits
from keel.stages.guards import CustomCheck
from keel.stages.hold import ReviewHub
from keel.stages.privacy import scrub_outcome
from keel.stages.record import EventWriter
from keel.stages.validate.custom import CustomValidator
from keel.stages.validate.grounded import Embed
from keel.store import open_store
from keel.store.policy import policy_overrides
from keel.streaming import StreamStart
from keel.types import JSON, Call, Delta, Event, Outcome, ReviewRequest

if TYPE_CHECKING:
    from keel.control.alerts import AlertSink
    from keel.control.sync import ControlSync
    from keel.stages.cache import CacheStage


class TraceIds:
    """128-bit random trace ids (W3C trace-context width). A seeded PRNG, not
    os.urandom per call: the syscall costs ~50 µs on some sandboxed kernels."""

    def __init__(self) -> None:
        self._rng = random.Random(os.urandom(32))

    def new(self) -> str:
        return f"{self._rng.getrandbits(128):032x}"


def token_counter() -> Callable[[str], int]:
    """Token counts with the embedded model's tokenizer (loaded once, here)."""
    from tokenizers import Tokenizer

    from keel.providers.local.embedder import tokenizer_path

    tokenizer = Tokenizer.from_file(str(tokenizer_path()))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def local_embedder(provider: Provider) -> Embed:
    """Embeddings from the local provider, for validators (groundedness)."""
    request = ProviderRequest("_validators", "_", "all-MiniLM-L6-v2", {}, "embedding", 30.0)

    async def embed(texts: list[str]) -> npt.NDArray[np.float32]:
        result = await provider.embed(request, texts)
        return np.asarray(result.vectors, dtype=np.float32)

    return embed


class Keel:
    def __init__(self, spec: KeelSpec, settings: Settings | None = None, *,
                 checks: Mapping[str, CustomCheck] | None = None,
                 validators: Mapping[str, CustomValidator] | None = None) -> None:
        """``checks`` / ``validators``: custom input checks and output validators by name,
        for ``{type: custom, name: ...}`` in keel.yaml."""
        self.settings = settings or Settings()
        self.spec = spec
        self.store = open_store(self.settings)
        self.writer = EventWriter.configured(self.store, spec, self.settings)
        provider_specs = {"local": ProviderSpec(type="local"), **spec.providers}
        used = {v.provider for f in spec.features.values() for v in f.versions.values()}
        grounded = any(v.type == "groundedness" for f in spec.features.values() for v in f.validators)
        if grounded:
            used.add("local")  # groundedness embeds with the local model
        semantic = any(f.cache is not None and f.cache.semantic is not None
                       for f in spec.features.values())
        if semantic:
            used.add("local")  # so does the semantic cache
        self._provider_specs = provider_specs
        self.providers: dict[str, Provider] = {
            name: build_provider(name, pspec, self.settings.extra_provider_types)
            for name, pspec in provider_specs.items()
            if name in used
        }
        self.circuits = Circuits()
        needs_tokens = any(c.type == "tokens" for f in spec.features.values() for c in f.checks)
        count_tokens = token_counter() if needs_tokens else None
        embed = local_embedder(self.providers["local"]) if grounded else None
        self.features = {
            name: Feature(name, fspec, spec, self.providers, self.circuits, checks, count_tokens,
                          validators, embed)
            for name, fspec in spec.features.items()
        }
        self.pricing = Pricing(spec.pricing)
        # observers see every recorded Event as it is submitted, on the event loop, after
        # the writer has it (metrics, traces, budgets); they must be quick and never raise
        self.observers: list[Callable[[Event], None]] = []
        self.observability = Observability.attach(self)  # /metrics and traces
        self.pipeline = Pipeline(
            self.features, self._record, self.pricing,
            store_payloads=self.settings.store_payloads,
        )
        self.cache: CacheStage | None = None
        if any(f.cache is not None for f in spec.features.values()):
            from keel.stages.cache import build_cache

            self.cache = self.pipeline.cache = build_cache(
                self.features, self.settings,
                local_embedder(self.providers["local"]) if semantic else None)
        self.alerts: AlertSink | None = None
        if spec.budgets or spec.throttles:
            from keel.control.alerts import AlertSink
            from keel.stages.budget import BudgetGate, Limits

            self.alerts = AlertSink(self.store, spec.alerts)
            limits: Limits
            if self.settings.redis_url:  # shared by every process: exact across them
                import redis

                from keel.stages.budget_redis import RedisLimits

                limits = RedisLimits(
                    spec.budgets, spec.throttles, spend=self._budget_spend,
                    client=redis.Redis.from_url(self.settings.redis_url),
                    prefix=self.settings.redis_prefix, thresholds=spec.alerts.thresholds,
                    on_alert=self.alerts.raise_, fail_open=self.settings.limits_fail_open)
            else:
                limits = Limits(spec.budgets, spec.throttles, spend=self._budget_spend,
                                thresholds=spec.alerts.thresholds, on_alert=self.alerts.raise_)
            self.pipeline.budgets = BudgetGate(limits, self.pricing)
            self.observers.append(self.pipeline.budgets.observe)
        self._trace_ids = TraceIds()
        self._started = False
        self.sync: ControlSync | None = None

    def _budget_spend(self, budget: BudgetSpec, value: str, start: float, end: float) -> float:
        """What a budget's scope value has spent in [start, end), from the cost ledger."""
        from keel.store.rollups import spend

        return spend(self.store, scope=budget.scope,
                     value=None if budget.scope == "all" else value, since=start,
                     until=end).cost_usd

    def _record(self, record: Event | ReviewRequest) -> None:
        self.writer.submit(record)
        if self.observers and isinstance(record, Event):
            for observe in self.observers:
                observe(record)

    @classmethod
    def from_config(cls, settings: Settings | None = None) -> Keel:
        settings = settings or Settings.from_env()
        return cls(load_spec(settings.config), settings)

    async def start(self) -> None:
        """Migrate the store, start the writer, connect providers, load every version."""
        if self._started:
            return
        self.store.migrate()
        from keel.control.sync import ControlSync  # the hot path never imports the control plane

        self.sync = ControlSync(self)
        self.sync.bootstrap()  # keel.yaml's versions into the registry; the store's aliases
        self.apply_policy_overrides()
        self.writer.start()
        if any(f.spec.review.mode == "held" for f in self.features.values()):
            # a verdict given in another process (keel review, another worker) reaches a
            # held caller through the store
            from keel.control.reviews import ReviewQueue

            self.pipeline.hub = ReviewHub(poll=ReviewQueue(self).poll)
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
            await self.sync.load_registered()  # versions trained or registered since
            if self.cache is not None:  # after the sync: it knows the generations
                await self.cache.start()
        except BaseException:
            await self.close()
            raise
        self.sync.start()
        if self.alerts is not None:
            self.alerts.start()
        self._started = True

    async def load_version(self, feature: str, name: str, spec: VersionSpec) -> None:
        """Serve a registered version in this process: build its provider if none serves
        it yet, compile its target and prepare it (a local head is loaded here)."""
        pname = spec.provider
        if pname not in self.providers:
            pspec = self._provider_specs.get(pname)
            if pspec is None:
                raise ConfigError(f"version '{name}' of '{feature}' uses provider '{pname}', "
                                  "which keel.yaml does not define")
            provider = build_provider(pname, pspec, self.settings.extra_provider_types)
            await provider.start()
            self.providers[pname] = provider
        target = self.features[feature].add_version(name, spec)
        try:
            await target.provider.prepare(target.template)
        except BaseException:
            self.unload_version(feature, name)
            raise

    def unload_version(self, feature: str, name: str) -> None:
        """Stop serving a version :meth:`load_version` loaded, and forget its spec (never
        one of keel.yaml's: those are served for the process's life)."""
        f = self.features[feature]
        if name in self.spec.features[feature].versions:
            return
        f.targets.pop(name, None)
        if name in f.spec.versions:
            f.spec = f.spec.model_copy(update={"versions": {
                v: s for v, s in f.spec.versions.items() if v != name}})

    def apply_policy_overrides(self) -> None:
        """Thresholds changed through the control plane (keel calibrate --apply) win over
        keel.yaml's; the changes and their history are in the store."""
        for name, fields in policy_overrides(self.store).items():
            feature = self.features.get(name)
            if feature is None:
                continue
            policy = feature.spec.policy.model_copy(update=fields)
            if policy.refuse_below > policy.accept_at:  # keep the pair ordered
                policy = policy.model_copy(update={"refuse_below": policy.accept_at})
            feature.spec = feature.spec.model_copy(update={"policy": policy})

    async def close(self) -> None:
        """Close providers, then drain the event writer: nothing accepted is lost."""
        if self.sync is not None:
            await self.sync.stop()
        if self.cache is not None:
            await self.cache.close()
        if self.alerts is not None:
            await self.alerts.close()
        for provider in self.providers.values():
            await provider.close()
        self.writer.close()
        self.store.close()
        self.observability.close()  # after the writer: the last calls' spans are exported
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
        session: str | None = None,
        pin: str | None = None,
        cache: str = "use",
    ) -> Outcome:
        """Serve one call. ``session`` keeps a canary split sticky when there is no user;
        ``pin`` serves exactly that version and records nothing (evaluation runs);
        ``cache``: ``refresh`` skips the cache lookup, ``bypass`` the lookup and saving."""
        if pin is not None:
            target = self.pipeline.feature(feature).targets.get(pin)
            if target is None:
                raise VersionNotFound(f"feature '{feature}' has no version '{pin}' loaded")
        call = Call(feature, input, trace_id or self._trace_ids.new(), user, key, body_bytes,
                    options or {}, session, pin, cache_mode=cache)
        return scrub_outcome(await self.pipeline.run(call), self.writer.scrubber)

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
        session: str | None = None,
        cache: str = "use",
    ) -> AsyncIterator[StreamStart | Delta | Outcome]:
        """Deltas as they arrive, then the Outcome (see :mod:`keel.streaming`)."""
        call = Call(feature, input, trace_id or self._trace_ids.new(), user, key, body_bytes,
                    options or {}, session, cache_mode=cache)
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
