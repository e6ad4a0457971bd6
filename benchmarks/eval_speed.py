"""``attnsae eval`` on an SAE set across a model's layers: intervened runs that start at their layer (the blocks before
it skipped) against whole forwards, side by side in one run.

    python benchmarks/eval_speed.py [--model smollm2-135m] [--layers 0 5 10 15 20 25] [--contexts 16] [--repeats 2]

One random TopK SAE per layer (d_sae 4 x d_in, k 32; the cost does not depend on the weights) on ``--contexts``
random contexts of 128 tokens of the model's vocabulary, BOS first. Each arm runs :func:`attnsae.evals.metrics.
evaluate` alike: one clean run, a spliced, a zero- and a mean-ablated run per layer, the mean pass before them; the
"whole" arm sets ``KEEP_RESIDUAL_BYTES`` to 0, so that every intervened run starts from the tokens. Prints each
arm's median seconds, the ratio, the share of the model's blocks the fast arm runs (its expected bound), and the
largest difference between the two arms' CE and KL values.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from attnsae.evals import loss_head
from attnsae.evals.metrics import evaluate
from attnsae.models import load_model, model_name
from attnsae.sae.model import SAE, SAEConfig

FIELDS = ("ce_clean", "ce_sae", "ce_zero", "ce_mean", "kl_sae", "kl_zero", "kl_mean")


def random_sae(model, layer: int, seed: int) -> SAE:
    torch.manual_seed(seed)
    d_in = int(model.cfg.n_heads * model.cfg.d_head)
    return SAE(SAEConfig(d_in=d_in, d_sae=4 * d_in, architecture="topk", k=32,
                         hook_name=f"blocks.{layer}.attn.hook_z", model_name=model_name(model)))


def timed(model, saes, tokens, whole: bool) -> tuple[float, list]:
    saved = loss_head.KEEP_RESIDUAL_BYTES
    loss_head.KEEP_RESIDUAL_BYTES = 0 if whole else saved
    try:
        t0 = time.perf_counter()
        report = evaluate(model, saes, tokens, progress=False)
        return time.perf_counter() - t0, report.saes
    finally:
        loss_head.KEEP_RESIDUAL_BYTES = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: the reference model")
    ap.add_argument("--layers", type=int, nargs="+", default=None, help="default: every layer")
    ap.add_argument("--contexts", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    model = load_model(args.model) if args.model else load_model()
    n_layers = int(model.cfg.n_layers)
    layers = args.layers if args.layers is not None else list(range(n_layers))
    saes = [random_sae(model, layer, seed=layer) for layer in layers]
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, int(model.cfg.d_vocab), (args.contexts, 128), generator=g)
    tokens[:, 0] = model.tokenizer.bos_token_id or 0
    times: dict[bool, list[float]] = {True: [], False: []}
    rows = {}
    for _ in range(args.repeats):
        for whole in (True, False):  # alternated, so that drift in the machine's speed hits both arms
            t, rows[whole] = timed(model, saes, tokens, whole)
            times[whole].append(t)
    slow, fast = statistics.median(times[True]), statistics.median(times[False])
    blocks = sum(n_layers - layer for layer in layers if layer > 0) + n_layers * sum(layer == 0 for layer in layers)
    diff = max(abs(getattr(a, k) - getattr(b, k)) for a, b in zip(rows[True], rows[False]) for k in FIELDS)
    print(f"{model_name(model)}: {len(layers)} layers of {n_layers}, {args.contexts} contexts of 128 tokens, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"  whole forwards        {slow:8.1f} s")
    print(f"  start at the layer    {fast:8.1f} s   {slow / fast:.2f}x faster")
    print(f"  blocks run by intervened runs: {blocks / (n_layers * len(layers)):.0%} of whole forwards' "
          f"(the LM head, the clean and the mean runs are the same in both)")
    print(f"  largest |difference| of CE/KL between the arms: {diff:.2e}")


if __name__ == "__main__":
    main()
