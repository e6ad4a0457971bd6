/* Circuit Explorer: what a feature means and where it appears (attnsae.serve.cards on the server).

   Feature cards: hovering (or keyboard-focusing) anything that names a feature — a chip in the token list, the
   selected feature's name, a feature in the RDFA tree or the downstream table, a chip of the comparison, a feature
   node of the graph, a search result — opens a card after a short delay: its top activating contexts (the token it
   fired on marked), its direct logit effect (top and bottom tokens), family, density, where these come from, and
   its label. POST /api/card is asked once per feature (cached). A card is a tooltip (it never takes the pointer)
   and goes when the pointer or the keyboard focus leaves; "l" on a focused feature opens it to edit the label
   (then Escape closes it, and focus returns).
   Labels: GET /api/labels at start, POST /api/label on save, from the card ("l") or the selected feature's header;
   every element that names a feature shows its label (a MutationObserver labels elements as the page makes them),
   always as text.
   Search: the box in the top bar (POST /api/search) finds features by name, label or a token among their top logits
   or top-activating tokens; each result says where it fires on the current prompt, and a click selects it there.

   Stable ids and selectors:
     #fcard[data-layer][data-feature]   the card (role tooltip; dialog while editing); .fcard-name, .fcard-family (.badge[data-family]),
                                        .fcard-density, .fcard-source, .fcard-context (mark.fcard-peak: the token
                                        it fired on), .fcard-logits-top li, .fcard-logits-bottom li, .fcard-top-tokens,
                                        #fcard-label (input), #fcard-label-save, #fcard-label-status; .editing
                                        while its label is edited
     .flabel                            a label shown on an element naming a feature (after #feature-name)
     #feature-label-form, #feature-label, #feature-label-status   the label field under the selected feature's name
     #feature-search, #feature-search-input, #feature-search-results (.search-hit[data-layer][data-feature]),
     #feature-search-message */

import {$, el, put, tokenNodes, fmt, fmtPct, fmtSigned, api, cachedApi} from "./explorer-util.js";

const TARGETS = ".chip[data-feature], .dchip[data-feature], .fref[data-feature], .search-hit[data-feature], " +
                "circle.gnode.feature";
const HOVER_MS = 350, FOCUS_MS = 250, HIDE_MS = 120;

