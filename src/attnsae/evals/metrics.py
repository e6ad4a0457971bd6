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
mean-ablated run per distinct layer. The clean run keeps the residual entering each intervened layer L > 0 (when
they fit :data:`~attnsae.evals.loss_head.KEEP_RESIDUAL_BYTES`), and each intervened run at L starts there, blocks
0..L-1 skipped (:mod:`attnsae.models.skip_blocks`): for the cost of blocks L.. alone. That such a run equals a whole
forward is checked once per layer, on the first batch (a clean run started at L must give the clean run's states to
the bit); a layer where it does not (Gemma 4 makes per-layer inputs from the tokens) runs whole forwards.

**Memory.** When the LM head is a linear read-out of the final norm (:func:`attnsae.models.architecture.describe`'s
``lm_head == "linear"``) each run stops at ``ln_final.hook_out`` (``[batch, pos, d_model]``) and the logits,
log-softmax, CE and KL are computed a chunk of positions at a time, ``logits = h @ W_U + b_U``, with a chunk's
``[rows, d_vocab]`` float32 tensors held within ``max_chunk_bytes``. The clean run's final hidden states are kept for
the batch, and so are its log-probabilities when they fit :data:`~attnsae.evals.loss_head.KEEP_CLEAN_BYTES` (512
MiB: 16 contexts of 128 tokens up to a vocabulary of 66k), so that each intervened run computes one LM head for its
KL, not two; past that the clean chunk's log-probabilities are recomputed for each run. Any other head falls back to
the model's own logits (one clean ``[batch, pos, d_vocab]`` copy is kept per batch), still reduced chunk by chunk.

**Refusal.** On a model where next-token loss means nothing (an encoder) or whose LM head was not in its checkpoint,
``describe(model).refusal("eval_ce")`` gives the reason: no loss run is made, hook_z is harvested (one forward per
batch that stops at the last needed layer) for the reconstruction metrics, the CE/KL fields are NaN and
:attr:`EvalReport.ce_refused` holds the one-line reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from attnsae.activations import harvest_z
from attnsae.models.architecture import describe
from attnsae.errors import AttnsaeError
from attnsae.models.fast_attention import fused_attention
from attnsae.models import check_tokens, model_name
from attnsae.sae.model import SAE, SAEOutput
from attnsae.evals.eval_report import LOSS_FIELDS, EvalReport, SAEEval  # noqa: F401  (LOSS_FIELDS: the report's)
from attnsae.evals import intervals as iv
from attnsae.evals.intervals import ContextSums
from attnsae.evals.splice import ablate_z, mean_z, splice_saes
from attnsae.evals.loss_head import MAX_CHUNK_BYTES, LossHead, LossSums
from attnsae.sae.checks import check_sae

DENSE_THRESHOLD = 0.1
MAX_BATCH = 16  # default contexts per forward pass
MAX_BATCH_LOGITS = 2**25  # with a non-linear LM head: logits per batch (128 MiB in float32) the default allows


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
        self.contexts = ContextSums()  # per-context sums, for the bootstrap intervals (3D updates only)

    def update(self, x: Tensor, x_hat: Tensor, f: Tensor) -> None:
        """x, x_hat: [n, d_in]; f: [n, d_sae]; or each [batch, pos, ...]: one row per context (also kept per
        context)."""
        if x.ndim == 3:
            self.contexts.add(x, x_hat)
            x, x_hat, f = x.flatten(0, 1), x_hat.flatten(0, 1), f.flatten(0, 1)
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


def ce_recovered(ce_baseline: float, ce_sae: float, ce_clean: float) -> float:
    """``(ce_baseline - ce_sae) / (ce_baseline - ce_clean)``; NaN when the baseline costs nothing."""
    gap = ce_baseline - ce_clean
    return (ce_baseline - ce_sae) / gap + 0.0 if gap != 0 else float("nan")  # + 0.0: no "-0.0"


