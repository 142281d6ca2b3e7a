"""docs/caching.md's examples run as written: its keel.yaml parses, and its Python example,
against the fake upstream, prints what the page says it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import yaml

from keel.spec import parse_spec
from keel.testing import FakeUpstream

DOC = (Path(__file__).parents[1] / "docs" / "caching.md").read_text()


def block(lang: str) -> str:
    (found,) = re.findall(rf"```{lang}\n(.*?)```", DOC, re.DOTALL)
    return found


def test_the_yaml_example_is_valid(tmp_path: Path) -> None:
    spec = parse_spec(yaml.safe_load(block("yaml")), base=tmp_path, env={})
    cache = spec.features["triage"].cache
    assert cache is not None and cache.exact is not None and cache.semantic is not None


@pytest.mark.slow
def test_the_python_example_prints_what_the_page_says(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    code = block("python")
    expected = [line.removeprefix("    # ") for line in code.splitlines()
                if line.startswith("    # ")]
    (tmp_path / "caching.yaml").write_text(block("yaml"))
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with FakeUpstream(reply="billing") as up, contextlib.redirect_stdout(out):
        monkeypatch.setenv("UPSTREAM_URL", up.base_url)
        exec(compile(code, "docs/caching.md", "exec"), {})
        assert up.requests == 3  # first, other and fresh asked the model
    assert out.getvalue().splitlines() == expected
