"""``attnsae graph``'s printed summary, from the graph job's summary dict
(:func:`attnsae.jobs.circuit_graph.graph_job`)."""

from __future__ import annotations

LEAVES = (("token", "tokens"), ("position", "positions"), ("bias", "constant outputs"), ("error", "SAE errors"),
          ("mlp", "MLP outputs"), ("mlp_rest", "MLP remainders"))


def graph_summary_text(s: dict) -> str:
    t, p, sc, d = s["target"], s["pruning"], s["scores"], s["decomposition"]
    prob = f" (p = {t['probability']:.3f})" if t.get("probability") is not None else ""
    lines = [f"target     {t['label']} = {t['value']:.4g} at position {t['pos']}{prob}",
             f"graph      {p['nodes_unpruned']:,} nodes, {p['edges_unpruned']:,} edges, exact: every node closes to "
             f"{s['closure_max_rel_error']:.1e} of its terms (fp32)",
             f"pruned     {p['nodes']:,} nodes, {p['edges']:,} edges (--node-threshold {p['node_threshold']:g}, "
             f"--edge-threshold {p['edge_threshold']:g})",
             f"scores     replacement {sc['replacement']:.3f}, completeness {sc['completeness']:.3f} "
             "(circuit-tracer's definitions; SAE errors and MLP outputs count as its error nodes)",
             "influence  " + ", ".join(f"{name} {sc['influence_share_' + k]:.1%}" for k, name in LEAVES
                                       if "influence_share_" + k in sc),
             "exactly    target = " + " + ".join(f"{d[k]:.4g} ({name})" for k, name in LEAVES if k in d)
             + f" + {d['constants']:.4g} (biases of the value paths)"]
    if s.get("mlp_mode") == "linear":
        lines.append("MLPs       linear: edges into an MLP are first-order (its Jacobian at the prompt); what that "
                     "leaves out is each MLP's remainder, a leaf")
    f = s.get("faithfulness")

    def share(v):
        return "n/a" if v is None else f"{v:.1%}"

    if f and f["n_features_kept"] + f["n_features_ablated"]:
        lines.append(f"real model keeps {share(f['kept_zero'])} of the target with only the graph's "
                     f"{f['n_features_kept']} features (zero-ablating {f['n_features_ablated']}; "
                     f"{share(f['floor_zero'])} with none), {share(f['kept_mean'])} mean-ablating "
                     f"({share(f['floor_mean'])} with none)")
    if f and f.get("correlation") is not None:
        lines.append(f"one node at a time: the graph's predicted change vs the real one, correlation "
                     f"{f['correlation']:.3f} over the top {len(f['one_at_a_time'])}")
    lines.append("top nodes by effect on the target (what removing it in the frozen model takes away):")
    real = {r["node"]: r["real"] for r in (f or {}).get("one_at_a_time", [])}
    for n in s["top_nodes"]:
        extra = f"   real model: {real[n['node']]:+.4g}" if n["node"] in real else ""
        lines.append(f"  {n['node']:<18} {n['effect']:+10.4g}{extra}")
    for q in s.get("qk") or []:
        lines.append(f"why L{q['layer']}.H{q['head']} attended from {q['dest']} to {q['src']}: score "
                     f"{q['score']:.4g} (weight {q['pattern']:.3f})")
        for side in ("key", "query"):
            parts = ", ".join(f"{n['node']} {n['value']:+.3g}" for n in q[side]["nodes"][:4])
            lines.append(f"  {side:<5} side: {parts}, rest {q[side]['rest']:+.3g}, constant {q[side]['constant']:+.3g}")
        if q.get("key_contrast") and q["key_contrast"]["nodes"]:
            c = q["key_contrast"]
            parts = ", ".join(f"{n['node']} {n['value']:+.3g}" for n in c["nodes"][:4])
            lines.append(f"  vs the other sources (score {c['score_gap']:+.3g} above their mean): {parts}")
    lines.append(f"wrote {s['out']} ({s['bytes'] / 1e3:,.1f} kB)" + (f", {s['png']}" if s.get("png") else "")
                 + (f"; viewer files in {s['viewer']}" if s.get("viewer") else ""))
    return "\n".join(lines)
