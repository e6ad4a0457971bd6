/* The Circuit Explorer's view as a URL hash (URLSearchParams): DEFAULTS, parseHash(hash) -> state, toHash(state).
   The keys are listed in explorer.js's header. */

import {clamp} from "./explorer-util.js";
import {parseIv, writeIv} from "./explorer-intervene.js";

export const DEFAULTS = {p: "", q: "", o: "act", k: 8, bos: false, ly: null, sel: null, al: null, ah: 0, ad: null,
                  ed: [], at: null, ta: "", tb: "", iv: false, gn: 10, gs: false, cmp: false, tk: 5, th: 0, ex: [],
                  g: false, sn: []};

export function intOr(v, dflt, lo, hi) {
  const n = Number.parseInt(v, 10);
  return Number.isFinite(n) ? clamp(n, lo, hi) : dflt;
}
export function numOr(v, dflt, lo, hi) {
  const n = Number.parseFloat(v);
  return Number.isFinite(n) ? clamp(n, lo, hi) : dflt;
}

export function parseHash(hash) {
  const h = new URLSearchParams(hash.replace(/^#/, ""));
  const s = structuredClone(DEFAULTS);
  s.p = h.get("p") || "";
  s.q = h.get("q") || "";
  s.o = ["act", "dfa", "logit"].includes(h.get("order")) ? h.get("order") : "act";
  s.k = intOr(h.get("k"), 8, 1, 50);
  s.bos = h.get("bos") === "1";
  if (h.has("layers")) s.ly = h.get("layers").split(",").filter((x) => /^\d+$/.test(x)).map(Number);
  const m = /^(\d+)\/(\d+)@(\d+)$/.exec(h.get("f") || "");
  if (m) s.sel = {layer: Number(m[1]), feature: Number(m[2]), position: Number(m[3])};
  if (/^\d+$/.test(h.get("al") || "")) { s.al = Number(h.get("al")); s.ah = intOr(h.get("ah"), 0, 0, 10000); }
  if (/^\d+$/.test(h.get("ad") || "")) s.ad = Number(h.get("ad"));
  Object.assign(s, parseIv(h));
  s.cmp = h.get("cmp") === "1";
  s.tk = intOr(h.get("topk"), 5, 1, 50);
  s.th = numOr(h.get("th"), 0, 0, 1);
  s.ex = (h.get("ex") || "").split(",").filter((x) => /^\d+(\.\d+)*$/.test(x));
  s.g = h.get("g") === "1";
  s.sn = (h.get("sn") || "").split(";").map((m) => m.split(",").filter(Boolean)).filter((m) => m.length > 1);
  return s;
}

export function toHash(s) {
  const h = new URLSearchParams();
  if (s.p) h.set("p", s.p);
  if (s.q) h.set("q", s.q);
  if (s.o !== "act") h.set("order", s.o);
  if (s.k !== 8) h.set("k", String(s.k));
  if (s.bos) h.set("bos", "1");
  if (s.ly) h.set("layers", s.ly.join(","));
  if (s.sel) h.set("f", `${s.sel.layer}/${s.sel.feature}@${s.sel.position}`);
  if (s.al !== null) { h.set("al", String(s.al)); h.set("ah", String(s.ah)); }
  if (s.ad !== null) h.set("ad", String(s.ad));
  writeIv(s, h);
  if (s.cmp) h.set("cmp", "1");
  if (s.tk !== 5) h.set("topk", String(s.tk));
  if (s.th !== 0) h.set("th", String(s.th));
  if (s.ex.length) h.set("ex", s.ex.join(","));
  if (s.g) h.set("g", "1");
  if (s.sn.length) h.set("sn", s.sn.map((m) => m.join(",")).join(";"));
  // encodeURIComponent, but leaving / @ , : readable (URLSearchParams reads them back unchanged)
  const text = [...h].map(([k, v]) => k + "=" + encodeURIComponent(v).replace(/%2F/g, "/").replace(/%40/g, "@")
    .replace(/%2C/g, ",").replace(/%3A/g, ":")).join("&");
  return text ? "#" + text : "";
}
