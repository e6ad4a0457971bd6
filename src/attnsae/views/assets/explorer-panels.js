/* Circuit Explorer: the detail cards for the selected (layer, feature, position): the feature header, DFA heatmap
   and bars, the recursive DFA tree, the direct logit effect and prompt comparison (the intervention card is
   explorer-intervene.js).
   See explorer.js for the page's ids and selectors. */

import {$, el, put, append, tokenChip, tokenText, fmt, fmtSigned, fmtPct, finite, barList, bar, cachedApi, api, clamp,
        topIndices} from "./explorer-util.js";
import {LABEL_W, TOP, drawHeatmap, heatFrame} from "./explorer-heatmap.js";
import {predictionColumns, statLine} from "./explorer-legend.js";
import {columnTitles, describeTerm, restGroup, splitChildren} from "./explorer-rdfa.js";

const OCC_SHOWN = 16;
const KIND_LABELS = {feature: "feat", head_source: "head", component: "comp", remainder: "rest"};
const KIND_TITLES = {feature: "an SAE feature (its value: coefficient × activation)",
                     head_source: "one head reading one source token (value path)",
                     component: "a residual-stream component at the source token",
                     remainder: "a remainder: the rest of the node's sum, named"};

/* ctx: {state(), info(), features(), select(sel), setAttention(layer, head, dest), setState(patch, push), error(e),
         busy(node, on), pickToken(str, event, id) (a logit token for the intervention), addEdit(sel)} */
