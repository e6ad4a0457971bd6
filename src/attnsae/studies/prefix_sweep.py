"""Synthetic long- vs short-prefix induction sweep (PAPER_NOTES §7), for every head of the model.

For each prefix length ``k`` in ``1..max_prefix`` the same ``n_seqs`` base sequences are used: ``[BOS]`` then
``seq_len - 1`` tokens with no repeats (no two in one fuzzy class either: case and a leading space ignored, so the
prefix is exactly ``k`` tokens long however it is matched). Each sequence has two fixed positions, ``src`` in the
first half and ``dest`` in the second; the ``k`` tokens ending at ``src - 1`` and the token at ``src`` are copied to
end at ``dest`` and ``dest + 1``::

    ... a b c [d] ... a b c d ...        k = 3: tokens src-3..src copied to dest-2..dest+1
          src ^           ^ dest

The induction score of a head at length ``k`` is its attention from ``dest`` (the second occurrence of the last
prefix token) to ``src`` (the token after its first occurrence), averaged over sequences, with a 95% confidence
interval ``1.96 · sd / sqrt(n)``. Because ``src`` and ``dest`` do not move with ``k``, the curves differ only by the
length of the repeated prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attnsae.corpus import bos_token_id
from attnsae.errors import AttnsaeError
from attnsae.memory import check_fits
from attnsae.studies.families import canonical_ids
from attnsae.studies.patterns import attention_at, head_name


@dataclass
class TokenClasses:
    """The model's vocabulary as the studies match it: ``canon`` int64 [d_vocab] (fuzzy class of each id, from
    :func:`attnsae.studies.families.canonical_ids`), ``allowed`` int64 [m] (ids a random token may take: no special
    tokens), ``bos`` (the BOS id)."""

    canon: Tensor
    allowed: Tensor
    bos: int

    @classmethod
    def of(cls, model) -> TokenClasses:
        from attnsae.studies.examples import vocab_strings

        tok = model.tokenizer
        n = min(int(model.cfg.d_vocab), len(tok))
        special = set(getattr(tok, "all_special_ids", []) or [])
        allowed = torch.tensor([i for i in range(n) if i not in special], dtype=torch.long)
        return cls(canonical_ids(vocab_strings(model)), allowed, bos_token_id(tok))


def distinct_rows(n_seqs: int, seq_len: int, classes: TokenClasses, gen: torch.Generator) -> Tensor:
    """``[BOS]`` + ``seq_len - 1`` allowed tokens of pairwise different fuzzy classes: int64 ``[n_seqs, seq_len]``."""
    ids, c = classes.allowed, classes.canon[classes.allowed]
    n_classes = int(c.unique().numel())
    if n_classes < seq_len - 1:
        raise AttnsaeError(f"the vocabulary has {n_classes} distinct token classes; sequences of {seq_len} tokens "
                           "without repeats need at least seq_len - 1")
    rows = torch.empty(n_seqs, seq_len, dtype=torch.long)
    rows[:, 0] = classes.bos
    pos = torch.arange(len(ids))
    for i in range(n_seqs):
        perm = torch.randperm(len(ids), generator=gen)
        cls_ = c[perm]
        first = torch.full((int(c.max()) + 1,), len(ids)).scatter_reduce(0, cls_, pos, "amin")
        keep = first[cls_] == pos  # the first id drawn of each class
        rows[i, 1:] = ids[perm[keep][: seq_len - 1]]
    return rows


def sweep_positions(n_seqs: int, seq_len: int, max_prefix: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``src`` in ``[max_prefix + 1, seq_len // 2)`` and ``dest`` in ``[seq_len // 2 + max_prefix, seq_len - 2]``:
    int64 ``[n_seqs]`` each. Every prefix up to ``max_prefix`` then fits, after BOS, without the copies overlapping."""
    half = seq_len // 2
    if max_prefix < 1 or half <= max_prefix + 1 or half + max_prefix > seq_len - 2:
        raise AttnsaeError(f"sequences of {seq_len} tokens are too short for prefixes up to {max_prefix}: use "
                           f"seq_len >= {2 * max_prefix + 4}")
    src = torch.randint(max_prefix + 1, half, (n_seqs,), generator=gen)
    dest = torch.randint(half + max_prefix, seq_len - 1, (n_seqs,), generator=gen)
    return src, dest


