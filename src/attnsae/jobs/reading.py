"""The reading job: scan a corpus with SAEs, explain their features, and write the site (one folder, atomically).

:func:`read_features` composes the stages: :func:`attnsae.studies.examples.build_dashboards` (scan, examples with
exact DFA, families), :func:`attnsae.studies.polysemanticity.head_report`, then the views —
:func:`attnsae.views.site.write_site` and, on request, the Neuronpedia export (:mod:`attnsae.views.neuronpedia`),
which receives each example's record while the examples are gathered. The folder appears complete or not at all;
an old one is replaced whole, but only one that ``attnsae dashboard`` wrote (:func:`attnsae.io.check_output_dir`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor

from attnsae.io import atomic_dir, check_output_dir, printable
from attnsae.jobs.inputs import check_out, corpus_for_sae, load_saes_and_model, load_tokens, sae_names
from attnsae.models import model_name
from attnsae.sae.checks import sae_layer
from attnsae.sae.model import SAE
from attnsae.studies.examples import DashboardConfig, build_dashboards, vocab_strings
from attnsae.studies.polysemanticity import HeadCriterion, head_report
from attnsae.studies.scan import ScanConfig
from attnsae.views.neuronpedia import NeuronpediaWriter
from attnsae.views.site import write_site


def read_features(model, saes: list[SAE], tokens: Tensor, out: str | Path, cfg: DashboardConfig | None = None,
                  names: list[str] | None = None, corpus: dict | None = None, neuronpedia: bool = False,
                  criterion: HeadCriterion | None = None, progress: bool = True,
                  paths: list[str] | None = None) -> dict:
    """Build and write everything for ``saes`` on ``tokens`` int64 [n_contexts, S] into folder ``out`` (new, or an
    earlier dashboard, never one holding ``paths``, the SAEs' files); returns ``summary.json``."""
    cfg = cfg or DashboardConfig()
    out = check_output_dir(out, "dashboard", paths or ())
    t0 = time.perf_counter()
    names = names or [f"L{sae_layer(s)}" for s in saes]
    with atomic_dir(out, owner="dashboard", inputs=paths or ()) as tmp:
        writer = None
        if neuronpedia:
            writer = NeuronpediaWriter(tmp / "neuronpedia", model_name(model) or "model", names,
                                       [sae_layer(s) for s in saes], vocab_strings(model))
        try:
            dash = build_dashboards(model, saes, tokens, cfg, names=names, corpus=corpus, progress=progress,
                                    on_example=writer.activation if writer else None, paths=paths)
        finally:
            if writer:
                writer.close()
        heads = head_report(dash, criterion)
        if writer:
            writer.features(dash.bundle)
        dash.seconds["total"] = time.perf_counter() - t0
        summary = write_site(dash, heads, tmp, final=out)
    return summary


def dashboard(sae_paths: list[str], out: str | Path, model: str | None = None, device: str = "cpu",
              source: str | None = None, split: str = "validation", context_size: int = 128, prepend_bos: bool = True,
              text_field: str = "text", n_tokens: int = 262_144, n_top: int = 16, n_bands: int = 4, per_band: int = 3,
              batch_size: int = 32, neuronpedia: bool = False, seed: int = 0, progress: bool = True) -> dict:
    """``attnsae dashboard``: the SAEs at ``sae_paths`` with ``model`` (default: their own) read on ``n_tokens``
    tokens of ``source`` (default: their own corpus) into the site at ``out``; returns ``summary.json``.

    ``n_top`` top examples per feature, ``n_bands`` activation quantile bands of ``per_band`` examples each (sampled
    with ``seed``), ``batch_size`` contexts per forward pass while scanning.
    """
    cfg = DashboardConfig(scan=ScanConfig(n_top=n_top, batch_size=batch_size, seed=seed), n_bands=n_bands,
                          per_band=per_band)
    folder = check_out(out, "dashboard", sae_paths, source)
    saes, lm = load_saes_and_model(sae_paths, model, device)
    source = corpus_for_sae(saes[0], source)
    tokens = torch.from_numpy(load_tokens(lm, n_tokens, source, split, context_size, prepend_bos, text_field,
                                          progress))
    return read_features(lm, saes, tokens, folder, cfg, names=sae_names(sae_paths),
                         corpus={"source": printable(source), "split": split}, neuronpedia=neuronpedia,
                         progress=progress, paths=sae_paths)
