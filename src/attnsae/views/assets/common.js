/* attnsae pages: small DOM and formatting helpers shared by the dashboards and the head report.
   Everything from the data enters the DOM through textContent or attributes, never as HTML. */
"use strict";
window.attnsae = (() => {
  const SVG_NS = "http://www.w3.org/2000/svg";  // the XML namespace name of SVG, an identifier (nothing is fetched)

  /* el("a", {class: "x", href: "#", onclick: f, style: {"--w": "3px"}, dataset: {layer: 1}}, "text", child,
        [children]) -> HTMLElement */
  function build(node, attrs, children) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "text") node.textContent = String(value);
      else if (key === "style" && typeof value === "object") {
        for (const [prop, v] of Object.entries(value)) node.style.setProperty(prop, v);
      } else if (key === "dataset") {
        for (const [k, v] of Object.entries(value)) node.dataset[k] = String(v);
      } else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const el = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
  const svg = (tag, attrs, ...children) => build(document.createElementNS(SVG_NS, tag), attrs, children);

  /* A token string with its whitespace made visible: space ·, newline ↵, tab →, carriage return ␍, any other
     whitespace or control character as \xNN / \uNNNN, the empty string as ∅. */
  function tokenText(s) {
    if (s === undefined || s === null) return "?";
    if (s === "") return "∅";
    return String(s).replace(/[\s\u0000-\u001f\u007f]/g, (c) => {
      if (c === " ") return "·";
      if (c === "\n") return "↵";
      if (c === "\t") return "→";
      if (c === "\r") return "␍";
      const code = c.charCodeAt(0);
      return code < 0x100 ? "\\x" + code.toString(16).padStart(2, "0") : "\\u" + code.toString(16).padStart(4, "0");
    });
  }

  /* tokenText(s) as nodes: runs of whitespace glyphs in a faint <span class="ws">, the rest as text. */
  function tokenNodes(s) {
    if (s === undefined || s === null || s === "") return [tokenText(s)];
    const out = [];
    let run = "", inWs = false;
    const flush = () => { if (run) out.push(inWs ? el("span", {class: "ws"}, run) : run); run = ""; };
    for (const c of String(s)) {
      const ws = /[\s\u0000-\u001f\u007f]/.test(c);
      if (ws !== inWs) { flush(); inWs = ws; }
      run += ws ? tokenText(c) : c;
    }
    flush();
    return out;
  }

  /* A token as an inline chip; the tooltip gives the exact string (JSON-quoted) and any extra lines. */
  function tokenChip(s, ...extra) {
    return el("span", {class: "tk", title: [JSON.stringify(String(s ?? "")), ...extra].join("\n")}, tokenNodes(s));
  }

  const finite = (v) => typeof v === "number" && Number.isFinite(v);

  /* A number to `digits` significant digits, without trailing zeros or exponent noise. */
  function fmt(v, digits = 3) {
    if (!finite(v)) return v === Infinity ? "∞" : v === -Infinity ? "−∞" : "n/a";
    if (v === 0) return "0";
    const a = Math.abs(v);
    const text = a >= 1e5 || a < 1e-4 ? v.toExponential(digits - 1) : String(Number(v.toPrecision(digits)));
    return text.replace("-", "−");
  }
  const fmtInt = (v) => (finite(v) ? Math.round(v).toLocaleString("en-US") : "n/a");
  const fmtPct = (fraction, digits = 3) => (finite(fraction) ? fmt(100 * fraction, digits) + "%" : "n/a");
  const fmtSigned = (v, digits = 3) => (finite(v) && v > 0 ? "+" : "") + fmt(v, digits);

  /* A family name as a coloured badge (colours by data-family in common.css). */
  function familyBadge(name, title) {
    return el("span", {class: "badge family", "data-family": name, title}, name);
  }

  return {el, svg, tokenText, tokenNodes, tokenChip, finite, fmt, fmtInt, fmtPct, fmtSigned, familyBadge};
})();
