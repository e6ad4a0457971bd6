/* Circuit Explorer (attnsae explore): prompt → tokens → SAE features → DFA / recursive DFA / logit effect /
   intervention / comparison, against the local JSON API of attnsae.serve (see attnsae/serve/schemas.py).

   Modules: explorer.js (state, token list, runs), explorer-url.js (the view as a URL hash), explorer-attention.js
   (attention shading), explorer-panels.js (detail cards), explorer-intervene.js (the
   intervention card), explorer-graph.js (the Graph view), explorer-cards.js (feature cards on hover, feature search,
   labels), explorer-util.js (helpers).
   Every request goes to this page's own origin (relative URLs); data enters the DOM only as text or attributes.

   Stable ids and selectors (for tests and scripts):
     #prompt, #run, #example            the prompt textarea (Ctrl/Cmd+Enter runs), its run button, an example prompt
     #order, #k, #hide-bos              ranking (act | dfa | logit), features per token and layer, hide the BOS row
     #layer-filter input[data-layer]    one checkbox per SAE layer
     #tokens                            the token list (virtualised: only visible rows exist), role="grid"
       .row[data-position]              one token row; .pos, .tok, .pred (the model's top next-token prediction)
       .lane[data-layer]                that layer's chips in the row
       .chip[data-layer][data-feature][data-position][data-family]   a feature chip; aria-pressed="true" when selected
     #token-count                       "N tokens" summary
     #attn-layer, #attn-head            attention pattern shown as shading on .tok (attn-layer "" = off)
     #attn-strip                        the destination and its top sources; .row.attn-dest is the destination row
     #feature-head, #feature-name       the selected feature; a.dash-link to its dashboard page (when served)
     #dfa-card: #dfa-heatmap (canvas, heads × sources), #dfa-tip, .by-src .bar-row, .by-head .bar-row[data-head]
     #identity                          "pre-activation = DFA total + bias: a = b + c"; #identity-pre, #identity-dfa,
                                        #identity-bias, #identity-error
     #rdfa-topk, #rdfa-threshold        RDFA controls
     #rdfa-tree .rdfa-node[data-kind][data-path]   kind: feature | head_source | component | remainder;
                                        .expand buttons (aria-expanded on the node), .rdfa-closure lines
     #effect (#effect-top, #effect-bottom, #effect-predictions)
     #add-feature-edit (feature card), #add-head-edit (by the attention menu): add an edit (explorer-intervene.js)
     #edit-list .edit-row[data-i][data-kind][data-op]: .edit-pos, .edit-op, .edit-value, .edit-from input, .edit-remove
     #intervene-at, #logit-a, #logit-b, #intervene-run, #intervene-result (#logit-diff-before, #logit-diff-after,
       #preds-before, #preds-after, #downstream); #generate-n, #generate-run, #generate-result (#gen-clean, #gen-edited
       .gen-tok, .gen-diff from the first difference on, #gen-first-diff)
     #compare-prompt, #compare-run, #compare-result (.dchip[data-layer][data-feature][data-position])
     #error (role="alert"; #error-text, #error-close), #export (downloads the view as JSON), #info
   State: the whole view lives in location.hash (URLSearchParams): p (prompt), q (other prompt), order, k, bos,
   layers, f (layer/feature@position), al/ah (attention layer/head), ad (pinned attention destination), ed, at,
   ta/tb, iv, gn, gs (the intervention: explorer-intervene.js), cmp (comparison shown), topk, th, ex (expanded RDFA
   paths), g (the graph shown), sn (supernodes: node ids, "," within a group, ";" between groups; the Graph view is
   explorer-graph.js). Keys: in the token list ↑ ↓ PgUp PgDn Home End move between rows, ← → between chips, Enter selects,
   "a" pins the attention destination; "/" focuses the prompt; Escape dismisses the error bar. */

