"""The sparse autoencoder on attention outputs: a config dataclass, then the module, in data-flow order.

    x        [..., d_in]    z_cat: ``blocks.{L}.attn.hook_z`` with heads concatenated (d_in = n_heads * d_head)
    pre_acts [..., d_sae]   (x - b_dec) @ W_enc + b_enc
    f        [..., d_sae]   relu | top-k of relu | jumprelu of pre_acts | relu above one threshold (batchtopk and
                            matryoshka at inference; in training a batch keeps its top k x batch entries instead)
    x_hat    [..., d_in]    f @ W_dec + b_dec

Parameter layout and names follow SAELens (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``), so files move freely
(see :mod:`attnsae.sae.formats`). The paper's decoder constraint (unit-norm rows, gradient parallel to each row removed
before the optimiser step) is :meth:`SAE.remove_gradient_parallel_to_decoder_directions` followed by
:meth:`SAE.set_decoder_norm_to_unit_norm` after the step.

BatchTopK (Bussmann et al. 2024) and Matryoshka BatchTopK (Bussmann et al. 2025): training keeps the top ``k x batch``
pre-activations of the whole batch (:func:`attnsae.sae.kernels.batchtopk_forward`; Matryoshka adds the loss of each
prefix ``matryoshka_widths``) and tracks ``topk_threshold``, a float64 moving average of the smallest activation each
batch keeps (:meth:`SAE.update_topk_threshold`); inference, here and in the saved file, is JumpReLU's with that one
threshold for every latent, as SAELens 6 does (``BatchTopKTrainingSAE.update_topk_threshold`` and
``process_state_dict_for_saving_inference``, saved as a "jumprelu" SAE).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnsae.errors import AttnsaeError, short
from attnsae.models import DTYPES, dtype_name
from attnsae.sae import ARCHITECTURES, BATCH_TOPK, K_ARCHITECTURES, kernels
from attnsae.sae.functions import Heaviside, JumpReLU, rectangle  # noqa: F401  (the SAE's activations)
# SAELens' values. The module itself applies no normalisation: with anything but "none" the caller scales the
# activations before `encode` and undoes it after `decode`.
NORMALIZE_ACTIVATIONS: tuple[str, ...] = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")


@dataclass
class SAEConfig:
    """Shape, activation and provenance of one SAE. Unknown keys given to :meth:`from_dict` land in ``extra``."""

    d_in: int  # n_heads * d_head for hook_z
    d_sae: int  # dictionary size
    architecture: str = "relu"  # one of ARCHITECTURES
    k: int | None = None  # active latents per token (topk); their mean over a training batch (batchtopk, matryoshka)
    dtype: str = "float32"
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    hook_name: str = ""  # e.g. "blocks.5.attn.hook_z"
    model_name: str = ""
    context_size: int = 128
    prepend_bos: bool = True
    layer: int | None = None
    jumprelu_init_threshold: float = 1e-3
    jumprelu_bandwidth: float = 1e-3
    matryoshka_widths: list[int] | None = None  # matryoshka: the nested prefixes of the latents, the last d_sae
    topk_threshold_lr: float = 0.01  # batchtopk, matryoshka: rate of the inference threshold's moving average
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def want(name: str, ok: bool, expected: str) -> None:
            if not ok:
                raise AttnsaeError(f"SAE {name} must be {expected}, got {short(getattr(self, name))}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for name in ("architecture", "normalize_activations", "hook_name", "model_name"):
            want(name, isinstance(getattr(self, name), str), "a string")
        want("dtype", isinstance(self.dtype, (str, torch.dtype)), "a dtype name such as 'float32'")
        for name in ("apply_b_dec_to_input", "prepend_bos"):
            want(name, isinstance(getattr(self, name), bool), "true or false")
        want("context_size", is_int(self.context_size) and self.context_size >= 1, "a positive integer")
        want("layer", self.layer is None or (is_int(self.layer) and self.layer >= 0),
             "a layer number (an integer >= 0) or null")
        for name in ("jumprelu_init_threshold", "jumprelu_bandwidth"):
            v = getattr(self, name)
            want(name, isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
                 "a number > 0")
        lr = self.topk_threshold_lr
        want("topk_threshold_lr", isinstance(lr, (int, float)) and not isinstance(lr, bool) and 0 < lr <= 1,
             "a number in (0, 1]")
        want("extra", isinstance(self.extra, dict), "a mapping")
        if self.architecture not in ARCHITECTURES:
            raise AttnsaeError(
                f"unknown SAE architecture {short(self.architecture)}; use one of: {', '.join(ARCHITECTURES)}"
            )
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AttnsaeError(f"SAE {name} must be a positive integer, got {short(value)}")
        if self.architecture in K_ARCHITECTURES and self.k is None:
            per = "active latents per token" + (", on average over a batch" if self.architecture in BATCH_TOPK else "")
            raise AttnsaeError(f"architecture {self.architecture!r} needs k ({per}); set k, e.g. k=32")
        k = self.k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.d_sae):
            raise AttnsaeError(f"k must be an integer in 1..d_sae ({self.d_sae}), got {short(self.k)}")
        self._check_widths()
        try:
            self.dtype = dtype_name(self.dtype)
        except AttnsaeError:
            raise AttnsaeError(f"unknown SAE dtype {short(str(self.dtype))}; use one of: {', '.join(DTYPES)}") from None
        if self.normalize_activations not in NORMALIZE_ACTIVATIONS:
            raise AttnsaeError(
                f"unknown normalize_activations {short(self.normalize_activations)}; "
                f"use one of: {', '.join(NORMALIZE_ACTIVATIONS)}"
            )

    def _check_widths(self) -> None:
        """``matryoshka_widths``: matryoshka's, positive integers, strictly increasing, the last ``d_sae``."""
        w = self.matryoshka_widths
        if self.architecture != "matryoshka":
            if w is not None:
                raise AttnsaeError(f"matryoshka_widths is for architecture 'matryoshka', not {self.architecture!r}; "
                                   "leave it out")
            return
        example = f"e.g. [{max(1, self.d_sae // 16)}, {max(1, self.d_sae // 4)}, {self.d_sae}]"
        if not isinstance(w, (list, tuple)) or not w:
            raise AttnsaeError("architecture 'matryoshka' needs matryoshka_widths (nested prefixes of the latents, "
                               f"increasing and ending at d_sae), {example}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in w):
            raise AttnsaeError(f"matryoshka_widths must be positive integers, got {short(w)}")
        if any(b <= a for a, b in zip(w, w[1:])):
            raise AttnsaeError(f"matryoshka_widths must be strictly increasing, got {short(w)}; {example}")
        if w[-1] != self.d_sae:
            raise AttnsaeError(f"matryoshka_widths must end at d_sae ({self.d_sae}): the last prefix is the whole "
                               f"SAE; got {short(w)}")
        self.matryoshka_widths = list(w)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (``extra`` must hold JSON-ready values)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        """Inverse of :meth:`to_dict`; keys that are not fields are kept in ``extra``."""
        names = {f.name for f in fields(cls)}
        kwargs = {key: value for key, value in d.items() if key in names}
        unknown = {key: value for key, value in d.items() if key not in names}
        kwargs["extra"] = {**dict(kwargs.get("extra") or {}), **unknown}
        return cls(**kwargs)


class SAEOutput(NamedTuple):
    x_hat: Tensor  # [..., d_in]
    feature_acts: Tensor  # [..., d_sae]
    pre_acts: Tensor  # [..., d_sae]


class SAE(nn.Module):
    """Sparse autoencoder ``x [..., d_in] -> f [..., d_sae] -> x_hat [..., d_in]`` (see the module docstring)."""

    def __init__(self, cfg: SAEConfig, device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.cfg = cfg
        self.d_in, self.d_sae = cfg.d_in, cfg.d_sae
        kw = dict(device=device, dtype=cfg.torch_dtype)
        # Init as the paper's code: W_dec kaiming-uniform then rows normalised to unit norm; W_enc an independent
        # kaiming-uniform draw (not W_dec.T, the SAELens choice); both biases zero.
        W_dec = nn.init.kaiming_uniform_(torch.empty(cfg.d_sae, cfg.d_in, **kw))
        self.W_dec = nn.Parameter(W_dec / W_dec.norm(dim=-1, keepdim=True))
        W_enc = nn.init.kaiming_uniform_(torch.empty(cfg.d_in, cfg.d_sae, **kw))
        if cfg.architecture in K_ARCHITECTURES:  # the encoder starts as the decoder's transpose (Gao et al. 2024),
            W_enc = self.W_dec.detach().T.clone()  # which keeps far fewer latents from never winning the top k
        self.W_enc = nn.Parameter(W_enc)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, **kw))
        if cfg.architecture == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold), **kw))
        if cfg.architecture in BATCH_TOPK:  # float64 as SAELens keeps it: a moving average of small updates
            self.register_buffer("topk_threshold", torch.zeros((), dtype=torch.float64, device=device))

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def threshold(self) -> Tensor:
        """The inference threshold [d_sae]: JumpReLU's ``exp(log_threshold)``; BatchTopK's and Matryoshka's one
        ``topk_threshold`` for every latent, in the SAE's dtype, rounded as SAELens' saved ``threshold`` is
        (``ones_like(b_enc) * topk_threshold``: the float64 value taken to the op's compute type first)."""
        if self.cfg.architecture in BATCH_TOPK:
            compute = torch.promote_types(self.dtype, torch.float32)
            return torch.ones_like(self.b_enc) * self.topk_threshold.to(compute)
        if self.cfg.architecture != "jumprelu":
            raise AttributeError(f"threshold exists only for architectures jumprelu, {', '.join(BATCH_TOPK)}; not "
                                 f"{self.cfg.architecture!r}")
        return self.log_threshold.exp()

    @torch.no_grad()
    def update_topk_threshold(self, min_act: Tensor) -> None:
        """Move ``topk_threshold`` towards ``min_act`` (scalar: the smallest activation a training batch kept) by
        ``cfg.topk_threshold_lr``, in float64, as SAELens' ``BatchTopKTrainingSAE.update_topk_threshold``; a batch
        that kept none (``min_act`` inf) leaves it."""
        if bool(torch.isfinite(min_act)):
            lr = self.cfg.topk_threshold_lr
            self.topk_threshold.copy_((1 - lr) * self.topk_threshold + lr * min_act.to(torch.float64))

    @torch.no_grad()
    def set_threshold(self, threshold: Tensor) -> None:
        """Set ``log_threshold`` from a threshold [d_sae] (>= 0), as loaders do.

        A threshold that is ``exp`` of a float (what :func:`attnsae.sae.formats.save_sae` writes) comes back bit for
        bit: ``exp(log(t))`` can miss ``t`` by one ulp, and trying the neighbouring floats of ``log(t)`` fixes those
        entries. Any other threshold comes back to within a few ulps (not every float is ``exp`` of a float).
        """
        if self.cfg.architecture != "jumprelu":
            raise AttnsaeError(f"set_threshold needs architecture 'jumprelu', not {self.cfg.architecture!r}")
        t = threshold.to(device=self.device, dtype=self.dtype)
        if t.shape != (self.d_sae,) or bool((t < 0).any()) or bool(t.isnan().any()):
            raise AttnsaeError(f"JumpReLU threshold must be [d_sae={self.d_sae}] and >= 0, got shape {tuple(t.shape)}")
        log_t = t.log()
        for direction in (math.inf, -math.inf):
            nudged = torch.nextafter(t.log(), torch.full_like(t, direction))
            log_t = torch.where((log_t.exp() != t) & (nudged.exp() == t), nudged, log_t)
        self.log_threshold.copy_(log_t)

    def pre_acts(self, x: Tensor) -> Tensor:
        """``(x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc``: [..., d_in] -> [..., d_sae]."""
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def _topk(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """Top-k of ReLU(pre) along the last dim: (values [..., k] >= 0, indices [..., k])."""
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return F.relu(values), indices

    def activation(self, pre: Tensor) -> Tensor:
        """Feature activations from pre-activations: [..., d_sae] -> [..., d_sae]."""
        if self.cfg.architecture == "relu":
            return F.relu(pre)
        if self.cfg.architecture == "topk":
            values, indices = self._topk(pre)
            return torch.zeros_like(pre).scatter(-1, indices, values)
        if self.cfg.architecture in BATCH_TOPK:  # SAELens' JumpReLUSAE.encode: relu, zero at or below the threshold
            return F.relu(pre) * (pre > self.threshold).to(pre.dtype)
        return JumpReLU.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth)

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations: [..., d_in] -> [..., d_sae]."""
        return self.activation(self.pre_acts(x))

    def decode(self, feature_acts: Tensor) -> Tensor:
        """Dense reference decoder ``f @ W_dec + b_dec``: [..., d_sae] -> [..., d_in]."""
        return feature_acts @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> SAEOutput:
        """x: [..., d_in] -> SAEOutput(x_hat [..., d_in], feature_acts [..., d_sae], pre_acts [..., d_sae]).

        TopK decodes through :class:`attnsae.sae.kernels.SparseDecode` (k rows per token); the others through
        :meth:`decode`. BatchTopK and Matryoshka encode with their threshold here (inference); their training step
        is :func:`attnsae.sae.kernels.batchtopk_forward`.
        """
        pre = self.pre_acts(x)
        if self.cfg.architecture == "topk":
            values, indices = self._topk(pre)
            feature_acts = torch.zeros_like(pre).scatter(-1, indices, values)
            k = indices.shape[-1]
            cols, order = indices.reshape(-1, k).sort(dim=-1)  # columns ascending: valid CSR for the backward
            at = kernels.Active.of_topk(cols, self.d_sae)
            x_hat = kernels.SparseDecode.apply(at, values.reshape(-1, k).gather(-1, order).reshape(-1)
                                               .to(self.W_dec.dtype), self.W_dec)
            return SAEOutput(x_hat.reshape(*pre.shape[:-1], self.d_in) + self.b_dec, feature_acts, pre)
        feature_acts = self.activation(pre)
        return SAEOutput(self.decode(feature_acts), feature_acts, pre)

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        """Rescale every decoder row W_dec[i] [d_in] to unit L2 norm (the paper does this after each step)."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(self.dtype).tiny))

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Subtract from ``W_dec.grad`` [d_sae, d_in] its component along each row's direction (call before the step).

        With unit-norm rows, a step along the remaining gradient changes row norms only to second order, which the
        renormalisation after the step removes.
        """
        if self.W_dec.grad is None:
            return
        direction = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(self.dtype).tiny)
        parallel = (self.W_dec.grad * direction).sum(dim=-1, keepdim=True)  # [d_sae, 1]
        self.W_dec.grad.sub_(parallel * direction)

    def extra_repr(self) -> str:
        k = f", k={self.cfg.k}" if self.cfg.architecture in K_ARCHITECTURES else ""
        return f"{self.cfg.architecture}, d_in={self.d_in}, d_sae={self.d_sae}{k}, hook_name={self.cfg.hook_name!r}"
