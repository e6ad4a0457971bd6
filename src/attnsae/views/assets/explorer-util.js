/* Circuit Explorer: DOM, formatting and API helpers shared by explorer.js and explorer-panels.js.
   Everything from the data enters the DOM through textContent or attributes, never as HTML; styles are set through
   the CSSOM (element.style.setProperty), which the page's CSP allows, never through a style attribute. */

export const $ = (id) => document.getElementById(id);

/* The helpers shared with the dashboards (common.js, loaded by explorer.html before this module as a classic
   script): el(tag, attrs, ...children) with style and dataset objects, token text with visible whitespace, number
   formats. */
export const {el, tokenText, tokenNodes, tokenChip, finite, fmt, fmtSigned, fmtPct} = window.attnsae;

/* Replace node's children with `children` (nested arrays flattened, null/false skipped). */
export function put(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

export function append(node, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/* A horizontal bar for `value` on a scale of ±maxAbs: centred (diverging) when `centred`, else from the left. */
export function bar(value, maxAbs, centred) {
  const frac = maxAbs > 0 && finite(value) ? Math.min(1, Math.abs(value) / maxAbs) : 0;
  const fill = el("span", {class: "fill " + (value < 0 ? "neg" : "pos")});
  if (centred) {
    fill.style.setProperty("width", (50 * frac).toFixed(2) + "%");
    fill.style.setProperty("left", value < 0 ? (50 - 50 * frac).toFixed(2) + "%" : "50%");
  } else {
    fill.style.setProperty("width", (100 * frac).toFixed(2) + "%");
    fill.style.setProperty("left", "0");
  }
  return el("span", {class: "bar" + (centred ? " centred" : ""), "aria-hidden": "true"}, fill);
}

/* A list of labelled bars: items [{label: Node|string, value, title?, onclick?}] */
export function barList(items, {centred, cls = "", maxAbs} = {}) {
  const m = maxAbs ?? Math.max(0, ...items.map((it) => Math.abs(it.value) || 0));
  const mixed = items.some((it) => it.value < 0) && items.some((it) => it.value > 0);
  const c = centred ?? mixed;
  return el("div", {class: "bars " + cls}, items.map((it) => {
    const tag = it.onclick ? "button" : "div";
    return el(tag, {class: "bar-row", type: it.onclick ? "button" : undefined, title: it.title, onclick: it.onclick,
                    dataset: it.data},
      el("span", {class: "bar-label"}, it.label), bar(it.value, m, c),
      el("span", {class: "bar-value num"}, fmt(it.value)));
  }));
}

/* An error carrying the server's one-line `detail`. */
export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; this.name = "ApiError"; }
}

/* GET (no body) or POST JSON to a relative path on this origin; resolves to the parsed JSON, rejects with an
   ApiError holding the server's detail. `signal` aborts (the rejection is then a DOMException "AbortError"). */
export async function api(path, body, signal) {
  const init = body === undefined ? {method: "GET"}
    : {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  let response;
  try {
    response = await fetch(path, {...init, signal, credentials: "same-origin", cache: "no-store"});
  } catch (e) {
    if (e && e.name === "AbortError") throw e;
    throw new ApiError(0, `Could not reach the server for ${path} (${e && e.message || e}); is attnsae explore still running?`);
  }
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    let detail = data && data.detail;
    if (Array.isArray(detail)) {
      detail = detail.map((d) => (d && d.msg ? `${(d.loc || []).slice(1).join(".")}: ${d.msg}` : JSON.stringify(d)))
        .join("; ");
    } else if (detail && typeof detail !== "string") detail = JSON.stringify(detail);
    throw new ApiError(response.status, detail || `${path} answered ${response.status} ${response.statusText}`);
  }
  return data;
}

/* api() with a small in-memory cache keyed by the request (answers are pure functions of the request). */
const CACHE = new Map();
const CACHE_SIZE = 200;
export async function cachedApi(path, body, signal) {
  const key = path + " " + JSON.stringify(body);
  if (CACHE.has(key)) {
    const hit = CACHE.get(key);
    CACHE.delete(key); CACHE.set(key, hit);  // most recently used last
    return hit;
  }
  const value = await api(path, body, signal);
  CACHE.set(key, value);
  while (CACHE.size > CACHE_SIZE) CACHE.delete(CACHE.keys().next().value);
  return value;
}

export const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));

/* Indices of the n largest |values| (ties by index). */
export function topIndices(values, n, keep = () => true) {
  const idx = [];
  for (let i = 0; i < values.length; i++) if (keep(i)) idx.push(i);
  idx.sort((a, b) => Math.abs(values[b]) - Math.abs(values[a]) || a - b);
  return idx.slice(0, n);
}
