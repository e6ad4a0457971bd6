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
``rows = chunk_bytes / (16·d_sae)`` rows at a time. The caller keeps the tokens (8 bytes each) to show examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attnsae.activations import harvest_z
from attnsae.attribution.inputs import check_sae_fits, cpu_sae
from attnsae.errors import AttnsaeError
from attnsae.sae import SAE


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
    def update(self, acts: Tensor, locs: Tensor, gen: torch.Generator) -> None:
        """Fold in activations ``acts`` float32 [n, d] at locations ``locs`` int64 [n]."""
        n, d = acts.shape
        fired = acts > 0
        self.n_tokens += n
        self.n_fired += fired.sum(0)
        at = torch.where(fired, acts, -math.inf).T  # [d, n]
        self.act_sum += at.clamp_min(0).sum(1, dtype=torch.float64)
        self.top_vals, self.top_locs = _merge(self.top_vals, self.top_locs, at, locs, largest=True)
        keys = torch.rand(d, n, generator=gen).masked_fill_(~fired.T, math.inf)
        self.sample_keys, idx = _topk_cat(self.sample_keys, keys, self.sample_keys.shape[1], largest=False)
        self.sample_vals = _gather_cat(self.sample_vals, at, idx)
        self.sample_locs = _gather_cat(self.sample_locs, locs.expand(d, n), idx)
        self._histogram(acts, fired)

    def _histogram(self, acts: Tensor, fired: Tensor) -> None:
        bins = self.hist.shape[1]
        bmax = acts.clamp_min(0).amax(0).double()  # [d]
        new = (self.hist_width == 0) & (bmax > 0)
        self.hist_width[new] = torch.exp2(torch.ceil(torch.log2(bmax[new] / bins)))
        while True:
            over = bmax > self.hist_width * bins
            if not over.any():
                break
            merged = self.hist[over].view(-1, bins // 2, 2).sum(-1)
            self.hist[over] = torch.cat([merged, torch.zeros_like(merged)], 1)
            self.hist_width[over] *= 2
        r, f = fired.nonzero(as_tuple=True)
        idx = torch.floor(acts[r, f].double() / self.hist_width[f]).long().clamp_(0, bins - 1)
        self.hist.view(-1).index_add_(0, f * bins + idx, torch.ones_like(idx))


def _topk_cat(old: Tensor, new: Tensor, k: int, largest: bool) -> tuple[Tensor, Tensor]:
    """Top-k along dim 1 of ``cat([old, new], 1)``: values and indices into the concatenation."""
    vals, idx = torch.cat([old, new], 1).topk(k, dim=1, largest=largest, sorted=True)
    return vals, idx


def _gather_cat(old: Tensor, new: Tensor, idx: Tensor) -> Tensor:
    """``cat([old, new], 1).gather(1, idx)`` for indices from :func:`_topk_cat`."""
    K = old.shape[1]
    from_old = idx < K
    a = old.gather(1, idx.clamp(max=K - 1))
    b = new.gather(1, (idx - K).clamp(min=0)) if new.shape[1] else a
    return torch.where(from_old, a, b)


def _merge(vals: Tensor, locs: Tensor, new_vals: Tensor, new_locs: Tensor, largest: bool) -> tuple[Tensor, Tensor]:
    v, idx = _topk_cat(vals, new_vals, vals.shape[1], largest)
    loc = _gather_cat(locs, new_locs.expand(new_vals.shape[0], -1), idx)
    return v, torch.where(torch.isfinite(v), loc, -1)


@torch.no_grad()
def scan_features(model, saes: list[SAE], tokens: Tensor, cfg: ScanConfig | None = None,
                  progress: bool = True) -> list[FeatureScan]:
    """Scan ``tokens`` int64 [n_contexts, pos] (BOS at 0) for every feature of every SAE: one state per SAE."""
    cfg = cfg or ScanConfig()
    tokens = torch.as_tensor(tokens).long()
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise AttnsaeError(f"nothing to scan: need at least one context of 2+ tokens, got shape {tuple(tokens.shape)}")
    layers = [check_sae_fits(model, sae) for sae in saes]
    saes = [cpu_sae(sae) for sae in saes]
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
            rows = max(1, cfg.chunk_bytes // (4 * sae.cfg.d_sae * 4))  # acts, the masked copy, keys, scratch
            for j in range(0, len(z), rows):
                st.update(sae.encode(z[j:j + rows]).float(), locs[j:j + rows], gen)
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
