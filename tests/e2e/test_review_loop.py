"""The review loop end to end: a real ``keel serve``, a caller held on a low-confidence
answer, and a reviewer (over HTTP, or ``keel review next`` in another process) whose
verdict the caller gets back long before its hold timeout."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from keel.testing import FakeUpstream
from tests.backends import db_args, store_at
from tests.e2e.server import KeelProcess

# one token per answer with logprob -1: confidence e^-1 = 0.37 < accept_at 0.5 -> review
CONFIG = """
providers:
  up: {{type: openai, base_url: "{url}", timeout_s: 5}}
features:
  triage:
    output: {{kind: label, labels: [billing, shipping, other]}}
    versions: {{gpt: {{provider: up, model: fake-model, params: {{logprobs: true}}}}}}
    aliases: {{champion: gpt}}
    validators: [{{type: allowed_labels, on_fail: refuse}}]
    policy: {{accept_at: 0.5}}
    review: {{mode: held, hold_timeout_s: 30, dataset: triage-gold}}
    safe_default: {{label: other}}
  quick:
    output: {{kind: label, labels: [billing, shipping, other]}}
    versions: {{gpt: {{provider: up, model: fake-model, params: {{logprobs: true}}}}}}
    aliases: {{champion: gpt}}
    policy: {{accept_at: 0.5}}
    review: {{mode: held, hold_timeout_s: 8}}
    safe_default: {{label: other}}
"""
HOLD_S = 30


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(reply="billing", token_logprob=-1.0) as up:
        yield up


@pytest.fixture(scope="module")
def server(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeelProcess]:
    tmp = tmp_path_factory.mktemp("reviews")
    config = tmp / "keel.yaml"
    config.write_text(CONFIG.format(url=upstream.base_url))
    with KeelProcess(config, tmp / "keel.db") as proc:
        r = httpx.get(f"{proc.base_url}/api/reviews")
        assert r.status_code == 200, (
            "the review API is not served: create_app must include keel.server.reviews.router")
        yield proc


async def claim(client: httpx.AsyncClient, reviewer: str, feature: str) -> dict[str, Any]:
    """The reviewer asks for work until the held call's item shows up."""
    for _ in range(500):
        r = await client.post("/api/reviews/next", json={"reviewer": reviewer, "feature": feature})
        if r.status_code == 200:
            item: dict[str, Any] = r.json()
            return item
        assert r.status_code == 204, r.text
        await asyncio.sleep(0.02)
    raise AssertionError("the held call's item never reached the queue")


@pytest.mark.parametrize(("verdict", "expected", "review"), [
    ({"verdict": "edit", "output": {"label": "shipping"}}, {"label": "shipping"}, "edited"),
    ({"verdict": "approve"}, {"label": "billing"}, "approved"),
    ({"verdict": "reject", "reason": "not a customer message"}, {"label": "other"}, "rejected"),
])
def test_a_held_caller_gets_the_reviewers_verdict(server: KeelProcess, verdict: dict[str, Any],
                                                  expected: dict[str, str], review: str) -> None:
    async def loop() -> tuple[httpx.Response, dict[str, Any], httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=HOLD_S + 30) as client:
            call = asyncio.create_task(client.post(
                "/v1/features/triage", json={"input": {"text": "where is my parcel?"}}))
            item = await claim(client, "ann", "triage")
            assert not call.done(), "the caller was not held"
            given = await client.post(f"/api/reviews/{item['trace_id']}/verdict",
                                      json={"reviewer": "ann", **verdict})
            return await call, item, given

    answer, item, given = asyncio.run(loop())
    assert item["mode"] == "held" and item["output"] == {"label": "billing"}
    assert item["confidence"] == pytest.approx(0.368, abs=0.01)
    assert given.status_code == 200 and given.json()["status"] == "done"
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["trace_id"] == item["trace_id"] and body["decision"] == "review"
    assert body["review"] == review and body["reviewed"] is True and body["output"] == expected
    assert body["timings_ms"]["hold"] < HOLD_S * 1000 / 3  # well before the timeout
    assert server.database is not None
    with store_at(server.database).connection() as conn:
        row = conn.execute("SELECT expected, provenance FROM dataset_examples WHERE dataset = ?"
                           " AND example_id = ?", ("triage-gold", item["trace_id"])).fetchone()
    assert row is not None
    assert (None if row[0] is None else orjson.loads(row[0])) == (
        None if review == "rejected" else expected)
    assert orjson.loads(row[1])["source"] == "review"


def test_stats_over_http(server: KeelProcess) -> None:
    r = httpx.get(f"{server.base_url}/api/reviews/stats", params={"feature": "triage"})
    assert r.status_code == 200
    (stats,) = r.json()["features"]
    assert stats["feature"] == "triage" and stats["done"] >= 1


def test_a_verdict_from_keel_review_in_another_process_reaches_the_held_caller(
        server: KeelProcess) -> None:
    async def loop() -> httpx.Response:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            call = asyncio.create_task(client.post(
                "/v1/features/quick", json={"input": {"text": "card payment"}}))
            for _ in range(500):  # wait until the item is in the store
                r = await client.get("/api/reviews", params={"feature": "quick"})
                if r.json()["total"]:
                    break
                await asyncio.sleep(0.02)
            cli = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-c", "from keel.cli.review import app; app()", "next",
                 "--reviewer", "bob", "--feature", "quick", "--config", str(server.config),
                 *db_args(server.database)],
                input="a\n", capture_output=True, text=True, timeout=60)
            assert cli.returncode == 0, cli.stdout + cli.stderr
            return await call

    body = asyncio.run(loop()).json()
    # "approved" (not "timed_out") means the verdict reached the caller within its hold
    assert body["review"] == "approved" and body["timings_ms"]["hold"] < 8000
