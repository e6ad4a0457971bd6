/* Circuit Explorer: how the DFA heatmap reads. Its diverging colour (blue +, white 0, red −, relative to the largest
   |term| shown), the colour bar that states that scale, the axis titles, and the position numbers under the map, so
   the columns of a long prompt can be found. explorer-panels.js draws the cells on a canvas.
   Ids: #dfa-colorbar (#dfa-cb-min, #dfa-cb-max), #dfa-axis-x, #dfa-axis-y; #dfa-heatmap[data-ticks]: the positions
   numbered under the map. */

import {$, el, fmt, clamp, tokenText, topIndices} from "./explorer-util.js";

export const MIN_CELL = 9, MAX_CELL = 26, LABEL_W = 34, TOP = 6, TOKEN_LABEL_H = 62;  // px
export const POS_AXIS_H = 15;  // px: the row of position numbers between the cells and the token labels
const POS = [37, 99, 235], NEG = [220, 38, 38];  // common.css --pos, --neg
const STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];
const FONT = "10px ui-monospace, Menlo, Consolas, 'DejaVu Sans Mono', monospace";

/* The colour of t = term / max |term|, in [-1, 1]: white at 0, towards blue (+) or red (−) as |t|^0.75. */
export function termColour(t) {
  const a = Math.pow(Math.min(1, Math.abs(t)), 0.75);
  const mix = (c) => Math.round(255 + (c - 255) * a);
  const [r, g, b] = t >= 0 ? POS : NEG;
  return `rgb(${mix(r)}, ${mix(g)}, ${mix(b)})`;
}

/* The heatmap's box (`wrap`: the canvas and its tooltip) with the colour bar above it, "head" to its left and
   "source position" under it. The bar's end values are set by setScale. */
export function heatFrame(wrap) {
  const ramp = el("span", {class: "cb-ramp", "aria-hidden": "true"});
  const stops = [...Array(21).keys()].map((i) => `${termColour(i / 10 - 1)} ${i * 5}%`);
  ramp.style.setProperty("background-image", `linear-gradient(90deg, ${stops.join(", ")})`);
  return el("div", {class: "heat-frame"},
    el("div", {id: "dfa-colorbar", class: "colorbar",
               title: "a cell's colour: its DFA term (what that head carried from that source into the feature's " +
                      "pre-activation) on the scale of the largest |term| shown"},
      el("span", {class: "axis-title"}, "DFA term"),
      el("span", {class: "num", id: "dfa-cb-min"}), ramp, el("span", {class: "num", id: "dfa-cb-max"}),
      el("span", {class: "muted"}, "red −, white 0, blue +")),
    el("div", {class: "heat-body"}, el("span", {class: "axis-title y", id: "dfa-axis-y"}, "head"), wrap),
    el("div", {class: "axis-title x", id: "dfa-axis-x"},
      "source token, numbered by position · the outlined column is the destination"));
}

/* The colour bar's ends: ±maxAbs, the largest |term| in the columns shown. */
export function setScale(maxAbs) {
  const lo = $("dfa-cb-min"), hi = $("dfa-cb-max");
  if (!lo || !hi) return;
  lo.textContent = fmt(-maxAbs, 3);
  hi.textContent = "+" + fmt(maxAbs, 3);
}

/* The column indices to number under the map. When the columns are consecutive positions, every n-th position
   (n the smallest of 1, 2, 5, 10, 20, ... leaving room for a number); when they are a window of the top sources,
   any column with room. The destination is always numbered. cols: positions, in order; cellW: px per column;
   width(text): px of a number. */
export function positionTicks(cols, cellW, dest, width) {
  if (!cols.length) return [];
  const room = width(String(cols[cols.length - 1])) + 6;
  const consecutive = cols[cols.length - 1] - cols[0] === cols.length - 1;
  const step = consecutive ? STEPS.find((n) => n * cellW >= room) || STEPS[STEPS.length - 1] : 1;
  const di = cols.indexOf(dest);
  const picked = [];
  let last = -Infinity;
  cols.forEach((s, ci) => {
    const x = ci * cellW;
    const crowded = x - last < room || (di >= 0 && Math.abs(di * cellW - x) < room);
    if (ci === di || (consecutive && s % step) || crowded) return;
    picked.push(ci);
    last = x;
  });
  if (di >= 0) picked.push(di);
  return picked.sort((a, b) => a - b);
}

/* Numbers, each with a tick, under the cells of geo ({cols, cellW, width}) from x0 at height y; returns the
   positions numbered. */
export function drawPositionAxis(g, geo, x0, y, dest) {
  g.save();
  g.font = FONT;
  g.textAlign = "center";
  g.textBaseline = "top";
  const ticks = positionTicks(geo.cols, geo.cellW, dest, (t) => g.measureText(t).width);
  for (const ci of ticks) {
    const s = geo.cols[ci], text = String(s), half = g.measureText(text).width / 2;
    const x = x0 + ci * geo.cellW + geo.cellW / 2;
    g.fillStyle = "#9ca3af";
    g.fillRect(x - 0.5, y, 1, 3);
    g.fillStyle = s === dest ? "#2563eb" : "#6b7280";
    g.fillText(text, Math.min(x, geo.width - half - 1), y + 4);
  }
  g.restore();
  return ticks.map((ci) => geo.cols[ci]);
}

