"""The embedded local model's calls per second: the raw onnxruntime session against Keel,
at batch sizes and concurrency levels, side by side in one run.

The model is all-MiniLM-L6-v2 int8 ONNX (the ``local`` provider, feature ``intent`` of the
repository's keel.yaml: 77 BANKING77 intents, zero-shot). The texts are BANKING77 test
messages (``--data``, default ``$KEEL_BANKING77_DIR`` or ../shared/data/banking77), in
their file's order, so a batch mixes lengths as traffic does.

  raw session        onnxruntime.InferenceSession on the same file with Keel's options
                     (1 intra-op thread, graph optimisations on), fed pre-tokenized ids
                     padded to the batch's longest: ``session.run`` and nothing else; one
                     caller, and two callers on two threads (Keel's default: two batches in
                     flight, one thread each); "by length": the texts sorted by token count
                     first (the least padding: the session's ceiling)
  Keel's encoder     ``Encoder.encode`` (keel/providers/local/embedder.py), what a batch of
                     the local provider runs: tokenize, split into length groups, run, pool,
                     normalise; one caller and two
  Keel in process    ``await Keel.call("intent", ...)`` from ``c`` concurrent tasks (the
                     whole pipeline: checks, the provider's BatchingEmbedder, the zero-shot
                     head, validators, policy, events recorded to SQLite); the mean batch
                     the embedder ran is counted
  Keel over HTTP     ``keel serve`` (one worker), ``POST /v1/features/intent`` from
                     ``wrk -t1 -c{c}`` rotating over the texts; every answer checked (200, a
                     label, a decision)

No pinning: onnxruntime's two batches want both CPUs. A measurement during which other
processes used more than ``--max-background`` CPUs is re-run (within ``--retry-budget``).

    .venv/bin/python bench/local_model.py          # ~3 min
    .venv/bin/python bench/local_model.py --quick  # ~1 min
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from harness import (  # the shared benchmark harness (bench/harness.py)
    Children,
    Quiet,
    cpu_seconds,
    free_port,
    machine,
    machine_busy_seconds,
)
from report import add_common_args, md_table, pyplot, run_main, save_figure, write_json

ROOT = Path(__file__).resolve().parents[1]
FEATURE = "intent"


def load_texts(data: Path, n: int) -> list[str]:
    with (data / "test.csv").open(newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    if not texts:
        raise SystemExit(f"no texts in {data / 'test.csv'}")
    return (texts * (n // len(texts) + 1))[:n]


@dataclass
class Row:
    part: str  # raw | encoder | inproc | http
    label: str
    size: int  # batch size (raw, encoder) or concurrency (inproc, http)
    callers: int = 1
    texts: int = 0
    seconds: float = 0.0
    rate: float = 0.0  # texts (calls) per second
    p50_ms: float | None = None
    mean_batch: float | None = None
    cpu_pct: float = 0.0  # of one CPU: this process (or Keel's)
    other_load_pct: float = 0.0
    bad: int = 0
    wall_s: float = 0.0
    foreign_s: float = 0.0


class Meter:
    """Wall time, CPU of this process (or another), and the machine's other load."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid

    def _cpu(self) -> float:
        return cpu_seconds(self.pid) if self.pid else time.process_time()

    def __enter__(self) -> Meter:
        self.t0, self.b0, self.c0 = time.monotonic(), machine_busy_seconds(), self._cpu()
        self.s0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t0
        self.cpu = self._cpu() - self.c0
        mine = self.cpu + (time.process_time() - self.s0 if self.pid else 0.0)
        self.foreign = max(0.0, machine_busy_seconds() - self.b0 - mine)

    def fill(self, row: Row) -> Row:
        row.seconds = row.wall_s = self.wall
        row.cpu_pct = 100 * self.cpu / self.wall
        row.foreign_s = self.foreign
        row.other_load_pct = 100 * self.foreign / self.wall
        return row


# --- raw session and Keel's encoder --------------------------------------------------------------


def raw_session() -> Any:
    import onnxruntime as ort

    from keel.providers.local.embedder import model_path

    options = ort.SessionOptions()  # the options keel.providers.local.embedder uses
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path()), sess_options=options,
                                providers=["CPUExecutionProvider"])


