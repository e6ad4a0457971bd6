"""The training loop: :func:`fit` trains several SAEs (layers, sparsity values) on one activation stream;
:func:`train` is the whole run from a :class:`~attnsae.training.config.TrainConfig` to SAEs on disk.

Per step and SAE: the loss (:mod:`attnsae.training.losses`), the paper's decoder constraint (gradient parallel to
each decoder row removed before the Adam step, rows renormalised after it), the firing statistics, BatchTopK's
inference threshold (:meth:`attnsae.sae.model.SAE.update_topk_threshold`); before the
scheduled steps, resampling of dead features (:mod:`attnsae.training.resample`) from ``resample_batches`` fresh
batches. Learning rate: warm-up from ``warmup_from * lr`` over ``warmup_steps`` (again after each resample), then
the schedule.

Output folder: ``run_config.json`` (every setting and the data fingerprint), ``checkpoint.pt`` (atomic, every
``ckpt_every`` steps), ``metrics.jsonl`` (one record per SAE every ``log_every`` steps) and one SAELens folder per SAE
(``{spec.name}/`` with ``feature_frequency.json``). Batch ``i`` of the stream is a function of (seed, i) and every
random draw of the loop is seeded by the step, so a killed run resumed with ``resume`` ends with the same weights
as an uninterrupted one. Who may write the folder, ``overwrite`` and the lock: :mod:`attnsae.training.run_folder`.
"""

from __future__ import annotations

import contextlib
import json
import time
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from attnsae.activations import ActivationSource, check_layers, read_manifest
from attnsae.errors import AttnsaeError, Stopped
from attnsae.io import (atomic_path, atomic_write_json, atomic_write_text, check_writable_dir, json_text,
                        disk_full, make_dir, write_error)
from attnsae.memory import check_fits
from attnsae.models import load_model, model_name
from attnsae.sae import K_ARCHITECTURES
from attnsae.sae.formats import save_sae
from attnsae.sae.model import SAE
from attnsae.training.checkpoint import (FiringStats, TrainState, load_checkpoint, merged_state, save_manifest,
                                         save_shard)
from attnsae.training import distributed
from attnsae.training.config import SAESpec, TrainConfig
from attnsae.training.data import make_source
from attnsae.training.losses import sae_loss, variance
from attnsae.training.resample import resample_dead
from attnsae.training.run_folder import RunFolder