def default_batch_size(model, context_size: int, arch=None) -> int:
    """Contexts per forward pass when none is given: :data:`MAX_BATCH` (16), fewer when the forward materialises
    full logits (an LM head that is not a linear read-out of the final norm, so the run cannot stop before it): then
    at most :data:`MAX_BATCH_LOGITS` (2**25, 128 MiB in float32) logits per batch,
    ``max(1, min(16, 2**25 // (context_size * d_vocab)))``. Linear heads and refused CE never make full logits."""
    arch = arch or describe(model)
    if arch.lm_head == "linear" or arch.refusal("eval_ce"):
        return MAX_BATCH
    return max(1, min(MAX_BATCH, MAX_BATCH_LOGITS // (context_size * arch.d_vocab)))


def default_names(saes: Sequence[SAE], layers: Sequence[int]) -> list[str]:
    """``L{layer}``, with ``#i`` appended where several SAEs share a layer."""
    names = [f"L{l}" for l in layers]
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


@dataclass
class _Losses:
    """The loss sums of :func:`evaluate`: the clean run, one spliced run per SAE, zero and mean ablation per layer."""

    clean: LossSums
    spliced: list[LossSums]
    zero: dict[int, LossSums]
    mean: dict[int, LossSums]

    def fields(self, j: int, layer: int) -> dict[str, float]:
        """The :data:`LOSS_FIELDS` of SAE ``j`` (at ``layer``)."""
        clean, sae, zero, mean = self.clean.mean_ce, self.spliced[j].mean_ce, self.zero[layer], self.mean[layer]
        return {"ce_clean": clean, "ce_sae": sae, "ce_zero": zero.mean_ce, "ce_mean": mean.mean_ce,
                "ce_recovered_zero": ce_recovered(zero.mean_ce, sae, clean),
                "ce_recovered_mean": ce_recovered(mean.mean_ce, sae, clean),
                "kl_sae": self.spliced[j].mean_kl, "kl_zero": zero.mean_kl, "kl_mean": mean.mean_kl}


def _reconstruction_runs(model, saes: list[SAE], layers: list[int], recon: list[ReconstructionSums],
                         batches: Iterable[Tensor], keep_bos: bool) -> None:
    """Reconstruction sums only: one forward per batch ``[batch, pos]`` that stops at the last needed hook_z (whole
    contexts, so nothing assumes causal attention); position 0 left out when ``keep_bos``."""
    for batch in batches:
        zs = harvest_z(model, batch, sorted(set(layers)), drop_bos=keep_bos)  # {layer: [tokens, d_in]}
        for sae, layer, sums in zip(saes, layers, recon):
            x = zs[layer].to(sae.device, sae.dtype)
            x_hat, f, _ = sae(x)
            sums.update(*(t.reshape(len(batch), -1, t.shape[-1]) for t in (x, x_hat, f)))  # per context


def _loss_runs(head: LossHead, saes: list[SAE], layers: list[int], recon: list[ReconstructionSums],
               means: dict[int, Tensor], batches: Iterable[Tensor], keep_bos: bool) -> _Losses:
    """Per batch ``[batch, pos]``: the clean run, each SAE spliced in (recording its reconstruction sums), and each
    layer zero- and mean-ablated (``means``: ``{layer: [d_in]}``), every run scored against the clean one."""
    model, first = head.model, 1 if keep_bos else 0
    losses = _Losses(LossSums(), [LossSums() for _ in saes], {l: LossSums() for l in means},
                     {l: LossSums() for l in means})

    def recorder(sums: ReconstructionSums):
        def observe(layer: int, x: Tensor, out: SAEOutput) -> None:  # x: [batch, pos, d_in]
            sums.update(*(t[:, first:] for t in (x, out.x_hat, out.feature_acts)))

        return observe

    starts: dict[int, bool] = {}  # layer -> may its runs start there (checked once, on the first batch)
    for batch in batches:
        targets = batch[:, 1:]
        resid = head.to_record(batch, sorted({l for l in (*layers, *means) if l > 0}))  # residuals entering blocks
        ref = head.run(batch, record=resid)  # [batch, pos, d_model] or [batch, pos, d_vocab]
        for l in resid or ():
            if l not in starts:  # the bridge's start_at_layer run equals a whole forward on most models, not all
                starts[l] = torch.equal(head.run(resid[l].clone(), start_at_layer=l), ref)
        kept = head.keep(ref)  # the clean log-probabilities, when they fit: one LM head per run, not two
        head.score(ref, targets, losses.clean, kept=kept)
        runs = [(splice_saes(model, {layer: sae}, observe=recorder(sums), keep_bos=keep_bos), loss, layer)
                for sae, layer, sums, loss in zip(saes, layers, recon, losses.spliced)]
        for l, mu in means.items():
            runs += [(ablate_z(model, [l], keep_bos=keep_bos), losses.zero[l], l),
                     (ablate_z(model, {l: mu}, keep_bos=keep_bos), losses.mean[l], l)]
        for intervention, sums, layer in runs:
            with intervention:  # from the clean residual entering the layer: the blocks before it are the clean ones
                states = (head.run(resid[layer].clone(), start_at_layer=layer) if resid and starts.get(layer)
                          else head.run(batch))
            head.score(states, targets, sums, ref, kept)
            del states
        del ref, kept  # before the next batch's clean run
    return losses


@torch.no_grad()
def evaluate(
    model,
    saes: SAE | Sequence[SAE],
    tokens: Tensor | np.ndarray,
    batch_size: int | None = None,
    progress: bool = True,
    keep_bos: bool = True,
    names: Sequence[str] | None = None,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> EvalReport:
    """Measure SAEs (each at its own layer) on ``model`` over token contexts ``tokens [n, ctx]``.

    Args:
        saes: one SAE or several (several may share a layer: each is spliced in alone).
        tokens: int64 contexts, held-out (validation) tokens, BOS at position 0 when ``keep_bos``.
        batch_size: contexts per forward pass; ``None``: :func:`default_batch_size` (16, fewer for a model whose
            forward makes full ``[batch, ctx, d_vocab]`` logits: at most 2**25 logits per batch).
        keep_bos: leave position 0 untouched by every intervention and out of the reconstruction metrics.
        names: one name per SAE for the report (default ``L{layer}``).
        max_chunk_bytes: memory for one chunk of positions' ``[rows, d_vocab]`` float32 tensors while scoring CE
            and KL (default 256 MiB; at least one position of every context per chunk).

    CE and KL are NaN, with the reason in ``ce_refused``, on models where they mean nothing (see the module
    docstring). Bad input (an SAE that does not fit the model, a layer out of range, no tokens) raises
    :class:`AttnsaeError`.
    """
    saes = [saes] if isinstance(saes, SAE) else list(saes)
    if not saes:
        raise AttnsaeError("no SAE to evaluate; give at least one")
    layers = [check_sae(model, sae) for sae in saes]
    if names is None:
        names = default_names(saes, layers)
    if len(names) != len(saes):
        raise AttnsaeError(f"{len(names)} names for {len(saes)} SAEs; give one name per SAE")
    for what, value in (("batch_size", batch_size), ("max_chunk_bytes", max_chunk_bytes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise AttnsaeError(f"{what} must be a positive integer, got {value!r}")
    tokens = check_tokens(model, tokens, min_len=2)
    arch = describe(model)
    refused = arch.refusal("eval_ce")
    if batch_size is None:
        batch_size = default_batch_size(model, int(tokens.shape[1]), arch)
    distinct = sorted(set(layers))
    recon = [ReconstructionSums(sae.d_in, sae.d_sae) for sae in saes]
    batches = [tokens[i:i + batch_size] for i in range(0, len(tokens), batch_size)]  # each [batch, ctx]
    with fused_attention(model):  # the forwards read hook_z and the logits only
        if refused:
            _reconstruction_runs(model, saes, layers, recon, tqdm(batches, "evaluating", disable=not progress),
                                 keep_bos)
            losses = None
        else:
            means = mean_z(model, tokens, distinct, batch_size, keep_bos=keep_bos, progress=progress)
            head = LossHead(model, arch.lm_head == "linear", max_chunk_bytes)
            losses = _loss_runs(head, saes, layers, recon, means, tqdm(batches, "evaluating", disable=not progress),
                                keep_bos)

    results = []
    n_heads = int(model.cfg.n_heads)
    W = iv.weights(len(tokens)) if len(tokens) > 1 else None  # bootstrap resamples of the contexts
    for j, (name, sae, layer, sums) in enumerate(zip(names, saes, layers, recon)):
        m = sums.metrics()
        fvu, share = sums.per_head(n_heads)
        ce = dict.fromkeys(LOSS_FIELDS, float("nan")) if losses is None else losses.fields(j, layer)
        results.append(SAEEval(
            intervals={} if W is None else _intervals(W, sums, losses, j, layer), unseen=iv.unseen_estimate(sums.fires),
            name=name, layer=layer, hook_name=f"blocks.{layer}.attn.hook_z", d_in=sae.d_in, d_sae=sae.d_sae,
            architecture=sae.cfg.architecture, n_tokens=m.n_tokens, l0=m.l0,
            explained_variance=m.explained_variance, nmse=m.nmse, cosine=m.cosine, **ce,
            dead_frac=m.dead_frac, dense_frac=m.dense_frac, head_fvu=fvu, head_error_share=share,
            feature_frequency=m.feature_frequency,
        ))
    return EvalReport(
        model=model_name(model), n_contexts=int(tokens.shape[0]), context_size=int(tokens.shape[1]),
        n_loss_tokens=0 if losses is None else losses.clean.n, keep_bos=keep_bos,
        mean_ablation="none (CE and KL refused)" if refused else
        "position-independent mean of hook_z over the evaluation tokens (first pass)"
        + (", BOS position excluded" if keep_bos else ""),
        saes=results, ce_refused=refused,
        bootstrap={} if W is None else {"resamples": iv.N_BOOTSTRAP, "level": iv.LEVEL, "seed": iv.SEED,
                                        "over": "contexts"},
    )


def _intervals(W: Tensor, sums: ReconstructionSums, losses: _Losses | None, j: int, layer: int) -> dict:
    """SAE ``j``'s bootstrap intervals (:mod:`attnsae.evals.intervals`): explained variance, and the loss metrics
    unless CE is refused."""
    out = {"explained_variance": iv.percentile(iv.explained_variance(W, sums.contexts.stacked()))}
    if losses is not None:
        per = {"clean": losses.clean, "sae": losses.spliced[j], "zero": losses.zero[layer], "mean": losses.mean[layer]}
        ce = {k: v.per_context("ce") for k, v in per.items()}
        out.update(iv.loss_intervals(W, {**ce, "kl": losses.spliced[j].per_context("kl")},
                                     losses.clean.per_context("n")))
    return out


__all__ = ["reconstruction_metrics", "ReconstructionMetrics", "ReconstructionSums", "evaluate", "EvalReport",
           "SAEEval", "ce_recovered", "default_batch_size", "LossHead", "LossSums", "DENSE_THRESHOLD",
           "LOSS_FIELDS", "MAX_CHUNK_BYTES"]
