// Numbers, money, durations and times as the dashboard shows them. Pure functions.

const DASH = "—";

export function isNum(value) {
  return typeof value === "number" && Number.isFinite(value);
}

/** 1234 -> "1,234"; null -> "—". */
export function int(value) {
  return isNum(value) ? Math.round(value).toLocaleString("en-US") : DASH;
}

/** 1234 -> "1.2k", 2500000 -> "2.5M"; small numbers keep up to 3 significant digits. */
export function compact(value) {
  if (!isNum(value)) return DASH;
  const abs = Math.abs(value);
  if (abs >= 1e9) return `${trim(value / 1e9)}G`;
  if (abs >= 1e6) return `${trim(value / 1e6)}M`;
  if (abs >= 1e4) return `${trim(value / 1e3)}k`;
  if (abs >= 1000 || Number.isInteger(value)) return int(value);
  return String(Number(value.toPrecision(3)));
}

function trim(value) {
  return String(Number(value.toFixed(value >= 100 ? 0 : 1)));
}

/** A share in [0, 1] as a percentage: 0.0312 -> "3.1%". */
export function pct(value, digits = 1) {
  if (!isNum(value)) return DASH;
  const p = value * 100;
  if (p !== 0 && Math.abs(p) < 0.1) return "<0.1%";
  return `${Number(p.toFixed(digits))}%`;
}

/** US dollars, with enough digits for per-call costs: 0.000123 -> "$0.000123". */
export function usd(value) {
  if (!isNum(value)) return DASH;
  const abs = Math.abs(value);
  if (abs === 0) return "$0";
  if (abs >= 1000) return `$${Math.round(value).toLocaleString("en-US")}`;
  if (abs >= 1) return `$${value.toFixed(2)}`;
  if (abs >= 0.1) return `$${value.toFixed(2)}`;
  if (abs >= 0.01) return `$${value.toFixed(3)}`;
  return `$${Number(value.toPrecision(2))}`;
}

/** Milliseconds: 0.42 -> "0.42 ms", 35.2 -> "35 ms", 1830 -> "1.83 s". */
export function ms(value) {
  if (!isNum(value)) return DASH;
  if (value >= 60000) return `${Number((value / 60000).toFixed(1))} min`;
  if (value >= 1000) return `${Number((value / 1000).toFixed(2))} s`;
  if (value >= 10) return `${Math.round(value)} ms`;
  return `${Number(value.toPrecision(2))} ms`;
}

/** A confidence in [0, 1]. */
export function conf(value) {
  return isNum(value) ? value.toFixed(2) : DASH;
}

/** A Date from epoch seconds (or milliseconds, or an ISO string); null when not a time. */
export function toDate(value) {
  if (value === null || value === undefined || value === "") return null;
  if (value instanceof Date) return value;
  let date;
  if (typeof value === "number") date = new Date(value > 1e11 ? value : value * 1000);
  else if (/^\d+(\.\d+)?$/.test(String(value))) return toDate(Number(value));
  else date = new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

const pad = (n) => String(n).padStart(2, "0");
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/** "14:05" */
export function clock(date, seconds = false) {
  const d = toDate(date);
  if (!d) return DASH;
  return `${pad(d.getHours())}:${pad(d.getMinutes())}${seconds ? `:${pad(d.getSeconds())}` : ""}`;
}

/** "3 Mar" */
export function day(date) {
  const d = toDate(date);
  return d ? `${d.getDate()} ${MONTHS[d.getMonth()]}` : DASH;
}

/** "3 Mar 14:05:09" */
export function stamp(date) {
  const d = toDate(date);
  return d ? `${day(d)} ${clock(d, true)}` : DASH;
}

/** "just now", "5 min ago", "3 h ago", "2 d ago" */
export function ago(date, now = Date.now()) {
  const d = toDate(date);
  if (!d) return DASH;
  const s = Math.round((now - d.getTime()) / 1000);
  if (s < 0) return `in ${span(-s)}`;
  if (s < 45) return "just now";
  return `${span(s)} ago`;
}

/** A number of seconds as "45 s", "12 min", "3 h", "2 d". */
export function span(seconds) {
  if (!isNum(seconds)) return DASH;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

/** The first characters of a long id. */
export function shortId(id, n = 10) {
  return typeof id === "string" && id.length > n ? id.slice(0, n) : (id ?? DASH);
}

/** Human words for a snake_case or dotted key: "error_budget_remaining" -> "error budget remaining". */
export function words(key) {
  return String(key).replace(/[_.]+/g, " ").trim();
}

/** Any JSON value as short text (tables of fields whose shape is not known in advance). */
export function anyValue(value, key = "") {
  if (value === null || value === undefined) return DASH;
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (isNum(value)) {
    if (/(^|_)(ts|at|start|end|time)$/.test(key)) return stamp(value);
    if (/usd|cost/.test(key)) return usd(value);
    if (/_ms$|latency/.test(key)) return ms(value);
    if (/rate|share|ratio|remaining|target|objective|current/.test(key) && Math.abs(value) <= 1) {
      return pct(value, 2);
    }
    return compact(value);
  }
  if (typeof value === "string") return value;
  return JSON.stringify(value);
}
