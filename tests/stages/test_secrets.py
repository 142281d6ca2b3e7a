"""Secrets sent through a real call never reach the store, a review item or the logs: in
the caller's input, in the model's answer (the fake echoes the input), and in an
upstream's error message that echoes the API key Keel sent it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import Response

from keel.gateway import Keel
from keel.settings import Settings
from keel.spec import parse_spec
from keel.testing import FakeUpstream, echo
from keel.testing.fake_openai import _error
from keel.testing.faults import Fault
from keel.types import Decision

PROVIDER_KEY = "primary-provider-key-0123456789"  # no secret shape: known to the process
ENV_SECRET = "env-held-service-credential-42"
IN_INPUT = [
    "sk-proj-Abcdefghijklmnopqrstuvwxyz012345",  # an OpenAI key
    "AKIAIOSFODNN7EXAMPLE",  # an AWS access key id
    "hunter2hunter2",  # after password=
    "eyJhbGciOiJIUzI1NiJ9.payload.signature",  # a bearer token
    ENV_SECRET,
]
EVERY_SECRET = [PROVIDER_KEY, *IN_INPUT]


class EchoingKeyUpstream(FakeUpstream):
    """Answers 401 in the ``auth`` mode quoting the key it got, as some servers do."""

    async def _fault_response(self, request: Request, fault: Fault,
                              streaming: bool) -> Response | None:
        if fault.mode == "auth":
            key = request.headers.get("authorization", "").split()[-1]
            return _error(401, f"Incorrect API key provided: {key}. Check it.",
                          "invalid_request_error", "invalid_api_key")
        return await super()._fault_response(request, fault, streaming)


def spec_for(primary: str, backup: str) -> object:
    return parse_spec({
        "providers": {
            "primary": {"type": "openai", "base_url": primary, "api_key": PROVIDER_KEY},
            "backup": {"type": "openai", "base_url": backup},
        },
        "features": {"reply": {
            "output": {"kind": "text"},
            "versions": {"a": {"provider": "primary", "model": "fake-model"},
                         "b": {"provider": "backup", "model": "fake-model"}},
            "aliases": {"champion": "a"}, "fallbacks": ["b"],
            "retry": {"max_retries": 0},
            "policy": {"accept_at": 1.0, "unknown_confidence": "review"},  # always reviewed
        }},
    })


async def test_secrets_appear_nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("BILLING_SERVICE_TOKEN", ENV_SECRET)
    text = (f"my key is {IN_INPUT[0]}, aws {IN_INPUT[1]}, password={IN_INPUT[2]}, "
            f"Authorization: Bearer {IN_INPUT[3]}, and {ENV_SECRET}")
    with EchoingKeyUpstream() as primary, FakeUpstream(reply=echo) as backup:
        primary.set_mode("auth")
        spec = spec_for(primary.base_url, backup.base_url)
        settings = Settings(database=tmp_path / "keel.db")
        with caplog.at_level(logging.DEBUG):
            async with Keel(spec, settings) as keel:  # type: ignore[arg-type]
                outcome = await keel.call("reply", {"text": text})
                # whatever a component logs about the call goes through the same filter
                logging.getLogger("keel.providers").error(
                    "upstream said %s for %s", outcome.attempts[0].error, text)
                logging.getLogger("keel.test").warning("raw key: %s", PROVIDER_KEY)
                assert keel.writer.flush()
                with keel.store.connection() as conn:
                    events = [tuple(r) for r in conn.execute("SELECT * FROM events")]
                    reviews = [tuple(r) for r in conn.execute("SELECT * FROM review_items")]
    assert primary.last_request is not None  # the key did go upstream, and came back
    assert outcome.decision is Decision.REVIEW and outcome.version == "b"
    assert outcome.attempts[0].ok is False and "[SECRET]" in (outcome.attempts[0].error or "")
    assert len(events) == 1 and len(reviews) == 1
    stored = repr(events) + repr(reviews)
    assert "[SECRET]" in stored and "Incorrect API key provided" in stored
    logs = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert "raw key: [SECRET]" in logs
    files = "".join(p.read_text() for p in settings.spill_directory.glob("*") if p.is_file())
    answer = repr(outcome.output) + repr(outcome.attempts) + (outcome.error or "")
    for secret in EVERY_SECRET:
        assert secret not in stored, secret
        assert secret not in logs, secret
        assert secret not in files, secret
    assert PROVIDER_KEY not in answer  # the caller never learns the upstream key
