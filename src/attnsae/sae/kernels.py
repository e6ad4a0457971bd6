"""The sparse path for SAE training: forward and backward that touch only the active latents (TopK, BatchTopK and
Matryoshka; ReLU and JumpReLU batches sparse enough).

With the active entries :class:`Active` (``rows``, ``cols``) chosen from dense pre-activations computed without
autograd (a TopK SAE's top k a row; a ReLU or JumpReLU batch's entries with a gradient, any number a row), the two
sparse products are

* ``GatherPre``: ``vals = pre[rows, cols]`` whose backward sends ``grad_vals`` to ``W_enc`` / ``b_enc`` / the
  input through the sparse matrix ``S [batch, d_sae]`` of those entries (``grad_W_enc = (S^T @ xc)^T``);
* ``SparseDecode``: ``x_hat = sum over a row's entries of acts * W_dec[cols] + b_dec`` (``F.embedding_bag``
  forward) whose backward is ``grad_W_dec = S^T @ grad_out`` and ``grad_acts = W_dec[cols] . grad_out[rows]``
  (``torch.sparse.sampled_addmm``: the product computed at the active entries only).

So a training step costs one dense ``[batch, d_in] x [d_in, d_sae]`` product (the encoder's forward) plus
O(nnz * d_in) work (nnz: the active entries), instead of five dense products. ``dense_reference`` is the plain-torch
equivalent the tests compare against. Trained ReLU and JumpReLU SAEs are sparse too: :func:`relu_forward` and
:func:`jumprelu_forward` take the same path over exactly the entries that can carry a gradient (any number a row)
once at most ``SPARSE_MAX_DENSITY`` of a batch's entries are such, and give the dense SAE's values and gradients.
:func:`batchtopk_forward` keeps a batch's top ``k x batch`` entries (:func:`batch_topk`, exact without sorting the
whole batch) and decodes Matryoshka's nested prefixes in the same one pass (:meth:`Active.by_level`);
``batchtopk_reference`` is its plain-torch twin, computed as SAELens does.
Every forward returns a :class:`KernelOutput`. The sparse matrices are valid CSR (columns ascending within a row);
``CHECK_INVARIANTS`` makes PyTorch check each one (the tests turn it on).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from attnsae.sae.functions import JumpReLU

SPARSE_MAX_DENSITY = 0.05  # a ReLU/JumpReLU batch takes the sparse path while at most this share of entries is active
CHECK_INVARIANTS = False  # check every sparse tensor built here (sorted, in range): costly, so for tests
BATCH_TOPK_ROW_FACTOR = 2  # batch_topk's candidates: each row's top (this x k)


class Active:
    """Where a batch's active latents are, row-major: ``rows``/``cols`` int64 ``[nnz]`` (row ``b`` owns entries
    ``crow[b]:crow[b + 1]``), for ``n_rows`` rows of ``n_cols`` latents. Rows may hold different counts."""

    def __init__(self, rows: Tensor, cols: Tensor, crow: Tensor, n_rows: int, n_cols: int) -> None:
        self.rows, self.cols, self.crow, self.n_rows, self.n_cols = rows, cols, crow, n_rows, n_cols

    @classmethod
    def of_entries(cls, rows: Tensor, cols: Tensor, n_rows: int, n_cols: int) -> Active:
        """Entries ``(rows, cols)`` int64 ``[nnz]`` already in row-major order (columns ascending within a row)."""
        crow = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
        crow[1:] = torch.bincount(rows, minlength=n_rows).cumsum(0)
        return cls(rows, cols, crow, n_rows, n_cols)

    @classmethod
    def of_mask(cls, mask: Tensor) -> Active:
        """The ``True`` entries of ``mask [batch, n_cols]`` (one pass: ``nonzero``)."""
        rows, cols = mask.nonzero().unbind(1)
        return cls.of_entries(rows, cols, *mask.shape)

    @classmethod
    def of_flat(cls, flat: Tensor, n_rows: int, n_cols: int) -> Active:
        """The entries at ascending flat indices ``flat [nnz]`` of a ``[n_rows, n_cols]`` matrix."""
        return cls.of_entries(flat.div(n_cols, rounding_mode="floor"), flat.remainder(n_cols), n_rows, n_cols)

    def by_level(self, widths: list[int]) -> Active:
        """The same entries, in the same order, as rows of ``(row, level)`` bags: level ``l`` holds the latents
        ``widths[l - 1] <= col < widths[l]`` (Matryoshka's nested prefixes), row ``row * len(widths) + l``."""
        bounds = torch.tensor(widths[:-1], dtype=self.cols.dtype, device=self.cols.device)
        level = torch.bucketize(self.cols, bounds, right=True)
        return Active.of_entries(self.rows * len(widths) + level, self.cols, self.n_rows * len(widths), self.n_cols)

    @classmethod
    def of_topk(cls, idx: Tensor, n_cols: int) -> Active:
        """``k`` latents a row, ``idx [batch, k]`` sorted ascending within each row (CSR needs it)."""
        B, k = idx.shape
        rows = torch.arange(B, device=idx.device).repeat_interleave(k)
        return cls(rows, idx.reshape(-1), torch.arange(0, B * k + 1, k, device=idx.device), B, n_cols)

    def csr(self, values: Tensor) -> Tensor:
        """The sparse ``[n_rows, n_cols]`` matrix with ``values [nnz]`` at the active entries."""
        with warnings.catch_warnings():  # PyTorch calls CSR "beta" on every construction: not the user's business
            warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
            return torch.sparse_csr_tensor(self.crow, self.cols, values, (self.n_rows, self.n_cols),
                                           check_invariants=CHECK_INVARIANTS)

    def t_mm(self, values: Tensor, dense: Tensor) -> Tensor:
        """``S^T @ dense`` for ``S = csr(values)``: ``[n_cols, dense.shape[1]]``.

        ``S^T`` is built as a COO matrix (row ``cols``, column ``rows``): converting the CSR ``S`` to a transposed CSR
        sorts its entries, which took 3-6x longer on CPU than the whole product through COO.
        """
        st = torch.sparse_coo_tensor(torch.stack([self.cols, self.rows]), values, (self.n_cols, self.n_rows),
                                     check_invariants=CHECK_INVARIANTS)
        return torch.sparse.mm(st, dense)


class GatherPre(torch.autograd.Function):
    """``vals [nnz] = (xc @ W_enc + b_enc)[rows, cols]``, with ``pre`` precomputed (no recompute)."""

    @staticmethod
    def forward(ctx, xc: Tensor, W_enc: Tensor, b_enc: Tensor, at: Active, pre: Tensor) -> Tensor:
        ctx.save_for_backward(xc, W_enc)
        ctx.at = at
        return pre[at.rows, at.cols]

    @staticmethod
    def backward(ctx, grad_vals: Tensor):
        xc, W_enc = ctx.saved_tensors
        at: Active = ctx.at
        grad_xc = grad_W = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_W = at.t_mm(grad_vals, xc).t()  # [d_in, d_sae]
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(at.n_cols, dtype=grad_vals.dtype, device=grad_vals.device)
            grad_b.index_add_(0, at.cols, grad_vals)
        if ctx.needs_input_grad[0]:
            grad_xc = torch.mm(at.csr(grad_vals), W_enc.t())  # [batch, d_in]
        return grad_xc, grad_W, grad_b, None, None


class SparseDecode(torch.autograd.Function):
    """``x_hat [batch, d_in] = sum over a row's entries of acts * W_dec[cols]`` (no bias)."""

    @staticmethod
    def forward(ctx, at: Active, acts: Tensor, W_dec: Tensor) -> Tensor:
        ctx.save_for_backward(acts, W_dec)
        ctx.at = at
        return F.embedding_bag(at.cols, W_dec, at.crow[:-1], per_sample_weights=acts, mode="sum")

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        acts, W_dec = ctx.saved_tensors
        at: Active = ctx.at
        grad_acts = grad_W = None
        if ctx.needs_input_grad[2]:
            grad_W = at.t_mm(acts, grad_out)  # [d_sae, d_in]
        if ctx.needs_input_grad[1]:  # (grad_out @ W_dec^T) at the active entries only
            zeros = at.csr(torch.zeros_like(acts))
            grad_acts = torch.sparse.sampled_addmm(zeros, grad_out, W_dec.t(), beta=0.0).values()
        return None, grad_acts, grad_W


class KernelOutput(NamedTuple):
    """What every forward here returns.

    Sparse path (``at`` set): ``acts`` are the activations at the entries ``at`` (``[nnz]``, row-major) and ``pre_at``
    the pre-activations there (with autograd: JumpReLU's L0 estimator reads them). Dense path (``at`` None: a batch
    too busy for the kernels): ``acts`` is ``[batch, d_sae]`` and ``pre_at`` None. ``pre`` is the dense pre-activation
    ``[batch, d_sae]`` either way (detached on the sparse path; AuxK picks dead latents from it). ``levels`` (BatchTopK
    and Matryoshka): the reconstruction from each prefix ``widths[l]`` of the latents, ``[batch, n_levels, d_in]``,
    the last being ``x_hat``.
    """

    x_hat: Tensor  # [batch, d_in]
    acts: Tensor
    at: Active | None
    pre: Tensor
    pre_at: Tensor | None = None
    levels: Tensor | None = None


def topk_forward(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, k: int,
                 apply_b_dec_to_input: bool = True) -> KernelOutput:
    """TopK SAE forward with the sparse backward. x: ``[batch, d_in]``; ``k`` entries a row (acts ``>= 0``)."""
    xc = x - b_dec if apply_b_dec_to_input else x
    with torch.no_grad():
        pre = torch.addmm(b_enc, xc, W_enc)
        idx = pre.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values  # columns ascending: valid CSR
    at = Active.of_topk(idx, W_enc.shape[1])
    vals = GatherPre.apply(xc, W_enc, b_enc, at, pre)
    acts = F.relu(vals)
    return KernelOutput(SparseDecode.apply(at, acts, W_dec) + b_dec, acts, at, pre, vals)


def relu_forward(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor,
                 apply_b_dec_to_input: bool = True, max_density: float = SPARSE_MAX_DENSITY) -> KernelOutput:
    """ReLU SAE forward, through the sparse kernels when the batch is sparse enough. x: ``[batch, d_in]``.

    Only the active latents (``pre > 0``) carry values and gradients, so the kernels over exactly those give the
    dense ReLU SAE's values and gradients; the path is sparse when at most ``max_density`` of the entries are active.
    The encoder product is computed once either way.
    """
    xc = x - b_dec if apply_b_dec_to_input else x
    pre = torch.addmm(b_enc, xc, W_enc)  # [batch, d_sae], with autograd in case the batch is dense
    with torch.no_grad():
        on = pre > 0
        dense = int(torch.count_nonzero(on)) > max_density * on.numel()
    if dense:
        f = F.relu(pre)
        return KernelOutput(f @ W_dec + b_dec, f, None, pre)
    pre = pre.detach()
    at = Active.of_mask(on)
    acts = GatherPre.apply(xc, W_enc, b_enc, at, pre)  # > 0 already
    return KernelOutput(SparseDecode.apply(at, acts, W_dec) + b_dec, acts, at, pre, acts)


def jumprelu_forward(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, threshold: Tensor,
                     bandwidth: float, apply_b_dec_to_input: bool = True,
                     max_density: float = SPARSE_MAX_DENSITY) -> KernelOutput:
    """JumpReLU SAE forward, through the sparse kernels when the batch is sparse enough. x: ``[batch, d_in]``,
    threshold ``[d_sae]`` (with its autograd: the straight-through estimator reaches it).

    A latent carries a gradient when it is active (``pre > threshold``) or inside the estimator's window
    (``(pre - threshold) / bandwidth > -1/2``, which includes active), so the kernels over those entries give the
    dense JumpReLU SAE's values and gradients; the path is sparse when at most ``max_density`` of the entries are in
    the window.
    """
    xc = x - b_dec if apply_b_dec_to_input else x
    pre = torch.addmm(b_enc, xc, W_enc)
    with torch.no_grad():
        window = ((pre - threshold) / bandwidth) > -0.5  # exactly as the estimator computes it
        dense = int(torch.count_nonzero(window)) > max_density * window.numel()
    if dense:
        f = JumpReLU.apply(pre, threshold, bandwidth)
        return KernelOutput(f @ W_dec + b_dec, f, None, pre)
    at = Active.of_mask(window)
    vals = GatherPre.apply(xc, W_enc, b_enc, at, pre.detach())
    acts = JumpReLU.apply(vals, threshold[at.cols], bandwidth)
    return KernelOutput(SparseDecode.apply(at, acts, W_dec) + b_dec, acts, at, pre.detach(), vals)


def batch_topk(pre: Tensor, n: int, per_row: int) -> Tensor:
    """Ascending flat indices of the ``n`` largest entries of ``pre [batch, d]`` that are > 0: ``relu`` then one top
    ``n`` of the flattened batch, as BatchTopK keeps them (entries at 0 carry neither value nor gradient).

    Exact without a top-n over all ``batch * d`` entries: ``cut``, the n-th largest of every row's top ``per_row``, is
    at most the batch's n-th largest, and a row whose ``per_row``-th value is below ``cut`` has all its entries at or
    above ``cut`` among its top ``per_row``. With no other ("busy") row and no tie at ``cut``, the candidates at or
    above ``cut`` are the batch's top n; else the busy rows give every entry at or above ``cut`` and one top n of
    those candidates decides.
    """
    B, D = pre.shape
    n = min(n, B * D)
    m = min(D, per_row)
    flat_pre = pre.reshape(-1)
    if n >= B * m:  # no fewer candidates than entries to keep: one top-n of the batch
        flat = flat_pre.topk(n, sorted=False).indices
    else:
        vals, idx = pre.topk(m, dim=-1, sorted=False)  # [B, m]
        cut = vals.reshape(-1).kthvalue(B * m - n + 1).values  # the n-th largest candidate
        busy = vals.min(-1).values >= cut  # [B]: may hold entries >= cut beyond their top m
        flat = idx + torch.arange(B, device=pre.device)[:, None] * D  # [B, m]
        keep = vals >= cut
        if bool(busy.any()) or int(keep.sum()) != n:
            keep &= ~busy[:, None]
            rows = busy.nonzero().squeeze(1)
            r, c = (pre[rows] >= cut).nonzero().unbind(1)
            cand = torch.cat([flat[keep], rows[r] * D + c])
            flat = cand[flat_pre[cand].topk(n, sorted=False).indices]
        else:
            flat = flat[keep]
    flat = flat[flat_pre[flat] > 0]
    return flat.sort(stable=True).values  # stable: radix sort, far quicker on CPU for int64 than the default


def batchtopk_forward(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, k: int,
                      widths: list[int] | None = None, apply_b_dec_to_input: bool = True) -> KernelOutput:
    """BatchTopK SAE forward (Matryoshka's with ``widths``) with the sparse backward. x: ``[batch, d_in]``.

    The batch keeps its ``k * batch`` largest positive pre-activations (any number a row); ``acts [nnz]`` are those
    entries' values. ``levels [batch, len(widths), d_in]``: ``b_dec`` plus the decoded latents below each width,
    from one sparse decode of ``(row, level)`` bags and a running sum over the levels (no width: one level, d_sae).
    """
    xc = x - b_dec if apply_b_dec_to_input else x
    B, d_sae = x.shape[0], W_enc.shape[1]
    with torch.no_grad():
        pre = torch.addmm(b_enc, xc, W_enc)
        at = Active.of_flat(batch_topk(pre, k * B, per_row=BATCH_TOPK_ROW_FACTOR * k), B, d_sae)
    acts = GatherPre.apply(xc, W_enc, b_enc, at, pre)  # > 0 already
    if not widths or len(widths) == 1:
        x_hat = SparseDecode.apply(at, acts, W_dec) + b_dec
        return KernelOutput(x_hat, acts, at, pre, acts, x_hat[:, None])
    parts = SparseDecode.apply(at.by_level(widths), acts, W_dec).view(B, len(widths), -1)  # each level's own latents
    levels = parts.cumsum(1) + b_dec
    return KernelOutput(levels[:, -1], acts, at, pre, acts, levels)


def batchtopk_reference(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, k: int,
                        widths: list[int] | None = None, apply_b_dec_to_input: bool = True) -> KernelOutput:
    """Plain-torch BatchTopK / Matryoshka SAE as SAELens computes it (``relu``, one top ``k * batch`` of the flattened
    batch, each prefix decoded densely): ``acts [batch, d_sae]``, ``levels [batch, len(widths), d_in]``."""
    xc = x - b_dec if apply_b_dec_to_input else x
    pre = xc @ W_enc + b_enc
    flat = F.relu(pre).reshape(-1)
    top = flat.topk(k * x.shape[0], dim=-1)
    f = torch.zeros_like(flat).scatter(-1, top.indices, top.values).view_as(pre)
    levels = torch.stack([f[:, :w] @ W_dec[:w] + b_dec for w in widths or [W_enc.shape[1]]], 1)
    return KernelOutput(levels[:, -1], f, None, pre, None, levels)


def latents_forward(xc: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, idx: Tensor, pre: Tensor) -> Tensor:
    """Decode from chosen latents ``idx [batch, k]`` with gradients to the encoder and decoder (AuxK uses this):
    ``sum_j relu(pre[b, idx[b, j]]) * W_dec[idx[b, j]]`` -> ``[batch, d_in]``."""
    at = Active.of_topk(idx.sort(dim=-1).values, W_enc.shape[1])
    return SparseDecode.apply(at, F.relu(GatherPre.apply(xc, W_enc, b_enc, at, pre)), W_dec)


def dense_reference(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, k: int,
                    apply_b_dec_to_input: bool = True) -> KernelOutput:
    """Plain-torch TopK SAE (dense everywhere), for the tests: ``acts`` ``[batch, d_sae]``."""
    xc = x - b_dec if apply_b_dec_to_input else x
    pre = xc @ W_enc + b_enc
    vals, idx = pre.topk(k, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))
    return KernelOutput(f @ W_dec + b_dec, f, None, pre)
