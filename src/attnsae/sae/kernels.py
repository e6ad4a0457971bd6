"""The fast path for TopK SAEs (and sparse ReLU batches): forward and backward that touch only the k active latents.

With ``idx [batch, k]`` chosen from dense pre-activations computed without autograd, the two sparse products of a
TopK SAE are

* ``gather_pre``: ``vals = pre.gather(idx)`` whose backward sends ``grad_vals`` to ``W_enc`` / ``b_enc`` / the
  input through a CSR matrix ``S [batch, d_sae]`` with k entries a row (``grad_W_enc = (S^T @ xc)^T``);
* ``sparse_decode``: ``x_hat = sum_j acts[:, j] * W_dec[idx[:, j]] + b_dec`` (``F.embedding_bag`` forward) whose
  backward is ``grad_W_dec = S^T @ grad_out`` (CSR) and ``grad_acts[b, j] = W_dec[idx[b, j]] . grad_out[b]``
  (gathered in row chunks to bound memory; for small ``d_sae`` one dense product and a gather is faster).

So a training step costs one dense ``[batch, d_in] x [d_in, d_sae]`` product (the encoder's forward) plus O(batch *
k * d_in) work, instead of five dense products. ``dense_reference`` is the plain-torch equivalent the tests compare
against. A trained ReLU SAE is sparse too: :func:`relu_forward` takes the same path with ``k`` the busiest row's
active count, and gives the dense ReLU's values and gradients.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
GATHER_CHUNK = 512  # rows of the batch per gathered [chunk, k, d_in] block in sparse_decode's backward
DENSE_GRAD_MAX_D_SAE = 4096  # up to this width one dense [batch, d_in] x [d_in, d_sae] product is faster (CPU)
RELU_MAX_DENSITY = 0.05  # a ReLU batch takes the sparse path while its busiest row has at most this share active


def _csr(idx: Tensor, values: Tensor, n_cols: int) -> Tensor:
    """CSR matrix ``[batch, n_cols]`` with ``values[b, j]`` at column ``idx[b, j]`` (k entries per row)."""
    B, k = idx.shape
    crow = torch.arange(0, B * k + 1, k, device=idx.device)
    return torch.sparse_csr_tensor(crow, idx.reshape(-1), values.reshape(-1), (B, n_cols), check_invariants=False)


def _csr_t_mm(idx: Tensor, values: Tensor, n_cols: int, dense: Tensor) -> Tensor:
    """``S^T @ dense`` for ``S = _csr(idx, values)``: ``[n_cols, dense.shape[1]]``.

    ``S^T`` is built as a COO matrix (row ``idx[b, j]``, column ``b``): converting the CSR ``S`` to a transposed CSR
    sorts its ``batch * k`` entries, which took 3-6x longer on CPU than the whole product through COO.
    """
    B, k = idx.shape
    rows = torch.arange(B, device=idx.device).repeat_interleave(k)
    st = torch.sparse_coo_tensor(torch.stack([idx.reshape(-1), rows]), values.reshape(-1), (n_cols, B),
                                 check_invariants=False)
    return torch.sparse.mm(st, dense)


class GatherPre(torch.autograd.Function):
    """``vals [batch, k] = (xc @ W_enc + b_enc).gather(-1, idx)``, with ``pre`` precomputed (no recompute)."""

    @staticmethod
    def forward(ctx, xc: Tensor, W_enc: Tensor, b_enc: Tensor, idx: Tensor, pre: Tensor) -> Tensor:
        ctx.save_for_backward(xc, W_enc, idx)
        return pre.gather(-1, idx)

    @staticmethod
    def backward(ctx, grad_vals: Tensor):
        xc, W_enc, idx = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        grad_xc = grad_W = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_W = _csr_t_mm(idx, grad_vals, d_sae, xc).t()  # [d_in, d_sae]
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(d_sae, dtype=grad_vals.dtype, device=grad_vals.device)
            grad_b.index_add_(0, idx.reshape(-1), grad_vals.reshape(-1))
        if ctx.needs_input_grad[0]:
            grad_xc = torch.mm(_csr(idx, grad_vals, d_sae), W_enc.t())  # [batch, d_in]
        return grad_xc, grad_W, grad_b, None, None


class SparseDecode(torch.autograd.Function):
    """``x_hat [batch, d_in] = sum_j acts[:, j] * W_dec[idx[:, j]]`` (no bias)."""

    @staticmethod
    def forward(ctx, idx: Tensor, acts: Tensor, W_dec: Tensor) -> Tensor:
        ctx.save_for_backward(idx, acts, W_dec)
        return F.embedding_bag(idx, W_dec, per_sample_weights=acts, mode="sum")

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        idx, acts, W_dec = ctx.saved_tensors
        grad_acts = grad_W = None
        if ctx.needs_input_grad[2]:
            grad_W = _csr_t_mm(idx, acts, W_dec.shape[0], grad_out)  # [d_sae, d_in]
        if ctx.needs_input_grad[1] and W_dec.shape[0] <= DENSE_GRAD_MAX_D_SAE:
            grad_acts = (grad_out @ W_dec.t()).gather(-1, idx)
        elif ctx.needs_input_grad[1]:
            grad_acts = torch.empty_like(acts)
            for s in range(0, len(idx), GATHER_CHUNK):
                rows = W_dec[idx[s:s + GATHER_CHUNK]]  # [chunk, k, d_in]
                grad_acts[s:s + GATHER_CHUNK] = torch.bmm(rows, grad_out[s:s + GATHER_CHUNK, :, None])[..., 0]
        return None, grad_acts, grad_W


def topk_forward(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, k: int,
                 apply_b_dec_to_input: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """TopK SAE forward with the sparse backward. x: ``[batch, d_in]``.

    Returns ``(x_hat [batch, d_in], acts [batch, k] >= 0, idx [batch, k], pre [batch, d_sae] detached)``.
    """
    xc = x - b_dec if apply_b_dec_to_input else x
    with torch.no_grad():
        pre = torch.addmm(b_enc, xc, W_enc)
        idx = pre.topk(k, dim=-1, sorted=False).indices
    acts = F.relu(GatherPre.apply(xc, W_enc, b_enc, idx, pre))
    x_hat = SparseDecode.apply(idx, acts, W_dec) + b_dec
    return x_hat, acts, idx, pre


def relu_forward(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor,
                 apply_b_dec_to_input: bool = True,
                 max_density: float = RELU_MAX_DENSITY) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """ReLU SAE forward, through the same sparse kernels when the batch is sparse enough. x: ``[batch, d_in]``.

    With ``k`` the most latents active on any row, every row's active latents are among its top-``k``
    pre-activations and the others of those ``k`` are ``<= 0``: ReLU makes them 0 and passes them no gradient, so
    values and gradients are the dense ReLU SAE's. Returns ``(x_hat, acts [batch, k], idx [batch, k], pre)`` as
    :func:`topk_forward` when ``k <= max_density * d_sae``, else the dense forward ``(x_hat, f [batch, d_sae], None,
    pre)``; the encoder product is computed once either way.
    """
    xc = x - b_dec if apply_b_dec_to_input else x
    pre = torch.addmm(b_enc, xc, W_enc)  # [batch, d_sae], with autograd in case the batch is dense
    with torch.no_grad():
        k = int((pre > 0).sum(-1).max())
    if k > max_density * W_enc.shape[1]:
        f = F.relu(pre)
        return f @ W_dec + b_dec, f, None, pre
    pre = pre.detach()
    idx = pre.topk(max(k, 1), dim=-1, sorted=False).indices
    acts = F.relu(GatherPre.apply(xc, W_enc, b_enc, idx, pre))
    return SparseDecode.apply(idx, acts, W_dec) + b_dec, acts, idx, pre


def latents_forward(xc: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, idx: Tensor, pre: Tensor) -> Tensor:
    """Decode from chosen latents ``idx [batch, k]`` with gradients to the encoder and decoder (AuxK uses this):
    ``sum_j relu(pre[b, idx[b, j]]) * W_dec[idx[b, j]]`` -> ``[batch, d_in]``."""
    acts = F.relu(GatherPre.apply(xc, W_enc, b_enc, idx, pre))
    return SparseDecode.apply(idx, acts, W_dec)


def dense_reference(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, k: int,
                    apply_b_dec_to_input: bool = True) -> tuple[Tensor, Tensor]:
    """Plain-torch TopK SAE (dense everywhere): ``(x_hat [batch, d_in], f [batch, d_sae])``."""
    xc = x - b_dec if apply_b_dec_to_input else x
    pre = xc @ W_enc + b_enc
    vals, idx = pre.topk(k, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))
    return f @ W_dec + b_dec, f