import {$, el, put, tokenNodes, tokenText, fmt, fmtPct, api, cachedApi, clamp, ApiError} from "./explorer-util.js";
import {rowHeight as tokenRowHeight} from "./explorer-lanes.js";  // every chip whole
import {chipTitle, renderLegend} from "./explorer-legend.js";  // what colours and numbers mean
import {createPanels} from "./explorer-panels.js";
import {createGraph} from "./explorer-graph.js";
import {createIntervene} from "./explorer-intervene.js";
import {DEFAULTS, intOr, numOr, parseHash, toHash} from "./explorer-url.js";
import {createAttention} from "./explorer-attention.js";
import {createCards} from "./explorer-cards.js";

const EXAMPLE = "import os\nimport sys\n\ndef main(argv):\n    path = os.path.join(argv[0], 'x')\n    return os.path.join(path, sys.argv[1])\n";

let state = structuredClone(DEFAULTS);
let info = null;          // GET /api/info
let F = null;             // POST /api/features (the shown one)
let gen = 0;              // a newer run drops older answers
let lastHash = null;
let shownPrompt = null;   // the prompt F answers

/* ---------------- URL state (parsed and written by explorer-url.js) ---------------- */

function writeHash(push) {
  const hash = toHash(state);
  if (hash === lastHash) return;
  lastHash = hash;
  const url = location.pathname + location.search + hash;
  if (push) history.pushState(null, "", url); else history.replaceState(null, "", url);
}

function setState(patch, push = false) {
  Object.assign(state, patch);
  writeHash(push);
}

/* ---------------- errors and busy state ---------------- */

function showError(e) {
  if (e && e.name === "AbortError") return;
  const text = e instanceof ApiError ? e.message : String((e && e.message) || e);
  $("error-text").textContent = text;
  $("error").hidden = false;
}
function hideError() { $("error").hidden = true; $("error-text").textContent = ""; }

function busy(node, on) {
  if (!node) return;
  if (on) node.setAttribute("aria-busy", "true"); else node.removeAttribute("aria-busy");
}

/* ---------------- the token list (virtualised) ---------------- */

const OVERSCAN = 6;
let visible = [];         // positions shown, in order
let rowH = 50;
let cursor = {index: 0, chip: 0};  // keyboard cursor: index into `visible`, chip index in the row
let rendered = [0, 0];

const narrow = window.matchMedia("(max-width: 760px)");

function layersShown() {
  if (!F) return [];
  return F.layers.filter((l) => !state.ly || state.ly.includes(l));
}

function rowHeight() {  // every chip whole: lanes wrap, and each row is as tall as the fullest needs
  const text = (e) => [`L${e.layer}/${e.feature}`, fmt(chipValue(e), 2)];
  return tokenRowHeight($("tokens-spacer"), F.rows, layersShown(), text, narrow.matches);
}

function rebuildTokens({keepScroll = true} = {}) {
  const box = $("tokens"), spacer = $("tokens-spacer");
  if (!F) {
    visible = [];
    put(spacer);
    spacer.style.setProperty("height", "0px");
    $("token-count").textContent = "";
    $("tokens-empty").hidden = false;
    renderLegend(null, state.o);
    return;
  }
  $("tokens-empty").hidden = true;
  renderLegend(F, state.o);
  const S = F.token_strs.length;
  visible = [];
  for (let i = state.bos ? 0 : 1; i < S; i++) visible.push(i);
  rowH = rowHeight();
  box.style.setProperty("--row-h", rowH + "px");
  spacer.style.setProperty("height", visible.length * rowH + "px");
  if (!keepScroll) box.scrollTop = 0;
  cursor.index = clamp(cursor.index, 0, Math.max(0, visible.length - 1));
  $("token-count").textContent = `${S} tokens` + (state.bos ? "" : " (BOS hidden)");
  renderWindow(true);
}

function chipValue(e) {
  return state.o === "dfa" ? e.dfa : state.o === "logit" ? e.logit : e.act;
}

function isSelected(layer, feature, position) {
  const s = state.sel;
  return !!s && s.layer === layer && s.feature === feature && s.position === position;
}

