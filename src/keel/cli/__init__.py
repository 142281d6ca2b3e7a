"""``keel``: the command line. One module per command group; this one wires them."""

from __future__ import annotations

import typer

from keel.cli import (
    audit,
    calibrate,
    call,
    check,
    data,
    demo,
    drift,
    eval_runs,
    evaluate,
    events,
    feedback,
    keys,
    prune,
    review,
    rollout,
    serve,
    slo,
    versions,
)

app = typer.Typer(
    name="keel",
    help="Keel: the system around the model. Serve features, call them, inspect events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve.serve)
app.command("call")(call.call)
app.command("check")(check.check)
app.command("events")(events.events)
app.command("eval")(evaluate.evaluate)
app.command("eval-runs")(eval_runs.runs)
app.add_typer(review.app, name="review")
app.add_typer(data.app, name="data")
app.command("calibrate")(calibrate.calibrate)
app.command("drift")(drift.drift)
app.add_typer(versions.app, name="versions")
app.add_typer(rollout.app, name="rollout")
app.command("slo")(slo.slo)
app.command("prune")(prune.prune)
app.command("demo")(demo.demo)
app.add_typer(keys.app, name="keys")
app.add_typer(audit.app, name="audit")
app.add_typer(feedback.app, name="feedback")


def main() -> None:
    app()
