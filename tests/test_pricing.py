from __future__ import annotations

import pytest

from keel.pricing import Pricing, cost_of, find_price, packaged_prices
from keel.spec import PriceSpec, VersionSpec
from keel.types import Usage


def test_packaged_table_covers_the_common_models() -> None:
    table = packaged_prices()
    for model in ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "claude-3-5-haiku"):
        assert model in table


def test_dated_snapshots_match_their_base_model() -> None:
    table = packaged_prices()
    assert find_price("gpt-4o-2024-08-06", table) == table["gpt-4o"]
    assert find_price("gpt-4o-mini-2024-07-18", table) == table["gpt-4o-mini"]
    assert find_price("claude-3-5-sonnet-20241022", table) == table["claude-3-5-sonnet"]
    assert find_price("gpt-4", table) is None  # not a prefix match of gpt-4o
    assert find_price("my-finetune", table) is None


def test_cached_and_cache_write_tokens_are_priced_apart() -> None:
    price = PriceSpec(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75)
    usage = Usage(input_tokens=1_000_000, output_tokens=100_000, cached_input_tokens=400_000,
                  cache_write_tokens=100_000, reasoning_tokens=50_000)
    expected = (500_000 * 3.0 + 400_000 * 0.3 + 100_000 * 3.75 + 100_000 * 15.0) / 1e6
    assert cost_of(price, usage) == pytest.approx(expected)


def test_resolution_order_and_unknown_models() -> None:
    pricing = Pricing(overrides={"house-model": PriceSpec(input=1, output=2)})
    usage = Usage(input_tokens=1000, output_tokens=1000)
    own = VersionSpec(model="gpt-4o", price=PriceSpec(input=10, output=10))
    assert pricing.cost_usd("openai", own, usage) == pytest.approx(0.02)
    assert pricing.cost_usd("openai", VersionSpec(model="house-model"), usage) == pytest.approx(0.003)
    assert pricing.cost_usd("openai", VersionSpec(model="gpt-4o-mini"), usage) == pytest.approx(0.00075)
    assert pricing.cost_usd("openai", VersionSpec(model="mystery"), usage) is None
    assert pricing.cost_usd("local", VersionSpec(model="mystery"), usage) == 0.0
