// The review queue at a glance (#/reviews): what waits per feature, what was decided.
// The reviewing itself happens on /review.

import { get, shared } from "./api.js";
import { barChart } from "./charts.js";
import { el, empty, kpi, link, load, panel, table } from "./dom.js";
import { int, pct } from "./format.js";

export async function render(ctx) {
  const { main, signal } = ctx;
  const queue = panel("Queue per feature", { wide: true });
  const totals = panel("Totals", { cls: "panel-kpis" });
  main.replaceChildren(
    el("div", { class: "page-head page-head-row" },
      el("div", {},
        el("h1", { class: "page-title", tabindex: "-1", text: "Reviews" }),
        el("p", { class: "page-sub muted", text: "Outputs waiting for a person, and the verdicts given so far." })),
      el("a", { class: "btn btn-primary", href: "/review", id: "open-review" }, "Open the review queue ", el("span", { "aria-hidden": "true", text: "↗" }))),
    totals.root, el("div", { class: "grid" }, queue.root));
  const stats = shared(() => get("/api/reviews/stats", {}, { signal }));
  const what = { what: "The review queue", endpoint: "GET /api/reviews/stats" };
  await Promise.all([
    load(totals.body, stats, (d) => renderTotals(totals.body, rowsOf(d)), what),
    load(queue.body, stats, (d) => renderQueue(queue.body, rowsOf(d)), what),
  ]);
}

function rowsOf(data) {
  return Array.isArray(data?.features) ? data.features : Array.isArray(data) ? data : [];
}

const waiting = (r) => (r.pending ?? 0) + (r.in_progress ?? 0);

function renderTotals(body, rows) {
  const sum = (k) => rows.reduce((a, r) => a + (r[k] ?? 0), 0);
  const done = sum("done");
  body.replaceChildren(el("div", { class: "kpis" },
    kpi("Waiting", int(rows.reduce((a, r) => a + waiting(r), 0)), { id: "kpi-waiting", sub: `${int(sum("in_progress"))} being reviewed` }),
    kpi("Done", int(done), { id: "kpi-done" }),
    kpi("Approved", done ? pct(sum("approved") / done) : "—", { id: "kpi-approved", sub: `${int(sum("approved"))} verdicts` }),
    kpi("Edited", done ? pct(sum("edited") / done) : "—", { id: "kpi-edited", sub: `${int(sum("edited"))} verdicts` }),
    kpi("Rejected", done ? pct(sum("rejected") / done) : "—", { id: "kpi-rejected", sub: `${int(sum("rejected"))} verdicts` })));
}

function renderQueue(body, rows) {
  if (!rows.length || !rows.some((r) => waiting(r) || r.done)) {
    empty(body, "Nothing has gone to review yet",
      "A call goes to review when its confidence is below the feature's policy.accept_at or a validator says so.");
    return;
  }
  const host = el("div", { class: "chart-host" });
  body.replaceChildren(host, table([
    { label: "Feature", value: (r) => link(`/features/${encodeURIComponent(r.feature)}`, r.feature) },
    { label: "Waiting", num: true, value: (r) => int(r.pending ?? 0) },
    { label: "Being reviewed", num: true, value: (r) => int(r.in_progress ?? 0) },
    { label: "Done", num: true, value: (r) => int(r.done ?? 0) },
    { label: "Approved", num: true, value: (r) => int(r.approved ?? 0) },
    { label: "Edited", num: true, value: (r) => int(r.edited ?? 0) },
    { label: "Rejected", num: true, value: (r) => int(r.rejected ?? 0) },
    { label: "Unanimous", num: true, value: (r) => (r.agreement?.items ? pct(r.agreement.unanimous) : "—") },
  ], rows, { caption: "Review queue per feature", cls: "table-reviews", rowAttrs: (r) => ({ "data-feature": r.feature }) }));
  barChart(host, {
    title: "Items waiting for review per feature", valueLabel: "waiting", format: int, integer: true, cls: "s-review",
    rows: rows.map((r) => ({ label: r.feature, value: waiting(r), extra: [["done", int(r.done ?? 0)]] })),
  });
}
