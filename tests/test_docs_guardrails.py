"""docs/guardrails.md's keel.yaml example parses."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from keel.spec import parse_spec

DOC = (Path(__file__).parents[1] / "docs" / "guardrails.md").read_text()


def test_guardrails_yaml_example_is_valid(tmp_path: Path) -> None:
    (example,) = re.findall(r"```yaml\n(.*?)```", DOC, re.DOTALL)
    spec = parse_spec(yaml.safe_load(example), base=tmp_path, env={})
    assert [c.type for c in spec.features["support"].checks] == [
        "pii", "injection", "language", "tokens", "custom"]
