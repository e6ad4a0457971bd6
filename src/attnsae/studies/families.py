"""Feature families from DFA by source position: induction, short-range context, long-range context, or unclear.

For one example (a feature firing at destination ``t`` of a context with tokens ``tok``), let ``d[s]`` be its DFA by
source position (``s <= t`` in a causal model; every ``s`` in an encoder, whose attention runs both ways, with
distances ``|t - s|``) and ``d⁺ = max(d, 0)``. BOS (``s = 0``) is an attention sink, so it is left out of the
mass ``P = Σ_{s>=1} d⁺[s]`` and reported on its own. The statistics, each a fraction of ``P``:

* ``induction``: mass on sources ``s`` whose preceding token matches the destination token,
  ``canon(tok[s-1]) == canon(tok[t])`` — the token after a previous occurrence of the current token (fuzzy: case and
  one leading space are ignored, so ``" Foo"``, ``"foo"`` and ``"FOO"`` match). Only sources more than
  ``local_window`` tokens back count: a nearby match cannot be told apart from short-range attention;
* ``chance``: the share of those candidate sources (``s >= 1``, more than ``local_window`` back) that match — the
  induction share a feature would get by spreading its mass evenly;
* ``local``: mass within ``local_window`` tokens (``t - s <= local_window``, the destination itself included);
* ``self``: mass on the destination itself;
* ``far``: mass more than ``far_distance`` tokens back;
* ``mean_distance``: the mass-weighted mean of ``t - s``;
* ``bos``: ``d⁺[0] / (d⁺[0] + P)``.

A feature's statistics are the activation-weighted means over its top examples (those with ``P > 0``). Its label is
the first rule that holds (:class:`FamilyThresholds` holds the numbers; they are recorded with every result):

1. ``induction``    if ``induction >= t.induction`` and ``induction >= t.induction_lift · chance``;
2. ``short-range``  if ``local >= t.local``;
3. ``long-range``   if ``far >= t.far``;
4. ``unclear``      otherwise, or when fewer than ``t.min_examples`` examples have positive mass.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import Tensor

from attnsae.studies.results import FAMILIES, STATS  # noqa: F401  (defined where the views read them)


@dataclass
class FamilyThresholds:
    induction: float = 0.5  # share of DFA mass on the token after a previous occurrence
    induction_lift: float = 5.0  # ... and at least this many times the share of matching sources
    local: float = 0.6  # share within local_window tokens
    far: float = 0.5  # share more than far_distance tokens back
    local_window: int = 4
    far_distance: int = 8
    min_examples: int = 3

    def criterion(self) -> str:
        return (f"first that holds: induction if ≥{self.induction:.0%} of the DFA mass (BOS excluded) sits on tokens "
                f"right after an earlier occurrence of the current token (case and leading space ignored; more than "
                f"{self.local_window} tokens back) and that share is ≥{self.induction_lift:g}× the share of such "
                f"tokens among the candidates; "
                f"short-range if ≥{self.local:.0%} lies within {self.local_window} tokens; long-range if "
                f"≥{self.far:.0%} lies more than {self.far_distance} tokens back; else unclear (also with fewer "
                f"than {self.min_examples} top examples); activation-weighted means over the top activations")

    def to_dict(self) -> dict:
        return asdict(self)


def canonical_ids(vocab: Sequence[str]) -> Tensor:
    """Token id -> id of its fuzzy class: int64 [d_vocab]. Lower-cased, one leading space (or Ġ) dropped.

    A token that is only whitespace keeps its own class, so spaces and newlines never match each other.
    """
    classes: dict[str, int] = {}
    out = torch.empty(len(vocab), dtype=torch.long)
    for i, s in enumerate(vocab):
        key = s[1:] if s[:1] in (" ", "Ġ") and len(s) > 1 else s
        key = key.lower() if key.strip() else s
        out[i] = classes.setdefault(key, len(classes))
    return out


@torch.no_grad()
def example_stats(by_src: Tensor, tokens: Tensor, dest: Tensor, canon: Tensor,
                  thresholds: FamilyThresholds | None = None, causal: bool = True) -> dict[str, Tensor]:
    """The statistics of the module docstring for E examples.

    by_src: float [E, S] DFA by source position (0 after ``dest``); tokens: int64 [E, S] each example's context;
    dest: int64 [E]; canon: int64 [d_vocab] from :func:`canonical_ids`; ``causal=False`` (an encoder) counts sources
    after the destination too, at distance ``|t - s|``. Returns ``{stat: float [E]}`` plus ``mass`` (``P``).
    """
    t = thresholds or FamilyThresholds()
    E, S = by_src.shape
    s = torch.arange(S)[None]
    dist = (dest[:, None] - s).float()  # [E, S]
    if not causal:
        dist = dist.abs()
    valid = (dist >= 0) & (s >= 1)
    pos = torch.where(valid, by_src.float().clamp_min(0), torch.zeros(()))
    mass = pos.sum(1)
    denom = mass.clamp_min(torch.finfo(torch.float32).tiny)
    c = canon[tokens]  # [E, S]
    prev = torch.cat([torch.full((E, 1), -1), c[:, :-1]], 1)  # canon of tok[s-1]
    match = (prev == c.gather(1, dest[:, None])) & (dist > t.local_window) & valid
    far_enough = (dist > t.local_window) & valid
    bos = by_src[:, 0].float().clamp_min(0)
    return {
        "induction": (pos * match).sum(1) / denom,
        "chance": match.sum(1) / far_enough.sum(1).clamp_min(1),
        "local": (pos * (dist <= t.local_window)).sum(1) / denom,
        "self": (pos * (dist == 0)).sum(1) / denom,
        "far": (pos * (dist > t.far_distance)).sum(1) / denom,
        "mean_distance": (pos * dist.clamp_min(0)).sum(1) / denom,
        "bos": bos / (bos + mass).clamp_min(torch.finfo(torch.float32).tiny),
        "mass": mass,
    }


def feature_stats(stats: dict[str, Tensor], acts: Tensor) -> dict[str, float]:
    """Activation-weighted means over one feature's examples (those with positive mass), plus ``n_examples``."""
    keep = stats["mass"] > 0
    w = acts.float().clamp_min(0) * keep
    n = int(keep.sum())
    if n == 0 or float(w.sum()) <= 0:
        return {k: 0.0 for k in STATS} | {"n_examples": n}
    w = w / w.sum()
    return {k: float((stats[k] * w).sum()) for k in STATS} | {"n_examples": n}


def classify(stats: dict[str, float], thresholds: FamilyThresholds | None = None) -> str:
    """The family of one feature from :func:`feature_stats` (rules in the module docstring)."""
    t = thresholds or FamilyThresholds()
    if stats.get("n_examples", 0) < t.min_examples:
        return "unclear"
    if stats["induction"] >= t.induction and stats["induction"] >= t.induction_lift * stats["chance"]:
        return "induction"
    if stats["local"] >= t.local:
        return "short-range"
    if stats["far"] >= t.far:
        return "long-range"
    return "unclear"


def breakdown(labels_by_sae: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """Counts per family for each SAE (live features only: ``"dead"`` labels are counted apart)."""
    out = {}
    for name, labels in labels_by_sae.items():
        c = Counter(labels)
        out[name] = {f: c.get(f, 0) for f in FAMILIES} | {"live": sum(c[f] for f in FAMILIES), "dead": c.get("dead", 0)}
    return out
