"""Train attnsae's reference model (2-layer GPT-2 on the Python standard library) and export it into the package.

    python scripts/train_reference_model.py                      # train (resumes from --run-dir if present)
    python scripts/train_reference_model.py --export             # write weights, tokenizer and card into the package

Offline and deterministic given the seed and the interpreter's stdlib. Checkpoints are written atomically to
``--run-dir`` (outside the work tree) every ``--ckpt-every`` steps; rerunning the same command resumes from the last
one exactly (data order is a function of (seed, step), so a resumed run sees the same batches).
The tokenised corpus and tokenizer are stored in the run dir too, so a machine with another stdlib can carry them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from attnsae import corpus
from attnsae.io import atomic_path, atomic_write_json
from attnsae.models import EOT_TOKEN, REFERENCE_DIR, REFERENCE_NAME
from attnsae.studies.head_scores import head_scores
from attnsae.views.numbers import compact
from reference_mix import ReferenceConfig, gpt2_config, mix_batch

DEFAULT_RUN_DIR = Path(os.environ.get("ATTNSAE_CACHE", Path.home() / ".cache" / "attnsae")) / "reference-run"


def atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ----------------------------------------------------------------------------------------------- data


def prepare_data(run_dir: Path, cfg: ReferenceConfig) -> dict:
    """Train the BPE tokenizer on the stdlib train split and tokenise both splits, once (kept in ``run_dir``)."""
    meta_path = run_dir / "data.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    run_dir.mkdir(parents=True, exist_ok=True)
    stats = {s: corpus.CorpusStats() for s in corpus.SPLITS}
    train_docs = list(corpus.iter_documents("stdlib", "train", stats=stats["train"]))
    val_docs = list(corpus.iter_documents("stdlib", "validation", stats=stats["validation"]))
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(train_docs, vocab_size=cfg.vocab_size, min_frequency=2, special_tokens=[EOT_TOKEN],
                            show_progress=True)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOT_TOKEN, eos_token=EOT_TOKEN,
                                  unk_token=EOT_TOKEN, model_max_length=cfg.n_ctx)
    tok.save_pretrained(run_dir / "tokenizer")
    eot = tok.eos_token_id
    meta = {"eot_id": eot}
    for split, docs in (("train", train_docs), ("validation", val_docs)):
        t0 = time.perf_counter()
        stream = corpus.tokenize_documents(tok, docs, eot)
        dt = time.perf_counter() - t0
        np.save(run_dir / f"{split}_tokens.npy", stream.astype(np.int32))
        files = corpus.stdlib_files(split)
        meta[split] = {
            "files": len(files),
            "docs": stats[split].n_docs,
            "bytes": stats[split].n_bytes,
            "skipped": stats[split].n_skipped,
            "tokens": int(len(stream)),
            "tokenize_tokens_per_s": round(len(stream) / dt),
            "sha256": corpus.fingerprint(files),
        }
        print(f"{split}: {len(files)} files, {stats[split].n_bytes} bytes, {len(stream)} tokens "
              f"({len(stream) / dt:,.0f} tokens/s)")
    meta["python"] = sys.version.split()[0]
    atomic_write_json(meta, meta_path)
    return meta


# ----------------------------------------------------------------------------------------------- model


def lm_loss(model, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) over all positions of ``tokens [batch, pos]``."""
    logits = model(tokens).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


@torch.no_grad()
def val_loss(model, val_stream: np.ndarray, n_ctx: int, eot_id: int, max_rows: int | None = None,
             batch_size: int = 32) -> tuple[float, int]:
    """Mean CE (nats/token) over rows ``[BOS] + n_ctx-1`` of the validation stream, and the tokens scored."""
    rows = torch.from_numpy(corpus.make_contexts(val_stream.astype(np.int64), n_ctx, eot_id))
    if max_rows is not None:
        rows = rows[:max_rows]
    total, n = 0.0, 0
    model.eval()
    for i in range(0, len(rows), batch_size):
        b = rows[i : i + batch_size]
        total += lm_loss(model, b).item() * b[:, 1:].numel()
        n += b[:, 1:].numel()
    model.train()
    return total / n, n


def build(cfg: ReferenceConfig, eot_id: int):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(gpt2_config(cfg, eot_id))
    model.config._attn_implementation = "sdpa"
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas, fused=False,
    )
    return model, opt