function rowEl(vi) {
  const i = visible[vi];
  const entries = F.rows[i] || [];
  const preds = (F.predictions && F.predictions[i]) || [];
  const top = preds[0];
  const selectedRow = state.sel && state.sel.position === i;
  const row = el("div", {class: "row" + (selectedRow ? " selected" : "") + (vi % 2 ? " odd" : ""), role: "row",
                         "data-position": i, "aria-rowindex": vi + 1});
  row.style.setProperty("top", vi * rowH + "px");
  const tok = el("span", {class: "tok", role: "gridcell", title: `${JSON.stringify(F.token_strs[i])} (token id ${F.tokens[i]})`},
                 el("span", {class: "tk"}, tokenNodes(F.token_strs[i])));
  attention.paintCell(tok, i);
  const lanes = el("div", {class: "lanes", role: "gridcell"});
  let chipIndex = 0;
  const isCursorRow = vi === cursor.index;
  for (const layer of layersShown()) {
    const lane = el("div", {class: "lane", "data-layer": layer});
    for (const e of entries) {
      if (e.layer !== layer) continue;
      const sel = isSelected(e.layer, e.feature, i);
      const v = chipValue(e);
      lane.append(el("button", {
        type: "button", class: "chip badge" + (sel ? " selected" : ""), "data-layer": e.layer, "data-feature": e.feature,
        "data-position": i, "data-family": e.family, "data-ci": chipIndex, "aria-pressed": sel ? "true" : "false",
        tabindex: isCursorRow && chipIndex === cursor.chip ? "0" : "-1",
        title: chipTitle(e, i, top)},
        `L${e.layer}/${e.feature}`, el("span", {class: "v num"}, fmt(v, 2))));
      chipIndex++;
    }
    if (!lane.childElementCount) lane.append(el("span", {class: "none"}, `L${layer}: —`));
    lanes.append(lane);
  }
  row.append(
    el("span", {class: "pos num", role: "gridcell", title: `position ${i}: click to pin the attention destination here`}, String(i)),
    tok,
    el("span", {class: "pred", role: "gridcell",
                title: preds.length ? "model's top next-token predictions:\n" +
                  preds.map((p) => `${JSON.stringify(p.str)} ${fmtPct(p.prob, 3)}`).join("\n") : ""},
      top ? [el("span", {class: "arrow"}, "→"), el("span", {class: "tk"}, tokenNodes(top.str)),
             el("span", {class: "prob num"}, fmtPct(top.prob, 2))] : null),
    lanes);
  if (isCursorRow && chipIndex === 0) row.tabIndex = 0;
  return row;
}

function renderWindow(force = false) {
  if (!F) return;
  const box = $("tokens"), spacer = $("tokens-spacer");
  const top = box.scrollTop, h = box.clientHeight || 600;
  const first = Math.max(0, Math.floor(top / rowH) - OVERSCAN);
  const last = Math.min(visible.length, Math.ceil((top + h) / rowH) + OVERSCAN);
  if (!force && first === rendered[0] && last === rendered[1]) return;
  const hadFocus = box.contains(document.activeElement) && document.activeElement !== box;
  rendered = [first, last];
  // a scroll keeps the rows still in the window (the same nodes): a click whose mousedown landed on a chip before a
  // scroll frame re-rendered the window would otherwise lose its mouseup to a new chip, and select nothing
  const kept = force ? [] : [...spacer.children].filter((r) => rowIndex(r) >= first && rowIndex(r) < last);
  if (!kept.length) {
    const rows = [];
    for (let vi = first; vi < last; vi++) rows.push(rowEl(vi));
    put(spacer, ...rows);
  } else {
    for (const r of [...spacer.children]) if (!kept.includes(r)) r.remove();
    const lo = rowIndex(kept[0]), hi = rowIndex(kept[kept.length - 1]);
    const before = [], after = [];
    for (let vi = first; vi < lo; vi++) before.push(rowEl(vi));
    for (let vi = hi + 1; vi < last; vi++) after.push(rowEl(vi));
    kept[0].before(...before);
    spacer.append(...after);
  }
  if (hadFocus) focusCursor(false);
}

