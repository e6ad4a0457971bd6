"""The training loop: :func:`fit` trains several SAEs (layers, sparsity values) on one activation stream;
:func:`train` is the whole run from a :class:`~attnsae.training.config.TrainConfig` to SAEs on disk.

Per step and SAE: the loss (:mod:`attnsae.training.losses`), the paper's decoder constraint (gradient parallel to
each decoder row removed before the Adam step, rows renormalised after it), the firing statistics; before the
scheduled steps, resampling of dead features (:mod:`attnsae.training.resample`) from ``resample_batches`` fresh
batches. Learning rate: warm-up from ``warmup_from * lr`` over ``warmup_steps`` (again after each resample), then
the schedule.

Output folder: ``run_config.json`` (every setting and the data fingerprint), ``checkpoint.pt`` (atomic, every
``ckpt_every`` steps), ``metrics.jsonl`` (one record per SAE every ``log_every`` steps) and one SAELens folder per SAE
(``{spec.name}/`` with ``feature_frequency.json``). Batch ``i`` of the stream is a function of (seed, i) and every
random draw of the loop is seeded by the step, so a killed run resumed with ``resume`` ends with the same weights
as an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from attnsae.activations import ActivationSource, check_layers, read_manifest
from attnsae.errors import AttnsaeError
from attnsae.io import atomic_path, atomic_write_json, check_writable_dir, make_dir
from attnsae.models import load_model, model_name
from attnsae.sae.formats import save_sae
from attnsae.sae.model import SAE, SAEConfig
from attnsae.training.checkpoint import FiringStats, TrainState, load_checkpoint, save_checkpoint
from attnsae.training.config import SAESpec, TrainConfig
from attnsae.training.data import make_source
from attnsae.training.losses import sae_loss
from attnsae.training.resample import resample_dead

RUN_FILES = ("run_config.json", "checkpoint.pt", "metrics.jsonl")


def train(cfg: TrainConfig) -> tuple[list[SAE], list[SAESpec]]:
    """Load the model, build the activation source, fit every SAE of ``cfg`` and save them into ``cfg.out``.

    Nothing is written before every check has passed: the output folder must be new or empty unless ``resume``
    (continue the run there, same settings and data) or ``overwrite`` (start it over).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = check_writable_dir(cfg.out)
    existing = [f for f in RUN_FILES if (out / f).exists()]
    if existing and not (cfg.resume or cfg.overwrite):
        raise AttnsaeError(f"{out} already holds a training run ({existing[0]}); pass --resume to continue it or "
                           "--overwrite to start over")
    if cfg.cache:
        read_manifest(cfg.cache)  # a wrong cache path fails before the (slow) model load
    model = load_model(cfg.model, device=cfg.device)
    check_layers(model, cfg.layers)
    source, fingerprint = make_source(cfg, model)
    specs = cfg.specs(source.d_in)
    settings = {**cfg.result_settings(), "data": fingerprint, "d_in": source.d_in}
    if cfg.overwrite:
        for f in RUN_FILES:
            (out / f).unlink(missing_ok=True)
        for s in specs:
            shutil.rmtree(out / s.name, ignore_errors=True)
    meta = {"model_name": model_name(model), "context_size": cfg.context_size, "prepend_bos": cfg.prepend_bos,
            "extra": {"dataset_path": cfg.source, "drop_bos": cfg.drop_bos}}
    existed = out.exists()
    try:
        saes = fit(cfg, specs, source, out, settings, sae_meta=meta)
    except BaseException:  # a run that dies before its first checkpoint leaves nothing behind
        if not (out / "checkpoint.pt").exists():
            if existed:
                for f in RUN_FILES:
                    (out / f).unlink(missing_ok=True)
            else:
                shutil.rmtree(out, ignore_errors=True)
        raise
    return saes, specs


def new_saes(specs: list[SAESpec], d_in: int, seed: int, meta: dict[str, Any]) -> list[SAE]:
    torch.manual_seed(seed)
    return [SAE(SAEConfig(d_in=d_in, d_sae=s.d_sae, architecture=s.architecture, k=s.k, layer=s.layer,
                          hook_name=f"blocks.{s.layer}.attn.hook_z", **meta)) for s in specs]


