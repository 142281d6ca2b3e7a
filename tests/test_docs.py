"""The README's examples stay true: its keel.yaml parses, its codes and commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typer.testing import CliRunner

import keel.errors
from keel.cli import app
from keel.server.openai_compat import ModelNotFound
from keel.spec import parse_spec

README = (Path(__file__).parents[1] / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.DOTALL)


def test_every_yaml_example_is_a_valid_config(tmp_path: Path) -> None:
    examples = blocks("yaml")
    assert examples
    for text in examples:
        parse_spec(yaml.safe_load(text), base=tmp_path, env={"OPENAI_API_KEY": "sk-x", "ANTHROPIC_API_KEY": "sk-ant-x"})


def test_every_documented_error_code_exists() -> None:
    codes = {cls.code for cls in vars(keel.errors).values()
             if isinstance(cls, type) and issubclass(cls, keel.errors.KeelError)}
    codes |= {ModelNotFound.code}
    table = README.split("## Errors", 1)[1].split("##", 1)[0]
    documented = set(re.findall(r"`([a-z_]+)`", table)) - {"input", "user"}
    assert documented <= codes, documented - codes


def test_every_documented_command_exists() -> None:
    commands = set(re.findall(r"\bkeel (\w+)", README)) - {"check keel"}
    commands &= {"serve", "call", "check", "events", "eval", "review", "data", "drift", "audit", "keys",
                 "versions", "rollout", "calibrate", "slo"}
    runner = CliRunner()
    for command in commands:
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, (command, result.output)
