"""Dashboard speed on the reference model: the streaming scan against the bare work any dashboard tool must do, and
the per-example DFA against the naive materialising DFA that public dashboard code computes.

    python benchmarks/dashboard_speed.py [--sae PATH ...] [--tokens 65536]

Without ``--sae``, two random TopK SAEs (layers 0 and 1, d_sae 2048, k 32: the quickstart's shape). Prints, measured
side by side in one run:

* scan: tokens/s of :func:`attnsae.studies.scan.scan_features` (top-k, exact histogram, reservoir sample per feature) against
  a bare pass (forward to the last ``hook_z`` + SAE encode, nothing kept) — the ratio is the bookkeeping's overhead;
* examples: seconds of :func:`attnsae.studies.examples.gather_examples` for every selected example against
  :func:`attnsae.attribution.dfa_reference` (``[batch, dest, src, d_in]``, then the encoder) on the same contexts.
"""

from __future__ import annotations

import argparse
import time

import torch

import attnsae
from attnsae.activations import harvest_z
from attnsae.attribution import attn_activations, dfa_reference
from attnsae.corpus import load_corpus
from attnsae.studies.examples import DashboardConfig, example_entries, gather_examples, vocab_strings
from attnsae.studies.families import canonical_ids
from attnsae.sae.checks import sae_layer
from attnsae.sae.formats import load_sae
from attnsae.studies.scan import scan_features
from attribution_speed import random_sae


def bare_pass(model, saes, tokens: torch.Tensor, batch: int) -> None:
    layers = sorted({sae_layer(s) for s in saes})
    for i in range(0, len(tokens), batch):
        zs = harvest_z(model, tokens[i:i + batch], layers, drop_bos=True)
        for sae in saes:
            sae.encode(zs[sae_layer(sae)])


def naive_examples(model, saes, tokens: torch.Tensor, entries, batch: int) -> None:
    """Materialising DFA per batch of contexts, then the entries' rows read out of it."""
    ctxs = torch.unique(entries.ctx)
    for i in range(0, len(ctxs), batch):
        c = ctxs[i:i + batch]
        for k, sae in enumerate(saes):
            acts = attn_activations(model, tokens[c], sae_layer(sae))
            by_src, _ = dfa_reference(acts, sae)  # [b, dest, src, d_sae]
            sel = (entries.sae == k) & torch.isin(entries.ctx, c)
            by_src[torch.searchsorted(c, entries.ctx[sel]), entries.dest[sel], :, entries.feature[sel]].sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sae", nargs="*", default=[])
    ap.add_argument("--tokens", type=int, default=65_536)
    args = ap.parse_args()
    model = attnsae.load_model()
    saes = [load_sae(p) for p in args.sae] or [random_sae(model, layer, 2048, 32, seed=layer) for layer in (0, 1)]
    val = load_corpus(model.tokenizer, "stdlib", "validation", 128, max_tokens=args.tokens, progress=False)
    tokens = torch.from_numpy(val.tokens).long()
    n = tokens.shape[0] * (tokens.shape[1] - 1)
    cfg = DashboardConfig()
    with torch.no_grad():
        t0 = time.perf_counter()
        bare_pass(model, saes, tokens, cfg.scan.batch_size)
        t_bare = time.perf_counter() - t0
        t0 = time.perf_counter()
        states = scan_features(model, saes, tokens, cfg.scan, progress=False)
        t_scan = time.perf_counter() - t0
        entries, _ = example_entries(states, cfg, tokens.shape[1])
        canon = canonical_ids(vocab_strings(model))
        t0 = time.perf_counter()
        gather_examples(model, saes, tokens, entries, cfg, canon, progress=False)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        naive_examples(model, saes, tokens, entries, cfg.dfa_batch)
        t_naive = time.perf_counter() - t0
    print(f"{len(saes)} SAEs x {saes[0].cfg.d_sae} features, {n:,} tokens, torch threads {torch.get_num_threads()}")
    print(f"scan     {n / t_scan:10,.0f} tok/s   bare forward+encode {n / t_bare:10,.0f} tok/s   "
          f"scan / bare time {t_scan / t_bare:.2f}x")
    print(f"examples {len(entries.feature):,} entries: ours {t_ours:.1f} s (records, stats, DFA by head) vs naive "
          f"materialising DFA {t_naive:.1f} s (DFA only): {t_naive / t_ours:.1f}x faster")


if __name__ == "__main__":
    main()
