"""The attention graph (`attnsae.graph`): exact on random models and the reference model, odd shapes included; every
node's effect equals what removing it from the frozen model takes away (a forward pass, not the edges); targets;
pruning as circuit-tracer's dense code does it; the file closes from itself."""

from __future__ import annotations

import json

import pytest
import torch

from attnsae.errors import AttnsaeError
from attnsae.graph.build import build, build_from
from attnsae.graph.files import closure_of, graph_dict
from attnsae.graph.frozen import FrozenPrompt, measured_removals
from attnsae.graph.graph import KINDS
from attnsae.graph.prune import prune, scores
from attnsae.graph.target import TargetSpec, resolve
from conftest import make_gpt2_dir, make_llama_dir, random_sae

PROMPT = "def area(r):\n    return 3.14 * r * r\n\nprint(area(2))"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from attnsae.models import load_model

    root = tmp_path_factory.mktemp("graph_models")
    return {"gpt2": load_model(make_gpt2_dir(root / "gpt2", n_layer=3)),
            "one_head": load_model(make_gpt2_dir(root / "one_head", n_layer=2, n_head=1)),
            "llama_gqa": load_model(make_llama_dir(root / "llama"))}


def _removal_matches_effects(model, saes: dict, tokens, spec=TargetSpec(), per_kind: int = 3, mlp: str = "leaf"
                             ) -> int:
    """Build the graph, then remove nodes of every kind one at a time from the frozen model: the target moves by
    each node's effect. Also: every reader closes and the parts sum to the target. Returns the nodes checked."""
    fp = FrozenPrompt(model, saes, tokens, mlp)
    tgt = resolve(spec, fp, model.tokenizer)
    g = build_from(model, fp, tgt, progress=False)
    assert g.closure < 1e-4
    d = g.decomposition()
    assert sum(v for k, v in d.items() if k != "total") == pytest.approx(d["total"], rel=1e-4, abs=1e-4)
    base = float(tgt.frozen_value(fp))
    assert base == pytest.approx(tgt.value, rel=1e-4, abs=1e-4)  # the frozen run is the model on the prompt
    checked = measured_removals(fp, tgt, g, KINDS[:-1], per_kind)
    for i, moved in checked:
        assert moved == pytest.approx(float(g.effect[i]), rel=1e-3, abs=1e-4 * (abs(base) + 1)), g.name(i)
    return len(checked)


@pytest.mark.parametrize("name", ["gpt2", "one_head", "llama_gqa"])
@pytest.mark.parametrize("sae_layers", [(), (1,), (0, 1)])
@pytest.mark.parametrize("mlp", ["leaf", "linear"])
def test_removing_a_node_moves_the_target_by_its_effect(models, name, sae_layers, mlp):
    model = models[name]
    saes = {l: random_sae(model, l, d_sae=48, seed=l, architecture="topk" if l else "relu", k=6)
            for l in sae_layers}
    tokens = model.to_tokens(PROMPT)[:, :20]
    assert _removal_matches_effects(model, saes, tokens, mlp=mlp) >= 8


def test_linear_mlps_carry_what_reaches_them_and_leave_the_users_model_alone(models):
    model = models["gpt2"]
    tokens = model.to_tokens(PROMPT)[:, :20]
    fp = FrozenPrompt(model, {}, tokens, "linear")
    for l in range(fp.n_layers):  # J y0 + r is the MLP's output; J is the Jacobian with ln2's scale frozen
        torch.testing.assert_close(fp.mlp_lin[l] + fp.mlp_rest[l], fp.mlp[l])
        y = fp.mlp_y0[l] + 1e-3 * torch.randn_like(fp.mlp_y0[l])
        first_order = fp.mlp[l] + fp.mlp_jvp(l, y - fp.mlp_y0[l])
        assert float((fp.mlp_fn[l](y) - first_order).abs().max()) < 1e-4
    g = build_from(model, fp, resolve(TargetSpec(), fp, model.tokenizer), progress=False)
    assert bool(g.readers[g.is_kind("mlp")].all()) and int((g.dst[:, None] == g.is_kind("mlp").nonzero()[:, 0]).sum())
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(AttnsaeError, match="--mlp must be leaf or linear"):
        FrozenPrompt(model, {}, tokens, "gated")


