"""The cache stage: answers worth reusing, served again without a model call.

Between route and invoke (:class:`~keel.pipeline.Pipeline` calls :meth:`CacheStage.lookup`
once the version is chosen, and :meth:`Lookup.save` once the call is decided):

* **exact**: a digest of the feature's answer-shaping config, the version, the
  feature's *generation*, the scope (API key id, and user with ``scope: user``), the
  normalized input (strings NFC, trimmed, whitespace collapsed; case-folded with
  ``ignore_case``) and the per-call parameters;
* **semantic**: the same digest without the compared text names a *partition*; within
  it, the text's local embedding must be at least ``threshold`` cosine-similar to a
  cached one (:mod:`keel.stages.cache_index`).

A cached answer is never served across versions, scopes or generations. The generation
of a feature is the id of the last move of its ``champion`` or ``canary`` alias in the
store: every process reads it through the control sync (:mod:`keel.control.sync`), so a
promotion made anywhere empties the feature's cache everywhere within one sync interval.
Only answers decided ``accepted`` or ``repaired`` are saved; never errors, refusals,
review, fallbacks or pinned (eval) calls. A hit whose confidence the current policy no
longer accepts (thresholds moved) is a miss.

Where entries live is a :class:`Backend`: in-process memory (:mod:`keel.stages.cache_memory`,
optionally saved to a file at shutdown) or Redis when ``KEEL_REDIS_URL`` is set
(:mod:`keel.stages.cache_redis`). A backend that fails (Redis down) makes misses, counted
as errors; it never fails a call.
"""

from __future__ import annotations

import hashlib
import logging
import time
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np
import numpy.typing as npt
import orjson

from keel.errors import InvalidRequest
from keel.spec_cache import CacheSpec
from keel.types import JSON, Call, Decision, OnFail, Outcome, Usage, ValidationResult

if TYPE_CHECKING:
    from keel.feature import Feature
    from keel.settings import Settings
    from keel.stages.guards import GuardOutcome
    from keel.store.db import Store

log = logging.getLogger("keel.cache")

Vector = npt.NDArray[np.float32]
Embed = Callable[[list[str]], Awaitable[npt.NDArray[np.float32]]]
Mode = Literal["use", "refresh", "bypass"]
MODES: tuple[str, ...] = ("use", "refresh", "bypass")
# what a response says about the cache: x-keel-cache and the feature API's "cache"
HIT_EXACT, HIT_SEMANTIC, MISS, BYPASS = "hit-exact", "hit-semantic", "miss", "bypass"
RESULTS = (HIT_EXACT, HIT_SEMANTIC, MISS, BYPASS)
SAVED = frozenset({Decision.ACCEPTED, Decision.REPAIRED})
# the parts of a feature's spec that shape its answers besides the version
_SHAPING = {"input", "output", "checks", "validators", "safe_default", "routing"}


def directive(headers: Mapping[str, str]) -> Mode:
    """The cache mode a request asks for: ``x-keel-cache: bypass`` (or ``Cache-Control:
    no-store``) neither reads nor writes the cache; ``x-keel-cache: refresh`` (or
    ``Cache-Control: no-cache``) skips the lookup and saves the fresh answer."""
    asked = headers.get("x-keel-cache")
    if asked is not None:
        value = asked.strip().lower()
        if value not in MODES:
            raise InvalidRequest(f"x-keel-cache must be use, refresh or bypass, got '{asked}'",
                                 param="x-keel-cache")
        return cast(Mode, value)
    control = headers.get("cache-control")
    if control:
        parts = {p.strip().split("=", 1)[0].lower() for p in control.split(",")}
        if "no-store" in parts:
            return "bypass"
        if "no-cache" in parts:
            return "refresh"
    return "use"


def source(status: str | None) -> str | None:
    """An Outcome's cache status as an Event records it: ``exact`` / ``semantic`` on hits."""
    if status == HIT_EXACT:
        return "exact"
    if status == HIT_SEMANTIC:
        return "semantic"
    return None


def normalize(value: JSON, fold_case: bool = False) -> JSON:
    if isinstance(value, str):
        text = " ".join(unicodedata.normalize("NFC", value).split())
        return text.casefold() if fold_case else text
    if isinstance(value, dict):
        return {k: normalize(v, fold_case) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v, fold_case) for v in value]
    return value


def digest(*parts: JSON) -> bytes:
    return hashlib.blake2b(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS),
                           digest_size=16).digest()


class Backend(Protocol):
    """Where entries live. Keys and partitions are digests; values are encoded answers."""

    async def start(self, stage: CacheStage) -> None: ...

    async def ready(self) -> None: ...  # what start() left running is done

    async def get(self, feature: str, key: bytes) -> bytes | None: ...

    async def put(self, feature: str, key: bytes, data: bytes, ttl_s: float) -> None: ...

    async def nearest(self, feature: str, partition: bytes, vector: Vector,
                      threshold: float) -> tuple[bytes, float] | None: ...

    async def add(self, feature: str, partition: bytes, vector: Vector, data: bytes,
                  ttl_s: float) -> None: ...

    def invalidate(self, feature: str, generation: int) -> None: ...

    def sizes(self, feature: str) -> tuple[int, int]: ...  # exact, semantic entries here

    async def close(self) -> None: ...


