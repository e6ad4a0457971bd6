"""Long- vs short-prefix induction on real text, with an intervention that breaks the longer prefix (PAPER_NOTES §7).

1. **Pairs.** In each context (BOS at 0), every ``(dest, src)`` with ``1 <= src <= dest`` where at least one studied
   head attends more than ``threshold`` (BOS, ``src = 0``, is never a pair).
2. **Prefix length**, measured backwards with fuzzy matching (case and one leading space ignored): the number of
   ``i = 0, 1, ...`` for which ``tok[dest - i]`` matches ``tok[src - 1 - i]``, stopping at the first mismatch or at
   BOS. ``k = 0``: not an induction pair (``tok[src - 1]`` is not the current token); ``k = 1``: only the current
   token matches; ``k >= 2``: a longer prefix repeats.
3. **Intervention** for ``k >= 2``: token ``src - 2`` (the second-last prefix token's first occurrence) becomes a
   random token of another fuzzy class. The one-token match ``tok[src - 1] ~ tok[dest]`` is kept and the longer
   prefix is broken (``k`` becomes 1); nothing else in the context changes. Each pair gets its own modified context.
4. **Report**, per studied head, on the pairs where *that* head attends more than ``threshold`` and ``k >= 2``: its
   mean attention before and after the intervention, each with a 95% interval ``1.96 · sd / sqrt(n)``, overall and
   by prefix length. A head that needs the longer prefix drops; a head content with one matching token does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attnsae.studies.patterns import head_name, head_patterns
from attnsae.studies.prefix_sweep import TokenClasses


def prefix_lengths(tokens: Tensor, row: Tensor, dest: Tensor, src: Tensor, canon: Tensor, max_len: int = 32) -> Tensor:
    """Fuzzy prefix length of each pair (module docstring, step 2), capped at ``max_len``: int64 ``[P]``.

    tokens: int64 ``[n, S]``; row, dest, src: int64 ``[P]`` (the pair's context, destination and source).
    """
    c = canon[tokens]  # [n, S]
    k = torch.zeros(len(row), dtype=torch.long)
    alive = torch.ones(len(row), dtype=torch.bool)
    for i in range(max_len):
        j = src - 1 - i  # first-occurrence side; must stay past BOS
        ok = alive & (j >= 1) & (c[row, (dest - i).clamp_min(0)] == c[row, j.clamp_min(0)])
        k += ok.long()
        alive = ok
        if not alive.any():
            break
    return k


def break_prefix(tokens: Tensor, row: Tensor, src: Tensor, classes: TokenClasses, gen: torch.Generator) -> Tensor:
    """One modified context per pair: ``tokens[row]`` with token ``src - 2`` replaced by a random allowed token of
    another fuzzy class: int64 ``[P, S]``. Pairs need ``src >= 3`` (``src - 2`` is past BOS)."""
    out = tokens[row].clone()
    pos = src - 2
    r = torch.arange(len(row))
    old = classes.canon[out[r, pos]]
    new = classes.allowed[torch.randint(len(classes.allowed), (len(row),), generator=gen)]
    while bool((same := classes.canon[new] == old).any()):  # redraw the few that landed in the old class
        new[same] = classes.allowed[torch.randint(len(classes.allowed), (int(same.sum()),), generator=gen)]
    out[r, pos] = new
    return out


@dataclass
class Pairs:
    """Candidate pairs: row, dest, src, prefix int64 ``[P]``; before float ``[P, n_studied]`` (each studied head's
    attention from dest to src)."""

    row: Tensor
    dest: Tensor
    src: Tensor
    prefix: Tensor
    before: Tensor

    def take(self, idx: Tensor) -> Pairs:
        return Pairs(*(t[idx] for t in (self.row, self.dest, self.src, self.prefix, self.before)))


def find_pairs(model, tokens: Tensor, heads: list[tuple[int, int]], classes: TokenClasses, threshold: float = 0.3,
               batch_size: int = 32, progress: bool = True) -> Pairs:
    """Every (dest, src) where some studied head attends more than ``threshold`` (module docstring, steps 1-2)."""
    found = []
    for i in tqdm(range(0, len(tokens), batch_size), desc="text pairs", unit="batch", disable=not progress):
        toks = tokens[i:i + batch_size]
        p = head_patterns(model, toks, heads)  # [B, n_studied, S, S]
        hit = (p > threshold).any(1)
        hit[:, :, 0] = False  # BOS is a sink, never a pair
        b, d, s = hit.nonzero(as_tuple=True)
        found.append((b + i, d, s, p[b, :, d, s]))
    row, dest, src, before = (torch.cat(x) for x in zip(*found))
    return Pairs(row, dest, src, prefix_lengths(tokens, row, dest, src, classes.canon), before)


def ci95(x: Tensor) -> float:
    """Half-width of the normal 95% interval of the mean of ``x`` [n] (0 for fewer than 2 values)."""
    return float(1.96 * x.std() / len(x) ** 0.5) if len(x) > 1 else 0.0


def _summary(before: Tensor, after: Tensor) -> dict:
    return {"n": len(before), "before": float(before.mean()) if len(before) else None, "before_ci95": ci95(before),
            "after": float(after.mean()) if len(after) else None, "after_ci95": ci95(after)}


def text_intervention(model, tokens: Tensor, heads: list[tuple[int, int]], classes: TokenClasses,
                      threshold: float = 0.3, max_pairs: int = 2000, max_prefix: int = 9, seed: int = 0,
                      batch_size: int = 32, progress: bool = True) -> dict:
    """The study of the module docstring on ``tokens`` int64 ``[n, S]`` (BOS at 0) for the studied ``heads``.

    At most ``max_pairs`` pairs with ``k >= 2`` are intervened on (a random sample). Returns plain data:
    ``prefix_counts`` (pairs by prefix length, ``k >= max_prefix`` pooled), and per head ``{n, before, before_ci95,
    after, after_ci95, by_prefix: {k: same}}``.
    """
    tokens = torch.as_tensor(tokens).long()
    gen = torch.Generator().manual_seed(seed)
    pairs = find_pairs(model, tokens, heads, classes, threshold, batch_size, progress)
    long = (pairs.prefix >= 2).nonzero().squeeze(1)
    if len(long) > max_pairs:
        long = long[torch.randperm(len(long), generator=gen)[:max_pairs]]
    sel = pairs.take(long)
    after = torch.zeros_like(sel.before)
    for i in tqdm(range(0, len(long), batch_size), desc="text intervention", unit="batch", disable=not progress):
        sl = slice(i, i + batch_size)
        mod = break_prefix(tokens, sel.row[sl], sel.src[sl], classes, gen)
        p = head_patterns(model, mod, heads)  # [b, n_studied, S, S]
        r = torch.arange(len(mod))
        after[sl] = p[r, :, sel.dest[sl], sel.src[sl]]
    capped = pairs.prefix.clamp_max(max_prefix)
    out = {"threshold": threshold, "n_contexts": len(tokens), "n_pairs": len(pairs.row),
           "n_intervened": len(long),
           "prefix_counts": {str(k): int((capped == k).sum()) for k in range(max_prefix + 1)},
           "heads": {}}
    kk = sel.prefix.clamp_max(max_prefix)
    for j, (l, h) in enumerate(heads):
        own = sel.before[:, j] > threshold
        res = _summary(sel.before[own, j], after[own, j])
        res["by_prefix"] = {str(k): _summary(sel.before[own & (kk == k), j], after[own & (kk == k), j])
                            for k in range(2, max_prefix + 1) if bool((own & (kk == k)).any())}
        out["heads"][head_name(l, h)] = res
    return out
