"""Secrets masked in text, JSON values and log records (keel.stages.scrub)."""

from __future__ import annotations

import logging

import pytest

from keel.spec import ProviderSpec
from keel.stages.scrub import MASK, LogScrubbing, Scrubber
from keel.types import Attempt

SHAPES = [
    ("key sk-proj-abcdefghijklmnopqrstuvwx123 here", "key [SECRET] here"),
    ("anthropic sk-ant-api03-AAAABBBBCCCCDDDDEEEEFFFF!", "anthropic [SECRET]!"),
    ("Authorization: Bearer abc.def-123456789", "Authorization: Bearer [SECRET]"),
    ('{"x-api-key": "sk-ant-api03-AAAABBBBCCCCDDDDEEEE"}', '{"x-api-key": "[SECRET]"}'),
    ("proxy-authorization=Basic dXNlcjpwYXNz", "proxy-authorization=Basic [SECRET]"),
    ("curl -H 'api-key: 0123456789abcdef'", "curl -H 'api-key: [SECRET]'"),
    ("sent bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "sent bearer [SECRET]"),
    ("id AKIAIOSFODNN7EXAMPLE ok", "id [SECRET] ok"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\nNzaC1\n-----END OPENSSH PRIVATE KEY----- x",
     "[SECRET] x"),
    ("login password=hunter22 now", "login password=[SECRET] now"),
    ("PASSWORD: 'x1y2z3'", "PASSWORD: '[SECRET]'"),
    ("client_secret=abc&grant=1", "client_secret=[SECRET]&grant=1"),
    ("postgresql://keel:s3cr3t@db:5432/keel", "postgresql://keel:[SECRET]@db:5432/keel"),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "token [SECRET]"),
    ("slack xoxb-1234567890-abcdefghij", "slack [SECRET]"),
    ("AIzaSyA-abcdefghijklmnopqrstuvwxyz01234 google", "[SECRET] google"),
]


@pytest.mark.parametrize(("text", "expected"), SHAPES)
def test_common_secret_shapes_are_masked(text: str, expected: str) -> None:
    assert Scrubber().text(text) == expected


@pytest.mark.parametrize("text", [
    "I was charged twice for order 88213, please refund",
    "my task-based workflow and the passage about passwords in general",
    "the bearer of bad news", "max tokens: 512", "https://example.com/a:b@c",
    "Hello! " * 200,
])
def test_ordinary_text_is_left_alone_and_not_copied(text: str) -> None:
    assert Scrubber().text(text) is text


def test_known_secrets_from_providers_gateway_keys_and_environment() -> None:
    providers = {
        "p": ProviderSpec(type="openai", api_key="provider-key-without-shape-42"),
        "h": ProviderSpec(type="openai", headers={"X-Custom-Auth": "Token header-secret-77",
                                                  "OpenAI-Organization": "org-visible"}),
        "short": ProviderSpec(type="openai", api_key="sk-x"),  # a placeholder: not masked
    }
    env = {"MY_SERVICE_TOKEN": "env-secret-value-123", "HOME": "/root-not-a-secret",
           "OTHER_API_KEYS": "first-key-aaaa, second-key-bbbb"}
    scrubber = Scrubber.for_process(providers, ["gateway-key-0001"], env)
    text = ("provider-key-without-shape-42 header-secret-77 env-secret-value-123 "
            "gateway-key-0001 second-key-bbbb org-visible /root-not-a-secret sk-x")
    assert scrubber.text(text) == (f"{MASK} {MASK} {MASK} {MASK} {MASK} org-visible "
                                   "/root-not-a-secret sk-x")


def test_json_values_copied_only_where_changed() -> None:
    scrubber = Scrubber()
    clean = {"text": "hello", "items": [1, "two", {"n": None}]}
    assert scrubber.value(clean) is clean
    dirty = {"text": "hello", "headers": {"Authorization": "opaque-value", "Accept": "json"},
             "messages": [{"role": "user", "content": "sk-abcdefghijklmnopqrstuvwx"}],
             "password": "pw", "n": 3}
    out = scrubber.value(dirty)
    assert out == {"text": "hello", "headers": {"Authorization": MASK, "Accept": "json"},
                   "messages": [{"role": "user", "content": MASK}], "password": MASK, "n": 3}
    assert out["text"] is dirty["text"] and dirty["password"] == "pw"  # the original stays
    attempts = [Attempt("v1", "p", False, 1.0, error="401: key sk-abcdefghijklmnopqrstuv"),
                Attempt("v2", "p", True, 1.0)]
    scrubbed = scrubber.value(attempts)
    assert scrubbed[0].error == f"401: key {MASK}" and scrubbed[1] is attempts[1]
    assert attempts[0].error is not None and "sk-" in attempts[0].error


def test_log_records_are_scrubbed_while_installed(caplog: pytest.LogCaptureFixture) -> None:
    scrubbing = LogScrubbing(Scrubber(["known-secret-abcdef"]))
    logger = logging.getLogger("keel.test_scrub")
    scrubbing.install()
    try:
        with caplog.at_level(logging.INFO, logger="keel.test_scrub"):
            logger.info("calling with %s and %s", "known-secret-abcdef", "password=hunter22")
            try:
                raise RuntimeError("upstream said: Authorization: Bearer abcdefghijkl")
            except RuntimeError:
                logger.exception("failed")
    finally:
        scrubbing.uninstall()
    assert "known-secret-abcdef" not in caplog.text and "hunter22" not in caplog.text
    assert "abcdefghijkl" not in caplog.text and "Bearer [SECRET]" in caplog.text
    assert "calling with [SECRET] and password=[SECRET]" in caplog.text
    logger.warning("after: known-secret-abcdef")  # uninstalled: left alone
    assert logging.getLogRecordFactory() is logging.LogRecord
