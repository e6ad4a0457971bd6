/* attnsae feature dashboards: the feature list, the #<sae>/<index> router, the chunk loader and the feature panel.

   Inputs (see attnsae/views/dashboards.py): window.ATTNSAE_INDEX (inline: metadata and per-SAE summary columns),
   window.ATTNSAE_VOCAB (vocab.js) and data/<sae>/<n>.js chunks, each calling window.ATTNSAE_REGISTER once. */
"use strict";
(() => {
  const {el, tokenNodes, finite, fmt, fmtInt, fmtPct, fmtSigned, familyBadge, headChart, histogram} = window.attnsae;
  const INDEX = window.ATTNSAE_INDEX;
  const VOCAB = window.ATTNSAE_VOCAB || [];
  const FAMILY = INDEX.families.names;       // family code -> name (labels, then "dead", then any others)
  const ROW_HEIGHT = 26;                     // px, fixed, so the list can be virtualised
  const $ = (id) => document.getElementById(id);

  const state = {
    sae: 0,             // index into INDEX.saes of the listed SAE
    family: "all",      // family code (as a string) or "all"
    sort: "index",
    rows: [],           // feature indices of the list, filtered and sorted
    selected: null,     // {sae, i} shown in the panel
    colour: "dfa",      // example colouring: "dfa" or "act"
    logY: false,        // activation histogram on a log scale
  };

  /* ---------------------------------------------------------------- tokens */

  const tok = (id) => (id >= 0 && id < VOCAB.length ? VOCAB[id] : null);
  const tokShown = (id) => (tok(id) === null ? `⟨${id}⟩` : tokenNodes(tok(id)));
  const tokExact = (id) => (tok(id) === null ? `id ${id}` : `${JSON.stringify(tok(id))}  (id ${id})`);
  const tokChip = (id, ...extra) => el("span", {class: "tk", title: [tokExact(id), ...extra].join("\n")}, tokShown(id));

  /* ---------------------------------------------------------------- chunks: <script src> on demand */

  const chunks = new Map();    // "sae\0n" -> Promise<features[]>
  const waiting = new Map();   // "sae\0n" -> resolve, until the chunk's script has registered
  window.ATTNSAE_REGISTER = ({sae, chunk, features}) => {
    const key = `${sae}\0${chunk}`;
    const resolve = waiting.get(key);
    waiting.delete(key);
    if (resolve) resolve(features);
    else chunks.set(key, Promise.resolve(features));
  };

  function loadChunk(sae, n) {
    const key = `${sae.name}\0${n}`;
    if (!chunks.has(key)) {
      chunks.set(key, new Promise((resolve, reject) => {
        waiting.set(key, resolve);
        const script = el("script", {src: `${sae.dir}/${n}.js`});
        script.addEventListener("load", () => {
          if (waiting.delete(key)) reject(new Error(`${sae.dir}/${n}.js did not register its features`));
        });
        script.addEventListener("error", () => {
          waiting.delete(key);
          chunks.delete(key);
          reject(new Error(`could not load ${sae.dir}/${n}.js (is the dashboards folder complete?)`));
        });
        document.head.append(script);
      }));
    }
    return chunks.get(key);
  }

  /* ---------------------------------------------------------------- header */

  function renderTopbar() {
    const c = INDEX.corpus;
    $("topbar").replaceChildren(
      el("h1", {}, INDEX.title),
      el("span", {class: "meta"}, INDEX.model),
      el("span", {class: "meta"}, [c.source, c.split].filter(Boolean).join(" · "),
         ` — ${fmtInt(c.n_tokens)} tokens scanned in contexts of ${fmtInt(c.context_size)}`),
      INDEX.heads_href ? el("a", {href: INDEX.heads_href}, "head report →") : null,
    );
  }

  /* ---------------------------------------------------------------- the feature list (virtualised) */

  function familyCounts(sae) {
    const counts = new Array(FAMILY.length).fill(0);
    for (const code of sae.family) counts[code] += 1;
    return counts;
  }

  function fillSelects() {
    $("sae-select").replaceChildren(...INDEX.saes.map((s, k) =>
      el("option", {value: k}, `${s.name} · ${s.hook_name} · ${fmtInt(s.d_sae)}`)));
    $("sae-select").value = String(state.sae);
    const counts = familyCounts(INDEX.saes[state.sae]);
    $("family-select").replaceChildren(
      el("option", {value: "all"}, `all (${fmtInt(INDEX.saes[state.sae].d_sae)})`),
      ...FAMILY.map((name, code) => el("option", {value: code}, `${name} (${fmtInt(counts[code])})`)));
    $("family-select").value = state.family;
  }

  function rebuildRows() {
    const s = INDEX.saes[state.sae];
    let rows = Array.from({length: s.d_sae}, (_, i) => i);
    if (state.family !== "all") {
      const code = Number(state.family);
      rows = rows.filter((i) => s.family[i] === code);
    }
    const by = {
      "density-desc": (a, b) => s.density[b] - s.density[a] || a - b,
      "density-asc": (a, b) => s.density[a] - s.density[b] || a - b,
      "max-desc": (a, b) => s.max_act[b] - s.max_act[a] || a - b,
    }[state.sort];
    if (by) rows.sort(by);
    state.rows = rows;
    const dead = familyCounts(s)[FAMILY.indexOf("dead")] || 0;
    $("list-count").textContent = `${fmtInt(rows.length)} of ${fmtInt(s.d_sae)} features shown · ${fmtInt(dead)} dead`;
    $("list-spacer").style.height = `${rows.length * ROW_HEIGHT}px`;
    renderList();
  }

  function listRow(s, i, k) {
    const family = FAMILY[s.family[i]];
    const selected = state.selected && state.selected.sae === state.sae && state.selected.i === i;
    const density = s.density[i];
    return el("a", {
      class: `row${selected ? " selected" : ""}${family === "dead" ? " dead" : ""}`,
      href: `#${encodeURIComponent(s.name)}/${i}`, style: {top: `${k * ROW_HEIGHT}px`},
      title: `${s.name}/${i}: ${family}, density ${fmtPct(density)}, max act ${fmt(s.max_act[i])}`,
    },
    el("span", {class: "idx num"}, i),
    el("span", {}, familyBadge(family)),
    el("span", {class: "num"}, density > 0 ? fmtPct(density, 2) : "0"),
    el("span", {class: "num"}, fmt(s.max_act[i], 2)),
    el("span", {class: "toks"}, s.top_token[i] >= 0 ? tokChip(s.top_token[i], "commonest destination token") : "",
       s.top_logit[i] >= 0 ? el("span", {class: "arrow"}, "→") : "",
       s.top_logit[i] >= 0 ? tokChip(s.top_logit[i], "top logit effect") : ""));
  }

  function renderList() {
    const list = $("list"), s = INDEX.saes[state.sae];
    const first = Math.max(0, Math.floor(list.scrollTop / ROW_HEIGHT) - 8);
    const last = Math.min(state.rows.length, first + Math.ceil(list.clientHeight / ROW_HEIGHT) + 16);
    const rows = [];
    for (let k = first; k < last; k++) rows.push(listRow(s, state.rows[k], k));
    $("list-spacer").replaceChildren(...rows);
  }

  function scrollListTo(i) {
    const k = state.rows.indexOf(i), list = $("list");
    if (k < 0) return;
    const top = k * ROW_HEIGHT;
    if (top < list.scrollTop || top + ROW_HEIGHT > list.scrollTop + list.clientHeight) {
      list.scrollTop = Math.max(0, top - list.clientHeight / 3);
    }
  }

  function showSae(k) {
    if (k === state.sae) return;
    state.sae = k;
    state.family = "all";
    fillSelects();
    $("list").scrollTop = 0;
    rebuildRows();
  }

  /* ---------------------------------------------------------------- addresses: "123", "L1/123", #L1/123 */

  function parseTarget(text) {
    const m = /^\s*(?:(.*\S)\s*[/:\s]\s*)?#?(\d+)\s*$/.exec(text);
    if (!m) return {error: `“${text}” is not a feature: type an index (123) or SAE/index (L1/123)`};
    let k = state.sae;
    if (m[1] !== undefined) {
      k = INDEX.saes.findIndex((s) => s.name === m[1]);
      if (k < 0) k = INDEX.saes.findIndex((s) => s.name.toLowerCase() === m[1].toLowerCase());
      if (k < 0) return {error: `no SAE named “${m[1]}” (there are ${INDEX.saes.map((s) => s.name).join(", ")})`};
    }
    const i = Number(m[2]), s = INDEX.saes[k];
    if (i >= s.d_sae) return {error: `${s.name} has features 0–${s.d_sae - 1}, not ${i}`};
    return {sae: k, i};
  }

  const address = (k, i) => `#${encodeURIComponent(INDEX.saes[k].name)}/${i}`;

  let renderToken = 0;   // a newer selection makes a pending chunk load drop its result
  async function route() {
    let text = "";
    try { text = decodeURIComponent(location.hash.slice(1)); } catch (e) { text = location.hash.slice(1); }
    const token = ++renderToken;
    if (!text) { state.selected = null; renderList(); renderOverview(); return; }
    const target = parseTarget(text);
    if (target.error) { showMessage("Unknown address", target.error); return; }
    showSae(target.sae);
    state.selected = target;
    renderList();
    scrollListTo(target.i);
    const s = INDEX.saes[target.sae];
    document.title = `${s.name}/${target.i} — ${INDEX.title}`;
    $("main").setAttribute("aria-busy", "true");
    try {
      const features = await loadChunk(s, Math.floor(target.i / INDEX.chunk_size));
      if (token !== renderToken) return;
      const feature = features[target.i % INDEX.chunk_size];
      if (!feature || feature.i !== target.i) throw new Error(`${s.name}/${target.i} is missing from its data file`);
      renderFeature(s, feature);
    } catch (e) {
      if (token === renderToken) showMessage("Could not show this feature", String(e.message || e));
    } finally {
      if (token === renderToken) $("main").removeAttribute("aria-busy");
    }
  }

  function showMessage(title, text) {
    $("main").replaceChildren(el("div", {class: "card message"}, el("h2", {}, title), el("p", {}, text)));
  }

  /* ---------------------------------------------------------------- the overview (no feature selected) */

  function familiesNote() {
    const f = INDEX.families;
    const thresholds = Object.entries(f.thresholds || {}).map(([k, v]) => `${k} = ${fmt(v)}`).join(", ");
    return el("p", {class: "muted"}, `Families: ${f.criterion}`, thresholds ? ` (thresholds: ${thresholds})` : "");
  }

  function renderOverview() {
    document.title = INDEX.title;
    const cards = INDEX.saes.map((s, k) => {
      const counts = familyCounts(s);
      return el("div", {class: "card"},
        el("h3", {}, `${s.name} · ${s.hook_name}`),
        el("p", {}, `${fmtInt(s.d_sae)} features over ${s.n_heads} heads × d_head ${s.d_head}`,
           s.path ? el("span", {class: "muted"}, ` — ${s.path}`) : ""),
        el("div", {class: "chips"}, FAMILY.map((name, code) => counts[code] ? el("a", {
          href: "#", class: "family-count", onclick: (e) => {
            e.preventDefault(); showSae(k); state.family = String(code); fillSelects(); rebuildRows();
          }}, familyBadge(name), el("span", {class: "count"}, fmtInt(counts[code]))) : null)));
    });
    const example = `${INDEX.saes[0].name}/123`;
    $("main").replaceChildren(el("div", {class: "overview"},
      el("h2", {}, "Features"),
      el("p", {}, `Pick a feature in the list, or type its index (123, or ${example}) in the search box. `,
         `Each feature has an address you can link to: index.html#${example}.`),
      familiesNote(), ...cards));
  }

  /* ---------------------------------------------------------------- the feature panel */

  function familyTitle(f) {
    const lines = [`family: ${f.family}`, `criterion: ${INDEX.families.criterion}`];
    const stats = Object.entries(f.family_stats || {});
    if (stats.length) lines.push("", ...stats.map(([k, v]) => `${k.replace(/_/g, " ")}: ${fmt(v)}`));
    const thresholds = Object.entries(INDEX.families.thresholds || {});
    if (thresholds.length) lines.push("", "thresholds:", ...thresholds.map(([k, v]) => `  ${k}: ${fmt(v)}`));
    return lines.join("\n");
  }

  function featureHeader(s, f) {
    const k = INDEX.saes.indexOf(s);
    const stats = Object.entries(f.family_stats || {}).filter(([key]) => key !== "n_examples");
    const n = f.family_stats && f.family_stats.n_examples;
    return el("header", {class: "fhead"},
      el("div", {class: "crumbs"}, `${s.name} · ${s.hook_name} · layer ${s.layer} · ${fmtInt(s.d_sae)} features`),
      el("div", {class: "title-row"},
        el("h2", {}, "Feature ", el("span", {class: "num", id: "feature-index"}, f.i)),
        familyBadge(f.family, familyTitle(f)),
        el("nav", {class: "step"},
          f.i > 0 ? el("a", {href: address(k, f.i - 1), title: "previous feature"}, `‹ ${f.i - 1}`) : null,
          f.i + 1 < s.d_sae ? el("a", {href: address(k, f.i + 1), title: "next feature"}, `${f.i + 1} ›`) : null)),
      el("div", {class: "stats"},
        stat("density", f.density > 0 ? fmtPct(f.density) : "0",
             f.density > 0 ? `log₁₀ ${fmt(Math.log10(f.density))}` : "never fired"),
        stat("fired", fmtInt(f.n_fired), `of ${fmtInt(INDEX.corpus.n_tokens)} tokens`),
        stat("max act", fmt(f.max_act)),
        stat("mean act", fmt(f.mean_act), "when firing")),
      stats.length ? el("div", {class: "family-stats muted", title: familyTitle(f)},
        stats.map(([key, v]) => el("span", {}, `${key.replace(/_/g, " ")} `, el("b", {class: "num"}, fmt(v)))),
        finite(n) ? el("span", {}, `over ${fmtInt(n)} examples`) : null) : null);
  }

  const stat = (label, value, note) =>
    el("div", {class: "stat"}, el("div", {class: "label"}, label), el("div", {class: "value num"}, value),
       note ? el("div", {class: "note"}, note) : null);

  function headCard(s, f) {
    return el("div", {class: "card"}, el("h3", {}, "Head attribution"),
      headChart(f.head_shares || [], f.head_dfa || new Array((f.head_shares || []).length).fill(0)),
      el("div", {class: "legend"}, el("span", {class: "swatch weight"}), "decoder weight share",
         el("span", {class: "swatch pos"}), "DFA share (top examples)"));
  }

  function histCard(f) {
    const body = el("div", {});
    const draw = () => body.replaceChildren(
      (f.hist && (f.hist.counts || []).some((c) => c > 0)) ? histogram(f.hist, {logY: state.logY})
        : el("p", {class: "empty"}, "no activations recorded"));
    draw();
    return el("div", {class: "card"},
      el("h3", {}, "Activation histogram",
         el("label", {class: "toggle"}, el("input", {type: "checkbox", checked: state.logY,
           onchange: (e) => { state.logY = e.target.checked; draw(); }}), "log y")),
      body,
      el("p", {class: "caption"}, f.density > 0
        ? `fires on ${fmtPct(f.density)} of tokens (${fmtInt(f.n_fired)} of ${fmtInt(INDEX.corpus.n_tokens)})`
        : "never fired on the scanned tokens"));
  }

  function logitTable(title, pairs, cls) {
    const max = Math.max(1e-12, ...pairs.map(([, v]) => Math.abs(v)));
    return el("table", {class: `data logits ${cls}`},
      el("thead", {}, el("tr", {}, el("th", {}, title), el("th", {class: "num"}, ""))),
      el("tbody", {}, pairs.map(([id, v]) => el("tr", {},
        el("td", {}, tokChip(id)),
        el("td", {class: "num"}, el("span", {class: "vbar", style: {width: `${24 * Math.abs(v) / max}px`}}),
           fmtSigned(v))))));
  }

  function logitCard(f) {
    const logits = f.logits || {pos: [], neg: []};
    const hist = f.logit_hist && (f.logit_hist.counts || []).length
      ? [histogram(f.logit_hist, {cls: "bar logit", logY: true, marker: 0, H: 96}),
         el("p", {class: "caption"}, "effect on every token's logit (log y)")] : [];
    return el("div", {class: "card"}, el("h3", {}, "Direct logit effect"),
      el("div", {class: "logit-grid"}, logitTable("promotes", logits.pos || [], "pos"),
         logitTable("suppresses", logits.neg || [], "neg")),
      hist);
  }

  function topTokensCard(f) {
    const top = f.top_tokens || [];
    return el("div", {class: "card"}, el("h3", {}, "Commonest destination tokens"),
      top.length ? el("div", {class: "chips"}, top.map(([id, count]) =>
        el("span", {}, tokChip(id), el("span", {class: "count"}, `×${fmtInt(count)}`))))
        : el("p", {class: "empty"}, "none"));
  }

  /* ---------------------------------------------------------------- examples */

  const BLUE = [37, 99, 235], RED = [220, 38, 38], ORANGE = [234, 88, 12];
  function shade(t, rgb) {    // t in [0, 1] -> a tint of rgb over white
    const a = Math.min(1, Math.abs(t)) * 0.78;
    if (!(a > 0.01)) return "transparent";
    return `rgb(${rgb.map((c) => Math.round(255 + (c - 255) * a)).join(",")})`;
  }

  /* One token of an example: coloured both ways (CSS picks one), marked if it is the destination or DFA peak. */
  function exampleToken(ex, id, pos, act, dfa, maxAbsDfa, maxAct) {
    const role = pos === ex.dest ? "destination" : pos === ex.peak ? "DFA peak" : pos > ex.dest ? "after" : "";
    const cls = ["t", pos === ex.dest && "dest", pos === ex.peak && "peak", pos > ex.dest && "after"];
    return el("span", {
      class: cls.filter(Boolean).join(" "),
      title: [`pos ${pos}${role ? ` (${role})` : ""}`, tokExact(id), `act ${fmt(act)}`, `DFA → dest ${fmt(dfa)}`]
        .join("\n"),
      style: {"--by-dfa": shade(maxAbsDfa > 0 ? dfa / maxAbsDfa : 0, dfa < 0 ? RED : BLUE),
              "--by-act": shade(act / maxAct, ORANGE)},
    }, tokShown(id));
  }

  function example(f, ex) {
    const segments = ex.segments || [];
    let maxAbsDfa = 0;
    for (const seg of segments) for (const d of seg.dfa) maxAbsDfa = Math.max(maxAbsDfa, Math.abs(d));
    const maxAct = finite(f.max_act) && f.max_act > 0 ? f.max_act : 1;
    const toks = el("div", {class: "toks"});
    if (segments.length && segments[0].start > 0) {
      toks.append(el("span", {class: "trunc", title: `${segments[0].start} earlier tokens not shown`}, "…"));
    }
    segments.forEach((seg, k) => {
      if (k > 0) {
        const prev = segments[k - 1], skipped = seg.start - (prev.start + prev.tokens.length);
        toks.append(el("span", {class: "gap", title: `${fmtInt(skipped)} tokens not shown`}, "…"));
      }
      seg.tokens.forEach((id, j) => {
        const pos = seg.start + j;
        const span = exampleToken(ex, id, pos, seg.acts[j], seg.dfa[j], maxAbsDfa, maxAct);
        // the destination and its activation label wrap as one
        toks.append(pos !== ex.dest ? span : el("span", {class: "dest-wrap"}, span,
          el("span", {class: "dest-act", title: "feature activation here"}, fmt(ex.act))));
      });
    });
    return el("div", {class: "ex"},
      el("div", {class: "ex-meta"}, el("div", {class: "ex-act num"}, fmt(ex.act)),
         el("div", {class: "ex-where", title: `context ${ex.ctx}, destination position ${ex.dest}\n` +
                                                `DFA sum ${fmt(ex.dfa_total)} + encoder bias ${fmt(ex.bias)}`},
            el("div", {}, `ctx ${ex.ctx}`), el("div", {}, `pos ${ex.dest}`))),
      toks);
  }

  /* "colour by" buttons (they switch the class of `box`) and the key to the colours and marks. */
  function colourToolbar(box) {
    const button = (mode, label) => el("button", {
      type: "button", class: state.colour === mode ? "on" : "", "data-mode": mode, onclick: () => {
        state.colour = mode;
        box.className = `examples by-${mode}`;
        box.querySelectorAll(".modes button").forEach((b) => b.classList.toggle("on", b.dataset.mode === mode));
      }}, label);
    const swatch = (rgb, text) => el("span", {class: "t", style: {background: shade(1, rgb)}}, text);
    return [
      el("div", {class: "modes", role: "group", "aria-label": "colour tokens by"},
        el("span", {class: "muted"}, "colour by"), button("dfa", "DFA into destination"), button("act", "activation")),
      el("div", {class: "key muted"},
        el("span", {class: "key-dfa"}, swatch(BLUE, "+"), swatch(RED, "−"), " DFA from the source (per example)"),
        el("span", {class: "key-act"}, swatch(ORANGE, "act"), " activation (per feature max)"),
        el("span", {}, el("span", {class: "t dest"}, "dest"), " destination"),
        el("span", {}, el("span", {class: "t peak"}, "src"), " DFA peak")),
    ];
  }

  function examplesSection(f) {
    const groups = (f.groups || []).filter((g) => (g.examples || []).length);
    const box = el("section", {class: `examples by-${state.colour}`});
    box.append(el("div", {class: "ex-toolbar"}, el("h3", {}, "Examples"),
                  groups.length ? colourToolbar(box) : null));
    if (!groups.length) {
      box.append(el("p", {class: "empty"}, f.family === "dead"
        ? "This feature never fired on the scanned tokens, so it has no examples."
        : "No examples recorded for this feature."));
    }
    for (const g of groups) {
      box.append(el("div", {class: "group"},
        el("h4", {}, g.title, el("span", {class: "muted"}, ` · ${g.examples.length}`)),
        g.examples.map((ex) => example(f, ex))));
    }
    return box;
  }

  function renderFeature(s, f) {
    const main = $("main");
    main.replaceChildren(el("article", {class: "feature", "data-sae": s.name, "data-index": f.i},
      featureHeader(s, f),
      el("div", {class: "feature-body"},
        el("div", {class: "cards"}, headCard(s, f), histCard(f), logitCard(f), topTokensCard(f)),
        examplesSection(f))));
    main.scrollTop = 0;
  }

  /* ---------------------------------------------------------------- wiring */

  function init() {
    renderTopbar();
    fillSelects();
    $("sae-select").addEventListener("change", (e) => { showSae(Number(e.target.value)); });
    $("family-select").addEventListener("change", (e) => {
      state.family = e.target.value; $("list").scrollTop = 0; rebuildRows();
    });
    $("sort-select").addEventListener("change", (e) => {
      state.sort = e.target.value; $("list").scrollTop = 0; rebuildRows();
    });
    let pending = false;
    $("list").addEventListener("scroll", () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; renderList(); });
    });
    window.addEventListener("resize", renderList);
    $("search-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const target = parseTarget($("search").value);
      $("search-message").textContent = target.error || "";
      if (target.error) return;
      const next = address(target.sae, target.i);
      if (location.hash === next) route(); else location.hash = next;
    });
    document.addEventListener("keydown", (e) => {
      if (e.key === "/" && !/^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName)) {
        e.preventDefault(); $("search").focus();
      }
    });
    window.addEventListener("hashchange", route);
    rebuildRows();
    route();
  }

  init();
})();
