"""Stream tokens through a model and its SAEs, keeping per feature what a dashboard needs, in bounded memory.

One forward pass per batch of contexts serves every SAE (it stops at the last needed ``hook_z``). Position 0 (BOS)
is skipped, as in training. Per feature the scan keeps:

* ``n_fired`` and the sum of its activations;
* an exact histogram of its positive activations: ``bins`` bins of width ``2^k`` from 0; when an activation lands
  beyond the last bin, adjacent bins merge pairwise and the width doubles (exact, because the bins nest);
* its top ``n_top`` activations and where they are (flat location ``context * pos + position``);
* a uniform sample of ``n_sample`` of its firings (each firing draws a random key; the smallest keys are kept), from
  which :func:`select_examples` draws examples of activation quantile bands.

Memory: ``d_sae · (12·n_top + 16·n_sample + 8·bins + 24)`` bytes of state, whatever the number of tokens (114 MB
for d_sae 24576 with the defaults, 9.5 MB for the quickstart's 2048), plus the work on one chunk of activations,
``rows = chunk_bytes / (8·d_sae)`` rows at a time, and the firings of one batch. The caller keeps the tokens (8 bytes each) to show examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attnsae.activations import harvest_z
from attnsae.sae.checks import check_sae, cpu_sae
from attnsae.errors import AttnsaeError
from attnsae.memory import check_fits
from attnsae.sae.model import SAE


@dataclass
class ScanConfig:
    n_top: int = 16  # top activations kept per feature
    n_sample: int = 256  # uniform sample of firings per feature (for quantile bands)
    bins: int = 40  # histogram bins (even)
    batch_size: int = 32  # contexts per forward pass
    chunk_bytes: int = 32 * 2**20  # activations encoded at once
    seed: int = 0


@dataclass
class FeatureScan:
    """What the scan kept for every feature of one SAE (``d`` = d_sae); locations are ``context * pos + position``.

    n_fired int64 [d]; act_sum float64 [d]; top_vals float32 [d, n_top] (descending, -inf where unfilled) and
    top_locs int64 [d, n_top] (-1 where unfilled); sample_vals / sample_locs / sample_keys [d, n_sample] (keys +inf
    where unfilled); hist int64 [d, bins] with bin width hist_width float64 [d] (0 until the feature fires).
    """

    n_tokens: int
    n_fired: Tensor
    act_sum: Tensor
    top_vals: Tensor
    top_locs: Tensor
    sample_vals: Tensor
    sample_locs: Tensor
    sample_keys: Tensor
    hist: Tensor
    hist_width: Tensor

    @classmethod
    def empty(cls, d_sae: int, cfg: ScanConfig) -> "FeatureScan":
        if cfg.bins < 2 or cfg.bins % 2:
            raise AttnsaeError(f"bins must be an even number >= 2, got {cfg.bins}")
        K, R = cfg.n_top, cfg.n_sample
        return cls(
            n_tokens=0, n_fired=torch.zeros(d_sae, dtype=torch.long), act_sum=torch.zeros(d_sae, dtype=torch.float64),
            top_vals=torch.full((d_sae, K), -math.inf), top_locs=torch.full((d_sae, K), -1, dtype=torch.long),
            sample_vals=torch.zeros(d_sae, R), sample_locs=torch.full((d_sae, R), -1, dtype=torch.long),
            sample_keys=torch.full((d_sae, R), math.inf),
            hist=torch.zeros(d_sae, cfg.bins, dtype=torch.long), hist_width=torch.zeros(d_sae, dtype=torch.float64))

    @property
    def d_sae(self) -> int:
        return len(self.n_fired)

    @property
    def density(self) -> Tensor:
        """Firing frequency per feature: float64 [d]."""
        return self.n_fired.double() / max(self.n_tokens, 1)

    @property
    def max_act(self) -> Tensor:
        return self.top_vals[:, 0].clamp_min(0)

    @property
    def mean_act(self) -> Tensor:
        return self.act_sum / self.n_fired.clamp_min(1)

    @torch.no_grad()
    def update_sparse(self, loc: Tensor, feature: Tensor, value: Tensor, n_rows: int, gen: torch.Generator) -> None:
        """Fold in the firings of ``n_rows`` tokens: ``loc`` int64 [m], ``feature`` int64 [m], ``value`` float [m] > 0.

        Work is O(m log m + d·(n_top + n_sample)): only the firings are touched, never a dense [tokens, d_sae].
        """
        d = self.d_sae
        value = value.float()
        self.n_tokens += n_rows
        self.n_fired += torch.bincount(feature, minlength=d)
        self.act_sum.index_add_(0, feature, value.double())
        K, R = self.top_vals.shape[1], self.sample_keys.shape[1]
        best = _per_feature(feature, value, d, K, largest=True)  # [d, K] firing indices, -1 where none
        self.top_vals, idx = _topk_cat(self.top_vals, _take(value, best, -math.inf), K, largest=True)
        self.top_locs = _gather_cat(self.top_locs, _take(loc, best, -1), idx)
        keys = torch.rand(len(value), generator=gen)
        pick = _per_feature(feature, keys, d, R, largest=False)
        self.sample_keys, idx = _topk_cat(self.sample_keys, _take(keys, pick, math.inf), R, largest=False)
        self.sample_vals = _gather_cat(self.sample_vals, _take(value, pick, 0.0), idx)
        self.sample_locs = _gather_cat(self.sample_locs, _take(loc, pick, -1), idx)
        self._histogram(feature, value)

    def _histogram(self, feature: Tensor, value: Tensor) -> None:
        bins = self.hist.shape[1]
        bmax = torch.zeros(self.d_sae, dtype=torch.float64).scatter_reduce_(0, feature, value.double(), "amax")
        new = (self.hist_width == 0) & (bmax > 0)
        self.hist_width[new] = torch.exp2(torch.ceil(torch.log2(bmax[new] / bins)))
        while True:
            over = bmax > self.hist_width * bins
            if not over.any():
                break
            merged = self.hist[over].view(-1, bins // 2, 2).sum(-1)
            self.hist[over] = torch.cat([merged, torch.zeros_like(merged)], 1)
            self.hist_width[over] *= 2
        idx = torch.floor(value.double() / self.hist_width[feature]).long().clamp_(0, bins - 1)
        self.hist.view(-1).index_add_(0, feature * bins + idx, torch.ones_like(idx))


def _per_feature(feature: Tensor, score: Tensor, d: int, k: int, largest: bool) -> Tensor:
    """For each feature, the indices of its ``k`` best firings by ``score`` (best first): int64 [d, k], -1 padded."""
    order = torch.argsort(score, descending=largest, stable=True)
    order = order[torch.argsort(feature[order], stable=True)]  # by feature, then by score
    f = feature[order]
    counts = torch.bincount(f, minlength=d)
    rank = torch.arange(len(f)) - (counts.cumsum(0) - counts)[f]
    keep = rank < k
    out = torch.full((d, k), -1, dtype=torch.long)
    out[f[keep], rank[keep]] = order[keep]
    return out


def _take(x: Tensor, idx: Tensor, fill: float) -> Tensor:
    """``x[idx]`` with ``fill`` where ``idx`` is -1."""
    return torch.where(idx >= 0, x[idx.clamp_min(0)], torch.tensor(fill, dtype=x.dtype)) if len(x) else \
        torch.full(idx.shape, fill, dtype=x.dtype)


def _topk_cat(old: Tensor, new: Tensor, k: int, largest: bool) -> tuple[Tensor, Tensor]:
    """Top-k along dim 1 of ``cat([old, new], 1)``: values and indices into the concatenation."""
    vals, idx = torch.cat([old, new], 1).topk(k, dim=1, largest=largest, sorted=True)
    return vals, idx


def _gather_cat(old: Tensor, new: Tensor, idx: Tensor) -> Tensor:
    """``cat([old, new], 1).gather(1, idx)`` for indices from :func:`_topk_cat`."""
    return torch.cat([old, new], 1).gather(1, idx)


@torch.no_grad()
def scan_bytes(d_sae: int, cfg: ScanConfig) -> int:
    """The scan's state for one SAE (see the module docstring), with the top and sample tables counted three times:
    each update concatenates the old and the new candidates before keeping the best."""
    return d_sae * (3 * 12 * cfg.n_top + 3 * 16 * cfg.n_sample + 8 * cfg.bins + 24)


def scan_features(model, saes: list[SAE], tokens: Tensor, cfg: ScanConfig | None = None,
                  progress: bool = True) -> list[FeatureScan]:
    """Scan ``tokens`` int64 [n_contexts, pos] (BOS at 0) for every feature of every SAE: one state per SAE."""
    cfg = cfg or ScanConfig()
    tokens = torch.as_tensor(tokens).long()
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise AttnsaeError(f"nothing to scan: need at least one context of 2+ tokens, got shape {tuple(tokens.shape)}")
    layers = [check_sae(model, sae) for sae in saes]
    saes = [cpu_sae(sae) for sae in saes]
    check_fits(sum(scan_bytes(sae.cfg.d_sae, cfg) for sae in saes),
               f"keeping the top {cfg.n_top:,} examples of every feature ({sum(s.cfg.d_sae for s in saes):,} features)",
               "lower --n-top")
    states = [FeatureScan.empty(sae.cfg.d_sae, cfg) for sae in saes]
    gen = torch.Generator().manual_seed(cfg.seed)
    n, S = tokens.shape
    pos = torch.arange(1, S)
    for i in tqdm(range(0, n, cfg.batch_size), desc="scan", unit="batch", disable=not progress):
        batch = tokens[i:i + cfg.batch_size]
        zs = harvest_z(model, batch, sorted(set(layers)), drop_bos=True)
        locs = ((torch.arange(i, i + len(batch))[:, None] * S) + pos[None]).reshape(-1)
        for sae, layer, st in zip(saes, layers, states):
            z = zs[layer].to(device="cpu", dtype=sae.dtype)
            rows = max(1, cfg.chunk_bytes // (2 * 4 * sae.cfg.d_sae))  # activations and their firing mask
            fired = []
            for j in range(0, len(z), rows):
                acts = sae.encode(z[j:j + rows]).float()
                r, f = (acts > 0).nonzero(as_tuple=True)
                fired.append((locs[j + r], f, acts[r, f]))
            st.update_sparse(*(torch.cat(x) for x in zip(*fired)), len(z), gen)
    return states


@dataclass
class ExampleGroup:
    """Examples of one feature: ``vals`` float32 [m] and ``locs`` int64 [m], with a title for the dashboard."""

    title: str
    vals: Tensor
    locs: Tensor


def select_examples(st: FeatureScan, feature: int, n_bands: int = 4, per_band: int = 3) -> list[ExampleGroup]:
    """The top activations, then ``per_band`` examples from each activation quantile band of the sampled firings.

    Bands split the uniform sample by rank into ``n_bands`` equal parts (highest first); examples within a band are
    evenly spaced by rank, and any already among the top activations are left out.
    """
    ok = st.top_locs[feature] >= 0
    groups = [ExampleGroup("Top activations", st.top_vals[feature][ok], st.top_locs[feature][ok])]
    if not ok.any():
        return []
    keep = torch.isfinite(st.sample_keys[feature])
    vals, locs = st.sample_vals[feature][keep], st.sample_locs[feature][keep]
    order = torch.argsort(vals, descending=True)
    vals, locs = vals[order], locs[order]
    m = len(vals)
    top = set(groups[0].locs.tolist())
    for b in range(n_bands):
        lo, hi = b * m // n_bands, (b + 1) * m // n_bands
        if hi - lo < 1:
            continue
        ranks = torch.linspace(lo, hi - 1, min(per_band, hi - lo)).round().long().unique()
        ranks = torch.tensor([r for r in ranks.tolist() if int(locs[r]) not in top], dtype=torch.long)
        if len(ranks) == 0:
            continue
        q_hi, q_lo = 100 - 100 * b // n_bands, 100 - 100 * (b + 1) // n_bands
        title = f"Quantile {q_lo}–{q_hi}% (act {float(vals[hi - 1]):.3g}–{float(vals[lo]):.3g})"
        groups.append(ExampleGroup(title, vals[ranks], locs[ranks]))
    return groups
