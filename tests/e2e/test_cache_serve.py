"""The shared cache across real processes: two ``keel serve`` on one store and one Redis,
in front of a fake upstream. An answer one of them got is served by the other; a
promotion made by the CLI, a third process, empties the cache for both (each notices at
its next control sync), and a rollback does not bring the old answers back."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from keel.testing import FakeUpstream
from tests.backends import REDIS_URL, db_args
from tests.e2e.server import KeelProcess

redis = pytest.importorskip("redis")

CONFIG = """
providers:
  up: {{type: openai, base_url: "{base_url}", timeout_s: 5}}
features:
  triage:
    output: {{kind: label, labels: [billing, shipping, other]}}
    versions:
      v1: {{provider: up, model: fake-model, price: {{input: 1.0, output: 4.0}}}}
      v2: {{provider: up, model: fake-model, params: {{temperature: 0}},
            price: {{input: 1.0, output: 4.0}}}}
    aliases: {{champion: v1}}
    cache: {{exact: {{ttl_s: 600}}}}
"""


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[FakeUpstream, KeelProcess, KeelProcess, Path]]:
    prefix = f"keel-test:{uuid.uuid4().hex[:12]}:"
    client = redis.Redis.from_url(REDIS_URL)
    with FakeUpstream(reply="billing") as up:
        (tmp_path / "keel.yaml").write_text(CONFIG.format(base_url=up.base_url))
        env = {"KEEL_REDIS_URL": REDIS_URL, "KEEL_CACHE_PREFIX": prefix,
               "KEEL_CONTROL_INTERVAL_S": "0.2"}
        try:
            with KeelProcess(tmp_path / "keel.yaml", tmp_path / "keel.db", env=env) as a, \
                    KeelProcess(tmp_path / "keel.yaml", tmp_path / "keel.db", env=env) as b:
                yield up, a, b, tmp_path
        finally:
            for key in client.scan_iter(match=f"{prefix}*"):
                client.delete(key)
            client.close()


def ask(proc: KeelProcess) -> tuple[str, str]:
    r = httpx.post(f"{proc.base_url}/v1/features/triage",
                   json={"input": {"text": "I was charged twice"}}, timeout=10)
    assert r.status_code == 200, r.text
    return r.headers["x-keel-cache"], r.json()["version"]


def promote(tmp: Path, version: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "keel", "versions", "alias", "triage", "champion", version,
         "--force", "--config", str(tmp / "keel.yaml"), *db_args(tmp / "keel.db")],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def first_answer_of(proc: KeelProcess, version: str, timeout: float = 20.0) -> str:
    """The cache status of the first answer by ``version`` (polling until it serves it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, served = ask(proc)
        if served == version:
            return status
        time.sleep(0.1)
    raise AssertionError(f"{proc.base_url} never served {version}")


def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_processes_share_answers_and_a_promotion_empties_the_cache(
        world: tuple[FakeUpstream, KeelProcess, KeelProcess, Path]) -> None:
    up, a, b, tmp = world
    assert ask(a) == ("miss", "v1")
    assert ask(b) == ("hit-exact", "v1")  # a's answer, from Redis
    assert up.requests == 1

    promote(tmp, "v2")
    assert first_answer_of(b, "v2") == "miss"
    assert first_answer_of(a, "v2") == "hit-exact"  # b's v2 answer, same generation

    promote(tmp, "v1")  # a rollback: v1's answer is still in Redis, but not served
    assert first_answer_of(a, "v1") == "miss"
    until(lambda: ask(b) == ("hit-exact", "v1"))
    assert up.requests == 3
