"""``keel rollout``: canary rollouts, straight on the store (no server needed).

``status`` shows a feature's rollout, the live metrics of both versions in the current
step and the last transitions; ``start``, ``pause``, ``resume``, ``promote`` and
``rollback`` change it, recorded with the actor ``cli:<user>``. A running ``keel serve``
on the same store applies the change (weights, aliases) within its control interval;
its leader judges the steps.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from keel.cli.common import ConfigOpt, DatabaseOpt, console, fail, load, settings_for
from keel.control.canary_stats import RATE_METRICS, p95
from keel.control.live_metrics import VersionMetrics, live_metrics
from keel.control.registry import cli_actor
from keel.control.rollout import Rollout, RolloutController, controller_for
from keel.errors import KeelError
from keel.store import open_store

app = typer.Typer(name="rollout", no_args_is_help=True, add_completion=False,
                  help="Canary rollouts: start one, watch it, pause, promote or roll back.")

FeatureArg = Annotated[str, typer.Argument(help="the feature")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="why, as recorded")]


def _open(config: Path | None, database: str | None) -> RolloutController:
    settings = settings_for(config, database)
    if not settings.has_store:
        fail(f"no store at {settings.store_name}; start `keel serve` or pass --db")
    spec = load(settings)
    store = open_store(settings)
    store.migrate()
    return controller_for(store, spec)


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts).strftime("%m-%d %H:%M:%S")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _steps(raw: str | None) -> list[float] | None:
    if raw is None:
        return None
    try:
        return [float(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        fail(f"--steps: {raw!r} is not a comma-separated list of shares, e.g. 0.05,0.5,1")


@app.command("status")
def status(
    feature: FeatureArg,
    last: Annotated[int, typer.Option("--last", "-n", min=1, max=500,
                                      help="transitions to show")] = 10,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """The feature's rollout: state, step, weight, live metrics, last transitions."""
    controller = _open(config, database)
    rollout = controller.rollouts.latest(feature)
    if rollout is None:
        console.print(f"'{feature}' has no rollout yet")
        return
    _show(controller, rollout, last)


def _show(controller: RolloutController, rollout: Rollout, last: int) -> None:
    spec = rollout.spec
    facts = Table.grid(padding=(0, 2))
    facts.add_row("rollout", f"#{rollout.id} of {rollout.feature}: {rollout.candidate} "
                  f"against {rollout.baseline}")
    state: str = rollout.state
    if rollout.state == "running" and rollout.inconclusive_since is not None:
        deadline = rollout.inconclusive_since + spec.progress_deadline_s
        state += f" (inconclusive since {_when(rollout.inconclusive_since)}; rolls back at " \
                 f"{_when(deadline)})"
    facts.add_row("state", state)
    facts.add_row("step", f"{rollout.step + 1} of {len(spec.steps)} "
                  f"({', '.join(f'{w:.0%}' for w in spec.steps)})")
    facts.add_row("weight", f"{rollout.weight:.0%} of traffic to {rollout.candidate}")
    facts.add_row("step since", _when(rollout.step_started_at))
    facts.add_row("started", f"{_when(rollout.created_at)} by {rollout.created_by}"
                  + (" (forced: no passing eval run)" if rollout.forced else ""))
    if rollout.reason:
        facts.add_row("last reason", rollout.reason)
    console.print(facts)

    until = None if rollout.active else rollout.updated_at
    since = rollout.step_started_at
    store = controller.store
    cand = live_metrics(store, rollout.feature, rollout.candidate, since, until)
    base = live_metrics(store, rollout.feature, rollout.baseline,
                        rollout.created_at if rollout.weight >= 1.0 else since, until)
    console.print(_metrics_table(cand, base, spec.min_calls))

    table = Table(title="transitions", title_justify="left")
    for column in ("at", "actor", "from", "to", "weight", "reason"):
        table.add_column(column, no_wrap=column in {"at", "actor"}, overflow="fold")
    for t in controller.rollouts.transitions(rollout.id, last):
        table.add_row(_when(t.at), t.actor, t.from_state or "-", t.to_state, f"{t.weight:.0%}",
                      t.reason)
    console.print(table)


