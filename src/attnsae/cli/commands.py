"""The commands: for each, its flags (``NAME_args(parser)``) and its run (``run_NAME(args)``: one job called with
plain arguments, its result printed), and :data:`COMMANDS`, the table ``attnsae --help`` lists in order."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

from attnsae.cli.flags import (_Parser, _port, add_corpus_args, add_model_args, add_progress_arg, context_size,
                               corpus_of, non_negative, positive, seed, train_args, train_config)
from attnsae.errors import AttnsaeError


def print_json(obj) -> None:
    print(json.dumps(obj, indent=1, default=str))


# ----------------------------------------------------------------------------------------------- info, corpus


def info_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--check", action="store_true",
                   help="also run every stage on a few random contexts against a direct computation and print each "
                        "verdict (exact with its error, refused with the reason, or MISMATCH: a bug to report)")


def run_info(args: argparse.Namespace) -> None:
    from attnsae.jobs.info import model_info

    info = model_info(args.model, args.device, args.check)
    print("\n".join(info.header))
    if not args.check:
        print("stages (each exact, or refused with the reason; --check measures them):")
        print("\n".join(info.stages))
        return
    print("stages, each run against a direct computation on random contexts:")
    for c in info.checks:
        print(f"  {c.stage:<20} {c.status.upper() if c.status == 'mismatch' else c.status}: {c.detail}")
    if info.mismatched:
        raise AttnsaeError(f"stage(s) {', '.join(info.mismatched)} disagree with their direct computation on this "
                           "model; please report it with the output above")


def models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", default="list", choices=("list", "fetch"),
                   help="list (default): the models attnsae knows; fetch NAME: download and convert one")
    p.add_argument("name", nargs="?", default=None, help="the model to fetch (a name the list shows)")
    p.add_argument("--from", dest="local", default=None, metavar="FILE",
                   help="the model's registry file fetched by hand (offline), instead of downloading it")


def run_models(args: argparse.Namespace) -> None:
    from attnsae.models import zoo
    from attnsae.models import REFERENCE_NAME

    if args.action == "fetch":
        if not args.name:
            raise AttnsaeError(f"models fetch needs a model name: one of {', '.join(zoo.ZOO)}")
        folder = zoo.fetch_model(args.name, args.local)
        card = json.loads((folder / zoo.CARD).read_text())
        print(f"{args.name} ready in {folder} (perplexity {card['perplexity_stdlib_validation']:.2f} on the "
              f"stdlib validation split); use it with --model {args.name}")
        return
    if args.name or args.local:
        raise AttnsaeError("`attnsae models list` takes no name or --from; to fetch one: `attnsae models fetch NAME "
                           "[--from FILE]`")
    print(f"{REFERENCE_NAME:<16} shipped   the reference model (GPT-2 architecture, 2 layers, trained on the "
          "Python stdlib); the default")
    for m in zoo.ZOO.values():
        ready = "cached" if (zoo.models_dir() / m.name / zoo.CARD).exists() else "fetch on first use"
        print(f"{m.name:<16} {ready:<9} {m.description} ({m.origin}, {m.licence}; from {m.artifact.registry} "
              f"{m.artifact.package}, {m.artifact.size / 1e6:.0f} MB)")
    print(f"\nalso: any TransformerLens-bridge hub name (e.g. gpt2; needs network), a local HF-format folder, or a "
          f".gguf file of an architecture transformers reads. Cache: {zoo.models_dir()}")


def corpus_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_corpus_args(p)
    p.add_argument("--max-tokens", type=positive, default=None,
                   help="stop at this many tokens (whole contexts, BOS included)")
    p.add_argument("--save", default=None, help="write the contexts to this new .npy file")
    add_progress_arg(p)


def run_corpus(args: argparse.Namespace) -> None:
    from attnsae.jobs.corpus_cache import read_corpus

    c, dt = read_corpus(args.model, args.device, **corpus_of(args), max_tokens=args.max_tokens, save=args.save,
                        progress=args.progress)
    print(f"{c.tokens.shape[0]:,} contexts of {c.context_size} = {c.n_tokens:,} tokens ({c.stats.n_docs:,} "
          f"documents read, {c.stats.n_bytes:,} bytes, {c.stats.n_skipped} skipped) in {dt:.1f}s "
          f"({c.n_tokens / dt:,.0f} tokens/s)")
    if args.save is not None:
        print(f"saved {args.save}")


# ----------------------------------------------------------------------------------------------- train, cache


def run_train(args: argparse.Namespace) -> None:
    cfg = train_config(args)  # validated before the trainer (and torch) is imported: bad settings fail fast
    from attnsae.training.trainer import train

    _, specs = train(cfg)
    for spec in specs:
        print(f"saved {Path(cfg.out) / spec.name}")


def cache_args(p: argparse.ArgumentParser) -> None:
    from attnsae.training.config import CACHE_FIELDS

    train_args(p, only=CACHE_FIELDS)
    p.add_argument("--cache-out", required=True, metavar="DIR", help="new folder to write the activation cache into")


def run_cache(args: argparse.Namespace) -> None:
    cfg = train_config(args, skip=("cache_out",))  # validated before torch is imported
    from attnsae.jobs.corpus_cache import cache_activations

    print(f"wrote activation cache {cache_activations(cfg, args.cache_out)}")


def quickstart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="output folder (default attnsae-out/quickstart, or "
                   "attnsae-out/quickstart-MODEL for another model)")
    p.add_argument("--model", default=None, help="omit for the reference model, or a model `attnsae models` lists "
                   "(smollm2-135m: three layers, english corpus; its time on 2 cores is in the README)")
    p.add_argument("--train-tokens", type=positive, default=None, help="SAE training tokens per layer")
    p.add_argument("--eval-tokens", type=positive, default=None, help="validation tokens for the summary")
    p.add_argument("--dashboard-tokens", type=non_negative, default=None,
                   help="validation tokens scanned for the dashboards, families and head report (0: skip them)")
    p.add_argument("--seed", type=seed, default=0)


def run_quickstart_cmd(args: argparse.Namespace) -> None:
    from attnsae.jobs.quickstart import QuickstartConfig, run_quickstart

    given = {k: getattr(args, k) for k in ("train_tokens", "eval_tokens", "dashboard_tokens") if
             getattr(args, k) is not None}
    out = args.out or ("attnsae-out/quickstart" + (f"-{args.model}" if args.model else ""))
    run_quickstart(QuickstartConfig.for_model(args.model, out=out, seed=args.seed, **given))


# ----------------------------------------------------------------------------------------------- eval


def eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae", nargs="+", required=True, metavar="PATH",
                   help="SAE directories (SAELens format), paper .pt files or hub paths; one report for all")
    add_model_args(p, sae_default=True)
    add_corpus_args(p, split="validation", n_tokens=100_000, of_saes=True)
    p.add_argument("--batch-size", type=positive, default=None,
                   help="contexts per forward pass (default: 16, fewer when the model's forward makes full logits, "
                   "i.e. its LM head is not a linear read-out: then at most 2**25 logits per batch)")
    p.add_argument("--out", default="attnsae-out/eval", help="folder for eval.json and density.png (new, or an "
                   "earlier eval's, which is replaced whole when done)")
    p.add_argument("--splice-bos", action="store_true",
                   help="also replace hook_z at position 0 (BOS), which SAEs are normally trained without")
    add_progress_arg(p)


def run_eval(args: argparse.Namespace) -> None:
    from attnsae.jobs.evaluation import evaluate_saes
    from attnsae.views.tables import eval_table

    report, out = evaluate_saes(args.sae, args.out, args.model, args.device, **corpus_of(args), n_tokens=args.n_tokens,
                                batch_size=args.batch_size, splice_bos=args.splice_bos, progress=args.progress)
    for note in (report.meta.get("corpus_note"), report.ce_refused):
        if note:
            print(f"note: {note}")
    print(eval_table(report))
    print(f"\nwrote {out / 'eval.json'} and {out / 'density.png'}")


# ----------------------------------------------------------------------------------------------- dashboard


def dashboard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae", nargs="+", required=True, metavar="PATH",
                   help="SAEs on blocks.{L}.attn.hook_z of one model (SAELens folders, paper .pt files, hub paths)")
    add_model_args(p, sae_default=True)
    add_corpus_args(p, split="validation", n_tokens=262_144, of_saes=True)
    p.add_argument("--out", default="attnsae-out/dashboard", help="output folder: new, or an earlier dashboard's "
                   "(replaced whole when done)")
    p.add_argument("--n-top", type=positive, default=16, help="top activating examples per feature")
    p.add_argument("--n-bands", type=positive, default=4, help="activation quantile bands")
    p.add_argument("--per-band", type=non_negative, default=3, help="examples per quantile band")
    p.add_argument("--batch-size", type=positive, default=32, help="contexts per forward pass while scanning")
    p.add_argument("--neuronpedia", action="store_true", help="also write a Neuronpedia export into OUT/neuronpedia")
    p.add_argument("--seed", type=seed, default=0, help="seed of the quantile-band sampling")
    add_progress_arg(p)


def run_dashboard(args: argparse.Namespace) -> None:
    from attnsae.jobs.reading import dashboard

    print_site_summary(dashboard(args.sae, args.out, args.model, args.device, **corpus_of(args),
                                 n_tokens=args.n_tokens, n_top=args.n_top, n_bands=args.n_bands,
                                 per_band=args.per_band, batch_size=args.batch_size, neuronpedia=args.neuronpedia,
                                 seed=args.seed, progress=args.progress))


def print_site_summary(summary: dict) -> None:
    print(summary["families_table"])
    print(f"\n{summary['heads']}")
    print(f"\nopen {summary['index']}  (heads: {summary['heads_html']})")


# ----------------------------------------------------------------------------------------------- attribute


def attribute_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae", required=True, help="SAE on blocks.{L}.attn.hook_z: a SAELens folder, .pt or hub path")
    p.add_argument("--prompt", required=True, help="text to explain (BOS is prepended as in training)")
    p.add_argument("--feature", required=True, type=non_negative, help="feature index")
    p.add_argument("--position", type=non_negative, default=None,
                   help="token position (default: where the feature is largest)")
    add_model_args(p, sae_default=True)
    p.add_argument("--upstream-sae", nargs="+", default=[], metavar="PATH",
                   help="SAEs of earlier layers: RDFA splits those attention outputs into their features")
    p.add_argument("--depth", type=non_negative, default=2, help="RDFA depth (value-path decompositions per branch)")
    p.add_argument("--top-k", type=positive, default=5, help="RDFA branching: terms expanded per node")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")


def run_attribute(args: argparse.Namespace) -> None:
    from attnsae.jobs.attribute import attribute_feature
    from attnsae.views.attribution_text import report_text

    report = attribute_feature(args.sae, args.prompt, args.feature, args.position, args.model, args.device,
                               args.upstream_sae, depth=args.depth, top_k=args.top_k)
    print_json(report.to_dict()) if args.json else print(report_text(report))
    if not report.closes:
        raise AttnsaeError(f"the RDFA tree does not close: worst node error {report.max_relative_residual:.2e} of "
                           f"its terms' magnitude exceeds the tolerance {report.tolerance:.0e}; this is a bug or an "
                           "unsupported model, do not trust the tree")


# ----------------------------------------------------------------------------------------------- graph


def _share(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return v


def graph_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae", nargs="*", default=[], metavar="DIR", help="SAEs (one per layer) that split their "
                   "layers' attention outputs into features; other layers are split into heads (none: heads only)")
    p.add_argument("--prompt", required=True, help="text to explain (BOS is prepended as in training)")
    p.add_argument("--target", nargs="+", default=None, metavar="T", help="what to explain: a token (' Mary'), a "
                   "difference (' Mary' - ' John'), or a feature LAYER/FEATURE@POS; default: the top prediction")
    add_model_args(p, sae_default=True)
    p.add_argument("--mlp", choices=("leaf", "linear"), default="leaf", help="MLP outputs: leaves (exact; what they "
                   "read stays hidden) or linear (their Jacobian at the prompt passes what reaches them back to their "
                   "inputs: a first-order approximation of the MLP, its remainder a leaf of its own)")
    p.add_argument("--out", default="graph.json", help="the graph file to write (.json; new, or a graph attnsae "
                   "wrote)")
    p.add_argument("--node-threshold", type=_share, default=0.8, help="keep the nodes that carry this share of the "
                   "target's influence (circuit-tracer's pruning; 1 keeps every node)")
    p.add_argument("--edge-threshold", type=_share, default=0.98, help="keep the edges that carry this share of the "
                   "rest (1 keeps every edge: with --node-threshold 1 the graph is unpruned)")
    p.add_argument("--viewer", default=None, metavar="DIR", help="also write circuit-tracer's viewer files (the "
                   "graph JSON and graph-metadata.json) into this folder")
    p.add_argument("--png", default=None, metavar="FILE", help="also draw the pruned graph (x: position, y: layer) "
                   "into this .png file")
    p.add_argument("--slug", default=None, help="the graph's name in the viewer (default: the --out file's stem)")
    p.add_argument("--no-faithfulness", action="store_true", help="skip the ablations on the real model")
    p.add_argument("--top", type=positive, default=10, help="nodes listed, and removed one at a time on the real "
                   "model")
    p.add_argument("--qk", type=non_negative, default=0, metavar="N", help="explain why the head of each of the top "
                   "N edges attended: its attention score split exactly over the nodes at the source (key side) and "
                   "at the destination (query side)")
    add_progress_arg(p)


def run_graph(args: argparse.Namespace) -> None:
    from attnsae.jobs.circuit_graph import graph_job
    from attnsae.views.graph_text import graph_summary_text

    summary = graph_job(args.sae, args.prompt, args.target, args.model, args.device, args.out, args.node_threshold,
                        args.edge_threshold, args.viewer, args.slug, not args.no_faithfulness, args.top, args.qk,
                        args.png, args.mlp, args.progress)
    print(graph_summary_text(summary))


# ----------------------------------------------------------------------------------------------- studies


def study_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="study", metavar="STUDY", required=True, parser_class=_Parser)
    pi = sub.add_parser("prefix-induction", help="long- vs short-prefix induction heads: synthetic sweep, real-text "
                        "intervention, and the SAE's induction features", description="long- vs short-prefix "
                        "induction heads (PAPER_NOTES §7): a synthetic sweep over prefix lengths for every head, the "
                        "real-text intervention, and, with --sae, the layer's induction features by prefix length")
    add_model_args(pi)
    add_corpus_args(pi, split="validation", n_tokens=25_600)
    pi.add_argument("--sae", default=None, help="an SAE of the induction layer (its induction features are split by "
                    "prefix length and given specificity plots)")
    pi.add_argument("--out", default="attnsae-out/prefix-induction", help="output folder: new, or an earlier run's "
                    "of this study (replaced whole when done)")
    pi.add_argument("--n-seqs", type=positive, default=400, help="synthetic sequences per prefix length")
    pi.add_argument("--seq-len", type=context_size, default=128, help="tokens per synthetic sequence")
    pi.add_argument("--max-prefix", type=positive, default=9, help="longest copied prefix")
    pi.add_argument("--max-pairs", type=positive, default=2000, help="real-text pairs intervened on")
    pi.add_argument("--seed", type=seed, default=0)
    add_progress_arg(pi)
    io = sub.add_parser("ioi", help="the IOI circuit through attention SAEs: validation, patching, feature "
                        "ablation, noising", description="indirect object identification (PAPER_NOTES §8): checks "
                        "the model does the task, finds the circuit's layers by patching, ablates SAE features at "
                        "each prompt's S2, and measures noising")
    io.add_argument("--model", default="smollm2-135m", help="model (default smollm2-135m, fetched on first use; the "
                    "reference model reads code and cannot do IOI)")
    io.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or mps")
    io.add_argument("--sae", nargs="*", default=[], metavar="PATH", help="SAEs on the circuit's layers (their "
                    "features are ablated at S2 and read)")
    io.add_argument("--out", default="attnsae-out/ioi", help="output folder: new, or an earlier run's of this study "
                    "(replaced whole when done)")
    io.add_argument("--n-prompts", type=positive, default=80, help="IOI prompts (ABBA and BABA, four templates)")
    io.add_argument("--k-layers", type=positive, default=2, help="layers the patching scan picks for noising")
    io.add_argument("--no-per-head", dest="per_head", action="store_false", help="patch whole layers only")
    io.add_argument("--head-layers", type=positive, default=6, help="patch single heads in the N layers where "
                    "patching the whole layer matters most, at each position (the model's layer count: all)")
    io.add_argument("--max-features", type=positive, default=None, help="ablate at most this many S2 features per SAE")
    io.add_argument("--seed", type=seed, default=0)
    add_progress_arg(io)


def run_study(args: argparse.Namespace) -> None:
    from attnsae.jobs.studies import ioi_job, prefix_induction_study

    if args.study == "prefix-induction":
        result = prefix_induction_study(args.out, args.model, args.device, args.sae, **corpus_of(args),
                                        n_tokens=args.n_tokens, progress=args.progress, n_seqs=args.n_seqs,
                                        seq_len=args.seq_len, max_prefix=args.max_prefix, seed=args.seed,
                                        max_pairs=args.max_pairs)
        print(result["table"])
    else:
        result = ioi_job(args.out, args.model, args.device, args.sae, progress=args.progress,
                         n_prompts=args.n_prompts, seed=args.seed, k_layers=args.k_layers, per_head=args.per_head,
                         head_layers=args.head_layers, max_features=args.max_features)
        v = result["validation"]["summary"]["all"]
        print(f"IOI on {args.model}: mean logit(IO) - logit(S) {v['mean_logit_diff']:.2f}, accuracy "
              f"{v['accuracy']:.0%}")
        print(f"circuit layers (S2 patching): {result['patching']['layers']}")
        for kind, r in result["noising"].items():
            print(f"noising {kind}: {r['kept']['all']:.0%} of the logit difference kept")
    print(f"\nwrote {os.path.realpath(args.out)}")


# ----------------------------------------------------------------------------------------------- explore

def explore_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae", nargs="+", required=True, metavar="DIR", help="SAE folders (one per layer) to explore")
    add_model_args(p, sae_default=True)
    p.add_argument("--dashboard", default=None, metavar="DIR",
                   help="a dashboards folder of these SAEs (`attnsae dashboard`): family labels, feature pages and "
                   "the feature cards' data")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this machine only; anything else is reachable by others); "
                   "only requests addressed to it, 127.0.0.1, localhost or [::1] are served")
    p.add_argument("--port", type=_port, default=8000, help="port (0 picks a free one)")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="the JSON file of the feature labels you write in the page: a labels file of earlier runs "
                   "or a new path (default $ATTNSAE_HOME/labels.json, ~/.cache/attnsae/labels.json)")
    p.add_argument("--card-tokens", type=positive, default=None, metavar="N",
                   help="without --dashboard: corpus tokens the feature cards scan, once per layer, when first asked "
                   "(default 8,192 of the SAEs' corpus, validation split)")


def run_explore(args: argparse.Namespace) -> None:
    import uvicorn

    from attnsae.jobs.inputs import corpus_for_sae, load_saes_and_model
    from attnsae.serve.app import create_app, listen, url_of
    from attnsae.serve.guards import LOCAL_HOSTS
    from attnsae.views.labels import default_labels_path, read_labels_file

    if args.dashboard is not None and not (Path(args.dashboard) / "index.html").is_file():
        raise AttnsaeError(f"--dashboard {args.dashboard} is not a dashboards folder (no index.html): give the folder "
                           "`attnsae dashboard` or the quickstart wrote")
    labels = args.labels or default_labels_path()
    read_labels_file(labels)  # refused before the model loads: never a file attnsae did not write
    saes, model = load_saes_and_model(args.sae, args.model, args.device)
    app = create_app(model, saes, args.dashboard, host=args.host, labels=labels,
                     card_corpus=corpus_for_sae(saes[0], None), card_tokens=args.card_tokens)
    sock = listen(args.host, args.port)
    if args.host not in LOCAL_HOSTS:
        print(f"attnsae: warning: binding {args.host}: anyone who can reach this address can use the explorer "
              "(and your CPU); use the default 127.0.0.1 to keep it on this machine", file=sys.stderr)
    print(f"attnsae explorer: open {url_of(sock)}  (Ctrl+C stops it)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]
COMMANDS: dict[str, Command] = {
    "quickstart": ("the main job (reference model by default): train an SAE per layer, evaluate it, write dashboards",
                   quickstart_args, run_quickstart_cmd),
    "train": ("train attention-output SAEs (the paper's recipe by default; relu, topk, jumprelu, batchtopk or "
              "matryoshka)", train_args,
              run_train),
    "cache": ("harvest hook_z activations once into an on-disk cache that `train --cache` reads", cache_args,
              run_cache),
    "eval": ("evaluate SAEs on held-out tokens: sparsity, reconstruction, CE loss recovered, KL, density", eval_args,
             run_eval),
    "dashboard": ("feature dashboards (top examples with DFA), feature families and head polysemanticity",
                  dashboard_args, run_dashboard),
    "attribute": ("explain a feature on a prompt: DFA by source and head, recursive DFA, logit effect",
                  attribute_args, run_attribute),
    "graph": ("the exact attention graph of a prompt: every layer, from a logit (or a feature) back to the tokens, "
              "pruned as circuit-tracer does, with its faithfulness on the real model", graph_args, run_graph),
    "explore": ("the Circuit Explorer: a local web app to read any prompt through the SAEs (features, DFA, recursive "
                "DFA, effects, attention, interventions)", explore_args, run_explore),
    "corpus": ("tokenise a corpus split into contexts and report what it holds", corpus_args, run_corpus),
    "info": ("load a model and report its layout (heads, KV heads, norms, positions, windows, attention direction, LM "
             "head) and which stages are exact on it", info_args, run_info),
    "models": ("list the models attnsae knows, or fetch and convert one (`models fetch smollm2-135m`)", models_args,
               run_models),
    "study": ("case studies: `study prefix-induction` (long- vs short-prefix induction heads), `study ioi` (the IOI "
              "circuit through SAEs)", study_args, run_study),
}