function rowIndex(row) {  // a rendered row's index into `visible`
  return Number(row.getAttribute("aria-rowindex")) - 1;
}

function cursorTarget() {
  const row = $("tokens-spacer").querySelector(`.row[aria-rowindex="${cursor.index + 1}"]`);
  if (!row) return null;
  const chips = row.querySelectorAll(".chip");
  if (!chips.length) return row;
  cursor.chip = clamp(cursor.chip, 0, chips.length - 1);
  return chips[cursor.chip];
}

function ensureVisible(vi) {
  const box = $("tokens");
  const y = vi * rowH, head = 0;
  if (y < box.scrollTop + head) box.scrollTop = y - head;
  else if (y + rowH > box.scrollTop + box.clientHeight) box.scrollTop = y + rowH - box.clientHeight;
}

function focusCursor(scroll = true) {
  if (scroll) { ensureVisible(cursor.index); renderWindow(); }
  for (const n of $("tokens-spacer").querySelectorAll("[tabindex='0']")) n.tabIndex = -1;
  const t = cursorTarget();
  if (t) { t.tabIndex = 0; t.focus({preventScroll: true}); }
}

function scrollToPosition(position) {
  const vi = visible.indexOf(position);
  if (vi < 0) return;
  const box = $("tokens");
  const y = vi * rowH;
  if (y < box.scrollTop || y + rowH > box.scrollTop + box.clientHeight) box.scrollTop = Math.max(0, y - box.clientHeight / 3);
  renderWindow(true);
}

function onTokensKey(e) {
  if (!F || !visible.length) return;
  if (e.target.closest && e.target.closest("input, select, textarea")) return;
  const page = Math.max(1, Math.floor($("tokens").clientHeight / rowH) - 1);
  let moved = true;
  switch (e.key) {
    case "ArrowDown": cursor.index = Math.min(visible.length - 1, cursor.index + 1); break;
    case "ArrowUp": cursor.index = Math.max(0, cursor.index - 1); break;
    case "PageDown": cursor.index = Math.min(visible.length - 1, cursor.index + page); break;
    case "PageUp": cursor.index = Math.max(0, cursor.index - page); break;
    case "Home": if (e.ctrlKey || e.metaKey) cursor.index = 0; else cursor.chip = 0; break;
    case "End": if (e.ctrlKey || e.metaKey) cursor.index = visible.length - 1; else cursor.chip = 1e9; break;
    case "ArrowRight": cursor.chip += 1; break;
    case "ArrowLeft": cursor.chip = Math.max(0, cursor.chip - 1); break;
    default: moved = false;
  }
  if (moved) {
    e.preventDefault();
    focusCursor();
    attention.hover(visible[cursor.index]);
    return;
  }
  if (e.key === "Enter" || e.key === " ") {
    const chip = e.target.closest && e.target.closest(".chip");
    if (chip) { e.preventDefault(); selectChip(chip); }
  } else if (e.key === "a") {
    e.preventDefault();
    attention.pin(visible[cursor.index]);
  }
}

function selectChip(chip) {
  const sel = {layer: Number(chip.dataset.layer), feature: Number(chip.dataset.feature), position: Number(chip.dataset.position)};
  const vi = visible.indexOf(sel.position);
  if (vi >= 0) { cursor.index = vi; cursor.chip = Number(chip.dataset.ci) || 0; }
  select(sel);
}

/* ---------------- attention shading ---------------- */

/* ---------------- selection and runs ---------------- */

const attention = createAttention({state: () => state, features: () => F, setState, error: showError,
                                   scrollToPosition});

const intervene = createIntervene({state: () => state, features: () => F, error: showError, busy, setState,
                                   select: (sel) => select(sel)});

const panels = createPanels({
  state: () => state, info: () => info, features: () => F, error: showError, busy,
  setState, select: (sel) => select(sel), setAttention: attention.set, pickToken: intervene.pickToken, addEdit: intervene.addFeature,
});