def test_batch_of_one_token_and_a_feature_target(models):
    model = models["gpt2"]
    sae = random_sae(model, 2, d_sae=48, seed=3)
    bos = model.to_tokens("")[:, :1]  # length 1: the BOS alone
    _removal_matches_effects(model, {1: random_sae(model, 1, d_sae=48)}, bos)
    tokens = model.to_tokens(PROMPT)[:, :16]
    fp = FrozenPrompt(model, {2: sae}, tokens)
    pos, j = (int(v) for v in fp.saes[2].active.nonzero()[-1])
    spec = TargetSpec.parse([f"2/{j}@{pos}"])
    _removal_matches_effects(model, {0: random_sae(model, 0, d_sae=48), 2: sae}, tokens, spec)
    g = build(model, {2: sae}, tokens, spec, progress=False)
    assert g.target["value"] == pytest.approx(float(fp.saes[2].pre[pos, j]))
    assert int(g.layer[g.is_kind("feature", "head", "error", "mlp")].max()) == 1  # only layers below the feature
    assert int(g.pos.max()) == pos  # only positions that can reach it


def test_logit_difference_target(models):
    model = models["gpt2"]
    tokens = model.to_tokens(PROMPT)
    a, b = model.tokenizer.decode([300]), model.tokenizer.decode([301])
    spec = TargetSpec.parse([a, "-", b])
    _removal_matches_effects(model, {}, tokens, spec, per_kind=2)
    g = build(model, [], tokens, spec, progress=False)
    logits = model(tokens)[0, -1]
    assert g.target["kind"] == "logit_diff"
    assert g.target["value"] == pytest.approx(float(logits[300] - logits[301]), rel=1e-4)


def test_bad_targets_are_one_line_each(models):
    model = models["gpt2"]
    tokens = model.to_tokens(PROMPT)
    fp = FrozenPrompt(model, {1: random_sae(model, 1, d_sae=48)}, tokens)
    quiet = int((~fp.saes[1].active).nonzero()[0, 1])
    for words, needle in [(["w1 w2 w3 w4"], "not one"), ([" x", "-", " x"], "same token"),
                          (["1/9999@2"], "out of range"), (["2/3@1"], "no SAE for layer 2"),
                          (["1/0@99"], "out of range"), ([f"1/{quiet}@0"], "does not fire"),
                          (["a", "b"], "--target must be")]:
        with pytest.raises(AttnsaeError, match=needle) as e:
            resolve(TargetSpec.parse(words), fp, model.tokenizer)
        assert "\n" not in str(e.value)


def test_the_reference_model_graph_is_exact_and_its_file_closes(ref_model, tmp_path):
    saes = {0: random_sae(ref_model, 0, d_sae=256, seed=1, architecture="topk", k=16),
            1: random_sae(ref_model, 1, d_sae=256, seed=2, architecture="topk", k=16)}
    tokens = ref_model.to_tokens(PROMPT)
    _removal_matches_effects(ref_model, saes, tokens, per_kind=2)
    g = build(ref_model, saes, tokens, progress=False)
    path = tmp_path / "g.json"
    path.write_text(json.dumps(graph_dict(g, prune(g, 1, 1), 1, 1)))
    worst, n = closure_of(json.loads(path.read_text()))
    assert n == int(g.is_kind("feature", "head", "target").sum()) and worst < 1e-5
    small = graph_dict(g, prune(g), 0.8, 0.98)
    assert 0 < small["pruning"]["nodes"] < g.n_nodes and closure_of(small) == (0.0, 0)


# ----------------------------------------------------------------------------------------------- pruning


