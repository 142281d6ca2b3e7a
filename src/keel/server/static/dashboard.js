// Keel's dashboard: the shell. Routes by the URL's fragment (#/, #/features/triage,
// #/events?decision=review, #/budgets, #/reviews), keeps the time range, and asks for
// the gateway key when the API answers 401. Each page is its own module.

import { ApiError, apiKey, isAbort, onUnauthorised, request, setApiKey } from "./api.js";
import { el, failed } from "./dom.js";
import * as budgets from "./dashboard-budgets.js";
import * as events from "./dashboard-events.js";
import * as feature from "./dashboard-feature.js";
import * as overview from "./dashboard-overview.js";
import * as reviews from "./dashboard-reviews.js";

const RANGE_STORE = "keel.dashboard.range";
const RANGES = {
  "24h": { label: "last 24 hours", seconds: 86400, bucket: "hour" },
  "7d": { label: "last 7 days", seconds: 7 * 86400, bucket: "hour" },
  "30d": { label: "last 30 days", seconds: 30 * 86400, bucket: "day" },
};
const BUCKET_SECONDS = { minute: 60, hour: 3600, day: 86400 };

const $ = (id) => document.getElementById(id);
let controller = null;
let lastPath = null;

// --- the route ---------------------------------------------------------------------------

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { path: `/${parts.join("/")}`, parts, query: new URLSearchParams(query) };
}

function pageFor(parts) {
  const [first, second] = parts;
  if (!first) return { nav: "overview", title: "Overview", render: overview.render };
  if (first === "features" && !second) return { nav: "features", title: "Features", render: feature.renderList };
  if (first === "features") return { nav: "features", title: `Feature ${second}`, render: feature.render };
  if (first === "events") return { nav: "events", title: "Events", render: events.render };
  if (first === "budgets") return { nav: "budgets", title: "Budgets and costs", render: budgets.render };
  if (first === "reviews") return { nav: "reviews", title: "Reviews", render: reviews.render };
  return { nav: "", title: "Not found", render: notFound };
}

function notFound(ctx) {
  ctx.main.replaceChildren(el("h1", { class: "page-title", tabindex: "-1", text: "No such page" }),
    el("p", {}, `The dashboard has no page at #${ctx.path}. `, el("a", { href: "#/", text: "Back to the overview" }), "."));
}

function currentRange(query) {
  const wanted = query.get("range") || localStorage.getItem(RANGE_STORE) || "24h";
  const key = RANGES[wanted] ? wanted : "24h";
  const range = RANGES[key];
  const until = Math.floor(Date.now() / 1000);
  const bucketS = BUCKET_SECONDS[range.bucket];
  const since = until - range.seconds;
  return { key, ...range, bucketSeconds: bucketS, since, until,
    domain: [new Date(since * 1000), new Date(until * 1000)] };
}

/** Replace the fragment's query (for filters) without another render. */
function setQuery(params) {
  const { path, query: current } = parseHash();
  const query = new URLSearchParams();
  if (current.has("range")) query.set("range", current.get("range"));
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") query.set(k, v);
  const text = query.toString();
  history.replaceState(null, "", `#${path}${text ? `?${text}` : ""}`);
}

async function route({ focus = true } = {}) {
  controller?.abort();
  controller = new AbortController();
  const { path, parts, query } = parseHash();
  const page = pageFor(parts);
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === page.nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const range = currentRange(query);
  for (const btn of document.querySelectorAll("[data-range]")) {
    const on = btn.dataset.range === range.key;
    btn.setAttribute("aria-checked", on ? "true" : "false");
    btn.tabIndex = on ? 0 : -1;
  }
  document.title = `${page.title} · Keel`;
  $("auth-alert").hidden = true; // shown again if this route's requests get a 401
  const main = $("main");
  const mine = controller;
  main.replaceChildren();
  main.setAttribute("aria-busy", "true");
  main.removeAttribute("data-ready");
  main.dataset.route = path;
  document.body.dataset.page = page.nav || "none";
  const moved = path !== lastPath;
  lastPath = path;
  try {
    await page.render({ main, path, parts, query, range, signal: controller.signal, setQuery,
      refresh: () => route({ focus: false }) });
  } catch (err) {
    if (isAbort(err)) return;
    failed(main, err, { what: "This page could not be shown" });
  }
  if (mine !== controller) return; // another route took over meanwhile
  main.removeAttribute("aria-busy");
  main.dataset.ready = "true"; // every panel has its data, or its error
  if (focus && moved) {
    const heading = main.querySelector("h1");
    if (heading) heading.focus({ preventScroll: true });
    $("route-status").textContent = `${page.title} page`;
  }
}

