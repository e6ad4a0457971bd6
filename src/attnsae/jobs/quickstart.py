"""``attnsae quickstart``: the main job, on the embedded reference model (fully offline) or a zoo model.

Harvest ``hook_z`` from a corpus's train split (stdlib for the reference model, english for SmolLM2), train one SAE
per chosen layer from a single activation stream, save them (SAELens format), then evaluate each on held-out
validation tokens (L0, explained variance, CE loss recovered, ...), print the table and plot the feature densities;
finally scan validation tokens for the reading site (:mod:`attnsae.jobs.reading`: feature dashboards, feature
families, head report) and print the path to open, and the ``attnsae explore`` command that opens the Circuit
Explorer on the new SAEs.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from attnsae.corpus import load_corpus
from attnsae.errors import AttnsaeError
from attnsae.evals.metrics import evaluate
from attnsae.io import OUTPUT_MARKER, atomic_write_json, check_output_dir, is_temporary, marker, write_marker
from attnsae.models import load_model
from attnsae.jobs.inputs import stdlib_note
from attnsae.jobs.reading import read_features
from attnsae.training.config import TrainConfig
from attnsae.training.trainer import train
from attnsae.views.plots import density_histogram, recovery_plot
from attnsae.views.tables import eval_table


# The main job's training run on the reference model, as TrainConfig settings: a TopK SAE (k 32, 8x dictionary) on
# every layer from one activation stream of 4 M tokens each, cosine schedule, no resampling (AuxK keeps latents alive).
TRAIN = {"architecture": "topk", "ks": [32], "expansion_factor": 8, "total_tokens": 4_000_000, "batch_size": 4096,
         "lr": 2e-3, "context_size": 128, "buffer_size": 262_144, "lr_schedule": "cosine", "lr_end_frac": 0.1,
         "resample_times": 0, "log_every": 10, "ckpt_every": 100}
# Models whose size needs other settings than the reference model's: SmolLM2-135M (30 layers, d_in 576) gets three
# layers (1: zero-ablating it costs 3.3 nats; 6 and 12: the middle of the stack, where induction and name-moving
# features live in models of this depth), 4x dictionaries and budgets that fit 30 minutes on 2 CPU cores.
PRESETS: dict[str, dict] = {
    "smollm2-135m": {"train": {"source": "english", "layers": [1, 6, 12], "expansion_factor": 4,
                               "total_tokens": 491_520, "batch_size": 2048, "buffer_size": 65_536},
                     "eval_tokens": 8_192, "dashboard_tokens": 32_768},
}


@dataclass
class QuickstartConfig:
    """The main job: its training run (a :class:`TrainConfig` whose ``out`` is OUT/saes; with ``every_layer`` its
    layers become every layer of the model once it is loaded) and the validation tokens it evaluates on and scans
    for the reading site (0: no site)."""

    train: TrainConfig
    out: str = "attnsae-out/quickstart"
    every_layer: bool = True
    eval_tokens: int = 65_536
    dashboard_tokens: int = 262_144

    def __post_init__(self) -> None:
        if self.eval_tokens < 1:
            raise AttnsaeError(f"eval_tokens must be positive, got {self.eval_tokens}")
        if self.dashboard_tokens < 0:
            raise AttnsaeError(f"dashboard_tokens must be 0 or more, got {self.dashboard_tokens}")
        if self.train.total_tokens < self.train.batch_size:
            raise AttnsaeError(f"train_tokens ({self.train.total_tokens}) must be at least one batch "
                               f"({self.train.batch_size})")

    @classmethod
    def for_model(cls, model: str | None, out: str = "attnsae-out/quickstart", seed: int = 0,
                  train_tokens: int | None = None, eval_tokens: int | None = None,
                  dashboard_tokens: int | None = None) -> QuickstartConfig:
        """The settings for ``model``: :data:`TRAIN`, then its :data:`PRESETS` entry, then the budgets given."""
        preset = PRESETS.get(model or "", {})
        train = {**TRAIN, **preset.get("train", {}), "model": model, "seed": seed, "out": str(Path(out) / "saes"),
                 "overwrite": True}
        if train_tokens is not None:
            train["total_tokens"] = train_tokens
        steps = max(1, train["total_tokens"] // train["batch_size"])
        train.update(warmup_steps=max(1, steps // 20), dead_window=max(10, steps // 10))
        budgets = {k: v for k, v in preset.items() if k != "train"}  # the preset's, then the ones given
        budgets.update({k: v for k, v in (("eval_tokens", eval_tokens), ("dashboard_tokens", dashboard_tokens))
                        if v is not None})
        return cls(train=TrainConfig(**train), out=out, every_layer="layers" not in train, **budgets)


def run_quickstart(cfg: QuickstartConfig) -> dict:
    """Train, save and evaluate; returns the summary written to ``{out}/summary.json``.

    ``cfg.out`` must be new, empty or an earlier quickstart's folder whose training run (``saes/``) is still the one
    that quickstart made (:func:`claim_out`): a rerun replaces it, nothing else."""
    t0 = time.perf_counter()
    out = claim_out(cfg.out)
    note = stdlib_note() if cfg.train.source == "stdlib" else None
    if note:
        print(f"note: {note}")
    model = load_model(cfg.train.model)
    created = not out.exists()
    write_marker(out, "quickstart")  # the run in saes/ is being made by this quickstart
    try:
        run = replace(cfg.train, layers=list(range(model.cfg.n_layers))) if cfg.every_layer else cfg.train
        saes, specs = train(run)
    except BaseException:
        if created and os.listdir(out) == [OUTPUT_MARKER]:  # the run left nothing: neither does the quickstart
            os.unlink(out / OUTPUT_MARKER)
            out.rmdir()
        raise
    write_marker(out, "quickstart", run_sha256=run_digest(out / "saes"))  # and this is the run it made
    t_train = time.perf_counter() - t0
    names = [f"L{s.layer}" for s in specs]
    source, context_size = cfg.train.source, cfg.train.context_size
    val = load_corpus(model.tokenizer, source, "validation", context_size,
                      max_tokens=max(cfg.eval_tokens, cfg.dashboard_tokens) + context_size, progress=False)
    val_tokens = torch.from_numpy(val.tokens)
    n_eval = -(-cfg.eval_tokens // context_size)
    report = evaluate(model, saes, val_tokens[:n_eval], progress=True, names=names)
    density_histogram(report, out / "density.png", title=f"{report.model}: quickstart SAEs")
    if report.ce_refused is None:
        recovery_plot(report, out / "recovery.png", title=f"{report.model}: quickstart SAEs, CE recovered")
    print(eval_table(report))
    site = None
    if cfg.dashboard_tokens > 0:
        n_dash = -(-cfg.dashboard_tokens // context_size)
        site = read_features(model, saes, val_tokens[:n_dash], out / "dashboard", names=names,
                             corpus={"source": source, "split": "validation"},
                          paths=[str(out / "saes" / s.name) for s in specs])
    explore = explore_command([str(out / "saes" / s.name) for s in specs], cfg.train.model,
                              out / "dashboard" if site else None)
    summary = {"config": {**asdict(cfg), "train": run.to_dict()},
               "saes": {f"L{s.layer}": str(out / "saes" / s.name) for s in specs},
               "explore": explore, "corpus_note": note,
               "validation": report.to_dict(feature_frequency=False), "dashboard": site,
               "seconds": {"train": round(t_train, 1), "total": round(time.perf_counter() - t0, 1)}}
    atomic_write_json(summary, out / "summary.json")
    if site:
        print(f"\n{site['families_table']}\n\n{site['heads']}")
    plots = "density.png and recovery.png" if report.ce_refused is None else "density.png"
    print(f"\nSAEs, summary.json, {plots} in {out}  ({summary['seconds']['total']:.0f}s)")
    if site:
        print(f"open {site['index']}  (heads: {site['heads_html']})")
    print(f"explore any prompt through these SAEs: {explore}")
    return summary


OWN = (OUTPUT_MARKER, "saes", "dashboard", "summary.json", "density.png")  # what a quickstart writes into --out


def run_digest(run: Path) -> str | None:
    """SHA-256 of a training run's ``run_config.json`` (None when there is none): which run a quickstart made."""
    f = run / "run_config.json"
    return hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else None


