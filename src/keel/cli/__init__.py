"""``keel``: the command line. One module per command group; this one wires them."""

from __future__ import annotations

import typer

from keel.cli import calibrate, call, check, evaluate, events, review, serve

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
app.add_typer(review.app, name="review")
app.command("calibrate")(calibrate.calibrate)


def main() -> None:
    app()
