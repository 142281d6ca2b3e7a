"""``keel versions``: the registry from the command line.

``list``, ``show`` (the model card), ``register`` (a version spec from a YAML file),
``alias`` (move an alias; ``champion`` needs a passing eval run unless ``--force``),
``history`` (every alias move with its actor) and ``train`` (fit a version on a
dataset version). A running server picks the changes up within its control interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
import yaml
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from keel.cli.common import ConfigOpt, DatabaseOpt, console, fail, load, settings_for
from keel.control.registry import Registry, VersionRecord, bootstrap, cli_actor, promote
from keel.errors import ConfigError, KeelError
from keel.settings import Settings
from keel.spec import KeelSpec, VersionSpec
from keel.store import open_store

app = typer.Typer(help="Versions of a feature: list, model cards, register, aliases, train.",
                  no_args_is_help=True)

FeatureArg = Annotated[str, typer.Argument(help="feature name")]


def open_registry(config: Path | None, database: str | None) -> tuple[Settings, KeelSpec, Registry]:
    settings = settings_for(config, database)
    spec = load(settings)
    store = open_store(settings)
    store.migrate()
    try:
        registry = bootstrap(store, spec)
    except ConfigError as exc:
        fail(exc.message)
    return settings, spec, registry


def _check_feature(spec: KeelSpec, feature: str, settings: Settings) -> None:
    if feature not in spec.features:
        fail(f"no feature '{feature}' in {settings.config} (features: {', '.join(spec.features)})")


@app.command("list")
def list_versions(feature: FeatureArg, config: ConfigOpt = None, database: DatabaseOpt = None,
                  as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every version of a feature, oldest first, with its aliases."""
    settings, spec, registry = open_registry(config, database)
    _check_feature(spec, feature, settings)
    records, aliases = registry.list(feature), registry.aliases(feature)
    if as_json:
        console.print_json(orjson.dumps({"aliases": aliases,
                                         "versions": [r.to_dict() for r in records]}).decode())
        return
    table = Table(title=f"{feature}: versions", title_justify="left")
    for col in ("#", "name", "aliases", "provider", "model", "trained on", "source",
                "registered by"):
        table.add_column(col)
    for r in records:
        on = ", ".join(a for a, v in sorted(aliases.items()) if v == r.name)
        table.add_row(str(r.number), r.name, on, r.provider, r.model, r.dataset or "",
                      r.source, r.registered_by)
    console.print(table)


def card_markdown(record: VersionRecord, aliases: dict[str, str], runs: list[dict[str, object]]) -> str:
    card = record.card
    lines = [f"# {record.feature} / {record.name} (#{record.number})", ""]
    on = [a for a, v in sorted(aliases.items()) if v == record.name]
    if on:
        lines += [f"Aliases: {', '.join(on)}", ""]
    lines += ["## Intended use", str(card.get("intended_use", "")), "",
              "## Model", f"- provider: {record.provider}", f"- model: {record.model}",
              f"- spec hash: {record.spec_hash}"]
    if record.artifact_path:
        lines.append(f"- artifact: {record.artifact_path} ({record.artifact_sha256})")
    lines += ["", "## Data"]
    if record.dataset:
        lines.append(f"- trained on {record.dataset} ({record.dataset_digest})")
    else:
        lines.append("- no training data (zero-shot or prompted)")
    training = card.get("training")
    if isinstance(training, dict):
        lines += [f"- {k}: {v}" for k, v in training.items()]
    lines += ["", "## Metrics"]
    if not runs:
        lines.append("- no eval runs yet: `keel eval FEATURE --version NAME --dataset D@N`")
    for run in runs[:5]:
        metrics = run.get("metrics")
        metrics = metrics if isinstance(metrics, dict) else {}
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in metrics.items()
                          if k in {"accuracy", "macro_f1", "coverage", "latency_p95_ms",
                                   "cost_per_call_usd", "n"})
        gate = {True: "gate passed", False: "gate failed", None: "not gated"}[run.get("passed")]  # type: ignore[index]
        lines.append(f"- {run['dataset']}@{run['dataset_number']}: {shown} ({gate}; run {run['id']})")
    lines += ["", "## Limits"]
    limits = card.get("limits")
    lines += [f"- {x}" for x in limits] if isinstance(limits, list) else []
    lines += ["", f"Registered by {record.registered_by} ({record.source})."]
    return "\n".join(lines)


