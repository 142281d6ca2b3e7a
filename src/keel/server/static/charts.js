// Keel's charts: small SVG renderers with no library behind them.
//
//   timeChart  stacked bars or lines over time, with axes, ticks and a tooltip
//   barChart   horizontal bars per category (costs by key, user, feature ...)
//   heatmap    rows x columns of cells (drift: columns x windows)
//   waterfall  the stages of one call on a millisecond axis
//   meterBar   spent and reserved against a limit, with marks at 50/80/100 %
//
// Every chart is a <figure>: the SVG has role="img" with a title and a summary, the plot
// takes the keyboard (arrow keys move a cursor that the tooltip and a live region
// follow), and a "Show the data" table carries the same numbers as text. Colours come
// from CSS classes (s-<name>), so the stylesheet owns the palette.

import { el, svg, uid } from "./dom.js";
import { clock, compact, day, isNum } from "./format.js";

const charts = new WeakMap(); // host -> ResizeObserver

// --- scales and ticks ------------------------------------------------------------------

function scale(d0, d1, r0, r1) {
  const k = d1 === d0 ? 0 : (r1 - r0) / (d1 - d0);
  return (v) => r0 + (v - d0) * k;
}

function niceStep(raw) {
  if (!(raw > 0)) return 1;
  const pow = 10 ** Math.floor(Math.log10(raw));
  const f = raw / pow;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * pow;
}

/** Ticks from 0 to a round maximum at or above ``max`` (whole numbers for counts). */
export function niceTicks(max, count = 4, integer = false) {
  const top = max > 0 ? max : 1;
  const raw = niceStep(top / count);
  const step = integer ? Math.max(1, Math.round(raw)) : raw;
  const niceMax = Math.ceil(top / step - 1e-9) * step;
  const ticks = [];
  for (let v = 0; v <= niceMax + step / 2; v += step) ticks.push(Number(v.toPrecision(12)));
  return { max: niceMax, ticks };
}

const TIME_STEPS = [60, 300, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];

/** Tick times (ms) between t0 and t1 (ms), on local round hours or midnights. */
export function timeTicks(t0, t1, maxTicks) {
  const spanS = (t1 - t0) / 1000;
  const step = TIME_STEPS.find((s) => spanS / s <= maxTicks) ?? TIME_STEPS.at(-1);
  const offset = -new Date(t0).getTimezoneOffset() * 60; // align to local time
  const first = Math.ceil((t0 / 1000 + offset) / step) * step - offset;
  const ticks = [];
  for (let t = first; t * 1000 <= t1; t += step) ticks.push(t * 1000);
  return { ticks, step };
}

function tickLabel(ms, step) {
  const d = new Date(ms);
  if (step >= 86400 || (d.getHours() === 0 && d.getMinutes() === 0)) return day(d);
  return clock(d);
}

function textWidth(text, px = 11) {
  return String(text).length * px * 0.62;
}

// --- the frame every chart shares ------------------------------------------------------

function frame(host, { title, summary, kind, height }) {
  charts.get(host)?.disconnect();
  const titleId = uid("chart-title");
  const descId = uid("chart-desc");
  const root = svg("svg", {
    class: `chart-svg chart-${kind}`, role: "img", "aria-labelledby": `${titleId} ${descId}`,
    width: "100%", height, focusable: "false",
  }, svg("title", { id: titleId, text: title }), svg("desc", { id: descId, text: summary }));
  const tip = el("div", { class: "chart-tip", role: "presentation", hidden: true });
  const live = el("p", { class: "sr-only", "aria-live": "polite" });
  const plot = el("div", { class: "chart-plot" }, root, tip);
  const figure = el("figure", { class: `chart chart-${kind}`, "data-chart": kind }, plot, live);
  host.replaceChildren(figure);
  return { figure, plot, root, tip, live, width: Math.max(280, Math.floor(host.clientWidth || 640)) };
}