def claim_out(out: str | Path) -> Path:
    """The quickstart's folder, checked before anything runs: new, empty or a quickstart's (its marker), and its
    ``saes/`` run the one that quickstart recorded, so that a rerun never overwrites a run someone else trained."""
    out = check_output_dir(out, "quickstart")
    foreign = sorted(n for n in os.listdir(out) if n not in OWN and not is_temporary(n)) if out.is_dir() else []
    if foreign:
        raise AttnsaeError(f"{out / foreign[0]} is not part of a quickstart's output; move it out of {out}, or choose "
                           "another --out")
    if (out / "dashboard").exists():
        check_output_dir(out / "dashboard", "dashboard")
    saes = out / "saes"
    if os.path.lexists(saes):
        recorded = marker(out).get("run_sha256")  # None: a quickstart stopped while training
        if recorded is not None and run_digest(saes) != recorded:
            raise AttnsaeError(f"{saes} holds a training run that this quickstart did not write; move it away or "
                               "choose another --out")
    return out


def explore_command(sae_paths: list[str], model: str | None, dashboard: Path | None) -> str:
    """The ``attnsae explore`` command line that opens the Circuit Explorer on these SAEs."""
    args = ["attnsae", "explore", "--sae", *sae_paths] + (["--model", model] if model else [])
    return shlex.join(args + (["--dashboard", str(dashboard)] if dashboard else []))
