"""Feature dashboards: scan a corpus, explain each example with DFA, label families, and write the site.

:func:`build_dashboards` runs the pipeline and returns a :class:`Dashboards` (the raw ``bundle`` that
:mod:`attnsae.views.dashboards` cuts, rounds and renders, plus the tensors behind it):

1. :func:`attnsae.studies.scan.scan_features` streams the tokens once for every SAE (bounded memory);
2. :func:`attnsae.studies.scan.select_examples` picks each feature's top activations and quantile-band examples;
3. :func:`gather_examples` reruns only the contexts those examples live in, in batches, and computes the exact DFA
   of each example by source position and head (:func:`attnsae.attribution.dfa_from_activations` with explicit
   entries). Each example keeps the raw values of the positions its page may show; the page shows a window of
   ``window_before`` / ``window_after`` tokens around its destination, plus a short segment around the DFA peak when
   the peak lies before the window (how induction becomes visible);
4. families from the top examples' DFA (:mod:`attnsae.studies.families`), the weight-based head attribution, the DFA by
   head averaged over the top examples, and the top and bottom direct logit effects with their histogram.

:func:`write_dashboards` writes everything into one folder, atomically (a failed run leaves no partial folder):
``index.html`` (+ ``vocab.js``, ``data/``), ``heads.html`` / ``heads.json`` (:mod:`attnsae.studies.polysemanticity`),
``families.json`` / ``families.md`` / ``families.png``, ``summary.json`` and, on request, ``neuronpedia/``
(PAPER_NOTES §9: ``features.jsonl`` and ``activations.jsonl`` per SAE).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attnsae.activations import hook_z_name
from attnsae.attribution.dfa import dfa_from_activations, from_cache, hook_names
from attnsae.attribution.head_shares import head_shares
from attnsae.attribution.logits import logit_effect_matrix
from attnsae.errors import AttnsaeError
from attnsae.io import printable
from attnsae.models import model_name
from attnsae.models.architecture import describe
from attnsae.models.hooks import capture
from attnsae.sae.checks import check_sae, cpu_sae, fingerprint
from attnsae.sae.model import SAE
from attnsae.studies import families as fam
from attnsae.studies.results import Dashboards
from attnsae.studies.scan import FeatureScan, ScanConfig, scan_features, select_examples


@dataclass
class DashboardConfig:
    scan: ScanConfig = field(default_factory=ScanConfig)
    n_bands: int = 4  # activation quantile bands
    per_band: int = 3  # examples per band
    window_before: int = 20  # tokens shown before the destination
    window_after: int = 3  # and after it
    peak_context: int = 3  # tokens shown either side of a DFA peak that lies before the window
    n_logits: int = 10  # top and bottom logit effects
    logit_bins: int = 40
    dfa_batch: int = 16  # contexts per forward pass when gathering examples
    families: fam.FamilyThresholds = field(default_factory=fam.FamilyThresholds)

    def __post_init__(self) -> None:
        n = self.scan.n_sample  # the bands split this many sampled firings per feature
        if not 1 <= self.n_bands <= n:
            raise AttnsaeError(f"--n-bands must be in 1..{n} (the firings sampled per feature), got {self.n_bands}")
        if not 0 <= self.per_band <= n:
            raise AttnsaeError(f"--per-band must be in 0..{n} (the firings sampled per feature), got {self.per_band}")


# ----------------------------------------------------------------------------------------------- examples


@dataclass
class Entries:
    """The examples to explain, of all SAEs, flattened: int64 [E] each (``group`` indexes the feature's example
    groups, 0 = top activations)."""

    sae: Tensor
    feature: Tensor
    ctx: Tensor
    dest: Tensor
    group: Tensor


def example_entries(states: list[FeatureScan], cfg: DashboardConfig, S: int) -> tuple[Entries, list[list[list[str]]]]:
    """Every example to gather, and per SAE and feature the titles of its example groups."""
    cols: dict[str, list] = {k: [] for k in ("sae", "feature", "ctx", "dest", "group")}
    titles: list[list[list[str]]] = []
    for k, st in enumerate(states):
        titles.append([])
        for f in range(st.d_sae):
            groups = select_examples(st, f, cfg.n_bands, cfg.per_band) if st.n_fired[f] else []
            titles[k].append([g.title for g in groups])
            for gi, g in enumerate(groups):
                m = len(g.locs)
                cols["sae"].append(torch.full((m,), k))
                cols["feature"].append(torch.full((m,), f))
                cols["ctx"].append(g.locs // S)
                cols["dest"].append(g.locs % S)
                cols["group"].append(torch.full((m,), gi))
    if not cols["sae"]:
        return Entries(*(torch.zeros(0, dtype=torch.long) for _ in range(5))), titles
    return Entries(**{k: torch.cat(v).long() for k, v in cols.items()}), titles


@torch.no_grad()
def gather_examples(model, saes: list[SAE], tokens: Tensor, entries: Entries, cfg: DashboardConfig,
                    canon: Tensor, on_example: Callable[[int, int, dict], None] | None = None,
                    progress: bool = True) -> "Gathered":
    """Explain each entry: its display record, activation, family statistics and DFA by head.

    tokens: int64 [n_contexts, S].
    ``on_example(sae, feature, full)`` receives, per entry, the whole context up to the window's end (tokens,
    activations and DFA) for exports.
    """
    E = len(entries.feature)
    S = tokens.shape[1]
    H = model.cfg.n_heads
    records: list[dict] = [{} for _ in range(E)]
    stats = {k: torch.zeros(E) for k in (*fam.STATS, "mass")}
    by_head = torch.zeros(E, H)
    act = torch.zeros(E)
    layers = [check_sae(model, sae) for sae in saes]
    causal = describe(model).causal
    names = [n for layer in sorted(set(layers)) for n in hook_names(layer)]
    ctxs = torch.unique(entries.ctx)
    d_max = max(sae.cfg.d_sae for sae in saes)
    B = max(1, min(cfg.dfa_batch, 2**23 // (S * d_max)))  # the dense activations of a batch stay under 32 MB
    order = torch.argsort(entries.ctx, stable=True)
    starts = torch.searchsorted(entries.ctx[order], ctxs)
    ends = torch.searchsorted(entries.ctx[order], ctxs, right=True)
    for i in tqdm(range(0, len(ctxs), B), desc="examples", unit="batch", disable=not progress):
        batch_ctx = ctxs[i:i + B]
        idx = order[int(starts[i]):int(ends[min(i + B, len(ctxs)) - 1])]
        toks = tokens[batch_ctx]
        cache = capture(model, toks, names, stop_at_layer=max(layers) + 1)
        b_local = torch.searchsorted(batch_ctx, entries.ctx[idx])
        for k, (sae, layer) in enumerate(zip(saes, layers)):
            sel = entries.sae[idx] == k
            if not sel.any():
                continue
            ii, bb = idx[sel], b_local[sel]
            acts = from_cache(cache, layer)
            res = dfa_from_activations(acts, sae, entries=(bb, entries.dest[ii], entries.feature[ii]))
            feat_acts = _feature_acts(sae, acts.z, bb, entries.feature[ii])  # [e, S]
            st = fam.example_stats(res.by_src, toks[bb], entries.dest[ii], canon, cfg.families, causal)
            for name, v in st.items():
                stats[name][ii] = v
            by_head[ii] = res.by_head
            act[ii] = res.act
            for j, e in enumerate(ii.tolist()):
                records[e] = _record(cfg, int(batch_ctx[bb[j]]), int(entries.dest[e]), toks[bb[j]], feat_acts[j],
                                     res, j)
                if on_example is not None:
                    on_example(k, int(entries.feature[e]), _full(cfg, toks[bb[j]], feat_acts[j], res, j))
    return Gathered(records, act, stats, by_head)


@dataclass
class Gathered:
    """Per entry: its display record, activation float [E], ``{stat: float [E]}``, DFA by head float [E, H]."""

    records: list[dict]
    act: Tensor
    stats: dict[str, Tensor]
    by_head: Tensor


def _feature_acts(sae: SAE, z: Tensor, rows: Tensor, features: Tensor) -> Tensor:
    """Activation of each entry's feature at every position of its context: float32 [e, S] (z: [B, S, H, dh])."""
    B, S = z.shape[:2]
    acts = sae.encode(z.reshape(B * S, -1).to(sae.dtype)).float().reshape(B, S, -1)
    return acts[rows, :, features]


