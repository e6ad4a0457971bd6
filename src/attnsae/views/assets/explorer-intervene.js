/* Circuit Explorer: the intervention card. An edit list built from the feature card (+ edit) and the attention menu
   (+ edit head): each edit a feature or a head, at a position or all, zeroed, scaled, set or patched from the
   compared prompt B; the edited run against the clean one (POST /api/intervene) and greedy generation with the edits
   beside the clean one (POST /api/generate). The maths is attnsae.evals.interventions; ids are listed in explorer.js.

   URL (hash keys): ed (the edits, below), at (the position logits are read after; none: the last token), ta/tb (the
   logit tokens, "#id" for a picked token), iv (the intervention shown), gn (tokens to generate), gs (generation
   shown). An edit in the URL: f0.12@3z = feature L0/12 at position 3, zero; h1.3@*s0.5 = head L1.H3 at every
   position, scale ×0.5; v = set to a value; p = patch from B (p7: from B's position 7). */

import {$, el, put, tokenChip, fmt, fmtSigned, fmtPct, finite, bar, cachedApi, clamp} from "./explorer-util.js";

export const MAX_EDITS = 32;  // the server's bound (serve/schemas.py)
const OPS = [["zero", "zero"], ["scale", "scale ×"], ["set", "set to"], ["patch", "patch from B"]];
const CODE = {zero: "z", scale: "s", set: "v", patch: "p"};
const OP_OF = {z: "zero", s: "scale", v: "set", p: "patch"};
const DEFAULT_VALUE = {scale: 2, set: 0};
const EDIT_RE = /^([fh])(\d+)\.(\d+)@(\*|\d+)([zsvp])(.*)$/;

/* ---------- URL ---------- */

export function parseEdits(text) {
  const out = [];
  for (const part of (text || "").split(",")) {
    const m = EDIT_RE.exec(part);
    if (!m || out.length >= MAX_EDITS) continue;
    const op = OP_OF[m[5]], arg = m[6] === "" ? null : Number(m[6]);
    if (arg !== null && !Number.isFinite(arg)) continue;
    if ((op === "scale" || op === "set") && arg === null) continue;
    out.push({kind: m[1], layer: Number(m[2]), index: Number(m[3]), position: m[4] === "*" ? null : Number(m[4]), op,
              value: op === "scale" || op === "set" ? arg : null,
              from: op === "patch" && arg !== null && m[4] !== "*" ? arg : null});
  }
  return out;
}

export function editsText(edits) {
  return edits.map((e) => `${e.kind}${e.layer}.${e.index}@${e.position === null ? "*" : e.position}${CODE[e.op]}` +
    (e.op === "scale" || e.op === "set" ? String(e.value) : e.op === "patch" && e.from !== null ? String(e.from) : ""))
    .join(",");
}

/* The intervention's part of the view state from the URL's parameters h (URLSearchParams). */
export function parseIv(h) {
  const n = Number.parseInt(h.get("gn"), 10);
  return {ed: parseEdits(h.get("ed")), at: /^\d+$/.test(h.get("at") || "") ? Number(h.get("at")) : null,
          ta: h.get("ta") || "", tb: h.get("tb") || "", iv: h.get("iv") === "1",
          gn: Number.isFinite(n) ? clamp(n, 1, 32) : 10, gs: h.get("gs") === "1"};
}

export function writeIv(s, h) {
  if (s.ed.length) h.set("ed", editsText(s.ed));
  if (s.at !== null) h.set("at", String(s.at));
  if (s.ta) h.set("ta", s.ta);
  if (s.tb) h.set("tb", s.tb);
  if (s.iv) h.set("iv", "1");
  if (s.gn !== 10) h.set("gn", String(s.gn));
  if (s.gs) h.set("gs", "1");
}

export const editName = (e) => (e.kind === "h" ? `L${e.layer}.H${e.index}` : `L${e.layer}/${e.index}`);

/* An edit as the server answers it, in words: "L1.H3 at every position: scale ×0.5". */
function describe(e) {
  const name = e.kind === "head" ? `L${e.layer}.H${e.head}` : `L${e.layer}/${e.feature}`;
  const where = e.position === null ? "every position" : `position ${e.position}`;
  const moved = e.from_position !== null && e.from_position !== e.position;
  const what = e.op === "scale" ? `scale ×${fmt(e.value)}` : e.op === "set" ? `set to ${fmt(e.value)}`
    : e.op === "patch" ? "patch from B" + (moved ? `'s position ${e.from_position}` : "") : "zero";
  return `${name} at ${where}: ${what}`;
}

