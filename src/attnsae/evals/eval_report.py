"""What :func:`attnsae.evals.metrics.evaluate` returns, as plain data (no torch): one :class:`SAEEval` per SAE in an
:class:`EvalReport`, which round-trips through JSON (``to_dict`` / ``from_dict``). The views read these."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from attnsae.io import finite

# the SAEEval fields that need loss runs (NaN when CE and KL are refused)
LOSS_FIELDS = ("ce_clean", "ce_sae", "ce_zero", "ce_mean", "ce_recovered_zero", "ce_recovered_mean", "kl_sae",
               "kl_zero", "kl_mean")


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
    # 95% bootstrap intervals over contexts, [lo, hi] per metric (attnsae.evals.intervals); {} with one context
    intervals: dict[str, list[float]] = field(default_factory=dict)
    # latents never seen in n_tokens, and Chao1's estimate of how many of those are live but rare
    unseen: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The scalar metrics (no per-head or per-feature lists)."""
        d = asdict(self)
        for k in ("head_fvu", "head_error_share", "feature_frequency", "intervals", "unseen"):
            d.pop(k)
        return d


@dataclass
class EvalReport:
    """Results of :func:`evaluate` for several SAEs on one model and one set of tokens."""

    model: str
    n_contexts: int
    context_size: int
    n_loss_tokens: int  # next-token predictions per run: n_contexts * (context_size - 1); 0 when CE is refused
    keep_bos: bool
    mean_ablation: str
    saes: list[SAEEval]
    meta: dict[str, Any] = field(default_factory=dict)  # where the tokens came from, set by the caller
    ce_refused: str | None = None  # why CE and KL were not measured (then NaN); None when they were
    bootstrap: dict[str, Any] = field(default_factory=dict)  # how the intervals were made (resamples, level, seed)

    def to_dict(self, feature_frequency: bool = True) -> dict[str, Any]:
        """Plain JSON-ready dict; NaN and infinities become None."""
        d = asdict(self)
        if not feature_frequency:
            for s in d["saes"]:
                s.pop("feature_frequency")
        return finite(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalReport:
        nan = float("nan")
        saes = [SAEEval(**{k: (nan if v is None and k not in ("name", "hook_name") else v) for k, v in s.items()})
                for s in d["saes"]]
        return cls(**{**d, "saes": saes})