def train(cfg: TrainConfig) -> tuple[list[SAE], list[SAESpec]]:
    """Load the model, build the activation source, fit every SAE of ``cfg`` and save them into ``cfg.out``.

    Nothing is written before every check has passed: the output folder must hold no run unless ``resume``
    (continue the run there, same settings and data) or ``overwrite`` (start it over, keeping the previous run until
    the new one's first checkpoint: :mod:`attnsae.training.run_folder`). Under ``torchrun`` each process trains its
    share (:mod:`attnsae.training.distributed`) and returns the SAEs it owns.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    comm, device = distributed.init(cfg.module_parallel, cfg.device)
    try:
        return _train(cfg, comm, device)
    except distributed.CommError as e:  # a collective failed: a peer is gone, or the connection to it broke
        raise distributed.lost_rank(comm, e) from None
    finally:
        distributed.close(comm)


def _train(cfg: TrainConfig, comm: distributed.Comm, device: str) -> tuple[list[SAE], list[SAESpec]]:
    distributed.check_batch(comm, cfg.batch_size)
    folder = RunFolder(check_writable_dir(cfg.out), cfg.resume, cfg.overwrite, owner=comm.rank == 0)
    with folder.locked():
        decide(folder, comm, inputs=[cfg.cache] if cfg.cache else [])
        man = read_manifest(cfg.cache) if cfg.cache else None  # a wrong cache path fails before the model load
        model = load_model(cfg.model or (man.model_name if man else None), device=device)  # the cache's model
        check_layers(model, cfg.layers)
        source, fingerprint = make_source(cfg, model, comm.own_layers(cfg.layers), comm)
        specs = cfg.specs(source.d_in)
        folder.claim([s.name for s in specs])
        check_memory(cfg, [s for s in specs if s.layer in source.layers], source.d_in, comm)
        settings = {**cfg.result_settings(), "data": fingerprint, "d_in": source.d_in}
        data = man or cfg  # the settings the activations were made with: the cache's, else this run's
        meta = {"model_name": model_name(model), "context_size": data.context_size, "prepend_bos": data.prepend_bos,
                "extra": {"dataset_path": man.corpus if man else cfg.source, "drop_bos": data.drop_bos}}
        comm.barrier()  # every rank has seen the folder as it was before rank 0 sets the previous run aside
        try:
            folder.set_previous_aside([s.name for s in specs])
            comm.barrier()
            saes = fit(cfg, specs, source, folder.out, settings, sae_meta=meta, comm=comm,
                       on_checkpoint=folder.checkpointed)
        except AttnsaeError as e:
            kept = folder.settle()
            raise AttnsaeError(f"{e}; {kept}" if kept else str(e)) from None
        except OSError as e:
            kept = folder.settle()
            if not disk_full(folder.out, e):
                raise
            raise AttnsaeError(f"{write_error(folder.out, e)}; {kept}") from None
        except Stopped as e:
            e.detail = folder.settle()
            raise
        except BaseException:
            folder.settle()
            raise
    return (saes, [s for s in specs if s.layer in source.layers]) if comm.leader else ([], [])


def decide(folder: RunFolder, comm: distributed.Comm, inputs: list[str]) -> None:
    """Process 0 checks the folder (a run there, --resume, --overwrite) and every process follows its verdict; then
    every process must see the same run files (an --out that is not one shared folder, or whose copies lag, would
    give diverged replicas or a hang), else each refuses in one line."""
    verdict = None
    if comm.rank == 0:
        try:
            folder.check(inputs)
        except AttnsaeError as e:
            verdict = str(e)
    verdict = comm.broadcast_object(verdict)
    if verdict is not None:
        raise AttnsaeError(verdict)
    views = comm.all_gather_object(folder.view())
    if any(v != views[0] for v in views):
        rank = next(r for r, v in enumerate(views) if v != views[0])
        raise AttnsaeError(f"--out {folder.out} is not the same folder on every process (rank 0 sees "
                           f"{views[0] or 'no run'}, rank {rank} sees {views[rank] or 'no run'}); give a folder "
                           "every machine shares")


def check_memory(cfg: TrainConfig, specs: list[SAESpec], d_in: int, comm: distributed.Comm) -> None:
    """Refuse SAEs that cannot fit before any is allocated: per SAE its parameters, gradients and Adam's two moments
    (16 bytes per parameter) and one step's dense ``[batch, d_sae]`` work (5 float32 tensors); the activation
    buffer (a chunk and its shuffled copy, float32, per layer) lives on the host."""
    if not specs:
        return
    rows = cfg.batch_size // comm.data_world
    sae = sum(16 * (2 * d_in * s.d_sae + 2 * s.d_sae + d_in) + 20 * rows * s.d_sae for s in specs)
    buffer = 8 * cfg.buffer_size * d_in * len({s.layer for s in specs}) if not cfg.cache else 0
    fix = "lower --d-sae / --expansion-factor, --batch-size or --buffer-size, or train fewer SAEs per run"
    if comm.device.type == "cpu":
        check_fits(sae + buffer, f"training {len(specs)} SAE(s) of d_sae up to {max(s.d_sae for s in specs):,}", fix)
    else:
        check_fits(sae, f"training {len(specs)} SAE(s) of d_sae up to {max(s.d_sae for s in specs):,}", fix,
                   comm.device)
        check_fits(buffer, "the activation buffer", fix)


def new_saes(specs: list[SAESpec], d_in: int, seed: int, meta: dict[str, Any]) -> list[SAE]:
    torch.manual_seed(seed)
    return [SAE(s.sae_config(d_in, **meta)) for s in specs]


def fit(cfg: TrainConfig, specs: list[SAESpec], source: ActivationSource, out: str | Path,
        settings: dict[str, Any] | None = None, sae_meta: dict[str, Any] | None = None,
        comm: distributed.Comm | None = None, on_checkpoint: Callable[[int], None] | None = None) -> list[SAE]:
    """Train ``specs`` on batches ``{layer: [batch, d_in]}`` from ``source``; resume from ``out`` with
    ``cfg.resume``. ``settings`` (default: ``cfg.result_settings()``) must match a checkpoint to resume it.

    With ``comm``, this process trains the specs of ``source.layers`` on its rows of each batch; returns those SAEs.
    ``on_checkpoint(step)`` is called once the checkpoint of ``step`` is on disk (and after a resume, with its step).
    """
    comm = comm or distributed.Comm(device=torch.device(cfg.device))
    out = make_dir(out)
    mine = [i for i, s in enumerate(specs) if s.layer in source.layers]
    if comm.modules == 1 and len(mine) < len(specs):
        bad = next(s.layer for s in specs if s.layer not in source.layers)
        raise AttnsaeError(f"unknown layer {bad}: the activation source has layers {source.layers}")
    settings = settings if settings is not None else {**cfg.result_settings(), "d_in": source.d_in}
    names = [s.name for s in specs]  # every SAE of the run, in the checkpoint's order
    every = new_saes(specs, source.d_in, cfg.seed, sae_meta or {})  # all of them: the same draws at any layout
    specs, saes = [specs[i] for i in mine], [every[i].to(comm.device) for i in mine]
    opts = [torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=tuple(cfg.betas)) for sae in saes]
    state, firing = TrainState(), [FiringStats.zeros(s.d_sae) for s in specs]
    ckpt, metrics = out / "checkpoint.pt", out / "metrics.jsonl"
    root = comm.rank == 0
    resuming = cfg.resume and ckpt.exists()
    if resuming:
        state, firing = load_checkpoint(ckpt, saes, opts, settings, mine, names)
        comm.agree_on_checkpoint(state.step, [t for sae, opt in zip(saes, opts) for t in _state_tensors(sae, opt)])
        if on_checkpoint:
            on_checkpoint(state.step)
    if root:
        if resuming:
            keep_metrics(metrics, state.step)
        else:
            atomic_write_text("", metrics)
        atomic_write_json({**cfg.to_dict(), "data": settings.get("data"), "d_in": source.d_in, "saes": names},
                          out / "run_config.json")
    checkpoint = Checkpointer(ckpt, comm, mine, names, settings, on_checkpoint)

    wandb_run = _wandb_init(cfg, specs) if cfg.wandb_project and root else None
    resample_at = set(cfg.resample_steps())
    window_open = {s - cfg.resample_window for s in resample_at}
    batches = source.batches(state.batch_index)
    bar = tqdm(total=cfg.total_steps, initial=state.step, unit="step", disable=not (cfg.progress and root),
               dynamic_ncols=True, desc="training SAEs")
    t0, tok0 = time.perf_counter(), state.tokens_seen
    with open(metrics, "a") if root else contextlib.nullcontext() as mf:
        while state.step < cfg.total_steps:
            if state.step in window_open:
                for fs in firing:
                    fs.window_fires.zero_()
                state.window_tokens = 0
            if state.step in resample_at and state.step > 0:
                resample(cfg, specs, saes, opts, firing, state, batches, comm)
            batch = next(batches)
            state.batch_index += 1
            records = step(cfg, specs, saes, opts, firing, state, batch, comm)
            state.step += 1
            state.tokens_seen += cfg.batch_size
            state.window_tokens += cfg.batch_size
            tps = (state.tokens_seen - tok0) / max(1e-9, time.perf_counter() - t0)
            if records:
                gathered = comm.gather_to_root(records if comm.leader else [])
                if root:
                    log([r for rs in gathered for r in rs], tps, mf, bar, wandb_run, state.step)
            bar.update(1)
            if state.step % cfg.ckpt_every == 0 and state.step < cfg.total_steps:
                checkpoint(state, saes, opts, firing)
    bar.close()
    checkpoint(state, saes, opts, firing)
    if comm.leader:
        for sae, spec, fs in zip(saes, specs, firing):
            save_sae(sae, out / spec.name)
            freq = fs.total_fires.double() / max(1, state.tokens_seen)  # training firing frequency
            with atomic_path(out / spec.name / "feature_frequency.json") as tmp:
                tmp.write_text(json.dumps([round(float(v), 8) for v in freq]))
    comm.barrier()  # every SAE is on disk when any rank returns
    if wandb_run:
        wandb_run.finish()
    return saes


class Checkpointer:
    """Writes the run's checkpoint (:mod:`attnsae.training.checkpoint`): each module group's first rank writes its
    SAEs' shards, then rank 0 the manifest, once every shard is on disk (it gathers the shard names and resampling
    records, small objects, never the weights). The files are the same at any layout, and any layout resumes them."""

    def __init__(self, path: Path, comm: distributed.Comm, mine: list[int], names: list[str],
                 settings: dict[str, Any], on_saved: Callable[[int], None] | None = None) -> None:
        self.path, self.comm, self.mine, self.names, self.settings = path, comm, mine, names, settings
        self.on_saved = on_saved

    def __call__(self, state: TrainState, saes: list[SAE], opts: list[torch.optim.Optimizer],
                 firing: list[FiringStats]) -> None:
        shards = {}
        if self.comm.leader:
            shards = {self.names[i]: save_shard(self.path, self.names[i], state.step, sae, opt, fs)
                      for i, sae, opt, fs in zip(self.mine, saes, opts, firing)}
        parts = self.comm.gather_to_root((shards, state.resamples if self.comm.leader else []))
        if parts is not None:
            files = {k: v for part in parts for k, v in part[0].items()}
            save_manifest(self.path, merged_state(state, [part[1] for part in parts], self.names), self.settings,
                          {n: files[n] for n in self.names})
        self.comm.barrier()
        if self.on_saved and self.comm.rank == 0:
            self.on_saved(state.step)


def _state_tensors(sae: SAE, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """An SAE's parameters and Adam moments: what its replicas must hold alike."""
    moments = [opt.state[p][k] for p in sae.parameters() if p in opt.state for k in ("exp_avg", "exp_avg_sq")]
    return [*sae.parameters(), *moments]