/** Redraw when the host's width changes (the SVG is drawn for one width). */
function onResize(host, width, redraw) {
  if (typeof ResizeObserver === "undefined") return;
  let last = width;
  let timer = 0;
  const observer = new ResizeObserver(() => {
    const now = Math.floor(host.clientWidth);
    if (!now || Math.abs(now - last) < 16) return;
    clearTimeout(timer);
    timer = setTimeout(() => { last = now; redraw(); }, 120);
  });
  observer.observe(host);
  charts.set(host, observer);
}

/**
 * Hover and keyboard for a chart of ``count`` positions. ``at(x, y)`` maps a pointer
 * position (SVG px) to an index; ``show(i)`` highlights it and returns the tooltip's
 * content and anchor: {title, rows: [[label, value, cls]], x, y, text}.
 */
function interact(ctx, count, at, show, hide = () => {}, keys = null) {
  const { plot, root, tip, live } = ctx;
  plot.tabIndex = 0;
  plot.setAttribute("role", "group");
  plot.setAttribute("aria-roledescription", "chart");
  plot.setAttribute("aria-label", `${root.querySelector("title").textContent}. Arrow keys move through the data.`);
  let current = -1;
  const render = (i, announce) => {
    if (i < 0 || i >= count) return;
    current = i;
    const info = show(i);
    if (!info) return;
    tip.replaceChildren(el("strong", { class: "tip-title", text: info.title }),
      ...info.rows.map(([label, value, cls]) => el("span", { class: "tip-row" },
        el("span", { class: `swatch ${cls || ""}`.trim(), "aria-hidden": "true" }),
        el("span", { class: "tip-label", text: label }), el("span", { class: "tip-value", text: value }))));
    tip.hidden = false;
    const box = root.getBoundingClientRect();
    const sx = box.width / (Number(root.getAttribute("data-width")) || box.width);
    const left = info.x * sx;
    const tw = tip.offsetWidth;
    tip.style.left = `${Math.max(0, left + 14 + tw > box.width ? left - tw - 14 : left + 14)}px`;
    tip.style.top = `${Math.max(0, (info.y ?? 8) - 8)}px`;
    if (announce) live.textContent = info.text || `${info.title}: ${info.rows.map((r) => `${r[0]} ${r[1]}`).join(", ")}`;
  };
  const clear = () => { tip.hidden = true; hide(); };
  root.addEventListener("pointermove", (event) => {
    const box = root.getBoundingClientRect();
    const w = Number(root.getAttribute("data-width")) || box.width;
    const i = at((event.clientX - box.left) * (w / box.width), event.clientY - box.top);
    if (i === null || i < 0) clear();
    else render(i, false);
  });
  root.addEventListener("pointerleave", () => { if (document.activeElement !== plot) clear(); });
  plot.addEventListener("blur", clear);
  plot.addEventListener("keydown", (event) => {
    const step = keys ? keys(event.key, current) : null;
    let next = step;
    if (next === null || next === undefined) {
      if (event.key === "ArrowRight" || event.key === "ArrowDown") next = current < 0 ? 0 : Math.min(count - 1, current + 1);
      else if (event.key === "ArrowLeft" || event.key === "ArrowUp") next = current < 0 ? count - 1 : Math.max(0, current - 1);
      else if (event.key === "Home") next = 0;
      else if (event.key === "End") next = count - 1;
      else if (event.key === "Escape") { clear(); current = -1; return; } else return;
    }
    event.preventDefault();
    render(next, true);
  });
}

/** The "Show the data" table under a chart: the text alternative. */
function dataTable(figure, caption, head, rows) {
  const table = el("table", { class: "table table-compact" },
    el("caption", { class: "sr-only", text: caption }),
    el("thead", {}, el("tr", {}, head.map((h, i) => el("th", { scope: "col", class: i ? "num" : null, text: h })))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((v, i) =>
      i ? el("td", { class: "num", text: v }) : el("th", { scope: "row", text: v }))))));
  figure.append(el("details", { class: "chart-data" }, el("summary", { text: "Show the data" }),
    el("div", { class: "table-wrap" }, table)));
}