def padded_batches(texts: list[str], size: int,
                   by_length: bool = False) -> list[dict[str, np.ndarray]]:
    """Tokenized batches padded to their longest text; ``by_length``: the texts sorted by
    token count first (the least padding: the session's ceiling)."""
    from keel.providers.local.embedder import load_encoder

    encodings = load_encoder().tokenize(texts)
    if by_length:
        encodings.sort(key=lambda e: len(e.ids))
    out = []
    for start in range(0, len(encodings) - size + 1, size):
        group = encodings[start:start + size]
        width = max(len(e.ids) for e in group)
        ids = np.zeros((size, width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, enc in enumerate(group):
            ids[row, :len(enc.ids)] = enc.ids
            mask[row, :len(enc.ids)] = 1
        out.append({"input_ids": ids, "attention_mask": mask,
                    "token_type_ids": np.zeros_like(ids)})
    return out


def timed_threads(work: Any, items: list[Any], callers: int, seconds: float,
                  size: int) -> tuple[int, float]:
    """`callers` threads run `work(item)` round robin over items for `seconds`: (texts, p50 ms
    per batch)."""
    stop = time.monotonic() + seconds
    counts = [0] * callers
    times: list[float] = []
    lock = threading.Lock()

    def loop(k: int) -> None:
        i = k
        mine = []
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            work(items[i % len(items)])
            mine.append((time.perf_counter() - t0) * 1000)
            counts[k] += size
            i += callers
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts), statistics.median(times) if times else 0.0


def run_raw(args: argparse.Namespace, quiet: Quiet, texts: list[str]) -> list[Row]:
    from keel.providers.local.embedder import load_encoder

    session = raw_session()
    encoder = load_encoder(threads=1)
    rows = []
    for size in args.batch:
        batches = padded_batches(texts, size)
        sorted_batches = padded_batches(texts, size, by_length=True)
        groups = [texts[i:i + size] for i in range(0, len(texts) - size + 1, size)]
        session.run(["last_hidden_state"], batches[0])  # warm
        encoder.encode(groups[0])
        for callers in (1, 2):
            def infer(b: dict[str, np.ndarray]) -> Any:
                return session.run(["last_hidden_state"], b)

            for part, label, work, items in (
                    ("raw", "raw onnxruntime session.run", infer, batches),
                    ("raw_sorted", "raw session.run, by length", infer, sorted_batches),
                    ("encoder", "Keel's Encoder.encode", encoder.encode, groups)):

                def one(part: str = part, label: str = label, work: Any = work,
                        items: Any = items, callers: int = callers, size: int = size) -> Row:
                    row = Row(part, label, size, callers)
                    with Meter() as meter:
                        row.texts, row.p50_ms = timed_threads(work, items, callers,
                                                              args.seconds, size)
                    meter.fill(row)
                    row.rate = row.texts / row.seconds
                    return row

                row = quiet.run(f"{label} batch {size} ×{callers}", one)
                print(f"  {row.label:<30} batch {size:>3} × {callers} caller(s): "
                      f"{row.rate:7,.0f} texts/s  (batch p50 {row.p50_ms:.1f} ms, CPU "
                      f"{row.cpu_pct:.0f} %, other {row.other_load_pct:.0f} %)", flush=True)
                rows.append(row)
    return rows


# --- Keel in process -------------------------------------------------------------------------------


def run_inproc(args: argparse.Namespace, quiet: Quiet, texts: list[str],
               workdir: Path) -> list[Row]:
    import uvloop

    from keel.gateway import Keel
    from keel.providers.local.embedder import Encoder
    from keel.settings import Settings
    from keel.spec import load_spec

    batches: list[int] = []
    original = Encoder.encode

    def counting(self: Encoder, texts: Any) -> Any:
        batches.append(len(texts))
        return original(self, texts)

    Encoder.encode = counting  # type: ignore[method-assign]  # count the batches it runs
    settings = Settings.from_env(config=args.config, database=workdir / "inproc.db",
                                 control_interval_s=None)
    rows: list[Row] = []

    async def main() -> None:
        keel = Keel(load_spec(settings.config), settings)
        await keel.start()
        try:
            for text in texts[:50]:  # warm
                await keel.call(FEATURE, {"text": text})
            for conc in args.concurrency:

                async def measure(conc: int = conc) -> Row:
                    row = Row("inproc", "Keel.call in process", conc)
                    done, bad, times = 0, 0, []
                    batches.clear()
                    stop = time.monotonic() + args.seconds

                    async def worker(k: int) -> None:
                        nonlocal done, bad
                        i = k
                        while time.monotonic() < stop:
                            t0 = time.perf_counter()
                            outcome = await keel.call(FEATURE, {"text": texts[i % len(texts)]})
                            times.append((time.perf_counter() - t0) * 1000)
                            if not (outcome.output or {}).get("label"):
                                bad += 1
                            done += 1
                            i += conc

                    with Meter() as meter:
                        await asyncio.gather(*(worker(k) for k in range(conc)))
                    meter.fill(row)
                    row.texts, row.bad, row.rate = done, bad, done / row.seconds
                    row.p50_ms = statistics.median(times)
                    row.mean_batch = sum(batches) / len(batches) if batches else None
                    return row

                row = await quiet_async(quiet, f"in process c={conc}", measure)
                print(f"  Keel.call in process, c={conc:>3}: {row.rate:7,.0f} calls/s  p50 "
                      f"{row.p50_ms:.1f} ms  mean batch {row.mean_batch or 0:.1f}  CPU "
                      f"{row.cpu_pct:.0f} %  other {row.other_load_pct:.0f} %", flush=True)
                rows.append(row)
        finally:
            await keel.close()
            Encoder.encode = original  # type: ignore[method-assign]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    return rows


async def quiet_async(quiet: Quiet, label: str, measure: Any) -> Row:
    """harness.Quiet.run for a coroutine measurement."""
    for attempt in range(quiet.retries + 1):
        row: Row = await measure()
        if not quiet.busy(row.foreign_s, row.wall_s):
            return row
        if attempt == quiet.retries or time.monotonic() > quiet.deadline:
            quiet.kept_busy += 1
            print(f"  {label}: kept although other processes used "
                  f"{row.foreign_s / row.wall_s:.2f} CPUs", flush=True)
            return row
        quiet.discarded += 1
        print(f"  {label}: discarded (other processes used {row.foreign_s / row.wall_s:.2f} "
              "CPUs); measuring again", flush=True)
        await asyncio.sleep(2)
    raise AssertionError("unreachable")


# --- Keel over HTTP ---------------------------------------------------------------------------------

WRK_LUA = """\
local bodies = {{{bodies}}}
local i = 0
local headers = {{["Content-Type"] = "application/json"}}
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/v1/features/{feature}", headers, bodies[i])
end
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; bad = 0; sample = "" end
function response(status, headers, body)
  if status == 200 and string.find(body, '"label":"', 1, true)
      and string.find(body, '"decision":"', 1, true) then
    ok = ok + 1
  else
    bad = bad + 1
    if sample == "" then sample = status .. ": " .. string.sub(body, 1, 200) end
  end
end
function done(summary, latency, requests)
  local o, b, s = 0, 0, ""
  for _, t in ipairs(threads) do
    o = o + t:get("ok"); b = b + t:get("bad")
    if s == "" then s = t:get("sample") end
  end
  io.write(string.format("KEELBENCH {{\\"requests\\":%d,\\"duration_us\\":%d,\\"ok\\":%d," ..
    "\\"bad\\":%d,\\"p50_us\\":%d}}\\n", summary.requests, summary.duration, o, b,
    latency:percentile(50)))
  io.write("KEELBENCH_SAMPLE " .. s .. "\\n")
end
"""


def run_http(args: argparse.Namespace, quiet: Quiet, texts: list[str], children: Children,
             workdir: Path) -> list[Row]:
    port = free_port()
    keel = children.start("keel", [sys.executable, "-m", "keel", "serve", "--config",
                                   str(args.config), "--db", str(workdir / "http.db"),
                                   "--port", str(port)], None)
    deadline = time.monotonic() + 120
    body = json.dumps({"input": {"text": texts[0]}})
    while True:
        if keel.proc.poll() is not None:
            raise SystemExit(f"keel serve exited:\n{keel.output()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", f"/v1/features/{FEATURE}", body=body,
                         headers={"content-type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            conn.close()
            if answer.status == 200:
                break
        if time.monotonic() > deadline:
            raise SystemExit(f"keel serve not ready:\n{keel.output()}")
        time.sleep(0.3)
    script = workdir / "wrk.lua"
    bodies = ", ".join("[==[" + json.dumps({"input": {"text": t}}) + "]==]"
                       for t in dict.fromkeys(texts))
    script.write_text(WRK_LUA.format(bodies=bodies, feature=FEATURE))
    url = f"http://127.0.0.1:{port}/"
    rows = []

    def wrk(conns: int, secs: int) -> dict[str, Any]:
        out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--timeout", "30s",
                              "-s", str(script), url], capture_output=True, text=True,
                             timeout=secs + 60, check=False)
        for line in out.stdout.splitlines():
            if line.startswith("KEELBENCH "):
                stats: dict[str, Any] = json.loads(line.split(" ", 1)[1])
                stats["sample"] = next((ln[17:] for ln in out.stdout.splitlines()
                                        if ln.startswith("KEELBENCH_SAMPLE")), "")
                return stats
        raise SystemExit(f"wrk failed:\n{out.stdout}\n{out.stderr}")

    for conc in args.concurrency:
        wrk(conc, 1)  # warm-up

        def one(conc: int = conc) -> Row:
            row = Row("http", "keel serve, POST /v1/features/intent", conc)
            with Meter(keel.pid) as meter:
                stats = wrk(conc, max(1, round(args.seconds)))
            meter.fill(row)
            dur = stats["duration_us"] / 1e6
            row.texts, row.bad = stats["ok"], stats["bad"]
            row.rate, row.p50_ms = stats["requests"] / dur, stats["p50_us"] / 1000
            if row.bad:
                print(f"  bad answers: {stats['sample']}")
            return row

        row = quiet.run(f"HTTP c={conc}", one)
        print(f"  keel serve over HTTP, c={conc:>3}: {row.rate:7,.0f} calls/s  p50 "
              f"{row.p50_ms:.1f} ms  Keel CPU {row.cpu_pct:.0f} %  other "
              f"{row.other_load_pct:.0f} %  bad {row.bad}", flush=True)
        rows.append(row)
    children.stop(keel)
    return rows


# --- report ------------------------------------------------------------------------------------------


def tables(rows: list[Row]) -> str:
    out = ["Batches, one or two callers (texts/s; batch p50 = one `run` / `encode` call):", ""]
    sizes = sorted({r.size for r in rows if r.part in ("raw", "raw_sorted", "encoder")})
    table = []
    for size in sizes:
        cells = {(r.part, r.callers): r for r in rows if r.size == size
                 and r.part in ("raw", "raw_sorted", "encoder")}
        line = [str(size)]
        for key in (("raw", 1), ("raw_sorted", 1), ("encoder", 1), ("raw", 2),
                    ("raw_sorted", 2), ("encoder", 2)):
            r = cells.get(key)
            line.append("–" if r is None else f"{r.rate:,.0f} ({r.p50_ms:.1f} ms)")
        enc, raw = cells.get(("encoder", 2)), cells.get(("raw", 2))
        line.append("–" if not (enc and raw) else f"{enc.rate / raw.rate:.2f}×")
        table.append(line)
    out.append(md_table(["batch", "raw session, 1 caller", "raw, by length, 1 caller",
                         "Keel's encoder, 1 caller", "raw session, 2 callers",
                         "raw, by length, 2 callers", "Keel's encoder, 2 callers",
                         "encoder / raw (2 callers)"], table))
    best_raw = max((r.rate for r in rows if r.part.startswith("raw")), default=0.0)
    out += ["", "Through Keel, feature `intent` (calls/s; p50 per call):", ""]
    table = []
    for conc in sorted({r.size for r in rows if r.part in ("inproc", "http")}):
        cells = {r.part: r for r in rows if r.size == conc and r.part in ("inproc", "http")}
        ip, ht = cells.get("inproc"), cells.get("http")
        table.append([str(conc),
                      "–" if ip is None else f"{ip.rate:,.0f}",
                      "–" if ip is None else f"{ip.p50_ms:.1f}",
                      "–" if ip is None or ip.mean_batch is None else f"{ip.mean_batch:.1f}",
                      "–" if ht is None else f"{ht.rate:,.0f}",
                      "–" if ht is None else f"{ht.p50_ms:.1f}",
                      "–" if ht is None or not best_raw else f"{ht.rate / best_raw:.2f}×",
                      "–" if ht is None else f"{ht.other_load_pct:.0f} %"])
    out.append(md_table(["concurrency", "in process calls/s", "p50 ms", "mean batch run",
                         "HTTP calls/s", "p50 ms", "HTTP / best raw", "other load (HTTP)"],
                        table))
    out.append(f"\nBest raw session rate: {best_raw:,.0f} texts/s.")
    return "\n".join(out)


def plot(rows: list[Row], path: Path, subtitle: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for part, callers, style, label in (("raw", 1, "o-", "raw session, 1 caller"),
                                        ("raw", 2, "o--", "raw session, 2 callers"),
                                        ("raw_sorted", 1, "^-", "raw, by length, 1 caller"),
                                        ("raw_sorted", 2, "^--", "raw, by length, 2 callers"),
                                        ("encoder", 1, "s-", "Keel's encoder, 1 caller"),
                                        ("encoder", 2, "s--", "Keel's encoder, 2 callers"),
                                        ):
        pts = sorted((r.size, r.rate) for r in rows if r.part == part and r.callers == callers)
        if pts:
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("batch size")
    ax1.set_ylabel("texts / s")
    ax1.set_title("Batches: raw onnxruntime vs Keel's encoder", fontsize=10)
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    for part, style, label in (("inproc", "o-", "Keel.call in process"),
                               ("http", "s-", "keel serve over HTTP (wrk)")):
        pts = sorted((r.size, r.rate) for r in rows if r.part == part)
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    best = max((r.rate for r in rows if r.part.startswith("raw")), default=0)
    if best:
        ax2.axhline(best, color="#c33", ls="--", lw=1, label="best raw session rate")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("concurrent calls")
    ax2.set_ylabel("calls / s")
    ax2.set_title("Through Keel: feature intent (zero-shot, 77 labels)", fontsize=10)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle(f"Local model (all-MiniLM-L6-v2 int8 ONNX) calls per second — {subtitle}",
                 fontsize=10)
    save_figure(fig, path)
    return True


def run(args: argparse.Namespace, children: Children, workdir: Path) -> int:
    started = time.monotonic()
    info = machine()
    texts = load_texts(args.data, 4096)
    quiet = Quiet(args.max_background, args.retry_budget)
    rows: list[Row] = []
    if "raw" in args.parts:
        print(f"raw session and Keel's encoder, {args.seconds:g} s per cell ...", flush=True)
        rows += run_raw(args, quiet, texts)
    if "inproc" in args.parts:
        print("Keel in process ...", flush=True)
        rows += run_inproc(args, quiet, texts, workdir)
    if "http" in args.parts:
        print("keel serve over HTTP ...", flush=True)
        rows += run_http(args, quiet, texts, children, workdir)
    report = tables(rows)
    print("\n" + report)
    import onnxruntime

    info["onnxruntime"] = onnxruntime.__version__
    write_json(args.out / "local_model.json", {
        "machine": info, "args": {k: str(v) for k, v in vars(args).items()},
        "rows": [asdict(r) for r in rows],
        "disturbed": {"discarded": quiet.discarded, "kept": quiet.kept_busy}})
    (args.out / "local_model.md").write_text(report + "\n")
    if quiet.discarded or quiet.kept_busy:
        print(f"{quiet.discarded} measurement(s) discarded and re-run; {quiet.kept_busy} kept "
              "although disturbed (see 'other load')")
    if not args.no_plot and plot(rows, args.out / "local_model.png",
                                 f"{info['nproc']} CPUs, onnxruntime {info['onnxruntime']}"):
        print(f"plot: {args.out / 'local_model.png'}")
    print(f"results: {args.out / 'local_model.json'}; the run took "
          f"{time.monotonic() - started:.0f} s")
    bad = sum(r.bad for r in rows)
    if bad:
        print(f"INVALID RUN: {bad} bad answers", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Local model calls/s: raw session vs Keel.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=(__doc__ or "").split("\n\n", 1)[1])
    add_common_args(parser, "local_model", retry_budget=60)
    default_data = Path(os.environ.get("KEEL_BANKING77_DIR")
                        or ROOT.parent / "shared" / "data" / "banking77")
    parser.add_argument("--data", type=Path, default=default_data,
                        help=f"BANKING77 folder with test.csv [{default_data}]")
    parser.add_argument("--config", type=Path, default=ROOT / "keel.yaml",
                        help="keel.yaml with the intent feature [the repository's]")
    parser.add_argument("--seconds", type=float, help="seconds per measurement [4]")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--parts", nargs="+", choices=("raw", "inproc", "http"),
                        default=["raw", "inproc", "http"])
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (2.0 if args.quick else 4.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "http" in args.parts and shutil.which("wrk") is None:
        print("bench/local_model.py needs wrk for the HTTP part: sudo apt-get install -y wrk",
              file=sys.stderr)
        return 2
    if not (args.data / "test.csv").is_file():
        print(f"no BANKING77 test.csv under {args.data}: pass --data or set KEEL_BANKING77_DIR",
              file=sys.stderr)
        return 2
    os.environ.setdefault("KEEL_BANKING77_DIR", str(args.data))
    return run_main(args, run, "keel-bench-local-")


if __name__ == "__main__":
    sys.exit(main())
