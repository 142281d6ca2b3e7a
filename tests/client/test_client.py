"""The client without a network: retries and Retry-After, errors mapped to Keel's
exceptions, configuration from the environment, and the blocking facade."""

from __future__ import annotations

import email.utils
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

import keel
from keel.client import AsyncClient, Client
from keel.client.errors import error_from_response, retry_after
from keel.errors import (
    AllTargetsFailed,
    EventNotFound,
    InvalidApiKey,
    InvalidFeedback,
    KeelError,
    NotFound,
    RouteNotFound,
    Throttled,
)

OUTCOME = {
    "trace_id": "ab" * 16, "feature": "intent", "version": "v1", "output": {"label": "a"},
    "decision": "accepted", "confidence": 0.9, "reviewed": False, "review": None, "reason": None,
    "cost_usd": None, "usage": {"input_tokens": 3, "output_tokens": 1},
    "timings_ms": {"total": 1.5},
    "attempts": [{"version": "v1", "provider": "p", "ok": True, "latency_ms": 1.0, "retry": 0,
                  "error_code": None, "error": None, "rejected_by": None}],
    "validations": [{"validator": "allowed_labels", "passed": True, "on_fail": "refuse",
                     "message": None}],
}


def error(code: str, status: int, headers: dict[str, str] | None = None,
          **extra: Any) -> httpx.Response:
    body = {"error": {"code": code, "message": f"{code}!", "type": "x", "param": "p"}, **extra}
    return httpx.Response(status, content=orjson.dumps(body), headers=headers)


class Script:
    """Answers requests from a list, recording them."""

    def __init__(self, *responses: httpx.Response | Callable[[httpx.Request], httpx.Response]):
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        item = self.responses.pop(0)
        return item(request) if callable(item) else item


def client(script: Script, **options: Any) -> tuple[AsyncClient, list[float]]:
    waits: list[float] = []
    c = AsyncClient("http://keel.test", transport=httpx.MockTransport(script), **options)

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    c.sleep = sleep
    return c, waits


async def test_a_call_returns_an_outcome_and_sends_the_envelope() -> None:
    script = Script(httpx.Response(200, json=OUTCOME))
    c, _ = client(script)
    async with c:
        outcome = await c.call("intent", {"text": "hi"}, user="u1", session="s1")
    assert isinstance(outcome, keel.Outcome)
    assert outcome.decision is keel.Decision.ACCEPTED and outcome.output == {"label": "a"}
    assert outcome.usage.input_tokens == 3 and outcome.attempts[0].version == "v1"
    request = script.requests[0]
    assert request.url.path == "/v1/features/intent"
    assert orjson.loads(request.content) == {"input": {"text": "hi"}, "user": "u1",
                                             "session": "s1"}


async def test_429_and_503_are_retried_after_retry_after() -> None:
    when = email.utils.formatdate(time.time() + 3, usegmt=True)
    script = Script(error("rate_limited", 429, {"retry-after": "2"}),
                    httpx.Response(503, text="busy", headers={"retry-after": when}),
                    httpx.Response(503, text="busy"),
                    httpx.Response(200, json=OUTCOME))
    c, waits = client(script, backoff_s=0.1)
    async with c:
        outcome = await c.call("intent", {"text": "hi"})
    assert outcome.trace_id == OUTCOME["trace_id"] and len(script.requests) == 4
    assert waits[0] == 2.0 and 1.0 < waits[1] <= 3.0  # an HTTP date
    assert 0.2 <= waits[2] < 0.4  # no Retry-After: backoff 0.1 * 2^2, jitter 0.5..1


async def test_a_wait_longer_than_max_wait_raises_at_once_with_retry_after() -> None:
    script = Script(error("rate_limited", 429, {"retry-after": "60"}))
    c, waits = client(script, max_wait_s=5)
    async with c:
        with pytest.raises(Throttled) as caught:
            await c.call("intent", {"text": "hi"})
    assert caught.value.retry_after == 60.0 and caught.value.status == 429 and waits == []


async def test_retries_run_out() -> None:
    script = Script(*(httpx.Response(503, text="down") for _ in range(3)))
    c, waits = client(script, max_retries=2)
    async with c:
        with pytest.raises(KeelError) as caught:
            await c.features()
    assert caught.value.code == "http_503" and caught.value.status == 503 and len(waits) == 2


