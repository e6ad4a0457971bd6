"""RDFA node values checked by the interventions they stand for (closure alone cannot catch a mislabelled term)."""

import pytest
import torch

from attnsae.attribution import rdfa
from conftest import random_sae, random_tokens


@pytest.mark.parametrize("upstream", [False, True], ids=["attn_out_whole", "upstream_sae"])
@torch.no_grad()
def test_rdfa_component_values_are_what_removing_the_component_does(ref_model, upstream):
    """Each component node's value is checked by the intervention it stands for, not by closure: with the layer-1
    attention patterns and ln1 scales frozen at their clean values, remove that component's own value (computed here
    from the cache and the weights) from blocks.1.hook_resid_pre at the node's source position, let only the node's
    head see the change (the other heads' v stay clean), and the root feature's pre-activation moves by exactly
    minus the node's value. The same for upstream SAE feature nodes (f_j · d_j W_O). A component whose label and
    value do not belong together, or a wrong head or position, fails. All interventions run as one batch."""
    m = ref_model
    H, dh = m.cfg.n_heads, m.cfg.d_head
    tokens = random_tokens(1, 8, seed=3)
    S = tokens.shape[1]
    top = random_sae(m, 1, d_sae=48, seed=2)
    up = random_sae(m, 0, d_sae=48, seed=1)
    _, cache = m.run_with_cache(tokens)
    c = {k: v[0] for k, v in cache.items()}

    # every component of blocks.1.hook_resid_pre at every position, by hand: [S, d_model] each
    W_O0 = m.W_O[0].detach().reshape(H * dh, -1)
    comps = {"hook_embed": c["hook_embed"], "hook_pos_embed": c["hook_pos_embed"],
             "blocks.0.hook_mlp_out": c["blocks.0.hook_mlp_out"]}
    feats = {}
    if upstream:
        z0 = c["blocks.0.attn.hook_z"].reshape(S, -1)
        f0 = torch.relu((z0 - up.b_dec) @ up.W_enc + up.b_enc)  # [S, d_sae]
        x_hat0 = f0 @ up.W_dec + up.b_dec
        comps["blocks.0.attn.sae.b_dec"] = (up.b_dec @ W_O0).expand(S, -1)
        comps["blocks.0.attn.sae.error"] = (z0 - x_hat0) @ W_O0
        comps["blocks.0.attn.b_O"] = m.b_O[0].detach().expand(S, -1)
        feats = {j: f0[:, j:j + 1] * (up.W_dec[j] @ W_O0) for j in range(up.cfg.d_sae)}  # [S, d_model]
        assert (f0 > 0).any(-1).all()
    else:
        comps["blocks.0.hook_attn_out"] = c["blocks.0.hook_attn_out"]
    total = sum(comps.values()) + sum(feats.values())
    torch.testing.assert_close(total, c["blocks.1.hook_resid_pre"], rtol=1e-4, atol=1e-4)  # nothing left out

    pre_clean = ((c["blocks.1.attn.hook_z"].reshape(S, -1) - top.b_dec) @ top.W_enc + top.b_enc)  # [S, d_sae]
    feature = int(pre_clean.max(0).values.argmax())
    t = int(pre_clean[:, feature].argmax())
    res = rdfa(m, top, tokens[0], feature, position=t, depth=1, top_k=10_000, upstream_saes=[up] if upstream else [])
    assert res.root.value == pytest.approx(float(pre_clean[t, feature]), rel=1e-5, abs=1e-5)
    heads = res.root.children
    assert len(heads) == (t + 1) * H or len(heads) == S * H  # every (source, head) term is a child

    rows = []  # (source s, head h, vector removed at s, the node's value)
    for hs in heads:
        names = [n.name for n in hs.children if n.kind == "component"]
        assert sorted(names) == sorted(comps)
        for n in hs.children:
            assert n.position == hs.source
            delta = comps[n.name][hs.source] if n.kind == "component" else feats[n.feature][hs.source]
            rows.append((hs.source, hs.head, delta, n.value))
    assert sum(n.kind == "feature" for hs in heads for n in hs.children) >= (len(heads) if upstream else 0)

    B = len(rows)
    src = torch.tensor([r[0] for r in rows])
    head = torch.tensor([r[1] for r in rows])
    delta = torch.stack([r[2] for r in rows])  # [B, d_model]
    v_clean = cache["blocks.1.attn.hook_v"].expand(B, -1, -1, -1)

    def remove(x, hook):
        x = x.clone()
        x[torch.arange(B), src] -= delta
        return x

    def only_the_nodes_head(v, hook):
        keep = torch.nn.functional.one_hot(head, H).bool()[:, None, :, None]  # [B, 1, H, 1]
        return torch.where(keep, v, v_clean)

    out = {}

    def save(z, hook):
        out["z"] = z.detach().clone()
        return z

    m.run_with_hooks(tokens.expand(B, -1), fwd_hooks=[
        ("blocks.1.hook_resid_pre", remove),
        ("blocks.1.ln1.hook_scale", lambda x, hook: cache["blocks.1.ln1.hook_scale"].expand_as(x)),
        ("blocks.1.attn.hook_pattern", lambda x, hook: cache["blocks.1.attn.hook_pattern"].expand_as(x)),
        ("blocks.1.attn.hook_v", only_the_nodes_head),
        ("blocks.1.attn.hook_z", save),
    ], stop_at_layer=2)
    z = out["z"][:, t].reshape(B, -1)
    change = (z - top.b_dec) @ top.W_enc[:, feature] + top.b_enc[feature] - pre_clean[t, feature]  # [B]
    values = torch.tensor([r[3] for r in rows])
    assert values.abs().max() > 1e-2
    torch.testing.assert_close(change, -values, rtol=1e-3, atol=1e-4 * float(values.abs().max()))
