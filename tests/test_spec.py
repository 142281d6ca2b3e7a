from __future__ import annotations

from pathlib import Path

import pytest

from keel.errors import ConfigError
from keel.spec import load_spec

GOOD = """
providers:
  up:
    type: openai
    base_url: ${UP_URL:-http://127.0.0.1:9/v1}
    api_key: ${UP_KEY}
features:
  triage:
    output: {kind: label, labels_file: labels.json}
    versions:
      v1: {provider: up, model: gpt-x, prompt: "Classify: {text}"}
      v2: {provider: local, model: minilm}
    aliases: {champion: v1}
    fallbacks: [v2]
"""


def write(tmp_path: Path, text: str, labels: str = '["a", "b"]') -> Path:
    (tmp_path / "labels.json").write_text(labels)
    path = tmp_path / "keel.yaml"
    path.write_text(text)
    return path


def test_loads_and_interpolates_env(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, GOOD), env={"UP_KEY": "sk-test"})
    assert spec.providers["up"].api_key == "sk-test"
    assert spec.providers["up"].base_url == "http://127.0.0.1:9/v1"
    assert spec.features["triage"].output.labels == ["a", "b"]  # read relative to keel.yaml


def test_the_shipped_keel_yaml_is_valid() -> None:
    spec = load_spec(Path(__file__).parents[1] / "keel.yaml")
    assert len(spec.features["intent"].output.labels or []) == 77


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (GOOD, {}, "keel.yaml: providers.up.api_key: environment variable UP_KEY is not set"),
        (GOOD.replace("champion: v1", "champion: v9"), {"UP_KEY": "k"},
         "features.triage: alias 'champion' points at unknown version 'v9'"),
        (GOOD.replace("fallbacks: [v2]", "fallbacks: [v3]"), {"UP_KEY": "k"},
         "fallback 'v3' is not a version"),
        (GOOD.replace("provider: local", "provider: nope"), {"UP_KEY": "k"},
         "features.triage.versions.v2.provider: unknown provider 'nope'"),
        (GOOD.replace("model: minilm", "model: minilm, temprature: 1"), {"UP_KEY": "k"},
         "features.triage.versions.v2.temprature: unknown field"),
        (GOOD.replace("{text}", "{txt}"), {"UP_KEY": "k"},
         "features.triage.versions.v1.prompt: placeholder(s) txt are not input properties"),
        (GOOD.replace("labels_file: labels.json", "labels_file: gone.json"), {"UP_KEY": "k"},
         "features.triage.output.labels_file: file not found"),
        ("features:\n  x: [1\n", {}, "invalid YAML"),
        ("- a list\n", {}, "the top level must be a mapping"),
        (GOOD.replace("aliases: {champion: v1}", "aliases: {canary: v1}"), {"UP_KEY": "k"},
         "aliases must name a 'champion' version"),
    ],
)
def test_bad_config_names_file_path_and_problem(tmp_path: Path, text: str, env: dict[str, str],
                                                message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_spec(path, env=env)
    assert str(path) in info.value.message
    assert message in info.value.message


def test_bad_labels_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, labels='{"not": "a list"}')
    with pytest.raises(ConfigError, match="must hold a non-empty JSON list of strings"):
        load_spec(path, env={"UP_KEY": "k"})


def test_policy_thresholds_must_be_ordered(tmp_path: Path) -> None:
    text = GOOD + "    policy: {accept_at: 0.3, refuse_below: 0.5}\n"
    with pytest.raises(ConfigError, match=r"policy: refuse_below \(0.5\) must not exceed accept_at"):
        load_spec(write(tmp_path, text), env={"UP_KEY": "k"})


def test_invalid_json_schema_and_on_fail(tmp_path: Path) -> None:
    text = GOOD + "    validators:\n      - {type: json_schema, schema: {type: 7}}\n      - {type: regex, pattern: x, on_fail: retry}\n"
    with pytest.raises(ConfigError) as info:
        load_spec(write(tmp_path, text), env={"UP_KEY": "k"})
    assert "validators[0].schema: not a valid JSON Schema" in info.value.message
    assert "validators[1].on_fail: Input should be 'repair', 'reask'" in info.value.message