/* ctx: {state(), select(sel)} */
export function createCards(ctx) {
  const labels = new Map();  // "layer/feature" -> label
  let maxChars = 120, labelsPath = "";
  let anchor = null, showTimer = 0, hideTimer = 0;
  const card = el("div", {id: "fcard", class: "fcard card", role: "tooltip", "aria-label": "feature card", hidden: true});
  document.body.append(card);

  const key = (f) => `${f.layer}/${f.feature}`;
  const nameOf = (f) => `L${f.layer}/${f.feature}`;

  /* The feature an element names: {layer, feature}, or null. */
  function featureOf(node) {
    if (!node || !node.dataset) return null;
    if (node.dataset.layer !== undefined && node.dataset.feature !== undefined) {
      return {layer: Number(node.dataset.layer), feature: Number(node.dataset.feature)};
    }
    const m = /^L(\d+)\/(\d+)@/.exec(node.dataset.id || "");  // a graph node
    return m ? {layer: Number(m[1]), feature: Number(m[2])} : null;
  }

  /* ---------- labels on the page ---------- */

  function decorate(node) {
    const f = featureOf(node);
    if (!f || card.contains(node)) return;
    const text = labels.get(key(f));
    if (node instanceof SVGElement) {  // a graph node: its tooltip
      const title = node.querySelector("title");
      if (title) title.textContent = title.textContent.replace(/ — label “.*”$/s, "") + (text ? ` — label “${text}”` : "");
      return;
    }
    const after = node.tagName === "H2";  // the selected feature's name: the label goes beside it
    let span = after ? (node.nextElementSibling && node.nextElementSibling.classList.contains("flabel") ? node.nextElementSibling : null)
                     : node.querySelector(":scope > .flabel");
    if (!text) { if (span) span.remove(); return; }
    if (!span) {
      span = el("span", {class: "flabel"});
      if (after) node.after(span); else node.insertBefore(span, node.querySelector(":scope > .v, :scope > .why"));
    }
    span.textContent = text;
    span.title = `label: ${text}`;
  }

  function decorateAll(root = document.body) {
    if (root.matches && root.matches(TARGETS)) decorate(root);
    for (const n of root.querySelectorAll(TARGETS)) decorate(n);
  }

  new MutationObserver((records) => {
    for (const r of records) {
      for (const n of r.addedNodes) {
        if (n.nodeType !== 1 || n.classList.contains("flabel")) continue;
        if (labels.size) decorateAll(n);
        const head = n.id === "feature-name" ? n : n.querySelector && n.querySelector("#feature-name");
        if (head) headEditor(head);
      }
    }
  }).observe(document.body, {childList: true, subtree: true});

  /* The label field under the selected feature's name (#feature-head is remade on each selection). */
  function headEditor(head) {
    const f = featureOf(head);
    if (!f || $("feature-label-form")) return;
    const input = el("input", {type: "text", id: "feature-label", maxlength: maxChars, value: labels.get(key(f)) || "",
                               spellcheck: "false", placeholder: `label ${nameOf(f)}`, "aria-label": `label of ${nameOf(f)}`});
    const status = el("span", {id: "feature-label-status", class: "hint", "aria-live": "polite"});
    const form = el("form", {id: "feature-label-form", class: "label-form", autocomplete: "off"}, input,
                    el("button", {type: "submit"}, "save label"), status);
    form.addEventListener("submit", (e) => { e.preventDefault(); saveLabel(f, input.value, status); });
    (head.parentElement || head).after(form);
  }

  async function loadLabels() {
    try {
      const r = await api("/api/labels");
      maxChars = r.max_chars; labelsPath = r.path;
      for (const x of r.labels) labels.set(key(x), x.label);
      decorateAll();
      const sel = featureOf($("feature-name")), field = $("feature-label");
      if (sel && field && !field.value) field.value = labels.get(key(sel)) || "";
    } catch (e) { /* the page works without labels; the card says why when it is opened */ }
  }

  async function saveLabel(f, text, status) {
    status.textContent = "saving…";
    try {
      const r = await api("/api/label", {layer: f.layer, feature: f.feature, label: text});
      if (r.label) labels.set(key(f), r.label); else labels.delete(key(f));
      labelsPath = r.path;
      decorateAll();
      const where = r.path ? r.path : "memory only: this server keeps no labels file";
      status.textContent = r.label ? `saved (${where})` : `label removed (${where})`;
      const shown = card.querySelector(".fcard-head .flabel-text");
      if (shown && card.dataset.layer === String(f.layer) && card.dataset.feature === String(f.feature)) shown.textContent = r.label || "";
      const head = $("feature-label");
      if (head && head.closest("form") !== status.closest("form")) {
        const sel = featureOf($("feature-name"));
        if (sel && key(sel) === key(f)) head.value = r.label || "";
      }
    } catch (e) { status.textContent = e.message; status.classList.add("bad"); }
  }

  /* ---------- the card ---------- */

  function place(target) {
    const r = target.getBoundingClientRect(), w = Math.min(440, window.innerWidth - 16);
    card.style.setProperty("width", w + "px");
    const h = card.offsetHeight || 300;
    const left = Math.max(8, Math.min(r.left, window.innerWidth - w - 8));
    const below = r.bottom + 6 + h <= window.innerHeight || r.top < h + 6;
    const top = below ? Math.min(r.bottom + 6, window.innerHeight - h - 8) : r.top - h - 6;
    card.style.setProperty("left", left + "px");
    card.style.setProperty("top", Math.max(8, top) + "px");
  }

  function hide() {
    clearTimeout(showTimer); clearTimeout(hideTimer);
    card.hidden = true;
    card.classList.remove("editing");
    anchor = null;
  }

  function scheduleHide() {
    clearTimeout(hideTimer);
    hideTimer = setTimeout(() => { if (!card.classList.contains("editing")) hide(); }, HIDE_MS);
  }

  async function open(target, edit = false) {
    const f = featureOf(target);
    if (!f) return;
    clearTimeout(hideTimer);
    anchor = target;
    card.classList.toggle("editing", edit);
    card.setAttribute("role", edit ? "dialog" : "tooltip");
    card.dataset.layer = f.layer; card.dataset.feature = f.feature;
    card.hidden = false;
    put(card, el("div", {class: "fcard-head"}, el("b", {class: "fcard-name"}, nameOf(f))), el("p", {class: "muted"}, "loading…"));
    place(target);
    let d;
    try { d = await cachedApi("/api/card", {layer: f.layer, feature: f.feature}); } catch (e) {
      if (anchor === target) put(card, el("div", {class: "fcard-head"}, el("b", {class: "fcard-name"}, nameOf(f))),
                                 el("p", {class: "bad"}, e.message));
      return;
    }
    if (anchor !== target || card.hidden) return;
    render(f, d);
    place(target);
    if (edit) $("fcard-label").focus();
  }

  function tokenList(items, cls, label) {
    return el("ol", {class: "fcard-logits " + cls, "aria-label": label}, items.map((t) => el("li", {},
      el("span", {class: "tk", title: JSON.stringify(t.str) + ` (token id ${t.token})`}, tokenNodes(t.str)),
      el("span", {class: "num " + (t.value < 0 ? "neg" : "pos")}, fmtSigned(t.value, 3)))));
  }

  function context(c) {
    const parts = [];
    c.segments.forEach((s, n) => {
      if (n) parts.push(el("span", {class: "muted"}, " … "));
      const top = Math.max(1e-9, ...s.acts.map(Math.abs));
      s.strs.forEach((str, i) => {
        const at = s.start + i, peak = at === c.dest;
        const node = el(peak ? "mark" : "span", {class: peak ? "fcard-peak" : "ft",
          title: `position ${at} in its context: activation ${fmt(s.acts[i])}` + (peak ? " (this example's token)" : "")},
          tokenNodes(str));
        if (!peak && s.acts[i] > 0) node.style.setProperty("--a", (s.acts[i] / top).toFixed(2));
        parts.push(node);
      });
    });
    return el("div", {class: "fcard-context"}, el("span", {class: "fcard-act num", title: "the feature's activation on the marked token"},
      `act ${fmt(c.act)}`), el("span", {class: "fcard-text"}, parts));
  }

  function render(f, d) {
    const label = labels.get(key(f)) ?? d.label ?? "";
    const density = d.density === null || d.density === undefined ? "n/a"
      : `fires on ${fmtPct(d.density, 3)} of tokens (${(d.n_fired ?? 0).toLocaleString("en-US")} of ${d.source.n_tokens.toLocaleString("en-US")})`;
    const input = el("input", {type: "text", id: "fcard-label", maxlength: maxChars, value: label, spellcheck: "false",
                               placeholder: "label this feature", "aria-label": `label of ${nameOf(f)}`});
    const status = el("span", {id: "fcard-label-status", class: "hint", "aria-live": "polite"},
                      `Enter saves to ${labelsPath || "memory (no labels file)"} · empty removes`);
    const form = el("form", {class: "label-form", autocomplete: "off"}, input,
                    el("button", {type: "submit", id: "fcard-label-save"}, "save label"));
    form.addEventListener("submit", (e) => { e.preventDefault(); saveLabel(f, input.value, status); });
    const edit = card.classList.contains("editing");
    const le = d.logits;
    put(card,
      el("div", {class: "fcard-head"},
        el("b", {class: "fcard-name"}, nameOf(f)),
        d.family ? el("span", {class: "badge family fcard-family", "data-family": d.family,
                               title: `family, from ${d.family_source}`}, d.family) : null,
        el("span", {class: "flabel-text"}, label)),
      el("p", {class: "fcard-density num"}, density),
      el("p", {class: "fcard-source hint"}, `from ${d.source.text}`),
      el("h4", {}, "top activating contexts ", el("span", {class: "muted"}, "(marked: the token it fired on)")),
      d.contexts.length ? el("div", {class: "fcard-contexts"}, d.contexts.map(context))
                        : el("p", {class: "hint"}, `it never fired on these ${d.source.n_tokens.toLocaleString("en-US")} tokens`),
      d.top_tokens.length ? el("p", {class: "fcard-top-tokens hint"}, "most often on ", d.top_tokens.map((t, n) =>
        [n ? ", " : "", el("span", {class: "tk"}, tokenNodes(t.str)), ` ×${t.count}`])) : null,
      el("h4", {title: le ? le.definition : ""}, "direct logit effect ",
         el("span", {class: "muted"}, "(per unit of activation, as in the Effect card; a chip's logit is this × act / σ)")),
      le ? el("div", {class: "fcard-logit-cols"},
             el("div", {}, el("div", {class: "hint"}, "raises"), tokenList(le.top, "fcard-logits-top", "tokens it raises most")),
             el("div", {}, el("div", {class: "hint"}, "lowers"), tokenList(le.bottom, "fcard-logits-bottom", "tokens it lowers most")))
         : el("p", {class: "hint"}, d.logits_refused || "no logit effect"),
      edit ? [form, status] : el("p", {class: "hint"}, "Press l on a focused feature (or use the field under the " +
                                  "selected feature's name) to label it."));
  }

  /* ---------- hover and focus ---------- */

  const editing = () => card.classList.contains("editing") && !card.hidden;
  let pointer = "";  // where the pointer last moved: an element moving under a still pointer opens no card
  document.addEventListener("mousemove", (e) => { pointer = `${e.clientX},${e.clientY}`; }, {capture: true});
  document.addEventListener("mouseover", (e) => {
    const t = e.target.closest && e.target.closest(TARGETS);
    if (!t || card.contains(t) || editing() || `${e.clientX},${e.clientY}` === pointer) return;
    if (t === anchor && !card.hidden) { clearTimeout(hideTimer); return; }
    clearTimeout(showTimer);
    showTimer = setTimeout(() => open(t), HOVER_MS);
  });
  document.addEventListener("mouseout", (e) => {
    const t = e.target.closest && e.target.closest(TARGETS);
    if (!t || (e.relatedTarget && t.contains(e.relatedTarget))) return;
    clearTimeout(showTimer);
    if (!card.hidden && !(t === anchor && t.matches(":focus-visible"))) scheduleHide();
  });
  document.addEventListener("focusin", (e) => {
    if (card.contains(e.target)) { clearTimeout(hideTimer); return; }
    if (editing()) hide();  // focus left the label field
    const t = e.target.closest && e.target.closest(TARGETS);
    clearTimeout(showTimer);
    if (t && t.matches(":focus-visible")) showTimer = setTimeout(() => { if (document.activeElement === t) open(t); }, FOCUS_MS);
    else if (!card.hidden) scheduleHide();
  });
  document.addEventListener("mousedown", (e) => { if (editing() && !card.contains(e.target)) hide(); });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !card.hidden) {
      const back = card.contains(document.activeElement) ? anchor : null;
      hide();
      if (back && back.focus) back.focus();
    } else if (e.key === "l" && !e.ctrlKey && !e.metaKey && !e.altKey) {
      const t = document.activeElement && document.activeElement.closest && document.activeElement.closest(TARGETS);
      if (t && !card.contains(t)) { e.preventDefault(); open(t, true); }
    }
  });
  window.addEventListener("resize", () => { if (anchor && !card.hidden) place(anchor); });

  /* ---------- search ---------- */

  const results = $("feature-search-results"), message = $("feature-search-message");

  function fires(r) {
    if (!ctx.state().p) return el("span", {class: "muted"}, "run a prompt to see where it fires");
    if (!r.fires) return el("span", {class: "muted"}, "does not fire on this prompt");
    return el("span", {class: "num"}, `fires at ${r.fires.n} position${r.fires.n === 1 ? "" : "s"} ` +
      `(max ${fmt(r.fires.max_act)} at ${r.fires.max_position})`);
  }

  function pick(r) {
    if (r.fires) {
      ctx.select({layer: r.layer, feature: r.feature, position: r.fires.max_position});
      message.textContent = `${nameOf(r)}: selected where it fires most (position ${r.fires.max_position})`;
      results.hidden = true;
    } else {
      message.textContent = ctx.state().p ? `${nameOf(r)} does not fire on this prompt` : "run a prompt first";
    }
  }

  async function search(query) {
    if (!query.trim()) { results.hidden = true; message.textContent = ""; return; }
    const p = ctx.state().p;
    message.textContent = "searching…";
    let r;
    try { r = await api("/api/search", {query, k: 20, ...(p ? {prompt: p} : {})}); } catch (e) {
      message.textContent = e.message; results.hidden = true; return;
    }
    if ($("feature-search-input").value !== query) return;
    const toks = r.tokens.length ? ` (tokens ${r.tokens.map((t) => JSON.stringify(t.str)).join(", ")})` : "";
    message.textContent = r.n_found ? `${r.n_found} feature${r.n_found === 1 ? "" : "s"}${toks}` +
      (r.n_found > r.results.length ? `, the first ${r.results.length} shown` : "") : `no feature found for ${JSON.stringify(query)}${toks}`;
    put(results, r.results.map((x) => el("li", {}, el("button", {type: "button", class: "search-hit", "data-layer": x.layer,
        "data-feature": x.feature, title: x.why.join("\n"), onclick: () => pick(x)},
      el("b", {}, nameOf(x)),
      x.family ? el("span", {class: "badge family", "data-family": x.family}, x.family) : null,
      el("span", {class: "why muted"}, x.why[0] + (x.why.length > 1 ? ` (+${x.why.length - 1})` : "")),
      fires(x)))));
    results.hidden = !r.results.length;
  }

  const form = $("feature-search");
  if (form) {
    form.addEventListener("submit", (e) => { e.preventDefault(); search($("feature-search-input").value); });
    $("feature-search-input").addEventListener("keydown", (e) => {
      if (e.key === "Escape") { results.hidden = true; message.textContent = ""; }
    });
  }
  loadLabels();
  return {open, hide, labels: () => labels};
}
