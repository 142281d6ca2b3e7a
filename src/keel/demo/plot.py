"""The demo's chart: four panels over the serving phases — the error of auto-accepted
answers against α, coverage and review load, cost per 1,000 calls, latency.

A PNG through matplotlib when it is installed (``pip install 'keel[bench]'``), otherwise
an SVG written here by hand (no dependency). A ``.svg`` path always gets the hand-written
SVG; a ``.png`` path without matplotlib gets an SVG beside it, and says so.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from keel.demo.report import ServeStats

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: list[float | None]
    low: list[float | None] | None = None  # error bars
    high: list[float | None] | None = None


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    unit: str
    series: list[Series]
    limit: float | None = None  # a dashed horizontal line (α)
    limit_name: str = ""


def panels(rows: Sequence[ServeStats], alpha: float) -> list[Panel]:
    def pct(x: float | None) -> float | None:
        return None if x is None else 100 * x

    lows = [pct(r.error_interval[0]) for r in rows]
    highs = [pct(r.error_interval[1]) for r in rows]
    return [
        Panel("error of auto-accepted answers", "%",
              [Series("error (90% CI)", [pct(r.error) for r in rows], lows, highs)],
              limit=100 * alpha, limit_name=f"α = {alpha:g}"),
        Panel("coverage and review load", "% of calls",
              [Series("coverage (auto-accepted)", [pct(r.coverage) for r in rows]),
               Series("review load", [pct(r.review_load) for r in rows])]),
        Panel("cost per 1,000 calls", "USD (model + reviews)",
              [Series("cost", [r.cost_per_1k_usd for r in rows])]),
        Panel("latency", "ms (server total)",
              [Series("p50", [r.counts.latency_p50_ms for r in rows]),
               Series("p95", [r.counts.latency_p95_ms for r in rows])]),
    ]


def x_labels(rows: Sequence[ServeStats]) -> list[str]:
    return [f"{r.cycle}: {r.version}" for r in rows]


def write_plot(rows: Sequence[ServeStats], alpha: float, path: Path) -> Path:
    """Write the chart to ``path`` (see the module docstring); the path written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    title = "keel demo: the intent feature learning from its reviewers"
    if path.suffix.lower() != ".svg":
        try:
            return _matplotlib(rows, alpha, path, title)
        except ImportError:
            path = path.with_suffix(".svg")
    path.write_text(svg(panels(rows, alpha), x_labels(rows), title), encoding="utf-8")
    return path


