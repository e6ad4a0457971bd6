"""Anthropic resampling of dead features (PAPER_NOTES §2).

Features whose firing frequency over the last ``resample_window`` steps is at most ``dead_cutoff`` get, for an input
``x`` drawn with probability proportional to its squared reconstruction loss, squared:

* a new decoder row ``normalise(x − b_dec)`` (``x`` itself when the SAE does not subtract ``b_dec`` from its input);
* a new encoder column: that direction × 0.2 × the mean norm of the live encoder columns;
* ``b_enc = 0``; a JumpReLU threshold back to its initial value;
* their Adam moments zeroed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnsae.sae.model import SAE


@torch.no_grad()
def resample_probabilities(sae: SAE, inputs: Tensor) -> Tensor:
    """The sampling distribution over ``inputs [n, d_in]``: ``loss² / Σ loss²`` with loss = squared error: [n]."""
    losses = torch.cat([(x - sae(x).x_hat).pow(2).sum(-1) for x in inputs.split(4096)])
    p = losses.pow(2)
    return p / p.sum() if float(p.sum()) > 0 else p


@torch.no_grad()
def resample_dead(sae: SAE, opt: torch.optim.Optimizer, dead: Tensor, inputs: Tensor,
                  generator: torch.Generator) -> int:
    """Resample the features ``dead [d_sae] bool`` from ``inputs [n, d_in]``; returns how many were resampled."""
    idx = dead.nonzero()[:, 0]
    if len(idx) == 0:
        return 0
    p = resample_probabilities(sae, inputs)
    if float(p.sum()) <= 0:
        return 0
    pick = torch.multinomial(p.cpu(), len(idx), replacement=len(idx) > len(p), generator=generator).to(inputs.device)
    x = inputs[pick] - sae.b_dec if sae.cfg.apply_b_dec_to_input else inputs[pick]
    direction = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [n_dead, d_in]
    live = ~dead
    enc_norm = sae.W_enc[:, live].norm(dim=0).mean() if live.any() else torch.tensor(1.0)
    sae.W_dec[idx] = direction
    sae.W_enc[:, idx] = (direction * enc_norm * 0.2).T
    sae.b_enc[idx] = 0.0
    rows = [(sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))]
    if sae.cfg.architecture == "jumprelu":
        sae.log_threshold[idx] = math.log(sae.cfg.jumprelu_init_threshold)
        rows.append((sae.log_threshold, (idx,)))
    for param, where in rows:
        state = opt.state.get(param)
        if state:
            state["exp_avg"][where] = 0.0
            state["exp_avg_sq"][where] = 0.0
    return len(idx)
