"""``keel demo``: the whole system working on a real workload, offline, in one command.

It serves the ``intent`` feature of keel.yaml from its zero-shot version over HTTP,
replays BANKING77 messages as traffic, lets simulated reviewers answer the review queue
from the true labels, grows a dataset from their verdicts, trains the next version, gates
it, canaries it, promotes it and recalibrates its threshold — ``cycles`` times, with no
manual step — and prints and plots, per serving phase, the error of auto-accepted answers
against α, coverage, review load, cost and latency. See docs/demo.md.

- :mod:`keel.demo.config`: the settings, the workload (how the data is split) and the
  keel.yaml served;
- :mod:`keel.demo.loop`: the cycles;
- :mod:`keel.demo.reviewers`: the simulated reviewers;
- :mod:`keel.demo.server`: the HTTP server, in this process;
- :mod:`keel.demo.report` and :mod:`keel.demo.plot`: tables, JSON and the chart.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path

import httpx
import orjson
from rich.console import Console
from rich.markup import escape

from keel.demo.config import FEATURE, DemoConfig, default_data_dir, load_workload, write_config
from keel.demo.loop import Demo, OutOfTraffic
from keel.demo.plot import write_plot
from keel.demo.report import DemoResult, cycle_table, headline, serve_table
from keel.demo.server import DemoServer
from keel.errors import ConfigError
from keel.gateway import Keel
from keel.settings import Settings
from keel.spec import load_spec

__all__ = ["DemoConfig", "DemoResult", "default_data_dir", "prepare_workdir", "run_demo"]


def prepare_workdir(path: Path | None) -> Path:
    """A folder for the demo's store, keel.yaml, artifacts and outputs: a new temporary
    one, or ``path`` (created if missing), which must not hold a store already."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix="keel-demo-"))
    path.mkdir(parents=True, exist_ok=True)
    if (path / "keel.db").exists():
        raise ConfigError(f"{path} already holds a demo store (keel.db): a demo starts from "
                          "scratch; pass a new or empty --workdir")
    return path


async def run_demo(cfg: DemoConfig, console: Console, *, quiet: bool = False,
                   result: DemoResult | None = None) -> DemoResult:
    """Run the demo; with ``cfg.keep_serving`` keep serving afterwards until interrupted.
    ``result`` is filled as the run goes (so a caller interrupted later still has it)."""
    started = time.perf_counter()
    workdir = prepare_workdir(cfg.workdir)
    workload = await asyncio.to_thread(load_workload, cfg)
    config_path = write_config(cfg, workdir)
    spec = load_spec(config_path)
    settings = Settings(config=config_path, database=workdir / "keel.db", host=cfg.host,
                        port=cfg.port, control_interval_s=0.0)
    keel = Keel(spec, settings)
    keel.pipeline.rng = random.Random(cfg.seed)  # the audit sample: same seed, same calls
    server = DemoServer(keel, cfg.host, cfg.port)
    console.print(f"[bold]keel demo[/]: {cfg.cycles} cycle(s) of {cfg.traffic} messages, "
                  f"α = {cfg.alpha:g}, reviewers wrong {cfg.reviewer_error:.0%} of the time, "
                  f"seed {cfg.seed}; work folder {workdir}", highlight=False)
    await server.start()
    console.print(f"dashboard: [bold]{server.url}/[/] (live while the demo runs; "
                  f"{'it stays up after it' if cfg.keep_serving else 'pass --keep-serving to keep it up'})",
                  highlight=False)
    result = result if result is not None else DemoResult(cfg.summary(), "", "")
    result.config, result.url, result.workdir = cfg.summary(), server.url, str(workdir)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            demo = Demo(cfg, workload, keel, client, console, result, quiet)
            driver = asyncio.create_task(demo.run())
            assert server.task is not None
            done, _ = await asyncio.wait({driver, server.task},
                                         return_when=asyncio.FIRST_COMPLETED)
            if driver not in done:  # the server stopped under us (Ctrl-C)
                driver.cancel()
                raise KeyboardInterrupt
            try:
                driver.result()
            except OutOfTraffic as exc:
                console.print(f"[yellow]stopped early[/]: {escape(str(exc))}; lower --traffic or --cycles")
    except BaseException:
        await server.stop()
        raise
    result.elapsed_s = time.perf_counter() - started
    plot = cfg.plot or workdir / "demo.png"
    result.plot = str(await asyncio.to_thread(write_plot, result.rows, cfg.alpha, plot))
    (workdir / "demo.json").write_bytes(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2))
    console.print(serve_table(result.rows, cfg.alpha))
    console.print(cycle_table(result.cycles))
    console.print(f"[bold]result[/]: {headline(result, cfg.alpha)}", highlight=False)
    console.print(f"took {result.elapsed_s:.0f} s; chart: {result.plot}; numbers: "
                  f"{workdir / 'demo.json'}", highlight=False)
    console.print(f"look closer: keel rollout status {FEATURE} --config {config_path} --db "
                  f"{settings.database}", highlight=False)
    if cfg.keep_serving:
        server.follow_store()
        console.print(f"serving on [bold]{server.url}/[/] as `keel serve` would; Ctrl-C stops it",
                      highlight=False)
        await server.wait()
    else:
        await server.stop()
    return result
