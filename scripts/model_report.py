"""Measure a model's attention-SAE set and write its page in docs/models/ (every number from this one run).

    attnsae train --config configs/smollm2_135m.yaml --out attnsae-out/smollm2-135m   # hours on 2 cores
    python scripts/model_report.py --model smollm2-135m --saes attnsae-out/smollm2-135m

Steps (each result is kept in ``--out``, so a killed run redoes only what is missing), the quick ones first:
1. ``dashboard/``: dashboards, feature families and the head report over ``--dashboard-tokens`` tokens;
2. ``shots/``: headless-Chromium screenshots of three features, the most frequent feature of the induction,
   long-range and short-range families (each from the layer that has most of that family);
3. ``ev_curve.png``: explained variance against training tokens, per layer (from the run's ``metrics.jsonl``);
4. ``eval/``: every SAE on ``--eval-tokens`` validation tokens of its training corpus (L0, explained variance,
   CE recovered against zero- and mean-ablation, KL, with 95% bootstrap intervals; dead with Chao1's estimate, dense),
   ``--eval-group`` SAEs per kept report (a killed run redoes one group at most): hours for 30 layers on 2 cores;
5. the page ``--doc``: tables, verdicts against the targets, images, and the commands above; the images are copied
   next to it only then, so that a killed run leaves the previous page and its images as they were.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from attnsae.corpus import load_corpus
from attnsae.evals.metrics import evaluate
from attnsae.io import atomic_write_json, atomic_write_text, make_dir
from attnsae.models import load_model
from attnsae.jobs.reading import read_features
from attnsae.sae.checks import sae_layer
from attnsae.sae.formats import load_sae
from attnsae.views.tables import eval_markdown

REPO = Path(__file__).resolve().parents[1]
PAPER_POLYSEMANTIC = "≥ 90%"  # of GPT-2 Small's 144 heads (PAPER_NOTES.md)
TARGET_MEDIAN, TARGET_EVERY = 0.85, 0.75  # CE recovered (zero-ablation)
SHOT_FAMILIES = ("induction", "long-range", "short-range")


def sae_dirs(root: Path) -> list[Path]:
    """The run's SAE folders, by layer."""
    dirs = [p.parent for p in root.glob("*/cfg.json")]
    return sorted(dirs, key=lambda p: sae_layer(load_sae(p)))


