"""docs/observability.md stays true: its keel.yaml parses, every metric it lists is
exposed, and every metric exposed is listed."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from keel.errors import ProviderUnavailable
from keel.gateway import Keel
from keel.spec import parse_spec
from keel.types import Completion, Usage
from tests.conftest import basic_feature, scripted, settings_in, spec_with

DOC = (Path(__file__).parents[2] / "docs" / "observability.md").read_text()


def test_the_slo_example_is_valid(tmp_path: Path) -> None:
    (example,) = [b for b in re.findall(r"```yaml\n(.*?)```", DOC, re.DOTALL) if "features:" in b]
    slo = parse_spec(yaml.safe_load(example), base=tmp_path, env={}).features["triage"].slo
    assert (slo.latency_p95_ms, slo.error_rate, slo.cost_per_call_usd) == (800, 0.01, 0.002)


async def test_every_listed_metric_is_exposed_and_every_exposed_one_listed(tmp_path: Path) -> None:
    listed = set(re.findall(r"^\| `(keel_[a-z_]+)` \|", DOC, re.MULTILINE))
    spec = spec_with(basic_feature(slo={"error_rate": 0.1}, versions={
        "v1": {"provider": "p1", "model": "m1", "price": {"input": 1, "output": 1}},
        "v2": {"provider": "p2", "model": "m2"}}))
    async with Keel(spec, settings_in(tmp_path)) as keel:
        scripted(keel, "p1").script = [
            ProviderUnavailable("down"), Completion({"label": "zzz"}, 0.9, Usage(1, 1))]
        await keel.call("f", {"text": "hi"})
        assert keel.writer.flush()
        assert keel.observability.metrics is not None
        body, _ = keel.observability.metrics.render(None)
    exposed = {f.name for f in text_string_to_metric_families(body.decode())
               if f.name.startswith("keel_")}
    # the parser names counters without _total
    assert {n.removesuffix("_total") for n in listed} == exposed
