"""Keys across processes: ``keel keys`` in one process, ``keel serve`` in another. A key
revoked by the CLI stops working in the server within seconds; a server without keys
says who can reach it, and refuses a public address."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.backends import db_args
from tests.e2e.server import KeelProcess, free_port

CONFIG = """
providers:
  up: {type: openai, base_url: "http://127.0.0.1:9/v1", api_key: unused}
features:
  triage:
    output: {kind: label, labels: [a, b]}
    versions: {v1: {provider: up, model: m}}
    aliases: {champion: v1}
"""


def keel(config: Path, db: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keel", *args, "--config", str(config),
                           *db_args(db)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"}, check=False)


def test_a_key_revoked_by_the_cli_stops_working_in_the_server_within_seconds(
        tmp_path: Path) -> None:
    config, db = tmp_path / "keel.yaml", tmp_path / "keel.db"
    config.write_text(CONFIG)
    created = keel(config, db, "keys", "create", "--name", "ci", "--role", "app")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("keel_") and "\n" not in key  # the key alone on stdout
    viewer = keel(config, db, "keys", "create", "--name", "v", "--role", "viewer").stdout.strip()
    with KeelProcess(config, db) as server:
        headers = {"authorization": f"Bearer {key}"}
        assert httpx.get(f"{server.base_url}/v1/models", headers=headers).status_code == 200
        r = httpx.get(f"{server.base_url}/api/keys", headers={"authorization": f"Bearer {viewer}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
        revoked = keel(config, db, "keys", "revoke", "ci")
        assert revoked.returncode == 0, revoked.stderr
        start = time.monotonic()
        while httpx.get(f"{server.base_url}/v1/models", headers=headers).status_code == 200:
            assert time.monotonic() - start < 5, "the revoked key still works after 5 s"
            time.sleep(0.1)
        assert time.monotonic() - start < 3
    listed = keel(config, db, "audit", "list", "--json")
    assert '"key.revoke"' in listed.stdout and keel(config, db, "audit", "verify").returncode == 0


def test_without_keys_loopback_says_so_and_a_public_address_is_refused(tmp_path: Path) -> None:
    config, db = tmp_path / "keel.yaml", tmp_path / "keel.db"
    config.write_text(CONFIG)
    with KeelProcess(config, db) as server:
        assert httpx.get(f"{server.base_url}/api/keys").status_code == 200
    assert b"anyone on this machine can call it" in server.output
    refused = keel(config, db, "serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert refused.returncode == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in " ".join(refused.stderr.split())