@app.command("show")
def show(feature: FeatureArg, version: Annotated[str, typer.Argument(help="version name")],
         config: ConfigOpt = None, database: DatabaseOpt = None,
         as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A version's model card: intended use, model, data, metrics, limits."""
    settings, spec, registry = open_registry(config, database)
    _check_feature(spec, feature, settings)
    try:
        record = registry.get(feature, version)
    except KeelError as exc:
        fail(exc.message)
    runs = registry.eval_metrics(feature, version)
    if as_json:
        console.print_json(orjson.dumps({**record.to_dict(), "eval_runs": runs}).decode())
        return
    console.print(card_markdown(record, registry.aliases(feature), runs), highlight=False,
                  markup=False)


@app.command("register")
def register(feature: FeatureArg, name: Annotated[str, typer.Argument(help="new version name")],
             spec_file: Annotated[Path, typer.Argument(help="YAML or JSON version spec, as under "
                                                       "a feature's versions: in keel.yaml")],
             config: ConfigOpt = None, database: DatabaseOpt = None) -> None:
    """Register a version from a file; a running server serves it within its interval."""
    settings, spec, registry = open_registry(config, database)
    _check_feature(spec, feature, settings)
    try:
        raw = yaml.safe_load(spec_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        fail(f"{spec_file}: file not found")
    except yaml.YAMLError as exc:
        fail(f"{spec_file}: not YAML: {exc}")
    try:
        vspec = VersionSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"{spec_file}: {'.'.join(str(p) for p in first['loc']) or 'spec'}: {first['msg']}")
    known = {"local", *spec.providers}
    if vspec.provider not in known:
        fail(f"{spec_file}: provider: unknown provider '{vspec.provider}' (known: {', '.join(sorted(known))})")
    try:
        record = registry.register(feature, name, vspec, actor=cli_actor(), source="cli",
                                   fspec=spec.features[feature])
    except KeelError as exc:
        fail(exc.message)
    console.print(f"registered {feature}/{record.name} (#{record.number}, {record.spec_hash[:19]}…)")


@app.command("alias")
def alias(feature: FeatureArg, alias_name: Annotated[str, typer.Argument(metavar="ALIAS")],
          version: Annotated[str, typer.Argument(help="version to point it at")],
          force: Annotated[bool, typer.Option("--force", help="champion without a passing eval "
                                              "(recorded as forced)")] = False,
          reason: Annotated[str | None, typer.Option(help="why, for the history")] = None,
          config: ConfigOpt = None, database: DatabaseOpt = None) -> None:
    """Move an alias. ``champion`` needs a passing eval run on the pinned gate dataset."""
    settings, spec, registry = open_registry(config, database)
    _check_feature(spec, feature, settings)
    try:
        if alias_name == "champion":
            move = promote(registry.store, feature, spec.features[feature], version,
                           actor=cli_actor(), force=force, reason=reason)
        else:
            move = registry.move_alias(feature, alias_name, version, actor=cli_actor(),
                                       force=force, reason=reason)
    except KeelError as exc:
        fail(exc.message)
    how = " (forced)" if move.forced else f" (eval run {move.eval_run})" if move.eval_run else ""
    console.print(f"{feature}: {move.alias} {move.old_version or '-'} -> {move.new_version}{how}")


@app.command("history")
def history(feature: FeatureArg, limit: Annotated[int, typer.Option(min=1)] = 50,
            config: ConfigOpt = None, database: DatabaseOpt = None) -> None:
    """Every alias move, newest first, with who made it."""
    import datetime as dt

    settings, spec, registry = open_registry(config, database)
    _check_feature(spec, feature, settings)
    table = Table(title=f"{feature}: alias moves", title_justify="left")
    for col in ("when (UTC)", "alias", "from", "to", "actor", "forced", "eval run", "reason"):
        table.add_column(col)
    for m in registry.history(feature, limit):
        when = dt.datetime.fromtimestamp(m.ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(when, m.alias, m.old_version or "-", m.new_version or "-", m.actor,
                      "yes" if m.forced else "", m.eval_run or "", m.reason or "")
    console.print(table)


@app.command("train")
def train(feature: FeatureArg,
          dataset: Annotated[str, typer.Option("--dataset", help="NAME@N (or NAME: the latest)")],
          name: Annotated[str | None, typer.Option(help="version name; default trained-N")] = None,
          trainer: Annotated[str, typer.Option(help="trainer: local-head")] = "local-head",
          split: Annotated[str, typer.Option(help="split to train on")] = "train",
          config: ConfigOpt = None, database: DatabaseOpt = None) -> None:
    """Fit a new version on a dataset version and register it with its provenance."""
    from keel.control.train import train_version, trainer_named

    settings, spec, registry = open_registry(config, database)
    _check_feature(spec, feature, settings)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("embedding", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            record, trained = train_version(
                registry.store, feature, spec.features[feature], dataset,
                settings.artifacts_dir, actor=cli_actor(), trainer=trainer_named(trainer),
                name=name, split=split, progress=advance)
        except KeelError as exc:
            fail(exc.message)
    facts = ", ".join(f"{k} {v}" for k, v in trained.metrics.items())
    console.print(f"registered {feature}/{record.name} (#{record.number}) from "
                  f"{record.dataset}: {facts}")
    console.print(f"next: keel eval {feature} --version {record.name} --gate")