def step(cfg: TrainConfig, specs: list[SAESpec], saes: list[SAE], opts: list[torch.optim.Optimizer],
         firing: list[FiringStats], state: TrainState, batch: dict[int, torch.Tensor],
         comm: distributed.Comm | None = None) -> list[dict[str, Any]]:
    """One optimiser step of every SAE on this rank's rows of ``batch``; returns the metric records due now.

    Data parallel: the gradients, firing counts, losses and L0 of every SAE travel in one all-reduce, so each replica
    steps with the global batch's gradient."""
    comm = comm or distributed.Comm()
    lr = cfg.lr * cfg.lr_factor(state.step)
    logging = (state.step + 1) % cfg.log_every == 0 or state.step + 1 == cfg.total_steps
    rows = comm.rows(cfg.batch_size)
    xs, outs = [], []
    for sae, spec, opt, fs in zip(saes, specs, opts, firing):
        x = batch[spec.layer][rows].to(sae.device)
        for g in opt.param_groups:
            g["lr"] = lr
        dead = fs.dead(state.step, cfg.dead_window).to(sae.device) if spec.architecture in K_ARCHITECTURES else None
        out = sae_loss(sae, spec, x, dead, cfg.l1_factor(state.step), cfg.sparse_kernel, comm.mean)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        xs.append(x)
        outs.append(out)
    losses, fired = _reduce(comm, saes, outs)
    records = []
    for sae, spec, opt, fs, x, out, loss, n_fired in zip(saes, specs, opts, firing, xs, outs, losses, fired):
        if not torch.isfinite(loss):
            bad = "activations" if not torch.isfinite(x).all() else "loss"
            raise AttnsaeError(f"non-finite {bad} at step {state.step} (SAE {spec.name}); check the model's "
                               "activations or lower the lr")
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        sae.set_decoder_norm_to_unit_norm()
        fs.update(n_fired, state.step)
        if out.min_act is not None:  # the smallest activation any replica's share of the batch kept
            sae.update_topk_threshold(comm.min_(out.min_act.detach().clone()))
        if logging:
            with torch.no_grad():
                mse = comm.mean(out.parts["mse"].detach())
                records.append({"sae": spec.name, "step": state.step + 1, "tokens": (state.step + 1) * cfg.batch_size,
                                "loss": loss.item(), **{k: comm.mean(v.detach()).item() for k, v in out.parts.items()},
                                "l0": comm.mean(out.l0).item(),
                                "explained_variance": (1 - mse / variance(x, comm.mean)).item(),
                                "dead_frac": fs.dead(state.step + 1, cfg.dead_window).float().mean().item(),
                                "lr": lr})
    return records