function apiEdit(e) {
  const out = {layer: e.layer, [e.kind === "h" ? "head" : "feature"]: e.index, position: e.position, op: e.op};
  if (e.op === "scale" || e.op === "set") out.value = e.value;
  if (e.op === "patch" && e.from !== null) out.from_position = e.from;
  return out;
}

/* ctx: {state(), features(), setState(patch, push), error(e), busy(node, on), select(sel)} */
export function createIntervene(ctx) {
  let gen = 0;          // a newer prompt drops older answers
  const shown = {};     // the answers on screen (for export)

  const tokenAt = (i) => { const F = ctx.features(); return F ? F.token_strs[i] : undefined; };
  const posChip = (i) => el("span", {class: "at"}, el("span", {class: "at-pos num"}, String(i)),
                            tokenChip(tokenAt(i), `position ${i}`));
  const nTokens = () => { const F = ctx.features(); return F ? F.tokens.length : 0; };

  function setEdits(ed, rerender = true) {
    ctx.setState({ed}, false);
    for (const id of ["intervene-result", "generate-result"]) $(id).classList.toggle("stale", $(id).childElementCount > 0);
    if (rerender) renderEdits();
  }

  function add(edit) {
    const s = ctx.state();
    if (s.ed.length >= MAX_EDITS) { ctx.error(new Error(`At most ${MAX_EDITS} edits: remove one first.`)); return; }
    if (s.ed.some((e) => e.kind === edit.kind && e.layer === edit.layer && e.index === edit.index &&
                         (e.position === null || edit.position === null || e.position === edit.position))) {
      ctx.error(new Error(`${editName(edit)} is already edited there: change that edit instead.`));
      return;
    }
    setEdits([...s.ed, edit]);
  }

  const addFeature = (sel) => add({kind: "f", layer: sel.layer, index: sel.feature, position: sel.position, op: "zero",
                                   value: null, from: null});
  function addHead() {
    const s = ctx.state();
    if (s.al === null) return;
    add({kind: "h", layer: s.al, index: s.ah, position: null, op: "zero", value: null, from: null});
  }

  /* ---------- the edit list ---------- */

  function positionNote(e) {
    return e.position === null ? el("span", {class: "muted"}, "every position") : posChip(e.position);
  }

  function editRow(e, i) {
    const q = ctx.state().q;
    const needsValue = e.op === "scale" || e.op === "set";
    return el("li", {class: "edit-row", "data-i": i, "data-kind": e.kind === "h" ? "head" : "feature", "data-op": e.op},
      el("b", {class: "edit-target", title: e.kind === "h" ? `head ${e.index} of layer ${e.layer}: its slice of hook_z`
                                                          : `feature ${e.index} of the layer-${e.layer} SAE`}, editName(e)),
      el("label", {title: "a token position (0 is BOS); empty: every position"}, "at position",
        el("input", {type: "text", class: "edit-pos", inputmode: "numeric", size: 4, placeholder: "all",
                     value: e.position === null ? "" : String(e.position)})),
      el("span", {class: "edit-where"}, positionNote(e)),
      el("select", {class: "edit-op", "aria-label": `operation on ${editName(e)}`},
        OPS.map(([v, label]) => el("option", {value: v, selected: v === e.op ? true : null,
                                             disabled: v === "patch" && !q && e.op !== "patch" ? true : null,
                                             title: v === "patch" ? "the same target's value on the compared prompt B" +
                                               (q ? "" : " (compare a second prompt first)") : null}, label))),
      el("input", {type: "number", class: "edit-value", step: "any", hidden: needsValue ? null : true,
                   "aria-label": "value", value: needsValue ? String(e.value) : ""}),
      el("label", {class: "edit-from", hidden: e.op === "patch" && e.position !== null ? null : true,
                   title: "the position of prompt B read (empty: the same position; needed when the prompts differ in length)"},
        "from B's position", el("input", {type: "text", inputmode: "numeric", size: 4, placeholder: "same",
                                          value: e.from === null ? "" : String(e.from)})),
      el("button", {type: "button", class: "edit-remove link", "aria-label": `remove the edit of ${editName(e)}`,
                    title: "remove this edit"}, "×"));
  }

  function renderEdits() {
    const s = ctx.state(), F = ctx.features();
    put($("edit-list"), s.ed.map(editRow));
    $("edits-empty").hidden = s.ed.length > 0;
    $("edit-count").textContent = s.ed.length ? `${s.ed.length} of at most ${MAX_EDITS} edits, applied together` : "";
    $("intervene-run").disabled = !F;
    $("generate-run").disabled = !F;
    $("add-head-edit").disabled = !F || s.al === null;
  }

  function readPosition(text, what, n) {
    const t = text.trim();
    if (t === "" || t === "all" || t === "same") return null;
    if (!/^\d+$/.test(t) || (n && Number(t) >= n)) throw new Error(`${what}: give a position 0..${n - 1}, or leave it empty`);
    return Number(t);
  }

  function onEditChange(ev) {
    const row = ev.target.closest(".edit-row");
    if (!row) return;
    const i = Number(row.dataset.i), ed = ctx.state().ed.map((e) => ({...e}));
    const e = ed[i];
    try {
      if (ev.target.matches(".edit-pos")) e.position = readPosition(ev.target.value, "at position", nTokens());
      else if (ev.target.matches(".edit-from input")) e.from = readPosition(ev.target.value, "from B's position", 0);
      else if (ev.target.matches(".edit-value")) {
        const v = Number.parseFloat(ev.target.value);
        if (!Number.isFinite(v)) throw new Error("Give a number for the value.");
        e.value = v;
      } else if (ev.target.matches(".edit-op")) {
        e.op = ev.target.value;
        e.value = e.op === "scale" || e.op === "set" ? (e.value ?? DEFAULT_VALUE[e.op]) : null;
        if (e.op !== "patch") e.from = null;
      }
    } catch (err) { ctx.error(err); renderEdits(); return; }
    if (e.position === null) e.from = null;
    setEdits(ed, false);
    row.dataset.op = e.op;
    put(row.querySelector(".edit-where"), positionNote(e));
    const value = row.querySelector(".edit-value");
    value.hidden = !(e.op === "scale" || e.op === "set");
    if (!value.hidden) value.value = String(e.value);
    row.querySelector(".edit-from").hidden = e.op !== "patch" || e.position === null;
  }

  /* ---------- logit tokens ---------- */

  /* A picked token is kept as its id ("#199"): a text box would drop a newline token's "\n". The box shows it with
     visible whitespace and remembers the id until the user types over it. Shift: the second token. */
  function pickToken(str, e, id) {
    const which = e && e.shiftKey ? "tb" : "ta";
    const box = $(which === "ta" ? "logit-a" : "logit-b");
    box.value = window.attnsae.tokenText(str);
    if (Number.isInteger(id)) box.dataset.tokenId = String(id); else delete box.dataset.tokenId;
    ctx.setState({[which]: Number.isInteger(id) ? `#${id}` : str}, false);
  }

  const tokenOf = (box) => (box.dataset.tokenId ? `#${box.dataset.tokenId}` : box.value);
  const tok = (t) => (/^#\d+$/.test(t) ? Number(t.slice(1)) : t);  // "#199": a token id

  function body() {
    const s = ctx.state();
    const out = {prompt: s.p, edits: s.ed.map(apiEdit)};
    if (s.ed.some((e) => e.op === "patch")) {
      if (!s.q) throw new Error("A patch reads the compared prompt B: compare a second prompt first.");
      out.other = s.q;
    }
    return out;
  }

  /* ---------- the edited run ---------- */

  async function guarded(card, g, work) {
    ctx.busy(card, true);
    try { return await work(); } catch (e) {
      if (g === gen) ctx.error(e);
      return null;
    } finally { if (g === gen) ctx.busy(card, false); }
  }

  /* POST the edits (and `extra`) to `path`; the answer, kept as shown[key] and marked on `out` as the answer to these
     edits (data-edits), or null when refused or overtaken. `flag`: the state key that says it is shown. */
  async function ask(path, extra, key, out, flag) {
    const s = ctx.state();
    let req;
    try { req = {...body(), ...extra}; } catch (e) { ctx.error(e); return null; }
    const g = gen, sent = editsText(s.ed);
    const r = await guarded($("intervene-card"), g, () => cachedApi(path, req));
    if (!r || g !== gen) return null;
    shown[key] = r;
    out.dataset.edits = sent;
    out.classList.remove("stale");
    if (!s[flag]) ctx.setState({[flag]: true}, false);
    return r;
  }

  async function run() {
    const s = ctx.state();
    if (!ctx.features()) return;
    if ((s.ta === "") !== (s.tb === "")) { ctx.error(new Error("A logit difference needs both tokens (or neither).")); return; }
    const extra = {k: 10};
    if (s.at !== null) extra.at = s.at;
    if (s.ta !== "") extra.logit_tokens = [tok(s.ta), tok(s.tb)];
    const r = await ask("/api/intervene", extra, "intervene", $("intervene-result"), "iv");
    if (!r) return;
    if (r.logit_diff) {  // a token restored from the URL as "#id" is shown as its text, now that it is known
      ["logit-a", "logit-b"].forEach((id, i) => {
        if ($(id).dataset.tokenId === String(r.logit_diff.ids[i])) $(id).value = window.attnsae.tokenText(r.logit_diff.tokens[i]);
      });
    }
    const at = [posChip(r.at)];
    const ld = r.logit_diff, down = r.downstream || [];
    const downMax = Math.max(0, ...down.map((x) => Math.abs(x.delta)));
    put($("intervene-result"),
      el("p", {class: "iv-summary"}, r.edits.length ? `${r.edits.map(describe).join("; ")}. ` : "No edits (the clean run). ",
        "Next-token logits read after ",
        at, el("span", {class: "muted num", title: "the largest change of any logit there"},
          ` · max |Δ logit| ${fmt(r.max_abs_logit_change)}`)),
      ld ? el("div", {class: "logit-diff num"},
        el("span", {}, "logit(", tokenChip(ld.tokens[0], `token id ${ld.ids[0]}`), ") − logit(",
          tokenChip(ld.tokens[1], `token id ${ld.ids[1]}`), ") after ", at.map((n) => n.cloneNode(true)), ": "),
        el("span", {class: "ld"}, "before (clean) ", el("b", {id: "logit-diff-before"}, fmt(ld.before, 4))),
        el("span", {class: "ld"}, "after (edited) ", el("b", {id: "logit-diff-after"}, fmt(ld.after, 4))),
        el("span", {class: "ld " + (ld.after - ld.before < 0 ? "neg" : "pos")}, "Δ ", fmtSigned(ld.after - ld.before, 3)))
        : el("p", {class: "hint"},
          "Pick two tokens (click a prediction: first token; shift-click: second) for a logit difference."),
      el("div", {class: "two-col"},
        el("div", {id: "preds-before"}, el("h4", {}, "before: the clean run's top 10"), predTable(r.before || [])),
        el("div", {id: "preds-after"}, el("h4", {}, "after: the edited run's top 10"), predTable(r.after || [], r.before || []))),
      el("h4", {}, "feature changes ", el("span", {class: "muted"},
        "(each SAE's reading of hook_z, before its own feature edits; float rounding left out)")),
      down.length ? el("div", {class: "table-scroll"}, el("table", {class: "data", id: "downstream"},
        el("thead", {}, el("tr", {}, el("th", {}, "feature"), el("th", {}, "at position"), el("th", {class: "num"}, "before"),
                       el("th", {class: "num"}, "after"), el("th", {class: "num"}, "Δ"), el("th", {}, ""))),
        el("tbody", {}, down.slice(0, 30).map((x) => el("tr", {},
          el("td", {}, el("button", {type: "button", class: "goto fref", title: "select this feature there",
                                     "data-layer": x.layer, "data-feature": x.feature, onclick: () => ctx.select({layer: x.layer, feature: x.feature, position: x.position})},
            `L${x.layer}/${x.feature}`)),
          el("td", {}, posChip(x.position)),
          el("td", {class: "num"}, fmt(x.before)), el("td", {class: "num"}, fmt(x.after)),
          el("td", {class: "num " + (x.delta < 0 ? "neg" : "pos")}, fmtSigned(x.delta)),
          el("td", {class: "bar-cell"}, bar(x.delta, downMax, true)))))))
        : el("p", {class: "hint"}, "No SAE feature changed."));
  }

  function predTable(preds, before = null) {
    const prior = before ? new Map(before.map((p) => [p.token, p.prob])) : null;
    return el("table", {class: "data preds-table"},
      el("thead", {}, el("tr", {}, el("th", {}, "next token"), el("th", {class: "num"}, "prob."), el("th", {class: "num"}, "logit"),
                     prior ? el("th", {class: "num", title: "change in probability, percentage points"}, "Δ pp") : null)),
      el("tbody", {}, preds.map((p) => el("tr", {},
        el("td", {}, el("button", {type: "button", class: "pick", onclick: (e) => pickToken(p.str, e, p.token),
                                   title: `${JSON.stringify(p.str)} (id ${p.token}): click to use as the first logit token (shift: second)`},
          tokenChip(p.str))),
        el("td", {class: "num"}, fmtPct(p.prob, 3)), el("td", {class: "num muted"}, fmt(p.logit, 4)),
        prior ? el("td", {class: "num"}, deltaPP(prior.get(p.token), p.prob)) : null))));
  }

  function deltaPP(before, after) {
    if (!finite(before)) return el("span", {class: "delta new", title: "not in the clean run's top 10"}, "new");
    const d = 100 * (after - before);
    if (Math.abs(d) < 0.05) return el("span", {class: "muted"}, "=");
    return el("span", {class: d < 0 ? "neg" : "pos"}, (d > 0 ? "+" : "−") + fmt(Math.abs(d), 2));
  }

  /* ---------- generation ---------- */

  async function generate() {
    if (!ctx.features()) return;
    const r = await ask("/api/generate", {n: ctx.state().gn}, "generate", $("generate-result"), "gs");
    if (!r) return;
    const first = r.first_difference;
    const text = (strs) => el("div", {class: "gen-text"}, strs.map((t, i) => el("span", {
      class: "gen-tok" + (first !== null && i >= first ? " gen-diff" : ""), title: `generated token ${i + 1} (position ${r.prompt_tokens + i})`},
      tokenChip(t))));
    put($("generate-result"),
      el("div", {class: "two-col"},
        el("div", {id: "gen-clean"}, el("h4", {}, `clean: the model's greedy ${r.n} tokens`), text(r.clean.strs)),
        el("div", {id: "gen-edited"}, el("h4", {}, `edited: greedy with the ${r.edits.length} edit${r.edits.length === 1 ? "" : "s"}`),
          text(r.edited.strs))),
      el("p", {class: "hint", id: "gen-first-diff"}, first === null ? "The two continuations are the same."
        : `They part at generated token ${first + 1} (position ${r.prompt_tokens + first}); marked from there on.`),
      r.stopped ? el("p", {class: "hint", id: "gen-stopped"}, `Stopped early at ${r.n} of ${r.asked} tokens: ${r.stopped}.`)
        : null,
      el("p", {class: "hint"}, "Each token reruns the whole sequence with the edits: an edit at one position stays on " +
        "that prompt token; zero, scale and set at every position act on the generated tokens too; a patch at every " +
        "position covers the prompt's positions only."));
  }

  /* ---------- the card ---------- */

  function clear() {
    gen++;
    for (const k of Object.keys(shown)) delete shown[k];
    put($("intervene-result"));
    put($("generate-result"));
    ctx.busy($("intervene-card"), false);
    renderEdits();
  }

  function show() {
    clear();
    const s = ctx.state();
    return Promise.all([s.iv ? run() : null, s.gs ? generate() : null]);
  }

  function readControls() {
    const s = ctx.state();
    $("intervene-at").value = s.at === null ? "" : String(s.at);
    for (const [id, key] of [["logit-a", "ta"], ["logit-b", "tb"]]) {
      const box = $(id), v = s[key];
      if (/^#\d+$/.test(v)) { box.dataset.tokenId = v.slice(1); box.value = v; } else { delete box.dataset.tokenId; box.value = v; }
    }
    $("generate-n").value = String(s.gn);
    renderEdits();
  }

  function bind() {
    $("edit-list").addEventListener("change", onEditChange);
    $("edit-list").addEventListener("click", (ev) => {
      const b = ev.target.closest(".edit-remove");
      if (b) setEdits(ctx.state().ed.filter((_, i) => i !== Number(b.closest(".edit-row").dataset.i)));
    });
    $("add-head-edit").addEventListener("click", addHead);
    $("attn-layer").addEventListener("change", () => renderEdits());
    for (const id of ["logit-a", "logit-b"]) {
      $(id).addEventListener("input", (e) => { delete e.target.dataset.tokenId; });
      $(id).addEventListener("change", () => ctx.setState({ta: tokenOf($("logit-a")), tb: tokenOf($("logit-b"))}, false));
    }
    $("intervene-at").addEventListener("change", (e) => {
      const n = nTokens();
      const v = Number.parseInt(e.target.value, 10);
      const at = Number.isFinite(v) ? clamp(v, 0, Math.max(0, n - 1)) : null;
      e.target.value = at === null ? "" : String(at);
      ctx.setState({at}, false);
    });
    $("generate-n").addEventListener("change", (e) => {
      const v = Number.parseInt(e.target.value, 10);
      const gn = Number.isFinite(v) ? clamp(v, 1, 32) : 10;
      e.target.value = String(gn);
      ctx.setState({gn}, false);
    });
    $("intervene-form").addEventListener("submit", (e) => { e.preventDefault(); run(); });
    $("generate-form").addEventListener("submit", (e) => { e.preventDefault(); generate(); });
  }

  return {bind, readControls, show, clear, addFeature, pickToken, renderEdits, shown: () => shown};
}
