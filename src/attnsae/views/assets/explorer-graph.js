/* Circuit Explorer: the Graph view (POST /api/graph, attnsae.graph): the pruned attention graph of the prompt, drawn
   as SVG with x = token position and y = layer (embeddings at the bottom, then per layer its features or heads and,
   just above, its leaves, the target on top). Nodes are sized by |effect| on the target; edges are blue where they
   raise the node they feed and red where they lower it, wider when heavier (the heaviest MAX_EDGES are drawn); each
   has a hover title with its numbers. Click a feature for its DFA panel, a head for its attention row, an edge into a
   feature or head for why its head attended there (POST /api/qk: the score split over the nodes at each end, and
   what set that source apart); shift-click picks nodes, "group" makes them a supernode (kept in the URL, sn).

   Stable ids and selectors: #graph-card, #graph-form, #graph-target-a, #graph-target-b, #graph-mlp,
   #graph-node-threshold, #graph-edge-threshold, #graph-run, #graph-group, #graph-ungroup, #graph-summary,
   #graph-svg, #graph-qk (.qk-side[data-side]); circle.gnode[data-id][data-kind], line.gedge[data-source][data-target],
   rect.gsuper[data-group]. */

import {$, el, put, fmt, fmtSigned, api} from "./explorer-util.js";

const SVG = "http://www.w3.org/2000/svg";  // an XML namespace name, never fetched
const MAX_EDGES = 500;
const ROW = 22;
const PAD = 40;

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

/* The row a node sits on: 0 the embeddings, 1 + 2l layer l's readers, 2 + 2l its leaves, 1 + 2L the target. */
function rowOf(kind, layer, nLayers) {
  if (kind === "token" || kind === "position") return 0;
  if (kind === "target") return 1 + 2 * nLayers;
  return (kind === "feature" || kind === "head" ? 1 : 2) + 2 * layer;
}