// --- the API key ---------------------------------------------------------------------------

function askKey(reason) {
  const dialog = $("key-dialog");
  if (dialog.open) return;
  $("key-reason").textContent = reason
    ? `The API answered 401 (${reason}). Enter one of the server's gateway keys.`
    : "Enter one of the server's gateway keys, or clear the one this tab uses.";
  $("key-error").textContent = "";
  $("key-input").value = apiKey();
  $("key-input").removeAttribute("aria-invalid");
  dialog.showModal();
  $("key-input").focus();
}

async function submitKey(event) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  const previous = apiKey();
  setApiKey(key);
  try {
    await request("GET", "/api/reviews/stats"); // a cheap protected read to check the key
  } catch (err) {
    if (err instanceof ApiError && err.unauthorised) {
      setApiKey(previous);
      $("key-error").textContent = key ? `That key was refused: ${err.message}` : "This server needs a key.";
      $("key-input").setAttribute("aria-invalid", "true");
      $("key-input").focus();
      return;
    }
  }
  $("key-dialog").close();
  route({ focus: false });
}

// --- start ------------------------------------------------------------------------------------

/** One banner for the whole page when the API answers 401 (the panels just point at it). */
function showAuthAlert(err) {
  $("auth-message").textContent = err.message;
  $("auth-code").textContent = `${err.code} · HTTP ${err.status}`;
  $("auth-alert").hidden = false;
}

function start() {
  onUnauthorised((err) => { showAuthAlert(err); askKey(err.message); });
  $("auth-btn").addEventListener("click", () => askKey($("auth-message").textContent));
  document.addEventListener("keel:ask-key", (event) => askKey(event.detail?.message));
  $("key-form").addEventListener("submit", submitKey);
  $("key-cancel").addEventListener("click", () => $("key-dialog").close());
  $("key-btn").addEventListener("click", () => askKey(""));
  $("refresh-btn").addEventListener("click", () => route({ focus: false }));
  const group = $("range");
  group.addEventListener("click", (event) => {
    const btn = event.target.closest("[data-range]");
    if (!btn) return;
    pickRange(btn.dataset.range);
  });
  group.addEventListener("keydown", (event) => {
    const keys = Object.keys(RANGES);
    const i = keys.indexOf(currentRange(parseHash().query).key);
    const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[event.key];
    if (!step) return;
    event.preventDefault();
    const next = keys[(i + step + keys.length) % keys.length];
    pickRange(next);
    group.querySelector(`[data-range="${next}"]`).focus();
  });
  document.addEventListener("keydown", (event) => {
    const t = event.target;
    const typing = t instanceof HTMLElement && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName));
    if (typing || event.ctrlKey || event.metaKey || event.altKey || document.querySelector("dialog[open]")) return;
    if (event.key === "r") { event.preventDefault(); route({ focus: false }); }
  });
  // /dashboard/events (a path) is the same page as /#/events (a fragment)
  const deep = location.pathname.match(/^\/dashboard\/(.+)$/);
  if (deep && !location.hash) history.replaceState(null, "", `/#/${deep[1]}`);
  window.addEventListener("hashchange", () => route());
  route({ focus: false });
}

function pickRange(key) {
  localStorage.setItem(RANGE_STORE, key);
  const { path, query } = parseHash();
  if (query.has("range")) {
    query.set("range", key);
    history.replaceState(null, "", `#${path}?${query}`);
  }
  route({ focus: false });
}

start();