def _metrics_table(cand: VersionMetrics, base: VersionMetrics, min_calls: int) -> Table:
    table = Table(title=f"live metrics in this step (judged from {min_calls} calls each)",
                  title_justify="left")
    table.add_column("metric")
    table.add_column(f"candidate {cand.version}", justify="right")
    table.add_column(f"champion {base.version}", justify="right")
    table.add_row("calls", str(cand.calls), str(base.calls))
    for metric in RATE_METRICS:
        rates = []
        for m in (cand, base):
            total = int(getattr(m, metric.total))
            count = int(getattr(m, metric.count))
            rates.append(f"{_pct(count / total)} ({count})" if total else "-")
        table.add_row(metric.label, *rates)
    latency = [p95(m.latencies) for m in (cand, base)]
    table.add_row("p95 latency", *("-" if x is None else f"{x:.0f} ms" for x in latency))
    table.add_row("cost per call", *("-" if m.cost_per_call is None else f"${m.cost_per_call:.6f}"
                                     for m in (cand, base)))
    return table


@app.command("start")
def start(
    feature: FeatureArg,
    version: Annotated[str, typer.Argument(help="the candidate version")],
    force: Annotated[bool, typer.Option("--force", help="start without a passing eval run "
                                        "(recorded)")] = False,
    steps: Annotated[str | None, typer.Option(
        "--steps", help="traffic shares, e.g. 0.05,0.5,1 [default: the feature's rollout.steps]")
    ] = None,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Start a canary: VERSION takes the first step's share of the traffic."""
    shares = _steps(steps)
    controller = _open(config, database)
    try:
        rollout = controller.start(feature, version, actor=cli_actor(), force=force, steps=shares)
    except KeelError as exc:
        fail(exc.message)
    console.print(f"rollout #{rollout.id} of {feature} started: {version} takes "
                  f"{rollout.weight:.0%} of traffic from {rollout.baseline}"
                  + (" [yellow](forced: no passing eval run)[/]" if rollout.forced else ""))


@app.command("pause")
def pause(feature: FeatureArg, reason: ReasonOpt = None, config: ConfigOpt = None,
          database: DatabaseOpt = None) -> None:
    """Hold the current weight (hard SLO breaches still roll back)."""
    controller = _open(config, database)
    try:
        t = controller.pause(feature, actor=cli_actor(), reason=reason)
    except KeelError as exc:
        fail(exc.message)
    console.print(f"rollout #{t.rollout_id} of {feature} paused at {t.weight:.0%}")


@app.command("resume")
def resume(feature: FeatureArg, config: ConfigOpt = None, database: DatabaseOpt = None) -> None:
    """Run a paused rollout again; its current step starts over."""
    controller = _open(config, database)
    try:
        t = controller.resume(feature, actor=cli_actor())
    except KeelError as exc:
        fail(exc.message)
    console.print(f"rollout #{t.rollout_id} of {feature} running again at {t.weight:.0%}")


@app.command("promote")
def promote(
    feature: FeatureArg,
    force: Annotated[bool, typer.Option("--force", help="without a passing eval run "
                                        "(recorded)")] = False,
    reason: ReasonOpt = None,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Make the candidate champion now, skipping the steps left."""
    controller = _open(config, database)
    try:
        rollout = controller.rollouts.current(feature)
        controller.promote(feature, actor=cli_actor(), force=force, reason=reason)
    except KeelError as exc:
        fail(exc.message)
    console.print(f"rollout #{rollout.id} of {feature} promoted: {rollout.candidate} is champion")


@app.command("rollback")
def rollback(feature: FeatureArg, reason: ReasonOpt = None, config: ConfigOpt = None,
             database: DatabaseOpt = None) -> None:
    """Take all traffic off the candidate and end the rollout."""
    controller = _open(config, database)
    try:
        t = controller.rollback(feature, actor=cli_actor(), reason=reason)
    except KeelError as exc:
        fail(exc.message)
    console.print(f"rollout #{t.rollout_id} of {feature} rolled back: {t.reason}")
