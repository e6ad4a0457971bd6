"""Which token positions feed a feature at S2: its DFA by source position on the IOI prompts, grouped by role.

For each feature and each prompt, :func:`attnsae.attribution.dfa.dfa_from_activations` splits the feature's
pre-activation at that prompt's S2 into per-source terms ``DFA(S2, s)`` ([pos]); each source position is named by
its role in that prompt (BOS, IO, S1, AND, S1+1, S2, other: the first that applies, in that order), and terms are
summed per role, then averaged over the prompts where the feature fires (per order too). A positional
"duplicate relative to ' and'" feature reads S1 and the tokens around AND; an induction-like one reads S1+1.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from attnsae.attribution.dfa import attn_activations, dfa_from_activations
from attnsae.models import check_tokens
from attnsae.sae.checks import check_sae
from attnsae.sae.model import SAE
from attnsae.studies.ioi.dataset import IOIDataset

SOURCE_ROLES = ("BOS", "IO", "S1", "AND", "S1+1", "S2", "other")


def source_roles(ds: IOIDataset) -> Tensor:
    """The role of every (prompt, source position): int64 [n, pos] indexing SOURCE_ROLES (padding: "other")."""
    n, S = ds.tokens.shape
    roles = torch.full((n, S), SOURCE_ROLES.index("other"), dtype=torch.long)
    b = torch.arange(n)
    for name, pos in reversed([("BOS", torch.zeros(n, dtype=torch.long)), ("IO", ds.pos["IO"]),
                               ("S1", ds.pos["S1"]), ("AND", ds.pos["AND"]), ("S1+1", ds.pos["S1"] + 1),
                               ("S2", ds.pos["S2"])]):  # reversed: earlier roles win
        roles[b, pos.clamp(max=S - 1)] = SOURCE_ROLES.index(name)
    return roles


@torch.no_grad()
def dfa_by_role(model, sae: SAE, ds: IOIDataset, features: Sequence[int], role: str = "S2") -> list[dict]:
    """DFA at each prompt's ``role`` position for ``features``, summed per source role.

    Returns one dict per feature: ``{feature, n_active, by_role: {group: {source role: mean DFA}}, by_src: [n, pos]
    (DFA per source position in each prompt, zero past its length), pre_act: [n], bias}`` where group is "all" or an
    order, over the prompts where the feature fires at ``role`` (all prompts if it never does).
    """
    layer = check_sae(model, sae)
    features = [int(f) for f in features]
    if not features:
        return []
    acts = attn_activations(model, check_tokens(model, ds.tokens), layer, ds.lengths)
    n = len(ds)
    b = torch.arange(n).repeat(len(features))
    dest = ds.pos[role].repeat(len(features))
    feat = torch.tensor(features).repeat_interleave(n)
    res = dfa_from_activations(acts, sae, entries=(b, dest, feat))
    roles = source_roles(ds)  # [n, pos]
    out = []
    for j, f in enumerate(features):
        sl = slice(j * n, (j + 1) * n)
        by_src, act = res.by_src[sl], res.act[sl]  # [n, pos], [n]
        per_role = torch.zeros(n, len(SOURCE_ROLES)).scatter_add_(1, roles, by_src)  # [n, n_roles]
        fired = act > 0
        groups = {"all": torch.ones(n, dtype=torch.bool)}
        for o in sorted(set(ds.orders)):
            groups[o] = torch.tensor([x == o for x in ds.orders])
        by_role = {}
        for g, m in groups.items():
            sel = m & fired if bool((m & fired).any()) else m
            by_role[g] = dict(zip(SOURCE_ROLES, per_role[sel].mean(0).tolist()))
        out.append({"feature": f, "layer": layer, "n_active": int(fired.sum()), "by_role": by_role,
                    "by_src": by_src.tolist(), "pre_act": res.pre_act[sl].tolist(), "bias": float(res.bias[sl][0])})
    return out