def _matplotlib(rows: Sequence[ServeStats], alpha: float, path: Path, title: str) -> Path:
    importlib.import_module("matplotlib").use("Agg")
    figure_mod: Any = importlib.import_module("matplotlib.figure")
    fig = figure_mod.Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2)
    xs = list(range(len(rows)))
    for ax, panel in zip(axes.flat, panels(rows, alpha), strict=True):
        for color, s in zip(COLORS, panel.series, strict=False):
            points = [(x, v) for x, v in zip(xs, s.values, strict=True) if v is not None]
            if not points:
                continue
            px, py = zip(*points, strict=True)
            if s.low is not None and s.high is not None:
                err = [[v - lo if lo is not None and v is not None else 0 for v, lo in
                        zip(s.values, s.low, strict=True) if v is not None],
                       [hi - v if hi is not None and v is not None else 0 for v, hi in
                        zip(s.values, s.high, strict=True) if v is not None]]
                ax.errorbar(px, py, yerr=err, color=color, marker="o", capsize=4, label=s.name)
            else:
                ax.plot(px, py, color=color, marker="o", label=s.name)
        if panel.limit is not None:
            ax.axhline(panel.limit, color="#555555", linestyle="--", label=panel.limit_name)
        ax.set_title(panel.title)
        ax.set_ylabel(panel.unit)
        ax.set_xticks(xs, x_labels(rows), rotation=20, fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


# --- the hand-written SVG ------------------------------------------------------------------


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0 to at least ``top`` in round steps (1, 2, 2.5 or 5 times a power of ten)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    n = math.ceil(top / step - 1e-9)
    return [round(i * step, 10) for i in range(n + 1)]


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1 or v == 0 else f"{v:.2g}"


def svg(chart: list[Panel], labels: list[str], title: str, width: int = 1100,
        height: int = 720) -> str:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="16">{escape(title)}</text>']
    cols, top = 2, 40
    pw, ph = width / cols, (height - top) / math.ceil(len(chart) / cols)
    for i, panel in enumerate(chart):
        x0, y0 = (i % cols) * pw, top + (i // cols) * ph
        out += _panel(panel, labels, x0, y0, pw, ph)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _panel(panel: Panel, labels: list[str], x0: float, y0: float, w: float,
           h: float) -> list[str]:
    left, right, top, bottom = x0 + 64, x0 + w - 20, y0 + 40, y0 + h - 56
    values = [v for s in panel.series for v in (*s.values, *(s.high or [])) if v is not None]
    if panel.limit is not None:
        values.append(panel.limit)
    ticks = nice_ticks(max(values, default=1.0) * 1.1)
    ymax = ticks[-1]

    def sx(i: int) -> float:
        return left + (right - left) * ((i + 0.5) / max(len(labels), 1))

    def sy(v: float) -> float:
        return bottom - (bottom - top) * (v / ymax if ymax else 0)

    out = [f'<text x="{(left + right) / 2:.1f}" y="{y0 + 18:.1f}" text-anchor="middle" '
           f'font-size="14">{escape(panel.title)}</text>',
           f'<text x="{x0 + 14:.1f}" y="{(top + bottom) / 2:.1f}" text-anchor="middle" '
           f'transform="rotate(-90 {x0 + 14:.1f} {(top + bottom) / 2:.1f})">'
           f'{escape(panel.unit)}</text>']
    for t in ticks:
        y = sy(t)
        out.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" '
                   'stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6:.1f}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    out.append(f'<line x1="{left:.1f}" y1="{bottom:.1f}" x2="{right:.1f}" y2="{bottom:.1f}" '
               'stroke="#333"/>')
    for i, label in enumerate(labels):
        out.append(f'<text x="{sx(i):.1f}" y="{bottom + 16:.1f}" text-anchor="middle" '
                   f'font-size="10">{escape(label)}</text>')
    if panel.limit is not None:
        y = sy(panel.limit)
        out.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" '
                   'stroke="#555" stroke-dasharray="6 4"/>')
    legend = [(s.name, COLORS[k % len(COLORS)], False) for k, s in enumerate(panel.series)]
    if panel.limit is not None:
        legend.append((panel.limit_name, "#555", True))
    for k, s in enumerate(panel.series):
        color = COLORS[k % len(COLORS)]
        points = [(sx(i), sy(v)) for i, v in enumerate(s.values) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for i, v in enumerate(s.values):
            if v is None:
                continue
            lo = s.low[i] if s.low is not None else None
            hi = s.high[i] if s.high is not None else None
            if lo is not None and hi is not None:
                x = sx(i)
                out.append(f'<line x1="{x:.1f}" y1="{sy(lo):.1f}" x2="{x:.1f}" y2="{sy(hi):.1f}" '
                           f'stroke="{color}"/>')
                for end in (lo, hi):
                    out.append(f'<line x1="{x - 4:.1f}" y1="{sy(end):.1f}" x2="{x + 4:.1f}" '
                               f'y2="{sy(end):.1f}" stroke="{color}"/>')
            out.append(f'<circle cx="{sx(i):.1f}" cy="{sy(v):.1f}" r="3.5" fill="{color}">'
                       f'<title>{escape(s.name)}: {v:.4g}</title></circle>')
    for k, (name, color, dashed) in enumerate(legend):
        ly = bottom + 34
        lx = left + k * (right - left) / max(len(legend), 1)
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        out.append(f'<line x1="{lx:.1f}" y1="{ly - 4:.1f}" x2="{lx + 18:.1f}" y2="{ly - 4:.1f}" '
                   f'stroke="{color}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 22:.1f}" y="{ly:.1f}">{escape(name)}</text>')
    return out
