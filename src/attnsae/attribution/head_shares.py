"""Weight-based head attribution: how much of each feature's decoder row lives in each head.

Split decoder row ``d_i`` [d_in] into per-head chunks ``d_{i,k}`` [d_head]; the share of head ``k`` is
``h_{i,k} = ||d_{i,k}|| / Σ_j ||d_{i,j}||`` (rows sum to 1; an all-zero row gets all-zero shares). Per head, the top
features by share (the paper's head-polysemanticity study reads the top 10).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnsae.errors import AttnsaeError
from attnsae.sae.model import SAE


@dataclass
class HeadAttribution:
    """``shares [d_sae, n_heads]``; per head its ``top_features`` / ``top_shares`` ``[n_heads, k]`` (best first)."""

    shares: Tensor
    top_features: Tensor
    top_shares: Tensor

    def to_dict(self) -> dict:
        return {"shares": self.shares.tolist(), "top_features": self.top_features.tolist(),
                "top_shares": self.top_shares.tolist()}


@torch.no_grad()
def head_shares(sae: SAE, n_heads: int) -> Tensor:
    """``h_{i,k}``: float32 [d_sae, n_heads]."""
    if n_heads < 1 or sae.cfg.d_in % n_heads:
        raise AttnsaeError(f"the SAE's d_in {sae.cfg.d_in} does not split into {n_heads} heads")
    norms = sae.W_dec.detach().float().reshape(sae.cfg.d_sae, n_heads, -1).norm(dim=-1)  # [d_sae, n_heads]
    total = norms.sum(-1, keepdim=True)
    return torch.where(total > 0, norms / total.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(norms))


@torch.no_grad()
def head_attribution(sae: SAE, n_heads: int, k: int = 10) -> HeadAttribution:
    """Every feature's share per head and each head's top-``k`` features by share."""
    shares = head_shares(sae, n_heads)
    k = min(k, sae.cfg.d_sae)
    top = shares.T.topk(k, dim=-1)  # [n_heads, k]
    return HeadAttribution(shares=shares, top_features=top.indices, top_shares=top.values)
