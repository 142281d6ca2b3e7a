"""``keel demo``: the closed loop on BANKING77, offline, with no manual step (docs/demo.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
import uvloop
from rich.console import Console

from keel.cli.common import ConfigOpt, console, fail
from keel.demo import DemoConfig, DemoResult, default_data_dir, run_demo
from keel.errors import KeelError

D = DemoConfig(data=Path())  # the defaults, shown by --help
STEPS = ",".join(f"{w:g}" for w in D.canary_steps)


def _steps(raw: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        fail(f"--canary-steps: {raw!r} is not a comma-separated list of shares, e.g. 0.25,0.5,1")


def demo(
    cycles: Annotated[int, typer.Option(help="learning cycles (serve, review, train, gate, "
                                             "canary, calibrate)")] = D.cycles,
    traffic: Annotated[int, typer.Option(help="messages per serving phase")] = D.traffic,
    alpha: Annotated[float, typer.Option(help="error allowed among auto-accepted answers")] = D.alpha,
    delta: Annotated[float, typer.Option(help="chance the calibration guarantee may fail")] = D.delta,
    reviewer_error: Annotated[float, typer.Option(
        help="share of verdicts the simulated reviewers get wrong")] = D.reviewer_error,
    review_cost: Annotated[float, typer.Option(help="assumed USD per human verdict")] = D.review_cost_usd,
    data: Annotated[Path | None, typer.Option(
        help="folder with train.csv, test.csv, categories.json (default: $KEEL_BANKING77_DIR, "
             "else ../shared/data/banking77 beside keel.yaml)")] = None,
    gate_size: Annotated[int, typer.Option(help="test.csv rows in the gate set, the same "
                                                "number per intent (0: all)")] = D.gate_size,
    calibration_size: Annotated[int, typer.Option(
        help="train.csv rows held out (never served) to calibrate thresholds")] = D.calibration_size,
    canary_steps: Annotated[str, typer.Option(help="canary traffic shares")] = STEPS,
    canary_min_calls: Annotated[int, typer.Option(
        help="calls per version before a canary step is judged")] = D.canary_min_calls,
    users: Annotated[int, typer.Option(help="distinct users sending the traffic")] = D.users,
    seed: Annotated[int, typer.Option(help="same seed, same run")] = D.seed,
    workdir: Annotated[Path | None, typer.Option(
        help="folder for the store, keel.yaml, artifacts, chart and numbers (new or empty; "
             "default: a new temporary folder)")] = None,
    plot: Annotated[Path | None, typer.Option(
        help="chart file, .png (needs matplotlib) or .svg (default: WORKDIR/demo.png)")] = None,
    host: Annotated[str, typer.Option(help="address the server binds")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port of the server (0: any free one)")] = D.port,
    keep_serving: Annotated[bool, typer.Option(
        "--keep-serving", help="keep the server (and dashboard) up after the demo")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or "
                                                              "per-cycle tables")] = False,
    config: ConfigOpt = None,
) -> None:
    """Serve, review, learn, gate, canary, promote and recalibrate `intent` on BANKING77."""
    if host not in {"127.0.0.1", "localhost", "::1"}:
        fail("the demo serves without API keys: bind it to 127.0.0.1")
    config_path = config or Path("keel.yaml")
    try:
        cfg = DemoConfig(
            data=data or default_data_dir(config_path), config=config_path, workdir=workdir,
            cycles=cycles, traffic=traffic, alpha=alpha, delta=delta,
            reviewer_error=reviewer_error, review_cost_usd=review_cost, gate_size=gate_size,
            calibration_size=calibration_size, canary_steps=_steps(canary_steps),
            canary_min_calls=canary_min_calls, users=users, seed=seed, host=host, port=port,
            plot=plot, keep_serving=keep_serving)
    except KeelError as exc:
        fail(exc.message)
    result = DemoResult({}, "", "")
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            # piped, rich would squeeze the tables into 80 columns
            out = console if console.is_terminal else Console(width=160)
            runner.run(run_demo(cfg, out, quiet=quiet, result=result))
    except KeelError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        if result.complete and keep_serving:
            return  # the demo was done; Ctrl-C ended the serving after it
        console.print(f"interrupted; what ran is in {result.workdir or 'the work folder'}",
                      highlight=False)
        raise typer.Exit(130) from None
    if not result.complete:
        raise typer.Exit(1)  # it stopped early (said why)
