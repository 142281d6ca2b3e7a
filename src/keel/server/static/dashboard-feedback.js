// The feature page's "Feedback and outcomes" panel: thumbs, ratings, corrections and
// business outcomes per version, from GET /api/feedback/stats (docs/feedback.md).

import { barChart } from "./charts.js";
import { el, empty, fill, table } from "./dom.js";
import { int, isNum, pct } from "./format.js";

function mini(key, value, label) {
  return el("div", {},
    el("span", { class: "mini-value", "data-feedback": key, text: value }),
    el("span", { class: "mini-label", text: label }));
}

function mean(value) {
  return isNum(value) ? value.toFixed(2) : "—";
}

/** The panel's body from the stats of one feature. */
export function renderFeedback(body, data, name) {
  const versions = Array.isArray(data?.versions) ? data.versions : [];
  const totals = data?.totals || {};
  if (!versions.some((v) => v.with_feedback)) {
    empty(body, "No feedback yet",
      "Thumbs, ratings, corrections and business outcomes sent with a call's trace id show up here, per version.",
      `curl -X POST :8000/api/feedback -d '{"trace_id": "…", "kind": "thumbs", "value": "up"}'`);
    return;
  }
  const outcomes = [...new Set(versions.flatMap((v) => Object.keys(v.outcomes || {})))].sort();
  const thumbs = totals.thumbs || {};
  const host = el("div", { class: "chart-host" });
  fill(body,
    el("div", { class: "mini-kpis" },
      mini("with_feedback", int(totals.with_feedback), "calls with feedback"),
      mini("up_rate", pct(thumbs.up_rate), `thumbs up (of ${int((thumbs.up ?? 0) + (thumbs.down ?? 0))})`),
      mini("rating", mean(totals.ratings?.mean), "mean rating (1–5)"),
      mini("corrections", int(totals.corrections?.calls), "corrected by users")),
    table([
      { label: "Version", value: (v) => (v.version ? el("code", { text: v.version }) : "—") },
      { label: "Calls", num: true, value: (v) => int(v.calls) },
      { label: "With feedback", num: true, value: (v) => int(v.with_feedback) },
      { label: "Thumbs up", num: true, value: (v) => pct(v.thumbs?.up_rate) },
      { label: "Rating", num: true, value: (v) => mean(v.ratings?.mean) },
      { label: "Corrected", num: true, value: (v) => pct(v.corrections?.rate) },
      ...outcomes.map((o) => ({ label: o, num: true, value: (v) => pct(v.outcomes?.[o]?.rate) })),
    ], versions, { caption: "Feedback and outcome rates per version (of its calls)", cls: "table-feedback",
      rowAttrs: (v) => ({ "data-version": v.version ?? "(none)" }) }),
    outcomes.length ? host : null,
    el("p", { class: "muted small", text: "Rates are of each version's calls in the range, by the call's time: outcomes reported later still count for their call." }));
  if (!outcomes.length) return;
  barChart(host, {
    title: `Outcome rates on ${name}`, valueLabel: "share of calls", format: (x) => pct(x),
    rows: outcomes.flatMap((o) => versions.filter((v) => v.calls).map((v) => ({
      label: `${o} · ${v.version ?? "—"}`, value: v.outcomes?.[o]?.rate ?? 0, cls: "s-accepted",
      extra: [["calls with it", int(v.outcomes?.[o]?.calls ?? 0)]],
    }))),
  });
}
