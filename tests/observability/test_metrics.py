"""``GET /metrics``: counters and histograms after scripted calls, scrape-time gauges,
content negotiation, keys, one registry per app, and the observer's cost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from keel.errors import InputSchemaError, ProviderUnavailable
from keel.gateway import Keel
from keel.server import create_app
from keel.stages.route import Split
from keel.types import Attempt, Completion, Decision, Event, OnFail, Usage, ValidationResult
from tests.conftest import basic_feature, scripted, settings_in, spec_with

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str, openmetrics: bool = False) -> Samples:
    parse = parse_openmetrics if openmetrics else text_string_to_metric_families
    out: Samples = {}
    for family in parse(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def named(found: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in found.items() if n == name}


@pytest.fixture
async def keel(tmp_path: Path) -> AsyncIterator[Keel]:
    async with Keel(spec_with(basic_feature()), settings_in(tmp_path)) as k:
        yield k


def client_for(keel: Keel) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(keel)),
                             base_url="http://keel")


async def scrape(keel: Keel, **headers: str) -> httpx.Response:
    async with client_for(keel) as client:
        return await client.get("/metrics", headers=headers)


async def five_calls(keel: Keel) -> None:
    """accepted (v1), fallback (v1 fails twice, v2 answers), refused (a label not
    allowed), review (low confidence), error (bad input)."""
    p1 = scripted(keel, "p1")
    assert (await keel.call("f", {"text": "one"})).decision is Decision.ACCEPTED
    p1.script = [ProviderUnavailable("down"), ProviderUnavailable("down")]
    assert (await keel.call("f", {"text": "two"})).decision is Decision.FALLBACK
    p1.script = [Completion(output={"label": "zzz"}, confidence=0.9, usage=Usage(10, 2))]
    assert (await keel.call("f", {"text": "three"})).decision is Decision.REFUSED
    p1.script = [Completion(output={"label": "b"}, confidence=0.3, usage=Usage(10, 2))]
    assert (await keel.call("f", {"text": "four"})).decision is Decision.REVIEW
    with pytest.raises(InputSchemaError):
        await keel.call("f", {"nope": 1})
    assert keel.writer.flush()


async def test_counters_and_histograms_after_scripted_calls(keel: Keel) -> None:
    await five_calls(keel)
    r = await scrape(keel)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(r.text)

    assert named(found, "keel_calls_total") == {
        frozenset({("feature", "f"), ("version", "v1"), ("decision", "accepted")}): 1,
        frozenset({("feature", "f"), ("version", "v2"), ("decision", "fallback")}): 1,
        frozenset({("feature", "f"), ("version", "v1"), ("decision", "refused")}): 1,
        frozenset({("feature", "f"), ("version", "v1"), ("decision", "review")}): 1,
        frozenset({("feature", "f"), ("version", "none"), ("decision", "error")}): 1,
    }
    assert value(found, "keel_call_duration_seconds_count", feature="f", version="v1") == 3
    assert value(found, "keel_call_duration_seconds_count", feature="f", version="v2") == 1
    assert value(found, "keel_call_duration_seconds_count", feature="f", version="none") == 1
    assert value(found, "keel_call_duration_seconds_sum", feature="f", version="v1") > 0

    # every call passes the checks; the four admitted ones are routed, invoked, decided
    assert value(found, "keel_stage_duration_seconds_count", feature="f", stage="checks") == 5
    for stage in ("route", "invoke", "validate", "decide"):
        assert value(found, "keel_stage_duration_seconds_count", feature="f", stage=stage) == 4
    assert value(found, "keel_stage_duration_seconds_count", feature="f", stage="total") is None

    attempts = named(found, "keel_provider_attempts_total")
    assert attempts == {
        frozenset({("provider", "p1"), ("model", "m1"), ("outcome", "ok"), ("error_code", "")}): 3,
        frozenset({("provider", "p1"), ("model", "m1"), ("outcome", "error"),
                   ("error_code", "provider_unavailable")}): 2,
        frozenset({("provider", "p2"), ("model", "m2"), ("outcome", "ok"), ("error_code", "")}): 1,
    }
    duration = "keel_provider_attempt_duration_seconds_count"
    assert value(found, duration, provider="p1", model="m1", outcome="ok") == 3
    assert value(found, duration, provider="p1", model="m1", outcome="error") == 2
    assert value(found, duration, provider="p2", model="m2", outcome="ok") == 1

    assert value(found, "keel_tokens_total", feature="f", version="v1", direction="input") == 30
    assert value(found, "keel_tokens_total", feature="f", version="v1", direction="output") == 6
    assert value(found, "keel_tokens_total", feature="f", version="v2", direction="input") == 10
    assert named(found, "keel_validation_failures_total") == {
        frozenset({("feature", "f"), ("validator", "allowed_labels")}): 1}
    assert value(found, "keel_review_queue_pending", feature="f") == 1
    assert value(found, "keel_rollout_canary_weight", feature="f") == 0
    assert value(found, "keel_circuit_state", provider="p1", model="m1", state="closed") == 1


async def test_histogram_buckets_are_cumulative_and_end_at_the_count(keel: Keel) -> None:
    for _ in range(3):
        await keel.call("f", {"text": "hi"})
    scripted(keel, "p1").script = [0.02]  # a 20 ms answer
    await keel.call("f", {"text": "slow"})
    found = samples((await scrape(keel)).text)
    buckets = {dict(labels)["le"]: v for labels, v in named(found, "keel_call_duration_seconds_bucket").items()
               if dict(labels)["version"] == "v1"}
    bounds = sorted(buckets, key=float)
    counts = [buckets[b] for b in bounds]
    assert counts == sorted(counts)
    assert bounds[-1] == "+Inf" and counts[-1] == 4
    assert bounds[0] == "0.001"
    assert buckets["0.01"] <= 3 and buckets["60.0"] == 4  # the 20 ms call is above 10 ms
    assert value(found, "keel_call_duration_seconds_sum", feature="f", version="v1") >= 0.02
    stage_bounds = {dict(labels)["le"] for labels in named(found, "keel_stage_duration_seconds_bucket")}
    assert "0.0001" in stage_bounds and "60.0" in stage_bounds


async def test_openmetrics_when_the_scraper_asks_for_it(keel: Keel) -> None:
    await keel.call("f", {"text": "hi"})
    r = await scrape(keel, accept="application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")
    found = samples(r.text, openmetrics=True)
    assert value(found, "keel_calls_total", feature="f", version="v1", decision="accepted") == 1


async def test_two_apps_in_one_process_do_not_share_metrics(tmp_path: Path) -> None:
    async with Keel(spec_with(basic_feature()), settings_in(tmp_path / "a")) as a, \
            Keel(spec_with(basic_feature()), settings_in(tmp_path / "b")) as b:
        for _ in range(3):
            await a.call("f", {"text": "hi"})
        await b.call("f", {"text": "hi"})
        found_a = samples((await scrape(a)).text)
        found_b = samples((await scrape(b)).text)
    key = {"feature": "f", "version": "v1", "decision": "accepted"}
    assert value(found_a, "keel_calls_total", **key) == 3
    assert value(found_b, "keel_calls_total", **key) == 1
    assert a.observability.metrics is not None and b.observability.metrics is not None
    assert a.observability.metrics.registry is not b.observability.metrics.registry


async def test_metrics_need_a_key_when_gateway_keys_are_set(tmp_path: Path) -> None:
    settings = replace(settings_in(tmp_path), api_keys=frozenset({"sk-good"}))
    async with Keel(spec_with(basic_feature()), settings) as keel:
        assert (await scrape(keel)).status_code == 401
        assert (await scrape(keel, authorization="Bearer sk-bad")).status_code == 401
        r = await scrape(keel, authorization="Bearer sk-good")
        assert r.status_code == 200 and "keel_circuit_state" in r.text


async def test_metrics_switched_off(tmp_path: Path) -> None:
    settings = replace(settings_in(tmp_path), metrics=False)
    async with Keel(spec_with(basic_feature()), settings) as keel:
        assert keel.observability.metrics is None and keel.observers == []
        r = await scrape(keel)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_gauges_follow_circuits_and_the_canary_split(tmp_path: Path) -> None:
    providers = {"p1": {"type": "scripted", "circuit": {"failure_threshold": 1}},
                 "p2": {"type": "scripted"}}
    spec = spec_with(basic_feature(retry={"max_retries": 0}), providers)
    async with Keel(spec, settings_in(tmp_path)) as keel:
        scripted(keel, "p1").script = [ProviderUnavailable("down")]
        await keel.call("f", {"text": "hi"})
        router = keel.features["f"].router
        router.set_alias("canary", "v2")
        router.set_split(Split(0.25))
        found = samples((await scrape(keel)).text)
    state = "keel_circuit_state"
    assert value(found, state, provider="p1", model="m1", state="open") == 1
    assert value(found, state, provider="p1", model="m1", state="closed") == 0
    assert value(found, state, provider="p2", model="m2", state="closed") == 1
    assert value(found, "keel_rollout_canary_weight", feature="f") == 0.25


async def test_slo_burn_rates_are_exported_and_cached(tmp_path: Path) -> None:
    spec = spec_with(basic_feature(slo={"error_rate": 0.1, "latency_p95_ms": 10_000}))
    async with Keel(spec, replace(settings_in(tmp_path), slo_cache_s=60)) as keel:
        p1, p2 = scripted(keel, "p1"), scripted(keel, "p2")
        await keel.call("f", {"text": "ok"})
        p1.script = [ProviderUnavailable("down")] * 2
        p2.script = [ProviderUnavailable("down")] * 2
        assert (await keel.call("f", {"text": "fails"})).decision is Decision.ERROR
        assert keel.writer.flush()
        found = samples((await scrape(keel)).text)
        # one error in two calls: 50% against 10% allowed -> burn rate 5 in every window
        for window in ("5m", "30m", "1h", "6h"):
            assert value(found, "keel_slo_burn_rate", feature="f", objective="error_rate",
                         window=window) == pytest.approx(5.0)
            assert value(found, "keel_slo_burn_rate", feature="f", objective="latency_p95_ms",
                         window=window) == 0
        assert value(found, "keel_slo_error_budget_remaining", feature="f",
                     objective="error_rate") == pytest.approx(1 - 1 / 0.2)
        assert value(found, "keel_slo_alerting", feature="f", objective="error_rate",
                     severity="page") == 0
        await keel.call("f", {"text": "more"})
        assert keel.writer.flush()
        again = samples((await scrape(keel)).text)  # within slo_cache_s: the same numbers
        assert named(again, "keel_slo_burn_rate") == named(found, "keel_slo_burn_rate")


def sample_event(**overrides: Any) -> Event:
    fields: dict[str, Any] = dict(
        trace_id="ab" * 16, ts=time.time(), feature="f", version="v1",
        decision=Decision.ACCEPTED, confidence=0.9, latency_ms=0.5,
        timings_ms={"checks": 0.006, "route": 0.003, "invoke": 0.43, "validate": 0.017,
                    "decide": 0.006, "total": 0.5},
        input_tokens=40, output_tokens=2, cost_usd=0.00001,
        attempts=[Attempt("v1", "p1", True, 0.42)],
        validations=[ValidationResult(name, True, OnFail.REFUSE)
                     for name in ("allowed_labels", "regex", "length")],
        input=None, output=None)
    fields.update(overrides)
    return Event(**fields)


def test_counting_is_cheap(tmp_path: Path) -> None:
    """Counting runs on the event loop after every call: well under 50 µs an event
    (without a running loop, observe counts at once)."""
    keel = Keel(spec_with(basic_feature()), settings_in(tmp_path))
    metrics = keel.observability.metrics
    assert metrics is not None and metrics.observe in keel.observers
    event = sample_event()
    for _ in range(1000):
        metrics.observe(event)
    best = float("inf")
    for _ in range(5):
        n = 5000
        t = time.perf_counter()
        for _ in range(n):
            metrics.observe(event)
        best = min(best, (time.perf_counter() - t) / n)
    assert best < 50e-6, f"{best * 1e6:.1f} µs an event"


async def test_on_the_loop_counting_waits_until_the_answer_is_out(tmp_path: Path) -> None:
    """Inside a call the observer only queues the event (a fraction of a µs); the loop's
    next turn counts every queued one. Calls that never yield are counted every
    MAX_PENDING events, so the queue stays short."""
    from keel.observability.metrics import MAX_PENDING

    keel = Keel(spec_with(basic_feature()), settings_in(tmp_path))
    metrics = keel.observability.metrics
    assert metrics is not None
    event = sample_event()
    batch, rounds, queued = MAX_PENDING - 1, 40, 0.0
    for i in range(rounds):
        t = time.perf_counter()
        for _ in range(batch):
            metrics.observe(event)
        queued += time.perf_counter() - t
        if i == 0:
            assert metrics.calls == {}  # nothing counted yet
        await asyncio.sleep(0)
    assert metrics.calls[("f", "v1", Decision.ACCEPTED)].calls == batch * rounds
    per_call = queued / (batch * rounds)
    assert per_call < 5e-6, f"{per_call * 1e6:.2f} µs to queue an event"
    for _ in range(MAX_PENDING * 3):  # no turn of the loop at all
        metrics.observe(event)
    assert len(metrics._pending) < MAX_PENDING


def test_the_observer_never_raises(tmp_path: Path) -> None:
    keel = Keel(spec_with(basic_feature()), settings_in(tmp_path))
    metrics = keel.observability.metrics
    assert metrics is not None
    metrics.observe(sample_event(timings_ms=None))  # a broken event: counted, not raised
    metrics.observe(sample_event())
    assert metrics.observer_errors == 1
    body, _ = metrics.render(None)
    assert value(samples(body.decode()), "keel_calls_total", feature="f", version="v1",
                 decision="accepted") == 2
