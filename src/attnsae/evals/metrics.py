"""Evaluations of an SAE (PAPER_NOTES §3): sparsity, reconstruction, and the model's loss with the SAE spliced in.

``reconstruction_metrics`` streams batches ``x [n, d_in]`` once and returns plain numbers:

* ``l0``: mean number of active features per token;
* ``explained_variance``: ``1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2`` (mean over all tokens);
* ``nmse``: ``sum |x - x_hat|^2 / sum |x|^2``; ``cosine``: mean cosine similarity of ``x`` and ``x_hat``;
* ``dead_frac``: features that never fired in the window; ``dense_frac``: firing on more than 10% of tokens;
* ``feature_frequency``: per-feature firing frequency ``[d_sae]``.

``evaluate`` runs a model over token contexts ``[n, ctx]`` (held-out validation tokens) and, per SAE, adds to those:

* ``ce_clean``, ``ce_sae``, ``ce_zero``, ``ce_mean``: next-token cross-entropy (predict token t+1 from tokens <= t,
  every position of every context, BOS as input but never as a target) of the clean model, with the SAE's
  reconstruction spliced into ``blocks.{L}.attn.hook_z``, with hook_z zero-ablated, and with hook_z mean-ablated;
* ``ce_recovered_zero = (ce_zero - ce_sae) / (ce_zero - ce_clean)`` and ``ce_recovered_mean`` likewise;
* ``kl_sae`` (and ``kl_zero``, ``kl_mean``): ``KL(clean || intervened)`` of the next-token distributions, averaged
  over the same positions as the loss;
* ``head_fvu[h]``: the fraction of head h's variance (its ``d_head`` slice of z_cat) the SAE leaves unexplained;
  ``head_error_share[h]``: head h's share of the total squared error (sums to 1).

The mean for mean ablation is position-independent, one ``[n_heads*d_head]`` vector per layer, taken over the same
evaluation tokens in a first pass (:func:`attnsae.evals.splice.mean_z`). With ``keep_bos`` (the default) position 0, the
forced BOS that SAEs are trained without, is left as the model computes it by every intervention and is left out of
the reconstruction metrics and the mean; it still counts as loss input.

All sums are streamed batch by batch in float64: one clean run per batch, one spliced run per SAE, one zero- and one
mean-ablated run per distinct layer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from attnsae.errors import AttnsaeError
from attnsae.models import check_tokens, model_name
from attnsae.sae.model import SAE, SAEOutput
from attnsae.evals.splice import ablate_z, mean_z, splice_saes
from attnsae.sae.checks import check_sae

DENSE_THRESHOLD = 0.1


# ----------------------------------------------------------------------------------------------- reconstruction


@dataclass
class ReconstructionMetrics:
    n_tokens: int
    l0: float
    explained_variance: float
    nmse: float
    cosine: float
    dead_frac: float
    dense_frac: float
    feature_frequency: list[float] = field(repr=False)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("feature_frequency")
        return d


class ReconstructionSums:
    """Streaming float64 sums behind :class:`ReconstructionMetrics`, kept per input dimension for per-head splits."""

    def __init__(self, d_in: int, d_sae: int) -> None:
        self.n = 0
        self.l0_sum = self.cos_sum = 0.0
        self.sse = torch.zeros(d_in, dtype=torch.float64)  # sum (x - x_hat)^2 per dim
        self.sq = torch.zeros(d_in, dtype=torch.float64)  # sum x^2 per dim
        self.x_sum = torch.zeros(d_in, dtype=torch.float64)
        self.fires = torch.zeros(d_sae, dtype=torch.long)

    def update(self, x: Tensor, x_hat: Tensor, f: Tensor) -> None:
        """x, x_hat: [n, d_in]; f: [n, d_sae]."""
        active = f > 0
        self.n += len(x)
        self.l0_sum += active.sum().item()
        self.fires += active.sum(0).cpu()
        self.sse += (x - x_hat).double().pow(2).sum(0).cpu()
        self.sq += x.double().pow(2).sum(0).cpu()
        self.x_sum += x.double().sum(0).cpu()
        self.cos_sum += F.cosine_similarity(x, x_hat, dim=-1).double().sum().item()

    def sst(self) -> Tensor:
        """Total sum of squares about the mean, per dim: [d_in]."""
        return self.sq - self.x_sum.pow(2) / self.n

    def metrics(self) -> ReconstructionMetrics:
        if self.n == 0:
            raise AttnsaeError("no activations to evaluate on: the split is empty; give more tokens")
        sse, sq, sst = self.sse.sum().item(), self.sq.sum().item(), self.sst().sum().item()
        freq = self.fires.double() / self.n
        return ReconstructionMetrics(
            n_tokens=self.n,
            l0=self.l0_sum / self.n,
            explained_variance=1 - sse / sst if sst > 0 else float("nan"),
            nmse=sse / sq if sq > 0 else float("nan"),
            cosine=self.cos_sum / self.n,
            dead_frac=(self.fires == 0).double().mean().item(),
            dense_frac=(freq > DENSE_THRESHOLD).double().mean().item(),
            feature_frequency=freq.tolist(),
        )

    def per_head(self, n_heads: int) -> tuple[list[float], list[float]]:
        """(fraction of variance unexplained per head, share of the squared error per head), each [n_heads]."""
        sse = self.sse.reshape(n_heads, -1).sum(-1)
        sst = self.sst().reshape(n_heads, -1).sum(-1)
        fvu = [s / t if t > 0 else float("nan") for s, t in zip(sse.tolist(), sst.tolist())]
        total = sse.sum().item()
        share = [s / total if total > 0 else float("nan") for s in sse.tolist()]
        return fvu, share


@torch.no_grad()
def reconstruction_metrics(sae: SAE, batches: Iterable[Tensor]) -> ReconstructionMetrics:
    """Stream ``batches`` (each ``[n, d_in]``) through ``sae`` and accumulate the metrics above."""
    sums = ReconstructionSums(sae.d_in, sae.d_sae)
    for x in batches:
        x = x.to(sae.device, sae.dtype)
        x_hat, f, _ = sae(x)
        sums.update(x, x_hat, f)
    return sums.metrics()


# ----------------------------------------------------------------------------------------------- with the model


@dataclass
class SAEEval:
    """Everything :func:`evaluate` measures for one SAE (see the module docstring for definitions)."""

    name: str
    layer: int
    hook_name: str
    d_in: int
    d_sae: int
    architecture: str
    n_tokens: int  # tokens the reconstruction metrics and firing frequencies are over
    l0: float
    explained_variance: float
    nmse: float
    cosine: float
    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_mean: float
    ce_recovered_zero: float
    ce_recovered_mean: float
    kl_sae: float
    kl_zero: float
    kl_mean: float
    dead_frac: float
    dense_frac: float
    head_fvu: list[float]
    head_error_share: list[float]
    feature_frequency: list[float] = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """The scalar metrics (no per-head or per-feature lists)."""
        d = asdict(self)
        for k in ("head_fvu", "head_error_share", "feature_frequency"):
            d.pop(k)
        return d


@dataclass
class EvalReport:
    """Results of :func:`evaluate` for several SAEs on one model and one set of tokens."""

    model: str
    n_contexts: int
    context_size: int
    n_loss_tokens: int  # next-token predictions per run: n_contexts * (context_size - 1)
    keep_bos: bool
    mean_ablation: str
    saes: list[SAEEval]
    meta: dict[str, Any] = field(default_factory=dict)  # where the tokens came from, set by the caller

    def to_dict(self, feature_frequency: bool = True) -> dict[str, Any]:
        """Plain JSON-ready dict; NaN and infinities become None."""
        d = asdict(self)
        if not feature_frequency:
            for s in d["saes"]:
                s.pop("feature_frequency")
        return _json_safe(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalReport:
        nan = float("nan")
        saes = [SAEEval(**{k: (nan if v is None and k not in ("name", "hook_name") else v) for k, v in s.items()})
                for s in d["saes"]]
        return cls(**{**d, "saes": saes})


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def ce_recovered(ce_baseline: float, ce_sae: float, ce_clean: float) -> float:
    """``(ce_baseline - ce_sae) / (ce_baseline - ce_clean)``; NaN when the baseline costs nothing."""
    gap = ce_baseline - ce_clean
    return (ce_baseline - ce_sae) / gap + 0.0 if gap != 0 else float("nan")  # + 0.0: no "-0.0"


class LossSums:
    """Streaming sums of next-token CE and KL(clean || this run) over predicted positions."""

    def __init__(self) -> None:
        self.ce = self.kl = 0.0
        self.n = 0

    def update(self, logits: Tensor, targets: Tensor, clean: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """logits: [batch, pos, d_vocab] (the last position is not scored); targets: [batch, pos - 1];
        clean: the clean run's (log-probabilities, probabilities), each ``[batch, pos - 1, d_vocab]``, for the KL.

        Returns this run's log-probabilities ``[batch, pos - 1, d_vocab]``.
        """
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
        self.ce -= logp.gather(-1, targets.unsqueeze(-1)).double().sum().item()
        if clean is not None:
            logp_clean, p_clean = clean
            self.kl += (p_clean * (logp_clean - logp)).sum(-1).double().sum().item()
        self.n += targets.numel()
        return logp

    @property
    def mean_ce(self) -> float:
        return self.ce / self.n

    @property
    def mean_kl(self) -> float:
        return self.kl / self.n


def default_names(saes: Sequence[SAE], layers: Sequence[int]) -> list[str]:
    """``L{layer}``, with ``#i`` appended where several SAEs share a layer."""
    names = [f"L{l}" for l in layers]
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


