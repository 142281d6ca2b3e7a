"""The HTTP API fuzzed with schemathesis against Keel's own OpenAPI document.

A real ``keel serve`` (a process, in front of a fake OpenAI upstream, with an admin key in
``KEEL_API_KEYS``) serves ``/openapi.json``; the schemathesis CLI reads it and sends
generated requests to every operation in it, valid and invalid ones (phases: examples,
coverage, fuzzing, stateful), deterministically (``generation.deterministic``: the same
requests every run). Two runs:

* with the admin key: no answer is a 5xx (``not_a_server_error``), and every answer is
  one the document declares: its status, content type, headers and body schema; an
  operation that declares a key does not answer 2xx without one (``ignored_auth``);
* with no key: every operation but the public ones answers 401 ``invalid_api_key`` in
  Keel's error shape, never a 5xx (the check is in ``tests/e2e/fuzz_checks.py``).

The CLI is schemathesis's stable interface (its pytest plugin's ``from_fixture`` does not
run under pytest 9). A failure shows schemathesis's report, with a ``curl`` line that
reproduces each failing request, and the tail of the server's log (a 500's stack trace).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keel.control.datasets import DatasetStore, Item
from keel.settings import Settings
from keel.store import open_store
from keel.testing import FakeUpstream
from tests.e2e.server import free_port

REPO = Path(__file__).resolve().parents[2]
# test cases per operation in the fuzzing phase (the examples, coverage and stateful
# phases add theirs): the keyed run takes about 55 s on two CPUs, the other about 10 s
MAX_EXAMPLES = 40
NO_KEY_EXAMPLES = 4
ADMIN_KEY = "keel_fuzz_admin_0123456789abcdef0123456789"
KEYED_CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
                "response_headers_conformance", "response_schema_conformance", "ignored_auth")

KEEL_CONFIG = """
providers:
  fake: {{type: openai, base_url: "{url}", timeout_s: 5, connect_timeout_s: 1}}
features:
  triage:
    description: Route a message to an intent.
    output: {{kind: label, labels: [billing, shipping, other]}}
    versions:
      v1: {{provider: fake, model: fake-model, price: {{input: 1.0, output: 4.0}}}}
      v2: {{provider: fake, model: fake-model-2}}
    aliases: {{champion: v1}}
    fallbacks: [v2]
    retry: {{max_retries: 0}}
    validators:
      - {{type: allowed_labels, on_fail: review}}
    safe_default: {{label: other}}
    slo: {{error_rate: 0.05, latency_p95_ms: 400, review_rate: 0.2}}
  assist:
    output: {{kind: chat}}
    versions:
      c1: {{provider: fake, model: fake-model}}
    aliases: {{champion: c1}}
  embed:
    output: {{kind: embedding}}
    versions:
      e1: {{provider: fake, model: fake-embed}}
    aliases: {{champion: e1}}
budgets:
  - {{name: everyone, scope: all, period: month, limit_usd: 1000}}
throttles:
  - {{name: per-user, scope: user, requests_per_minute: 1000000}}
"""

# schemathesis.toml: real names for path and query parameters part of the time, so that
# requests get past "unknown feature" into the handlers
FUZZ_CONFIG = """
workers = 1
request-timeout = 15

[generation]
deterministic = true
max-examples = {max_examples}

[warnings]
fail-on = ["unresolvable_reference", "missing_deserializer", "unsupported_regex"]

[dictionaries.features]
values = ["triage", "assist", "embed"]

[dictionaries.versions]
values = ["v1", "v2", "v3", "c1", "e1"]

[dictionaries.aliases]
values = ["champion", "canary"]

[dictionaries.datasets]
values = ["golden"]

[dictionaries.dataset_refs]
values = ["golden@1", "golden"]

[dictionaries.traces]
values = [{traces}]

[parameters]
"path.feature" = {{ dictionary = "features", probability = 0.7 }}
"query.feature" = {{ dictionary = "features", probability = 0.5 }}
"path.model" = {{ dictionary = "features", probability = 0.5 }}
"body.model" = {{ dictionary = "features", probability = 0.7 }}
"path.version" = {{ dictionary = "versions", probability = 0.5 }}
"path.alias" = {{ dictionary = "aliases", probability = 0.5 }}
"body.version" = {{ dictionary = "versions", probability = 0.5 }}
"path.trace_id" = {{ dictionary = "traces", probability = 0.5 }}
"body.trace_id" = {{ dictionary = "traces", probability = 0.5 }}
"body.dataset" = {{ dictionary = "dataset_refs", probability = 0.5 }}

