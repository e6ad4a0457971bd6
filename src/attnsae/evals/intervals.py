"""How sure an evaluation is: 95% bootstrap intervals over contexts, and how many "dead" latents are only unseen.

**Intervals.** :func:`attnsae.evals.metrics.evaluate` keeps, per context (one row of the token batch), the sums its
metrics are ratios of: squared error, squared norm and sum of the SAE's input (reconstruction), and the summed
next-token CE of the clean, spliced, zero- and mean-ablated runs and the spliced run's KL. A bootstrap resample draws
``n`` contexts with replacement (multinomial counts, seeded ``torch.Generator``), recomputes each metric from the
resampled sums, exactly as the point estimate is computed from all of them, and the interval is the 2.5th and 97.5th
percentile of :data:`N_BOOTSTRAP` resamples. Contexts, not tokens, are resampled: tokens within a context are
correlated, so a token bootstrap would be too narrow. Metrics: ``explained_variance``, ``ce_recovered_zero``,
``ce_recovered_mean``, ``kl_sae``, ``ce_sae``.

**Unseen latents.** A latent that never fires in the evaluation's ``N`` tokens may be dead or only rarer than
1/N. From the firing counts' histogram, the Chao1 estimator (Chao 1984; the bias-corrected form
``f1 (f1 − 1) / (2 (f2 + 1))``, with ``f1`` and ``f2`` the latents seen exactly once and twice) estimates how many
live latents a sample of that size misses; :func:`unseen_estimate` returns it with the count never seen. It assumes
independent firings, which tokens of one context are not, so it is a guide, stated as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

N_BOOTSTRAP = 1000
LEVEL = 0.95
SEED = 0


@dataclass
class ContextSums:
    """Per-context float64 sums of one SAE's evaluation, each ``[n_contexts]`` (``x_sum``: ``[n_contexts, d_in]``);
    losses absent when CE is refused."""

    n: list[Tensor] = field(default_factory=list)  # reconstruction tokens per context
    sse: list[Tensor] = field(default_factory=list)
    sq: list[Tensor] = field(default_factory=list)
    x_sum: list[Tensor] = field(default_factory=list)

    def add(self, x: Tensor, x_hat: Tensor) -> None:
        """One batch of contexts: x, x_hat ``[batch, pos, d_in]``."""
        x64 = x.double()
        self.n.append(torch.full((x.shape[0],), x.shape[1], dtype=torch.float64))
        self.sse.append((x64 - x_hat.double()).pow(2).sum((1, 2)).cpu())
        self.sq.append(x64.pow(2).sum((1, 2)).cpu())
        self.x_sum.append(x64.sum(1).cpu())

    def stacked(self) -> dict[str, Tensor]:
        return {k: torch.cat(getattr(self, k)) for k in ("n", "sse", "sq", "x_sum")}


def weights(n_contexts: int, n: int = N_BOOTSTRAP, seed: int = SEED) -> Tensor:
    """Bootstrap resamples as counts: float64 ``[n, n_contexts]``, each row summing to ``n_contexts``."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(n_contexts, (n, n_contexts), generator=g)
    return torch.zeros(n, n_contexts, dtype=torch.float64).scatter_add_(1, idx, torch.ones(n, n_contexts,
                                                                                           dtype=torch.float64))


def percentile(values: Tensor, level: float = LEVEL) -> list[float]:
    """``[lo, hi]``: the central ``level`` interval of bootstrap values (NaN resamples dropped)."""
    v = values[torch.isfinite(values)]
    if len(v) == 0:
        return [float("nan"), float("nan")]
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=v.dtype)
    return [float(x) for x in torch.quantile(v, q)]


def explained_variance(W: Tensor, r: dict[str, Tensor]) -> Tensor:
    """``1 − Σ sse / (Σ |x|² − |Σ x|² / Σ n)`` per resample (rows of ``W``)."""
    n, sse, sq, xs = W @ r["n"], W @ r["sse"], W @ r["sq"], W @ r["x_sum"]
    return 1 - sse / (sq - xs.pow(2).sum(-1) / n)


def loss_intervals(W: Tensor, losses: dict[str, Tensor], n_pred: Tensor) -> dict[str, list[float]]:
    """Intervals of CE recovered (zero, mean), KL and spliced CE from per-context sums ``losses`` (``clean``,
    ``sae``, ``zero``, ``mean``, ``kl``) over ``n_pred`` predictions per context."""
    mean = {k: (W @ v) / (W @ n_pred) for k, v in losses.items()}
    rec = {b: (mean[b] - mean["sae"]) / (mean[b] - mean["clean"]) for b in ("zero", "mean")}
    return {"ce_recovered_zero": percentile(rec["zero"]), "ce_recovered_mean": percentile(rec["mean"]),
            "kl_sae": percentile(mean["kl"]), "ce_sae": percentile(mean["sae"])}


def unseen_estimate(fires: Tensor) -> dict[str, float]:
    """From per-latent firing counts ``[d_sae]`` over the evaluation's tokens: latents never seen, and Chao1's
    estimate of how many of those are live but rarer than the sample shows (module docstring)."""
    f0, f1, f2 = (int((fires == c).sum()) for c in (0, 1, 2))
    est = min(float(f0), f1 * (f1 - 1) / (2 * (f2 + 1)))
    return {"never_fired": f0, "seen_once": f1, "seen_twice": f2, "expected_live_unseen": est,
            "dead_upper": f0 / len(fires), "dead_estimate": (f0 - est) / len(fires)}
