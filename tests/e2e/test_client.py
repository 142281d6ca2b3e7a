"""keel.Client and keel.AsyncClient against a real ``keel serve`` in front of a fake
upstream: features, feedback sent the instant an answer arrives, the review queue,
keys, and Keel's errors as exceptions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

import keel
from keel.errors import (
    EventNotFound,
    FeatureNotFound,
    InvalidApiKey,
    InvalidFeedback,
    Throttled,
)
from keel.testing import FakeUpstream
from tests.e2e.server import KeelProcess

KEY = "sk-client-test"
# one token per answer with logprob -1: confidence e^-1 = 0.37
CONFIG = """
providers:
  up: {{type: openai, base_url: "{url}", timeout_s: 5}}
features:
  triage:
    output: {{kind: label, labels: [billing, shipping, other]}}
    versions: {{gpt: {{provider: up, model: fake-model, params: {{logprobs: true}}}}}}
    aliases: {{champion: gpt}}
    policy: {{accept_at: 0.2}}
    safe_default: {{label: other}}
  queue:
    output: {{kind: label, labels: [billing, shipping, other]}}
    versions: {{gpt: {{provider: up, model: fake-model, params: {{logprobs: true}}}}}}
    aliases: {{champion: gpt}}
    policy: {{accept_at: 0.5}}
    safe_default: {{label: other}}
throttles:
  - {{name: slow-user, scope: user, match: slow-user, requests_per_minute: 1}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeelProcess]:
    tmp = tmp_path_factory.mktemp("client")
    with FakeUpstream(reply="billing", token_logprob=-1.0) as up:
        config = tmp / "keel.yaml"
        config.write_text(CONFIG.format(url=up.base_url))
        with KeelProcess(config, tmp / "keel.db", env={"KEEL_API_KEYS": KEY}) as proc:
            yield proc


@pytest.fixture
def client(server: KeelProcess) -> Iterator[keel.Client]:
    with keel.Client(server.base_url, KEY) as k:
        yield k


def test_a_call_and_its_feedback_the_moment_it_returns(client: keel.Client) -> None:
    for i in range(20):  # each feedback races the event writer of the call before it
        outcome = client.call("triage", {"text": f"charged twice {i}"}, user=f"u{i}")
        assert isinstance(outcome, keel.Outcome) and outcome.output == {"label": "billing"}
        assert outcome.decision is keel.Decision.ACCEPTED and outcome.version == "gpt"
        up = client.thumbs_up(outcome.trace_id)
        assert up.result == "created" and up.feedback.feature == "triage"
        fixed = client.correct(outcome.trace_id, "shipping", comment="it was the parcel")
        assert fixed.example is not None and fixed.example.dataset == "triage-feedback"
        assert fixed.feedback.output == {"label": "shipping"}
        done = client.outcome(outcome.trace_id, "ticket_resolved", source="crm")
        assert done.feedback.user == f"u{i}"
    again = client.outcome(outcome.trace_id, "ticket_resolved", source="crm")
    assert again.result == "unchanged" and again.feedback.id == done.feedback.id
    page = client.list_feedback(trace_id=outcome.trace_id)
    assert page.total == 3 and {f.kind for f in page.items} == {"thumbs", "correction", "outcome"}
    stats = client.feedback_stats("triage")
    (gpt,) = stats.versions
    assert gpt.version == "gpt" and gpt.calls >= 20 and gpt.thumbs_up == 20
    assert gpt.corrections == 20 and gpt.outcomes["ticket_resolved"].calls == 20


def test_errors_are_keels_exceptions(client: keel.Client, server: KeelProcess) -> None:
    with pytest.raises(FeatureNotFound):
        client.call("nope", {"text": "x"})
    with pytest.raises(EventNotFound) as missing:
        client.thumbs_up("0" * 32)
    assert missing.value.status == 404 and missing.value.param == "trace_id"
    outcome = client.call("triage", {"text": "x"})
    with pytest.raises(InvalidFeedback) as bad:
        client.rate(outcome.trace_id, 9)
    assert bad.value.status == 422 and bad.value.param == "value"
    with pytest.raises(InvalidFeedback):
        client.correct(outcome.trace_id, "not-a-label")
    with keel.Client(server.base_url, api_key="sk-wrong") as stranger, \
            pytest.raises(InvalidApiKey):
        stranger.features()


def test_a_throttle_longer_than_max_wait_is_raised_with_retry_after(
        server: KeelProcess) -> None:
    with keel.Client(server.base_url, KEY, max_wait_s=0.5) as k:
        k.call("triage", {"text": "first"}, user="slow-user")
        with pytest.raises(Throttled) as caught:
            k.call("triage", {"text": "second"}, user="slow-user")
    assert caught.value.retry_after is not None and caught.value.retry_after > 0.5


def test_the_review_queue(client: keel.Client) -> None:
    outcome = client.call("queue", {"text": "where is my parcel"})
    assert outcome.decision is keel.Decision.REVIEW and outcome.review == "pending"
    item = None
    for _ in range(200):  # the item reaches the store with the writer's next batch
        item = client.next_review("ann", feature="queue")
        if item is not None:
            break
        time.sleep(0.02)
    assert item is not None and item.trace_id == outcome.trace_id
    done = client.verdict(item.trace_id, "ann", "edit", output={"label": "shipping"})
    assert done.status == "done" and done.final is not None
    assert client.reviews(feature="queue", status="done").total == 1


def test_the_async_client(server: KeelProcess) -> None:
    async def run() -> None:
        async with keel.AsyncClient(server.base_url, KEY) as k:
            features = {f.name: f for f in await k.features()}
            assert features["triage"].labels == ["billing", "shipping", "other"]
            outcomes = await asyncio.gather(*(k.call("triage", {"text": f"a{i}"}, session="s")
                                              for i in range(5)))
            results = await asyncio.gather(*(k.thumbs_down(o.trace_id) for o in outcomes))
            assert all(r.result == "created" and r.example is not None for r in results)
            assert results[0].example is not None and results[0].example.label == "thumbs_down"

    asyncio.run(run())
