"""docs/access.md stays true: its commands exist, its roles are the roles, its error codes
exist, and its key-management walkthrough runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

import keel.errors
from keel.cli import app
from keel.control.keys import ROLES

DOC = (Path(__file__).parents[1] / "docs" / "access.md").read_text()
runner = CliRunner()


def commands() -> list[list[str]]:
    out = []
    for block in re.findall(r"```sh\n(.*?)```", DOC, re.DOTALL):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("keel "):
                out.append(shlex.split(line)[1:])
    return out


def test_every_command_exists() -> None:
    found = {tuple(c[:2]) for c in commands()}
    assert {("keys", "create"), ("keys", "list"), ("keys", "revoke"), ("audit", "list"),
            ("audit", "verify")} <= found
    for group, sub in found:
        result = runner.invoke(app, [group, sub, "--help"])
        assert result.exit_code == 0, (group, sub, result.output)


def test_the_roles_table_and_the_error_codes() -> None:
    table = DOC.split("## Roles", 1)[1].split("\n\n", 2)[1]
    assert tuple(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE)) == ROLES
    codes = {c.code for c in vars(keel.errors).values()
             if isinstance(c, type) and issubclass(c, keel.errors.KeelError)}
    assert {"invalid_api_key", "permission_denied"} <= codes
    assert "permission_denied" in DOC and "invalid_api_key" in DOC


def test_the_key_walkthrough_runs(tmp_path: Path) -> None:
    db = ["--db", str(tmp_path / "keel.db"), "--config", str(tmp_path / "none.yaml")]
    for args in commands():
        if args[:1] != ["keys"]:
            continue
        if args[1] == "revoke":  # the doc's id is an example: revoke by name instead
            args = ["keys", "revoke", "web-app"]
        result = runner.invoke(app, [*args, *db])
        assert result.exit_code == 0, (args, result.output)
    result = runner.invoke(app, ["audit", "verify", *db])
    assert result.exit_code == 0 and "3 row(s)" in result.output