function legend(figure, series, totals = null) {
  figure.append(el("ul", { class: "chart-legend", "aria-hidden": "true" }, series.map((s) =>
    el("li", {}, el("span", { class: `swatch s-${s.cls || s.key}` }), s.label,
      totals ? el("span", { class: "legend-num", text: totals[s.key] }) : null))));
}

// --- time series -------------------------------------------------------------------------

/**
 * Stacked bars (type "stacked") or lines (type "line") over time.
 * points: [{t: Date, values: {seriesKey: number|null}}], sorted by t.
 * series: [{key, label, cls}]; bucket: seconds per point; domain: [Date, Date].
 */
export function timeChart(host, opts) {
  const { title, series, points, type = "line", format = compact, bucket = 3600, height = 220 } = opts;
  const summary = opts.summary || `${title}: ${points.length} points`;
  const ctx = frame(host, { title, summary, kind: type === "stacked" ? "stacked" : "line", height });
  const { root, width } = ctx;
  const bucketMs = bucket * 1000;
  // the range asked for, widened to whole buckets (the first and last may be partial)
  const first = points[0]?.t.getTime();
  const last = points.at(-1)?.t.getTime();
  const tail = type === "stacked" ? bucketMs : 0;
  let t0 = opts.domain ? opts.domain[0].getTime() : first ?? Date.now() - 86400000;
  let t1 = opts.domain ? opts.domain[1].getTime() : (last ?? Date.now()) + tail;
  if (first !== undefined) { t0 = Math.min(t0, first); t1 = Math.max(t1, last + tail); }
  const sums = points.map((p) => (type === "stacked"
    ? series.reduce((acc, s) => acc + (isNum(p.values[s.key]) ? p.values[s.key] : 0), 0)
    : Math.max(0, ...series.map((s) => (isNum(p.values[s.key]) ? p.values[s.key] : 0)))));
  const { max, ticks } = niceTicks(Math.max(0, ...sums), 4, Boolean(opts.integer));
  const left = Math.ceil(Math.max(...ticks.map((v) => textWidth(format(v))))) + 14;
  const m = { top: 10, right: 14, bottom: 26, left };
  const x = scale(t0, t1, m.left, width - m.right);
  const y = scale(0, max, height - m.bottom, m.top);
  root.setAttribute("viewBox", `0 0 ${width} ${height}`);
  root.setAttribute("data-width", width);

  const grid = svg("g", { class: "grid", "aria-hidden": "true" });
  for (const v of ticks) {
    grid.append(svg("line", { x1: m.left, x2: width - m.right, y1: y(v), y2: y(v) }),
      svg("text", { class: "tick tick-y", x: m.left - 6, y: y(v), dy: "0.32em", "text-anchor": "end", text: format(v) }));
  }
  const maxTicks = Math.max(2, Math.floor((width - m.left) / 84));
  let { ticks: xt, step } = timeTicks(t0, t1, maxTicks);
  if (bucket >= 86400 && type === "stacked") {
    // one bar per day: label the bars themselves, every nth when they are many
    const every = Math.ceil(Math.max(1, (t1 - t0) / bucketMs) / maxTicks);
    xt = [];
    for (let t = t0; t < t1; t += bucketMs * every) xt.push(t + bucketMs / 2);
    step = 86400;
  }
  for (const t of xt) {
    grid.append(svg("line", { class: "tick-mark", x1: x(t), x2: x(t), y1: height - m.bottom, y2: height - m.bottom + 4 }),
      svg("text", { class: "tick tick-x", x: x(t), y: height - m.bottom + 16, "text-anchor": "middle", text: tickLabel(t, step) }));
  }
  grid.append(svg("line", { class: "axis", x1: m.left, x2: width - m.right, y1: y(0), y2: y(0) }));
  root.append(grid);

  const marks = svg("g", { class: "marks" });
  const cursor = svg("line", { class: "cursor", y1: m.top, y2: height - m.bottom, visibility: "hidden" });
  const hi = svg("g", { class: "highlight" });
  const centre = (p) => x(p.t.getTime() + (type === "stacked" ? bucketMs / 2 : 0));
  if (type === "stacked") {
    const w = Math.max(1, Math.min(48, x(t0 + bucketMs) - x(t0) - (points.length > 60 ? 1 : 3)));
    points.forEach((p, i) => {
      let base = 0;
      for (const s of series) {
        const v = p.values[s.key];
        if (!isNum(v) || v <= 0) continue;
        marks.append(svg("rect", {
          class: `bar s-${s.cls || s.key}`, x: centre(p) - w / 2, width: w,
          y: y(base + v), height: Math.max(1, y(base) - y(base + v)), "data-i": i, "data-series": s.key, "data-value": v,
        }));
        base += v;
      }
    });
  } else {
    for (const s of series) {
      const cls = `s-${s.cls || s.key}`;
      // runs of consecutive points: a missing value or a gap of buckets breaks the line
      const runs = [];
      let prev = null;
      for (const p of points) {
        if (!isNum(p.values[s.key])) { prev = null; continue; }
        if (!prev || p.t.getTime() - prev.t.getTime() > bucketMs * 1.5) runs.push([]);
        runs.at(-1).push(p);
        prev = p;
      }
      const d = runs.map((run) => run.map((p, i) => `${i ? "L" : "M"}${centre(p)},${y(p.values[s.key])}`).join("")).join("");
      const area = runs.map((run) => `M${centre(run[0])},${y(0)}${run.map((p) => `L${centre(p)},${y(p.values[s.key])}`).join("")}L${centre(run.at(-1))},${y(0)}Z`).join("");
      if (opts.area && area) marks.append(svg("path", { class: `area ${cls}`, d: area }));
      if (d) marks.append(svg("path", { class: `line ${cls}`, d, "data-series": s.key }));
      if (points.length <= 48 || points.filter((p) => isNum(p.values[s.key])).length === 1) {
        points.forEach((p, i) => {
          const v = p.values[s.key];
          if (isNum(v)) marks.append(svg("circle", { class: `dot ${cls}`, cx: centre(p), cy: y(v), r: 2.5, "data-i": i }));
        });
      }
    }
  }
  root.append(marks, cursor, hi);
  root.setAttribute("data-points", String(points.length));
  if (!points.length) {
    root.append(svg("text", { class: "chart-none", x: width / 2, y: height / 2, "text-anchor": "middle", text: "no data in this range" }));
  }

  const fmtTime = (p) => `${day(p.t)} ${clock(p.t)}${bucket >= 86400 ? "" : `–${clock(new Date(p.t.getTime() + bucketMs))}`}`;
  interact(ctx, points.length, (px) => {
    if (!points.length || px < m.left || px > width - m.right) return null;
    let best = 0;
    for (let i = 1; i < points.length; i += 1) {
      if (Math.abs(centre(points[i]) - px) < Math.abs(centre(points[best]) - px)) best = i;
    }
    return best;
  }, (i) => {
    const p = points[i];
    const cx = centre(p);
    cursor.setAttribute("x1", cx);
    cursor.setAttribute("x2", cx);
    cursor.setAttribute("visibility", "visible");
    hi.replaceChildren();
    if (type !== "stacked") {
      for (const s of series) {
        const v = p.values[s.key];
        if (isNum(v)) hi.append(svg("circle", { class: `dot dot-hi s-${s.cls || s.key}`, cx, cy: y(v), r: 4 }));
      }
    }
    for (const bar of marks.querySelectorAll(".bar")) bar.classList.toggle("is-dim", bar.getAttribute("data-i") !== String(i));
    const rows = series.filter((s) => type !== "stacked" || isNum(p.values[s.key]))
      .map((s) => [s.label, format(p.values[s.key]), `s-${s.cls || s.key}`]);
    if (type === "stacked") rows.push(["total", format(sums[i]), "swatch-none"]);
    return { title: bucket >= 86400 ? day(p.t) : fmtTime(p), rows, x: cx, y: y(sums[i]) };
  }, () => {
    cursor.setAttribute("visibility", "hidden");
    hi.replaceChildren();
    for (const bar of marks.querySelectorAll(".bar")) bar.classList.remove("is-dim");
  });

  const totals = opts.legendTotals ? Object.fromEntries(series.map((s) =>
    [s.key, format(points.reduce((a, p) => a + (isNum(p.values[s.key]) ? p.values[s.key] : 0), 0))])) : null;
  if (series.length > 1 || opts.legend) legend(ctx.figure, series, totals);
  dataTable(ctx.figure, title, ["time", ...series.map((s) => s.label)],
    points.map((p) => [bucket >= 86400 ? day(p.t) : `${day(p.t)} ${clock(p.t)}`, ...series.map((s) => format(p.values[s.key]))]));
  onResize(host, width, () => timeChart(host, opts));
}

