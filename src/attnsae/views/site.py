"""The reading site: feature dashboards, the families breakdown and the head report, written into one folder.

:func:`write_site` builds the dashboards (:func:`attnsae.dashboards.build_dashboards`) and writes, atomically (the
folder appears complete or not at all; an old one is replaced whole):

* ``index.html``, ``vocab.js``, ``data/`` — the feature dashboards (:mod:`attnsae.views.dashboards`);
* ``heads.html``, ``heads.json`` — head polysemanticity (:mod:`attnsae.heads`, :mod:`attnsae.views.heads_report`);
* ``families.json`` (thresholds, criterion, per-SAE counts, every feature's label and statistics), ``families.md``
  (the per-layer table) and ``families.png``;
* ``summary.json`` — what was scanned, the counts, the head summary line and timings;
* ``neuronpedia/`` when asked (:mod:`attnsae.views.neuronpedia`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from torch import Tensor

from attnsae import families as fam
from attnsae.attribution.inputs import sae_layer
from attnsae.dashboards import DashboardConfig, build_dashboards, vocab_strings
from attnsae.heads import HeadCriterion, head_report
from attnsae.io_utils import atomic_dir, check_writable_dir
from attnsae.models import model_name
from attnsae.sae import SAE
from attnsae.views.dashboards import write_dashboards
from attnsae.views.heads_report import write_head_report
from attnsae.views.neuronpedia import NeuronpediaWriter
from attnsae.views.plots import families_plot


def write_site(model, saes: list[SAE], tokens: Tensor, out: str | Path, cfg: DashboardConfig | None = None,
               names: list[str] | None = None, corpus: dict | None = None, neuronpedia: bool = False,
               criterion: HeadCriterion | None = None, progress: bool = True,
               paths: list[str] | None = None) -> dict:
    """Build and write everything for ``saes`` on ``tokens`` int64 [n_contexts, S]; returns ``summary.json``."""
    cfg = cfg or DashboardConfig()
    out = check_writable_dir(out)
    t0 = time.perf_counter()
    names = names or [f"L{sae_layer(s)}" for s in saes]
    with atomic_dir(out) as tmp:
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
        bundle = dash.bundle
        write_dashboards(bundle, tmp)
        report = head_report(bundle, criterion)
        write_head_report(report, tmp / "heads.html", "index.html")
        (tmp / "heads.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
        if writer:
            writer.features(bundle)

        sae_names = [b["name"] for b in bundle["saes"]]
        labels = dict(zip(sae_names, dash.labels))
        stats = dict(zip(sae_names, dash.stats))
        counts = fam.breakdown(labels)
        table = fam.breakdown_table(counts)
        thresholds = cfg.families.to_dict()
        (tmp / "families.json").write_text(json.dumps(
            {"criterion": cfg.families.criterion(), "thresholds": thresholds, "counts": counts,
             "features": {n: [{"i": i, "family": lab, **st} for i, (lab, st) in enumerate(zip(labels[n], stats[n]))]
                          for n in sae_names}}, indent=1))
        (tmp / "families.md").write_text(f"# Feature families — {bundle['model']}\n\n{table}\n\nCriterion: "
                                         f"{cfg.families.criterion()}.\n")
        families_plot(counts, stats, labels, tmp / "families.png", thresholds,
                      title=f"feature families — {bundle['model']}, {bundle['corpus']['n_tokens']:,} tokens")
        summary = {"model": bundle["model"], "corpus": bundle["corpus"], "saes": sae_names,
                   "families": counts, "families_table": table, "heads": report["summary"],
                   "n_polysemantic": report["n_polysemantic"], "n_heads": report["n_heads"],
                   "seconds": dash.seconds | {"total": round(time.perf_counter() - t0, 1)},
                   "index": str(out / "index.html"), "heads_html": str(out / "heads.html")}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
