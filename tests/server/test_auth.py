"""Gateway keys: 401 in OpenAI's shape without one; the key's id, never the key, recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pytest

from keel.gateway import Keel
from keel.server import create_app
from keel.server.auth import key_id
from keel.settings import Settings
from tests.conftest import basic_feature, settings_in, spec_with


@pytest.fixture
async def keel(tmp_path: Path) -> AsyncIterator[Keel]:
    settings = replace(settings_in(tmp_path), api_keys=frozenset({"sk-good", "sk-other"}))
    async with Keel(spec_with(basic_feature()), settings) as k:
        yield k


@pytest.fixture
async def client(keel: Keel) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(keel)),
                                 base_url="http://keel") as c:
        yield c


BODY = {"input": {"text": "hi"}}


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer sk-bad"}, {"x-api-key": "nope"},
                                     {"authorization": "Basic sk-good"}])
async def test_missing_or_wrong_keys_get_401(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    r = await client.post("/v1/features/f", json=BODY, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert r.json()["error"]["type"] == "authentication_error"
    assert (await client.get("/v1/models", headers=headers)).status_code == 401


async def test_a_good_key_passes_and_only_its_id_is_recorded(client: httpx.AsyncClient, keel: Keel) -> None:
    for headers in ({"authorization": "Bearer sk-good"}, {"x-api-key": "sk-other"}):
        r = await client.post("/v1/features/f", json=BODY, headers=headers)
        assert r.status_code == 200
    assert keel.writer.flush()
    ids = {e["key_id"] for e in keel.store.recent_events()}
    assert ids == {key_id("sk-good"), key_id("sk-other")}
    assert (await client.get("/healthz")).status_code == 200  # liveness stays open


def test_keys_from_the_environment() -> None:
    settings = Settings.from_env({"KEEL_API_KEYS": "a, b,,"})
    assert settings.api_keys == frozenset({"a", "b"})


async def test_the_openai_sdk_raises_authentication_error(keel: Keel) -> None:
    transport = httpx.ASGITransport(app=create_app(keel))
    async with httpx.AsyncClient(transport=transport, base_url="http://keel/v1") as http:
        client = openai.AsyncOpenAI(base_url="http://keel/v1", api_key="sk-bad", http_client=http,
                                    max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
        good = openai.AsyncOpenAI(base_url="http://keel/v1", api_key="sk-good", http_client=http,
                                  max_retries=0)
        assert [m.id async for m in good.models.list()] == ["f"]