@dataclass(slots=True)
class FeatureCache:
    """One feature's cache settings, compiled once."""

    name: str
    spec: CacheSpec
    kind: str
    text_field: str | None
    fingerprint: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys((*RESULTS, "errors"), 0))
    saved_usd: float = 0.0

    @classmethod
    def of(cls, feature: Feature) -> FeatureCache:
        fspec = feature.spec
        assert fspec.cache is not None
        shaping = fspec.model_dump_json(include=_SHAPING, by_alias=True)
        return cls(feature.name, fspec.cache, fspec.output.kind, fspec.input.text_field,
                   hashlib.blake2b(shaping.encode(), digest_size=8).hexdigest())

    def scope(self, call: Call) -> list[str | None]:
        return [call.key, call.user] if self.spec.scope == "user" else [call.key]

    def text(self, call: Call) -> tuple[str, JSON] | None:
        """The text the semantic cache compares, and the rest of the input."""
        semantic = self.spec.semantic
        assert semantic is not None
        if self.kind == "chat":
            messages = call.input.get("messages")
            if not isinstance(messages, list) or not messages:
                return None
            last = messages[-1]
            if not isinstance(last, dict) or last.get("role") != "user":
                return None
            content = last.get("content")
            rest: JSON = [messages[:-1], {k: v for k, v in last.items() if k != "content"}]
        else:
            name = semantic.field or self.text_field
            content = call.input.get(name) if name else None
            rest = {k: v for k, v in call.input.items() if k != name}
        if not isinstance(content, str) or not content.strip():
            return None
        return " ".join(content.split()), rest


class CacheStage:
    """The caches of every feature that has one, over one backend."""

    def __init__(self, features: Mapping[str, Feature], backend: Backend,
                 embed: Embed | None = None) -> None:
        self.features = {name: FeatureCache.of(f) for name, f in features.items()
                         if f.spec.cache is not None}
        self.backend = backend
        self.embed = embed
        self.generations: dict[str, int] = {}
        self.invalidations = 0
        self._logged = 0.0

    async def start(self) -> None:
        await self.backend.start(self)

    async def ready(self) -> None:
        """Wait for what the backend loads in the background at start (Redis: the
        semantic index of every entry saved so far)."""
        await self.backend.ready()

    async def close(self) -> None:
        await self.backend.close()

    def generation(self, feature: str) -> int:
        return self.generations.get(feature, 0)

    def set_generations(self, generations: Mapping[str, int]) -> None:
        """The store's generations (the control sync's view): a feature whose generation
        moved loses every entry it had."""
        for name in self.features:
            new = generations.get(name, 0)
            old = self.generations.get(name)
            self.generations[name] = new
            if old is not None and new != old:
                self.invalidations += 1
                self.backend.invalidate(name, new)
                log.info("cache of %s invalidated: generation %s -> %s", name, old, new)

    async def lookup(self, feature: Feature, call: Call, guarded: GuardOutcome | None,
                     timings: dict[str, float]) -> Lookup | None:
        """None when the feature has no cache or the call is an eval call; else the
        Lookup, whose ``hit`` is the answer when one was cached."""
        cache = self.features.get(feature.name)
        if cache is None or call.pin is not None:
            return None
        lookup = Lookup(self, cache, call, self.generation(feature.name))
        if call.cache_mode != "use":
            lookup.status = BYPASS
            lookup.keep = call.cache_mode == "refresh"
            cache.counts[BYPASS] += 1
            return lookup
        t = time.perf_counter()
        try:
            if guarded is None or not guarded.review:  # a guard wants people to see it
                await lookup.find(feature, timings, guarded)
        except Exception as exc:
            self.failed(cache, "lookup", exc)
        timings["cache"] = round((time.perf_counter() - t) * 1000, 3)
        cache.counts[lookup.status] += 1
        if lookup.hit is not None:
            cache.saved_usd += lookup.hit.saved_usd or 0.0
        return lookup

    def failed(self, cache: FeatureCache, what: str, exc: Exception) -> None:
        cache.counts["errors"] += 1
        now = time.monotonic()
        if now - self._logged >= 60:  # at most one line a minute: a down Redis is loud enough
            self._logged = now
            log.warning("cache %s failed for %s (served without the cache): %s", what,
                        cache.name, exc)


