"""docs/routing.md's keel.yaml examples parse, each with the policy it describes."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from keel.spec import parse_spec

DOC = (Path(__file__).parents[1] / "docs" / "routing.md").read_text()


def test_every_routing_example_is_a_valid_config(tmp_path: Path) -> None:
    examples = re.findall(r"```yaml\n(.*?)```", DOC, re.DOTALL)
    policies = []
    for text in examples:
        spec = parse_spec(yaml.safe_load(text), base=tmp_path, env={"OPENAI_API_KEY": "sk-x"})
        (feature,) = spec.features.values()
        routing = feature.routing
        assert routing is not None
        policies.append(next((n for n in ("cascade", "cheapest", "latency")
                              if getattr(routing, n) is not None), routing.downgrade_to))
    assert policies == ["cascade", "cheapest", "latency", "gpt-small"]
