"""Where a run's activations come from: a model streaming a corpus, or an on-disk cache; and their fingerprint."""

from __future__ import annotations

import hashlib

import numpy as np

from attnsae.activations import CachedActivations, ModelActivations, StreamConfig, d_in_of, write_cache
from attnsae.corpus import load_corpus
from attnsae.models import model_name
from attnsae.training.config import TrainConfig


def load_tokens(cfg: TrainConfig, model) -> np.ndarray:
    """The run's corpus split as int64 contexts ``[n_contexts, context_size]``."""
    corpus = load_corpus(model.tokenizer, cfg.source, cfg.split, cfg.context_size, cfg.prepend_bos, cfg.text_field,
                         max_tokens=cfg.max_corpus_tokens, n_ctx=model.cfg.n_ctx, progress=cfg.progress)
    return corpus.tokens


def make_source(cfg: TrainConfig, model, layers: list[int] | None = None,
                comm=None) -> tuple[ModelActivations | CachedActivations, str]:
    """The run's activation source (the cache if ``cfg.cache``, else a model stream) and a fingerprint of its data:
    what ``--resume`` compares, so a run never continues on other data.

    ``layers`` (default ``cfg.layers``): the layers served, a module-parallel rank's own; ``comm``: the data-parallel
    replicas that share the harvest (see :class:`~attnsae.activations.ModelActivations`). Neither changes the batches.
    """
    layers = layers or cfg.layers
    if cfg.cache:
        source = CachedActivations(cfg.cache, layers, cfg.batch_size, cfg.seed, model_name=model_name(model),
                                   d_in=d_in_of(model))
        digest = hashlib.sha1((source.root / "manifest.json").read_bytes()).hexdigest()
        return source, f"cache:{digest}"
    tokens = load_tokens(cfg, model)
    stream = StreamConfig(layers=layers, batch_size=cfg.batch_size, buffer_size=cfg.buffer_size,
                          drop_bos=cfg.drop_bos, act_dtype=cfg.act_dtype, model_batch_size=cfg.model_batch_size,
                          seed=cfg.seed)
    h = hashlib.sha1(model_name(model).encode())
    h.update(str(tokens.shape).encode())
    h.update(np.ascontiguousarray(tokens).tobytes())
    return ModelActivations(model, tokens, stream, comm=comm), f"tokens:{h.hexdigest()}"


def build_cache(cfg: TrainConfig, model, out_dir: str) -> None:
    """Harvest the run's corpus once into an on-disk activation cache at ``out_dir``."""
    write_cache(model, load_tokens(cfg, model), out_dir, cfg.layers, model_name=model_name(model), corpus=cfg.source,
                split=cfg.split, prepend_bos=cfg.prepend_bos, drop_bos=cfg.drop_bos, dtype=cfg.act_dtype,
                model_batch_size=cfg.model_batch_size, progress=cfg.progress)
