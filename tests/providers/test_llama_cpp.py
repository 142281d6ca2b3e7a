"""The in-process generative provider (SmolLM2-135M via llama.cpp). Runs when the `llm`
extra is installed (`make install-llm`); llama-cpp-python compiles on install."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

pytest.importorskip("llama_cpp", reason="the `llm` extra is not installed (make install-llm)")

from keel.errors import ConfigError, ProviderRejected
from keel.providers.base import ProviderRequest
from keel.providers.llama_cpp import LlamaCppProvider, default_model_path
from keel.spec import ProviderSpec
from keel.types import Delta


@pytest.fixture
async def provider() -> AsyncIterator[LlamaCppProvider]:
    p = LlamaCppProvider("llama", ProviderSpec(type="llama_cpp", options={"n_ctx": 512}))
    await p.start()
    yield p
    await p.close()


def chat(**kwargs: object) -> ProviderRequest:
    return ProviderRequest("f", "v1", "smollm2", {}, "chat", 60.0,
                           messages=[{"role": "user", "content": "Say hello."}],
                           params={"max_tokens": 12, "temperature": 0.0}, **kwargs)  # type: ignore[arg-type]


def test_the_model_file_ships_in_a_package() -> None:
    path = default_model_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


async def test_complete_generates_text_with_usage(provider: LlamaCppProvider) -> None:
    completion = await provider.complete(chat())
    assert isinstance(completion.output, dict) and completion.output["role"] == "assistant"
    assert completion.text and completion.usage.output_tokens > 0
    assert completion.usage.input_tokens > 0


async def test_stream_yields_deltas_then_usage(provider: LlamaCppProvider) -> None:
    deltas = [d async for d in provider.stream(chat())]
    assert "".join(d.text for d in deltas).strip()
    assert isinstance(deltas[-1], Delta) and deltas[-1].usage is not None


async def test_embed_is_refused(provider: LlamaCppProvider) -> None:
    with pytest.raises(ProviderRejected, match="embed with the local provider"):
        await provider.embed(chat(), ["x"])


def test_bad_options_and_paths() -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        LlamaCppProvider("llama", ProviderSpec(type="llama_cpp", options={"gpu": True}))


async def test_a_missing_model_file_is_a_config_error() -> None:
    p = LlamaCppProvider("llama", ProviderSpec(type="llama_cpp", options={"model_path": "/nope.gguf"}))
    with pytest.raises(ConfigError, match=r"no file at /nope\.gguf"):
        await p.start()
