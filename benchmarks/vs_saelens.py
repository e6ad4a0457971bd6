"""attnsae against SAELens: full SAE training steps, same shapes, same data, interleaved in one process.

    python -m venv /tmp/slvenv && /tmp/slvenv/bin/pip install torch==2.13.0 sae-lens==6.54.12
    /tmp/slvenv/bin/pip install --no-deps -e .            # attnsae into the same venv (sae-lens brings the rest)
    /tmp/slvenv/bin/python benchmarks/vs_saelens.py [--shapes reference paper] [--steps 3] [--rounds 3]

This script installs nothing. For each shape (d_in x d_sae, batch 4096) and architecture it builds one SAE in each
library and times full training steps on the same batches:

* attnsae: :func:`attnsae.training.trainer.step` (loss with the sparse kernels, backward, decoder-gradient
  projection, Adam, renormalisation, firing statistics);
* SAELens 6.x: what ``SAETrainer._train_step`` does per step: ``training_forward_pass`` with a ``TrainStepInput``,
  its firing statistics, backward, ``clip_grad_norm_``, Adam, ``zero_grad`` (the lr and coefficient schedulers, a
  constant here, are left out). TopK is timed with ``use_sparse_activations`` off and on; the faster counts (on
  torch 2.13's CPU the sparse one fails in its backward, and the script says so). BatchTopK and Matryoshka
  (BatchTopK, widths d_sae/16, d_sae/4, d_sae) are SAELens' ``BatchTopKTrainingSAE`` and
  ``MatryoshkaBatchTopKTrainingSAE`` with their defaults; each step also updates the inference threshold.

Two states: **fresh** (each library's own initialisation; a fresh ReLU or JumpReLU SAE fires on about half its
latents) and **trained-like L0** (``--l0``, default 32, as trained SAEs of these shapes have; the paper's are 3-21):
both SAEs get the same encoder, decoder and ``b_dec``, and every latent's encoder bias is set to minus its
``1 - l0/d_sae`` quantile of pre-activations on the first batch, so each latent fires on about ``l0/d_sae`` of the
tokens (JumpReLU: both thresholds 1e-3 first). TopK's L0 is k either way, and so is BatchTopK's and Matryoshka's
training L0 (k x batch entries a batch; the L0 column is attnsae's training step's). Each ratio is SAELens's median
step time over attnsae's, from ``--rounds`` alternating rounds of ``--steps`` steps each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from attnsae.sae import K_ARCHITECTURES
from attnsae.training.checkpoint import FiringStats, TrainState
from attnsae.training.config import SAESpec, TrainConfig
from attnsae.training.losses import sae_loss
from attnsae.training.trainer import new_saes, step

SHAPES = {"reference": (256, 2048, 4096), "paper": (768, 24576, 4096)}
ARCHS = ("relu", "topk", "jumprelu", "batchtopk", "matryoshka")


def widths(arch: str, d_sae: int) -> list[int] | None:
    """Matryoshka's nested prefixes at ``d_sae``."""
    return [d_sae // 16, d_sae // 4, d_sae] if arch == "matryoshka" else None


class Ours:
    """One attnsae SAE and its optimiser, stepped as the trainer steps them."""

    def __init__(self, arch: str, d_in: int, d_sae: int, batch: int, k: int) -> None:
        self.cfg = TrainConfig(total_tokens=10**12, batch_size=batch, buffer_size=batch, log_every=10**9,
                               dead_window=10**9, resample_times=0, progress=False, architecture=arch,
                               matryoshka_widths=widths(arch, d_sae))
        self.specs = [SAESpec(layer=0, architecture=arch, d_sae=d_sae, k=k if arch in K_ARCHITECTURES else None,
                              l1_coeff=2.0, l0_coeff=1.0, matryoshka_widths=widths(arch, d_sae))]
        self.saes = new_saes(self.specs, d_in, 0, {})
        self.opts = [torch.optim.Adam(s.parameters(), lr=1e-4, betas=(0.9, 0.99)) for s in self.saes]
        self.firing = [FiringStats.zeros(d_sae)]
        self.state = TrainState()

    @property
    def sae(self):
        return self.saes[0]

    def step(self, x: torch.Tensor) -> None:
        step(self.cfg, self.specs, self.saes, self.opts, self.firing, self.state, {0: x})
        self.state.step += 1


class Theirs:
    """One SAELens training SAE, stepped as ``SAETrainer._train_step`` steps it."""

    def __init__(self, arch: str, d_in: int, d_sae: int, k: int, sparse_topk: bool = False) -> None:
        import sae_lens as sl

        if arch == "relu":
            self.sae = sl.StandardTrainingSAE(sl.StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=2.0))
        elif arch == "topk":
            self.sae = sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k,
                                                                   use_sparse_activations=sparse_topk))
        elif arch == "batchtopk":
            self.sae = sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
        elif arch == "matryoshka":
            self.sae = sl.MatryoshkaBatchTopKTrainingSAE(sl.MatryoshkaBatchTopKTrainingSAEConfig(
                d_in=d_in, d_sae=d_sae, k=k, matryoshka_widths=widths(arch, d_sae)))
        else:
            self.sae = sl.JumpReLUTrainingSAE(sl.JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l0_coefficient=1.0))
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=1e-4, betas=(0.9, 0.99))
        self.coefficients = {name: c.value for name, c in self.sae.get_coefficients().items()}
        self.since_fired = torch.zeros(d_sae)
        self.freq = torch.zeros(d_sae)
        self.n = 0

    def step(self, x: torch.Tensor) -> None:
        from sae_lens.saes.sae import TrainStepInput

        self.sae.train()
        out = self.sae.training_forward_pass(step_input=TrainStepInput(
            sae_in=x, coefficients=self.coefficients, dead_neuron_mask=self.since_fired > 10**9,
            n_training_steps=self.n, is_logging_step=False))
        with torch.no_grad():
            firing = out.feature_acts.bool().float()
            did_fire = firing.sum(-2).bool()
            if did_fire.is_sparse:
                did_fire = did_fire.to_dense()
            self.since_fired += 1
            self.since_fired[did_fire] = 0
            self.freq += firing.sum(0).to_dense() if firing.is_sparse else firing.sum(0)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.sae.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad()
        self.n += 1