export function createGraph(ctx) {
  let data = null;             // the last /api/graph answer
  let gen = 0;
  const picked = new Set();

  function target() {
    const a = $("graph-target-a").value, b = $("graph-target-b").value;
    if (!a) return null;
    return b ? [a, "-", b] : [a];
  }

  async function load() {
    const s = ctx.state();
    if (!s.p || !s.g) return;
    const mine = ++gen;
    const body = {prompt: s.p, target: target(), mlp: $("graph-mlp").value,
                  node_threshold: Number($("graph-node-threshold").value) || 0.8,
                  edge_threshold: Number($("graph-edge-threshold").value) || 0.98};
    ctx.busy($("graph-card"), true);
    try {
      const r = await api("/api/graph", body);
      if (mine !== gen) return;
      data = r;
      draw();
    } catch (e) {
      if (mine === gen) { ctx.error(e); put($("graph-svg")); put($("graph-summary"), "no graph"); }
    } finally {
      if (mine === gen) ctx.busy($("graph-card"), false);
    }
  }

  function draw() {
    const box = $("graph-svg");
    if (!data) { put(box); return; }
    const n = data.nodes, S = data.prompt_tokens.length, L = data.n_layers;
    const width = Math.max(box.clientWidth || 800, 320);
    const colW = (width - 2 * PAD) / Math.max(S, 1);
    const height = ROW * (2 * L + 3);
    const groups = new Map();
    n.id.forEach((id, i) => {
      const key = rowOf(n.kind[i], n.layer[i], L) + ":" + n.pos[i];
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(i);
    });
    const xy = {};
    for (const [key, ids] of groups) {
      const [row, pos] = key.split(":").map(Number);
      ids.sort((a, b) => Math.abs(n.effect[b]) - Math.abs(n.effect[a]));
      const step = Math.min(8, colW / 2 / Math.max(ids.length, 1));
      ids.forEach((i, k) => {
        const off = Math.ceil(k / 2) * (k % 2 ? 1 : -1) * step;
        xy[n.id[i]] = [PAD + (pos + 0.5) * colW + off, height - ROW * (row + 1)];
      });
    }
    const big = Math.max(1e-12, ...n.effect.map(Math.abs));
    const e = data.edges;
    const order = e.weight.map((w, k) => k).sort((a, b) => Math.abs(e.weight[b]) - Math.abs(e.weight[a]))
      .slice(0, MAX_EDGES).reverse();
    const heavy = Math.max(1e-12, ...order.map((k) => Math.abs(e.weight[k])));
    const root = svg("svg", {width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
                             "aria-label": `attention graph of ${data.target.label}`});
    const axis = svg("g", {class: "gaxis"});
    data.prompt_tokens.forEach((t, p) => axis.append(svg("text", {x: PAD + (p + 0.5) * colW, y: height - 4,
      "text-anchor": "middle", class: "gtok"}, t.replace(/\n/g, "⏎").slice(0, 8))));
    for (let l = 0; l < L; l++) axis.append(svg("text", {x: 2, y: height - ROW * (2 + 2 * l) + 4, class: "glayer"}, `L${l}`));
    root.append(axis);
    const supers = svg("g");
    root.append(supers);
    const lines = svg("g");
    for (const k of order) {
      const [x1, y1] = xy[e.source[k]], [x2, y2] = xy[e.target[k]];
      const w = e.weight[k];
      lines.append(svg("line", {x1, y1, x2, y2, class: "gedge " + (w >= 0 ? "pos" : "neg"),
                                "stroke-width": (0.4 + 3 * Math.abs(w) / heavy).toFixed(2),
                                "stroke-opacity": (0.25 + 0.6 * Math.abs(w) / heavy).toFixed(2),
                                "data-source": e.source[k], "data-target": e.target[k]},
        svg("title", {}, `${e.source[k]} → ${e.target[k]}: ${fmtSigned(w)}`)));
    }
    root.append(lines);
    const dots = svg("g");
    n.id.forEach((id, i) => {
      const [cx, cy] = xy[id];
      const r = 2.5 + 9 * Math.sqrt(Math.abs(n.effect[i]) / big);
      dots.append(svg("circle", {cx, cy, r: r.toFixed(2), class: `gnode ${n.kind[i]}` + (picked.has(id) ? " picked" : ""),
                                 "data-id": id, "data-kind": n.kind[i], tabindex: 0},
        svg("title", {}, `${id}: value ${fmt(n.value[i])}, effect on the target ${fmtSigned(n.effect[i])}` +
                         `, influence ${fmt(n.influence[i])}`)));
    });
    root.append(dots);
    drawSupers(supers, xy);
    put(box, root);
    const p = data.pruning;
    put($("graph-summary"), `${data.target.label} = ${fmt(data.target.value)} · ${p.nodes} of ${p.nodes_unpruned} nodes, ` +
      `${p.edges} of ${p.edges_unpruned} edges` + (p.edges > MAX_EDGES ? ` (${MAX_EDGES} heaviest drawn)` : "") +
      ` · replacement ${fmt(data.scores.replacement)}, completeness ${fmt(data.scores.completeness)} · every node ` +
      `closes to ${data.closure_max_rel_error.toExponential(1)} · MLPs ${data.mlp_mode}`);
  }

  function drawSupers(layer, xy) {
    const groupsOf = ctx.state().sn || [];
    groupsOf.forEach((members, g) => {
      const pts = members.map((id) => xy[id]).filter(Boolean);
      if (!pts.length) return;
      const xs = pts.map((q) => q[0]), ys = pts.map((q) => q[1]);
      const x = Math.min(...xs) - 12, y = Math.min(...ys) - 12;
      const effect = members.reduce((a, id) => a + (data.nodes.effect[data.nodes.id.indexOf(id)] || 0), 0);
      layer.append(svg("rect", {x, y, width: Math.max(...xs) - x + 12, height: Math.max(...ys) - y + 12, rx: 6,
                                class: "gsuper", "data-group": g},
        svg("title", {}, `group ${g + 1}: ${members.join(", ")} (effect ${fmtSigned(effect)})`)));
      layer.append(svg("text", {x: x + 2, y: y - 2, class: "gsuper-label"}, `group ${g + 1} ${fmtSigned(effect)}`));
    });
  }

  async function explainEdge(line) {
    const s = ctx.state();
    const body = {prompt: s.p, target: target(), mlp: $("graph-mlp").value, source: line.dataset.source,
                  dest: line.dataset.target};
    const box = $("graph-qk");
    put(box, "…");
    try {
      const q = await api("/api/qk", body);
      const side = (name, part) => el("div", {class: "qk-side", "data-side": name},
        el("b", {}, name), " ", part.nodes.map((n) => `${n.node} ${fmtSigned(n.value)}`).join(", "),
        part.rest !== undefined ? `, rest ${fmtSigned(part.rest)}, constant ${fmtSigned(part.constant)}` : "");
      put(box, el("p", {}, `L${q.layer}.H${q.head} from ${q.dest} to ${q.src}: score ${fmt(q.score)}, attention ` +
                    `${fmt(q.pattern)} (${body.source} → ${body.dest})`),
          side("key", q.key), side("query", q.query),
          q.key_contrast ? side(`vs the other sources (+${fmt(q.key_contrast.score_gap)})`, q.key_contrast) : null);
    } catch (e) {
      put(box);
      ctx.error(e);
    }
  }

  function onClick(ev) {
    const line = ev.target.closest("line.gedge");
    if (line && data) {
      const i = data.nodes.id.indexOf(line.dataset.target);
      if (data.nodes.kind[i] === "feature" || data.nodes.kind[i] === "head") explainEdge(line);
      return;
    }
    const node = ev.target.closest("circle.gnode");
    if (!node || !data) return;
    const id = node.dataset.id;
    if (ev.shiftKey) {
      if (picked.has(id)) picked.delete(id); else picked.add(id);
      node.classList.toggle("picked");
      $("graph-group").disabled = picked.size < 2;
      return;
    }
    const i = data.nodes.id.indexOf(id);
    const kind = data.nodes.kind[i];
    if (kind === "feature") ctx.select({layer: data.nodes.layer[i], feature: data.nodes.index[i], position: data.nodes.pos[i]});
    else if (kind === "head") ctx.setAttention(data.nodes.layer[i], data.nodes.index[i], data.nodes.pos[i]);
  }

  function bind() {
    $("graph-form").addEventListener("submit", (e) => { e.preventDefault(); ctx.setState({g: true}); load(); });
    $("graph-svg").addEventListener("click", onClick);
    $("graph-svg").addEventListener("keydown", (e) => { if (e.key === "Enter") onClick(e); });
    $("graph-group").addEventListener("click", () => {
      if (picked.size < 2) return;
      ctx.setState({sn: [...(ctx.state().sn || []), [...picked]]}, true);
      picked.clear();
      $("graph-group").disabled = true;
      draw();
    });
    $("graph-ungroup").addEventListener("click", () => { ctx.setState({sn: []}, true); draw(); });
  }

  bind();
  return {load, draw, shown: () => ({graph: data}),
          reset: () => { data = null; picked.clear(); put($("graph-svg")); put($("graph-qk")); }};
}