def _record(cfg: DashboardConfig, ctx: int, dest: int, toks: Tensor, acts: Tensor, res, j: int) -> dict:
    """One example, raw (the RAW_EXAMPLE of :mod:`attnsae.views.dashboards`, which cuts and rounds what it shows).

    Its tokens, activations and DFA span the positions the page may show: from the earlier of the window's start and
    the DFA peak's context to the window's end.
    """
    S = len(toks)
    src = res.by_src[j]
    peak = int(src[1:dest + 1].argmax()) + 1 if dest >= 1 else 0
    start = max(0, min(dest - cfg.window_before, peak - cfg.peak_context))
    end = min(S, dest + cfg.window_after + 1)
    return {"act": float(res.act[j]), "ctx": ctx, "dest": dest, "dfa_total": float(src.sum()),
            "bias": float(res.bias[j]), "peak": peak, "start": start, "tokens": toks[start:end].numpy().copy(),
            "acts": acts[start:end].numpy().copy(), "dfa": src[start:end].numpy().copy()}


def _full(cfg: DashboardConfig, toks: Tensor, acts: Tensor, res, j: int) -> dict:
    end = min(len(toks), int(res.dest[j]) + cfg.window_after + 1)
    return {"tokens": toks[:end].tolist(), "acts": acts[:end].tolist(), "dfa": res.by_src[j, :end].tolist(),
            "dest": int(res.dest[j])}


