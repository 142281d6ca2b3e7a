"""The Python examples of docs/client.md and docs/feedback.md run as written, each in
its own interpreter, against a real ``keel serve`` with an ``intent`` feature (and, for
the in-process example, its keel.yaml in the working directory)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.testing import FakeUpstream
from tests.e2e.server import KeelProcess

DOCS = Path(__file__).parents[2] / "docs"
CONFIG = """
providers:
  up: {{type: openai, base_url: "{url}", timeout_s: 5}}
features:
  intent:
    output: {{kind: label, labels: [card_arrival, request_refund, exchange_rate, card_not_working]}}
    versions: {{zero-shot-1: {{provider: up, model: fake-model}}}}
    aliases: {{champion: zero-shot-1}}
"""


def examples() -> list[tuple[str, int, str]]:
    out = []
    for name in ("client.md", "feedback.md"):
        for i, code in enumerate(re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(),
                                            re.DOTALL)):
            out.append((name, i, code))
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeelProcess]:
    tmp = tmp_path_factory.mktemp("client-docs")
    with FakeUpstream(reply="card_arrival") as up:
        config = tmp / "keel.yaml"
        config.write_text(CONFIG.format(url=up.base_url))
        with KeelProcess(config, tmp / "served.db") as proc:
            yield proc


def test_there_are_examples() -> None:
    assert {name for name, _, _ in examples()} == {"client.md", "feedback.md"}


@pytest.mark.parametrize(("doc", "index", "code"), examples(),
                         ids=[f"{n}-{i}" for n, i, _ in examples()])
def test_the_example_runs(server: KeelProcess, doc: str, index: int, code: str) -> None:
    env = {**os.environ, "KEEL_BASE_URL": server.base_url}
    for name in ("KEEL_API_KEY", "KEEL_CONFIG", "KEEL_DATABASE"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", code], cwd=server.config.parent, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{doc} example {index}:\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip()  # every example prints what it shows
