"""Specificity of a feature against a hand-written proxy (PAPER_NOTES §5).

A :class:`Proxy` is a Python predicate over one context's tokens, ``holds(tokens int64 [S], t) -> bool``: "the
current token occurred before and was followed by X". :func:`specificity` splits a feature's positive activations by
whether the proxy holds at their position: the histogram of activations (how many firings), and its *expected value*
variant, where each bin counts the sum of the activations in it (where the feature's output mass comes from). It also
reports the proxy's precision (share of firings, and of activation mass, where it holds) and recall (share of the
positions where it holds at which the feature fires). Position 0 (BOS) is left out.

Two proxies ship (both fuzzy: case and one leading space ignored, through ``canon``):

* :func:`followed_by` — the current token occurred earlier and that earlier occurrence was followed by a token of
  the given set (induction of a specific X: the paper's "board" example);
* :func:`repeated_prefix` — the last ``k`` tokens occurred earlier in the same order (a long prefix repeats).
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm


@dataclass
class Proxy:
    name: str
    description: str
    holds: Callable[[Tensor, int], bool]  # (context tokens int64 [S], position t) -> does the proxy hold at t


def followed_by(next_ids: set[int], canon: Tensor, label: str = "X") -> Proxy:
    """The current token occurred before (fuzzy) and was then followed by a token of ``next_ids``."""
    want = {int(canon[i]) for i in next_ids}

    def holds(tokens: Tensor, t: int) -> bool:
        c = canon[tokens[: t + 1]].tolist()
        return any(c[s - 1] == c[t] and c[s] in want for s in range(2, t + 1))

    return Proxy(f"followed_by({label})", f"the current token occurred before and was followed by {label!r}", holds)


def repeated_prefix(k: int, canon: Tensor) -> Proxy:
    """The ``k`` tokens ending at the current one occurred earlier in the same order (fuzzy; BOS never matches)."""

    def holds(tokens: Tensor, t: int) -> bool:
        if t < k:
            return False
        c = canon[tokens[: t + 1]].tolist()
        tail = c[t - k + 1: t + 1]
        return any(c[s - k + 1: s + 1] == tail for s in range(k, t))

    return Proxy(f"repeated_prefix({k})", f"the last {k} tokens occurred earlier in this order", holds)


def proxy_mask(tokens: Tensor, proxy: Proxy, progress: bool = False) -> Tensor:
    """Where ``proxy`` holds: bool ``[n, S]`` for tokens int64 ``[n, S]`` (position 0 always False)."""
    n, S = tokens.shape
    out = torch.zeros(n, S, dtype=torch.bool)
    for i in tqdm(range(n), desc=proxy.name, unit="ctx", disable=not progress):
        for t in range(1, S):
            out[i, t] = proxy.holds(tokens[i], t)
    return out


def specificity(acts: Tensor, holds: Tensor, bins: int = 30) -> dict:
    """Histogram of the positive ``acts`` float ``[n, S]`` split by ``holds`` bool ``[n, S]`` (position 0 left out).

    Returns ``edges`` [bins + 1]; ``count_holds`` / ``count_not`` [bins] (firings per bin); ``mass_holds`` /
    ``mass_not`` [bins] (sum of activations per bin: the expected-value variant); ``precision``, ``mass_precision``,
    ``recall``, ``n_fired``, ``n_holds``.
    """
    a, h = acts[:, 1:].reshape(-1).float(), holds[:, 1:].reshape(-1)
    fired = a > 0
    top = float(a.max()) if bool(fired.any()) else 1.0
    edges = torch.linspace(0, top, bins + 1)
    idx = (a / top * bins).long().clamp(0, bins - 1)

    def hist(mask: Tensor, weight: Tensor) -> list[float]:
        return torch.zeros(bins).index_add_(0, idx[mask], weight[mask]).tolist()

    ones = torch.ones_like(a)
    n_fired, mass = int(fired.sum()), float(a[fired].sum())
    return {
        "edges": edges.tolist(),
        "count_holds": hist(fired & h, ones), "count_not": hist(fired & ~h, ones),
        "mass_holds": hist(fired & h, a), "mass_not": hist(fired & ~h, a),
        "precision": float((fired & h).sum()) / max(n_fired, 1),
        "mass_precision": float(a[fired & h].sum()) / mass if mass > 0 else 0.0,
        "recall": float((fired & h).sum()) / max(int(h.sum()), 1),
        "n_fired": n_fired, "n_holds": int(h.sum()),
    }
