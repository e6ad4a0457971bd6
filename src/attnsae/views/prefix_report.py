"""The long- vs short-prefix induction study as files: the headline table, ``report.md``, JSON and PNG plots, written
into one folder (:func:`write_report`), from the study's plain data."""

from __future__ import annotations

import os
from pathlib import Path

from attnsae.io import json_text
from attnsae.views import prefix_plots
from attnsae.views.numbers import compact


def _pm(v, ci) -> str:
    return "n/a" if v is None else f"{v:.2f} ± {ci:.2f}"


def headline_table(summary: dict) -> str:
    """Fixed-width table, one row per studied head: sweep scores at k=1 and k=max, text attention before and after
    breaking the longer prefix, the share retained and the verdict."""
    kmax = summary["sweep"]["max_prefix"]
    header = ["head", "sweep k=1", f"k={kmax}", "k1/max", "text n", "before", "after", "retained", "verdict"]
    rows = [[name, f"{r['sweep_k1']:.2f}", f"{r['sweep_kmax']:.2f}", f"{r['sweep_ratio']:.2f}", str(r["text_n"]),
             _pm(r["text_before"], r["text_before_ci95"]), _pm(r["text_after"], r["text_after_ci95"]),
             "n/a" if r["retained"] is None else f"{r['retained']:.0%}", r["kind"]]
            for name, r in summary["heads"].items()]
    widths = [max(len(x[i]) for x in [header] + rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in (0, 8) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "-" * len(line(header))] + [line(r) for r in rows])


def report_markdown(summary: dict, sweep: dict, text: dict, features: dict | None, spec: list[dict]) -> str:
    s = summary
    out = [f"# Long- vs short-prefix induction — {s['model']}", ""]
    if s["induction_heads"]:
        out.append(f"Induction heads (sweep score ≥ {s['induction_threshold']} at some prefix length): "
                   f"{', '.join(s['induction_heads'])}.")
    else:
        out.append(f"No head reaches a sweep score of {s['induction_threshold']}: the three best heads "
                   f"({', '.join(s['studied_heads'])}) are studied instead.")
    out += ["", f"Long-prefix heads: {', '.join(s['long_prefix']) or 'none'}. "
            f"Short-prefix heads: {', '.join(s['short_prefix']) or 'none'}. (A head is long-prefix when it keeps "
            "less than half its attention on text once token src−2 is replaced; without text pairs, when its "
            "synthetic score at prefix 1 is under half its best.)", "", "```", s["table"], "```", "",
            "## Synthetic sweep", "",
            f"{sweep['n_seqs']} sequences of {sweep['seq_len']} tokens without repeated tokens (BOS at 0) per prefix "
            "length; a prefix and its next token are copied to a later position; the score is the attention from "
            "the second occurrence of the last prefix token to the token after its first occurrence (mean, 95% "
            "interval). One line per head.", "", "![sweep](sweep.png)", "",
            "## Real text", "",
            f"{text['n_contexts']} contexts; {text['n_pairs']} (dest, src) pairs where a studied head attends more "
            f"than {text['threshold']} (BOS excluded); prefix lengths measured backwards with fuzzy matching. "
            f"{text['n_intervened']} pairs with prefix ≥ 2 had token src−2 replaced by a random token.", "",
            "| prefix length | " + " | ".join(text["prefix_counts"]) + " |",
            "|---|" + "---|" * len(text["prefix_counts"]),
            "| pairs | " + " | ".join(str(v) for v in text["prefix_counts"].values()) + " |", "",
            "![text](text.png)", ""]
    if features is not None:
        c = s["carriers"]
        out += ["## Through the SAE", "",
                f"{s['n_induction_features']} induction features among {features['n_live']} live features "
                f"(families classifier); the {len(features['features'])} most frequent are split by the prefix length "
                "at their DFA peak. Carrier = the head with the largest mean share of the DFA.", "",
                f"Short-prefix (k=1) firings carried by: {_counts(c['short'])}. Long-prefix (k≥2) firings carried by: "
                f"{_counts(c['long'])}. {c['n_switch']} of {c['n_both']} features switch carrier.", "",
                "| feature | firings | k=1 n | k=1 carrier | k≥2 n | k≥2 carrier |", "|---|---|---|---|---|---|"]
        for f, r in features["features"].items():
            out.append(f"| {f} | {r['n_firings']} | {r['short']['n']} | {r['short']['carrier'] or '—'} | "
                       f"{r['long']['n']} | {r['long']['carrier'] or '—'} |")
        out += ["", "![features](features.png)", ""]
        if spec:
            out += ["## Specificity", "", "| feature | proxy | precision | mass precision | recall |", "|---|---|---|---|---|"]
            out += [f"| {e['feature']} | {e['description']} | {e['precision']:.0%} | {e['mass_precision']:.0%} | "
                    f"{e['recall']:.0%} |" for e in spec]
            out += ["", "![specificity](specificity.png)", ""]
    return "\n".join(out)


def _counts(c: dict) -> str:
    return ", ".join(f"{h} ({n})" for h, n in sorted(c.items(), key=lambda x: -x[1])) or "none"


def write_report(result: dict, folder: str | os.PathLike) -> dict:
    """Write ``summary.json``, ``sweep.json`` / ``.png``, ``text.json`` / ``.png``, with an SAE ``features.json`` /
    ``.png`` and ``specificity.json`` / ``.png``, and ``report.md`` into the existing ``folder`` (the job's temporary
    folder: :func:`attnsae.jobs.studies.run_prefix_induction` puts it in place whole); return the summary (with
    ``table`` and ``files``)."""
    tmp = Path(folder)
    summary = dict(result["summary"])
    summary["table"] = headline_table(summary)
    model = summary["model"]
    files = {"sweep.json": result["sweep"], "text.json": result["text"]}
    prefix_plots.sweep_plot(result["sweep"], tmp / "sweep.png", highlight=summary["studied_heads"],
                            title=f"{model}: induction score by prefix length (synthetic)")
    prefix_plots.intervention_plot(result["text"], tmp / "text.png",
                                   title=f"{model}: breaking the longer prefix on text")
    if result["features"] is not None:
        files["features.json"] = result["features"]
        files["specificity.json"] = result["specificity"]
        prefix_plots.feature_heads_plot(result["features"], tmp / "features.png",
                                        title=f"{model} L{summary['layer']}: induction features by prefix length")
        if result["specificity"]:
            prefix_plots.specificity_plot(result["specificity"], tmp / "specificity.png")
    summary["files"] = sorted([*files, "summary.json", "report.md", *(p.name for p in tmp.glob("*.png"))])
    files["summary.json"] = summary
    for name, obj in files.items():
        (tmp / name).write_text(json_text(compact(obj), indent=1))
    (tmp / "report.md").write_text(report_markdown(summary, result["sweep"], result["text"], result["features"],
                                                   result["specificity"]))
    return summary
