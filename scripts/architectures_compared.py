"""Compare SAE architectures trained on the same tokens at matched L0 and write docs/architectures-compared.md.

    attnsae cache --model smollm2-135m --source english --layers 17 18 --model-batch-size 16 \\
        --max-corpus-tokens 1260000 --cache-out attnsae-out/arch-cache
    for a in topk batchtopk matryoshka relu; do
        attnsae train --config configs/architectures/$a.yaml --cache attnsae-out/arch-cache; done
    for t in 0.25 0.35 0.45; do attnsae train --config configs/architectures/jumprelu.yaml \
        --cache attnsae-out/arch-cache --jumprelu-init-threshold $t \
        --out attnsae-out/architectures/jumprelu-init$t; done
    python scripts/architectures_compared.py --runs attnsae-out/architectures

Steps (each result is kept in ``--out``, so a killed run redoes only what is missing):
1. ``picks.json``: per architecture and layer, the SAE of its run whose L0 on ``--l0-tokens`` validation tokens is
   nearest ``--target-l0`` (the ReLU and JumpReLU runs train a grid of coefficients; the k architectures one SAE);
2. ``eval/``: the picked SAEs on ``--eval-tokens`` validation tokens with 95% bootstrap intervals over contexts;
3. ``dashboard/``: feature families over ``--dashboard-tokens`` validation tokens;
4. ``ioi.json``: the IOI feature ablation at S2 of docs/studies/ioi.md, per picked SAE;
5. the page ``--doc``: tables from these files, and the pick the numbers support.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from attnsae.activations import harvest_z
from attnsae.evals.eval_report import EvalReport
from attnsae.io import atomic_write_json, atomic_write_text, make_dir
from attnsae.jobs.reading import read_features
from attnsae.models import load_model
from attnsae.sae.checks import sae_layer
from attnsae.sae.formats import load_sae
from attnsae.studies.ioi.ablation import active_at, feature_ablation, feature_ablation_hooks
from attnsae.studies.ioi.dataset import build_ioi_dataset
from attnsae.studies.ioi.patching import run_logit_diff, summarize
from attnsae.views.plots import recovery_plot
from attnsae.views.tables import with_interval
from model_report import contexts, evaluate_in_groups  # scripts/ is on sys.path when this file runs

REPO = Path(__file__).resolve().parents[1]
ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")
LABEL = {"relu": "ReLU (paper)", "topk": "TopK", "batchtopk": "BatchTopK", "jumprelu": "JumpReLU",
         "matryoshka": "Matryoshka"}
IOI_FEATURES = 16  # S2 features ablated one at a time per SAE, the most active first (docs/studies/ioi.md: 64)
BIG_EFFECT = 0.05  # |Δ logit diff| that counts a feature as carrying part of the IOI signal


def runs_saes(runs: Path) -> dict[str, list[Path]]:
    """Each architecture's SAE folders under ``runs/<arch>/`` and ``runs/<arch>-*/`` (runs that differ in a setting
    the config cannot sweep, e.g. JumpReLU's initial threshold)."""
    found = {a: sorted(p.parent for d in [runs / a, *runs.glob(f"{a}-*")] for p in d.glob("*/cfg.json"))
             for a in ARCHS}
    return {a: dirs for a, dirs in found.items() if dirs}


@torch.no_grad()
def pick(model, found: dict[str, list[Path]], tokens: torch.Tensor, target: float) -> dict:
    """Per architecture and layer, the SAE whose L0 on ``tokens`` [n, ctx] (BOS left out) is nearest ``target``."""
    saes = {d: load_sae(d) for ds in found.values() for d in ds}
    layers = sorted({sae_layer(s) for s in saes.values()})
    z = harvest_z(model, tokens, layers, drop_bos=True)  # {layer: [n * (ctx - 1), d_in]}
    out: dict = {}
    for arch, dirs in found.items():
        for d in dirs:
            s = saes[d]
            l0 = float((s.encode(z[sae_layer(s)].reshape(-1, s.d_in)) > 0).sum(1).float().mean())
            out.setdefault(arch, {}).setdefault(str(sae_layer(s)), []).append({"path": str(d), "l0": l0})
    for arch in out:
        for layer, cands in out[arch].items():
            best = min(cands, key=lambda c: abs(c["l0"] - target))
            out[arch][layer] = {"pick": best["path"], "l0": best["l0"], "candidates": cands}
    return out