const graph = createGraph({
  state: () => state, setState, error: showError, busy, select: (sel) => select(sel), setAttention: attention.set,
});

createCards({state: () => state, select: (sel) => select(sel)});  // feature cards, search and labels

function select(sel, push = true) {
  if (!F || sel.position >= F.token_strs.length) return;
  const same = state.sel && isSelected(sel.layer, sel.feature, sel.position);
  if (same) return;
  setState({sel, ex: []}, push);
  if (!state.bos && sel.position === 0) { state.bos = true; $("hide-bos").checked = false; writeHash(false); rebuildTokens(); }
  for (const c of $("tokens-spacer").querySelectorAll(".chip")) {
    const on = isSelected(Number(c.dataset.layer), Number(c.dataset.feature), Number(c.dataset.position));
    c.classList.toggle("selected", on);
    c.setAttribute("aria-pressed", on ? "true" : "false");
  }
  for (const r of $("tokens-spacer").querySelectorAll(".row")) r.classList.toggle("selected", Number(r.dataset.position) === sel.position);
  scrollToPosition(sel.position);
  if (state.al !== null && state.ad === null) attention.load();
  panels.show();
}

async function refresh() {
  const g = ++gen;
  if (!state.p) {
    F = null; attention.clear();
    rebuildTokens();
    panels.clear();
    intervene.clear();
    return;
  }
  const card = $("tokens-card");
  busy(card, true);
  let r;
  try {
    r = await cachedApi("/api/features", {prompt: state.p, order: state.o, k: state.k});
  } catch (e) {
    if (g === gen) {
      showError(e);
      F = null; shownPrompt = null; attention.clear();
      rebuildTokens(); attention.paint(); panels.clear(); intervene.clear(); panels.resetCompare(); busy(card, false);
    }
    return;
  }
  if (g !== gen) return;
  busy(card, false);
  const newPrompt = !F || shownPrompt !== state.p;
  F = r;
  shownPrompt = state.p;
  attention.clear();
  if (state.sel && state.sel.position >= F.token_strs.length) setState({sel: null, ex: []});
  if (state.ad !== null && state.ad >= F.token_strs.length) setState({ad: null});
  if (state.sel && state.sel.position === 0) { state.bos = true; $("hide-bos").checked = false; }
  rebuildTokens({keepScroll: !newPrompt});
  if (newPrompt) graph.reset();
  if (state.sel) {
    const vi = visible.indexOf(state.sel.position);
    if (vi >= 0) {
      cursor.index = vi;
      const chips = (F.rows[state.sel.position] || []).filter((e) => layersShown().includes(e.layer));
      const layerOrder = layersShown();
      chips.sort((a, b) => layerOrder.indexOf(a.layer) - layerOrder.indexOf(b.layer));
      cursor.chip = Math.max(0, chips.findIndex((e) => e.layer === state.sel.layer && e.feature === state.sel.feature));
    }
    scrollToPosition(state.sel.position);
  }
  attention.load();
  const work = [panels.show(), intervene.show()];
  if (state.cmp && state.q) work.push(panels.runCompare()); else panels.resetCompare();
  if (state.g) work.push(graph.load());
  await Promise.all(work);
}

function run() {
  const p = $("prompt").value;
  if (!p) { showError(new Error("Type a prompt first.")); $("prompt").focus(); return; }
  hideError();
  const changed = p !== state.p;
  setState(changed ? {p, sel: null, ex: [], ad: null, ed: [], at: null, iv: false, gs: false} : {p}, changed);
  if (changed) cursor = {index: 0, chip: 0};
  refresh();
}

/* ---------------- controls ---------------- */

function readControlsIntoDom() {
  $("prompt").value = state.p;
  $("compare-prompt").value = state.q;
  $("order").value = state.o;
  $("k").value = String(state.k);
  $("hide-bos").checked = !state.bos;
  for (const box of $("layer-filter").querySelectorAll("input[data-layer]")) {
    box.checked = !state.ly || state.ly.includes(Number(box.dataset.layer));
  }
  $("attn-layer").value = state.al === null ? "" : String(state.al);
  $("attn-head").value = String(state.ah);
  $("attn-head").disabled = state.al === null;
  intervene.readControls();
  $("rdfa-topk").value = String(state.tk);
  $("rdfa-threshold").value = String(state.th);
}