@torch.no_grad()
def evaluate(
    model,
    saes: SAE | Sequence[SAE],
    tokens: Tensor | np.ndarray,
    batch_size: int = 16,
    progress: bool = True,
    keep_bos: bool = True,
    names: Sequence[str] | None = None,
) -> EvalReport:
    """Measure SAEs (each at its own layer) on ``model`` over token contexts ``tokens [n, ctx]``.

    Args:
        saes: one SAE or several (several may share a layer: each is spliced in alone).
        tokens: int64 contexts, held-out (validation) tokens, BOS at position 0 when ``keep_bos``.
        batch_size: contexts per forward pass.
        keep_bos: leave position 0 untouched by every intervention and out of the reconstruction metrics.
        names: one name per SAE for the report (default ``L{layer}``).

    Bad input (an SAE that does not fit the model, a layer out of range, no tokens) raises :class:`AttnsaeError`.
    """
    saes = [saes] if isinstance(saes, SAE) else list(saes)
    if not saes:
        raise AttnsaeError("no SAE to evaluate; give at least one")
    layers = [check_sae(model, sae) for sae in saes]
    if names is None:
        names = default_names(saes, layers)
    if len(names) != len(saes):
        raise AttnsaeError(f"{len(names)} names for {len(saes)} SAEs; give one name per SAE")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise AttnsaeError(f"batch_size must be a positive integer, got {batch_size!r}")
    tokens = check_tokens(model, tokens, min_len=2)
    distinct = sorted(set(layers))
    first = 1 if keep_bos else 0

    means = mean_z(model, tokens, distinct, batch_size, keep_bos=keep_bos, progress=progress)
    clean = LossSums()
    spliced = [LossSums() for _ in saes]
    zero = {l: LossSums() for l in distinct}
    mean = {l: LossSums() for l in distinct}
    recon = [ReconstructionSums(sae.d_in, sae.d_sae) for sae in saes]

    def recorder(sums: ReconstructionSums):
        def observe(layer: int, x: Tensor, out: SAEOutput) -> None:  # x: [batch, pos, d_in]
            sums.update(*(t[:, first:].flatten(0, 1) for t in (x, out.x_hat, out.feature_acts)))

        return observe

    for i in tqdm(range(0, len(tokens), batch_size), desc="evaluating", disable=not progress):
        batch = tokens[i:i + batch_size]
        targets = batch[:, 1:]
        logp_clean = clean.update(model(batch), targets)
        ref = (logp_clean, logp_clean.exp())
        for sae, layer, sums, loss in zip(saes, layers, recon, spliced):
            with splice_saes(model, {layer: sae}, observe=recorder(sums), keep_bos=keep_bos):
                loss.update(model(batch), targets, ref)
        for l in distinct:
            with ablate_z(model, [l], keep_bos=keep_bos):
                zero[l].update(model(batch), targets, ref)
            with ablate_z(model, {l: means[l]}, keep_bos=keep_bos):
                mean[l].update(model(batch), targets, ref)

    results = []
    n_heads = int(model.cfg.n_heads)
    for name, sae, layer, sums, loss in zip(names, saes, layers, recon, spliced):
        m = sums.metrics()
        fvu, share = sums.per_head(n_heads)
        results.append(SAEEval(
            name=name, layer=layer, hook_name=f"blocks.{layer}.attn.hook_z", d_in=sae.d_in, d_sae=sae.d_sae,
            architecture=sae.cfg.architecture, n_tokens=m.n_tokens, l0=m.l0,
            explained_variance=m.explained_variance, nmse=m.nmse, cosine=m.cosine,
            ce_clean=clean.mean_ce, ce_sae=loss.mean_ce, ce_zero=zero[layer].mean_ce, ce_mean=mean[layer].mean_ce,
            ce_recovered_zero=ce_recovered(zero[layer].mean_ce, loss.mean_ce, clean.mean_ce),
            ce_recovered_mean=ce_recovered(mean[layer].mean_ce, loss.mean_ce, clean.mean_ce),
            kl_sae=loss.mean_kl, kl_zero=zero[layer].mean_kl, kl_mean=mean[layer].mean_kl,
            dead_frac=m.dead_frac, dense_frac=m.dense_frac, head_fvu=fvu, head_error_share=share,
            feature_frequency=m.feature_frequency,
        ))
    return EvalReport(
        model=model_name(model), n_contexts=int(tokens.shape[0]), context_size=int(tokens.shape[1]),
        n_loss_tokens=clean.n, keep_bos=keep_bos,
        mean_ablation="position-independent mean of hook_z over the evaluation tokens (first pass)"
        + (", BOS position excluded" if keep_bos else ""),
        saes=results,
    )


__all__ = ["reconstruction_metrics", "ReconstructionMetrics", "ReconstructionSums", "evaluate", "EvalReport",
           "SAEEval", "ce_recovered", "DENSE_THRESHOLD"]
