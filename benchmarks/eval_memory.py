"""Peak memory of ``attnsae eval``'s loss runs vs the unchunked way, measured side by side in one run.

    python benchmarks/eval_memory.py [--vocabs 8192 32768 131072 262144] [--contexts 16] [--context-size 128]

For each vocabulary it builds a tiny random Gemma-3-style model (hidden 64, 2 layers, the reference tokenizer; only
the vocabulary varies) in a temporary folder and measures, each in a fresh subprocess so that peaks do not mix:

* **chunked**: :func:`attnsae.evals.metrics.evaluate` at its defaults (batch size, chunk budget) with one random
  SAE on ``blocks.1.attn.hook_z``: runs stop at ``ln_final.hook_out`` and CE/KL are reduced a chunk of positions at a
  time;
* **unchunked**: what evaluate did before, reimplemented below: every run returns full ``[batch, pos, d_vocab]``
  logits, log-softmaxed whole; the clean run's log-probabilities and probabilities are kept for the KL (batch 16).

Peak memory is the increase of the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``
after the model is loaded) over its resident set just before the evaluation. Both do the same runs (clean, spliced,
zero- and mean-ablated) on the same tokens; ``|dCE|`` is the largest difference of their four CE values.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HIDDEN, LAYERS, LAYER, D_SAE, OLD_BATCH = 64, 2, 1, 1024, 16


def build(path: Path, vocab: int, ctx: int) -> str:
    """A random 2-layer Gemma 3 text model with ``vocab`` tokens, saved (HF format, reference tokenizer) at ``path``."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    from attnsae.models import REFERENCE_DIR

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=ctx,
                           sliding_window=32, layer_types=["sliding_attention", "full_attention"], bos_token_id=0,
                           eos_token_id=0, pad_token_id=0)
    Gemma3ForCausalLM(cfg).save_pretrained(path)
    PreTrainedTokenizerFast.from_pretrained(REFERENCE_DIR).save_pretrained(path)
    return str(path)


def _status_kib(field: str) -> int:
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1])


@torch.no_grad()
def unchunked(model, sae, tokens: torch.Tensor) -> list[float]:
    """The previous evaluate's loss runs: full logits and log-softmax per run. Returns CE clean, sae, zero, mean."""
    from attnsae.evals.splice import ablate_z, mean_z, splice_saes

    means = mean_z(model, tokens, [LAYER], OLD_BATCH, keep_bos=True)
    sums = [0.0] * 4
    for i in range(0, len(tokens), OLD_BATCH):
        batch = tokens[i:i + OLD_BATCH]
        targets = batch[:, 1:, None]
        logp_clean = model(batch)[:, :-1].float().log_softmax(-1)
        p_clean = logp_clean.exp()
        sums[0] -= logp_clean.gather(-1, targets).double().sum().item()
        for j, ctx in enumerate((splice_saes(model, {LAYER: sae}, keep_bos=True), ablate_z(model, [LAYER], True),
                                 ablate_z(model, {LAYER: means[LAYER]}, True)), start=1):
            with ctx:
                logits = model(batch)  # alive until the KL is summed, as before
            logp = logits[:, :-1].float().log_softmax(-1)
            sums[j] -= logp.gather(-1, targets).double().sum().item()
            kl = (p_clean * (logp_clean - logp)).sum(-1).double().sum().item()  # noqa: F841 (measured, not shown)
            del logits, logp
    return [s / (tokens.shape[0] * (tokens.shape[1] - 1)) for s in sums]


def child(folder: str, mode: str, n: int, ctx: int) -> None:
    """One measurement; prints a JSON line {peak_mib, seconds, ce}."""
    from attnsae.models.architecture import describe
    from attnsae.evals.metrics import evaluate
    from attnsae.models import load_model
    from attnsae.sae.model import SAE, SAEConfig

    model = load_model(folder)
    describe(model)  # the architecture probe (cached), outside the measurement
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=int(model.cfg.n_heads * model.cfg.d_head), d_sae=D_SAE,
                        hook_name=f"blocks.{LAYER}.attn.hook_z"))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 8192, (n, ctx), generator=g)
    tokens[:, 0] = 0
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set
    before = _status_kib("VmRSS")
    t = time.perf_counter()
    if mode == "chunked":
        s = evaluate(model, sae, tokens, progress=False).saes[0]
        ce = [s.ce_clean, s.ce_sae, s.ce_zero, s.ce_mean]
    else:
        ce = unchunked(model, sae, tokens)
    seconds = time.perf_counter() - t
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - before) / 1024, "seconds": seconds, "ce": ce}))


def measure(folder: str, mode: str, n: int, ctx: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", folder, mode, str(n), str(ctx)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} on {folder} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocabs", type=int, nargs="+", default=[8192, 32768, 131072, 262144])
    ap.add_argument("--contexts", type=int, default=16)
    ap.add_argument("--context-size", type=int, default=128)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        folder, mode, n, ctx = args.child
        return child(folder, mode, int(n), int(ctx))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.contexts} contexts of "
          f"{args.context_size} tokens, Gemma-3-style model (hidden {HIDDEN}, {LAYERS} layers), one SAE "
          f"(d_sae {D_SAE}) on layer {LAYER}")
    head = (f"{'vocab':>8} {'chunked MiB':>12} {'unchunked MiB':>14} {'ratio':>7} {'chunked s':>10} "
            f"{'unchunked s':>12} {'|dCE|':>9}")
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory() as tmp:
        for vocab in args.vocabs:
            folder = build(Path(tmp) / f"gemma3-{vocab}", vocab, args.context_size)
            new = measure(folder, "chunked", args.contexts, args.context_size)
            old = measure(folder, "unchunked", args.contexts, args.context_size)
            dce = max(abs(a - b) for a, b in zip(new["ce"], old["ce"]))
            print(f"{vocab:>8,} {new['peak_mib']:>12,.0f} {old['peak_mib']:>14,.0f} "
                  f"{old['peak_mib'] / max(new['peak_mib'], 1e-9):>6.1f}x {new['seconds']:>10.2f} "
                  f"{old['seconds']:>12.2f} {dce:>9.1e}", flush=True)


if __name__ == "__main__":
    main()
