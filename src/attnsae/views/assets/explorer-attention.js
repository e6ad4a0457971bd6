/* The attention pattern shown as shading on the token list: one head's row (POST /api/attention) for a destination
   (the pinned one, else the hovered row, else the selected feature's position), and the strip naming its top sources.

   createAttention({state, features, setState, error, scrollToPosition}) -> {paintCell, paint, hover, pin, load, set,
   clear, shown}. */

import {$, el, put, tokenNodes, fmt, cachedApi} from "./explorer-util.js";
import {attentionKey} from "./explorer-legend.js";

export function createAttention({state, features, setState, error: showError, scrollToPosition}) {
  let attn = null;          // {layer, head, dest, weights, max} being shown
  let hoverDest = null;

  function paintAttnCell(tok, i) {
    const w = attn && attn.weights && i <= attn.dest ? attn.weights[i] : null;
    if (w === null || w === undefined) { tok.classList.remove("attn"); tok.style.removeProperty("--attn"); return; }
    const max = attn.max || 1;
    tok.classList.add("attn");
    tok.style.setProperty("--attn", (w / max).toFixed(3));
    tok.dataset.attn = String(w);
  }

  function paintAttention() {
    for (const row of $("tokens-spacer").querySelectorAll(".row")) {
      const i = Number(row.dataset.position);
      paintAttnCell(row.querySelector(".tok"), i);
      row.classList.toggle("attn-dest", !!attn && attn.dest === i);
    }
    attentionKey(attn);
    const strip = $("attn-strip");
    if (state().al === null) { put(strip, el("span", {class: "muted"}, "attention off")); return; }
    if (!attn) {
      put(strip, el("span", {class: "muted"}, "hover or focus a row to see its attention"));
      return;
    }
    const order = attn.weights.map((w, i) => [w, i]).filter(([, i]) => i <= attn.dest).sort((a, b) => b[0] - a[0]).slice(0, 4);
    put(strip,
      el("span", {}, `L${attn.layer}H${attn.head} from `),
      el("b", {class: "num"}, String(attn.dest)), " ", el("span", {class: "tk"}, tokenNodes(features().token_strs[attn.dest])), ": ",
      order.map(([w, i], n) => [n ? " · " : "", el("span", {class: "tk"}, tokenNodes(features().token_strs[i])),
                                 el("span", {class: "num muted", title: "position, attention weight"}, `@${i} ${fmt(w, 2)}`)]),
      state().ad !== null ? el("button", {type: "button", class: "link", id: "attn-unpin", onclick: () => pinDest(null),
                                         title: "follow the hovered row again"}, " unpin") : null);
  }

  let hoverTimer = 0;
  function hover(position) {
    hoverDest = position;
    if (state().al === null || state().ad !== null) return;
    clearTimeout(hoverTimer);
    hoverTimer = setTimeout(loadAttention, 40);
  }

  function pinDest(position) {
    setState({ad: position}, false);
    loadAttention();
  }

  function attnDest() {
    if (state().ad !== null) return state().ad;
    if (hoverDest !== null) return hoverDest;
    return state().sel ? state().sel.position : null;
  }

  async function loadAttention() {
    if (!features() || state().al === null) { attn = null; paintAttention(); return; }
    const dest = attnDest();
    if (dest === null || dest >= features().token_strs.length) { attn = null; paintAttention(); return; }
    const body = {prompt: state().p, layer: state().al, head: state().ah, dest};
    const f = features();
    try {
      const r = await cachedApi("/api/attention", body);
      if (f !== features() || state().al !== body.layer || state().ah !== body.head || attnDest() !== dest) return;
      let max = 0;
      for (let i = 0; i <= dest; i++) max = Math.max(max, r.weights[i] || 0);
      attn = {...r, max};
      paintAttention();
    } catch (e) { showError(e); }
  }

  function setAttention(layer, head, dest) {
    setState({al: layer, ah: head, ad: dest}, false);
    $("attn-layer").value = String(layer);
    $("attn-head").value = String(head);
    loadAttention();
    scrollToPosition(dest);
  }

  return {paintCell: paintAttnCell, paint: paintAttention, hover, pin: pinDest, load: loadAttention,
          set: setAttention, clear: () => { attn = null; }, shown: () => attn};
}
