/* Circuit Explorer: the recursive DFA tree's terms said for what they are. An expanded node's children split into
   those RDFA expands further (features, head-source terms) and the rest: residual-stream components it cannot split
   (an MLP's output, the embeddings, an SAE's error, constant biases) and the node's named remainders (the terms past
   the top k or under the threshold, biases). The rest is listed apart, largest |value| first, each with what it is,
   its share of the node and why it stops there. Names: attnsae.attribution.rdfa's docstring.
   Selectors: .rdfa-cols (column titles), .rdfa-rest (the terms apart; .rdfa-rest-head counts them), .rdfa-node.leaf
   (a component), .rdfa-node.remainder, .why (the reason), .rdfa-share (% of the node). */

import {el, fmtPct} from "./explorer-util.js";

const CONSTANT = "a constant";
const TOP_K = "past the top k (raise top to list them)";
const NO_RDFA = "this model's residual stream cannot be split (plain DFA only)";
/* the part of a name after "blocks.{l}." -> [what it is (with {l}), why RDFA stops there] */
const LAYER_TERMS = {
  "hook_mlp_out": ["MLP output of layer {l}", "an MLP is nonlinear; RDFA follows attention only"],
  "hook_attn_out": ["attention output of layer {l}", "no SAE on layer {l} to split it"],
  "attn.sae.error": ["SAE error of layer {l}", "what the SAE does not reconstruct"],
  "attn.sae.b_dec": ["SAE decoder bias of layer {l}", CONSTANT],
  "attn.b_O": ["attention output bias b_O of layer {l}", CONSTANT],
  "ln1_post.b": ["post-attention norm bias of layer {l}", CONSTANT],
  "attn.sae.bias": ["SAE encoder bias of layer {l}", CONSTANT],
  "attn.sae.activation_gap": ["activation − pre-activation (layer {l})", "the activation function's gap"],
  "attn.sae.other_features": ["other features of layer {l}", TOP_K],
  "ln1.b": ["norm bias β of layer {l}", CONSTANT],
  "ln1.centring": ["norm centring of layer {l}", "the stream's mean, charged whole"],
  "attn.b_V": ["value bias b_V of layer {l}", CONSTANT],
};
const TERMS = {
  hook_embed: ["token embedding", "an input"],
  hook_pos_embed: ["position embedding", "an input"],
  other_sources_heads: ["other (source, head) terms", TOP_K],
  below_threshold: ["terms under the threshold", "folded (lower the threshold to list them)"],
};

/* What a component or remainder name means: {what, why}. */
export function describeTerm(name) {
  const m = /^blocks\.(\d+)\.(.+)$/.exec(name);
  const known = m ? LAYER_TERMS[m[2]] : TERMS[name];
  if (!known) return {what: name, why: "RDFA does not split this term"};
  return {what: known[0].replaceAll("{l}", m ? m[1] : ""), why: known[1].replaceAll("{l}", m ? m[1] : "")};
}

/* resp: an /api/rdfa answer; path: the expanded node's path ("" at the root). Returns {open: [{node, path}] (the
   children that expand, in the server's order: largest |value| first), rest: [{node, path?, why}] (the others and
   the remainders as nodes of kind "remainder", largest |value| first)}. A child's path is its index among the
   server's children, as the URL records it. */
export function splitChildren(resp, path) {
  const open = [], rest = [];
  (resp.children || []).forEach((node, i) => {
    const p = path === "" ? String(i) : `${path}.${i}`;
    if (node.expandable && node.ref) open.push({node, path: p});
    else rest.push({node, path: p, why: node.kind === "component" ? describeTerm(node.name).why
                                         : node.kind === "head_source" ? NO_RDFA : "RDFA does not expand this node"});
  });
  for (const [name, value] of Object.entries(resp.remainders || {})) {
    rest.push({node: {kind: "remainder", name, value}, why: describeTerm(name).why});
  }
  rest.sort((a, b) => Math.abs(b.node.value) - Math.abs(a.node.value));
  return {open, rest};
}

/* The rows of `rest` under a divider that counts them and their share of the node (value: the node's). */
export function restGroup(rows, rest, value) {
  if (!rest.length) return null;
  const sum = rest.reduce((a, r) => a + r.node.value, 0);
  return el("div", {class: "rdfa-rest", role: "group", "aria-label": "terms RDFA does not expand"},
    el("div", {class: "rdfa-rest-head", title: "components RDFA cannot split and the node's remainders: each with " +
                                                  "its share of the node and why it stops there"},
      `not expandable · ${rest.length} term${rest.length > 1 ? "s" : ""}, together ` +
      `${value ? fmtPct(sum / value, 2) : "n/a"} of the node`),
    rows);
}

/* The tree's column titles. */
export function columnTitles() {
  return el("div", {class: "rdfa-line rdfa-cols", "aria-hidden": "true"}, el("span"), el("span", {class: "kind"}),
    el("span", {}, "term"), el("span", {class: "rdfa-value"}, "value"), el("span"),
    el("span", {class: "rdfa-share", title: "share of the node this term is a part of (its parent)"}, "% of node"));
}
