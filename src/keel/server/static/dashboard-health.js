// A feature's health panels: its rollout (steps and transitions), its SLOs and its drift.
// The SLO and drift shapes are read generically: known fields get their place, others
// are listed as they come.

import { heatmap } from "./charts.js";
import { el, empty, fill, stateBadge, table } from "./dom.js";
import { ago, anyValue, clock, compact, day, int, isNum, ms, pct, stamp, usd, words } from "./format.js";

// --- rollout -----------------------------------------------------------------------------

export function renderRollout(body, data) {
  const r = data.rollout || {};
  const steps = Array.isArray(r.steps) ? r.steps : [];
  const active = r.state === "running" || r.state === "paused";
  const head = el("div", { class: "rollout-head" },
    stateBadge(r.state ?? "unknown"),
    el("span", { class: "rollout-versions" },
      el("code", { text: r.candidate ?? "?" }), " vs ", el("code", { text: r.baseline ?? "?" })),
    active ? el("span", { class: "muted", text: `${pct(r.weight)} of traffic on the candidate` }) : null,
    el("span", { class: "muted", text: `started ${ago(r.created_at)}${r.created_by ? ` by ${r.created_by}` : ""}` }));
  const stepList = el("ol", { class: "steps", "aria-label": "Rollout steps" }, steps.map((share, i) => {
    const status = r.state === "promoted" || i < r.step ? "done" : i === r.step && active ? "current" : "todo";
    return el("li", { class: `step step-${status}`, "aria-current": status === "current" ? "step" : null },
      el("span", { class: "step-share", text: pct(share, 0) }),
      el("span", { class: "step-state sr-only", text: status === "done" ? "(passed)" : status === "current" ? "(current step)" : "" }));
  }));
  const parts = [head, stepList];
  if (r.reason) parts.push(el("p", { class: "rollout-reason" }, el("strong", { text: "Why: " }), r.reason));
  const m = data.metrics || {};
  if (m.candidate || m.baseline) {
    const rows = [
      ["calls", (v) => int(v.calls)],
      ["error rate", (v) => (v.calls ? pct(v.errors / v.calls) : "—")],
      ["validation failures", (v) => int(v.validation_failures)],
      ["sent to review", (v) => int(v.reviews)],
      ["refusals", (v) => int(v.refusals)],
      ["latency p95", (v) => ms(v.latency_p95_ms)],
      ["cost per call", (v) => usd(v.cost_per_call_usd)],
    ];
    // business outcomes (rollout.outcomes judges them): the share of the step's calls with each
    const outcomes = new Set([...Object.keys(m.candidate?.outcomes || {}), ...Object.keys(m.baseline?.outcomes || {})]);
    for (const o of [...outcomes].sort()) {
      rows.push([`outcome ${o}`, (v) => (v.calls ? pct((v.outcomes?.[o] ?? 0) / v.calls) : "—")]);
    }
    parts.push(table([
      { label: "In this step", value: (row) => row[0] },
      { label: `candidate ${r.candidate ?? ""}`, num: true, value: (row) => row[1](m.candidate || {}) },
      { label: `baseline ${r.baseline ?? ""}`, num: true, value: (row) => row[1](m.baseline || {}) },
    ], rows, { caption: "Live metrics of both versions in the current step", cls: "table-compact" }));
  }
  const transitions = Array.isArray(data.transitions) ? data.transitions : [];
  if (transitions.length) {
    parts.push(el("h3", { class: "sub-title", text: "Transitions" }), table([
      { label: "When", value: (t) => el("time", { datetime: new Date(t.at * 1000).toISOString(), title: stamp(t.at), text: ago(t.at) }) },
      { label: "Change", value: (t) => `${t.from_state ?? "—"} → ${t.to_state}` },
      { label: "Step", num: true, value: (t) => `${(t.step ?? 0) + 1} · ${pct(t.weight, 0)}` },
      { label: "Reason", value: (t) => t.reason || "—" },
      { label: "By", value: (t) => t.actor || "—" },
    ], transitions, { caption: "Rollout transitions, newest first", cls: "table-compact table-transitions" }));
  }
  body.replaceChildren(...parts);
}

export function noRollout(body, feature, err) {
  empty(body, "No rollout yet", err?.message || `Start a canary of ${feature} when a new version passes its eval.`,
    `keel rollout start ${feature} VERSION`);
}

// --- SLOs --------------------------------------------------------------------------------

const SLO_KNOWN = new Set(["name", "objective", "target", "window_days", "window", "current", "observed",
  "error_budget_remaining", "budget_remaining", "burn_rates", "alert", "page", "ticket", "feature", "met"]);