def ioi_ablation(model, saes: dict[str, object], n_features: int = IOI_FEATURES) -> dict:
    """For each SAE (by name): the S2 feature ablation of docs/studies/ioi.md on 80 prompts, summarised."""
    ds = build_ioi_dataset(model.tokenizer, 80, 0)
    clean = run_logit_diff(model, ds)
    res = {"n_prompts": len(ds), "clean": summarize(clean, ds)["all"]["mean_logit_diff"], "saes": {}}
    for name, sae in saes.items():
        r = feature_ablation(model, sae, ds, max_features=n_features, clean_ld=clean)
        layer = sae_layer(sae)
        active = (active_at(model, sae, layer, ds) > 0).any(0).nonzero()[:, 0].tolist()
        every = run_logit_diff(model, ds, feature_ablation_hooks(sae, layer, ds, active))
        d = [f["delta"]["all"] for f in r["features"]]  # sorted by |delta|, largest first
        res["saes"][name] = {
            "layer": layer, "l0_at_s2": r["l0_at_role"], "spliced_max_abs_change": r["spliced_max_abs_change"],
            "n_active": len(active), "every_feature": float((every - clean).mean()),
            "error": r["error"]["delta"]["all"],
            "top": [{k: f[k] for k in ("feature", "n_active", "delta")} for f in r["features"][:5]],
            "top1": d[0] if d else 0.0, "top5": sum(d[:5]), "n_big": sum(abs(x) >= BIG_EFFECT for x in d)}
    return res


def cell(row: dict, key: str, fmt: str) -> str:
    return with_interval(fmt, row.get(key), (row.get("intervals") or {}).get(key))


