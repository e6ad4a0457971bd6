"""Train runs: from one flat config (CLI flags, YAML or JSON) to trained SAEs on disk.

``RunConfig`` names every setting once; the CLI fills it and calls :func:`run_training`. SAE sweeps are the product
of ``layers`` and the list of sparsity values (``l1_coeffs`` for relu, ``ks`` for topk, ``l0_coeffs`` for jumprelu).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from attnsae.activations import CachedActivations, ModelActivations, StreamConfig, check_layers, d_in_of, write_cache
from attnsae.corpus import load_corpus
from attnsae.errors import AttnsaeError
from attnsae.io_utils import atomic_write_json, check_writable_dir
from attnsae.models import load_model, model_name
from attnsae.sae import SAE
from attnsae.training import SAESpec, TrainConfig, Trainer


ARCHITECTURES = {"relu": "l1_coeff", "topk": "k", "jumprelu": "l0_coeff"}  # architecture -> its sparsity knob


@dataclass
class RunConfig:
    """A whole training run. Unset sparsity lists take the architecture's default."""

    # model and data
    model: str | None = None
    device: str = "cpu"
    source: str = "stdlib"
    split: str = "train"
    text_field: str = "text"
    context_size: int = 128
    prepend_bos: bool = True
    drop_bos: bool = True
    buffer_size: int = 262_144
    act_dtype: str = "float32"
    model_batch_size: int = 32
    cache: str | None = None
    max_corpus_tokens: int | None = None
    # SAEs
    layers: list[int] = field(default_factory=lambda: [0])
    architecture: str = "relu"
    d_sae: int | None = None
    expansion_factor: int = 8
    l1_coeffs: list[float] = field(default_factory=lambda: [2.0])
    ks: list[int] = field(default_factory=lambda: [32])
    l0_coeffs: list[float] = field(default_factory=lambda: [1.0])
    aux_coeff: float = 1 / 32
    # loop (see TrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "attnsae-out/train"
    resume: bool = False
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise AttnsaeError(f"unknown architecture {self.architecture!r}: use one of {', '.join(ARCHITECTURES)}")

    def specs(self, d_in: int) -> list[SAESpec]:
        d_sae = self.d_sae or self.expansion_factor * d_in
        key = ARCHITECTURES[self.architecture]
        vals = {"l1_coeff": self.l1_coeffs, "k": self.ks, "l0_coeff": self.l0_coeffs}[key]
        return [SAESpec(layer=l, architecture=self.architecture, d_sae=d_sae, aux_coeff=self.aux_coeff, **{key: v})
                for l in self.layers for v in vals]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """From a flat dict: keys of RunConfig and of TrainConfig side by side. Unknown keys are an error."""
        run_keys = {f.name for f in fields(cls)} - {"train"}
        train_keys = {f.name for f in fields(TrainConfig)}
        unknown = set(d) - run_keys - train_keys
        if unknown:
            raise AttnsaeError(f"unknown config key(s) {sorted(unknown)}; see `attnsae train --help`")
        return cls(**{k: v for k, v in d.items() if k in run_keys},
                   train=TrainConfig(**{k: v for k, v in d.items() if k in train_keys}))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("train"))
        return d


def read_config_file(path: str) -> dict[str, Any]:
    """A YAML or JSON file of flat ``key: value`` pairs."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise AttnsaeError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        if p.suffix.lower() == ".json":
            d = json.loads(text)
        else:
            import yaml

            d = yaml.safe_load(text)
    except Exception as e:
        raise AttnsaeError(f"config file {path} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: "
                           f"{str(e).splitlines()[0]}") from None
    if not isinstance(d, dict):
        raise AttnsaeError(f"config file {path} must hold a mapping of settings")
    return d


def make_source(cfg: RunConfig, model=None):
    """The activation source of a run: the on-disk cache if ``cfg.cache`` is set, else a model stream."""
    if cfg.cache:
        d_in = d_in_of(model) if model is not None else None
        return CachedActivations(cfg.cache, cfg.layers, cfg.train.batch_size, cfg.train.seed,
                                 model_name=model_name(model) if model is not None else None, d_in=d_in)
    corpus = load_corpus(model.tokenizer, cfg.source, cfg.split, cfg.context_size, cfg.prepend_bos, cfg.text_field,
                         max_tokens=cfg.max_corpus_tokens, n_ctx=model.cfg.n_ctx, progress=cfg.progress)
    stream = StreamConfig(layers=cfg.layers, batch_size=cfg.train.batch_size, buffer_size=cfg.buffer_size,
                          drop_bos=cfg.drop_bos, act_dtype=cfg.act_dtype, model_batch_size=cfg.model_batch_size,
                          seed=cfg.train.seed)
    return ModelActivations(model, corpus.tokens, stream)


def run_training(cfg: RunConfig) -> tuple[list[SAE], list[SAESpec]]:
    """Load the model (unless training from a cache alone), build the stream, fit every SAE, save them."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    check_writable_dir(cfg.out)
    model = load_model(cfg.model, device=cfg.device)
    check_layers(model, cfg.layers)
    source = make_source(cfg, model)
    specs = cfg.specs(source.d_in)
    meta = {"model_name": model_name(model), "context_size": cfg.context_size, "prepend_bos": cfg.prepend_bos,
            "extra": {"dataset_path": cfg.source, "drop_bos": cfg.drop_bos}}
    trainer = Trainer(specs, source, cfg.train, cfg.out, sae_meta=meta, progress=cfg.progress)
    atomic_write_json(cfg.to_dict(), Path(cfg.out) / "run_config.json")
    return trainer.fit(resume=cfg.resume), specs


def build_cache(cfg: RunConfig, out_dir: str) -> None:
    """Harvest the run's corpus once into an on-disk activation cache at ``out_dir``."""
    model = load_model(cfg.model, device=cfg.device)
    layers = check_layers(model, cfg.layers)
    corpus = load_corpus(model.tokenizer, cfg.source, cfg.split, cfg.context_size, cfg.prepend_bos, cfg.text_field,
                         max_tokens=cfg.max_corpus_tokens, n_ctx=model.cfg.n_ctx, progress=cfg.progress)
    write_cache(model, corpus.tokens, out_dir, layers, model_name=model_name(model), corpus=cfg.source,
                split=cfg.split, prepend_bos=cfg.prepend_bos, drop_bos=cfg.drop_bos, dtype=cfg.act_dtype,
                model_batch_size=cfg.model_batch_size, progress=cfg.progress)