def _dense_prune(A: torch.Tensor, seed: torch.Tensor, always: torch.Tensor, readers: torch.Tensor,
                 node_threshold: float, edge_threshold: float):
    """circuit-tracer 0.5.0's prune_graph, dense, transcribed for one target (its logit_weights = seed)."""
    def normalize(m):
        m = m.abs()
        return m / m.sum(1, keepdim=True).clamp(min=1e-10)

    def influence(m, w):
        cur = w @ m
        total = cur.clone()
        while cur.any():
            cur = cur @ m
            total += cur
        return total

    def threshold(s, t):
        s = torch.sort(s, descending=True).values
        c = torch.cumsum(s, 0) / s.sum()
        return s[min(int(torch.searchsorted(c, t)), len(c) - 1)]

    infl = influence(normalize(A), seed)
    node_mask = (infl >= threshold(infl, node_threshold)) | always
    P = A.clone()
    P[~node_mask] = 0
    P[:, ~node_mask] = 0
    nP = normalize(P)
    edge_scores = nP * (influence(nP, seed) + seed)[:, None]
    edge_mask = edge_scores >= threshold(edge_scores.flatten(), edge_threshold)
    old = node_mask.clone()
    node_mask &= always | edge_mask.any(0)
    node_mask &= ~readers | edge_mask.any(1)
    while not torch.equal(node_mask, old):
        old = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask &= always | edge_mask.any(0)
        node_mask &= ~readers | edge_mask.any(1)
    return node_mask, edge_mask & (A != 0)


@pytest.mark.parametrize("thresholds", [(0.8, 0.98), (0.5, 0.9), (0.95, 0.5)])
def test_pruning_is_circuit_tracers(models, thresholds):
    model = models["gpt2"]
    g = build(model, {1: random_sae(model, 1, d_sae=48)}, model.to_tokens(PROMPT), progress=False)
    A = torch.zeros(g.n_nodes, g.n_nodes, dtype=torch.float64)
    A[g.dst, g.src] = g.weight.double()
    seed = torch.zeros(g.n_nodes, dtype=torch.float64)
    seed[g.target_id] = 1
    nodes, edges = _dense_prune(A, seed, g.is_kind("token", "position", "target"), g.is_kind("feature", "head"),
                                *thresholds)
    got = prune(g, *thresholds)
    assert torch.equal(got.node_mask, nodes)
    assert torch.equal(got.edge_mask, edges[g.dst, g.src] & nodes[g.src] & nodes[g.dst])
    assert 0 < int(got.node_mask.sum()) < g.n_nodes


def test_thresholds_of_one_keep_everything_and_scores_are_shares(models):
    model = models["gpt2"]
    g = build(model, {1: random_sae(model, 1, d_sae=48)}, model.to_tokens(PROMPT), progress=False)
    r = prune(g, 1, 1)
    assert bool(r.node_mask.all()) and bool(r.edge_mask.all())
    s = scores(g)
    assert 0 <= s["replacement"] <= 1 and 0 <= s["completeness"] <= 1
    shares = [v for k, v in s.items() if k.startswith("influence_share_")]
    assert sum(shares) == pytest.approx(1) and s["influence_share_error"] > 0
    for bad in (0, 1.5, -0.1):
        with pytest.raises(AttnsaeError, match="must be in"):
            prune(g, bad, 0.9)