def quality_table(rows: list[dict]) -> str:
    head = ("| layer | architecture | L0 | expl. var | CE rec. (zero) | CE rec. (mean) | KL | never fired | "
            "Chao1 live unseen | dense |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        arch = r["name"].split("-")[1]
        u = r.get("unseen") or {}
        lines.append(f"| {r['layer']} | {LABEL[arch]} | {r['l0']:.1f} | {cell(r, 'explained_variance', '{:.3f}')} | "
                     f"{cell(r, 'ce_recovered_zero', '{:.1%}')} | {cell(r, 'ce_recovered_mean', '{:.1%}')} | "
                     f"{cell(r, 'kl_sae', '{:.4f}')} | {u.get('never_fired', 0):,} ({r['dead_frac']:.1%}) | "
                     f"{u.get('expected_live_unseen', float('nan')):.0f} | {r['dense_frac']:.1%} |")
    return "\n".join(lines)


def families_table(counts: dict, names: list[str]) -> str:
    lines = ["| layer | architecture | live | induction | short-range | long-range | unclear |", "|---" * 7 + "|"]
    for n in names:
        c = counts[n]
        live = max(c["live"], 1)
        share = lambda k: f"{c[k]:,} ({c[k] / live:.0%})"  # noqa: E731
        lines.append(f"| {n.split('-')[0][1:]} | {LABEL[n.split('-')[1]]} | {c['live']:,} | {share('induction')} | "
                     f"{share('short-range')} | {share('long-range')} | {share('unclear')} |")
    return "\n".join(lines)


def ioi_table(ioi: dict, names: list[str], fams: dict) -> str:
    lines = ["| layer | architecture | L0 at S2 | S2 features | Δ every feature | Δ error term | Δ top feature "
             "(its family) | Δ top 5 | features with \\|Δ\\| ≥ 0.05 |", "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        r = ioi["saes"][n]
        fam = {f["i"]: f["family"] for f in fams.get(n, [])}
        top = r["top"][0] if r["top"] else None
        top_s = f"{r['top1']:+.3f} (f{top['feature']}, {fam.get(top['feature'], '?')})" if top else "—"
        lines.append(f"| {r['layer']} | {LABEL[n.split('-')[1]]} | {r['l0_at_s2']:.1f} | {r['n_active']} | "
                     f"{r['every_feature']:+.3f} | {r['error']:+.3f} | {top_s} | {r['top5']:+.3f} | "
                     f"{r['n_big']} of {min(ioi['n_features'], r['n_active'])} |")
    return "\n".join(lines)


def summary_table(rows: list[dict], counts: dict, ioi: dict) -> str:
    """One row per architecture, each number the mean over the layers."""
    lines = ["| architecture | L0 | expl. var | CE rec. (zero) | KL | never fired | unclear features | IOI: Δ error "
             "term | IOI: Δ top 5 / Δ every feature |", "|---" * 9 + "|"]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    for arch in ARCHS:
        rs = [r for r in rows if r["name"].split("-")[1] == arch]
        if not rs:
            continue
        ns = [r["name"] for r in rs]
        unclear = mean([counts[n]["unclear"] / max(counts[n]["live"], 1) for n in ns])
        io = [ioi["saes"][n] for n in ns]
        conc = mean([i["top5"] / i["every_feature"] if i["every_feature"] else float("nan") for i in io])
        m = {k: mean([r[k] for r in rs]) for k in ("l0", "explained_variance", "ce_recovered_zero", "kl_sae",
                                                    "dead_frac")}
        lines.append(f"| {LABEL[arch]} | {m['l0']:.1f} | {m['explained_variance']:.3f} | "
                     f"{m['ce_recovered_zero']:.1%} | {m['kl_sae']:.4f} | {m['dead_frac']:.1%} | {unclear:.0%} | "
                     f"{mean([i['error'] for i in io]):+.3f} | {conc:.0%} |")
    return "\n".join(lines)


def separated(rows: list[dict], key: str, better_high: bool) -> dict[int, str]:
    """Per layer: the best architecture on ``key`` and whether its 95% interval clears every other's."""
    out = {}
    for layer in sorted({r["layer"] for r in rows}):
        rs = [r for r in rows if r["layer"] == layer]
        best = (max if better_high else min)(rs, key=lambda r: r[key])
        lo, hi = best["intervals"][key]
        rest = [r["intervals"][key] for r in rs if r is not best]
        clear = all((lo > o_hi) if better_high else (hi < o_lo) for o_lo, o_hi in rest)
        out[layer] = f"{LABEL[best['name'].split('-')[1]]}{'' if clear else ' (interval overlaps another)'}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="folder of the runs, one subfolder per architecture")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", type=Path, default=Path("attnsae-out/architectures-compared"))
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "architectures-compared.md")
    ap.add_argument("--source", default=None, help="validation text (default: the SAEs' training corpus)")
    ap.add_argument("--target-l0", type=float, default=32.0)
    ap.add_argument("--l0-tokens", type=int, default=16_384)
    ap.add_argument("--eval-tokens", type=int, default=65_536)
    ap.add_argument("--dashboard-tokens", type=int, default=32_768)
    ap.add_argument("--ioi-features", type=int, default=IOI_FEATURES)
    args = ap.parse_args()
    out = make_dir(args.out)
    found = runs_saes(args.runs)
    if not found:
        raise SystemExit(f"no runs under {args.runs}: train configs/architectures/*.yaml first (docstring)")
    model = load_model(args.model)
    first = load_sae(next(iter(found.values()))[0])
    source, ctx = args.source or first.cfg.extra.get("dataset_path", "english"), first.cfg.context_size

    if not (out / "picks.json").exists():
        atomic_write_json(pick(model, found, contexts(model, source, args.l0_tokens, ctx), args.target_l0),
                          out / "picks.json")
    picks = json.loads((out / "picks.json").read_text())
    chosen = {f"L{layer}-{arch}": p["pick"] for arch in ARCHS if arch in picks for layer, p in picks[arch].items()}
    names = sorted(chosen, key=lambda n: (int(n.split("-")[0][1:]), ARCHS.index(n.split("-")[1])))
    saes = {n: load_sae(chosen[n]) for n in names}
    ev = evaluate_in_groups(model, list(saes.values()), names, lambda: contexts(model, source, args.eval_tokens, ctx),
                            out / "eval", len(ARCHS))  # one layer's SAEs per kept report
    if not (out / "dashboard" / "summary.json").exists():
        read_features(model, list(saes.values()), contexts(model, source, args.dashboard_tokens, ctx),
                      out / "dashboard", names=names, corpus={"source": source, "split": "validation"},
                      paths=[chosen[n] for n in names])
    families = json.loads((out / "dashboard" / "families.json").read_text())
    site = json.loads((out / "dashboard" / "summary.json").read_text())
    if not (out / "ioi.json").exists():
        atomic_write_json({**ioi_ablation(model, saes, args.ioi_features), "n_features": args.ioi_features},
                          out / "ioi.json")
    ioi = json.loads((out / "ioi.json").read_text())
    assets = make_dir(args.doc.with_suffix(""))
    report = EvalReport.from_dict({**{k: v for k, v in ev.items() if k != "seconds"},
                                   "saes": [{**s, "feature_frequency": None} for s in ev["saes"]]})
    recovery_plot(report, assets / "recovery.png", title=f"{args.model}, L0 ≈ {args.target_l0:.0f}")
    write_page(args, ev, picks, families, site, ioi, names)


