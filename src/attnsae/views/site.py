"""The reading site: feature dashboards, the families breakdown and the head report, written into one folder.

:func:`write_site` takes data only — the dashboards (:class:`attnsae.studies.results.Dashboards`) and the head
report (:func:`attnsae.studies.polysemanticity.head_report`) — and writes into ``folder`` (the caller makes it
atomic, :func:`attnsae.jobs.reading.read_features`):

* ``index.html``, ``vocab.js``, ``data/`` — the feature dashboards (:mod:`attnsae.views.dashboards`);
* ``heads.html``, ``heads.json`` — head polysemanticity (:mod:`attnsae.views.heads_report`);
* ``families.json`` (thresholds, criterion, per-SAE counts, every feature's label and statistics), ``families.md``
  (the per-layer table) and ``families.png``;
* ``summary.json`` — what was scanned, the counts, the head summary line and timings.
"""

from __future__ import annotations

from pathlib import Path

from attnsae.io import json_text

from attnsae.studies.results import Dashboards
from attnsae.views.dashboards import write_dashboards
from attnsae.views.heads_report import write_head_report
from attnsae.views.numbers import compact
from attnsae.views.plots import families_plot
from attnsae.views.tables import families_table


def write_site(dash: Dashboards, heads: dict, folder: Path, final: Path | None = None) -> dict:
    """Write the site of ``dash`` and the head report ``heads`` into ``folder``; returns ``summary.json``'s dict.

    ``final`` is where the folder will end up (the paths printed to the user); default ``folder``.
    """
    folder, final = Path(folder), Path(final or folder)
    bundle = dash.bundle
    write_dashboards(bundle, folder)
    write_head_report(heads, folder / "heads.html", "index.html")
    (folder / "heads.json").write_text(json_text(compact(heads), indent=1, ensure_ascii=False))

    fam = bundle["families"]
    sae_names = [b["name"] for b in bundle["saes"]]
    labels = dict(zip(sae_names, dash.labels))
    stats = dict(zip(sae_names, dash.stats))
    table = families_table(dash.counts)
    (folder / "families.json").write_text(json_text(compact(
        {"criterion": fam["criterion"], "thresholds": fam["thresholds"], "counts": dash.counts,
         "features": {n: [{"i": i, "family": lab, **st} for i, (lab, st) in enumerate(zip(labels[n], stats[n]))]
                      for n in sae_names}}), indent=1))
    (folder / "families.md").write_text(f"# Feature families — {bundle['model']}\n\n{table}\n\nCriterion: "
                                        f"{fam['criterion']}.\n")
    families_plot(dash.counts, stats, labels, folder / "families.png", fam["thresholds"],
                  title=f"feature families — {bundle['model']}, {bundle['corpus']['n_tokens']:,} tokens")
    summary = {"model": bundle["model"], "corpus": bundle["corpus"], "saes": sae_names,
               "families": dash.counts, "families_table": table, "heads": heads["summary"],
               "n_polysemantic": heads["n_polysemantic"], "n_heads": heads["n_heads"], "seconds": dash.seconds,
               "logit_effects_refused": bundle.get("logit_effects_refused"),
               "index": str(final / "index.html"), "heads_html": str(final / "heads.html")}
    summary = compact(summary)
    (folder / "summary.json").write_text(json_text(summary, indent=1))
    return summary