def train(args) -> None:
    cfg = ReferenceConfig(total_tokens=args.total_tokens, tail_tokens=args.tail_tokens, seed=args.seed)
    run_dir = Path(args.run_dir)
    meta = prepare_data(run_dir, cfg)
    eot = meta["eot_id"]
    train_stream = np.load(run_dir / "train_tokens.npy").astype(np.int64)
    val_stream = np.load(run_dir / "validation_tokens.npy")
    torch.set_num_threads(args.threads)
    model, opt = build(cfg, eot)
    step, log = 0, []
    ckpt_path = run_dir / "ckpt.pt"
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, log = ck["step"], ck["log"]
        print(f"resumed at step {step}")
    atomic_write_json(cfg.to_dict(), run_dir / "train_config.json")
    fwd = torch.compile(model) if args.compile else model
    tokens_per_step = cfg.batch_size * cfg.n_ctx
    bar = tqdm(total=cfg.total_steps, initial=step, unit="step", dynamic_ncols=True)
    last_ckpt = time.time()
    t0, tok0 = time.perf_counter(), 0
    while step < cfg.total_steps:
        rng = np.random.default_rng([cfg.seed, step])
        batch = torch.from_numpy(mix_batch(train_stream, cfg, rng, eot))
        lr = cfg.lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = lm_loss(fwd, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        tok0 += tokens_per_step
        rec = {"step": step, "tokens": step * tokens_per_step, "loss": round(loss.item(), 4), "lr": lr,
               "grad_norm": round(float(gnorm), 4)}
        if step % args.eval_every == 0 or step == cfg.total_steps:
            rec["val_loss"] = round(val_loss(model, val_stream, cfg.n_ctx, eot, max_rows=args.eval_rows)[0], 4)
        log.append(rec)
        tps = tok0 / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tps:,.0f}", refresh=False)
        bar.update(1)
        if step % args.ckpt_every == 0 or step == cfg.total_steps or time.time() - last_ckpt > args.ckpt_seconds:
            atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "log": log,
                         "cfg": cfg.to_dict()}, ckpt_path)
            last_ckpt = time.time()
    bar.close()
    print(f"done: {step} steps, {step * tokens_per_step:,} tokens")


# ----------------------------------------------------------------------------------------------- export


def bits_per_byte(nats_per_token: float, n_scored: int, stream_tokens: int, stream_bytes: int) -> float:
    """Bits per byte of source text: the scored tokens cover ``n_scored / stream_tokens`` of the bytes."""
    return nats_per_token * n_scored / math.log(2) / (stream_bytes * n_scored / stream_tokens)


def plot_loss_curve(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tok = [r["tokens"] / 1e6 for r in log]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(tok, [r["loss"] for r in log], lw=0.6, alpha=0.6, label="train (mix, per step)")
    ev = [r for r in log if "val_loss" in r]
    ax.plot([r["tokens"] / 1e6 for r in ev], [r["val_loss"] for r in ev], "o-", ms=3, label="validation")
    ax.set(xlabel="tokens seen (M)", ylabel="cross-entropy (nats/token)", title=f"{REFERENCE_NAME} training",
           ylim=(1.5, 6))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def export(run_dir: Path, out: Path) -> None:
    """Write weights (safetensors), config, tokenizer, card.json, MODEL_CARD.md and loss_curve.png into ``out``."""
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    meta = json.loads((run_dir / "data.json").read_text())
    ck = torch.load(run_dir / "ckpt.pt", weights_only=False)
    cfg = ReferenceConfig(**{k: tuple(v) if k == "betas" else v for k, v in ck["cfg"].items()})
    if ck["step"] < cfg.total_steps:
        raise SystemExit(f"run is at step {ck['step']} of {cfg.total_steps}: finish training first")
    eot = meta["eot_id"]
    model = GPT2LMHeadModel(gpt2_config(cfg, eot))
    model.load_state_dict(ck["model"])
    model.eval()
    tok = PreTrainedTokenizerFast.from_pretrained(run_dir / "tokenizer")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)

    torch.set_num_threads(os.cpu_count() or 1)
    results = {}
    for split in ("train", "validation"):
        stream = np.load(run_dir / f"{split}_tokens.npy")
        rows = None if split == "validation" else 1024  # train CE on a fixed 260k-token sample
        ce, n = val_loss(model, stream, cfg.n_ctx, eot, max_rows=rows)
        results[split] = {"ce_nats_per_token": round(ce, 4), "tokens_scored": n,
                          "bits_per_byte": round(bits_per_byte(ce, n, meta[split]["tokens"], meta[split]["bytes"]), 4)}
        print(split, results[split])
    eager = GPT2LMHeadModel.from_pretrained(out, attn_implementation="eager").eval()
    val_rows = torch.from_numpy(corpus.make_contexts(np.load(run_dir / "validation_tokens.npy").astype(np.int64),
                                                     cfg.n_ctx, eot))
    scores = head_scores(eager, val_rows, cfg.vocab_size, eot)
    card = {
        "name": REFERENCE_NAME,
        "command": "python scripts/train_reference_model.py"
                   + (f" --tail-tokens {cfg.tail_tokens}" if cfg.tail_tokens else "")
                   + " && python scripts/train_reference_model.py --export",
        "seed": cfg.seed,
        "recipe": cfg.to_dict(),
        "total_steps": cfg.total_steps,
        "tokens_seen": ck["step"] * cfg.batch_size * cfg.n_ctx,
        "corpus": {"source": "stdlib", "python": meta["python"], "train": meta["train"],
                   "validation": meta["validation"]},
        "loss": results,
        "final_train_mix_loss": ck["log"][-1]["loss"],
        "heads": compact(scores),
    }
    (out / "card.json").write_text(json.dumps(card, indent=1))
    (out / "train_log.json").write_text(json.dumps(ck["log"]))
    plot_loss_curve(ck["log"], out / "loss_curve.png")
    (out / "MODEL_CARD.md").write_text(model_card_markdown(card))
    print(f"exported to {out}")