def write_page(args, ev: dict, picks: dict, families: dict, site: dict, ioi: dict, names: list[str]) -> None:
    rows = ev["saes"]
    cands = "\n".join(
        f"- {LABEL[a]}, layer {layer}: " + ", ".join(f"`{Path(c['path']).parent.name}/{Path(c['path']).name}` "
                                                     f"L0 {c['l0']:.1f}"
                                                     for c in p["candidates"])
        for a in ARCHS if a in picks for layer, p in picks[a].items())
    best = {k: separated(rows, k, hi) for k, hi in
            (("kl_sae", False), ("ce_recovered_zero", True), ("explained_variance", True))}
    bests = "\n".join(f"- **{label}**: " + "; ".join(f"layer {layer}: {b}" for layer, b in best[k].items())
                      for label, k in (("lowest KL", "kl_sae"), ("highest CE recovered (zero)", "ce_recovered_zero"),
                                       ("highest explained variance", "explained_variance")))
    vfile = args.doc.with_suffix("") / "verdict.md"  # the reading of these numbers, written after looking at them
    verdict = "\n" + vfile.read_text() if vfile.exists() else ""
    text = f"""# Which SAE architecture: measured on SmolLM2-135M layers 17 and 18

Five architectures, trained on the **same tokens in the same order** (one activation cache of layers 17 and 18, the
layers of the IOI circuit in [docs/studies/ioi.md](studies/ioi.md)), the same d_sae and the same budget, then
measured the same way. Every number below comes from these commands (configs in `configs/architectures/`):

```bash
attnsae cache --model {args.model} --source english --layers 17 18 --model-batch-size 16 \\
    --max-corpus-tokens 1260000 --cache-out attnsae-out/arch-cache
for a in topk batchtopk matryoshka relu; do
    attnsae train --config configs/architectures/$a.yaml --cache attnsae-out/arch-cache; done
for t in 0.25 0.35 0.45; do attnsae train --config configs/architectures/jumprelu.yaml --cache attnsae-out/arch-cache \\
    --jumprelu-init-threshold $t --out attnsae-out/architectures/jumprelu-init$t; done
python scripts/architectures_compared.py --runs {args.runs}
```

## Matched L0

The k architectures are set to k {args.target_l0:.0f}. ReLU and JumpReLU have no k: the ReLU run trains a grid of L1
coefficients, and JumpReLU runs once per initial threshold (in these 600 steps its learned thresholds move too
little for the L0 coefficient to set the L0: `configs/architectures/jumprelu.yaml` says why). The script keeps, per
layer, the SAE whose L0 on {args.l0_tokens:,} validation tokens is nearest {args.target_l0:.0f}:

{cands}

BatchTopK and Matryoshka are measured as saved, with their inference threshold (a JumpReLU), so their L0 is
measured rather than exactly k.

## Reconstruction and downstream loss

{ev['n_contexts']:,} validation contexts of {ev['context_size']} tokens of `english`; 95% intervals: bootstrap over
contexts ({ev['bootstrap'].get('resamples', 0):,} resamples, seed {ev['bootstrap'].get('seed')}). CE recovered is
`(CE_ablated − CE_sae) / (CE_ablated − CE_clean)` with the layer's hook_z zero- or mean-ablated (clean CE
{rows[0]['ce_clean']:.4f}); KL is the clean-vs-spliced next-token KL per token. "Never fired" counts latents silent
on all {rows[0]['n_tokens']:,} tokens; Chao1 estimates how many of those are live but rarer than the sample shows.

{quality_table(rows)}

![CE recovered with intervals](architectures-compared/recovery.png)

{bests}

## Feature families

Live features per family over {site['corpus']['n_tokens']:,} validation tokens; criterion: {families['criterion']}.

{families_table(families['counts'], names)}

## IOI: feature ablation at S2

The study's feature ablation (docs/studies/ioi.md): {ioi['n_prompts']} prompts, clean logit diff
{ioi['clean']:.2f}; each SAE spliced at its layer with its error term kept, then at each prompt's own S2 position
(Δ = mean change of logit(IO) − logit(S)): every S2-active feature zeroed at once, the error term zeroed, and the
{ioi['n_features']} most active S2 features zeroed one at a time (the single largest effect, with its family; the sum of
the five largest; how many move it by at least {BIG_EFFECT}). A sparse, faithful SAE puts the signal in a few
features and little in its error term.

{ioi_table(ioi, names, families['features'])}

## All together

Means over the two layers:

{summary_table(rows, families['counts'], ioi)}
{verdict}"""
    atomic_write_text(text, args.doc)
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    sys.exit(main())