def contexts(model, source: str, n_tokens: int, context_size: int) -> torch.Tensor:
    n = -(-n_tokens // context_size)
    c = load_corpus(model.tokenizer, source, "validation", context_size, max_tokens=n * (context_size - 1),
                    progress=False)
    return torch.from_numpy(c.tokens[:n])


def evaluate_in_groups(model, saes: list, names: list[str], tokens, folder: Path, group: int) -> dict:
    """``evaluate`` over groups of ``group`` SAEs, each group's report kept in ``folder`` (so a killed run redoes one
    group at most: the clean run is shared within a group), merged into one report (``seconds``: their sum). Every
    group sees the same contexts ``tokens()`` and the same seeded bootstrap, so the rows equal one call's."""
    make_dir(folder)
    parts, toks = [], None
    for i in range(0, len(saes), group):
        f = folder / f"eval-{i:03d}-{i + len(saes[i:i + group]) - 1:03d}.json"
        if not f.exists():
            toks = tokens() if toks is None else toks
            t0 = time.perf_counter()
            report = evaluate(model, saes[i:i + group], toks, names=names[i:i + group])
            atomic_write_json({**report.to_dict(feature_frequency=False), "seconds": time.perf_counter() - t0}, f)
        parts.append(json.loads(f.read_text()))
        if parts[-1]["n_contexts"] != parts[0]["n_contexts"]:
            raise SystemExit(f"{f} is from another number of tokens than {parts[0]['n_contexts']} contexts: "
                             f"remove {folder} to evaluate again")
    return {**parts[0], "saes": [s for p in parts for s in p["saes"]], "seconds": sum(p["seconds"] for p in parts)}


def duration(seconds: float) -> str:
    """``"2 h 41 min"``, ``"12 min"`` or ``"40 s"``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m} min" if h else f"{m} min"


def pick_features(families: dict) -> list[tuple[str, str, int]]:
    """(family, SAE name, feature) for each of SHOT_FAMILIES: the most frequent feature of that family in the SAE
    holding most of it."""
    picks = []
    for fam in SHOT_FAMILIES:
        counts = {name: c[fam] for name, c in families["counts"].items()}
        name = max(counts, key=counts.get)
        if counts[name] == 0:
            continue
        feats = [f for f in families["features"][name] if f["family"] == fam]
        best = max(feats, key=lambda f: (f.get("frequency") or 0, -f["i"]))
        picks.append((fam, name, best["i"]))
    return picks


def screenshot(index_html: Path, name: str, feature: int, path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("screenshots need Debian's chromium: apt-get install chromium")
    url = f"{index_html.resolve().as_uri()}#{name}/{feature}"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--hide-scrollbars", "--window-size=1400,1000", "--virtual-time-budget=8000",
                    f"--screenshot={path}", url], check=True, capture_output=True, timeout=120)


def ev_curve(metrics: Path, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_sae: dict[str, list[tuple[int, float]]] = {}
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        if "explained_variance" in r:
            by_sae.setdefault(r["sae"], []).append((r["tokens"], r["explained_variance"]))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    cmap = plt.get_cmap("viridis")
    names = sorted(by_sae, key=lambda n: int(n.split("_")[0].removeprefix("layer")))
    for j, name in enumerate(names):
        t, ev = zip(*by_sae[name])
        ax.plot(t, ev, color=cmap(j / max(1, len(names) - 1)), lw=1, label=name.split("_")[0])
    ax.set(xlabel="training tokens", ylabel="explained variance (training batch)", title=title, ylim=(0, 1))
    ax.legend(ncol=3, fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--saes", required=True, type=Path, help="the training run's folder")
    ap.add_argument("--out", type=Path, default=None, help="default attnsae-out/report-MODEL")
    ap.add_argument("--doc", type=Path, default=None, help="default docs/models/MODEL.md")
    ap.add_argument("--eval-tokens", type=int, default=65_536)
    ap.add_argument("--dashboard-tokens", type=int, default=32_768)
    ap.add_argument("--eval-group", type=int, default=5, help="SAEs evaluated per kept report (resume unit)")
    args = ap.parse_args()
    run_dir = args.saes.expanduser()
    dirs = sae_dirs(run_dir) if run_dir.is_dir() else []
    missing = [n for n in ("run_config.json", "metrics.jsonl") if not (run_dir / n).is_file()]
    missing += [] if dirs else ["SAE folders (*/cfg.json)"]
    if missing:
        ap.error(f"--saes {args.saes} is not a training run's folder (it lacks {' and '.join(missing)}): "
                 "pass the --out folder of `attnsae train`")
    out = make_dir(args.out or Path("attnsae-out") / f"report-{args.model}")
    doc = args.doc or REPO / "docs" / "models" / f"{args.model}.md"
    assets = doc.parent / args.model
    saes = [load_sae(d) for d in dirs]
    names = [f"L{sae_layer(s)}" for s in saes]
    source = saes[0].cfg.extra.get("dataset_path", "stdlib")
    ctx = saes[0].cfg.context_size
    model = load_model(args.model)

    if not (out / "dashboard" / "summary.json").exists():
        read_features(model, saes, contexts(model, source, args.dashboard_tokens, ctx), out / "dashboard",
                      names=names, corpus={"source": source, "split": "validation"}, paths=[str(d) for d in dirs])
    site = json.loads((out / "dashboard" / "summary.json").read_text())
    families = json.loads((out / "dashboard" / "families.json").read_text())
    shots = []
    for fam, name, i in pick_features(families):
        shot = make_dir(out / "shots") / f"{fam}-{name}-{i}.png"  # this run's, never an older page's
        if not shot.exists():
            part = shot.with_suffix(".part.png")
            screenshot(out / "dashboard" / "index.html", name, i, part)
            part.replace(shot)
        shots.append((fam, name, i, assets / shot.name))
    ev_curve(run_dir / "metrics.jsonl", out / "ev_curve.png",
             f"{args.model}: explained variance while training")
    ev = evaluate_in_groups(model, saes, names, lambda: contexts(model, source, args.eval_tokens, ctx),
                            out / "eval", args.eval_group)
    curve = make_dir(assets) / "ev_curve.png"  # the page's images go next to it only now, with the page
    for src, dst in [(out / "shots" / p.name, p) for *_, p in shots] + [
            (out / "ev_curve.png", curve), (out / "dashboard" / "families.png", assets / "families.png")]:
        shutil.copyfile(src, dst)

    rows = ev["saes"]
    rec = [r["ce_recovered_zero"] for r in rows]
    median, worst = statistics.median(rec), min(rec)
    worst_layer = rows[rec.index(worst)]["layer"]
    verdict = (f"median {median:.1%} (target ≥ {TARGET_MEDIAN:.0%}: {'met' if median >= TARGET_MEDIAN else 'missed'}),"
               f" lowest {worst:.1%} at layer {worst_layer} (target ≥ {TARGET_EVERY:.0%} on every layer: "
               f"{'met' if worst >= TARGET_EVERY else 'missed'})")
    run = json.loads((run_dir / "run_config.json").read_text())
    never = sum(r["unseen"]["never_fired"] for r in rows)
    unseen = (f"over the {len(rows)} layers {never:,} latents never fired, of which Chao1's estimator (from those that"
              f" fired once and twice) expects {sum(r['unseen']['expected_live_unseen'] for r in rows):,.0f} to be"
              " live but rarer than this sample shows")
    rel = lambda p: p.relative_to(doc.parent).as_posix()  # noqa: E731
    text = f"""# {args.model}: attention-output SAEs on every layer

Generated by `python scripts/model_report.py --model {args.model} --saes {args.saes}` (its docstring lists the
training command); every number below comes from that run. Model: `attnsae models` (card in the model's cache
folder), converted from its registry file by `attnsae models fetch {args.model}`.

## The SAE set

{len(saes)} TopK SAEs, one per layer, on `blocks.{{L}}.attn.hook_z` (d_in {saes[0].d_in}), trained together from one
activation stream of the `{source}` corpus (docs/CORPORA.md), contexts of {ctx} tokens with BOS first:
`attnsae train --config configs/{args.model.replace('-', '_')}.yaml --out {args.saes}` (settings in that file and in
the run's `run_config.json`: d_sae {saes[0].d_sae}, k {saes[0].cfg.k}, {run.get('total_tokens', 0):,} tokens per SAE
in batches of {run.get('batch_size')}).

## Evaluation

{ev['n_contexts']:,} validation contexts of {ev['context_size']} tokens of `{source}`; CE recovered is
`(CE_ablated − CE_sae) / (CE_ablated − CE_clean)` with the layer's hook_z zero- or mean-ablated.

{eval_markdown(rows)}

CE recovered (zero-ablation): {verdict}. 95% intervals: bootstrap over the {ev['n_contexts']:,} contexts
({ev['bootstrap'].get('resamples', 0):,} resamples, seed {ev['bootstrap'].get('seed')}); a recovered share whose
interval holds 100% is not told apart from a perfect splice. "dead" counts latents that never fired in the
{rows[0]['n_tokens']:,} evaluation tokens, an upper bound: {unseen}. The evaluation took
{duration(ev.get('seconds', 0))} on {torch.get_num_threads()} CPU threads (the sum of its groups' times).

![explained variance while training]({rel(curve)})

## Feature families

Over {site['corpus']['n_tokens']:,} validation tokens; live features per family and layer. Criterion:
{families['criterion']}.

{site['families_table']}

![families]({rel(assets / 'families.png')})

## Heads

{site['heads']} (each head's top features by head attribution; the paper finds {PAPER_POLYSEMANTIC} of GPT-2
Small's heads polysemantic).

## Three features

""" + "\n".join(f"**{fam}** — {name} feature {i}:\n\n![{fam} feature]({rel(png)})\n" for fam, name, i, png in shots)
    atomic_write_text(text, doc)
    print(f"wrote {doc}; CE recovered (zero): {verdict}; {site['heads']}")


if __name__ == "__main__":
    sys.exit(main())
