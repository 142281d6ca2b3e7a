"""Cost-aware routing end to end, against fake OpenAI upstreams on real sockets: a cascade
kept or escalated (with what it saved in the event), the cheapest target meeting a
floor from stored eval runs, latency-aware choice around slow and open-circuit targets,
and a nearly spent budget downgrading instead of refusing."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keel.control.datasets import DatasetStore, Item
from keel.control.evaluation import EvalRunner
from keel.errors import BudgetExceeded
from keel.gateway import Keel
from keel.spec import parse_spec
from keel.store import route_stats
from keel.testing import FakeUpstream
from keel.types import Decision, Outcome
from tests.conftest import settings_in
from tests.server.test_reviews_api import client_for

LABELS = ["billing", "bug", "other"]
CHEAP = {"input": 0.1, "output": 0.4}  # USD per million tokens
STRONG = {"input": 10.0, "output": 30.0}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FakeUpstream]]:
    with FakeUpstream() as a, FakeUpstream() as b, FakeUpstream() as c:
        yield {"cheap": a, "strong": b, "other": c}


@pytest.fixture
def ups(servers: dict[str, FakeUpstream]) -> dict[str, FakeUpstream]:
    for up in servers.values():
        up.reset()
        up.reply, up.token_logprob = "billing", -0.01
    return servers


def version(provider: str, price: dict[str, float], **extra: Any) -> dict[str, Any]:
    return {"provider": provider, "model": f"{provider}-model", "price": price,
            "params": {"logprobs": True}, "timeout_s": 5.0, **extra}


def make_keel(tmp_path: Path, ups: dict[str, FakeUpstream], routing: dict[str, Any], *,
              versions: dict[str, Any] | None = None, fallbacks: list[str] | None = None,
              circuit: dict[str, Any] | None = None, **extra: Any) -> Keel:
    providers = {name: {"type": "openai", "base_url": up.base_url,
                        **({"circuit": circuit} if circuit else {})} for name, up in ups.items()}
    feature = {
        "output": {"kind": "label", "labels": LABELS},
        "versions": versions or {"small": version("cheap", CHEAP),
                                 "big": version("strong", STRONG)},
        "aliases": {"champion": "big"},
        "fallbacks": fallbacks if fallbacks is not None else [],
        "retry": {"max_retries": 0},
        "validators": [{"type": "allowed_labels", "on_fail": "refuse"}],
        "policy": {"accept_at": 0.1},
        "routing": routing,
        "safe_default": {"label": "other"},
    }
    spec = parse_spec({"providers": providers, "features": {"f": feature}, **extra})
    return Keel(spec, dataclasses.replace(settings_in(tmp_path), control_interval_s=0))


def event(keel: Keel, outcome: Outcome) -> dict[str, Any]:
    keel.writer.flush()
    with keel.store.connection() as conn:
        row = conn.execute("SELECT version, decision, policy, saved_usd, cost_usd, attempts"
                           " FROM events WHERE trace_id = ?", (outcome.trace_id,)).fetchone()
    assert row is not None
    return {"version": row[0], "decision": row[1], "policy": row[2], "saved_usd": row[3],
            "cost_usd": row[4], "attempts": row[5]}


def price(p: dict[str, float], tokens_in: int, tokens_out: int) -> float:
    return (tokens_in * p["input"] + tokens_out * p["output"]) / 1e6


CASCADE = {"cascade": {"first": "small", "min_confidence": 0.8}}


# --- cascade ---------------------------------------------------------------------------


async def test_a_confident_cheap_answer_is_kept(tmp_path: Path,
                                               ups: dict[str, FakeUpstream]) -> None:
    keel = make_keel(tmp_path, ups, CASCADE)
    async with keel:
        outcome = await keel.call("f", {"text": "I was charged twice"})
        assert outcome.version == "small" and outcome.decision is Decision.ACCEPTED
        assert outcome.confidence is not None and outcome.confidence > 0.8
        assert ups["strong"].requests == 0 and ups["cheap"].requests == 1
        # saved: what the strong target would have cost for the same tokens, less the cost
        tokens = outcome.usage
        would = price(STRONG, tokens.input_tokens, tokens.output_tokens)
        assert outcome.cost_usd == pytest.approx(price(CHEAP, tokens.input_tokens,
                                                       tokens.output_tokens))
        row = event(keel, outcome)
        assert row["policy"] == "cascade:kept" and row["version"] == "small"
        assert row["saved_usd"] == pytest.approx(would - outcome.cost_usd)
        assert row["saved_usd"] > 0


async def test_an_unsure_cheap_answer_is_escalated(tmp_path: Path,
                                                  ups: dict[str, FakeUpstream]) -> None:
    ups["cheap"].token_logprob = -2.0  # confidence e^-2 = 0.135 < 0.8
    keel = make_keel(tmp_path, ups, CASCADE)
    async with keel:
        outcome = await keel.call("f", {"text": "I was charged twice"})
        assert outcome.version == "big"
        assert outcome.decision is Decision.ACCEPTED  # the planned strong step, not a fallback
        assert ups["cheap"].requests == 1 and ups["strong"].requests == 1
        first = outcome.attempts[0]
        assert first.version == "small" and first.rejected_by is not None
        assert first.rejected_by.startswith("policy:cascade (confidence 0.135")
        row = event(keel, outcome)
        assert row["policy"] == "cascade:escalated"
        # escalation saves nothing: minus the cheap step's cost (both steps were sent the
        # same prompt and gave the same answer, so each used half the call's tokens)
        half_in, half_out = outcome.usage.input_tokens // 2, outcome.usage.output_tokens // 2
        assert row["saved_usd"] == pytest.approx(-price(CHEAP, half_in, half_out))
        assert row["saved_usd"] < 0


async def test_a_failed_validator_escalates(tmp_path: Path,
                                           ups: dict[str, FakeUpstream]) -> None:
    ups["cheap"].reply = "refund"  # confident, but not one of the labels
    keel = make_keel(tmp_path, ups, CASCADE)
    async with keel:
        outcome = await keel.call("f", {"text": "I was charged twice"})
        assert outcome.version == "big" and outcome.output == {"label": "billing"}
        assert outcome.attempts[0].rejected_by == \
            "policy:cascade (validator allowed_labels failed)"
        assert event(keel, outcome)["policy"] == "cascade:escalated"


async def test_the_cheap_answer_stands_when_the_strong_step_fails(
        tmp_path: Path, ups: dict[str, FakeUpstream]) -> None:
    ups["cheap"].token_logprob = -2.0
    ups["strong"].set_mode("unavailable")
    keel = make_keel(tmp_path, ups, CASCADE)
    async with keel:
        outcome = await keel.call("f", {"text": "I was charged twice"})
        assert outcome.version == "small" and outcome.output == {"label": "billing"}
        row = event(keel, outcome)
        assert row["policy"] == "cascade:escalated"  # tried to; the cheap answer served
        assert row["saved_usd"] > 0  # the strong call failed and cost nothing


async def test_routing_stats_per_feature(tmp_path: Path, ups: dict[str, FakeUpstream]) -> None:
    keel = make_keel(tmp_path, ups, CASCADE)
    async with client_for(keel) as client:
        for _ in range(3):
            await keel.call("f", {"text": "I was charged twice"})
        ups["cheap"].token_logprob = -2.0
        await keel.call("f", {"text": "I was charged twice"})
        keel.writer.flush()
        got = route_stats.routing(keel.store, "f", 0.0, time.time() + 1)
        rows = {(r["policy"], r["version"]): r for r in got["rows"]}
        assert rows[("cascade:kept", "small")]["calls"] == 3
        assert rows[("cascade:escalated", "big")]["calls"] == 1
        assert got["calls"] == 4
        assert got["saved_usd"] == pytest.approx(
            rows[("cascade:kept", "small")]["saved_usd"]
            + rows[("cascade:escalated", "big")]["saved_usd"])
        body = (await client.get("/api/stats/features/f")).json()
        assert body["routing"]["calls"] == 4
        assert body["routing"]["saved_usd"] == pytest.approx(got["saved_usd"])


# --- cheapest meeting a quality floor ---------------------------------------------------


async def test_cheapest_meeting_the_floor_from_eval_records(
        tmp_path: Path, ups: dict[str, FakeUpstream]) -> None:
    ups["other"].reply = "bug"  # the cheapest target, but wrong on this dataset
    versions = {"nano": version("cheap", {"input": 0.01, "output": 0.01}),  # never evaluated
                "tiny": version("other", {"input": 0.05, "output": 0.05}),
                "small": version("cheap", CHEAP),
                "big": version("strong", STRONG)}
    routing = {"cheapest": {"dataset": "golden", "floors": {"accuracy": 0.9}}}
    keel = make_keel(tmp_path, ups, routing, versions=versions,
                     fallbacks=["nano", "tiny", "small"])
    async with keel:
        before = await keel.call("f", {"text": "double charge"})
        assert before.version == "big" and event(keel, before)["policy"] == "cheapest:none"

        items = [Item.of({"text": f"charged twice #{i}"}, {"label": "billing"}, split="eval")
                 for i in range(4)]
        DatasetStore(keel.store).commit("golden", items, actor="test")
        runner = EvalRunner(keel)
        for name in ("tiny", "small", "big"):
            run = await runner.run("f", name, "golden", actor="test")
            assert run.metrics is not None
        # not per call: the choice moves when the control plane sees the new runs
        assert (await keel.call("f", {"text": "double charge"})).version == "big"
        assert keel.sync is not None and await keel.sync.refresh()

        outcome = await keel.call("f", {"text": "double charge"})
        assert outcome.version == "small"  # tiny fails the floor; nano has no eval record
        assert outcome.decision is Decision.ACCEPTED
        row = event(keel, outcome)
        assert row["policy"] == "cheapest:picked"
        tokens = outcome.usage
        assert row["saved_usd"] == pytest.approx(
            price(STRONG, tokens.input_tokens, tokens.output_tokens) - outcome.cost_usd)


# --- latency-aware ----------------------------------------------------------------------


LATENCY = {"latency": {"explore": 0}}


async def test_latency_avoids_the_slow_target(tmp_path: Path,
                                             ups: dict[str, FakeUpstream]) -> None:
    ups["strong"].set_mode("delay", delay_s=0.2)
    keel = make_keel(tmp_path, ups, LATENCY, fallbacks=["small"])
    async with keel:
        served = [(await keel.call("f", {"text": "slow or fast"})).version for _ in range(6)]
        # each measured once (big first: the route's order), then the fast one only
        assert served == ["big", "small", "small", "small", "small", "small"]
        assert ups["strong"].requests == 1
        last = await keel.call("f", {"text": "slow or fast"})
        row = event(keel, last)
        assert row["policy"] == "latency:fastest" and row["version"] == "small"
        assert row["saved_usd"] > 0  # cheaper than big as well


async def test_latency_avoids_an_open_circuit(tmp_path: Path,
                                             ups: dict[str, FakeUpstream]) -> None:
    keel = make_keel(tmp_path, ups, LATENCY, fallbacks=["small"],
                     circuit={"failure_threshold": 1, "reset_after_s": 60})
    async with keel:
        for _ in range(2):  # measure both: big ~ as fast as small
            await keel.call("f", {"text": "x"})
        keel.features["f"].routing.latency_ms["small"] = 0.0  # type: ignore[union-attr]
        ups["cheap"].set_mode("unavailable", times=1)
        failed_over = await keel.call("f", {"text": "x"})  # small fails: its circuit opens
        assert failed_over.version == "big"
        asked = ups["cheap"].requests
        after = [await keel.call("f", {"text": "x"}) for _ in range(3)]
        assert [o.version for o in after] == ["big"] * 3
        assert ups["cheap"].requests == asked  # the open circuit was not even tried
        assert all(a.version == "big" for o in after for a in o.attempts)


# --- budget downgrade -------------------------------------------------------------------


DEAR = {"input": 100_000.0, "output": 100_000.0}  # one call spends the whole budget
BUDGET = {"budgets": [{"name": "daily", "scope": "feature", "limit_usd": 0.05}]}


async def test_a_spent_budget_downgrades_when_allowed(tmp_path: Path,
                                                     ups: dict[str, FakeUpstream]) -> None:
    versions = {"small": version("cheap", {"input": 0.0, "output": 0.0}),
                "big": version("strong", DEAR)}
    keel = make_keel(tmp_path, ups, {"downgrade_to": "small", "downgrade_at": 0.8},
                     versions=versions, **BUDGET)
    async with keel:
        first = await keel.call("f", {"text": "hello"})
        assert first.version == "big" and first.cost_usd is not None and first.cost_usd > 0.05
        for _ in range(2):
            outcome = await keel.call("f", {"text": "hello"})  # no 429
            assert outcome.version == "small" and outcome.decision is Decision.ACCEPTED
        assert ups["strong"].requests == 1
        row = event(keel, outcome)
        assert row["policy"] == "budget:downgraded" and row["saved_usd"] > 0


async def test_a_downgraded_stream_uses_the_cheaper_version(
        tmp_path: Path, ups: dict[str, FakeUpstream]) -> None:
    versions = {"small": version("cheap", {"input": 0.0, "output": 0.0}),
                "big": version("strong", DEAR)}
    keel = make_keel(tmp_path, ups, {"downgrade_to": "small"}, versions=versions, **BUDGET)
    async with keel:
        await keel.call("f", {"text": "hello"})
        pieces = [piece async for piece in keel.stream("f", {"text": "hello"})]
        outcome = pieces[-1]
        assert isinstance(outcome, Outcome) and outcome.version == "small"
        assert event(keel, outcome)["policy"] == "budget:downgraded"
        assert ups["strong"].requests == 1


async def test_a_spent_budget_refuses_when_not_allowed(tmp_path: Path,
                                                      ups: dict[str, FakeUpstream]) -> None:
    versions = {"small": version("cheap", {"input": 0.0, "output": 0.0}),
                "big": version("strong", DEAR)}
    keel = make_keel(tmp_path, ups, {"latency": {}}, versions=versions, **BUDGET)
    async with keel:
        await keel.call("f", {"text": "hello"})
        with pytest.raises(BudgetExceeded):
            await keel.call("f", {"text": "hello"})
        assert ups["cheap"].requests == 0 and ups["strong"].requests == 1