def _reduce(comm: distributed.Comm, saes: list[SAE], outs: list) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Average the gradients and sum the firing counts over the data-parallel replicas, in one all-reduce; returns
    each SAE's global loss (scalar) and firing counts (int64 [d_sae], on the CPU)."""
    if comm.data_world == 1:
        return [o.loss.detach() for o in outs], [o.fired.cpu() for o in outs]
    params = [p for sae in saes for p in sae.parameters()]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    parts = [p.grad.reshape(-1) for p in params]
    parts += [torch.stack([o.loss.detach() for o in outs])] + [o.fired.to(parts[0].dtype) for o in outs]
    flat = comm.sum_(torch.cat(parts))
    D = comm.data_world
    at = 0
    for p in params:
        p.grad.copy_(flat[at:at + p.numel()].view_as(p)).div_(D)
        at += p.numel()
    losses = list(flat[at:at + len(outs)] / D)
    at += len(outs)
    fired = []
    for o in outs:
        fired.append(flat[at:at + len(o.fired)].round().long().cpu())
        at += len(o.fired)
    return losses, fired


def resample(cfg: TrainConfig, specs: list[SAESpec], saes: list[SAE], opts: list[torch.optim.Optimizer],
             firing: list[FiringStats], state: TrainState, batches: Iterator[dict[int, torch.Tensor]],
             comm: distributed.Comm | None = None) -> None:
    """Resample every SAE's features that fired at most ``dead_cutoff`` of the window's tokens; decided by each
    group's first rank on the global batches, and broadcast to its replicas."""
    comm = comm or distributed.Comm()
    data = [next(batches) for _ in range(cfg.resample_batches)]
    state.batch_index += cfg.resample_batches
    for sae, spec, opt, fs in zip(saes, specs, opts, firing):
        dead = fs.window_fires.double() / max(1, state.window_tokens) <= cfg.dead_cutoff
        n = torch.zeros((), dtype=torch.long)
        if comm.leader:  # each SAE's own draws, whichever rank trains it
            seed = np.random.SeedSequence([cfg.seed, state.step, zlib.crc32(spec.name.encode())]).generate_state(1)
            inputs = torch.cat([d[spec.layer] for d in data]).to(sae.device)
            n += resample_dead(sae, opt, dead.to(sae.device), inputs, torch.Generator().manual_seed(int(seed[0])))
        comm.broadcast_([*_state_tensors(sae, opt), n])
        fs.last_fired[dead] = state.step
        state.resamples.append({"sae": spec.name, "step": state.step, "resampled": int(n)})


def log(records: list[dict[str, Any]], tokens_per_s: float, file, bar, wandb_run, step: int) -> None:
    for r in records:
        r["tokens_per_s"] = round(tokens_per_s)
        file.write(json_text(r) + "\n")
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
    if not path.is_file():
        raise AttnsaeError(f"{path} is not a file (the run's metrics); remove it, then resume")
    keep = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():  # bad bytes: a torn line
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill mid-write
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            keep.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


def _wandb_init(cfg: TrainConfig, specs: list[SAESpec]):
    try:
        import wandb
    except ImportError:
        raise AttnsaeError("--wandb-project needs the wandb package: pip install wandb") from None
    return wandb.init(project=cfg.wandb_project, config={"cfg": cfg.to_dict(), "specs": [asdict(s) for s in specs]})