def copy_prefix(rows: Tensor, src: Tensor, dest: Tensor, k: int) -> Tensor:
    """Rows with tokens ``src-k .. src`` copied to ``dest-k+1 .. dest+1``: int64 ``[n, seq_len]`` (a new tensor)."""
    out = rows.clone()
    offs = torch.arange(-k, 1)
    r = torch.arange(len(rows))[:, None]
    out[r, dest[:, None] + 1 + offs] = rows[r, src[:, None] + offs]
    return out


@dataclass
class Sweep:
    """Induction score by prefix length for every head.

    lengths: [K] prefix lengths; mean and ci95: float ``[K, n_layers, n_heads]`` (mean attention from dest to src,
    and the half-width of its 95% interval); n_seqs, seq_len: the sequences' number and length.
    """

    lengths: list[int]
    mean: Tensor
    ci95: Tensor
    n_seqs: int
    seq_len: int

    @property
    def heads(self) -> list[str]:
        L, H = self.mean.shape[1:]
        return [head_name(l, h) for l in range(L) for h in range(H)]

    def series(self) -> dict[str, list[float]]:
        """``{"L1H1": [score at each length], ...}``: each series read from its own head's slot."""
        L, H = self.mean.shape[1:]
        return {head_name(l, h): self.mean[:, l, h].tolist() for l in range(L) for h in range(H)}

    def to_dict(self) -> dict:
        L, H = self.mean.shape[1:]
        return {"lengths": self.lengths, "n_seqs": self.n_seqs, "seq_len": self.seq_len,
                "series": self.series(),
                "ci95": {head_name(l, h): self.ci95[:, l, h].tolist() for l in range(L) for h in range(H)}}


def prefix_sweep(model, n_seqs: int = 400, seq_len: int = 128, max_prefix: int = 9, seed: int = 0,
                 batch_size: int = 32, classes: TokenClasses | None = None, progress: bool = True) -> Sweep:
    """The sweep of the module docstring: ``n_seqs`` sequences of ``seq_len`` tokens per prefix length 1..max_prefix."""
    if seq_len > int(model.cfg.n_ctx):
        raise AttnsaeError(f"seq_len {seq_len} is longer than the model's context of {model.cfg.n_ctx} tokens")
    if n_seqs < 2:
        raise AttnsaeError(f"n_seqs must be at least 2 (a confidence interval needs two), got {n_seqs}")
    check_fits(24 * n_seqs * seq_len + 4 * max_prefix * n_seqs * model.cfg.n_layers * model.cfg.n_heads,
               f"a sweep of {n_seqs:,} sequences of {seq_len} tokens", "lower --n-seqs")
    classes = classes or TokenClasses.of(model)
    gen = torch.Generator().manual_seed(seed)
    rows = distinct_rows(n_seqs, seq_len, classes, gen)
    src, dest = sweep_positions(n_seqs, seq_len, max_prefix, gen)
    lengths = list(range(1, max_prefix + 1))
    scores = torch.zeros(len(lengths), n_seqs, model.cfg.n_layers, model.cfg.n_heads)
    steps = [(ki, i) for ki in range(len(lengths)) for i in range(0, n_seqs, batch_size)]
    for ki, i in tqdm(steps, desc="prefix sweep", unit="batch", disable=not progress):
        sl = slice(i, i + batch_size)
        toks = copy_prefix(rows[sl], src[sl], dest[sl], lengths[ki])
        scores[ki, sl] = attention_at(model, toks, dest[sl], src[sl])
    mean = scores.mean(1)
    ci = 1.96 * scores.std(1) / n_seqs ** 0.5
    return Sweep(lengths, mean, ci, n_seqs, seq_len)