/** The number format an objective's target and observation are in. */
function objectiveFormat(name) {
  if (/_ms$|latency/.test(name)) return ms;
  if (/usd|cost/.test(name)) return usd;
  if (/rate|share/.test(name)) return (v) => pct(v, 2);
  return (v) => anyValue(v);
}

/** One SLO in one shape, whichever field names the API used. */
function normalSlo(s, windowDays) {
  const name = s.name ?? s.objective ?? s.metric ?? "SLO";
  return {
    name,
    target: s.target ?? (isNum(s.objective) ? s.objective : null),
    current: s.observed ?? s.current ?? null,
    remaining: s.budget_remaining ?? s.error_budget_remaining ?? null,
    windowDays: s.window_days ?? windowDays ?? null,
    burns: s.burn_rates && typeof s.burn_rates === "object" ? Object.entries(s.burn_rates) : [],
    alert: s.alert ?? (s.page ? "page" : s.ticket ? "ticket" : null),
    met: typeof s.met === "boolean" ? s.met : null,
    extra: Object.entries(s).filter(([k, v]) => !SLO_KNOWN.has(k) && (v === null || typeof v !== "object")),
  };
}

export function renderSlos(body, data, feature) {
  const raw = Array.isArray(data?.objectives) ? data.objectives
    : Array.isArray(data?.slos) ? data.slos : Array.isArray(data) ? data : [];
  if (!raw.length) {
    empty(body, "No SLOs", `Declare objectives for ${feature} under slo: in keel.yaml to see them judged here.`);
    return;
  }
  const list = el("div", { class: "slos" });
  for (const s of raw.map((x) => normalSlo(x, data?.window_days))) {
    const fmt = objectiveFormat(s.name);
    const left = isNum(s.remaining) ? Math.max(0, Math.min(1, s.remaining)) : null;
    const meter = el("div", { class: "meter", role: "meter", "aria-label": `${words(s.name)}: error budget left`,
      "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": left === null ? null : String(left),
      "aria-valuetext": isNum(s.remaining) ? `${pct(s.remaining)} of the error budget left` : "unknown" });
    const fill = el("div", { class: `meter-fill ${left === null ? "" : left < 0.1 ? "meter-bad" : left < 0.5 ? "meter-warn" : "meter-ok"}` });
    fill.style.width = `${(left ?? 0) * 100}%`;
    meter.append(fill);
    const status = s.alert ? stateBadge(s.alert)
      : s.met === false ? el("span", { class: "badge badge-bad", text: "missed" })
        : el("span", { class: "badge badge-ok", text: "met" });
    list.append(el("article", { class: `slo${s.alert || s.met === false ? " slo-alert" : ""}`, "data-slo": s.name },
      el("header", { class: "slo-head" }, el("h3", { class: "slo-name", text: words(s.name) }), status),
      el("dl", { class: "kv-inline" },
        el("div", {}, el("dt", { text: "target" }), el("dd", { text: isNum(s.target) ? fmt(s.target) : anyValue(s.target) })),
        el("div", {}, el("dt", { text: "now" }), el("dd", { class: "slo-current", text: isNum(s.current) ? fmt(s.current) : "no calls" })),
        s.windowDays ? el("div", {}, el("dt", { text: "window" }), el("dd", { text: `${s.windowDays} d` })) : null,
        ...s.extra.map(([k, v]) => el("div", {}, el("dt", { text: words(k) }), el("dd", { text: anyValue(v, k) })))),
      el("div", { class: "slo-budget" }, el("span", { class: "slo-budget-label", text: "error budget left" }), meter,
        el("span", { class: "slo-budget-value", text: pct(s.remaining) })),
      s.burns.length ? el("ul", { class: "chips", "aria-label": "Burn rates per window" }, s.burns.map(([w, rate]) =>
        el("li", { class: `chip${isNum(rate) && rate >= 1 ? " chip-bad" : ""}`, title: "burn rate: 1 spends the budget in exactly one window" },
          el("span", { class: "chip-key", text: `burn ${w}` }), isNum(rate) ? `${Number(rate.toFixed(2))}×` : "—"))) : null));
  }
  body.replaceChildren(list);
}

// --- drift --------------------------------------------------------------------------------

/** A column's summary in one line: "mean 23 · p95 40", or the top label shares. */
function summaryText(summary) {
  if (!summary || typeof summary !== "object") return summary ? String(summary) : "";
  if (isNum(summary.mean)) {
    return [["mean", summary.mean], ["p50", summary.p50], ["p95", summary.p95]]
      .filter(([, v]) => isNum(v)).map(([k, v]) => `${k} ${compact(v)}`).join(" · ");
  }
  if (isNum(summary.rate)) return `rate ${pct(summary.rate)}`;
  if (summary.shares && typeof summary.shares === "object") {
    return Object.entries(summary.shares).sort((a, b) => b[1] - a[1]).slice(0, 3)
      .map(([k, v]) => `${k} ${pct(v, 0)}`).join(" · ");
  }
  return "";
}