/* The cells shown for a DFA answer d at a canvas width: every source up to the destination, or the top sources by
   |DFA| when they do not fit (windowed). */
export function heatGeometry(d, width) {
  const dest = d.position, H = d.n_heads;
  const usable = Math.max(80, width - LABEL_W - 6);
  const maxCols = Math.max(4, Math.floor(usable / MIN_CELL));
  let cols;
  if (dest + 1 <= maxCols) cols = [...Array(dest + 1).keys()];
  else cols = [...topIndices(d.by_src, maxCols - 1, (i) => i < dest), dest].sort((a, b) => a - b);
  const cellW = clamp(Math.floor(usable / cols.length), MIN_CELL, MAX_CELL);
  const cellH = H <= 8 ? 18 : H <= 16 ? 13 : H <= 32 ? 9 : 6;
  return {cols, cellW, cellH, H, width, height: TOP + H * cellH + POS_AXIS_H + TOKEN_LABEL_H,
          windowed: cols.length < dest + 1};
}

/* Draw heat = {d (the DFA answer), hl (the highlighted cell or null)} on canvas; sets heat.geometry. */
export function drawHeatmap(canvas, heat) {
  const d = heat.d, width = Math.floor(canvas.parentElement.clientWidth || 400);
  const geo = heat.geometry = heatGeometry(d, width);
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(geo.height * dpr);
  canvas.style.setProperty("width", width + "px");
  canvas.style.setProperty("height", geo.height + "px");
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, width, geo.height);
  let maxAbs = 0;
  for (const s of geo.cols) for (const v of d.terms[s]) maxAbs = Math.max(maxAbs, Math.abs(v));
  const {cols, cellW, cellH, H} = geo;
  g.font = "10px ui-monospace, Menlo, Consolas, 'DejaVu Sans Mono', monospace";
  g.textBaseline = "middle";
  g.fillStyle = "#6b7280";
  g.textAlign = "right";
  const every = cellH >= 9 ? 1 : Math.ceil(9 / cellH);
  const labelEvery = Math.ceil(11 / cellW);
  for (let h = 0; h < H; h += every) g.fillText(`H${h}`, LABEL_W - 4, TOP + h * cellH + cellH / 2);
  cols.forEach((s, ci) => {
    const x = LABEL_W + ci * cellW;
    for (let h = 0; h < H; h++) {
      g.fillStyle = termColour(maxAbs > 0 ? d.terms[s][h] / maxAbs : 0);
      g.fillRect(x, TOP + h * cellH, cellW - (cellW > 6 ? 1 : 0), cellH - (cellH > 6 ? 1 : 0));
    }
    if (ci > 0 && s - cols[ci - 1] > 1) {  // a gap in the window of top sources: a tick under the map
      g.fillStyle = "#6b7280";
      g.fillRect(x - 1.5, TOP + H * cellH, 2, 4);
    }
    // token label, rotated (every `labelEvery`-th when cells are narrow; the destination always)
    if (ci % labelEvery && s !== d.position) return;
    g.save();
    g.translate(x + cellW / 2, TOP + H * cellH + POS_AXIS_H + 5);
    g.rotate(-Math.PI / 3);
    g.textAlign = "right";
    g.fillStyle = s === d.position ? "#2563eb" : "#374151";
    g.font = (s === d.position ? "bold " : "") + "10px ui-monospace, Menlo, Consolas, 'DejaVu Sans Mono', monospace";
    let label = tokenText(d.token_strs[s]);
    if (label.length > 9) label = label.slice(0, 8) + "…";
    g.fillText(label, 0, 0);
    g.restore();
  });
  canvas.dataset.ticks = drawPositionAxis(g, geo, LABEL_W, TOP + H * cellH, d.position).join(",");
  setScale(maxAbs);
  const di = cols.indexOf(d.position);
  if (di >= 0) {  // the destination column
    g.strokeStyle = "#2563eb"; g.lineWidth = 2;
    g.strokeRect(LABEL_W + di * cellW - 1, TOP - 2, cellW + 1, H * cellH + 3);
  }
  if (heat.hl) {
    const ci = cols.indexOf(heat.hl.s);
    if (ci >= 0) {
      g.strokeStyle = "#111827"; g.lineWidth = 1.5;
      g.strokeRect(LABEL_W + ci * cellW - 0.5, TOP + heat.hl.h * cellH - 0.5, cellW, cellH);
    }
  }
  const note = $("dfa-note");
  if (note) {
    note.textContent = `${H} heads × ${cols.length} source tokens` +
      (geo.windowed ? ` (the top ${cols.length - 1} of ${d.position + 1} sources by |DFA|, in order; a dark mark between two columns: sources skipped)` : "") +
      " · click a cell for that head's attention";
  }
}
