"""``keel review``: the review queue in the terminal, straight on the store (no server).

``keel review list`` and ``keel review stats`` print tables; ``keel review next
--reviewer NAME`` claims items one by one and asks for a verdict: a=approve, e=edit,
r=reject, s=skip, q=quit. Verdicts go through :class:`~keel.control.reviews.ReviewQueue`,
exactly as over HTTP: a held caller served by ``keel serve`` on the same store gets
the verdict by polling it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.columns import Columns
from rich.json import JSON as RichJSON
from rich.table import Table

from keel.cli.common import ConfigOpt, DatabaseOpt, console, fail, load, settings_for
from keel.control.reviews import ReviewQueue, check_reviewer
from keel.errors import KeelError
from keel.gateway import Keel
from keel.spec import FeatureSpec
from keel.store.reviews import Order, ReviewItem, Status

app = typer.Typer(name="review", no_args_is_help=True, add_completion=False,
                  help="The human review queue: list it, see its stats, review in the terminal.")

FeatureOpt = Annotated[str | None, typer.Option("--feature", "-f", help="only this feature")]


class OrderChoice(enum.StrEnum):
    confidence = "confidence"
    oldest = "oldest"


class StatusChoice(enum.StrEnum):
    pending = "pending"
    done = "done"
    all = "all"


OrderOpt = Annotated[OrderChoice | None, typer.Option(
    help="confidence (least sure first) or oldest [default: the feature's review.order]")]
ACTIONS = "[bold]a[/]pprove  [bold]e[/]dit  [bold]r[/]eject  [bold]s[/]kip  [bold]q[/]uit"


def _open(config: Path | None, database: str | None) -> ReviewQueue:
    settings = settings_for(config, database)
    if not settings.has_store:
        fail(f"no store at {settings.store_name}; start `keel serve` or pass --db")
    spec = load(settings)
    try:
        keel = Keel(spec, settings)
    except KeelError as exc:
        fail(exc.message)
    keel.store.migrate()
    return ReviewQueue(keel)


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts).strftime("%m-%d %H:%M:%S")


def _short(value: Any, width: int = 40) -> str:
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), str):
        text = str(next(iter(value.values())))
    else:
        text = orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def _conf(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


@app.command("list")
def list_items(
    feature: FeatureOpt = None,
    status: Annotated[StatusChoice, typer.Option(help="which items")] = StatusChoice.pending,
    order: OrderOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=500, help="how many")] = 20,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """List review items: least confident (or oldest) first."""
    queue = _open(config, database)
    try:
        page = asyncio.run(queue.list(feature, _status(status), _order(order), limit))
    except KeelError as exc:
        fail(exc.message)
    table = Table(title=f"{len(page.items)} of {page.total} {status.value} review item(s)",
                  title_justify="left")
    for column in ("trace", "feature", "version", "conf", "queued", "mode", "votes", "output",
                   "final"):
        table.add_column(column, no_wrap=column in {"trace", "queued"}, overflow="fold")
    for item in page.items:
        final = "-" if item.final_verdict is None else (
            item.final_verdict + ("" if item.final_verdict == "reject"
                                  else f" {_short(item.final_output, 20)}"))
        table.add_row(item.trace_id[:12], item.feature, item.version or "-", _conf(item.confidence),
                      _when(item.created_at), item.mode, f"{len(item.votes)}/{item.overlap}",
                      _short(item.output), final)
    console.print(table)


@app.command("stats")
def stats(feature: FeatureOpt = None, config: ConfigOpt = None, database: DatabaseOpt = None) -> None:
    """Per feature: queue sizes, verdicts, and how often reviewers agree."""
    queue = _open(config, database)
    try:
        rows = asyncio.run(queue.stats(feature))
    except KeelError as exc:
        fail(exc.message)
    if not rows:
        console.print("no review items yet")
        return
    table = Table(title="review queue", title_justify="left")
    for column in ("feature", "pending", "in progress", "done", "approved", "edited", "rejected",
                   "rejected %", "multi", "unanimous", "pairwise"):
        table.add_column(column, justify="left" if column == "feature" else "right")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.0f}%"

    for s in rows:
        table.add_row(s.feature, str(s.pending), str(s.in_progress), str(s.done), str(s.approved),
                      str(s.edited), str(s.rejected), pct(s.rejected_share), str(s.multi_reviewed),
                      pct(s.unanimous), pct(s.pairwise))
    console.print(table)


@app.command("next")
def review_next(
    reviewer: Annotated[str, typer.Option("--reviewer", "-r", help="your name, as recorded")],
    feature: FeatureOpt = None,
    order: OrderOpt = None,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Review items one by one: a=approve, e=edit, r=reject, s=skip, q=quit."""
    try:
        reviewer = check_reviewer(reviewer)
    except KeelError as exc:
        fail(exc.message)
    queue = _open(config, database)
    skipped: set[str] = set()
    done = 0
    current: ReviewItem | None = None
    with asyncio.Runner() as run:
        try:
            while True:
                current = run.run(queue.next(reviewer, feature, _order(order), skipped))
                if current is None:
                    console.print(f"nothing left to review for {reviewer}"
                                  + (f" ({len(skipped)} skipped)" if skipped else ""))
                    break
                spec = queue.feature_spec(current.feature)
                _show(current, spec)
                action = _ask_action()
                if action in "sq":
                    run.run(queue.release(current.trace_id, reviewer))
                    skipped.add(current.trace_id)
                    current = None
                    if action == "q":
                        break
                    continue
                output, reason = None, None
                if action == "e":
                    output = _ask_output(spec)
                    reason = str(typer.prompt("note (optional)", default="", show_default=False)) or None
                elif action == "r":
                    reason = _ask_reason()
                verdict = {"a": "approve", "e": "edit", "r": "reject"}[action]
                try:
                    item = run.run(queue.submit(current.trace_id, reviewer, verdict, output, reason))
                except KeelError as exc:
                    console.print(f"[yellow]not recorded[/] ({exc.code}): {exc.message}",
                                  highlight=False)
                    skipped.add(current.trace_id)
                    continue
                finally:
                    current = None
                done += 1
                _show_result(item)
        except typer.Abort:
            if current is not None:
                run.run(queue.release(current.trace_id, reviewer))
            console.print(f"\nstopped; {done} verdict(s) recorded")
            raise typer.Exit(130) from None
    console.print(f"{done} verdict(s) recorded")


