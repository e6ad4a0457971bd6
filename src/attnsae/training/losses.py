"""The training losses of one SAE on a batch (PAPER_NOTES §2, and the TopK / JumpReLU / BatchTopK variants).

* ``mse``: squared error summed over dims, mean over the batch (all architectures);
* ``l1`` (relu): the paper's ``l1_coeff * sum |f|``, mean over the batch, *not* weighted by decoder row norms
  (SAELens' variant): the paper keeps the rows at unit norm instead, so the penalty cannot be dodged by shrinking
  ``f`` and growing a row;
* ``auxk`` (topk, batchtopk, matryoshka): ``aux_coeff * AuxK`` (Gao et al. 2024): reconstruct the detached residual
  from the top ``aux_k`` dead latents only, normalised by the residual's variance;
* ``inner_mse`` (matryoshka): the ``mse`` of the reconstruction from each prefix ``matryoshka_widths[:-1]`` of the
  latents, summed (the whole SAE's is ``mse``), as SAELens' ``MatryoshkaBatchTopKTrainingSAE`` adds them;
* ``l0`` (jumprelu): ``l0_coeff * L0`` with the straight-through :class:`attnsae.sae.model.Heaviside`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from attnsae.sae import BATCH_TOPK, K_ARCHITECTURES, kernels
from attnsae.sae.functions import Heaviside
from attnsae.sae.model import SAE
from attnsae.training.config import SAESpec


@dataclass
class StepOutput:
    loss: Tensor  # scalar: the sum of parts
    parts: dict[str, Tensor]  # named loss terms, already weighted
    x_hat: Tensor  # [batch, d_in]
    fired: Tensor  # [d_sae]: tokens of the batch on which each latent fired
    l0: Tensor  # scalar: mean active latents per token
    min_act: Tensor | None = None  # batchtopk, matryoshka: the smallest activation kept (inf: none), for the threshold


Reduce = Callable[[Tensor], Tensor]


def local(t: Tensor) -> Tensor:
    return t


def variance(x: Tensor, mean: Reduce = local) -> Tensor:
    """Total variance of the rows of ``x [batch, d]`` about their mean: scalar. ``mean`` averages a tensor over the
    data-parallel replicas (:meth:`attnsae.training.distributed.Comm.mean`), so each replica's ``x`` being a share
    of one global batch gives that batch's variance."""
    return mean((x - mean(x.mean(0))).pow(2).sum(-1).mean())


def sae_loss(sae: SAE, spec: SAESpec, x: Tensor, dead: Tensor | None, sparsity_scale: float = 1.0,
             sparse_kernel: bool = True, mean: Reduce = local) -> StepOutput:
    """Loss of one SAE on ``x [batch, d_in]``; ``dead [d_sae]`` bool marks the latents AuxK may use (topk).

    Every term is a mean over the rows of ``x`` except AuxK's normaliser, a batch statistic: ``mean`` (see
    :func:`variance`) makes it the global batch's when ``x`` is one data-parallel replica's share."""
    arch = sae.cfg.architecture
    if arch == "topk" and sparse_kernel:
        out = kernels.topk_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.cfg.k,
                                   sae.cfg.apply_b_dec_to_input)
    elif arch == "relu" and sparse_kernel:
        out = kernels.relu_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.cfg.apply_b_dec_to_input)
    elif arch == "jumprelu" and sparse_kernel:
        out = kernels.jumprelu_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.threshold,
                                       sae.cfg.jumprelu_bandwidth, sae.cfg.apply_b_dec_to_input)
    elif arch in BATCH_TOPK:  # the training forward (the SAE's own forward is inference, with the threshold)
        forward = kernels.batchtopk_forward if sparse_kernel else kernels.batchtopk_reference
        out = forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.cfg.k, sae.cfg.matryoshka_widths,
                      sae.cfg.apply_b_dec_to_input)
    else:
        x_hat, f, pre = sae(x)
        out = kernels.KernelOutput(x_hat, f, None, pre)
    x_hat, f, at, pre = out.x_hat, out.acts, out.at, out.pre
    on = f > 0
    if at is not None:  # the active entries only
        fired = torch.bincount(at.cols[on], minlength=sae.d_sae)
        l0 = on.sum() / len(x)
    else:  # dense [batch, d_sae]
        fired = on.sum(0)
        l0 = on.sum(-1).float().mean()
    err = x - x_hat
    parts = {"mse": err.pow(2).sum(-1).mean()}
    if arch == "relu":
        l1 = f.abs().sum() / len(x) if at is not None else f.abs().sum(-1).mean()
        parts["l1"] = spec.l1_coeff * sparsity_scale * l1
    elif arch in K_ARCHITECTURES:
        if out.levels is not None and out.levels.shape[1] > 1:
            parts["inner_mse"] = (x[:, None] - out.levels[:, :-1]).pow(2).sum(-1).mean(0).sum()
        parts["auxk"] = (spec.aux_coeff * auxk_loss(sae, x, pre, err, dead, spec.aux_k, mean) if dead is not None
                         else parts["mse"] * 0)
    else:
        threshold, pre_l0 = (sae.threshold, pre) if at is None else (sae.threshold[at.cols], out.pre_at)
        soft = Heaviside.apply(pre_l0, threshold, sae.cfg.jumprelu_bandwidth)
        l0_soft = soft.sum() / len(x) if at is not None else soft.sum(-1).mean()
        parts["l0"] = spec.l0_coeff * sparsity_scale * l0_soft
    min_act = None
    if arch in BATCH_TOPK:
        kept = f.detach() if at is not None else f.detach()[on]  # the sparse path's entries are all > 0
        min_act = kept.min() if kept.numel() else kept.new_tensor(torch.inf)
    return StepOutput(sum(parts.values()), parts, x_hat, fired, l0, min_act)


def auxk_loss(sae: SAE, x: Tensor, pre: Tensor, err: Tensor, dead: Tensor, aux_k: int | None,
              mean: Reduce = local) -> Tensor:
    """AuxK: reconstruct the (detached) residual ``err [batch, d_in]`` from the top ``aux_k`` dead latents only,
    normalised by the residual's variance (Gao et al. 2024). Zero when no latent is dead."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    k = min(aux_k or sae.d_in // 2, n_dead)
    xc = x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x
    if k == n_dead:  # every dead latent takes part: two small dense products over the dead columns, no top-k
        cols = dead.nonzero().squeeze(1)
        e_hat = F.relu(xc @ sae.W_enc[:, cols] + sae.b_enc[cols]) @ sae.W_dec[cols]
    else:
        with torch.no_grad():
            idx = torch.where(dead, pre, torch.full_like(pre, -torch.inf)).topk(k, dim=-1, sorted=False).indices
        e_hat = kernels.latents_forward(xc, sae.W_enc, sae.b_enc, sae.W_dec, idx, pre.detach())
    e = err.detach()
    return (e_hat - e).pow(2).sum(-1).mean() / variance(e, mean).clamp_min(1e-12)