def fit(cfg: TrainConfig, specs: list[SAESpec], source: ActivationSource, out: str | Path,
        settings: dict[str, Any] | None = None, sae_meta: dict[str, Any] | None = None) -> list[SAE]:
    """Train ``specs`` on batches ``{layer: [batch, d_in]}`` from ``source``; resume from ``out`` with
    ``cfg.resume``. ``settings`` (default: ``cfg.result_settings()``) must match a checkpoint to resume it."""
    out = make_dir(out)
    for s in specs:
        if s.layer not in source.layers:
            raise AttnsaeError(f"unknown layer {s.layer}: the activation source has layers {source.layers}")
    settings = settings if settings is not None else {**cfg.result_settings(), "d_in": source.d_in}
    saes = new_saes(specs, source.d_in, cfg.seed, sae_meta or {})
    opts = [torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=tuple(cfg.betas)) for sae in saes]
    state, firing = TrainState(), [FiringStats.zeros(s.d_sae) for s in specs]
    ckpt, metrics = out / "checkpoint.pt", out / "metrics.jsonl"
    if cfg.resume and ckpt.exists():
        state, firing = load_checkpoint(ckpt, saes, opts, settings)
        keep_metrics(metrics, state.step)
    else:
        metrics.write_text("")
    atomic_write_json({**cfg.to_dict(), "data": settings.get("data"), "d_in": source.d_in}, out / "run_config.json")

    wandb_run = _wandb_init(cfg, specs) if cfg.wandb_project else None
    resample_at = set(cfg.resample_steps())
    window_open = {s - cfg.resample_window for s in resample_at}
    batches = source.batches(state.batch_index)
    bar = tqdm(total=cfg.total_steps, initial=state.step, unit="step", disable=not cfg.progress, dynamic_ncols=True,
               desc="training SAEs")
    t0, tok0 = time.perf_counter(), state.tokens_seen
    with open(metrics, "a") as mf:
        while state.step < cfg.total_steps:
            if state.step in window_open:
                for fs in firing:
                    fs.window_fires.zero_()
                state.window_tokens = 0
            if state.step in resample_at and state.step > 0:
                resample(cfg, specs, saes, opts, firing, state, batches)
            batch = next(batches)
            state.batch_index += 1
            records = step(cfg, specs, saes, opts, firing, state, batch)
            state.step += 1
            state.tokens_seen += cfg.batch_size
            state.window_tokens += cfg.batch_size
            tps = (state.tokens_seen - tok0) / max(1e-9, time.perf_counter() - t0)
            if records:
                log(records, tps, mf, bar, wandb_run, state.step)
            bar.update(1)
            if state.step % cfg.ckpt_every == 0 and state.step < cfg.total_steps:
                save_checkpoint(ckpt, state, saes, opts, firing, settings)
    bar.close()
    save_checkpoint(ckpt, state, saes, opts, firing, settings)
    for sae, spec, fs in zip(saes, specs, firing):
        save_sae(sae, out / spec.name)
        freq = fs.total_fires.double() / max(1, state.tokens_seen)  # training firing frequency
        with atomic_path(out / spec.name / "feature_frequency.json") as tmp:
            tmp.write_text(json.dumps([round(float(v), 8) for v in freq]))
    if wandb_run:
        wandb_run.finish()
    return saes


def step(cfg: TrainConfig, specs: list[SAESpec], saes: list[SAE], opts: list[torch.optim.Optimizer],
         firing: list[FiringStats], state: TrainState, batch: dict[int, torch.Tensor]) -> list[dict[str, Any]]:
    """One optimiser step of every SAE; returns the metric records due at this step."""
    lr = cfg.lr * cfg.lr_factor(state.step)
    logging = (state.step + 1) % cfg.log_every == 0 or state.step + 1 == cfg.total_steps
    records = []
    for sae, spec, opt, fs in zip(saes, specs, opts, firing):
        x = batch[spec.layer]
        for g in opt.param_groups:
            g["lr"] = lr
        dead = fs.dead(state.step, cfg.dead_window) if spec.architecture == "topk" else None
        out = sae_loss(sae, spec, x, dead, cfg.l1_factor(state.step), cfg.sparse_kernel)
        if not torch.isfinite(out.loss):
            bad = "activations" if not torch.isfinite(x).all() else "loss"
            raise AttnsaeError(f"non-finite {bad} at step {state.step} (SAE {spec.name}); check the model's "
                               "activations or lower the lr; the last checkpoint is intact")
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        sae.set_decoder_norm_to_unit_norm()
        fs.update(out.fired, state.step)
        if logging:
            with torch.no_grad():
                var = (x - x.mean(0)).pow(2).sum(-1).mean()
                records.append({"sae": spec.name, "step": state.step + 1, "tokens": (state.step + 1) * cfg.batch_size,
                                "loss": out.loss.item(), **{k: v.item() for k, v in out.parts.items()},
                                "l0": out.l0.item(), "explained_variance": (1 - out.parts["mse"] / var).item(),
                                "dead_frac": fs.dead(state.step + 1, cfg.dead_window).float().mean().item(),
                                "lr": lr})
    return records


def resample(cfg: TrainConfig, specs: list[SAESpec], saes: list[SAE], opts: list[torch.optim.Optimizer],
             firing: list[FiringStats], state: TrainState, batches: Iterator[dict[int, torch.Tensor]]) -> None:
    """Resample every SAE's features that fired at most ``dead_cutoff`` of the window's tokens."""
    data = [next(batches) for _ in range(cfg.resample_batches)]
    state.batch_index += cfg.resample_batches
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state.step)
    for sae, spec, opt, fs in zip(saes, specs, opts, firing):
        dead = fs.window_fires.double() / max(1, state.window_tokens) <= cfg.dead_cutoff
        n = resample_dead(sae, opt, dead, torch.cat([d[spec.layer] for d in data]), g)
        fs.last_fired[dead] = state.step
        state.resamples.append({"sae": spec.name, "step": state.step, "resampled": n})


def log(records: list[dict[str, Any]], tokens_per_s: float, file, bar, wandb_run, step: int) -> None:
    for r in records:
        r["tokens_per_s"] = round(tokens_per_s)
        file.write(json.dumps(r) + "\n")
    file.flush()
    if wandb_run:
        for r in records:
            wandb_run.log({f"{r['sae']}/{k}": v for k, v in r.items() if k != "sae"}, step=step)
    bar.set_postfix(l0=f"{records[0]['l0']:.1f}", ev=f"{records[0]['explained_variance']:.3f}",
                    tok_s=f"{tokens_per_s:,.0f}", refresh=False)


def keep_metrics(path: Path, step: int) -> None:
    """Keep the metric records up to ``step`` (later ones are redone on resume); a torn last line is dropped."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill mid-write
        if rec.get("step", step + 1) <= step:
            keep.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


def _wandb_init(cfg: TrainConfig, specs: list[SAESpec]):
    try:
        import wandb
    except ImportError:
        raise AttnsaeError("--wandb-project needs the wandb package: pip install wandb") from None
    return wandb.init(project=cfg.wandb_project, config={"cfg": cfg.to_dict(), "specs": [asdict(s) for s in specs]})
