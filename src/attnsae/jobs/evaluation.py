"""The eval job: SAEs measured on held-out tokens of their corpus, written as ``eval.json`` and ``density.png`` into
one folder (both files or neither)."""

from __future__ import annotations

import os
from pathlib import Path

from attnsae.evals.metrics import EvalReport, evaluate
from attnsae.io import atomic_dir, atomic_write_json, printable
from attnsae.jobs.inputs import check_out, corpus_for_sae, load_saes_and_model, load_tokens, sae_names, stdlib_note
from attnsae.views.plots import density_histogram, recovery_plot


def evaluate_saes(sae_paths: list[str], out: str | os.PathLike, model: str | None = None, device: str = "cpu",
                  source: str | None = None, split: str = "validation", context_size: int = 128,
                  prepend_bos: bool = True, text_field: str = "text", n_tokens: int = 100_000,
                  batch_size: int | None = None, splice_bos: bool = False, progress: bool = True
                  ) -> tuple[EvalReport, Path]:
    """Evaluate the SAEs at ``sae_paths`` on ``n_tokens`` tokens of ``source`` (default: the SAEs' own corpus) with
    ``model`` (default: the SAEs' own) and write the report into ``out``; returns (the report, the folder).

    ``splice_bos``: also replace hook_z at position 0, which SAEs are normally trained without.
    """
    folder = check_out(out, "eval", sae_paths, source)
    saes, lm = load_saes_and_model(sae_paths, model, device)
    source = corpus_for_sae(saes[0], source)
    tokens = load_tokens(lm, n_tokens, source, split, context_size, prepend_bos, text_field, progress)
    report = evaluate(lm, saes, tokens, batch_size=batch_size, progress=progress,
                      keep_bos=prepend_bos and not splice_bos, names=sae_names(sae_paths))
    report.meta = {"source": source, "split": split, "n_tokens_requested": n_tokens,
                   "sae_paths": [printable(p) for p in sae_paths],
                   "sae_model_names": [sae.cfg.model_name for sae in saes],
                   "corpus_note": stdlib_note() if source == "stdlib" else None}
    with atomic_dir(folder, owner="eval", inputs=sae_paths) as tmp:  # both files, or neither (a full disk)
        atomic_write_json(report.to_dict(), tmp / "eval.json")
        density_histogram(report, tmp / "density.png", title=f"feature density ({printable(source)} {split})")
        if report.ce_refused is None:
            recovery_plot(report, tmp / "recovery.png", title=f"{report.model}: CE recovered ({printable(source)})")
    return report, folder