# ----------------------------------------------------------------------------------------------- bundle


def _histogram(values: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row histograms of ``values`` [n, m] over each row's range: (start [n], width [n], counts [n, bins])."""
    lo, hi = values.amin(1), values.amax(1)
    width = ((hi - lo) / bins).clamp_min(1e-12)
    idx = ((values - lo[:, None]) / width[:, None]).floor().long().clamp_(0, bins - 1)
    counts = torch.zeros(values.shape[0], bins, dtype=torch.long).scatter_add_(1, idx, torch.ones_like(idx))
    return lo, width, counts


@torch.no_grad()
def _logit_summaries(model, sae: SAE, cfg: DashboardConfig, chunk: int = 512) -> list[dict]:
    """Top/bottom direct logit effects (through the frozen final norm) and their histogram, per feature; empty lists
    where the model's layout refuses logit effects (an encoder's MLM head, an untrained head)."""
    if describe(model).refusal("logit_effect", check_sae(model, sae)):
        return [{"logits": {"pos": [], "neg": []}, "logit_hist": {"start": 0.0, "width": 0.0, "counts": []}}
                for _ in range(sae.cfg.d_sae)]
    out = []
    n = min(cfg.n_logits, model.cfg.d_vocab)
    for f0 in range(0, sae.cfg.d_sae, chunk):
        eff = logit_effect_matrix(model, sae, range(f0, min(f0 + chunk, sae.cfg.d_sae)))
        top, bot = eff.topk(n, dim=1), eff.topk(n, dim=1, largest=False)
        lo, width, counts = _histogram(eff, cfg.logit_bins)
        for r in range(len(eff)):
            out.append({
                "logits": {"pos": [[int(t), float(v)] for t, v in zip(top.indices[r], top.values[r])],
                           "neg": [[int(t), float(v)] for t, v in zip(bot.indices[r], bot.values[r])]},
                "logit_hist": {"start": float(lo[r]), "width": float(width[r]), "counts": counts[r].tolist()},
            })
    return out


def vocab_strings(model) -> list[str]:
    """The decoded string of every token id: [d_vocab]."""
    return [model.tokenizer.decode([i]) for i in range(model.cfg.d_vocab)]


@torch.no_grad()
def build_dashboards(model, saes: list[SAE], tokens: Tensor, cfg: DashboardConfig | None = None,
                     names: list[str] | None = None, corpus: dict | None = None, progress: bool = True,
                     on_example: Callable[[int, int, dict], None] | None = None,
                     paths: list[str] | None = None) -> Dashboards:
    """Scan ``tokens`` int64 [n_contexts, S] (BOS at 0) and build the dashboards of every feature of ``saes``.

    ``names`` label the SAEs (default ``L{layer}``); ``paths`` (where they were loaded from) and ``corpus`` (source,
    split) are recorded in the bundle.
    """
    cfg = cfg or DashboardConfig()
    t0 = time.perf_counter()
    if not saes:
        raise AttnsaeError("no SAEs given")
    tokens = torch.as_tensor(tokens).long()
    layers = [check_sae(model, sae) for sae in saes]
    prints = [fingerprint(sae) for sae in saes]
    twice = [i for i, f in enumerate(prints) if prints.index(f) < i]
    if twice:  # every count (families, heads) would count it twice
        raise AttnsaeError(f"SAE {(names or paths or [str(i) for i in range(len(saes))])[twice[0]]} is given twice "
                           "(the same weights as another); give each SAE once")
    saes = [cpu_sae(sae) for sae in saes]
    names = names or [f"L{layer}" for layer in layers]
    states = scan_features(model, saes, tokens, cfg.scan, progress=progress)
    S = tokens.shape[1]
    t_scan = time.perf_counter()
    vocab = vocab_strings(model)
    canon = fam.canonical_ids(vocab)
    entries, titles = example_entries(states, cfg, S)
    g = gather_examples(model, saes, tokens, entries, cfg, canon, on_example, progress)
    t_gather = time.perf_counter()

    # group entry indices by (sae, feature)
    stride = max(s.cfg.d_sae for s in saes)
    key = entries.sae * stride + entries.feature
    order = torch.argsort(key, stable=True)
    uniq, counts = torch.unique_consecutive(key[order], return_counts=True)
    where = dict(zip(uniq.tolist(), torch.split(order, counts.tolist())))

    sae_blocks, labels, all_stats, all_shares = [], [], [], []
    for k, (sae, st) in enumerate(zip(saes, states)):
        shares = head_shares(sae, model.cfg.n_heads)
        all_shares.append(shares)
        logits = _logit_summaries(model, sae, cfg)
        feats, lab, fstats = [], [], []
        for f in range(sae.cfg.d_sae):
            idx = where.get(k * stride + f, torch.zeros(0, dtype=torch.long))
            top = idx[entries.group[idx] == 0]
            if len(top):
                fs = fam.feature_stats({n: v[top] for n, v in g.stats.items()}, g.act[top])
                label = fam.classify(fs, cfg.families)
                hd = g.by_head[top].mean(0)
            else:
                fs, label, hd = {}, "dead", torch.zeros(model.cfg.n_heads)
            lab.append(label)
            fstats.append(fs)
            tok_counts = Counter(int(tokens[int(entries.ctx[e]), int(entries.dest[e])]) for e in top.tolist())
            groups = [{"title": t, "examples": [g.records[e] for e in idx[entries.group[idx] == gi].tolist()]}
                      for gi, t in enumerate(titles[k][f])]
            feats.append({
                "i": f, "n_fired": int(st.n_fired[f]), "density": float(st.density[f]),
                "max_act": float(st.max_act[f]), "mean_act": float(st.mean_act[f]),
                "family": label, "family_stats": fs,
                "head_shares": shares[f].numpy().copy(), "head_dfa": hd.numpy().copy(),
                "hist": {"start": 0.0, "width": float(st.hist_width[f]), "counts": st.hist[f].tolist()},
                **logits[f],
                "top_tokens": [[t, c] for t, c in tok_counts.most_common(5)],
                "groups": groups,
            })
        labels.append(lab)
        all_stats.append(fstats)
        sae_blocks.append({"name": names[k], "layer": layers[k], "hook_name": hook_z_name(layers[k]),
                           "path": printable(paths[k]) if paths else "", "fingerprint": fingerprint(sae),
                           "d_sae": sae.cfg.d_sae,
                           "n_heads": model.cfg.n_heads, "d_head": model.cfg.d_head, "features": feats})
    mname = model_name(model) or "model"
    bundle = {
        "title": f"attnsae dashboards — {mname}", "model": mname,
        "corpus": (corpus or {}) | {"n_tokens": int(states[0].n_tokens), "context_size": S},
        "vocab": vocab,
        "logit_effects_refused": describe(model).refusal("logit_effect"),
        "families": {"labels": list(fam.FAMILIES), "criterion": cfg.families.criterion(),
                     "thresholds": cfg.families.to_dict()},
        "heads_href": "heads.html",
        "windows": {"before": cfg.window_before, "after": cfg.window_after, "peak_context": cfg.peak_context},
        "saes": sae_blocks,
    }
    t_end = time.perf_counter()
    counts = fam.breakdown(dict(zip(names, labels)))
    return Dashboards(bundle, states, labels, all_stats, counts, all_shares,
                      {"scan": t_scan - t0, "examples": t_gather - t_scan, "assemble": t_end - t_gather})

