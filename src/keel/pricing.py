"""The cost of one call from its usage.

Prices come, in order, from the version's ``price``, keel.yaml's top-level
``pricing`` (by model id), and the packaged table ``keel/data/pricing.yaml``.
Local providers cost nothing. A model found nowhere has an *unknown* cost (None),
never a silent zero: a dashboard that sums zeros lies.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources

import yaml

from keel.spec import PriceSpec, VersionSpec
from keel.types import Usage

# providers that run on this machine: no per-token price
FREE_PROVIDER_TYPES = frozenset({"local", "llama_cpp"})


def packaged_prices() -> dict[str, PriceSpec]:
    data = yaml.safe_load(resources.files("keel.data").joinpath("pricing.yaml").read_text("utf-8"))
    return {model: PriceSpec.model_validate(price) for model, price in data["models"].items()}


def find_price(model: str, table: Mapping[str, PriceSpec]) -> PriceSpec | None:
    """Exact id, else the longest id that is a dash-separated prefix (dated snapshots)."""
    price = table.get(model)
    if price is not None:
        return price
    best: str | None = None
    for known in table:
        if model.startswith(known + "-") and (best is None or len(known) > len(best)):
            best = known
    return table[best] if best is not None else None


class Pricing:
    def __init__(self, overrides: Mapping[str, PriceSpec] | None = None,
                 table: Mapping[str, PriceSpec] | None = None) -> None:
        self._table = {**(packaged_prices() if table is None else table), **(overrides or {})}
        self._cache: dict[str, PriceSpec | None] = {}

    def price_of(self, provider_type: str, version: VersionSpec) -> PriceSpec | None:
        if version.price is not None:
            return version.price
        if version.model not in self._cache:
            self._cache[version.model] = find_price(version.model, self._table)
        return self._cache[version.model]

    def cost_usd(self, provider_type: str, version: VersionSpec, usage: Usage) -> float | None:
        if provider_type in FREE_PROVIDER_TYPES:
            return 0.0
        price = self.price_of(provider_type, version)
        return None if price is None else cost_of(price, usage)


def cost_of(price: PriceSpec, usage: Usage) -> float:
    cached = usage.cached_input_tokens
    written = usage.cache_write_tokens
    fresh = max(0, usage.input_tokens - cached - written)
    cached_price = price.input if price.cached_input is None else price.cached_input
    write_price = price.input if price.cache_write is None else price.cache_write
    total = (fresh * price.input + cached * cached_price + written * write_price
             + usage.output_tokens * price.output)
    return total / 1_000_000
