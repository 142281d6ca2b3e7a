"""The cost of one call from its usage. Unknown prices stay unknown (None), never 0."""

from __future__ import annotations

from keel.spec import VersionSpec
from keel.types import Usage

# providers that run on this machine: no per-token price
FREE_PROVIDER_TYPES = frozenset({"local"})


def cost_usd(provider_type: str, version: VersionSpec, usage: Usage) -> float | None:
    if provider_type in FREE_PROVIDER_TYPES:
        return 0.0
    if version.price is None:
        return None
    price = version.price
    return (usage.input_tokens * price.input + usage.output_tokens * price.output) / 1_000_000