// --- bars per category ------------------------------------------------------------------

/** Horizontal bars. rows: [{label, value}]; cls: the bars' colour class. */
export function barChart(host, opts) {
  const { title, rows, format = compact, cls = "s-cost", valueLabel = "value" } = opts;
  const row = 26;
  const height = Math.max(60, rows.length * row + 30);
  const ctx = frame(host, { title, summary: opts.summary || `${title}: ${rows.length} bars`, kind: "bars", height });
  const { root, width } = ctx;
  const labelW = Math.min(Math.floor(width * 0.34), Math.ceil(Math.max(40, ...rows.map((r) => textWidth(r.label, 12)))) + 10);
  const valueW = Math.ceil(Math.max(...rows.map((r) => textWidth(format(r.value), 11)), 30)) + 10;
  const { max, ticks } = niceTicks(Math.max(0, ...rows.map((r) => r.value || 0)), 4, Boolean(opts.integer));
  const x = scale(0, max, labelW, width - valueW);
  root.setAttribute("viewBox", `0 0 ${width} ${height}`);
  root.setAttribute("data-width", width);
  const grid = svg("g", { class: "grid", "aria-hidden": "true" });
  for (const v of ticks) {
    grid.append(svg("line", { x1: x(v), x2: x(v), y1: 4, y2: height - 22 }),
      svg("text", { class: "tick tick-x", x: x(v), y: height - 8, "text-anchor": "middle", text: format(v) }));
  }
  root.append(grid);
  const marks = svg("g", { class: "marks" });
  rows.forEach((r, i) => {
    const top = 6 + i * row;
    const maxChars = Math.floor((labelW - 10) / 7.2);
    const label = r.label.length > maxChars ? `${r.label.slice(0, Math.max(1, maxChars - 1))}…` : r.label;
    marks.append(
      svg("text", { class: "bar-label", x: labelW - 8, y: top + row / 2 - 3, dy: "0.32em", "text-anchor": "end", text: label }),
      svg("rect", { class: `bar ${r.cls || cls}`, x: x(0), y: top, height: row - 8, width: Math.max(r.value > 0 ? 1.5 : 0, x(r.value || 0) - x(0)), "data-i": i, "data-value": r.value }),
      svg("text", { class: "bar-value", x: x(r.value || 0) + 6, y: top + row / 2 - 3, dy: "0.32em", text: format(r.value) }));
  });
  root.append(marks);
  root.setAttribute("data-points", String(rows.length));
  interact(ctx, rows.length, (_px, py) => {
    const i = Math.floor((py - 6) / row);
    return i >= 0 && i < rows.length ? i : null;
  }, (i) => {
    for (const bar of marks.querySelectorAll(".bar")) bar.classList.toggle("is-dim", bar.getAttribute("data-i") !== String(i));
    const r = rows[i];
    return { title: r.label, rows: [[valueLabel, format(r.value), r.cls || cls], ...(r.extra || [])], x: x(r.value || 0), y: 6 + i * row };
  }, () => { for (const bar of marks.querySelectorAll(".bar")) bar.classList.remove("is-dim"); });
  dataTable(ctx.figure, title, ["", valueLabel], rows.map((r) => [r.label, format(r.value)]));
  onResize(host, width, () => barChart(host, opts));
}