# ----------------------------------------------------------------------------------------------- QK


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_an_attention_score_splits_exactly_over_the_nodes_at_each_end(models, name):
    from attnsae.graph.qk import QKLayer, qk_split, top_edge_heads
    from attnsae.models.hooks import capture

    model = models[name]
    tokens = model.to_tokens(PROMPT)[:, :18]
    fp = FrozenPrompt(model, {1: random_sae(model, 1, d_sae=48)}, tokens)
    g = build_from(model, fp, resolve(TargetSpec(), fp, model.tokenizer), progress=False)
    keys = top_edge_heads(fp, g, torch.arange(g.n_edges), 4)
    assert len(keys) == 4 and all(0 <= s <= t for _, _, t, s in keys)
    layers: dict = {}
    for l, h, t, s in keys + [(0, 0, 17, 3), (1, 1, 5, 5)]:
        r = qk_split(model, fp, g, l, h, t, s, top=1000, layers=layers)
        want = float(capture(model, tokens, [f"blocks.{l}.attn.hook_attn_scores"])[
            f"blocks.{l}.attn.hook_attn_scores"][0, h, t, s])
        assert r["score"] == pytest.approx(want, rel=1e-4, abs=1e-5)
        for side in ("key", "query"):
            total = sum(n["value"] for n in r[side]["nodes"]) + r[side]["constant"]
            assert r[side]["closes"] and total == pytest.approx(want, rel=1e-3, abs=1e-4)
            assert r[side]["rest"] == 0.0
    assert isinstance(layers[1], QKLayer)
    c = r["key_contrast"]  # the contrast's parts sum to how far the source's score rises above the others' mean
    full = qk_split(model, fp, g, 1, 1, 5, 5, top=10_000, layers=layers)["key_contrast"]
    assert sum(n["value"] for n in full["nodes"]) == pytest.approx(full["score_gap"], rel=1e-3, abs=1e-4)
    assert c["nodes"] and isinstance(c["score_gap"], float)
    with pytest.raises(AttnsaeError, match="no score"):
        qk_split(model, fp, g, 1, 0, 2, 5)


# ----------------------------------------------------------------------------------------------- induction


INDUCTION = ["result = compute_matrix(alpha, gamma)\nprint(result)\nresult = compute_matrix(alpha,",
             "def load_widget(path, mode):\n    pass\n\nload_widget(path,",
             "value = table.lookup(key, default)\nother = table.lookup(key,",
             "for item in sorted(records, key=lambda r: r.stamp):\n    print(item)\nfor item in sorted(records,"]


@pytest.mark.parametrize("prompt", INDUCTION)
def test_induction_graph_pins_the_card_heads(ref_model, prompt):
    """docs/graphs.md: on the reference model the token after the earlier copy reaches its logit through the induction
    heads, and what made them attend there is led by the strongest previous-token head, as the model card measures
    them (heads only, --mlp linear, the target the token after the earlier copy)."""
    from attnsae.attribution.inputs import tokenize
    from attnsae.graph.qk import qk_split
    from attnsae.models import REFERENCE_DIR

    scores = json.loads((REFERENCE_DIR / "card.json").read_text())["heads"]
    induction = {h for h, v in enumerate(scores["induction"][1]) if v > 0.5}
    previous = max(range(len(scores["previous_token"][0])), key=scores["previous_token"][0].__getitem__)
    tokens = tokenize(ref_model, prompt)[0]
    ids = tokens[0].tolist()
    T = len(ids) - 1
    src = [s for s in range(1, T) if ids[s - 1] == ids[T]][-1]  # the token after the earlier copy
    fp = FrozenPrompt(ref_model, {}, tokens, "linear")
    tgt = resolve(TargetSpec.parse([ref_model.tokenizer.decode([ids[src]])]), fp, ref_model.tokenizer)
    g = build_from(ref_model, fp, tgt, progress=False)
    heads = (g.is_kind("head") & (g.layer == 1) & (g.pos == T)).nonzero()[:, 0]
    ranked = [int(g.index[i]) for i in heads[g.effect[heads].argsort(descending=True)]]
    assert set(ranked[:2]) <= induction, ranked
    assert float(fp.A[1][ranked[0], T, src]) > 0.25
    contrast = qk_split(ref_model, fp, g, 1, ranked[0], T, src, top=8)["key_contrast"]["nodes"]
    assert [n["node"] for n in contrast if n["node"].startswith("L0.H")][0] == f"L0.H{previous}"