@torch.no_grad()
def match_l0(ours: Ours, theirs: Theirs, x: torch.Tensor, l0: int) -> None:
    """Same weights in both; each latent's encoder bias at its ``1 - l0/d_sae`` pre-activation quantile on ``x``."""
    a, b = ours.sae, theirs.sae
    b.W_enc.copy_(a.W_enc)
    b.W_dec.copy_(a.W_dec)
    b.b_dec.copy_(a.b_dec)
    pre = (x - a.b_dec) @ a.W_enc
    q = _column_quantile(pre, 1 - l0 / a.d_sae)
    a.b_enc.copy_(-q)
    b.b_enc.copy_(-q)
    if a.cfg.architecture == "jumprelu":
        a.set_threshold(torch.full((a.d_sae,), 1e-3))
        b.threshold.fill_(1e-3)


def _column_quantile(m: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q`` quantile of every column of ``m [n, d]`` (in column blocks: ``quantile`` sorts a copy)."""
    return torch.cat([m[:, i:i + 1024].quantile(q, dim=0) for i in range(0, m.shape[1], 1024)])


def l0_of(ours: Ours, x: torch.Tensor) -> float:
    """Active latents per token: of a training step (BatchTopK's L0 there is k; its threshold is for inference)."""
    with torch.no_grad():
        return float(sae_loss(ours.sae, ours.specs[0], x, None).l0)


def interleaved(runs: dict[str, object], batches: list[torch.Tensor], steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of each run, from alternating rounds (one warm-up step each first)."""
    for name, r in list(runs.items()):
        try:
            r.step(batches[0])
        except Exception as e:  # SAELens' sparse TopK path does not run everywhere
            if name == "ours":
                raise
            print(f"  ({name} left out: {type(e).__name__}: {str(e).splitlines()[0][:90]})")
            del runs[name]
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(rounds):
        for name, r in runs.items():
            t = time.perf_counter()
            for j in range(steps):
                r.step(batches[(i * steps + j) % len(batches)])
            times[name].append((time.perf_counter() - t) / steps)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--l0", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    import sae_lens

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"attnsae vs sae-lens {sae_lens.__version__}: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU; medians of {args.rounds} interleaved rounds of {args.steps} steps")
    head = f"{'shape':>9} {'arch':>9} {'state':>13} {'L0':>6} {'attnsae tok/s':>14} {'sae-lens tok/s':>15} {'ratio':>7}"
    print(head)
    print("-" * len(head))
    for shape in args.shapes:
        d_in, d_sae, batch = SHAPES[shape]
        g = torch.Generator().manual_seed(0)
        batches = [torch.randn(batch, d_in, generator=g) for _ in range(4)]
        for arch in args.archs:
            for state in ("fresh", f"L0 {args.l0}") if arch not in K_ARCHITECTURES else (f"k {args.k}",):
                ours = Ours(arch, d_in, d_sae, batch, args.k)
                runs = {"ours": ours}
                if arch == "topk":
                    runs.update(theirs=Theirs(arch, d_in, d_sae, args.k), theirs_sparse=Theirs(arch, d_in, d_sae,
                                                                                             args.k, True))
                else:
                    runs["theirs"] = Theirs(arch, d_in, d_sae, args.k)
                if state.startswith("L0"):
                    match_l0(ours, runs["theirs"], batches[0], args.l0)
                l0 = l0_of(ours, batches[0])
                t = interleaved(runs, batches, args.steps, args.rounds)
                theirs = min(v for k, v in t.items() if k != "ours")
                print(f"{shape:>9} {arch:>9} {state:>13} {l0:>6.1f} {batch / t['ours']:>14,.0f} "
                      f"{batch / theirs:>15,.0f} {theirs / t['ours']:>6.2f}x", flush=True)


if __name__ == "__main__":
    main()