async def test_connect_errors_are_retried() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    script = Script(refuse, httpx.Response(200, json={"features": []}))
    c, waits = client(script)
    async with c:
        assert await c.features() == []
    assert len(waits) == 1


@pytest.mark.parametrize(("response", "cls", "code"), [
    (error("event_not_found", 404), EventNotFound, "event_not_found"),
    (error("invalid_feedback", 422), InvalidFeedback, "invalid_feedback"),
    (error("invalid_api_key", 401), InvalidApiKey, "invalid_api_key"),
    (error("not_found", 404), RouteNotFound, "not_found"),
    (error("brand_new_code", 404), NotFound, "brand_new_code"),
    (httpx.Response(502, text="<html>bad gateway</html>"), KeelError, "http_502"),
])
def test_errors_are_keels_exceptions(response: httpx.Response, cls: type[KeelError],
                                     code: str) -> None:
    exc = error_from_response(response.status_code, response.content, response.headers)
    assert type(exc) is cls and exc.code == code and exc.status == response.status_code
    assert exc.message


def test_all_targets_failed_carries_the_trace_id() -> None:
    response = error("all_targets_failed", 502, trace_id="t1", attempts=[])
    exc = error_from_response(502, response.content, response.headers)
    assert isinstance(exc, AllTargetsFailed) and exc.trace_id == "t1"
    assert exc.message == "all_targets_failed!" and exc.param == "p"


def test_retry_after_forms() -> None:
    assert retry_after({"retry-after": "7"}) == 7.0
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None
    past = email.utils.formatdate(time.time() - 100, usegmt=True)
    assert retry_after({"retry-after": past}) == 0.0


async def test_base_url_and_key_from_the_environment() -> None:
    script = Script(httpx.Response(200, json={"features": []}))
    c = AsyncClient(transport=httpx.MockTransport(script),
                    env={"KEEL_BASE_URL": "http://env.test/", "KEEL_API_KEY": "sk-env"})
    async with c:
        await c.features()
    assert c.base_url == "http://env.test"
    request = script.requests[0]
    assert request.url.host == "env.test" and request.headers["authorization"] == "Bearer sk-env"
    bare = AsyncClient(env={})
    assert bare.base_url == "http://127.0.0.1:8000"
    await bare.aclose()


async def test_feedback_helpers_send_one_shape() -> None:
    record = {"id": "fb_1", "trace_id": "t", "feature": "f", "version": "v1", "routed": "v1",
              "kind": "outcome", "name": "refund_issued", "source": "crm", "value": 12.5,
              "comment": None, "output": None, "metadata": {"order": 7}, "user": None,
              "key_id": None, "revision": 1, "call_ts": 1.0, "created_at": 2.0,
              "updated_at": 2.0}
    script = Script(lambda r: httpx.Response(201, json={
        "result": "created", "changed": [], "feedback": record, "example": None}))
    c, _ = client(script)
    async with c:
        result = await c.outcome("t", "refund_issued", 12.5, source="crm", metadata={"order": 7})
    assert orjson.loads(script.requests[0].content) == {
        "trace_id": "t", "kind": "outcome", "name": "refund_issued", "value": 12.5,
        "source": "crm", "metadata": {"order": 7}}
    assert result.result == "created" and result.feedback.value == 12.5
    assert result.feedback.metadata == {"order": 7} and result.example is None


def test_the_blocking_client_runs_the_same_core() -> None:
    script = Script(error("rate_limited", 429, {"retry-after": "0"}),
                    httpx.Response(200, json=OUTCOME))
    with Client("http://keel.test", transport=httpx.MockTransport(script)) as c:
        outcome = c.call("intent", {"text": "hi"}, user="u1")
        assert outcome.decision is keel.Decision.ACCEPTED and len(script.requests) == 2
        assert c.call.__doc__ == AsyncClient.call.__doc__


def test_a_client_never_closed_does_not_keep_the_process_alive() -> None:
    code = "import keel; k = keel.Client('http://127.0.0.1:9'); print('made')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "made", done.stderr


def test_a_closed_client_says_so() -> None:
    c = Client("http://keel.test", transport=httpx.MockTransport(Script()))
    c.close()
    c.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        c.features()
