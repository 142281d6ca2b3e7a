"""Reporting and command-line plumbing the benchmarks share: number formatting, Markdown
tables, matplotlib (optional), the common options (rounds, pinning, the quiet-machine
checks, outputs) and the ``main`` that runs a benchmark with its servers stopped on any exit.

Used by ``bench/overhead.py``, ``bench/streaming.py``, ``bench/field.py``,
``bench/memory.py`` and ``bench/local_model.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness import Children, wait_for_quiet

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def fmt(value: float | None, digits: int = 3, thousands: bool = False) -> str:
    """A number for a table; '–' for None. ``thousands``: 1,234.5."""
    if value is None:
        return "–"
    return f"{value:,.{digits}f}" if thousands else f"{value:.{digits}f}"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
             right: Sequence[bool] | None = None) -> str:
    """A Markdown table; columns right-aligned where ``right`` says so (default: all but the
    first)."""
    right = right if right is not None else [i > 0 for i in range(len(headers))]
    out = ["| " + " | ".join(headers) + " |",
           "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or None (with a hint) when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no plot: matplotlib is not installed; make install-bench, or "
              ".venv/bin/pip install matplotlib)")
        return None
    return plt


def save_figure(fig: Any, path: Path, rect: tuple[float, float, float, float] | None = None
                ) -> None:
    """Lay out (within ``rect``, leaving room for a figure legend), save at 110 dpi, close."""
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=rect)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def add_common_args(parser: argparse.ArgumentParser, name: str, retry_budget: float = 90,
                    pin_help: str = "split: the gateway alone on one CPU, upstream + client on "
                                    "another") -> None:
    """--rounds, --pin, --max-background, --wait-idle, --retry-budget, --no-plot, --out."""
    parser.add_argument("--quick", action="store_true", help="a short smoke run, one round")
    parser.add_argument("--rounds", type=int, help="interleaved rounds [5]")
    parser.add_argument("--pin", choices=("split", "none"), default="split", help=pin_help)
    parser.add_argument("--max-background", type=float, default=0.25,
                        help="other processes may use at most this many CPUs (0.25: a quarter "
                             "of one) before the start and during each measurement, which is "
                             "otherwise discarded and re-run; 0 disables the check [0.25]")
    parser.add_argument("--wait-idle", type=float, default=120,
                        help="seconds to wait for a busy machine before the start [120]")
    parser.add_argument("--retry-budget", type=float, default=retry_budget,
                        help="seconds the run may spend re-running disturbed measurements "
                             f"[{retry_budget:g}]")
    parser.add_argument("--no-plot", action="store_true", help=f"skip results/{name}.png")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")


def run_main(args: argparse.Namespace, run: Callable[[argparse.Namespace, Children, Path], int],
             prefix: str, before: Callable[[], int | None] | None = None) -> int:
    """Run ``run(args, children, workdir)``: SIGTERM/SIGHUP end it like Ctrl-C, every child
    process is stopped and the work directory removed on any exit. ``before`` may refuse to
    start (its return code). Waits for a quiet machine first (``--max-background``)."""
    # SIGTERM and SIGHUP end the run like Ctrl-C (SIGINT too when started ignoring it, as &
    # in a script does): the finally below stops every child
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    children = Children(workdir)
    try:
        if before is not None and (code := before()) is not None:
            return code
        limit = getattr(args, "max_background", 0)
        if limit > 0 and not wait_for_quiet(limit, args.wait_idle):
            print(f"the machine stays busy: other processes use more than {limit:g} CPUs, so "
                  "the numbers would measure them too. Try later, or pass --max-background 0 "
                  "to run anyway (the tables then show the load in 'other load').",
                  file=sys.stderr)
            return 3
        return run(args, children, workdir)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the servers", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
