"""LocalProvider end to end: the real model behind the Provider protocol."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from keel.errors import ConfigError, ProviderRejected
from keel.providers import build_provider
from keel.providers.base import OutputKind, ProviderRequest
from keel.providers.local import LocalProvider
from keel.providers.local.classifier import LogisticHead
from keel.providers.local.embedder import load_encoder
from keel.spec import ProviderSpec
from keel.types import Completion

LABELS = ["card_arrival", "change_pin", "terminate_account", "exchange_rate", "lost_or_stolen_card"]
DESCRIPTIONS = {"lost_or_stolen_card": "my card was lost or stolen"}


def request(
    text: Any = "I want to close my account",
    *,
    kind: OutputKind = "label",
    version: str = "v1",
    labels: list[str] | None = LABELS,
    **params: Any,
) -> ProviderRequest:
    return ProviderRequest(
        feature="intent",
        version=version,
        model="minilm-l6-int8",
        input={"text": text},
        output_kind=kind,
        timeout_s=5.0,
        labels=labels,
        label_descriptions=DESCRIPTIONS,
        params=params,
    )


@pytest.fixture
async def provider() -> AsyncIterator[LocalProvider]:
    p = LocalProvider("local", ProviderSpec(type="local"))
    await p.start()
    yield p
    await p.close()


async def test_complete_returns_a_label_with_confidence(provider: LocalProvider) -> None:
    out = await provider.complete(request())
    assert isinstance(out, Completion)
    assert out.output == {"label": "terminate_account"}
    assert out.confidence is not None and 0.0 <= out.confidence <= 1.0
    assert out.usage.input_tokens == 8 and out.usage.output_tokens == 0  # 6 words + CLS/SEP
    assert out.model == "minilm-l6-int8"


async def test_built_through_the_provider_table() -> None:
    p = build_provider("local", ProviderSpec(type="local", options={"threads": 1}))
    assert isinstance(p, LocalProvider) and p.name == "local"
    out = await p.complete(request("someone stole my card on the bus"))
    assert out.output == {"label": "lost_or_stolen_card"}
    await p.close()


async def test_prepare_builds_once_and_concurrent_calls_resolve(provider: LocalProvider) -> None:
    await provider.prepare(request(text=None))
    cached = provider._classifiers[("intent", "v1")][1]
    texts = ["where is my card?", "new pin please", "close my account", "euro to dollar rate?"] * 5
    outs = await asyncio.gather(*(provider.complete(request(t)) for t in texts))
    assert [o.output["label"] for o in outs[:4]] == LABELS[:4]
    assert provider._classifiers[("intent", "v1")][1] is cached


async def test_temperature_and_text_field_params(provider: LocalProvider) -> None:
    req = request(temperature=0.01, text_field="body")
    req.input = {"body": "How do I change my PIN?"}
    sharp = await provider.complete(req)
    soft = await provider.complete(
        request("How do I change my PIN?", version="v2", temperature=1.0)
    )
    assert sharp.output == soft.output == {"label": "change_pin"}
    assert sharp.confidence is not None and soft.confidence is not None
    assert sharp.confidence > soft.confidence


async def test_trained_head_param(provider: LocalProvider, tmp_path: Path) -> None:
    texts = [
        "where is my card",
        "card not arrived yet",
        "change my pin",
        "new pin code",
        "close my account",
        "delete my account",
    ]
    labels = ["card_arrival"] * 2 + ["change_pin"] * 2 + ["terminate_account"] * 2
    path = tmp_path / "head.npz"
    LogisticHead.fit(texts, labels, load_encoder()).save(path)
    out = await provider.complete(request("I would like to cancel my account", head=str(path)))
    assert out.output == {"label": "terminate_account"}
    assert out.confidence is not None and 0.0 <= out.confidence <= 1.0

    with pytest.raises(ProviderRejected, match="predicts labels the feature does not have"):
        await provider.complete(request(version="v2", head=str(path), labels=["change_pin", "x"]))


async def test_missing_head_file_is_a_clear_error(provider: LocalProvider, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-head.npz"
    with pytest.raises(
        ProviderRejected, match=r"params\.head: file not found: .*no-such-head\.npz"
    ):
        await provider.prepare(request(head=str(missing)))
    with pytest.raises(ProviderRejected, match="file not found"):
        await provider.complete(request(head=str(missing)))


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (request(kind="text"), "only classifies"),
        (request(text=42), "input field 'text' must be a string"),
        (request(labels=None), "no labels"),
        (request(temperature=0), "temperature must be a number > 0"),
        (request(label_template="about {topic}"), "label_template"),
        (request(threads=0), "threads must be a positive integer"),
    ],
)
async def test_bad_requests_are_rejected(
    provider: LocalProvider, req: ProviderRequest, message: str
) -> None:
    with pytest.raises(ProviderRejected, match=message) as info:
        await provider.complete(req)
    assert not info.value.retryable


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"providers\.mine\.options: unknown option\(s\) thread"):
        LocalProvider("mine", ProviderSpec(type="local", options={"thread": 2}))
    with pytest.raises(ConfigError, match="max_batch must be a positive integer"):
        LocalProvider("mine", ProviderSpec(type="local", options={"max_batch": 0}))


async def test_local_embeddings_are_unit_vectors_and_similar_texts_are_close() -> None:
    from keel.providers.base import ProviderRequest
    from keel.providers.local import LocalProvider
    from keel.spec import ProviderSpec

    provider = LocalProvider("local", ProviderSpec(type="local"))
    await provider.start()
    try:
        request = ProviderRequest("e", "v1", "minilm", {}, "embedding", 10.0)
        result = await provider.embed(request, ["my card has not arrived", "where is my new card",
                                                "what is the exchange rate"])
        vectors = np.asarray(result.vectors)
        assert vectors.shape == (3, 384)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
        assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
        assert result.usage.input_tokens > 0
        with pytest.raises(ProviderRejected, match="does not generate text"):
            async for _ in provider.stream(request):
                pass
    finally:
        await provider.close()
