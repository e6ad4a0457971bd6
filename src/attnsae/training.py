"""Training: one loop that fits several SAEs (several layers, or several L1 / k values) on one activation stream.

The default recipe is the paper's (``../shared/PAPER_NOTES.md`` §2):

* loss = squared error summed over dims, mean over batch + ``l1_coeff * sum|f|``, mean over batch (``relu``);
  TopK adds ``aux_coeff * AuxK`` (Gao et al. 2024) for dead latents; JumpReLU adds ``l0_coeff * L0`` with a
  straight-through estimator (Rajamanoharan et al. 2024);
* decoder rows unit norm: the gradient component parallel to each row is removed before the step and the rows are
  renormalised after it;
* Adam with betas (0.9, 0.99); lr warm-up from ``0.1 * lr`` to ``lr`` over ``warmup_steps``, re-warmed after each
  resample; then constant (the paper), or cosine / linear decay;
* Anthropic resampling every ``resample_every`` steps, ``resample_times`` times: features whose firing frequency over
  the last ``resample_window`` steps is at most ``dead_cutoff`` get a new decoder row ``normalise(x - b_dec)`` for an
  input ``x`` drawn with probability proportional to its squared loss squared, an encoder column of that direction
  times 0.2 times the mean live encoder norm, ``b_enc = 0``, and zeroed Adam moments.

Checkpoints are atomic; ``resume=True`` continues exactly (batch ``i`` of the stream is a function of (seed, i), and
every random draw of the trainer is seeded by the step), so a killed and resumed run ends with the same weights as
an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from attnsae import kernels
from attnsae.activations import ActivationSource
from attnsae.errors import AttnsaeError
from attnsae.io_utils import atomic_path, atomic_write_json, make_dir
from attnsae.sae import SAE, SAEConfig
from attnsae.sae_io import save_sae


@dataclass
class SAESpec:
    """One SAE to train: which layer it reads and its own hyper-parameters."""

    layer: int
    architecture: str = "relu"
    d_sae: int = 2048
    l1_coeff: float = 2.0  # relu: L1 coefficient
    k: int | None = None  # topk
    l0_coeff: float = 1.0  # jumprelu: L0 coefficient
    aux_coeff: float = 1 / 32  # topk: AuxK loss weight
    aux_k: int | None = None  # topk: latents used by AuxK (default d_in // 2)
    lr: float | None = None  # defaults to TrainConfig.lr

    @property
    def name(self) -> str:
        hp = {"relu": f"l1_{self.l1_coeff:g}", "topk": f"k{self.k}", "jumprelu": f"l0_{self.l0_coeff:g}"}
        return f"layer{self.layer}_{self.architecture}_{self.d_sae}_{hp[self.architecture]}"


@dataclass
class TrainConfig:
    """Everything the loop needs besides the SAEs (defaults: the paper's recipe)."""

    total_tokens: int = 2_000_000
    batch_size: int = 4096
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 1000
    warmup_from: float = 0.1  # warm-up starts at warmup_from * lr
    lr_schedule: str = "constant"  # constant | cosine | linear (decay after warm-up to lr_end_frac * lr)
    lr_end_frac: float = 0.0
    l1_warmup_steps: int = 0
    resample_every: int = 25_000
    resample_times: int = 4
    resample_window: int = 12_500
    resample_batches: int = 100
    dead_cutoff: float = 1e-6
    dead_window: int = 1000  # steps without firing after which a latent counts as dead (metrics, AuxK)
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 500
    sparse_kernel: bool = True  # TopK through attnsae.kernels (sparse backward)
    wandb_project: str | None = None

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("constant", "cosine", "linear"):
            raise AttnsaeError(f"unknown lr schedule {self.lr_schedule!r}: use constant, cosine or linear")
        self.betas = tuple(self.betas)

    @property
    def total_steps(self) -> int:
        return max(1, self.total_tokens // self.batch_size)

    def resample_steps(self) -> list[int]:
        return [self.resample_every * (i + 1) for i in range(self.resample_times)
                if self.resample_every * (i + 1) < self.total_steps]

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` at ``step``: warm-up (restarted after each resample), then the schedule."""
        last = max([0] + [s for s in self.resample_steps() if s <= step])
        since = step - last
        if since < self.warmup_steps:
            f = self.warmup_from + (1 - self.warmup_from) * since / self.warmup_steps
        else:
            f = 1.0
        if self.lr_schedule == "constant" or step < self.warmup_steps:
            return f
        t = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        if self.lr_schedule == "cosine":
            d = self.lr_end_frac + (1 - self.lr_end_frac) * 0.5 * (1 + math.cos(math.pi * t))
        else:
            d = 1 - (1 - self.lr_end_frac) * t
        return f * d

    def l1_factor(self, step: int) -> float:
        return min(1.0, (step + 1) / self.l1_warmup_steps) if self.l1_warmup_steps else 1.0


# ----------------------------------------------------------------------------------------------- losses


class _Step(torch.autograd.Function):
    """Heaviside ``1[pre > threshold]`` with the JumpReLU paper's straight-through gradient for ``threshold``."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        rect = (((pre - threshold) / eps).abs() < 0.5).to(pre.dtype)
        g = -(1.0 / eps) * rect * grad_out
        return None, g.reshape(-1, threshold.shape[-1]).sum(0), None


@dataclass
class StepOutput:
    loss: torch.Tensor
    parts: dict[str, torch.Tensor]  # named loss terms, already weighted
    x_hat: torch.Tensor  # [batch, d_in]
    fired: torch.Tensor  # [d_sae] tokens of the batch on which each latent fired
    l0: torch.Tensor  # scalar: mean active latents per token


def sae_loss(sae: SAE, spec: SAESpec, x: torch.Tensor, dead: torch.Tensor | None, sparsity_scale: float,
             sparse_kernel: bool = True) -> StepOutput:
    """Loss of one SAE on a batch ``x [batch, d_in]``.

    ``mse`` = squared error summed over dims, mean over batch; plus ``l1`` (relu), ``auxk`` (topk, over the
    ``dead [d_sae]`` latents) or ``l0`` (jumprelu). TopK runs through :mod:`attnsae.kernels` when ``sparse_kernel``.
    """
    arch = sae.cfg.architecture
    if arch == "topk" and sparse_kernel:
        x_hat, acts, idx, pre = kernels.topk_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.cfg.k,
                                                     sae.cfg.apply_b_dec_to_input)
        on = acts > 0
        fired = torch.bincount(idx[on], minlength=sae.d_sae)
        l0 = on.sum(-1).float().mean()
    else:
        x_hat, f, pre = sae(x)
        fired = (f > 0).sum(0)
        l0 = (f > 0).sum(-1).float().mean()
    err = x - x_hat
    parts = {"mse": err.pow(2).sum(-1).mean()}
    if arch == "relu":
        parts["l1"] = spec.l1_coeff * sparsity_scale * f.abs().sum(-1).mean()
    elif arch == "topk":
        parts["auxk"] = spec.aux_coeff * auxk_loss(sae, x, pre, err, dead, spec.aux_k) if dead is not None \
            else parts["mse"] * 0
    else:
        l0_soft = _Step.apply(pre, sae.threshold, sae.cfg.jumprelu_bandwidth).sum(-1).mean()
        parts["l0"] = spec.l0_coeff * sparsity_scale * l0_soft
    return StepOutput(sum(parts.values()), parts, x_hat, fired, l0)


def auxk_loss(sae: SAE, x: torch.Tensor, pre: torch.Tensor, err: torch.Tensor, dead: torch.Tensor,
              aux_k: int | None) -> torch.Tensor:
    """AuxK: reconstruct the (detached) residual ``err [batch, d_in]`` from the top ``aux_k`` dead latents only,
    normalised by the residual's variance (Gao et al. 2024). Zero when no latent is dead."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    k = min(aux_k or sae.d_in // 2, n_dead)
    with torch.no_grad():
        idx = torch.where(dead, pre, torch.full_like(pre, -torch.inf)).topk(k, dim=-1, sorted=False).indices
    xc = x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x
    e_hat = kernels.latents_forward(xc, sae.W_enc, sae.b_enc, sae.W_dec, idx, pre.detach())
    e = err.detach()
    return (e_hat - e).pow(2).sum(-1).mean() / e.sub(e.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)


# ----------------------------------------------------------------------------------------------- resampling


@torch.no_grad()
def resample_dead(sae: SAE, opt: torch.optim.Adam, dead: torch.Tensor, inputs: torch.Tensor,
                  generator: torch.Generator) -> int:
    """Anthropic resampling of the features ``dead [d_sae] bool`` from ``inputs [n, d_in]``. Returns how many."""
    idx = dead.nonzero()[:, 0]
    if len(idx) == 0:
        return 0
    losses = torch.cat([(x - sae(x).x_hat).pow(2).sum(-1) for x in inputs.split(4096)])
    p = losses.pow(2)
    if float(p.sum()) <= 0:
        return 0
    pick = torch.multinomial(p / p.sum(), len(idx), replacement=len(idx) > len(p), generator=generator)
    x = inputs[pick] - sae.b_dec
    direction = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [n_dead, d_in]
    live = ~dead
    enc_norm = sae.W_enc[:, live].norm(dim=0).mean() if live.any() else torch.tensor(1.0)
    sae.W_dec[idx] = direction
    sae.W_enc[:, idx] = (direction * enc_norm * 0.2).T
    sae.b_enc[idx] = 0.0
    for p_, sl in ((sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))):
        st = opt.state.get(p_)
        if st:
            st["exp_avg"][sl] = 0.0
            st["exp_avg_sq"][sl] = 0.0
    return len(idx)


# ----------------------------------------------------------------------------------------------- the loop


@dataclass
class TrainState:
    """What a checkpoint holds besides weights and optimizer states."""

    step: int = 0
    batch_index: int = 0  # next stream batch to read (resampling reads batches too)
    tokens_seen: int = 0
    resamples: list[dict] = field(default_factory=list)


class Trainer:
    """Fits ``specs`` on batches from ``source``; writes to ``out_dir``.

    Layout of ``out_dir``: ``checkpoint.pt`` (atomic, every ``ckpt_every`` steps), ``metrics.jsonl`` (one record per
    SAE every ``log_every`` steps), ``train_config.json``, and one SAELens directory per SAE (``{spec.name}/``)
    written at the end.
    """

    def __init__(self, specs: list[SAESpec], source: ActivationSource, cfg: TrainConfig, out_dir: str | os.PathLike,
                 sae_meta: dict[str, Any] | None = None, progress: bool = True) -> None:
        if not specs:
            raise AttnsaeError("no SAE to train: give at least one layer")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise AttnsaeError(f"two SAEs with the same settings: {names}")
        for s in specs:
            if s.layer not in source.layers:
                raise AttnsaeError(f"unknown layer {s.layer}: the activation source has layers {source.layers}")
        self.specs, self.source, self.cfg = specs, source, cfg
        self.out = Path(out_dir)
        self.progress = progress
        meta = sae_meta or {}
        torch.manual_seed(cfg.seed)
        self.saes = [
            SAE(SAEConfig(d_in=source.d_in, d_sae=s.d_sae, architecture=s.architecture, k=s.k, layer=s.layer,
                          hook_name=f"blocks.{s.layer}.attn.hook_z", **meta))
            for s in specs
        ]
        self.opts = [torch.optim.Adam(sae.parameters(), lr=s.lr or cfg.lr, betas=cfg.betas)
                     for sae, s in zip(self.saes, specs)]
        d = [sae.d_sae for sae in self.saes]
        self.last_fired = [torch.zeros(n, dtype=torch.long) for n in d]  # step at which each latent last fired
        self.window_fires = [torch.zeros(n, dtype=torch.long) for n in d]  # fires since the resample window opened
        self.total_fires = [torch.zeros(n, dtype=torch.long) for n in d]
        self.window_tokens = 0
        self.state = TrainState()

    # -- checkpoints ---------------------------------------------------------------------------------------------

    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        obj = {
            "state": asdict(self.state),
            "saes": [sae.state_dict() for sae in self.saes],
            "opts": [o.state_dict() for o in self.opts],
            "last_fired": self.last_fired, "window_fires": self.window_fires, "total_fires": self.total_fires,
            "window_tokens": self.window_tokens,
            "specs": [asdict(s) for s in self.specs], "cfg": asdict(self.cfg),
        }
        with atomic_path(self.ckpt_path) as tmp:
            torch.save(obj, tmp)

    def load_checkpoint(self) -> None:
        try:
            ck = torch.load(self.ckpt_path, weights_only=False)
        except Exception as e:  # truncated / corrupt pickle or zip
            raise AttnsaeError(f"corrupt or truncated checkpoint {self.ckpt_path} ({type(e).__name__}); delete it "
                               "to start over") from None
        if ck["specs"] != [asdict(s) for s in self.specs]:
            raise AttnsaeError(f"checkpoint {self.ckpt_path} was made with other SAE settings; use another --out "
                               "or drop --resume")
        for sae, sd in zip(self.saes, ck["saes"]):
            sae.load_state_dict(sd)
        for o, sd in zip(self.opts, ck["opts"]):
            o.load_state_dict(sd)
        self.last_fired, self.window_fires, self.total_fires = ck["last_fired"], ck["window_fires"], ck["total_fires"]
        self.window_tokens = ck["window_tokens"]
        self.state = TrainState(**ck["state"])

    # -- one step ------------------------------------------------------------------------------------------------

    def dead_mask(self, i: int) -> torch.Tensor:
        """Latents of SAE ``i`` that have not fired in the last ``dead_window`` steps: [d_sae] bool."""
        return (self.state.step - self.last_fired[i]) >= self.cfg.dead_window

    def step(self, batch: dict[int, torch.Tensor]) -> list[dict[str, float]]:
        cfg, st = self.cfg, self.state
        lr_f, l1_f = cfg.lr_factor(st.step), cfg.l1_factor(st.step)
        records = []
        for i, (sae, spec, opt) in enumerate(zip(self.saes, self.specs, self.opts)):
            x = batch[spec.layer]
            for g in opt.param_groups:
                g["lr"] = (spec.lr or cfg.lr) * lr_f
            dead = self.dead_mask(i) if spec.architecture == "topk" else None
            out = sae_loss(sae, spec, x, dead, l1_f, cfg.sparse_kernel)
            if not torch.isfinite(out.loss):
                bad = "activations" if not torch.isfinite(x).all() else "loss"
                raise AttnsaeError(f"non-finite {bad} at step {st.step} (SAE {spec.name}); check the model's "
                                   "activations / lower the lr; the last checkpoint is intact")
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            sae.set_decoder_norm_to_unit_norm()
            self.last_fired[i][out.fired > 0] = st.step + 1
            self.window_fires[i] += out.fired
            self.total_fires[i] += out.fired
            if (st.step + 1) % cfg.log_every == 0 or st.step + 1 == cfg.total_steps:
                with torch.no_grad():
                    var = (x - x.mean(0)).pow(2).sum(-1).mean()
                    rec = {"sae": spec.name, "step": st.step + 1, "tokens": (st.step + 1) * cfg.batch_size,
                           "loss": out.loss.item(), **{k: v.item() for k, v in out.parts.items()},
                           "l0": out.l0.item(),
                           "explained_variance": (1 - out.parts["mse"] / var).item(),
                           "dead_frac": self.dead_mask(i).float().mean().item(),
                           "lr": (spec.lr or cfg.lr) * lr_f}
                records.append(rec)
        return records

    # -- the loop ------------------------------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> list[SAE]:
        cfg = self.cfg
        make_dir(self.out)
        metrics_path = self.out / "metrics.jsonl"
        if resume and self.ckpt_path.exists():
            self.load_checkpoint()
            _truncate_metrics(metrics_path, self.state.step)
        else:
            metrics_path.write_text("")
        atomic_write_json({"cfg": asdict(cfg), "specs": [asdict(s) for s in self.specs]},
                          self.out / "train_config.json")
        wandb_run = _wandb_init(cfg, self.specs) if cfg.wandb_project else None
        resample_at = set(cfg.resample_steps())
        window_open = {s - cfg.resample_window for s in resample_at}
        batches: Iterator[dict[int, torch.Tensor]] = self.source.batches(self.state.batch_index)
        bar = tqdm(total=cfg.total_steps, initial=self.state.step, unit="step", disable=not self.progress,
                   dynamic_ncols=True, desc="training SAEs")
        t0, tok0 = time.perf_counter(), self.state.tokens_seen
        with open(metrics_path, "a") as mf:
            while self.state.step < cfg.total_steps:
                st = self.state
                if st.step in window_open:
                    for w in self.window_fires:
                        w.zero_()
                    self.window_tokens = 0
                if st.step in resample_at and st.step > 0:
                    self._resample(batches)
                batch = next(batches)
                st.batch_index += 1
                records = self.step(batch)
                st.step += 1
                st.tokens_seen += cfg.batch_size
                self.window_tokens += cfg.batch_size
                tps = (st.tokens_seen - tok0) / max(1e-9, time.perf_counter() - t0)
                for r in records:
                    r["tokens_per_s"] = round(tps)
                    mf.write(json.dumps(r) + "\n")
                if records:
                    mf.flush()
                    if wandb_run:
                        for r in records:
                            wandb_run.log({f"{r['sae']}/{k}": v for k, v in r.items() if k != "sae"}, step=st.step)
                    bar.set_postfix(l0=f"{records[0]['l0']:.1f}", ev=f"{records[0]['explained_variance']:.3f}",
                                    tok_s=f"{tps:,.0f}", refresh=False)
                bar.update(1)
                if st.step % cfg.ckpt_every == 0 and st.step < cfg.total_steps:
                    self.save_checkpoint()
        bar.close()
        self.save_checkpoint()
        for i, (sae, spec) in enumerate(zip(self.saes, self.specs)):
            save_sae(sae, self.out / spec.name)
            freq = self.total_fires[i].double() / max(1, self.state.tokens_seen)  # training firing frequency
            with atomic_path(self.out / spec.name / "feature_frequency.json") as tmp:
                tmp.write_text(json.dumps([round(float(v), 8) for v in freq]))
        if wandb_run:
            wandb_run.finish()
        return self.saes

    def _resample(self, batches: Iterator[dict[int, torch.Tensor]]) -> None:
        cfg, st = self.cfg, self.state
        data = [next(batches) for _ in range(cfg.resample_batches)]
        st.batch_index += cfg.resample_batches
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + st.step)
        for i, (sae, spec, opt) in enumerate(zip(self.saes, self.specs, self.opts)):
            freq = self.window_fires[i].float() / max(1, self.window_tokens)
            dead = freq <= cfg.dead_cutoff
            inputs = torch.cat([d[spec.layer] for d in data])
            n = resample_dead(sae, opt, dead, inputs, g)
            self.last_fired[i][dead] = st.step
            st.resamples.append({"sae": spec.name, "step": st.step, "resampled": n})


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only records up to ``step`` (those written after the checkpoint are redone on resume)."""
    if not path.exists():
        return
    keep = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(l + "\n" for l in keep))


def _wandb_init(cfg: TrainConfig, specs: list[SAESpec]):
    try:
        import wandb
    except ImportError:
        raise AttnsaeError("--wandb needs the wandb package: pip install wandb") from None
    return wandb.init(project=cfg.wandb_project, config={"cfg": asdict(cfg), "specs": [asdict(s) for s in specs]})