class Lookup:
    """One call's use of the cache: what was looked up, and how to save the answer."""

    __slots__ = ("cache", "call", "generation", "hit", "keep", "key", "partition", "stage",
                 "status", "vector")

    def __init__(self, stage: CacheStage, cache: FeatureCache, call: Call, generation: int) -> None:
        self.stage = stage
        self.cache = cache
        self.call = call
        self.generation = generation
        self.status = MISS
        self.keep = True  # save the answer if it is worth it
        self.hit: Outcome | None = None
        self.key: bytes | None = None
        self.partition: bytes | None = None
        self.vector: Vector | None = None

    def _parts(self, *more: JSON) -> bytes:
        call = self.call
        return digest(self.cache.fingerprint, call.routed, call.downgrade, self.generation,
                      self.cache.scope(call), call.options, *more)

    async def find(self, feature: Feature, timings: dict[str, float],
                   guarded: GuardOutcome | None) -> None:
        stage, cache, spec, call = self.stage, self.cache, self.cache.spec, self.call
        backend = stage.backend
        if spec.exact is not None:
            self.key = self._parts("exact", normalize(call.input, spec.exact.ignore_case))
            data = await backend.get(cache.name, self.key)
            if data is not None and self._serve(feature, data, HIT_EXACT, timings, guarded):
                return
        semantic = spec.semantic
        if semantic is None or stage.embed is None:
            return
        parts = cache.text(call)
        if parts is None:
            return
        text, rest = parts
        t = time.perf_counter()
        try:
            self.vector = np.asarray((await stage.embed([text]))[0], dtype=np.float32)
        except Exception as exc:
            stage.failed(cache, "embedding", exc)
            return
        timings["cache_embed"] = round((time.perf_counter() - t) * 1000, 3)
        self.partition = self._parts("semantic", normalize(rest))
        found = await backend.nearest(cache.name, self.partition, self.vector, semantic.threshold)
        if found is not None:
            self._serve(feature, found[0], HIT_SEMANTIC, timings, guarded)

    def _serve(self, feature: Feature, data: bytes, status: str, timings: dict[str, float],
               guarded: GuardOutcome | None) -> bool:
        entry = orjson.loads(data)
        confidence = entry["c"]
        policy = feature.spec.policy
        if (policy.unknown_confidence != "accept" if confidence is None
                else confidence < policy.accept_at):
            return False  # the thresholds moved since: ask the model again
        call = self.call
        self.status = status
        self.keep = False
        self.hit = Outcome(
            trace_id=call.trace_id, feature=feature.name, version=entry["v"],
            output=entry["o"], decision=Decision(entry["d"]), confidence=confidence,
            timings_ms=timings, cost_usd=0.0, usage=Usage(), attempts=[],
            validations=[ValidationResult(n, p, OnFail(f), m) for n, p, f, m in entry["val"]],
            reason=entry["r"], finish_reason=entry["f"],
            checks=guarded.results if guarded is not None else [],
            cache=status, saved_usd=entry["usd"])
        return True

    async def save(self, outcome: Outcome) -> None:
        """Say what the cache did on the Outcome; keep the answer if it is worth it."""
        outcome.cache = self.status
        if (not self.keep or outcome.decision not in SAVED or outcome.version is None
                or outcome.review is not None):
            return
        stage, cache, spec = self.stage, self.cache, self.cache.spec
        data = encode(outcome)
        try:
            if spec.exact is not None:
                key = self.key or self._parts(
                    "exact", normalize(self.call.input, spec.exact.ignore_case))
                await stage.backend.put(cache.name, key, data, spec.exact.ttl_s)
            if spec.semantic is not None and self.vector is not None and self.partition is not None:
                await stage.backend.add(cache.name, self.partition, self.vector, data,
                                        spec.semantic.ttl_s)
        except Exception as exc:
            stage.failed(cache, "save", exc)


def encode(outcome: Outcome) -> bytes:
    entry: dict[str, Any] = {
        "v": outcome.version, "o": outcome.output, "d": str(outcome.decision),
        "c": outcome.confidence, "r": outcome.reason, "f": outcome.finish_reason,
        "val": [[v.validator, v.passed, str(v.on_fail), v.message] for v in outcome.validations],
        "usd": outcome.cost_usd, "t": time.time(),
    }
    return orjson.dumps(entry)


def read_generations(store: Store) -> dict[str, int]:
    """Each feature's generation: the id of its last champion or canary move (blocking)."""
    with store.connection() as conn:
        rows = conn.execute("SELECT feature, MAX(id) FROM alias_moves"
                            " WHERE alias IN ('champion', 'canary') GROUP BY feature").fetchall()
    return {str(r[0]): int(r[1] or 0) for r in rows}


def build_cache(features: Mapping[str, Feature], settings: Settings,
                embed: Embed | None) -> CacheStage:
    """The cache stage of an app: in Redis when ``settings.redis_url`` is set (shared by
    every process), else in this process's memory (saved to ``settings.cache_path``)."""
    backend: Backend
    if settings.redis_url:
        from keel.stages.cache_redis import RedisBackend

        backend = RedisBackend(settings.redis_url, settings.cache_prefix)
    else:
        from keel.stages.cache_memory import MemoryBackend

        backend = MemoryBackend(settings.cache_path)
    return CacheStage(features, backend, embed)
