"""CLI command of the evaluation stage: ``attnsae eval``.

Loads SAEs (ours or SAELens / paper files) and a model, tokenises held-out validation text, runs
:func:`attnsae.evals.evaluate`, writes ``eval.json`` and ``density.png`` into ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from attnsae.cli import add_corpus_args, add_model_args, command, load_checked_saes, load_tokens, sae_names
from attnsae.errors import AttnsaeError


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae", nargs="+", required=True, metavar="PATH",
                   help="SAE directories (SAELens format), paper .pt files or hub paths; one report for all")
    add_model_args(p)
    add_corpus_args(p, split="validation")
    p.add_argument("--n-tokens", type=int, default=100_000, help="evaluation tokens (whole contexts, BOS included)")
    p.add_argument("--batch-size", type=int, default=16, help="contexts per forward pass")
    p.add_argument("--out", default="attnsae-out/eval", help="folder for eval.json and density.png")
    p.add_argument("--splice-bos", action="store_true",
                   help="also replace hook_z at position 0 (BOS), which SAEs are normally trained without")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


@command("eval", "evaluate SAEs on held-out tokens: sparsity, reconstruction, CE loss recovered, KL, density",
         _eval_args)
def cmd_eval(args: argparse.Namespace) -> None:
    from attnsae.evals import evaluate
    from attnsae.io_utils import atomic_write_json
    from attnsae.models import load_model
    from attnsae.views.plots import density_histogram
    from attnsae.views.tables import eval_table

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise AttnsaeError(f"--out {out} is a file, not a folder; choose a folder")
    if args.batch_size < 1:
        raise AttnsaeError(f"--batch-size must be positive, got {args.batch_size}")

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    saes = load_checked_saes(args.sae, model, args.device)
    tokens = load_tokens(args, model, args.n_tokens, args.progress)

    report = evaluate(model, saes, tokens, batch_size=args.batch_size, progress=args.progress,
                      keep_bos=args.prepend_bos and not args.splice_bos, names=sae_names(args.sae))
    report.meta = {"source": args.source, "split": args.split, "n_tokens_requested": args.n_tokens,
                   "sae_paths": [str(p) for p in args.sae],
                   "sae_model_names": [sae.cfg.model_name for sae in saes]}
    atomic_write_json(report.to_dict(), out / "eval.json")
    density_histogram(report, out / "density.png", title=f"feature density ({args.source} {args.split})")
    print(eval_table(report))
    print(f"\nwrote {out / 'eval.json'} and {out / 'density.png'}")