// --- heatmap -----------------------------------------------------------------------------

/**
 * rows: [label]; cols: [{label, title}]; cell(r, c) -> {level: "bad"|"warn"|"ok"|null,
 * strength: 0..1, text: [[label, value]]} or null for no value.
 */
export function heatmap(host, opts) {
  const { title, rows, cols, cell } = opts;
  const rowH = 26;
  const height = rows.length * rowH + 34;
  const ctx = frame(host, { title, summary: opts.summary || `${title}: ${rows.length} rows by ${cols.length} columns`, kind: "heatmap", height });
  const { root, width } = ctx;
  const left = Math.min(Math.floor(width * 0.3), Math.ceil(Math.max(...rows.map((r) => textWidth(r, 12)), 30)) + 12);
  const cw = Math.max(6, Math.min(56, (width - left - 8) / Math.max(1, cols.length)));
  root.setAttribute("viewBox", `0 0 ${width} ${height}`);
  root.setAttribute("data-width", width);
  const marks = svg("g", { class: "marks" });
  rows.forEach((label, r) => {
    marks.append(svg("text", { class: "bar-label", x: left - 8, y: r * rowH + rowH / 2, dy: "0.32em", "text-anchor": "end", text: label }));
    cols.forEach((_c, c) => {
      const v = cell(r, c);
      const level = v ? v.level || "ok" : "none";
      marks.append(svg("rect", {
        class: `cell cell-${level}`, x: left + c * cw + 1, y: r * rowH + 2, width: cw - 2, height: rowH - 4, rx: 3,
        "fill-opacity": v && isNum(v.strength) ? (0.35 + 0.65 * Math.max(0, Math.min(1, v.strength))).toFixed(2) : null,
        "data-r": r, "data-c": c, "data-level": level,
      }));
    });
  });
  const every = Math.max(1, Math.ceil(70 / cw));
  cols.forEach((c, i) => {
    if (i % every === 0) {
      marks.append(svg("text", { class: "tick tick-x", x: left + i * cw + cw / 2, y: rows.length * rowH + 16, "text-anchor": "middle", text: c.label }));
    }
  });
  const focus = svg("rect", { class: "cell-focus", width: cw, height: rowH - 2, rx: 4, visibility: "hidden" });
  root.append(marks, focus);
  root.setAttribute("data-points", String(rows.length * cols.length));
  const n = cols.length;
  interact(ctx, rows.length * n, (px, py) => {
    const r = Math.floor(py / rowH);
    const c = Math.floor((px - left) / cw);
    return r >= 0 && r < rows.length && c >= 0 && c < n ? r * n + c : null;
  }, (i) => {
    const r = Math.floor(i / n);
    const c = i % n;
    focus.setAttribute("x", left + c * cw);
    focus.setAttribute("y", r * rowH + 1);
    focus.setAttribute("visibility", "visible");
    const v = cell(r, c);
    return { title: `${rows[r]} · ${cols[c].title || cols[c].label}`, rows: v ? v.text : [["", "no data"]], x: left + (c + 1) * cw, y: r * rowH };
  }, () => focus.setAttribute("visibility", "hidden"), (key, current) => {
    if (current < 0) return null;
    if (key === "ArrowDown") return Math.min(rows.length * n - 1, current + n);
    if (key === "ArrowUp") return current - n >= 0 ? current - n : current;
    return null;
  });
  dataTable(ctx.figure, title, ["", ...cols.map((c) => c.title || c.label)],
    rows.map((label, r) => [label, ...cols.map((_c, c) => cell(r, c)?.short ?? "—")]));
  onResize(host, width, () => heatmap(host, opts));
}

