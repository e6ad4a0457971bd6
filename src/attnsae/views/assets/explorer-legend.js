/* Circuit Explorer: what the token list's colours and numbers mean. The family legend (a chip's colour), the chip
   number's name (it follows the ranking), a chip's own numbers with the token its logit is of, and the key of the
   attention shading (a single-hue scale: not the red and blue of signed values).
   Ids: #chip-legend (.legend-chip[data-family]: the families shown), #features-head (names the chip number),
   #feature-head .feature-stats (the selected feature's act, DFA, logit("token")), .preds-head (a prediction list's
   columns), #attn-key (hidden while attention is off). */

import {$, el, put, fmt, fmtSigned, finite, tokenChip} from "./explorer-util.js";

/* [family (null: none known), shown name, what it means]: the labels of attnsae.studies.families, as the
   dashboards write them; the colours are common.css's .badge[data-family] */
const FAMILIES = [
  ["induction", "induction", "its DFA comes from the token after an earlier copy of the current token"],
  ["short-range", "short-range context", "its DFA comes from the last few tokens"],
  ["long-range", "long-range context", "its DFA comes from far back"],
  ["unclear", "unclear", "labelled, but no family rule holds"],
  ["dead", "dead", "never fired on the dashboards' corpus"],
  [null, "unlabelled", "no family known: start the explorer with --dashboard DIR for family colours"],
];
const ALWAYS = new Set(["induction", "short-range", "long-range", "unclear"]);  // shown whenever any chip is labelled

export const NUMBER_NAMES = {act: "activation", dfa: "DFA", logit: "logit effect on the top prediction"};
const NUMBER_TITLES = {
  act: "the feature's activation at the token",
  dfa: "direct feature attribution: what attention wrote into the feature (pre-activation − encoder bias)",
  logit: "the feature's direct effect on the logit of the model's top prediction at the token (→), final norm " +
         "included",
};

/* The family legend for the chips of F (null: cleared) and the chip number's name for `order`. */
export function renderLegend(F, order) {
  const head = $("features-head");
  if (head) {
    head.textContent = `active features · number = ${NUMBER_NAMES[order]}`;
    head.title = NUMBER_TITLES[order];
  }
  const box = $("chip-legend");
  if (!F) { put(box); return; }
  const present = new Set();
  for (const row of F.rows) for (const e of row) present.add(e.family ?? null);
  const labelled = [...present].some((f) => f !== null);
  const shown = FAMILIES.filter(([f]) => present.has(f) || (labelled && ALWAYS.has(f)));
  put(box, el("span", {class: "muted"}, "chip colour = family:"),
    shown.map(([f, name, what]) => el("span", {class: "badge legend-chip", "data-family": f ?? undefined,
                                               title: `${name}: ${what}`}, name)));
}

/* The tooltip of a chip: its three numbers, named, with the token its logit effect is of. */
export function chipTitle(e, position, top) {
  const logit = !finite(e.logit) ? "logit effect: refused on this model"
    : `logit(${top ? JSON.stringify(top.str) : "top prediction"}) ${fmtSigned(e.logit)}: its direct effect on the ` +
      "top prediction's logit";
  return `L${e.layer}/${e.feature} at ${position}\nactivation ${fmt(e.act)} · DFA ${fmt(e.dfa)} (pre-activation − ` +
         `encoder bias)\n${logit}\nfamily: ${e.family || "unlabelled (no --dashboard)"}`;
}

/* The selected feature's numbers at its token, each named: act, DFA, logit("token") of the top prediction. */
export function statLine(e, top) {
  return [
    el("span", {title: NUMBER_TITLES.act}, "act ", el("b", {}, fmt(e.act))), " · ",
    el("span", {title: NUMBER_TITLES.dfa}, "DFA ", el("b", {}, fmt(e.dfa))),
    finite(e.logit) ? [" · ", el("span", {class: "stat-logit", title: NUMBER_TITLES.logit},
      "logit(", top ? tokenChip(top.str, "the model's top prediction here") : "top prediction", ") ",
      el("b", {}, fmtSigned(e.logit)))] : null,
  ];
}

/* The column titles over a list of predictions (explorer-panels.js predictionList: token, probability, logit). */
export function predictionColumns(preds) {
  return el("div", {class: "preds-head", "aria-hidden": "true"}, el("span", {}, "next token"),
    el("span", {title: "probability"}, "prob"),
    preds.some((p) => finite(p.logit)) ? el("span", {title: "the token's logit"}, "logit") : null);
}

/* The attention shading's key: a ramp from 0 to the largest weight shown, or hidden when attention is off. */
export function attentionKey(attn) {
  const key = $("attn-key");
  if (!attn) { key.hidden = true; put(key); return; }
  key.hidden = false;
  put(key, el("span", {class: "muted"}, `token shading = L${attn.layer}H${attn.head} attention from ${attn.dest}:`),
    el("span", {class: "num"}, "0"), el("span", {class: "attn-ramp", "aria-hidden": "true"}),
    el("span", {class: "num", title: "the largest attention weight from this destination"}, fmt(attn.max, 2)));
}
