"""Drift report speed: 1M events × 20 columns in at most 10 s (issue #6).

Measured in one run, each a best of ``--repeat`` on a quiet machine:

  statistics    1M rows × 20 columns (12 numeric, 8 categorical) as numpy arrays, 20
                windows: every column's tests in every window, the Benjamini–Hochberg
                correction and the alert rule (``compare`` + ``judge``)
  end to end    ``drift_report`` on a SQLite file of 1M events of one feature, 20 windows
                of an hour, 20 columns (the 11 built-in ones + 9 input/output fields):
                reading included; with ``--threads`` threads (default: up to 4) and with 1
  rows          end to end on the first 125k, 250k, 500k events (a time vs rows plot)
  embeddings    the embedding test alone on 4 windows, 500 texts sampled per side

The second half of the traffic drifts in five columns (text length, label shares,
latency, input.amount, input.channel); the run asserts that exactly those are found and
that no window of the first half drifts (a wrong answer exits 1), and prints the end-to-end
time as a ratio of the 10 s goal. The events file is built once (~1 min) and kept
in bench/results/ (git-ignored); texts come from BANKING77 when it is there
(``KEEL_BANKING77_DIR``), else from a word list.

    .venv/bin/python bench/drift.py            # ~2 min the first time, then ~1 min
    .venv/bin/python bench/drift.py --quick    # 200k events, no repeats
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from harness import Quiet, machine_busy_seconds, wait_for_quiet

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

from keel.control.drift import compare, drift_report  # noqa: E402
from keel.control.drift_data import BINARY, Frame, builtin_columns, field_column  # noqa: E402
from keel.control.drift_results import judge  # noqa: E402
from keel.control.drift_tests import Thresholds  # noqa: E402
from keel.store.sqlite import SQLiteStore  # noqa: E402

GOAL_S = 10.0
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
HOUR = 3600.0
FEATURE = "triage"
FIELDS = ["input.channel", "input.plan", "input.region", "input.amount:numeric",
          "input.items:numeric", "input.age:numeric", "output.score:numeric",
          "output.category", "output.priority"]
COLUMNS = [*builtin_columns("text"), *FIELDS]  # 11 + 9 = 20
DRIFTED = {"text_length", "label", "latency_ms", "input.amount", "input.channel"}
LABELS = [f"intent_{i:02d}" for i in range(30)]
WORDS = ["card", "payment", "refund", "transfer", "account", "balance", "limit", "fee", "exchange", "rate", "top", "up", "cash", "withdrawal", "pending", "declined", "statement", "pin", "verify", "identity"]


@dataclass
class Measured:
    wall_s: float
    cpu_s: float  # this process, all threads
    foreign_s: float  # every other process on the machine
    rows: int = 0


def measure(fn: Callable[[], Any]) -> tuple[Measured, Any]:
    r0, b0, t0 = resource.getrusage(resource.RUSAGE_SELF), machine_busy_seconds(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    r1, b1 = resource.getrusage(resource.RUSAGE_SELF), machine_busy_seconds()
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return Measured(wall, cpu, max(0.0, (b1 - b0) - cpu)), out


def best(quiet: Quiet, label: str, repeat: int, fn: Callable[[], Any]) -> tuple[Measured, Any]:
    """The fastest of ``repeat`` runs, each re-run while other processes were busy."""
    runs: list[tuple[Measured, Any]] = []
    for _ in range(repeat):
        holder: dict[str, Any] = {}

        def once(holder: dict[str, Any] = holder) -> Measured:
            m, holder["out"] = measure(fn)
            return m

        runs.append((quiet.run(label, once), holder["out"]))
    return min(runs, key=lambda r: r[0].wall_s)


# --- the synthetic traffic --------------------------------------------------------------


def text_pools(rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Stable and drifted texts: two sets of BANKING77 intents (the drifted ones longer),
    or word salads of two lengths."""
    data = ROOT / os.environ.get("KEEL_BANKING77_DIR", "../shared/data/banking77") / "train.csv"
    if data.is_file():
        with data.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        cats = sorted({r["category"] for r in rows})
        first = set(cats[: len(cats) // 2])
        stable = [r["text"] for r in rows if r["category"] in first]
        drifted = [r["text"] + " Please sort this out quickly, I have been waiting for days."
                   for r in rows if r["category"] not in first]
        return stable, drifted

    def salad(words: list[str], mean: int) -> list[str]:
        return [" ".join(rng.choice(words, max(1, rng.poisson(mean)))) for _ in range(3000)]

    return salad(WORDS[:12], 10), salad(WORDS[8:], 18)


def checks_json(pii: bool, language: str | None) -> str:
    def one(check: str, passed: bool, message: str | None) -> dict[str, Any]:
        return {"check": check, "passed": passed, "action": "log", "message": message,
                "latency_ms": 0.05, "failed_open": False}
    return json.dumps([one("pii", not pii, "personal data in the input (email)" if pii else None),
                       one("language", language is None, None if language is None else
                           f"language '{language}' (0.98) is not one of en")],
                      separators=(",", ":"))


def build_events(path: Path, rows: int, windows: int) -> None:
    """``rows`` events of FEATURE over ``windows`` hours; the second half drifts."""
    rng = np.random.default_rng(0)
    stable_texts, drifted_texts = text_pools(rng)
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    store = SQLiteStore(path)
    store.migrate()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    ts = T0 + np.sort(rng.uniform(0, windows * HOUR, rows))
    late = ts >= T0 + (windows // 2) * HOUR
    checks = {(p, lang): checks_json(p, lang) for p in (False, True) for lang in (None, "de", "fr")}
    label_p = np.linspace(1, 3, len(LABELS))
    label_p /= label_p.sum()
    label_q = label_p[::-1].copy()  # the drifted half prefers the other end
    chunk = 100_000
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        n = stop - start
        drift = late[start:stop]
        text_i = rng.integers(0, 1 << 30, n)
        labels = np.where(drift, rng.choice(len(LABELS), n, p=label_q), rng.choice(len(LABELS), n, p=label_p))
        channel = np.where(rng.random(n) < np.where(drift, 0.4, 0.7), "web", "app")
        amount = rng.lognormal(np.where(drift, 3.4, 3.0), 0.8)
        latency = rng.lognormal(np.log(np.where(drift, 180.0, 150.0)), 0.4)
        decision = rng.choice(["accepted", "review", "refused"], n, p=[0.94, 0.05, 0.01])
        pii = rng.random(n) < 0.03
        lang = rng.choice([None, "de", "fr"], n, p=[0.97, 0.02, 0.01])
        tokens_in = rng.poisson(60, n)
        batch = []
        for j in range(n):
            pool = drifted_texts if drift[j] else stable_texts
            text = pool[text_i[j] % len(pool)]
            batch.append((
                f"t{start + j}", float(ts[start + j]), FEATURE, "v1", str(decision[j]),
                float(rng.beta(8, 2)), float(latency[j]), int(tokens_in[j]), 3,
                float(tokens_in[j]) * 2e-7, "{}", "[]", "[]",
                json.dumps({"text": text, "channel": str(channel[j]),
                            "plan": ("free", "pro", "team")[j % 3], "region": ("eu", "us")[j % 2],
                            "amount": round(float(amount[j]), 2), "items": int(1 + j % 7),
                            "age": int(18 + (j * 7919) % 60)}, separators=(",", ":")),
                json.dumps({"label": LABELS[labels[j]], "score": round(float(rng.random()), 4),
                            "category": ("billing", "cards", "other")[j % 3],
                            "priority": ("low", "high")[j % 2]}, separators=(",", ":")),
                checks[(bool(pii[j]), lang[j])], "v1"))
        with conn:
            conn.executemany(
                "INSERT INTO events (trace_id, ts, feature, version, decision, confidence,"
                " latency_ms, input_tokens, output_tokens, cost_usd, timings, attempts,"
                " validations, input, output, checks, routed) VALUES"
                " (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", batch)
        print(f"  wrote {stop:,} of {rows:,} events", flush=True)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def events_file(rows: int, windows: int, rebuild: bool) -> Path:
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    path = results / f"drift-{rows}-{windows}.db"
    if rebuild or not path.exists():
        print(f"building {path} ({rows:,} events; kept for later runs)", flush=True)
        build_events(path, rows, windows)
    return path


# --- the measurements -------------------------------------------------------------------


def statistics_alone(rows: int, windows: int, threads: int) -> tuple[Callable[[], Any], set[str]]:
    """20 in-memory columns; the second half drifts in 3 numeric and 2 categorical ones."""
    rng = np.random.default_rng(1)
    per = rows // windows
    groups = np.repeat(np.arange(windows), per).astype(np.int64)
    late = groups >= windows // 2
    data = Frame(np.zeros(groups.size))
    columns = []
    for i in range(12):
        c = field_column(f"input.num{i:02d}", "numeric")
        data.values[c.name] = rng.lognormal(3 + (0.3 if i < 3 else 0.0) * late, 0.7)
        columns.append(c)
    for i in range(8):
        k = 2 if i % 4 == 0 else 5 + 5 * i
        c = field_column(f"input.cat{i:02d}", "binary" if k == 2 else "categorical")
        p = np.linspace(1, 2, k) / np.linspace(1, 2, k).sum()
        q = p[::-1].copy() if i < 2 else p
        draw = np.where(late, rng.choice(k, groups.size, p=q), rng.choice(k, groups.size, p=p))
        data.values[c.name] = draw.astype(np.int64)
        data.categories[c.name] = BINARY if k == 2 else [f"c{j}" for j in range(k)]
        columns.append(c)
    expected = {"input.num00", "input.num01", "input.num02", "input.cat00", "input.cat01"}
    th = Thresholds()

    def run() -> Any:
        reference = data.take(groups == 0)
        tested = np.where(groups == 0, -1, groups)
        tests, _ = compare(columns, reference, data, tested, windows, th, threads)
        bounds = [(T0 + i * HOUR, T0 + (i + 1) * HOUR) for i in range(windows)]
        return judge(tests, bounds, [per] * windows, th, first_is_reference=True)

    return run, expected


def check_detection(windows: list[Any], expected: set[str], half: int) -> None:
    """The drifted columns found in every late window, and nothing else anywhere."""
    for w in windows[1:]:
        found = set(w.drifted_columns)
        want = expected if w.index >= half else set()
        assert found == want, f"window {w.index}: drifted {sorted(found)}, expected {sorted(want)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--max-background", type=float, default=0.25,
                        help="re-run a measurement while other processes used more CPUs")
    parser.add_argument("--rebuild", action="store_true", help="write the events file again")
    parser.add_argument("--no-embeddings", action="store_true")
    parser.add_argument("--quick", action="store_true", help="200k events, no repeats")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeat = 200_000, 1
    path = events_file(args.rows, args.windows, args.rebuild)
    store = SQLiteStore(path)
    quiet = Quiet(args.max_background, budget_s=600)
    wait_for_quiet(args.max_background, 120)
    half = args.windows // 2
    results: dict[str, Any] = {"rows": args.rows, "windows": args.windows, "columns": len(COLUMNS),
                               "threads": args.threads, "cpus": os.cpu_count(), "goal_s": GOAL_S}

    run, expected = statistics_alone(args.rows, args.windows, args.threads)
    stats_m, stats_windows = best(quiet, "statistics", args.repeat, run)
    check_detection(stats_windows, expected, half)
    results["statistics"] = asdict(stats_m)
    print(f"statistics alone ({args.rows:,} rows × 20 columns, {args.windows} windows): "
          f"{stats_m.wall_s:.2f} s wall, {stats_m.cpu_s:.2f} s CPU", flush=True)

    def report(until: float | None = None) -> Any:
        return drift_report(store, FEATURE, window=HOUR, since=T0, until=until, columns=COLUMNS,
                            threads=args.threads, text_field="text")

    e2e_m, e2e = best(quiet, "end to end", args.repeat, report)
    e2e_m.rows = int(e2e.timings["rows"])
    assert e2e_m.rows == args.rows and len(e2e.columns) == 20, (e2e_m.rows, e2e.skipped)
    check_detection(e2e.windows, DRIFTED, half)
    assert e2e.alert and e2e.alert_since == T0 + half * HOUR
    results["end_to_end"] = {**asdict(e2e_m), "timings": e2e.timings}
    print(f"end to end ({e2e_m.rows:,} events × {len(e2e.columns)} columns from SQLite): "
          f"{e2e_m.wall_s:.2f} s wall ({e2e.timings['load_s']:.2f} s reading, "
          f"{e2e.timings['tests_s']:.2f} s tests), {e2e_m.cpu_s:.2f} s CPU: "
          f"{e2e_m.wall_s / GOAL_S:.2f} of the {GOAL_S:g} s goal", flush=True)

    one_m, one = best(quiet, "end to end, 1 thread", args.repeat,
                      lambda: drift_report(store, FEATURE, window=HOUR, since=T0, columns=COLUMNS,
                                           threads=1, text_field="text"))
    check_detection(one.windows, DRIFTED, half)
    one_m.rows = int(one.timings["rows"])
    results["end_to_end_1_thread"] = {**asdict(one_m), "timings": one.timings}
    print(f"  with 1 thread: {one_m.wall_s:.2f} s wall ({one.timings['load_s']:.2f} s reading), "
          f"{one_m.cpu_s:.2f} s CPU", flush=True)

    scaling = []
    for share in (0.125, 0.25, 0.5):
        hours = max(2, round(args.windows * share))
        m, r = best(quiet, f"rows {share:g}", args.repeat, lambda h=hours: report(T0 + h * HOUR))
        m.rows = int(r.timings["rows"])
        scaling.append(asdict(m))
        print(f"  {m.rows:>9,} events: {m.wall_s:.2f} s wall, {m.cpu_s:.2f} s CPU", flush=True)
    scaling.append(asdict(e2e_m))
    results["scaling"] = scaling

    if not args.no_embeddings:
        def embed_report() -> Any:
            return drift_report(store, FEATURE, window=HOUR, since=T0 + (half - 2) * HOUR,
                                until=T0 + (half + 2) * HOUR, columns=["embedding"],
                                threads=args.threads)
        emb_m, emb = best(quiet, "embeddings", 1, embed_report)
        cells = [w.columns["embedding"] for w in emb.windows[1:]]
        assert [c.drifted for c in cells] == [False, True, True], [c.statistic for c in cells]
        results["embeddings"] = {**asdict(emb_m), "timings": emb.timings,
                                 "auc": [c.statistic for c in cells]}
        print(f"embeddings (4 windows, 500 texts a side): {emb_m.wall_s:.2f} s wall, "
              f"{emb.timings['embeddings_s']:.2f} s in the embedding test; AUC "
              + ", ".join(f"{c.statistic:.2f}" for c in cells), flush=True)

    results["discarded"], results["kept_busy"] = quiet.discarded, quiet.kept_busy
    out = HERE / "results" / "drift.json"
    out.write_text(json.dumps(results, indent=2))
    plot(results, HERE / "results" / "drift.png")
    print(f"results: {out}")
    verdict = "within" if e2e_m.wall_s <= GOAL_S else "OVER"
    print(f"goal: {e2e_m.wall_s:.2f} s for {e2e_m.rows:,} events × 20 columns is {verdict} the "
          f"{GOAL_S:g} s goal ({e2e_m.wall_s / GOAL_S:.2f}×)")


def plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[bench]')")
        return
    rows = [s["rows"] for s in results["scaling"]]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(rows, [s["wall_s"] for s in results["scaling"]], "o-", label="drift_report from SQLite (wall)")
    ax.plot(rows, [s["cpu_s"] for s in results["scaling"]], "o--", alpha=0.6, label="… CPU (2 threads)")
    one = results.get("end_to_end_1_thread")
    if one:
        ax.plot([one["rows"] or results["rows"]], [one["wall_s"]], "D", label="… with 1 thread (wall)")
    stats = results["statistics"]
    ax.plot([results["rows"]], [stats["wall_s"]], "s", label="statistics alone (in memory)")
    ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:,.0f}k")
    ax.axhline(GOAL_S, color="red", lw=1, ls=":", label=f"goal: {GOAL_S:g} s")
    ax.set_xlabel("events (20 columns, 1-hour windows)")
    ax.set_ylabel("seconds")
    ax.set_xlim(0, max(rows) * 1.05)
    ax.set_ylim(0, max(GOAL_S * 1.15, max(s["cpu_s"] for s in results["scaling"]) * 1.1))
    ax.set_title(f"keel drift: time vs events ({results['cpus']} CPUs)")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--plot-only"]:  # redraw from the last results
        plot(json.loads((HERE / "results" / "drift.json").read_text()), HERE / "results" / "drift.png")
    else:
        main()
