"""docs/privacy.md and docs/resilience.md stay true: their keel.yaml parses, their
commands and settings exist, their metrics and health fields are the real ones."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import yaml
from typer.testing import CliRunner

from keel.cli import app
from keel.settings import Settings
from keel.spec import parse_spec
from keel.stages.record import EventWriter
from keel.store import SQLiteStore

DOCS = Path(__file__).parents[1] / "docs"
PRIVACY = (DOCS / "privacy.md").read_text()
RESILIENCE = (DOCS / "resilience.md").read_text()


def test_yaml_examples_are_valid_configs(tmp_path: Path) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", PRIVACY, re.DOTALL)
    assert len(blocks) == 2
    specs = [parse_spec(yaml.safe_load(b), base=tmp_path, env={}) for b in blocks]
    assert specs[0].features["triage"].privacy.store_input == "redacted"
    assert specs[1].retention.payloads_days == 30
    # the block documents the defaults
    assert specs[1].retention == type(specs[1].retention)()


def test_prune_command_exists() -> None:
    result = CliRunner().invoke(app, ["prune", "--help"])
    assert result.exit_code == 0 and "--dry-run" in result.output


def test_documented_settings_are_read_from_the_environment(tmp_path: Path) -> None:
    names = set(re.findall(r"`(KEEL_[A-Z_]+)[`=]", RESILIENCE))
    assert {"KEEL_JOURNAL", "KEEL_SPILL_DIR", "KEEL_BUFFER_MAX", "KEEL_SPILL_MAX_BYTES"} <= names
    s = Settings.from_env({"KEEL_JOURNAL": "0", "KEEL_SPILL_DIR": str(tmp_path),
                           "KEEL_BUFFER_MAX": "7", "KEEL_SPILL_MAX_BYTES": "9"})
    assert (s.journal, s.spill_directory, s.buffer_max, s.spill_max_bytes) == (
        False, tmp_path, 7, 9)
    beside = Settings(database_url=f"sqlite:///{tmp_path / 'k.db'}").spill_directory
    assert beside == tmp_path / "k.db.spill"
    pg = Settings(database_url="postgresql://db.internal/keel").spill_directory
    assert pg.parent == Path(tempfile.gettempdir()) and pg.name.startswith("keel-spill-")


def test_health_fields_and_metrics_are_the_documented_ones(tmp_path: Path) -> None:
    table = RESILIENCE.split("| field | meaning |", 1)[1].split("\n\n", 1)[0]
    documented = {f for cell in re.findall(r"^\| ([^|]+) \|", table, re.MULTILINE)
                  for f in re.findall(r"`([a-z_]+)`", cell)}
    health = EventWriter(SQLiteStore(tmp_path / "k.db"), journal=True).health()
    assert documented | {"degraded", "journal"} == set(health)
    metrics = set(re.findall(r"`(keel_[a-z_]+)`", RESILIENCE))
    listed = set(re.findall(r"^\| `(keel_[a-z_]+)` \|", (DOCS / "observability.md").read_text(),
                            re.MULTILINE))
    assert metrics <= listed
