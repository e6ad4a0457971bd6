/* Circuit Explorer: how tall the token rows must be for every feature chip to show whole. A layer's chips wrap
   within its lane (explorer.css); the list is virtualised with one height for every row, so that height holds the
   fullest row, shown or not: each row's chips are laid out as flex-wrap lays them out (widths from the chips' own
   fonts), and the most lines any row needs set the height. No chip is ever cut or hidden. */

import {el} from "./explorer-util.js";

const LINE_H = 24;    // one line of chips: 22 px (explorer.css .lane) and the 2 px gap under it
const SLACK = 0.75;    // px added to each chip: sub-pixel rounding never moves a chip to a line not counted

/* The height in px of every token row: its padding and the fullest row's lanes; when wide, at least two lines (the
   token, and its prediction under it: explorer.css); when narrow, a line for both above the lanes.
   rows: the features' rows [[{layer, ...}] per position]; layers: the lanes shown; chipText(entry) -> [name, value]
   as the chip shows them. */
export function rowHeight(spacer, rows, layers, chipText, narrow) {
  const lanes = layers.length ? lanesHeight(spacer, rows, layers, chipText) : LINE_H;
  return narrow ? 26 + lanes : 6 + Math.max(2 * LINE_H, lanes);
}

function lanesHeight(spacer, rows, layers, chipText) {
  const lane = measureLane(spacer);
  if (!lane) return layers.length * LINE_H;  // not laid out (hidden): measured again on the next resize
  const order = new Map(layers.map((l, i) => [l, i]));
  let most = layers.length;
  for (const row of rows) {
    const x = layers.map(() => -1), lines = layers.map(() => 1);  // per lane: the right edge of its last line
    for (const e of row) {
      const i = order.get(e.layer);
      if (i === undefined) continue;
      const [name, value] = chipText(e);
      const w = lane.width(name, value);
      if (x[i] < 0) x[i] = w;
      else if (x[i] + lane.gap + w > lane.inner) { lines[i] += 1; x[i] = w; } else x[i] += lane.gap + w;
    }
    most = Math.max(most, lines.reduce((a, b) => a + b, 0));
  }
  return most * LINE_H;
}

/* A lane's width and gap, and a chip's width from its text, measured on a hidden row laid out as the real ones:
   {inner, gap, width(name, value)} or null when the list is not laid out. */
function measureLane(spacer) {
  const name = "L0/0", value = "0";
  const v = el("span", {class: "v num"}, value);
  const chip = el("button", {type: "button", class: "chip badge"}, name, v);
  const lane = el("div", {class: "lane"}, chip);
  const probe = el("div", {class: "row probe", "aria-hidden": "true"}, el("span", {class: "pos"}),
                   el("span", {class: "tok"}), el("span", {class: "pred"}), el("div", {class: "lanes"}, lane));
  spacer.append(probe);
  const inner = lane.clientWidth, gap = parseFloat(getComputedStyle(lane).columnGap) || 0;
  const font = (node) => {
    const c = getComputedStyle(node);
    return `${c.fontStyle} ${c.fontWeight} ${c.fontSize} ${c.fontFamily}`;
  };
  const fonts = [font(chip), font(v)];  // not the computed `font`: empty when a part (tabular-nums) has no shorthand
  const box = chip.getBoundingClientRect().width;
  probe.remove();
  if (!(inner > 0)) return null;
  if (!widths || widths.fonts !== fonts.join("|") || widths.box !== box) widths = chipWidths(fonts, box, name, value);
  return {inner, gap, width: widths.of};
}

let widths = null;  // the chips' widths in the fonts last measured (kept while the fonts stay)

/* A chip's width from its text: the frame (padding, border, the number's margin) plus each character's advance in
   its font (the chips' fonts are monospace: no kerning to miss), every advance measured once. */
function chipWidths(fonts, box, name, value) {
  const [adv, advV] = fonts.map((font) => {
    const g = document.createElement("canvas").getContext("2d");
    g.font = font;
    const ascii = new Float64Array(128).fill(-1), other = new Map();
    return (s) => {
      let w = 0;
      for (let i = 0; i < s.length; i++) {
        const c = s.charCodeAt(i);
        let a = c < 128 ? ascii[c] : other.get(c);
        if (a === undefined || a < 0) {
          a = g.measureText(s[i]).width;
          if (c < 128) ascii[c] = a; else other.set(c, a);
        }
        w += a;
      }
      return w;
    };
  });
  const frame = box - adv(name) - advV(value);
  return {fonts: fonts.join("|"), box, of: (n, v) => frame + adv(n) + advV(v) + SLACK};
}