def _show(item: ReviewItem, spec: FeatureSpec | None) -> None:
    console.rule(f"[bold]{item.feature}[/] {item.trace_id}", align="left")
    facts = Table.grid(padding=(0, 2))
    facts.add_row("version", item.version or "-")
    facts.add_row("confidence", _conf(item.confidence))
    facts.add_row("queued", f"{_when(item.created_at)} ({item.mode}) because: {item.reason or '-'}")
    if item.overlap > 1:
        facts.add_row("votes", f"{len(item.votes)} of {item.overlap}")
    console.print(facts)
    console.print("[bold]input[/]")
    console.print(RichJSON.from_data(item.input))
    console.print("[bold]output[/]")
    console.print(RichJSON.from_data(item.output))
    if item.validations:
        checks = Table("validator", "passed", "on fail", "message", box=None)
        for v in item.validations:
            checks.add_row(str(v.get("validator")), "yes" if v.get("passed") else "[red]no[/]",
                           str(v.get("on_fail")), str(v.get("message") or ""))
        console.print(checks)
    console.print(ACTIONS)


def _show_result(item: ReviewItem) -> None:
    if item.final_verdict is None:
        console.print(f"recorded ({len(item.votes)} of {item.overlap} verdicts)")
    else:
        shown = "" if item.final_verdict == "reject" else f": {_short(item.final_output, 60)}"
        console.print(f"[green]closed[/] — final verdict {item.final_verdict}{shown}",
                      highlight=False)


def _ask_action() -> str:
    while True:
        answer = str(typer.prompt("verdict (a/e/r/s/q)")).strip().lower()
        if answer and answer in "aersq" and len(answer) == 1:
            return answer
        console.print("type a, e, r, s or q")


def _ask_reason() -> str:
    while True:
        reason = str(typer.prompt("reason for the reject")).strip()
        if reason:
            return reason


def _ask_output(spec: FeatureSpec | None) -> Any:
    kind = spec.output.kind if spec is not None else None
    if kind == "label" and spec is not None and spec.output.labels:
        return {"label": _ask_label(spec.output.labels)}
    if kind == "text":
        return {"text": str(typer.prompt("corrected text"))}
    while True:
        raw = str(typer.prompt("corrected output (JSON)"))
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            console.print(f"[red]not JSON[/]: {exc}", highlight=False)


def resolve_label(answer: str, labels: list[str]) -> str | list[str]:
    """A label from its number, its name, a unique prefix or a unique substring;
    otherwise the candidates (none, or several)."""
    answer = answer.strip()
    if answer.isdigit() and 1 <= int(answer) <= len(labels):
        return labels[int(answer) - 1]
    if answer in labels:
        return answer
    prefix = [label for label in labels if label.startswith(answer)]
    matches = prefix or [label for label in labels if answer.lower() in label.lower()]
    return matches[0] if len(matches) == 1 else matches


def _ask_label(labels: list[str]) -> str:
    console.print(Columns([f"[dim]{i:>2}[/] {label}" for i, label in enumerate(labels, 1)],
                          column_first=True, padding=(0, 2)))
    with _completion(labels):
        while True:
            found = resolve_label(str(typer.prompt("label (number, name or part of it)")), labels)
            if isinstance(found, str):
                return found
            if found:
                console.print(f"several match: {', '.join(found[:10])}"
                              + (" …" if len(found) > 10 else ""), highlight=False)
            else:
                console.print("no label matches; type its number or a part of its name")


@contextmanager
def _completion(words: list[str]) -> Iterator[None]:
    """Tab completion of ``words`` while prompting, on a real terminal."""
    if not sys.stdin.isatty():
        yield
        return
    try:
        import readline
    except ImportError:  # e.g. Windows without pyreadline
        yield
        return
    previous = readline.get_completer()

    def complete(text: str, state: int) -> str | None:
        hits = [w for w in words if w.startswith(text)]
        return hits[state] if state < len(hits) else None

    readline.set_completer(complete)
    readline.parse_and_bind("tab: complete")
    try:
        yield
    finally:
        readline.set_completer(previous)


def _status(value: StatusChoice) -> Status:
    return "done" if value == "done" else "all" if value == "all" else "pending"


def _order(value: OrderChoice | None) -> Order | None:
    return "oldest" if value == "oldest" else "confidence" if value == "confidence" else None
