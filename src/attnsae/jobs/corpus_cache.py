"""The data commands' work: read a corpus into token contexts (``attnsae corpus``) and harvest activations into an
on-disk cache (``attnsae cache``)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from attnsae.corpus import Corpus, load_corpus
from attnsae.errors import AttnsaeError
from attnsae.io import atomic_save_npy, check_output_dir
from attnsae.jobs.inputs import check_save_path
from attnsae.training.config import TrainConfig


def read_corpus(model: str | None = None, device: str = "cpu", source: str = "stdlib", split: str = "train",
                context_size: int = 128, prepend_bos: bool = True, text_field: str = "text",
                max_tokens: int | None = None, save: str | None = None, progress: bool = True
                ) -> tuple[Corpus, float]:
    """``source``'s ``split`` as whole contexts of ``model``'s tokens, at most ``max_tokens`` tokens in all (BOS
    included), saved to the new ``.npy`` file ``save`` if given; returns (the corpus, seconds spent reading it)."""
    from attnsae.models import load_model

    if save is not None:
        check_save_path(save, source)
    budget = None
    if max_tokens is not None:  # whole contexts, BOS included, at most max_tokens tokens in all
        if max_tokens < context_size:
            raise AttnsaeError(f"--max-tokens {max_tokens} is less than one context of {context_size} tokens; give "
                               "at least --context-size")
        budget = max_tokens // context_size * (context_size - int(prepend_bos))
    lm = load_model(model, device=device)
    t0 = time.perf_counter()
    corpus = load_corpus(lm.tokenizer, source, split, context_size, prepend_bos, text_field, max_tokens=budget,
                         n_ctx=lm.cfg.n_ctx, progress=progress)
    seconds = max(time.perf_counter() - t0, 1e-9)
    if save is not None:
        atomic_save_npy(corpus.tokens, save)
    return corpus, seconds


def cache_activations(cfg: TrainConfig, cache_out: str) -> Path:
    """Harvest ``cfg``'s activations (its model, corpus and layers) into the new folder ``cache_out``; returns it."""
    from attnsae.activations import check_layers
    from attnsae.models import load_model
    from attnsae.training.data import build_cache

    out = Path(cache_out)
    if out.exists() and not out.is_dir():
        raise AttnsaeError(f"--cache-out {out} is a file; give a new folder")
    if out.is_dir() and any(out.iterdir()):
        raise AttnsaeError(f"--cache-out {out} exists and is not empty; remove it or choose another folder")
    out = check_output_dir(out, "cache", [cfg.source], flag="--cache-out")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    lm = load_model(cfg.model, device=cfg.device)
    check_layers(lm, cfg.layers)
    build_cache(cfg, lm, str(out))
    return out
