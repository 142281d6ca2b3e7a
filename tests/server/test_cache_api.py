"""The cache through the HTTP app (ASGI, in-process, like the other API tests): exact hits
on the feature API and the OpenAI-compatible routes, what responses, events and metrics
say, the bypass headers, no hit across keys or versions, invalidation by a promotion made
here or in another process, TTL expiry, which answers are kept, and the semantic cache
on the local embedding model with its threshold."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from keel.control.registry import Registry
from keel.errors import ProviderUnavailable
from keel.gateway import Keel
from keel.spec import KeelSpec, parse_spec
from keel.types import Completion, Delta, Usage
from tests.conftest import basic_feature, scripted, settings_in
from tests.server.test_openai_front import events as sse_events
from tests.server.test_reviews_api import client_for

PRICE = {"input": 1.0, "output": 2.0}  # USD per million tokens
COST = (10 * 1.0 + 2 * 2.0) / 1e6  # the scripted default answer: 10 tokens in, 2 out
PROVIDERS = {"p1": {"type": "scripted"}, "p2": {"type": "scripted"}}


def cached_feature(cache: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    feature = basic_feature(cache=cache or {"exact": {"ttl_s": 60}}, **overrides)
    for version in feature["versions"].values():
        version["price"] = PRICE
    return feature


def spec_of(**features: dict[str, Any]) -> KeelSpec:
    return parse_spec({"providers": PROVIDERS, "features": features})


@pytest.fixture
def keel(tmp_path: Path) -> Keel:
    return Keel(spec_of(f=cached_feature()), settings_in(tmp_path))


@pytest.fixture
async def client(keel: Keel) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(keel) as client:
        yield client


async def call(client: httpx.AsyncClient, text: str, feature: str = "f",
               **headers: str) -> httpx.Response:
    r = await client.post(f"/v1/features/{feature}", json={"input": {"text": text}},
                          headers=headers)
    assert r.status_code == 200, r.text
    return r


def calls_made(keel: Keel) -> int:
    return len(scripted(keel, "p1").requests) + len(scripted(keel, "p2").requests)


async def test_an_exact_hit_is_served_without_a_model_call(client: httpx.AsyncClient,
                                                           keel: Keel) -> None:
    first = await call(client, "My card  is lost")
    assert first.headers["x-keel-cache"] == "miss" and first.json()["cache"] == "miss"
    assert first.json()["cost_usd"] == pytest.approx(COST)
    second = await call(client, " My card is\tlost ")  # the same, once normalized
    body = second.json()
    assert second.headers["x-keel-cache"] == "hit-exact"
    assert (body["cache"], body["decision"], body["version"], body["output"]) == (
        "hit-exact", "accepted", "v1", {"label": "a"})
    assert body["cost_usd"] == 0.0 and body["saved_usd"] == pytest.approx(COST)
    assert body["attempts"] == [] and body["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert "cache" in body["timings_ms"] and "invoke" not in body["timings_ms"]
    assert body["trace_id"] != first.json()["trace_id"]
    assert calls_made(keel) == 1
    other = await call(client, "my card is lost")  # case matters unless ignore_case
    assert other.headers["x-keel-cache"] == "miss"

    keel.writer.flush()
    recorded = {e["trace_id"]: e for e in keel.store.recent_events(10)}
    hit = recorded[body["trace_id"]]
    assert (hit["cache"], hit["cost_usd"], hit["decision"]) == ("exact", 0.0, "accepted")
    assert hit["saved_usd"] == pytest.approx(COST)
    assert recorded[first.json()["trace_id"]]["cache"] is None
    stats = (await client.get("/api/stats/features/f")).json()["cache"]
    assert stats["calls"] == 3 and stats["hits"] == {"exact": 1, "semantic": 0}
    assert stats["hit_rate"] == pytest.approx(1 / 3)
    assert stats["saved_usd"] == pytest.approx(COST) and stats["saved_unknown"] == 0

    metrics = (await client.get("/metrics")).text
    assert 'keel_cache_lookups_total{feature="f",result="hit-exact"} 1.0' in metrics
    assert 'keel_cache_lookups_total{feature="f",result="miss"} 2.0' in metrics
    assert 'keel_cache_hit_ratio{feature="f"} 0.333' in metrics
    assert 'keel_cache_saved_usd_total{feature="f"} 1.4e-05' in metrics
    assert 'keel_cache_entries{feature="f",kind="exact"} 2.0' in metrics


async def test_the_openai_route_shares_the_cache(client: httpx.AsyncClient, keel: Keel) -> None:
    await call(client, "refund please")
    r = await client.post("/v1/chat/completions", json={
        "model": "f", "messages": [{"role": "user", "content": "refund  please"}]})
    assert r.status_code == 200, r.text
    assert r.headers["x-keel-cache"] == "hit-exact"
    assert r.json()["keel"]["cache"] == "hit-exact"
    assert r.json()["choices"][0]["message"]["content"] == "a"
    bypassed = await client.post("/v1/chat/completions", headers={"x-keel-cache": "bypass"},
                                 json={"model": "f", "messages": [{"role": "user",
                                                                   "content": "refund please"}]})
    assert bypassed.headers["x-keel-cache"] == "bypass"
    assert calls_made(keel) == 2
    bad = await call_raw(client, "refund please", {"x-keel-cache": "maybe"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-keel-cache"


async def call_raw(client: httpx.AsyncClient, text: str, headers: dict[str, str]) -> httpx.Response:
    return await client.post("/v1/features/f", json={"input": {"text": text}}, headers=headers)


async def test_bypass_and_no_cache_headers(client: httpx.AsyncClient, keel: Keel) -> None:
    p1 = scripted(keel, "p1")
    await call(client, "hello")  # cached: label a
    p1.script = [Completion({"label": "b"}, 0.9, Usage(10, 2))]
    bypassed = await call(client, "hello", **{"x-keel-cache": "bypass"})
    assert bypassed.headers["x-keel-cache"] == "bypass"
    assert bypassed.json()["output"] == {"label": "b"}  # asked the model, kept nothing
    assert (await call(client, "hello")).json()["output"] == {"label": "a"}
    p1.script = [Completion({"label": "b"}, 0.9, Usage(10, 2))]
    refreshed = await call(client, "hello", **{"cache-control": "no-cache"})
    assert refreshed.headers["x-keel-cache"] == "bypass"
    again = await call(client, "hello")
    assert again.headers["x-keel-cache"] == "hit-exact"
    assert again.json()["output"] == {"label": "b"}  # no-cache saved the fresh answer
    stored = await call(client, "new", **{"cache-control": "no-store"})
    assert stored.headers["x-keel-cache"] == "bypass"
    assert (await call(client, "new")).headers["x-keel-cache"] == "miss"


async def test_never_across_api_keys(tmp_path: Path) -> None:
    settings = dataclasses.replace(settings_in(tmp_path), api_keys=frozenset({"sk-a", "sk-b"}))
    keel = Keel(spec_of(f=cached_feature()), settings)
    async with client_for(keel) as client:
        a = {"authorization": "Bearer sk-a"}
        b = {"authorization": "Bearer sk-b"}
        assert (await call(client, "same text", **a)).headers["x-keel-cache"] == "miss"
        assert (await call(client, "same text", **a)).headers["x-keel-cache"] == "hit-exact"
        assert (await call(client, "same text", **b)).headers["x-keel-cache"] == "miss"
        assert (await call(client, "same text", **b)).headers["x-keel-cache"] == "hit-exact"
        assert calls_made(keel) == 2


async def test_scope_user_keeps_users_apart(tmp_path: Path) -> None:
    keel = Keel(spec_of(f=cached_feature({"exact": {}, "scope": "user"})), settings_in(tmp_path))
    async with client_for(keel) as client:
        for user, expected in (("ann", "miss"), ("ann", "hit-exact"), ("bob", "miss")):
            r = await client.post("/v1/features/f", json={"input": {"text": "x"}, "user": user})
            assert r.headers["x-keel-cache"] == expected


async def move(client: httpx.AsyncClient, version: str) -> None:
    r = await client.put("/api/features/f/aliases/champion", json={"version": version,
                                                                   "force": True})
    assert r.status_code == 200, r.text


async def test_never_across_versions_and_a_promotion_empties_it(client: httpx.AsyncClient,
                                                                keel: Keel) -> None:
    assert (await call(client, "where is my card")).headers["x-keel-cache"] == "miss"
    assert (await call(client, "where is my card")).headers["x-keel-cache"] == "hit-exact"
    await move(client, "v2")
    after = await call(client, "where is my card")
    assert (after.headers["x-keel-cache"], after.json()["version"]) == ("miss", "v2")
    assert (await call(client, "where is my card")).json()["version"] == "v2"
    await move(client, "v1")  # a rollback: v1's answers from before are not served again
    back = await call(client, "where is my card")
    assert (back.headers["x-keel-cache"], back.json()["version"]) == ("miss", "v1")
    assert keel.cache is not None and keel.cache.invalidations == 2
    # a move of another alias changes nothing anyone is served: the cache stays
    r = await client.put("/api/features/f/aliases/shadow", json={"version": "v2"})
    assert r.status_code == 200, r.text
    assert (await call(client, "where is my card")).headers["x-keel-cache"] == "hit-exact"


async def test_a_promotion_in_another_process_reaches_this_one(client: httpx.AsyncClient,
                                                               keel: Keel) -> None:
    await call(client, "hi")
    assert (await call(client, "hi")).headers["x-keel-cache"] == "hit-exact"
    # what `keel versions alias f champion v2 --force` does from another process
    other = Registry(keel.store)
    await asyncio.to_thread(other.move_alias, "f", "champion", "v2", actor="cli:test", force=True)
    assert keel.sync is not None
    await keel.sync.refresh()  # what the control loop does every interval
    assert (await call(client, "hi")).headers["x-keel-cache"] == "miss"


async def test_entries_expire(tmp_path: Path) -> None:
    keel = Keel(spec_of(f=cached_feature({"exact": {"ttl_s": 0.2}})), settings_in(tmp_path))
    async with client_for(keel) as client:
        await call(client, "soon gone")
        assert (await call(client, "soon gone")).headers["x-keel-cache"] == "hit-exact"
        await asyncio.sleep(0.3)
        assert (await call(client, "soon gone")).headers["x-keel-cache"] == "miss"


async def test_only_answers_worth_reusing_are_kept(client: httpx.AsyncClient, keel: Keel) -> None:
    p1, p2 = scripted(keel, "p1"), scripted(keel, "p2")
    down = ProviderUnavailable("down")
    cases: list[tuple[str, list[Any], list[Any], str]] = [
        ("review", [Completion({"label": "a"}, 0.3, Usage(1, 1))], [], "review"),
        ("refused", [Completion({"label": "zzz"}, 0.9, Usage(1, 1))], [], "refused"),
        ("fallback", [down, down], [], "fallback"),
        ("error", [down, down], [down, down], "error"),
    ]
    for text, s1, s2, decision in cases:
        p1.script, p2.script = list(s1), list(s2)
        r = await call_raw(client, text, {})
        assert (r.json().get("decision") or "error") == decision, r.text
        before = calls_made(keel)
        again = await call(client, text)
        assert again.headers["x-keel-cache"] == "miss", decision
        assert calls_made(keel) == before + 1
    pinned = await keel.call("f", {"text": "eval item"}, pin="v1")  # an eval run's call
    assert pinned.cache is None
    assert (await call(client, "eval item")).headers["x-keel-cache"] == "miss"


async def test_new_thresholds_make_old_answers_stale(client: httpx.AsyncClient,
                                                     keel: Keel) -> None:
    scripted(keel, "p1").script = [Completion({"label": "a"}, 0.6, Usage(10, 2))]
    await call(client, "borderline")
    assert (await call(client, "borderline")).headers["x-keel-cache"] == "hit-exact"
    feature = keel.features["f"]  # what `keel calibrate --apply` does to a running Keel
    feature.spec = feature.spec.model_copy(update={
        "policy": feature.spec.policy.model_copy(update={"accept_at": 0.7})})
    stale = await call(client, "borderline")
    assert stale.headers["x-keel-cache"] == "miss" and stale.json()["confidence"] == 0.9


async def test_a_streamed_chat_is_replayed_whole(tmp_path: Path) -> None:
    chat = cached_feature(output={"kind": "chat"}, validators=[], policy={})
    keel = Keel(spec_of(chat=chat), settings_in(tmp_path))
    body = {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with client_for(keel) as client:
        first = await client.post("/v1/chat/completions", json=body)
        assert first.headers["x-keel-cache"] == "miss"
        second = await client.post("/v1/chat/completions", json=body)
        assert second.headers["x-keel-cache"] == "hit-exact"
        chunks = sse_events(second.text)
        assert chunks[-1] == "[DONE]"
        text = "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in chunks[:-1] if c.get("choices"))
        assert text == "hello"
        assert chunks[-2]["keel"]["cache"] == "hit-exact"
        scripted(keel, "p1").streams = [[Delta(text="other"), Delta(finish_reason="stop")]]
        plain = await client.post("/v1/chat/completions", json={**body, "stream": False,
                                                               "temperature": 0.5})
        assert plain.headers["x-keel-cache"] == "miss"  # other parameters: another entry


# --- semantic ---------------------------------------------------------------------------

NEAR = ("How do I reset my password?", "I forgot my password, how can I change it?")
FAR = "What is the exchange rate for euros?"


@pytest.fixture(scope="module")
def similarity() -> float:
    from keel.providers.local.embedder import load_encoder

    vectors, _ = load_encoder().encode(list(NEAR))
    return float(np.dot(vectors[0], vectors[1]))


@pytest.mark.slow
async def test_semantic_hits_honour_the_threshold(tmp_path: Path, similarity: float) -> None:
    assert 0.8 < similarity < 0.97  # close, but not the same text
    loose = cached_feature({"semantic": {"threshold": round(similarity - 0.02, 4)}})
    strict = cached_feature({"semantic": {"threshold": round(similarity + 0.005, 4)}})
    keel = Keel(spec_of(loose=loose, strict=strict), settings_in(tmp_path))
    async with client_for(keel) as client:
        assert (await call(client, NEAR[0], "loose")).headers["x-keel-cache"] == "miss"
        hit = await call(client, NEAR[1], "loose")
        assert hit.headers["x-keel-cache"] == "hit-semantic"
        assert hit.json()["saved_usd"] == pytest.approx(COST)
        assert (await call(client, FAR, "loose")).headers["x-keel-cache"] == "miss"
        assert (await call(client, NEAR[0], "strict")).headers["x-keel-cache"] == "miss"
        assert (await call(client, NEAR[1], "strict")).headers["x-keel-cache"] == "miss"
        assert calls_made(keel) == 4
        keel.writer.flush()
        recorded = {e["trace_id"]: e for e in keel.store.recent_events(10)}
        assert recorded[hit.json()["trace_id"]]["cache"] == "semantic"
        assert "cache_embed" in hit.json()["timings_ms"]


@pytest.mark.slow
async def test_semantic_matches_only_within_the_rest_of_the_input(tmp_path: Path) -> None:
    schema = {"type": "object", "required": ["text"],
              "properties": {"text": {"type": "string"}, "lang": {"type": "string"}}}
    feature = cached_feature({"semantic": {"threshold": 0.85}}, input={"schema": schema})
    keel = Keel(spec_of(f=feature), settings_in(tmp_path))
    async with client_for(keel) as client:
        async def ask(text: str, lang: str) -> str:
            r = await client.post("/v1/features/f", json={"input": {"text": text, "lang": lang}})
            return str(r.headers["x-keel-cache"])

        assert await ask(NEAR[0], "en") == "miss"
        assert await ask(NEAR[1], "de") == "miss"  # another value of another field
        assert await ask(NEAR[1], "en") == "hit-semantic"


async def test_the_memory_cache_survives_a_restart_with_a_path(tmp_path: Path) -> None:
    settings = dataclasses.replace(settings_in(tmp_path), cache_path=tmp_path / "cache.npz")
    spec = spec_of(f=cached_feature())
    async with Keel(spec, settings) as keel:
        assert (await keel.call("f", {"text": "kept"})).cache == "miss"
    assert (tmp_path / "cache.npz").is_file()
    async with Keel(spec, settings) as keel:
        assert (await keel.call("f", {"text": "kept"})).cache == "hit-exact"
        await asyncio.to_thread(Registry(keel.store).move_alias, "f", "champion", "v2",
                                actor="cli:t", force=True)
    async with Keel(spec, settings) as keel:  # promoted while it was down: not loaded
        after = await keel.call("f", {"text": "kept"})
        assert (after.cache, after.version) == ("miss", "v2")
