"""``keel keys`` and ``keel audit`` via CliRunner, tampering with the database directly;
``keel serve`` refusing a non-loopback address without keys."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli import app
from keel.cli.serve import check_access
from keel.control import keys
from keel.settings import Settings
from tests.backends import store_at

runner = CliRunner()

CONFIG = """
providers:
  up: {type: openai, base_url: "http://127.0.0.1:9/v1"}
features:
  triage:
    output: {kind: label, labels: [a, b]}
    versions: {v1: {provider: up, model: m}}
    aliases: {champion: v1}
"""


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "keel.yaml"
    config.write_text(CONFIG)
    return config, tmp_path / "keel.db"


def run(paths: tuple[Path, Path], *args: str) -> tuple[int, str]:
    config, db = paths
    result = runner.invoke(app, [*args, "--config", str(config), "--db", str(db)])
    return result.exit_code, result.output


def test_create_shows_the_key_once_then_list_and_revoke(paths: tuple[Path, Path]) -> None:
    code, out = run(paths, "keys", "create", "--name", "ci", "--role", "app",
                    "--feature", "triage")
    assert code == 0, out
    secret = out.splitlines()[0]
    assert secret.startswith("keel_") and "shown only now" in out
    record = keys.list_keys(store_at(paths[1]))[0]
    assert (record.name, record.role, record.features) == ("ci", "app", ("triage",))
    code, out = run(paths, "keys", "list")
    assert code == 0 and record.id in out and secret[:9] in out and secret not in out
    code, out = run(paths, "keys", "create", "--name", "ci", "--role", "viewer")
    assert code == 2 and "already named 'ci'" in out
    code, out = run(paths, "keys", "create", "--name", "x", "--role", "root")
    assert code == 2 and "unknown role 'root'" in out
    code, out = run(paths, "keys", "create", "--name", "x", "--role", "app", "--feature", "nope")
    assert code == 2 and "no feature nope" in out
    code, out = run(paths, "keys", "revoke", record.id)
    assert code == 0 and f"revoked key {record.id} 'ci'" in out
    assert keys.list_keys(store_at(paths[1])) == []
    code, out = run(paths, "keys", "list", "--revoked")
    assert "by cli:" in out
    code, out = run(paths, "keys", "revoke", "nope")
    assert code == 2 and "no API key" in out


def test_audit_list_and_verify(paths: tuple[Path, Path]) -> None:
    assert run(paths, "keys", "create", "--name", "ci", "--role", "app")[0] == 0
    assert run(paths, "versions", "alias", "triage", "canary", "v1")[0] == 0
    code, out = run(paths, "audit", "list", "--limit", "10")
    assert code == 0 and "audit trail (newest first)" in out, out
    code, out = run(paths, "audit", "list", "--json", "--target", "triage")
    got = [(e["action"], e["target"], e["actor"].split(":")[0]) for e in json.loads(out)]
    assert got == [("alias.move", "triage/canary", "cli"),
                   ("alias.seed", "triage/champion", "keel.yaml"),
                   ("version.register", "triage/v1", "keel.yaml")]
    code, out = run(paths, "audit", "list", "--json", "--target", "key:")
    assert [e["action"] for e in json.loads(out)] == ["key.create"]
    code, out = run(paths, "audit", "verify")
    assert code == 0 and "audit trail intact" in out


@pytest.mark.parametrize(("tamper", "row"), [
    ("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2", 2),
    ("DELETE FROM audit_log WHERE seq = 2", 3),
    ("INSERT INTO audit_log (seq, ts, actor, action, target, details, prev_hash, hash)"
     " SELECT MAX(seq) + 1, 1.0, 'mallory', 'alias.move', 'triage/champion', '{}', '', ''"
     " FROM audit_log", 6),
])
def test_verify_exits_1_naming_the_first_bad_row(paths: tuple[Path, Path], tamper: str,
                                                 row: int) -> None:
    for alias in ("a1", "a2", "a3"):
        assert run(paths, "versions", "alias", "triage", alias, "v1")[0] == 0
    assert run(paths, "audit", "verify")[0] == 0  # v1 registered, champion seeded, 3 moves
    with store_at(paths[1]).connection() as conn, conn:
        conn.execute(tamper)
    code, out = run(paths, "audit", "verify")
    assert code == 1, out
    assert f"audit trail broken at row {row}" in " ".join(out.split())


def test_serve_refuses_a_public_address_without_keys(paths: tuple[Path, Path]) -> None:
    code, out = run(paths, "serve", "--host", "0.0.0.0")
    assert code == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in " ".join(out.split())


def test_where_serving_without_keys_is_allowed(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    local = Settings(database=tmp_path / "keel.db")
    assert "anyone on this machine can call it" in (check_access(local) or "")
    with caplog.at_level(logging.WARNING, logger="keel.server"):
        loud = check_access(Settings(database=tmp_path / "keel.db", host="0.0.0.0",
                                     insecure_no_auth=True))
    assert loud is not None and loud.startswith("INSECURE")
    assert "INSECURE" in caplog.text
    assert check_access(Settings(database=tmp_path / "keel.db", host="0.0.0.0",
                                 api_keys=frozenset({"sk-x"}))) is None
    keys.create(store_at(tmp_path / "keel.db"), "ops", "admin", actor="test")
    assert check_access(Settings(database=tmp_path / "keel.db", host="0.0.0.0")) is None