[[operations]]
include-path = "/v1/features/{{name}}"
parameters = {{ "path.name" = {{ dictionary = "features", probability = 0.8 }} }}

[[operations]]
include-path-regex = "^/api/datasets/"
parameters = {{ "path.name" = {{ dictionary = "datasets", probability = 0.7 }} }}
"""


class Served:
    """``keel serve`` as a process; its output goes to a file (a pipe nobody reads could
    fill up and stall a server that logs a lot)."""

    def __init__(self, tmp: Path, upstream: FakeUpstream) -> None:
        self.tmp = tmp
        self.config = tmp / "keel.yaml"
        self.config.write_text(KEEL_CONFIG.format(url=upstream.base_url))
        self.log = tmp / "server.log"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.traces: list[str] = []

    def start(self) -> None:
        store = open_store(Settings(database=self.tmp / "keel.db"))  # a dataset to read
        store.migrate()
        items = [Item.of({"text": f"message {i}"}, {"label": "billing" if i % 2 else "other"},
                         split="train" if i < 8 else "eval") for i in range(10)]
        DatasetStore(store).commit("golden", items, actor="test")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "keel", "serve", "--config", str(self.config),
                 "--db", str(self.tmp / "keel.db"), "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "KEEL_API_KEYS": ADMIN_KEY})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"keel serve exited:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"keel serve did not start in 60 s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def seed(self) -> None:
        """Something for the reads to find: calls (events, review items), a key."""
        with httpx.Client(base_url=self.base_url, timeout=30,
                          headers={"authorization": f"Bearer {ADMIN_KEY}"}) as client:
            for text in ("where is my parcel", "I was charged twice", "hello"):
                r = client.post("/v1/features/triage", json={"input": {"text": text}})
                assert r.status_code == 200, r.text
                self.traces.append(r.json()["trace_id"])
            r = client.post("/v1/chat/completions", json={
                "model": "assist", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
            r = client.post("/api/keys", json={"name": "viewer", "role": "viewer"})
            assert r.status_code == 201, r.text
            r = client.post("/api/features/triage/versions", json={
                "name": "v3", "spec": {"provider": "fake", "model": "fake-model-3"}})
            assert r.status_code == 201, r.text
            r = client.post("/api/features/triage/rollout",
                            json={"version": "v3", "force": True, "steps": [0.1, 1.0]})
            assert r.status_code == 201, r.text

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def fuzz(self, name: str, max_examples: int, checks: tuple[str, ...], *args: str,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """One schemathesis CLI run against this server's /openapi.json."""
        config = self.tmp / f"{name}.toml"
        config.write_text(FUZZ_CONFIG.format(
            max_examples=max_examples, traces=", ".join(f'"{t}"' for t in self.traces)))
        return subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
             f"{self.base_url}/openapi.json", "--checks", ",".join(checks), "--no-color",
             "--continue-on-failure", "--report-dir", str(self.tmp / f"{name}-report"), *args],
            cwd=self.tmp, capture_output=True, text=True, timeout=600,  # its caches go there
            env={**os.environ, "HYPOTHESIS_STORAGE_DIRECTORY": str(self.tmp / "hypothesis"),
                 **(env or {})}, check=False)

    def explain(self, run: subprocess.CompletedProcess[str]) -> str:
        return (f"schemathesis exited {run.returncode}\n{run.stdout}\n{run.stderr}\n"
                f"--- keel serve's log (tail) ---\n{self.log_tail()}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with FakeUpstream(reply="billing") as upstream:
        server = Served(tmp_path_factory.mktemp("fuzz"), upstream)
        server.start()
        try:
            server.seed()
            yield server
        finally:
            server.stop()


@pytest.mark.sqlite_only  # the server runs on the SQLite file the fixture seeds
def test_with_an_admin_key_no_answer_is_a_5xx_or_off_the_document(served: Served) -> None:
    run = served.fuzz("keyed", MAX_EXAMPLES, KEYED_CHECKS,
                      "--header", f"Authorization: Bearer {ADMIN_KEY}")
    assert run.returncode == 0, served.explain(run)


@pytest.mark.sqlite_only
def test_without_a_key_every_protected_operation_answers_401(served: Served) -> None:
    run = served.fuzz("no-key", NO_KEY_EXAMPLES, ("not_a_server_error", "keel_requires_a_key"),
                      "--phases", "coverage,fuzzing",
                      env={"SCHEMATHESIS_HOOKS": str(REPO / "tests" / "e2e" / "fuzz_checks.py")})
    assert run.returncode == 0, served.explain(run)