function buildFromInfo() {
  const saes = [...info.saes].sort((a, b) => a.layer - b.layer);
  $("info").textContent = `${info.model} · ${info.n_layers} layers × ${info.n_heads} heads · n_ctx ${info.n_ctx} · SAEs: ` +
    saes.map((s) => `L${s.layer} (${s.architecture}, ${s.d_sae})`).join(", ");
  $("info").title = saes.map((s) => `${s.name}: ${s.hook_name}, d_sae ${s.d_sae}, ${s.architecture}`).join("\n") +
    (info.version ? `\nattnsae ${info.version}` : "");
  const filter = $("layer-filter");
  put(filter, el("span", {class: "muted"}, "layers"), saes.map((s) => el("label", {class: "check"},
    el("input", {type: "checkbox", "data-layer": s.layer, checked: true}), `L${s.layer}`)));
  const al = $("attn-layer");
  put(al, el("option", {value: ""}, "attention off"),
    [...Array(info.n_layers).keys()].map((l) => el("option", {value: l}, `attn L${l}`)));
  put($("attn-head"), [...Array(info.n_heads).keys()].map((h) => el("option", {value: h}, `H${h}`)));
  const link = $("dashboard-link");
  link.hidden = !info.dashboard;
  $("prompt").maxLength = info.max_prompt_chars || 100000;
  $("prompt").placeholder = `Some text for ${info.model} (up to ${info.n_ctx - 1} tokens after BOS)`;
}

function bind() {
  $("prompt-form").addEventListener("submit", (e) => { e.preventDefault(); run(); });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); }
  });
  $("example").addEventListener("click", () => { $("prompt").value = EXAMPLE; run(); });
  $("order").addEventListener("change", (e) => { setState({o: e.target.value}); refresh(); });
  $("k").addEventListener("change", (e) => {
    const k = intOr(e.target.value, 8, 1, 50);
    e.target.value = String(k);
    setState({k}); refresh();
  });
  $("hide-bos").addEventListener("change", (e) => {
    setState({bos: !e.target.checked});
    const pos = visible[cursor.index];
    rebuildTokens();
    const vi = visible.indexOf(pos);
    cursor.index = vi >= 0 ? vi : 0;
    renderWindow(true);
  });
  $("layer-filter").addEventListener("change", () => {
    const all = [...$("layer-filter").querySelectorAll("input[data-layer]")];
    const on = all.filter((b) => b.checked).map((b) => Number(b.dataset.layer));
    setState({ly: on.length === all.length ? null : on});
    rebuildTokens();
  });
  $("attn-layer").addEventListener("change", (e) => {
    const v = e.target.value;
    setState({al: v === "" ? null : Number(v)});
    $("attn-head").disabled = v === "";
    attention.clear();
    attention.load();
  });
  $("attn-head").addEventListener("change", (e) => { setState({ah: Number(e.target.value)}); attention.clear(); attention.load(); });

  const box = $("tokens");
  let pending = false;
  box.addEventListener("scroll", () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; renderWindow(); });
  });
  box.addEventListener("click", (e) => {
    const chip = e.target.closest(".chip");
    if (chip) { selectChip(chip); return; }
    const pos = e.target.closest(".pos");
    if (pos) attention.pin(Number(pos.closest(".row").dataset.position));
  });
  box.addEventListener("mouseover", (e) => {
    const row = e.target.closest(".row");
    if (row) attention.hover(Number(row.dataset.position));
  });
  box.addEventListener("focusin", (e) => {
    const row = e.target.closest(".row");
    if (!row) return;
    const vi = rowIndex(row);
    cursor.index = vi;
    const chip = e.target.closest(".chip");
    if (chip) cursor.chip = Number(chip.dataset.ci) || 0;
    attention.hover(Number(row.dataset.position));
  });
  box.addEventListener("keydown", onTokensKey);
  let pointer = false;  // focus from a click moves the cursor to the clicked row, without scrolling
  box.addEventListener("mousedown", (e) => {
    pointer = true;
    const row = e.target.closest(".row");
    if (row) cursor.index = rowIndex(row);
    setTimeout(() => { pointer = false; }, 0);
  });
  box.addEventListener("focus", () => { if (F && visible.length) focusCursor(!pointer); });

  $("rdfa-topk").addEventListener("change", (e) => {
    const tk = intOr(e.target.value, 5, 1, 50);
    e.target.value = String(tk);
    setState({tk, ex: []}); panels.loadRdfa();
  });
  $("rdfa-threshold").addEventListener("change", (e) => {
    const th = numOr(e.target.value, 0, 0, 1);
    e.target.value = String(th);
    setState({th, ex: []}); panels.loadRdfa();
  });
  $("rdfa-collapse").addEventListener("click", () => { setState({ex: []}); panels.loadRdfa(); });

  intervene.bind();

  $("compare-form").addEventListener("submit", (e) => { e.preventDefault(); runCompare(); });
  $("compare-prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); runCompare(); }
  });

  $("error-close").addEventListener("click", hideError);
  $("export").addEventListener("click", exportJson);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !$("error").hidden) hideError();
    if (e.key === "/" && !/^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName)) {
      e.preventDefault(); $("prompt").focus();
    }
  });
  window.addEventListener("resize", () => { if (F) { const r = rowHeight(); if (r !== rowH) rebuildTokens(); else renderWindow(true); } panels.redraw(); graph.draw(); });
  window.addEventListener("hashchange", onUrl);
  window.addEventListener("popstate", onUrl);
}

