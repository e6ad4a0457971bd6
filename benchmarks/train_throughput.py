"""SAE training throughput vs the machine's matmul roofline, measured side by side in one run.

    python benchmarks/train_throughput.py [--steps 5] [--shapes paper reference] [--device cpu]

For each shape (GPT-2 Small's paper shape: d_in 768, d_sae 24576, batch 4096; the reference model's: d_in 256,
d_sae 2048, batch 4096) and architecture, it times full training steps of attnsae's training loop (loss, backward,
decoder-gradient projection, Adam, renormalisation, firing statistics) and reports

* tokens/s;
* the fraction of the roofline: (the step's necessary matmul FLOPs / step time) / the measured FLOP rate of one
  ``[batch, d_in] x [d_in, d_sae]`` fp32 matmul on this machine. Necessary FLOPs: a dense SAE (relu) needs five
  such products per step (encoder forward, decoder forward, and the W_enc, W_dec and activation gradients:
  ``10 * batch * d_in * d_sae``); TopK needs only the encoder's forward (``2 * batch * d_in * d_sae``), the rest
  being O(batch * k * d_in);
* for TopK, the same step with the dense reference path (``sparse_kernel=False``) for comparison;
* ReLU again at a trained-like L0 (``--relu-l0``, default 32: each latent's encoder bias set so that it fires on
  ``l0 / d_sae`` of the synthetic tokens), where the step takes the sparse kernels (:func:`attnsae.sae.kernels.
  relu_forward`), against the same step forced dense.
"""

from __future__ import annotations

import argparse
import time

import torch

from attnsae.training.checkpoint import FiringStats, TrainState
from attnsae.training.config import SAESpec, TrainConfig
from attnsae.training.trainer import new_saes, step

SHAPES = {"paper": (768, 24576, 4096), "reference": (256, 2048, 4096)}


class SyntheticSource:
    def __init__(self, d_in: int, batch: int, device: str) -> None:
        self.layers, self.d_in = [0], d_in
        g = torch.Generator(device="cpu").manual_seed(0)
        self.pool = [torch.randn(batch, d_in, generator=g).to(device) for _ in range(4)]

    def batches(self, start: int = 0):
        i = start
        while True:
            yield {0: self.pool[i % len(self.pool)]}
            i += 1


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate(batch: int, d_in: int, d_sae: int, device: str, reps: int = 5) -> float:
    """FLOP/s of ``[batch, d_in] @ [d_in, d_sae]`` in fp32."""
    a, b = torch.randn(batch, d_in, device=device), torch.randn(d_in, d_sae, device=device)
    for _ in range(2):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * batch * d_in * d_sae * reps / (time.perf_counter() - t)


def step_time(spec: SAESpec, d_in: int, batch: int, device: str, steps: int, sparse_kernel: bool = True,
              l0: int | None = None) -> float:
    """Seconds per training step; ``l0``: set the encoder biases so that about ``l0`` latents fire per token."""
    cfg = TrainConfig(total_tokens=10**12, batch_size=batch, buffer_size=batch, log_every=10**9,
                      sparse_kernel=sparse_kernel, dead_window=10**9, resample_times=0, progress=False)
    specs = [spec]
    saes = [sae.to(device) for sae in new_saes(specs, d_in, cfg.seed, {})]
    source = SyntheticSource(d_in, batch, device)
    if l0 is not None:
        with torch.no_grad():
            for sae in saes:
                pre = (source.pool[0] - sae.b_dec) @ sae.W_enc  # [batch, d_sae]
                sae.b_enc.copy_(-pre.quantile(1 - l0 / sae.d_sae, dim=0))
    opts = [torch.optim.Adam(s.parameters(), lr=cfg.lr, betas=tuple(cfg.betas)) for s in saes]
    firing = [FiringStats.zeros(s.d_sae) for s in specs]  # on the CPU, as the trainer keeps them
    state = TrainState()
    it = source.batches()

    def one_step() -> None:
        step(cfg, specs, saes, opts, firing, state, next(it))
        state.step += 1

    for _ in range(2):  # warm-up
        one_step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        one_step()
    sync(device)
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--relu-l0", type=int, default=32, help="trained-like L0 for the sparse ReLU row")
    args = ap.parse_args()
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    head = f"{'shape':>10} {'arch':>12} {'tokens/s':>10} {'step ms':>8} {'roofline':>9} {'vs dense':>9}"
    print(head)
    print("-" * len(head))
    for name in args.shapes:
        d_in, d_sae, batch = SHAPES[name]
        rate = matmul_rate(batch, d_in, d_sae, args.device)
        print(f"{name:>10} matmul [{batch}x{d_in}]x[{d_in}x{d_sae}] fp32: {rate / 1e9:,.1f} GFLOP/s")
        for arch in ("relu", "topk"):
            spec = SAESpec(layer=0, architecture=arch, d_sae=d_sae, k=args.k if arch == "topk" else None)
            t = step_time(spec, d_in, batch, args.device, args.steps)
            flops = (10 if arch == "relu" else 2) * batch * d_in * d_sae
            frac = flops / t / rate
            extra = ""
            if arch == "topk":
                t_dense = step_time(spec, d_in, batch, args.device, args.steps, sparse_kernel=False)
                extra = f"{t_dense / t:>8.2f}x"
            label = f"{arch}" + (f" k={args.k}" if arch == "topk" else "")
            print(f"{name:>10} {label:>12} {batch / t:>10,.0f} {t * 1e3:>8.1f} {frac:>9.1%} {extra:>9}")
        spec = SAESpec(layer=0, architecture="relu", d_sae=d_sae)
        t = step_time(spec, d_in, batch, args.device, args.steps, l0=args.relu_l0)
        t_dense = step_time(spec, d_in, batch, args.device, args.steps, sparse_kernel=False, l0=args.relu_l0)
        frac = 10 * batch * d_in * d_sae / t / rate
        print(f"{name:>10} {f'relu L0~{args.relu_l0}':>12} {batch / t:>10,.0f} {t * 1e3:>8.1f} {frac:>9.1%} "
              f"{t_dense / t:>8.2f}x")


if __name__ == "__main__":
    main()
