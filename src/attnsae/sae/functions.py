"""The SAE's activation functions that need their own gradients: JumpReLU and its Heaviside step, each with the
JumpReLU paper's straight-through estimator for the threshold (Rajamanoharan et al. 2024, "Jumping Ahead").

Both take a threshold ``[d_sae]`` or one per element (the sparse kernels gather it at the active entries).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def rectangle(x: Tensor) -> Tensor:
    """The rectangle kernel: 1 on (-1/2, 1/2), else 0."""
    return ((x > -0.5) & (x < 0.5)).to(x.dtype)


def _threshold_grad(grad: Tensor, threshold: Tensor) -> Tensor:
    """The threshold's gradient from per-element terms ``grad [..., d]``: summed over rows for a threshold ``[d]``,
    as is for one gathered per element (``[..., d]``, the sparse kernels')."""
    return grad if grad.shape == threshold.shape else grad.reshape(-1, threshold.shape[-1]).sum(0)


class Heaviside(torch.autograd.Function):
    """``1[pre > threshold]`` with the JumpReLU paper's straight-through estimator for the threshold (its L0 loss).

    ``d/dthreshold := -(1 / bandwidth) * rectangle((pre - threshold) / bandwidth)``; no gradient to ``pre``.
    pre: [..., d_sae], threshold: [d_sae] (or per element, pre's shape).
    """

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[None, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        grad_threshold = -(1.0 / ctx.bandwidth) * rectangle((pre - threshold) / ctx.bandwidth) * grad_out
        return None, _threshold_grad(grad_threshold, threshold), None


class JumpReLU(torch.autograd.Function):
    """``f = pre * (pre > threshold)`` with a straight-through estimator for the threshold.

    Rajamanoharan et al. 2024 ("Jumping Ahead"): the pseudo-derivative
    ``df/dthreshold := -(threshold / bandwidth) * rectangle((pre - threshold) / bandwidth)``;
    ``df/dpre = 1[pre > threshold]`` (no estimator on the input). pre: [..., d_sae], threshold: [d_sae] (or per
    element, pre's shape).
    """

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        bandwidth = ctx.bandwidth
        grad_pre = grad_out * (pre > threshold).to(grad_out.dtype)
        grad_threshold = -(threshold / bandwidth) * rectangle((pre - threshold) / bandwidth) * grad_out
        return grad_pre, _threshold_grad(grad_threshold, threshold), None