export function createPanels(ctx) {
  let gen = 0;                 // a newer selection drops older answers
  const shown = {};            // the answers on screen (for export)
  let heat = null;             // {d, hl, geometry} of the DFA heatmap

  const prompt = () => ctx.state().p;
  const tokenAt = (i) => { const F = ctx.features(); return F ? F.token_strs[i] : undefined; };
  const posChip = (i, ...extra) => el("span", {class: "at"}, el("span", {class: "at-pos num"}, String(i)),
                                     tokenChip(tokenAt(i), `position ${i}`, ...extra));
  const featureName = (layer, feature) => `L${layer}/${feature}`;

  function dashboardLink(layer, feature) {
    const info = ctx.info();
    if (!info || !info.dashboard) return null;
    const sae = (info.saes || []).find((x) => x.layer === layer);
    const name = (sae && sae.dashboard) || `L${layer}`;
    return el("a", {class: "dash-link", href: `/dashboard/index.html#${encodeURIComponent(name)}/${feature}`, target: "_blank",
                    rel: "noopener", title: `open the dashboard page of L${layer}/${feature} in a new tab`},
              "dashboard ↗");
  }

  async function guarded(card, g, work) {
    ctx.busy(card, true);
    try { return await work(); } catch (e) {
      if (g === gen && !(e && e.name === "AbortError")) ctx.error(e);
      return null;
    } finally { if (g === gen) ctx.busy(card, false); }
  }

  /* ---------- selection ---------- */

  function clear() {
    gen++;
    heat = null;
    for (const k of Object.keys(shown)) delete shown[k];
    $("detail").classList.add("empty");
    put($("feature-head"), el("p", {class: "muted"},
      "Click a feature chip in the token list (or move with ↑ ↓ ← → and press Enter) to see its direct feature " +
      "attribution, recursive DFA tree, logit effect, and to add it to the intervention's edits."));
    for (const id of ["dfa-body", "rdfa-tree", "effect"]) $(id).replaceChildren();
    put($("identity"));
    for (const id of ["dfa-card", "rdfa-card", "effect-card"]) ctx.busy($(id), false);
  }

  function show() {
    const s = ctx.state(), F = ctx.features();
    if (!s.sel || !F) { clear(); return; }
    const g = ++gen;
    for (const k of ["dfa", "rdfa", "effect"]) delete shown[k];
    $("detail").classList.remove("empty");
    renderHead();
    return Promise.all([loadDfa(g), loadRdfa(g), loadEffect(g)]);
  }

  function renderHead() {
    const s = ctx.state(), F = ctx.features(), {layer, feature, position} = s.sel;
    const entry = (F.rows[position] || []).find((e) => e.layer === layer && e.feature === feature);
    const head = $("feature-head");
    const occurrences = [];
    F.rows.forEach((row, i) => {
      const e = row.find((x) => x.layer === layer && x.feature === feature);
      if (e) occurrences.push([i, e]);
    });
    put(head, 
      el("div", {class: "feature-title"},
        el("h2", {id: "feature-name", class: "fref", "data-layer": layer, "data-feature": feature}, featureName(layer, feature)),
        entry && entry.family ? el("span", {class: "badge family", "data-family": entry.family}, entry.family) : null,
        el("span", {class: "muted"}, "at"), posChip(position),
        dashboardLink(layer, feature),
        el("button", {type: "button", id: "add-feature-edit", title: "add an edit of this feature at this position " +
                      "to the intervention below (zero it; change the op there)", onclick: () => ctx.addEdit(s.sel)}, "+ edit")),
      entry ? el("div", {class: "feature-stats muted num"},
        statLine(entry, ((F.predictions || [])[position] || [])[0])) : null,
      occurrences.length > 1 ? el("div", {class: "occurrences"},
        el("span", {class: "muted"}, `in the top ${s.k} at ${occurrences.length} positions:`),
        occurrences.map(([i, e], n) => el("button", {
          hidden: n >= OCC_SHOWN && i !== position ? true : null,
          type: "button", class: "occ" + (i === position ? " current" : ""), "aria-current": i === position ? "true" : null,
          title: `position ${i} ${JSON.stringify(F.token_strs[i])}: act ${fmt(e.act)}`,
          onclick: () => ctx.select({layer, feature, position: i})},
          el("span", {class: "num"}, String(i)), " ", tokenText(F.token_strs[i]).slice(0, 12))),
        occurrences.length > OCC_SHOWN + 1 ? el("button", {type: "button", class: "link", id: "occ-more",
          onclick: (e) => { for (const b of head.querySelectorAll(".occ[hidden]")) b.hidden = false; e.target.remove(); }},
          `all ${occurrences.length}`) : null) : null);
    document.title = `${featureName(layer, feature)} @ ${position} — Circuit Explorer`;
  }

  /* ---------- DFA ---------- */

  async function loadDfa(g) {
    const s = ctx.state(), {layer, feature, position} = s.sel;
    const card = $("dfa-card");
    const d = await guarded(card, g, () => cachedApi("/api/dfa", {prompt: prompt(), layer, feature, position}));
    if (!d || g !== gen) return;
    shown.dfa = d;
    heat = {d, hl: null, geometry: null};
    const body = $("dfa-body");
    const dest = d.position;
    const srcIdx = topIndices(d.by_src, 10, (i) => i <= dest);
    const nH = d.by_head.length;
    const headIdx = nH <= 16 ? [...Array(nH).keys()] : topIndices(d.by_head, 16);
    const note = el("p", {class: "hint", id: "dfa-note"});
    put(body, 
      heatFrame(el("div", {class: "heat-wrap"},
        el("canvas", {id: "dfa-heatmap", tabindex: "0", role: "img",
                      "aria-label": `DFA of ${featureName(layer, feature)} at position ${dest}: heads by source tokens`}),
        el("div", {id: "dfa-tip", class: "tip", hidden: true}))),
      note,
      el("div", {class: "two-col"},
        el("div", {},
          el("h4", {}, "by source token ", el("span", {class: "sub"}, "summed over heads")),
          barList(srcIdx.map((i) => ({label: posChip(i, i === dest ? "(the destination)" : ""), value: d.by_src[i],
                                       title: `DFA summed over heads from source ${i}`})), {cls: "by-src"}),
          el("p", {class: "hint"}, `top ${srcIdx.length} of ${dest + 1} sources`)),
        el("div", {},
          el("h4", {}, "by head ", el("span", {class: "sub"}, "summed over sources")),
          barList(headIdx.map((h) => ({label: `L${layer}H${h}`, value: d.by_head[h], data: {head: h},
                                       title: `head ${h}: click to show its attention from position ${dest}`,
                                       onclick: () => ctx.setAttention(layer, h, dest)})), {cls: "by-head"}))));
    const canvas = $("dfa-heatmap");
    canvas.addEventListener("mousemove", (e) => heatHover(e));
    canvas.addEventListener("mouseleave", () => { heat.hl = null; drawHeat(); tip(null); });
    canvas.addEventListener("click", (e) => {
      const cell = heatCell(e);
      if (cell) ctx.setAttention(layer, cell.h, dest);
    });
    canvas.addEventListener("keydown", heatKey);
    canvas.addEventListener("blur", () => { if (heat) { heat.hl = null; drawHeat(); tip(null); } });
    drawHeat();
    const err = d.identity_error;
    const ok = finite(err) && err <= 1e-3 * Math.max(1, Math.abs(d.pre_act));
    put($("identity"), 
      el("span", {class: "id-eq"}, "pre-activation = DFA total + bias: "),
      el("span", {class: "num id-values"},
        el("b", {id: "identity-pre"}, fmt(d.pre_act, 5)), " = ", el("span", {id: "identity-dfa"}, fmt(d.dfa_total, 5)),
        " + ", el("span", {id: "identity-bias"}, fmt(d.bias, 5))),
      el("span", {class: "id-err " + (ok ? "ok" : "bad"), id: "identity-error",
                  title: "|pre_act − dfa_total − bias|"}, `${ok ? "✓" : "✗"} error ${fmt(err, 2)}`),
      el("span", {class: "muted"}, ` · activation ${fmt(d.act, 4)}`));
  }

  function drawHeat() {
    const canvas = $("dfa-heatmap");
    if (!heat || !canvas) return;
    drawHeatmap(canvas, heat);
  }

  function heatCell(e) {
    if (!heat || !heat.geometry) return null;
    const canvas = $("dfa-heatmap"), r = canvas.getBoundingClientRect();
    const {cols, cellW, cellH, H} = heat.geometry;
    const ci = Math.floor((e.clientX - r.left - LABEL_W) / cellW), h = Math.floor((e.clientY - r.top - TOP) / cellH);
    if (ci < 0 || ci >= cols.length || h < 0 || h >= H) return null;
    return {s: cols[ci], h};
  }

  function tip(cell, e) {
    const t = $("dfa-tip");
    if (!t) return;
    if (!cell) { t.hidden = true; return; }
    const d = heat.d, v = d.terms[cell.s][cell.h];
    put(t, el("b", {}, `L${d.layer}H${cell.h}`), " · source ", posChip(cell.s), el("br"),
      `term ${fmt(v, 4)}`, el("span", {class: "muted"},
        finite(d.dfa_total) && d.dfa_total !== 0 ? ` (${fmtPct(v / d.dfa_total, 2)} of the DFA total)` : ""));
    t.hidden = false;
    const canvas = $("dfa-heatmap"), geo = heat.geometry;
    const ci = geo.cols.indexOf(cell.s);
    const x = LABEL_W + ci * geo.cellW + geo.cellW / 2, y = TOP + (cell.h + 1) * geo.cellH + 4;
    const w = canvas.clientWidth;
    t.style.setProperty("left", clamp(x - 90, 0, Math.max(0, w - 200)) + "px");
    t.style.setProperty("top", y + "px");
  }

  function heatHover(e) {
    const cell = heatCell(e);
    heat.hl = cell;
    drawHeat();
    tip(cell, e);
  }

  function heatKey(e) {
    if (!heat || !heat.geometry) return;
    const {cols, H} = heat.geometry;
    let hl = heat.hl || {s: heat.d.position, h: 0};
    let ci = cols.indexOf(hl.s);
    if (ci < 0) ci = cols.length - 1;
    const moves = {ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1]};
    if (moves[e.key]) {
      e.preventDefault();
      if (heat.hl) { ci = clamp(ci + moves[e.key][0], 0, cols.length - 1); hl = {s: cols[ci], h: clamp(hl.h + moves[e.key][1], 0, H - 1)}; }
      heat.hl = {s: cols[ci], h: hl.h};
      drawHeat(); tip(heat.hl);
    } else if (e.key === "Enter" && heat.hl) {
      e.preventDefault();
      ctx.setAttention(heat.d.layer, heat.hl.h, heat.d.position);
    } else if (e.key === "Escape") { heat.hl = null; drawHeat(); tip(null); }
  }

  /* ---------- recursive DFA ---------- */

  function rdfaSettings() {
    const s = ctx.state();
    return {top_k: s.tk, threshold: s.th};
  }

  function rdfaLabel(node) {
    const parts = [];
    if (node.kind === "feature") {
      parts.push(el("button", {type: "button", class: "goto fref", "data-layer": node.layer, "data-feature": node.feature,
                               title: `select L${node.layer}/${node.feature} at position ${node.position}`,
                               onclick: () => ctx.select({layer: node.layer, feature: node.feature, position: node.position})},
        featureName(node.layer, node.feature)), el("span", {class: "muted"}, "at"), posChip(node.position));
      if (finite(node.coef) && node.coef !== 1) {
        parts.push(el("span", {class: "muted num small", title: "coefficient κ: this node is κ × the feature's activation" +
                               (finite(node.activation) ? ` (${fmt(node.activation, 4)})` : "")}, ` κ ${fmt(node.coef, 2)}`));
      }
    } else if (node.kind === "head_source") {
      parts.push(el("b", {title: `layer ${node.layer} head ${node.head}, from source ${node.source} into destination ${node.position}`},
                    `L${node.layer}H${node.head}`), el("span", {class: "muted"}, "from"), posChip(node.source));
    } else {
      parts.push(el("span", {class: "term", title: node.name}, describeTerm(node.name).what));
      if (Number.isInteger(node.position)) parts.push(el("span", {class: "muted"}, "at"), posChip(node.position));
    }
    return parts;
  }

  /* One term: its value, a bar on the root's scale, its share of `parent` (the value of the node it is a part of);
     `why`: the reason it does not expand, for the terms listed apart (explorer-rdfa.js). */
  function rdfaRow(node, path, rootAbs, depth, parent, why = null) {
    const kind = node.kind;
    const expandable = !!(node.expandable && node.ref);
    const wrap = el("div", {class: "rdfa-node" + (kind === "remainder" ? " remainder" : why ? " leaf" : ""), role: "treeitem",
                            "data-kind": kind, "data-path": path, "aria-level": depth + 1,
                            "aria-expanded": expandable ? "false" : null});
    const share = parent ? node.value / parent : 0;
    wrap.append(el("div", {class: "rdfa-line"},
      expandable ? el("button", {type: "button", class: "expand", "aria-label": "expand", title: "expand one level",
                                 onclick: () => toggle(wrap, node, path, rootAbs, depth)}, "▸")
                 : el("span", {class: "expand-spacer"}),
      el("span", {class: "kind", title: KIND_TITLES[kind] || kind}, KIND_LABELS[kind] || kind),
      el("span", {class: "rdfa-name"}, rdfaLabel(node), why ? el("span", {class: "why"}, `not expandable: ${why}`) : null),
      el("span", {class: "rdfa-value num", title: `value ${node.value}`}, fmt(node.value, 3)),
      bar(node.value, rootAbs, true),
      el("span", {class: "rdfa-share num muted", title: `${fmtPct(share, 3)} of the node it is a part of; ` +
                  `${fmtPct(node.value / rootAbs, 3)} of the root's |value|`}, fmtPct(share, 2))));
    return wrap;
  }

  function fillChildren(wrap, resp, path, rootAbs, depth) {
    let group = wrap.querySelector(":scope > .rdfa-children");
    if (!group) { group = el("div", {class: "rdfa-children", role: "group"}); wrap.append(group); }
    const kids = resp.children || [];
    const rems = Object.entries(resp.remainders || {});
    const sumKids = kids.reduce((a, c) => a + c.value, 0), sumRems = rems.reduce((a, [, v]) => a + v, 0);
    const {open, rest} = splitChildren(resp, path), value = resp.node.value;
    put(group,
      open.map((c) => rdfaRow(c.node, c.path, rootAbs, depth + 1, value)),
      restGroup(rest.map((c) => rdfaRow(c.node, c.path, rootAbs, depth + 1, value, c.why)), rest, value),
      el("div", {class: "rdfa-closure num", title: "children + remainders = node value; residual = what is left"},
        `Σ ${kids.length} children ${fmt(sumKids, 4)} + Σ ${rems.length} remainders ${fmt(sumRems, 4)} = `,
        `${fmt(sumKids + sumRems, 4)} · node ${fmt(resp.node.value, 4)} · residual `,
        el("span", {class: Math.abs(resp.relative_residual ?? 0) < 1e-3 ? "ok" : "bad"}, fmt(resp.residual, 2))));
    group.hidden = false;
  }

  function setExpanded(path, on) {
    const s = ctx.state();
    let ex = s.ex.filter((p) => p !== path && !(on === false && p.startsWith(path + ".")));
    if (on) ex = [...ex, path];
    ctx.setState({ex}, false);
  }

  async function toggle(wrap, node, path, rootAbs, depth, {record = true, g = gen} = {}) {
    const btn = wrap.querySelector(":scope > .rdfa-line > .expand");
    const group = wrap.querySelector(":scope > .rdfa-children");
    const open = wrap.getAttribute("aria-expanded") === "true";
    if (open) {
      wrap.setAttribute("aria-expanded", "false"); btn.textContent = "▸"; btn.setAttribute("aria-label", "expand");
      if (group) group.hidden = true;
      if (record) setExpanded(path, false);
      return;
    }
    wrap.setAttribute("aria-expanded", "true"); btn.textContent = "▾"; btn.setAttribute("aria-label", "collapse");
    if (record) setExpanded(path, true);
    if (group && group.childElementCount) { group.hidden = false; return; }
    wrap.classList.add("loading");
    try {
      const resp = await cachedApi("/api/rdfa", {prompt: prompt(), node: node.ref, ...rdfaSettings()});
      if (g !== gen) return;
      if (shown.rdfa) shown.rdfa.expansions[path] = resp;
      fillChildren(wrap, resp, path, rootAbs, depth);
    } catch (e) {
      if (g === gen) {
        ctx.error(e);
        wrap.setAttribute("aria-expanded", "false"); btn.textContent = "▸";
        if (record) setExpanded(path, false);
      }
    } finally { wrap.classList.remove("loading"); }
  }

  async function loadRdfa(g = gen) {
    const s = ctx.state(), {layer, feature, position} = s.sel;
    const tree = $("rdfa-tree");
    const root = {kind: "feature", layer, position, feature, coef: 1};
    const resp = await guarded($("rdfa-card"), g, () => cachedApi("/api/rdfa", {prompt: prompt(), node: root, ...rdfaSettings()}));
    if (!resp || g !== gen) return;
    shown.rdfa = {root: resp, expansions: {}};
    const rootAbs = Math.abs(resp.node.value) || 1;
    const rootEl = rdfaRow({...resp.node, expandable: false}, "", rootAbs, 0, resp.node.value);
    rootEl.classList.add("root");
    rootEl.setAttribute("aria-expanded", "true");
    fillChildren(rootEl, resp, "", rootAbs, 0);
    put(tree, columnTitles(), rootEl);
    // re-open the branches named in the URL, parents first
    const paths = [...s.ex].sort((a, b) => a.split(".").length - b.split(".").length);
    for (const path of paths) {
      if (g !== gen) return;
      const wrap = tree.querySelector(`.rdfa-node[data-path="${CSS.escape(path)}"]`);
      if (!wrap || wrap.getAttribute("aria-expanded") !== "false") continue;
      const node = nodeAt(resp, path);
      if (node) await toggle(wrap, node, path, rootAbs, path.split(".").length, {record: false, g});
    }
  }

  function nodeAt(rootResp, path) {
    let kids = rootResp.children, node = null, sofar = "";
    for (const part of path.split(".")) {
      node = kids && kids[Number(part)];
      if (!node) return null;
      sofar = sofar ? `${sofar}.${part}` : part;
      const exp = shown.rdfa && shown.rdfa.expansions[sofar];
      kids = exp ? exp.children : null;
    }
    return node;
  }

  /* ---------- direct logit effect ---------- */

  function tokenButtons(strs, values, cls, ids = []) {
    const items = strs.map((str, i) => ({
      label: tokenChip(str), value: values[i], title: `${JSON.stringify(str)}: click to use as the first logit token of the intervention (shift: second)`,
      onclick: (e) => ctx.pickToken(str, e, ids[i])}));
    return barList(items, {cls});
  }

  async function loadEffect(g) {
    const s = ctx.state(), {layer, feature, position} = s.sel;
    const r = await guarded($("effect-card"), g, () => cachedApi("/api/effect", {prompt: prompt(), layer, feature, position, k: 10}));
    if (!r || g !== gen) return;
    shown.effect = r;
    const le = r.logit_effect || {};
    if (!r.logit_effect) {  // a model whose LM head no linear read-out explains (an encoder's MLM transform, ...)
      put($("effect"), el("div", {},
        el("p", {class: "hint", id: "effect-refused"}, r.logit_effect_refused || "no logit effect on this model"),
        el("h4", {}, "model predicts after ", posChip(position)), predictionColumns(r.predictions || []),
        predictionList(r.predictions || [])));
      return;
    }
    put($("effect"), el("div", {class: "three-col"},
      el("div", {id: "effect-top"}, el("h4", {}, "promotes ", el("span", {class: "sub"}, "logit per unit")), tokenButtons(le.top_strs || [], le.top_values || [], "promote", le.top_tokens || [])),
      el("div", {id: "effect-bottom"}, el("h4", {}, "suppresses ", el("span", {class: "sub"}, "logit per unit")), tokenButtons(le.bottom_strs || [], le.bottom_values || [], "suppress", le.bottom_tokens || [])),
      el("div", {id: "effect-predictions"}, el("h4", {}, "model predicts after ", posChip(position)),
        predictionColumns(r.predictions || []), predictionList(r.predictions || []))),
      el("p", {class: "hint"}, `direct effect of one unit of ${featureName(layer, feature)} (act ${fmt(r.act)}) on the logits: ` +
        `${le.definition}; the same numbers as the chips' "logit" and the dashboards. Click a token to use it in the logit ` +
        "difference of the intervention (shift-click: second token)"));
  }

  function predictionList(preds) {
    return el("ol", {class: "preds"}, preds.map((p) => el("li", {},
      el("button", {type: "button", class: "pick", title: `${JSON.stringify(p.str)}: click to use as the first logit token of the intervention (shift: second)` +
                    (finite(p.logit) ? `\nlogit ${fmt(p.logit, 4)}` : ""), onclick: (e) => ctx.pickToken(p.str, e, p.token)},
        tokenChip(p.str)),
      el("span", {class: "num prob"}, fmtPct(p.prob, 3)),
      finite(p.logit) ? el("span", {class: "num muted"}, fmt(p.logit, 3)) : null)));
  }

  /* ---------- compare ---------- */

  async function runCompare() {
    const s = ctx.state();
    const out = $("compare-result");
    if (!s.p || !s.q) { put(out, el("p", {class: "hint"}, "Run a prompt and give a second prompt to compare.")); return; }
    const card = $("compare-card");
    ctx.busy(card, true);
    let r;
    try { r = await cachedApi("/api/compare", {prompt: s.p, other: s.q, k: 10}); }
    catch (e) { ctx.error(e); return; } finally { ctx.busy(card, false); }
    if (ctx.state().q !== s.q || ctx.state().p !== s.p) return;
    shown.compare = r;
    const rows = [];
    let maxAbs = 0;
    for (let i = 0; i < r.n_positions; i++) {
      const diffs = (r.rows[i] || []).filter((x) => x.delta !== 0);
      const sameTok = r.a.tokens[i] === r.b.tokens[i];
      if (!diffs.length && sameTok) continue;
      for (const x of diffs) maxAbs = Math.max(maxAbs, Math.abs(x.delta));
      rows.push([i, diffs, sameTok]);
    }
    const la = r.a.tokens.length, lb = r.b.tokens.length;
    put(out, 
      el("p", {class: "hint"}, `${rows.length} of ${r.n_positions} positions differ` +
        (la !== lb ? ` (prompt A has ${la} tokens, B has ${lb}: positions past ${r.n_positions - 1} are not compared)` : "") +
        "; Δ = B − A, in each row the largest first; click a feature to select it in prompt A"),
      rows.length ? el("div", {class: "table-scroll tall"}, el("table", {class: "data compare"},
        el("thead", {}, el("tr", {}, el("th", {class: "num"}, "pos"), el("th", {}, "A"), el("th", {}, "B"), el("th", {}, "features (B − A)"))),
        el("tbody", {}, rows.map(([i, diffs, same]) => el("tr", {class: same ? "" : "tok-diff", "data-position": i},
          el("td", {class: "num"}, String(i)),
          el("td", {}, tokenChip(r.a.token_strs[i])),
          el("td", {}, tokenChip(r.b.token_strs[i])),
          el("td", {}, el("div", {class: "chips"}, diffs.map((x) => el("button", {
            type: "button", class: "dchip " + (x.delta < 0 ? "neg" : "pos"), "data-layer": x.layer, "data-feature": x.feature,
            "data-position": i, title: `L${x.layer}/${x.feature} at ${i}: A ${fmt(x.a)} → B ${fmt(x.b)}`,
            onclick: () => ctx.select({layer: x.layer, feature: x.feature, position: i})},
            featureName(x.layer, x.feature), el("span", {class: "v num"}, " " + fmtSigned(x.delta, 2)))))))))))
        : null);
  }

  function redraw() { if (heat) drawHeat(); }

  return {show, clear, runCompare, loadRdfa: () => (ctx.state().sel ? loadRdfa(gen) : null), redraw,
          shown: () => shown, resetCompare: () => { delete shown.compare; put($("compare-result")); }};
}