// --- waterfall ---------------------------------------------------------------------------

/** stages: [{name, start, ms}] (start and ms in milliseconds); total: the call's latency. */
export function waterfall(host, opts) {
  const { title, stages, total, format } = opts;
  const rowH = 24;
  const height = stages.length * rowH + 34;
  const ctx = frame(host, { title, summary: opts.summary || title, kind: "waterfall", height });
  const { root, width } = ctx;
  const end = Math.max(total || 0, ...stages.map((s) => s.start + s.ms));
  const left = Math.ceil(Math.max(...stages.map((s) => textWidth(s.name, 12)), 40)) + 12;
  const valueW = 64;
  const x = scale(0, end || 1, left, width - valueW);
  root.setAttribute("viewBox", `0 0 ${width} ${height}`);
  root.setAttribute("data-width", width);
  const grid = svg("g", { class: "grid", "aria-hidden": "true" });
  for (const v of niceTicks(end, 4).ticks.filter((t) => t <= end * 1.001)) {
    grid.append(svg("line", { x1: x(v), x2: x(v), y1: 2, y2: height - 22 }),
      svg("text", { class: "tick tick-x", x: x(v), y: height - 8, "text-anchor": "middle", text: format(v) }));
  }
  root.append(grid);
  const marks = svg("g", { class: "marks" });
  stages.forEach((s, i) => {
    const top = 4 + i * rowH;
    marks.append(
      svg("text", { class: "bar-label", x: left - 8, y: top + rowH / 2 - 2, dy: "0.32em", "text-anchor": "end", text: s.name }),
      svg("rect", { class: `bar wf-bar s-stage-${String(s.cls || s.name).replace(/[^a-z_-]/gi, "")}`, x: x(s.start), y: top + 3, height: rowH - 10, width: Math.max(2, x(s.start + s.ms) - x(s.start)), rx: 2, "data-i": i }),
      svg("text", { class: "bar-value", x: Math.min(width - valueW + 4, x(s.start + s.ms) + 6), y: top + rowH / 2 - 2, dy: "0.32em", text: format(s.ms) }));
  });
  root.append(marks);
  root.setAttribute("data-points", String(stages.length));
  interact(ctx, stages.length, (_px, py) => {
    const i = Math.floor((py - 4) / rowH);
    return i >= 0 && i < stages.length ? i : null;
  }, (i) => {
    const s = stages[i];
    return { title: s.name, rows: [["took", format(s.ms)], ["from", format(s.start)], ["to", format(s.start + s.ms)]], x: x(s.start + s.ms), y: 4 + i * rowH };
  });
  dataTable(ctx.figure, title, ["stage", "start", "took"], stages.map((s) => [s.name, format(s.start), format(s.ms)]));
  onResize(host, width, () => waterfall(host, opts));
}

