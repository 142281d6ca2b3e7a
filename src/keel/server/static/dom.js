// Small DOM builders for the dashboard, and the states every panel goes through:
// loading, failed (with Keel's error), empty (with what to do), not available.

import { ApiError, isAbort } from "./api.js";

const SVG_NS = "http://www.w3.org/2000/svg";

function build(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.setAttribute("class", value);
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** An HTML element: el("a", {href: "#/", class: "x", onclick: fn}, "text", child). */
export function el(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, same shape as el(). */
export function svg(tag, attrs = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replace a node's children, leaving out null and false (replaceChildren would print them). */
export function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

let nextId = 0;
/** A fresh id for aria-labelledby and friends. */
export function uid(prefix = "k") {
  nextId += 1;
  return `${prefix}-${nextId}`;
}

/** A section with a heading and a body whose state the page sets. */
export function panel(title, { id, wide = false, actions = null, level = "h2", cls = "" } = {}) {
  const headingId = uid("panel");
  const body = el("div", { class: "panel-body" });
  const root = el("section", {
    class: `panel${wide ? " panel-wide" : ""}${cls ? ` ${cls}` : ""}`, id, "aria-labelledby": headingId,
  },
  el("header", { class: "panel-head" }, el(level, { class: "panel-title", id: headingId, text: title }), actions),
  body);
  return { root, body };
}

export function loading(body, text = "Loading…") {
  body.setAttribute("aria-busy", "true");
  body.replaceChildren(el("div", { class: "state state-loading" },
    el("span", { class: "spinner", "aria-hidden": "true" }), el("span", { text })));
}

function done(body) {
  body.removeAttribute("aria-busy");
}

/** Keel's error as it sent it: the message, then the code and the HTTP status. */
export function failed(body, err, { what = "This could not be loaded", retry = null } = {}) {
  done(body);
  const api = err instanceof ApiError;
  if (api && err.unauthorised) { // the page's banner has the server's message
    body.replaceChildren(el("div", { class: "state state-locked" },
      el("span", { class: "state-hint", text: "Needs an API key (see above)." }),
      el("button", {
        type: "button", class: "btn btn-small", text: "Enter the API key",
        onclick: () => document.dispatchEvent(new CustomEvent("keel:ask-key", { detail: err })),
      })));
    return;
  }
  const code = api ? err.code : "page_error";
  const status = api && err.status ? ` · HTTP ${err.status}` : "";
  const box = el("div", { class: "state state-error", role: "alert" },
    el("strong", { class: "state-title", text: what }),
    el("span", { class: "state-message", text: err.message || String(err) }),
    el("code", { class: "state-code", text: `${code}${status}` }));
  if (retry) {
    box.append(el("button", { type: "button", class: "btn btn-small", text: "Try again", onclick: retry }));
  }
  body.replaceChildren(box);
}

/** Nothing to show yet, and what would change that. */
export function empty(body, title, hint = "", command = "") {
  done(body);
  body.replaceChildren(el("div", { class: "state state-empty" },
    el("strong", { class: "state-title", text: title }),
    hint ? el("span", { class: "state-hint", text: hint }) : null,
    command ? el("code", { class: "state-command", text: command }) : null));
}

/** The API route is not there in this Keel: say so, quietly. */
export function unavailable(body, what, endpoint) {
  done(body);
  body.replaceChildren(el("div", { class: "state state-unavailable" },
    el("strong", { class: "state-title", text: `${what}: not available` }),
    el("span", { class: "state-hint" }, "This Keel does not serve ", el("code", { text: endpoint }), " yet.")));
}

/**
 * Run ``fetcher`` with the body showing "loading"; on failure show the error (or "not
 * available" for a missing route) and resolve to null. ``render(data)`` fills the body.
 */
export async function load(body, fetcher, render, { what, endpoint, loadingText } = {}) {
  loading(body, loadingText);
  let data;
  try {
    data = await fetcher();
  } catch (err) {
    if (isAbort(err)) return null;
    if (err instanceof ApiError && err.missingRoute && endpoint) unavailable(body, what, endpoint);
    else failed(body, err, { what: `${what} could not be loaded`, retry: () => load(body, fetcher, render, { what, endpoint, loadingText }) });
    return null;
  }
  done(body);
  body.replaceChildren();
  try {
    render(data);
  } catch (err) {
    failed(body, err, { what: `${what} could not be shown` });
    console.error(err); // eslint-disable-line no-console
  }
  return data;
}

/** A headline number. */
export function kpi(label, value, { sub = "", id, tone = "" } = {}) {
  return el("div", { class: `kpi${tone ? ` kpi-${tone}` : ""}`, id },
    el("span", { class: "kpi-label", text: label }),
    el("span", { class: "kpi-value", "data-kpi": id || label, text: value }),
    sub ? el("span", { class: "kpi-sub", text: sub }) : null);
}

/**
 * A table. ``columns``: [{label, value(row) -> text|Node, num: bool, cls}].
 * ``caption`` is read by screen readers (visually hidden unless ``showCaption``).
 */
export function table(columns, rows, { caption = "", cls = "", showCaption = false, rowAttrs = null } = {}) {
  const thead = el("thead", {}, el("tr", {}, columns.map((c) =>
    el("th", { scope: "col", class: c.num ? "num" : c.cls || null, text: c.label }))));
  const tbody = el("tbody", {}, rows.map((row) => el("tr", rowAttrs ? rowAttrs(row) : {},
    columns.map((c, i) => {
      const value = c.value(row);
      const attrs = { class: [c.num ? "num" : "", c.cls || ""].join(" ").trim() || null };
      return i === 0 && c.header !== false ? el("th", { scope: "row", ...attrs }, value) : el("td", attrs, value);
    }))));
  return el("div", { class: "table-wrap" },
    el("table", { class: `table ${cls}`.trim() },
      caption ? el("caption", { class: showCaption ? "" : "sr-only", text: caption }) : null,
      thead, tbody));
}

export const DECISIONS = ["accepted", "repaired", "fallback", "review", "refused", "error"];

export function decisionBadge(decision) {
  const known = DECISIONS.includes(decision) ? decision : "other";
  return el("span", { class: `badge badge-${known}`, text: decision ?? "—" });
}

export function stateBadge(state) {
  const tone = { ok: "ok", warning: "warn", exceeded: "bad", page: "bad", ticket: "warn",
    promoted: "ok", rolled_back: "bad", running: "info", paused: "warn", active: "info" }[state] || "muted";
  return el("span", { class: `badge badge-${tone}`, text: String(state).replace(/_/g, " ") });
}

/** Pretty-printed JSON in a scrollable block. */
export function jsonBlock(value, label = "") {
  return el("pre", { class: "code", tabindex: "0", "aria-label": label || null, text: JSON.stringify(value, null, 2) });
}

/** A link to a page of the dashboard. */
export function link(route, text, attrs = {}) {
  return el("a", { href: `#${route}`, ...attrs }, text);
}