function runCompare() {
  const q = $("compare-prompt").value;
  if (!q) { showError(new Error("Type a second prompt to compare with.")); return; }
  if (!state.p) { showError(new Error("Run the first prompt first.")); return; }
  if ($("prompt").value !== state.p) { showError(new Error("The prompt box was edited: press Run first, then compare.")); return; }
  setState({q, cmp: true});
  intervene.renderEdits();  // "patch from B" is offered once there is a B
  panels.runCompare();
}

function onUrl() {
  if (location.hash === lastHash || (location.hash === "" && lastHash === "")) return;
  lastHash = location.hash;
  const next = parseHash(location.hash);
  const rerun = next.p !== state.p || next.o !== state.o || next.k !== state.k;
  state = next;
  hideError();
  if (rerun || !F) { refresh(); return; }
  readControlsIntoDom();
  rebuildTokens();
  if (state.sel) scrollToPosition(state.sel.position);
  attention.clear();
  attention.load();
  panels.show();
  intervene.show();
  if (state.cmp && state.q) panels.runCompare(); else panels.resetCompare();
  graph.draw();
}

/* ---------------- export ---------------- */

function exportJson() {
  const data = {
    exported: new Date().toISOString(), url: location.href, state: structuredClone(state), info,
    responses: {features: F, ...panels.shown(), ...intervene.shown(), ...graph.shown(), attention: attention.shown()},
  };
  const blob = new Blob([JSON.stringify(data, null, 1)], {type: "application/json"});
  const url = URL.createObjectURL(blob);
  const s = state.sel;
  const a = el("a", {href: url, download: s ? `circuit-L${s.layer}-${s.feature}-at${s.position}.json` : "circuit-explorer.json"});
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/* ---------------- start ---------------- */

async function init() {
  bind();
  state = parseHash(location.hash);
  lastHash = location.hash;
  readControlsIntoDom();
  rebuildTokens();
  panels.clear();
  try {
    info = await api("/api/info");
  } catch (e) {
    showError(e);
    $("info").textContent = "not connected";
    return;
  }
  buildFromInfo();
  readControlsIntoDom();
  attention.paint();
  await refresh();
}

init();