// --- a budget's bar ----------------------------------------------------------------------

/** Spent (and reserved) against limit, with marks at the given shares of the limit. */
export function meterBar(host, opts) {
  const { title, spent = 0, reserved = 0, limit, marks = [0.5, 0.8, 1], format, state = "ok" } = opts;
  const height = 46;
  const ctx = frame(host, { title, summary: opts.summary || title, kind: "meter", height });
  const { root, width } = ctx;
  const end = Math.max(limit || 0, (spent || 0) + (reserved || 0)) * 1.08 || 1;
  const x = scale(0, end, 2, width - 2);
  root.setAttribute("viewBox", `0 0 ${width} ${height}`);
  root.setAttribute("data-width", width);
  root.append(
    svg("rect", { class: "meter-track", x: x(0), y: 6, width: x(end) - x(0), height: 16, rx: 4 }),
    svg("rect", { class: `meter-spent meter-${state}`, x: x(0), y: 6, width: Math.max(0, x(spent) - x(0)), height: 16, rx: 4 }),
    reserved > 0 ? svg("rect", { class: "meter-reserved", x: x(spent), y: 6, width: x(spent + reserved) - x(spent), height: 16 }) : null);
  for (const share of limit ? marks : []) {
    const mx = x(limit * share);
    root.append(svg("line", { class: `meter-mark${share >= 1 ? " meter-limit" : ""}`, x1: mx, x2: mx, y1: 2, y2: 26 }),
      svg("text", { class: "tick tick-x", x: mx, y: 40, "text-anchor": share >= 1 ? "end" : "middle", text: `${Math.round(share * 100)}%` }));
  }
  interact(ctx, 1, () => 0, () => ({
    title, rows: [["spent", format(spent), `meter-${state}`], ["reserved", format(reserved), "meter-reserved"], ["limit", format(limit), "swatch-none"]],
    x: x(spent), y: 4,
  }));
  onResize(host, width, () => meterBar(host, opts));
}
