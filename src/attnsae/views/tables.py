"""Fixed-width text tables of results."""

from __future__ import annotations

import math

from attnsae.evals.eval_report import LOSS_FIELDS, EvalReport
from attnsae.studies.results import FAMILIES

# (header, SAEEval field, format)
EVAL_COLUMNS: list[tuple[str, str, str]] = [
    ("layer", "layer", "{:d}"),
    ("d_sae", "d_sae", "{:d}"),
    ("L0", "l0", "{:.1f}"),
    ("expl.var", "explained_variance", "{:.3f}"),
    ("nMSE", "nmse", "{:.3f}"),
    ("cos", "cosine", "{:.3f}"),
    ("CE clean", "ce_clean", "{:.4f}"),
    ("CE sae", "ce_sae", "{:.4f}"),
    ("CE zero", "ce_zero", "{:.4f}"),
    ("CE mean", "ce_mean", "{:.4f}"),
    ("rec.zero", "ce_recovered_zero", "{:.1%}"),
    ("rec.mean", "ce_recovered_mean", "{:.1%}"),
    ("KL", "kl_sae", "{:.4f}"),
    ("dead", "dead_frac", "{:.1%}"),
    ("dense", "dense_frac", "{:.1%}"),
]


def _fmt(fmt: str, value, missing: str = "n/a") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return fmt.format(value)


def _cell(key: str, fmt: str, value, ce_refused: str | None) -> str:
    """A metric's cell; a missing CE/KL value reads ``refused`` when the report refused them."""
    return _fmt(fmt, value, "refused" if ce_refused is not None and key in LOSS_FIELDS else "n/a")


def eval_table(report: EvalReport) -> str:
    """One row per SAE with the scalar metrics, then each SAE's per-head fraction of variance unexplained.

    When the report carries a CE/KL refusal (an encoder, an LM head not in the checkpoint), those columns read
    ``refused``; the reason itself is ``report.ce_refused`` (the CLI prints it once, as a note)."""
    header = ["sae"] + [h for h, _, _ in EVAL_COLUMNS]
    rows = [[s.name] + [_cell(key, fmt, getattr(s, key), report.ce_refused) for _, key, fmt in EVAL_COLUMNS]
            for s in report.saes]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(header), "-" * len(line(header))]
    out += [line(r) for r in rows]
    out.append("")
    runs = ("no loss runs (CE and KL refused)" if report.ce_refused is not None
            else f"{report.n_loss_tokens:,} next-token predictions per run")
    out.append(f"{report.model}: {report.n_contexts:,} contexts of {report.context_size} tokens, {runs}"
               + ("; BOS position left intact" if report.keep_bos else ""))
    out += interval_lines(report)
    out.append("per-head fraction of variance unexplained (head 0, 1, ...):")
    name_w = max(len(s.name) for s in report.saes)
    for s in report.saes:
        out.append(f"  {s.name.ljust(name_w)}  " + " ".join(_fmt("{:.3f}", v) for v in s.head_fvu))
    return "\n".join(out)


# (label, SAEEval field, format) of the metrics given with a bootstrap interval
INTERVAL_COLUMNS = [("expl.var", "explained_variance", "{:.3f}"), ("rec.zero", "ce_recovered_zero", "{:.1%}"),
                    ("rec.mean", "ce_recovered_mean", "{:.1%}"), ("KL", "kl_sae", "{:.4f}")]


def with_interval(fmt: str, value, interval) -> str:
    """``value [lo, hi]``, and for a recovered share whose interval holds 100% a note that it is not told apart from
    a perfect reconstruction."""
    if not interval or any(v is None or not math.isfinite(v) for v in interval):
        return _fmt(fmt, value)
    lo, hi = interval
    text = f"{_fmt(fmt, value)} [{_fmt(fmt, lo)}, {_fmt(fmt, hi)}]"
    return text + " (interval holds 100%)" if "%" in fmt and lo <= 1 <= hi else text


def interval_lines(report: EvalReport) -> list[str]:
    """Per SAE, the 95% intervals and the never-fired count with Chao1's estimate of live latents a sample of this
    size misses (``attnsae.evals.intervals``)."""
    out = []
    b = report.bootstrap
    if b:
        out.append(f"{b['level']:.0%} intervals: bootstrap over the {report.n_contexts:,} {b['over']} "
                   f"({b['resamples']:,} resamples, seed {b['seed']}):")
        for s in report.saes:
            cells = [f"{label} {with_interval(fmt, getattr(s, key), s.intervals.get(key))}"
                     for label, key, fmt in INTERVAL_COLUMNS if key in s.intervals]
            out.append(f"  {s.name}: " + "; ".join(cells))
    for s in report.saes:
        u = s.unseen
        if u:
            out.append(f"  {s.name}: {u['never_fired']:,} of {s.d_sae:,} latents never fired in {s.n_tokens:,} tokens "
                       f"(dead at most {u['dead_upper']:.1%}); Chao1 expects {u['expected_live_unseen']:.0f} of them "
                       f"live but rarer than this sample shows ({u['seen_once']} fired once, {u['seen_twice']} twice)")
    return out


def eval_markdown(rows: list[dict], skip: tuple[str, ...] = ("d_sae", "nmse", "cosine"),
                  ce_refused: str | None = None) -> str:
    """Markdown table of evaluation rows (``EvalReport.to_dict()["saes"]``), one per SAE; ``ce_refused`` (the
    report's) shows missing CE/KL cells as ``refused`` rather than ``n/a``."""
    cols = [c for c in EVAL_COLUMNS if c[1] not in skip]
    lines = ["| " + " | ".join(h for h, _, _ in cols) + " |", "|" + "---|" * len(cols)]
    interval = {key for _, key, _ in INTERVAL_COLUMNS}

    def cell(r: dict, key: str, fmt: str) -> str:
        if key in interval and (r.get("intervals") or {}).get(key):
            return with_interval(fmt, r.get(key), r["intervals"][key])
        return _cell(key, fmt, r.get(key), ce_refused)

    lines += ["| " + " | ".join(cell(r, key, fmt) for _, key, fmt in cols) + " |" for r in rows]
    return "\n".join(lines)


__all__ = ["eval_table", "eval_markdown", "EVAL_COLUMNS", "interval_lines", "with_interval"]


def families_table(counts: dict[str, dict[str, int]]) -> str:
    """Markdown table of :func:`attnsae.studies.families.breakdown`: per SAE, count and share of live features per
    family."""
    head = "| SAE | live | " + " | ".join(FAMILIES) + " | dead |"
    rows = [head, "|" + "---|" * (len(FAMILIES) + 3)]
    for name, c in counts.items():
        live = max(c["live"], 1)
        cells = " | ".join(f"{c[f]} ({c[f] / live:.1%})" for f in FAMILIES)
        rows.append(f"| {name} | {c['live']} | {cells} | {c['dead']} |")
    return "\n".join(rows)
