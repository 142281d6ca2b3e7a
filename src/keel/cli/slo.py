"""``keel slo [FEATURE]``: every feature's SLOs, error budgets and burn rates, straight
from the event store (no server needed). ``--json`` prints what ``GET /api/slo`` returns."""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from keel.cli.common import ConfigOpt, DatabaseOpt, console, fail, load, settings_for
from keel.control.slo import WINDOWS, SLOStatus, slo_status
from keel.spec import KeelSpec
from keel.store import open_store


def slo(
    feature: Annotated[str | None, typer.Argument(help="only this feature")] = None,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (as GET /api/slo)")] = False,
) -> None:
    """Show SLOs: target, what the window observed, error budget left, burn rates, alerts."""
    settings = settings_for(config, database)
    spec = load(settings)
    if feature is not None and feature not in spec.features:
        fail(f"no feature named '{feature}' (features: {', '.join(sorted(spec.features))})")
    if not settings.has_store:
        fail(f"no event store at {settings.store_name}; start `keel serve` or pass --db")
    store = open_store(settings)
    store.migrate()
    now = time.time()
    names = [feature] if feature is not None else sorted(spec.features)
    statuses = {name: slo_status(store, name, spec.features[name].slo, now) for name in names}
    if as_json:
        features = [_feature_json(spec, name, statuses[name]) for name in names]
        body: Any = features[0] if feature is not None else {"at": now, "features": features}
        typer.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return
    rows = [s for name in names for s in statuses[name]]
    if not rows:
        console.print("no SLOs set: add an `slo:` section to a feature in keel.yaml, e.g. "
                      "slo: {latency_p95_ms: 800, error_rate: 0.01}", highlight=False)
        return
    table = Table(title=f"SLOs at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}",
                  title_justify="left")
    for column in ("feature", "objective", "target", "observed", "calls", "budget left",
                   *(f"burn {w}" for w in WINDOWS), "alert"):
        table.add_column(column, justify="left" if column in {"feature", "objective", "alert"}
                         else "right", no_wrap=True)
    for s in rows:
        table.add_row(s.feature, s.objective, _value(s.objective, s.target),
                      "-" if s.observed is None else _value(s.objective, s.observed),
                      f"{s.calls:,}", _budget(s),
                      *(_burn(s.burn_rates[w]) for w in WINDOWS), _alert(s))
    console.print(table)


def _feature_json(spec: KeelSpec, name: str, statuses: list[SLOStatus]) -> dict[str, Any]:
    return {"feature": name, "window_days": spec.features[name].slo.window_days,
            "objectives": [s.to_json() for s in statuses]}


def _value(objective: str, value: float) -> str:
    if objective == "latency_p95_ms":
        return f"{value:,.1f} ms"
    if objective == "cost_per_call_usd":
        return f"${value:.6g}"
    return f"{value:.2%}"


def _budget(s: SLOStatus) -> str:
    text = f"{s.budget_remaining:.0%}"
    return f"[red]{text}[/]" if s.budget_remaining < 0 else text


def _burn(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.2f}"


def _alert(s: SLOStatus) -> str:
    if s.page:
        return "[bold red]PAGE[/]"
    if s.ticket:
        return "[yellow]ticket[/]"
    return "ok" if s.met else "[red]budget spent[/]"