function cellOf(test, role) {
  if (role === "reference") return { level: "ref", text: [["", "the reference window"]], short: "reference" };
  if (!test || typeof test !== "object") return null;
  const p = isNum(test.p_adjusted) ? test.p_adjusted : test.p_value;
  const stat = test.statistic;
  const limit = test.threshold;
  let score = null;
  if (isNum(p)) score = 1 - p;
  else if (isNum(stat) && isNum(limit) && limit > 0) score = Math.min(1, stat / limit);
  const near = isNum(p) ? p < 0.1 : isNum(score) && score >= 0.8;
  const level = test.drifted ? "bad" : near ? "warn" : "ok";
  const text = [["test", test.test ?? test.method ?? "—"], ["statistic", isNum(stat) ? stat.toPrecision(3) : "—"]];
  if (isNum(p)) text.push([isNum(test.p_adjusted) ? "p (adjusted)" : "p-value", p < 0.001 ? p.toExponential(1) : p.toPrecision(2)]);
  if (isNum(limit)) text.push(["threshold", String(limit)]);
  if (isNum(test.n)) text.push(["n", compact(test.n)]);
  text.push(["drifted", test.drifted ? "yes" : "no"]);
  const summary = summaryText(test.summary);
  if (summary) text.push(["window", summary]);
  if (test.note) text.push(["note", String(test.note)]);
  const short = `${test.drifted ? "drift" : "ok"}${isNum(p) ? ` p=${p.toPrecision(2)}` : isNum(stat) ? ` ${stat.toPrecision(3)}` : ""}`;
  return { level, strength: test.drifted ? Math.max(0.5, score ?? 1) : null, text, short };
}

export function renderDrift(body, data, feature) {
  const windows = Array.isArray(data?.windows) ? data.windows : [];
  const notes = Array.isArray(data?.notes) ? data.notes.filter(Boolean).map(String) : [];
  if (data?.skipped && typeof data.skipped === "object") {
    for (const [column, why] of Object.entries(data.skipped)) notes.push(`${column}: ${why}`);
  }
  if (!windows.length) {
    empty(body, "No drift windows yet",
      notes[0] || `Drift is measured once ${feature} has enough calls against its reference.`);
    return;
  }
  const columns = [];
  for (const w of windows) for (const c of Object.keys(w.columns || {})) if (!columns.includes(c)) columns.push(c);
  if (!columns.length) {
    empty(body, "Nothing could be tested yet", notes[0] || "Each window needs enough calls for a test.");
    return;
  }
  const span = windows.length > 1 ? Math.abs(Number(windows[1].start) - Number(windows[0].start)) : 86400;
  const label = (w) => (span >= 86400 ? day(w.start) : clock(w.start));
  const drifted = windows.filter((w) => w.drifted).length;
  const latest = windows.at(-1);
  const now = Array.isArray(latest.drifted_columns) ? latest.drifted_columns
    : Object.entries(latest.columns || {}).filter(([, t]) => t?.drifted).map(([c]) => c);
  const alert = data.alert_active ?? data.alert;
  const ref = data.reference && typeof data.reference === "object" ? data.reference : null;
  const host = el("div", { class: "chart-host" });
  fill(body,
    el("p", { class: `drift-summary${alert ? " is-alert" : ""}` },
      alert ? el("strong", { text: "Drift alert. " }) : null,
      `${drifted} of ${windows.length} windows drifted`,
      now.length ? `; in the latest: ${now.join(", ")}.` : "; none in the latest window."),
    ref ? el("p", { class: "muted small" }, `Reference: ${ref.description || ref.kind}${isNum(ref.n) ? ` (${compact(ref.n)})` : ""}.`) : null,
    host,
    el("ul", { class: "chart-legend", "aria-hidden": "true" }, [["bad", "drifted"], ["warn", "close (p < 0.1)"],
      ["ok", "no drift"], ["ref", "reference"], ["untested", "not tested"]].map(([level, text]) =>
      el("li", {}, el("span", { class: `swatch swatch-${level}` }), text))),
    notes.length ? el("ul", { class: "notes muted small" }, notes.map((n) => el("li", { text: String(n) }))) : null);
  heatmap(host, {
    title: `Drift of ${feature} per column and window`,
    summary: `${columns.length} columns by ${windows.length} windows; ${drifted} windows drifted.`,
    rows: columns,
    cols: windows.map((w) => ({ label: label(w), title: `${stamp(w.start)} – ${stamp(w.end)} (${compact(w.n)} calls${w.role === "reference" ? ", reference" : ""})` })),
    cell: (r, c) => cellOf(windows[c].columns?.[columns[r]], windows[c].role),
  });
}