def model_card_markdown(card: dict) -> str:
    h = card["heads"]
    c = card["corpus"]
    lines = [
        f"# {card['name']}: attnsae's reference model",
        "",
        "A 2-layer GPT-2 (d_model 256, 8 heads of 32, n_ctx 256, MLPs, GELU, tied embeddings, byte-level BPE "
        f"vocabulary of {card['recipe']['vocab_size']} with `<|endoftext|>` as BOS/EOS) trained on the source of "
        f"Python {c['python']}'s standard library. attnsae's analogue of the paper's Gelu-2L.",
        "",
        f"Reproduce (offline, seed {card['seed']}): `{card['command']}`",
        "",
        "## Corpus",
        "",
        "| split | files | bytes | tokens | sha256 |",
        "|---|---|---|---|---|",
    ]
    for s in ("train", "validation"):
        lines.append(f"| {s} | {c[s]['files']} | {c[s]['bytes']:,} | {c[s]['tokens']:,} | `{c[s]['sha256'][:16]}…` |")
    r = card["recipe"]
    lines += [
        "",
        "## Training",
        "",
        f"{card['tokens_seen']:,} tokens seen ({card['total_steps']} steps of {r['batch_size']} x {r['n_ctx']}); "
        f"AdamW lr {r['lr']}, betas {tuple(r['betas'])}, weight decay {r['weight_decay']} (matrices only), "
        f"{r['warmup_steps']} warm-up steps then cosine to {r['min_lr_frac']:.0%} over {r['total_tokens']:,} tokens"
        + (f", then {r['tail_tokens']:,} tokens at that rate" if r.get("tail_tokens") else "")
        + f"; grad clip {r['grad_clip']}, no "
        f"dropout. Mix: {r['repeat_text_frac']:.0%} of contexts repeat a natural-text prefix (`[BOS] x[:n] x[:n] "
        f"x[n:]`), {r['repeat_random_frac']:.0%} contain n random tokens written twice, n in "
        f"{r['repeat_min']}..{r['repeat_max']}.",
        "",
        "![loss curve](loss_curve.png)",
        "",
        "## Loss",
        "",
        "| split | CE (nats/token) | bits/byte | tokens scored |",
        "|---|---|---|---|",
    ]
    for s in ("train", "validation"):
        v = card["loss"][s]
        lines.append(f"| {s} | {v['ce_nats_per_token']:.4f} | {v['bits_per_byte']:.4f} | {v['tokens_scored']:,} |")
    lines += [
        "",
        "Train CE is on the first 1,024 contexts of the train split (plain text, no repeats).",
        "",
        "## Heads",
        "",
        f"Repeat gain (mean log-prob of the repeated half minus the first half): random tokens "
        f"{h['repeat_gain_random']:.2f} nats/token, validation text {h['repeat_gain_text']:.2f} nats/token.",
        "",
        "| head | previous-token score (validation text) | induction score (repeated random tokens) |",
        "|---|---|---|",
    ]
    for l, (pt, ind) in enumerate(zip(h["previous_token"], h["induction"])):
        for i, (a, b) in enumerate(zip(pt, ind)):
            lines.append(f"| L{l}H{i} | {a:.3f} | {b:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default=str(DEFAULT_RUN_DIR))
    ap.add_argument("--total-tokens", type=int, default=ReferenceConfig.total_tokens)
    ap.add_argument("--tail-tokens", type=int, default=0,
                    help="after the cosine schedule, train this many more tokens at the final learning rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--ckpt-seconds", type=float, default=180.0)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-rows", type=int, default=64)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="torch.compile the training forward (about 20%% faster on CPU)")
    ap.add_argument("--prepare-only", action="store_true", help="only train the tokenizer and tokenise the corpus")
    ap.add_argument("--export", action="store_true", help="export the finished run into the package")
    ap.add_argument("--out", default=str(REFERENCE_DIR), help="where --export writes (default: inside the package)")
    args = ap.parse_args()
    if args.export:
        export(Path(args.run_dir), Path(args.out))
    elif args.prepare_only:
        prepare_data(Path(args.run_dir), ReferenceConfig())
    else:
        train(args)


if __name__ == "__main__":
    main()
