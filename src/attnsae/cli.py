"""The ``attnsae`` command. Thin: parse, validate once, call one library function, print.

:data:`COMMANDS` is the table of subcommands: name -> (help, flags, run). A user error is an :class:`AttnsaeError`,
printed as one line ``attnsae: error: ...`` with exit status 2; anything else is a bug, printed as one line that says
so (exit 3) — ``--debug`` shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import typing
from dataclasses import fields
from pathlib import Path
from typing import Callable

from attnsae.errors import AttnsaeError, Stopped, short, stop_on_signals
from attnsae.io import disk_full, write_error

# ----------------------------------------------------------------------------------------------- shared flags


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def seed(text: str) -> int:
    """argparse type: a seed in 0..2**63 - 1 (what torch and numpy both take)."""
    from attnsae.training.config import SEED_MAX  # torch-free

    value = _int_at_least(text, 0)
    if value > SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be at most {SEED_MAX} (2**63 - 1), got {short(value)}")
    return value


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{short(text)} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {'positive' if low == 1 else f'>= {low}'}, got {value}")
    return value


def context_size(text: str) -> int:
    """argparse type: a context length >= 2 (BOS and one token)."""
    return _int_at_least(text, 2)


def add_model_args(p: argparse.ArgumentParser, sae_default: bool = False) -> None:
    p.add_argument("--model", default=None,
                   help="model: default the SAEs' own model when it is the reference model, a name `attnsae "
                   "models` lists, or a local folder"
                   if sae_default else "model: omit for the shipped reference model, or a name `attnsae models` lists "
                   "(fetched on first use), a .gguf file, a local HF-format directory, or a hub name")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or mps")


def add_corpus_args(p: argparse.ArgumentParser, split: str = "train", n_tokens: int | None = None,
                    of_saes: bool = False) -> None:
    p.add_argument("--source", default=None if of_saes else "stdlib",
                   help="'stdlib', 'english', a local .txt/.jsonl/.parquet file or folder, or a Hugging Face dataset "
                   "name" + (" (default: the SAEs' training corpus when it is stdlib or english, else stdlib)"
                             if of_saes else ""))
    p.add_argument("--split", default=split, choices=["train", "validation"])
    p.add_argument("--text-field", default="text", help="text column for .jsonl / .parquet / HF datasets")
    p.add_argument("--context-size", type=context_size, default=128)
    p.add_argument("--no-bos", dest="prepend_bos", action="store_false", help="do not force BOS at position 0")
    if n_tokens is not None:
        p.add_argument("--n-tokens", type=positive, default=n_tokens, help="tokens (whole contexts, BOS included)")


def add_progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def model_for_sae(sae, given: str | None) -> str | None:
    """``--model`` if given; else the SAE's model when it is the reference model, a zoo model (fetched on first use)
    or a local folder; else the reference model."""
    from attnsae.model_zoo import ZOO
    from attnsae.models import REFERENCE_NAME

    if given is not None:
        return given
    name = sae.cfg.model_name
    if name == REFERENCE_NAME or name in ZOO or (name and Path(name).is_dir()):
        return name
    return None


def corpus_for_sae(sae, given: str | None) -> str:
    """``--source`` if given; else the SAE's training corpus when it is a named source; else stdlib."""
    from attnsae.corpus import NAMED_SOURCES

    trained_on = sae.cfg.extra.get("dataset_path")
    return given or (trained_on if trained_on in NAMED_SOURCES else "stdlib")


def load_saes_and_model(paths: list[str], model_arg: str | None, device: str):
    """Load SAEs, then their model (``--model`` or the SAEs' own), and refuse any SAE that does not fit it."""
    from attnsae.models import check_device, load_model
    from attnsae.sae.checks import sae_layer
    from attnsae.sae.formats import load_sae

    check_device(device)
    saes = [load_sae(p, device=device) for p in paths]
    for path, sae in zip(paths, saes):  # an SAE on another hook is refused before the (slow) model load
        try:
            sae_layer(sae)
        except AttnsaeError as e:
            raise AttnsaeError(f"SAE {path}: {e}") from None
    model = load_model(model_for_sae(saes[0], model_arg), device=device)
    check_saes_fit(model, paths, saes)
    return saes, model


def check_saes_fit(model, paths: list[str], saes: list) -> None:
    """Refuse any SAE that does not fit ``model``, naming its path."""
    from attnsae.sae.checks import check_sae

    for path, sae in zip(paths, saes):
        try:
            check_sae(model, sae)
        except AttnsaeError as e:
            raise AttnsaeError(f"SAE {path}: {e}") from None


def sae_names(paths: list[str]) -> list[str]:
    """A short name per SAE path (its folder or file name), made unique with a suffix where needed."""
    from attnsae.io import printable

    names = [printable((lambda q: q.stem if q.suffix == ".pt" else q.name)(Path(p.rstrip("/"))) or p) for p in paths]
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def load_tokens(args: argparse.Namespace, model, n_tokens: int, progress: bool = True):
    """Whole contexts (BOS at 0 unless ``--no-bos``) covering ``n_tokens`` tokens of the corpus flags' split:
    int64 numpy ``[n_contexts, context_size]``."""
    from attnsae.corpus import load_corpus

    n_contexts = math.ceil(n_tokens / args.context_size)
    per_context = args.context_size - 1 if args.prepend_bos else args.context_size
    corpus = load_corpus(model.tokenizer, args.source, args.split, args.context_size, args.prepend_bos,
                         args.text_field, max_tokens=n_contexts * per_context, n_ctx=model.cfg.n_ctx,
                         progress=progress)
    return corpus.tokens[:n_contexts]


def check_out(path: str, command: str, sae_paths: list[str] = (), source: str | None = None) -> Path:
    """``--out`` of ``command``, checked before any work (:func:`attnsae.io.check_output_dir`): new, empty or this
    command's earlier output, and never one of the inputs (the SAEs, a local corpus) or a folder holding one."""
    from attnsae.io import check_output_dir

    return check_output_dir(path, command, [*sae_paths, *([source] if source else [])])


def print_json(obj) -> None:
    print(json.dumps(obj, indent=1, default=str))


# ----------------------------------------------------------------------------------------------- info, corpus


def info_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--check", action="store_true",
                   help="also run every stage on a few random contexts against a direct computation and print each "
                        "verdict (exact with its error, refused with the reason, or MISMATCH: a bug to report)")


def run_info(args: argparse.Namespace) -> None:
    from attnsae.architecture import describe
    from attnsae.corpus import bos_token_id
    from attnsae.models import load_model, model_name

    model = load_model(args.model, device=args.device)
    c = model.cfg
    arch = describe(model)
    print(f"model      {model_name(model)}")
    for line in arch.lines():
        if line.startswith("  "):
            continue
        print(line)
    bos = bos_token_id(model.tokenizer)
    print(f"vocab      {c.d_vocab}   n_ctx {c.n_ctx}   BOS {model.tokenizer.convert_ids_to_tokens(bos)!r} (id {bos})")
    print(f"SAE input  blocks.{{L}}.attn.hook_z  (d_in = n_heads * d_head = {c.n_heads * c.d_head})")
    if not args.check:
        print("stages (each exact, or refused with the reason; --check measures them):")
        for line in arch.lines():
            if line.startswith("  "):
                print(line)
        return
    from attnsae.evals.exactness import check_stages

    print("stages, each run against a direct computation on random contexts:")
    checks = check_stages(model)
    for c in checks:
        print(f"  {c.stage:<20} {c.status.upper() if c.status == 'mismatch' else c.status}: {c.detail}")
    bad = [c.stage for c in checks if c.status == "mismatch"]
    if bad:
        raise AttnsaeError(f"stage(s) {', '.join(bad)} disagree with their direct computation on this model; "
                           "please report it with the output above")


def models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", default="list", choices=("list", "fetch"),
                   help="list (default): the models attnsae knows; fetch NAME: download and convert one")
    p.add_argument("name", nargs="?", default=None, help="the model to fetch (a name the list shows)")
    p.add_argument("--from", dest="local", default=None, metavar="FILE",
                   help="the model's registry file fetched by hand (offline), instead of downloading it")


def run_models(args: argparse.Namespace) -> None:
    from attnsae import model_zoo
    from attnsae.models import REFERENCE_NAME

    if args.action == "fetch":
        if not args.name:
            raise AttnsaeError(f"models fetch needs a model name: one of {', '.join(model_zoo.ZOO)}")
        folder = model_zoo.fetch_model(args.name, args.local)
        card = json.loads((folder / model_zoo.CARD).read_text())
        print(f"{args.name} ready in {folder} (perplexity {card['perplexity_stdlib_validation']:.2f} on the "
              f"stdlib validation split); use it with --model {args.name}")
        return
    if args.name or args.local:
        raise AttnsaeError("`attnsae models list` takes no name or --from; to fetch one: `attnsae models fetch NAME "
                           "[--from FILE]`")
    print(f"{REFERENCE_NAME:<16} shipped   the reference model (GPT-2 architecture, 2 layers, trained on the "
          "Python stdlib); the default")
    for m in model_zoo.ZOO.values():
        ready = "cached" if (model_zoo.models_dir() / m.name / model_zoo.CARD).exists() else "fetch on first use"
        print(f"{m.name:<16} {ready:<9} {m.description} ({m.origin}, {m.licence}; from {m.artifact.registry} "
              f"{m.artifact.package}, {m.artifact.size / 1e6:.0f} MB)")
    print(f"\nalso: any TransformerLens-bridge hub name (e.g. gpt2; needs network), a local HF-format folder, or a "
          f".gguf file of an architecture transformers reads. Cache: {model_zoo.models_dir()}")


def corpus_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_corpus_args(p)
    p.add_argument("--max-tokens", type=positive, default=None,
                   help="stop at this many tokens (whole contexts, BOS included)")
    p.add_argument("--save", default=None, help="write the contexts to this new .npy file")
    add_progress_arg(p)


def run_corpus(args: argparse.Namespace) -> None:
    from attnsae.corpus import load_corpus
    from attnsae.io import atomic_save_npy
    from attnsae.models import load_model

    if args.save is not None:
        check_save_path(args.save, args.source)
    budget = None
    if args.max_tokens is not None:  # whole contexts, BOS included, at most --max-tokens tokens in all
        if args.max_tokens < args.context_size:
            raise AttnsaeError(f"--max-tokens {args.max_tokens} is less than one context of {args.context_size} "
                               "tokens; give at least --context-size")
        budget = args.max_tokens // args.context_size * (args.context_size - int(args.prepend_bos))
    model = load_model(args.model, device=args.device)
    t0 = time.perf_counter()
    c = load_corpus(model.tokenizer, args.source, args.split, args.context_size, args.prepend_bos, args.text_field,
                    max_tokens=budget, n_ctx=model.cfg.n_ctx, progress=args.progress)
    dt = max(time.perf_counter() - t0, 1e-9)
    print(f"{c.tokens.shape[0]:,} contexts of {c.context_size} = {c.n_tokens:,} tokens ({c.stats.n_docs:,} "
          f"documents read, {c.stats.n_bytes:,} bytes, {c.stats.n_skipped} skipped) in {dt:.1f}s "
          f"({c.n_tokens / dt:,.0f} tokens/s)")
    if args.save is not None:
        atomic_save_npy(c.tokens, args.save)
        print(f"saved {args.save}")


def check_save_path(save: str, source: str) -> None:
    """``--save``: a new file (never an existing one, which may be anyone's, nor the corpus it reads)."""
    from attnsae.io import check_writable_dir

    if not save:
        raise AttnsaeError("--save is empty; give a .npy file path")
    path = Path(save)
    if os.path.lexists(source) and os.path.lexists(path) and os.path.realpath(source) == os.path.realpath(path):
        raise AttnsaeError(f"--save {path} is the corpus --source it reads; an output never replaces an input: give "
                           "another file")
    if os.path.lexists(path):
        raise AttnsaeError(f"--save {path} already exists; attnsae writes a new file and replaces nothing: give a new "
                           "path, or remove the old file first")
    check_writable_dir(path.parent)


# ----------------------------------------------------------------------------------------------- train, cache


def train_args(p: argparse.ArgumentParser) -> None:
    """One flag per :class:`~attnsae.training.config.TrainConfig` setting, plus ``--config FILE`` (flags win)."""
    from attnsae.training.config import TrainConfig, defaults

    p.add_argument("--config", default=None, help="YAML or JSON file of settings (flags override it)")
    hints, default = typing.get_type_hints(TrainConfig), defaults()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        kw: dict = {"default": argparse.SUPPRESS, "dest": f.name, "help": f"(default: {default[f.name]})"}
        if hint is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif "list[" in str(hint):
            p.add_argument(flag, nargs="+", **kw)  # TrainConfig coerces and checks the values
        else:
            p.add_argument(flag, **kw)


def train_config(args: argparse.Namespace, skip: tuple[str, ...] = ()):
    """The validated :class:`~attnsae.training.config.TrainConfig` of ``--config`` and the flags given."""
    from attnsae.training.config import TrainConfig, read_config_file

    d = read_config_file(args.config) if args.config else {}
    d.update({k: v for k, v in vars(args).items() if k not in ("config", "func", "command", "debug", *skip)})
    return TrainConfig.from_dict(d)


def run_train(args: argparse.Namespace) -> None:
    cfg = train_config(args)  # validated before the trainer (and torch) is imported: bad settings fail fast
    from attnsae.training.trainer import train

    _, specs = train(cfg)
    for spec in specs:
        print(f"saved {Path(cfg.out) / spec.name}")


def cache_args(p: argparse.ArgumentParser) -> None:
    train_args(p)
    p.add_argument("--cache-out", required=True, help="new folder to write the activation cache into")


def run_cache(args: argparse.Namespace) -> None:
    cfg = train_config(args, skip=("cache_out",))  # validated before torch is imported
    from attnsae.activations import check_layers
    from attnsae.io import check_output_dir
    from attnsae.models import load_model
    from attnsae.training.data import build_cache

    out = Path(args.cache_out)
    if out.exists() and not out.is_dir():
        raise AttnsaeError(f"--cache-out {out} is a file; give a new folder")
    if out.is_dir() and any(out.iterdir()):
        raise AttnsaeError(f"--cache-out {out} exists and is not empty; remove it or choose another folder")
    out = check_output_dir(out, "cache", [cfg.source], flag="--cache-out")
    model = load_model(cfg.model, device=cfg.device)
    check_layers(model, cfg.layers)
    build_cache(cfg, model, str(out))
    print(f"wrote activation cache {out}")


def quickstart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="output folder (default attnsae-out/quickstart, or "
                   "attnsae-out/quickstart-MODEL for another model)")
    p.add_argument("--model", default=None, help="omit for the reference model, or a model `attnsae models` lists "
                   "(smollm2-135m: three layers, english corpus, about 14 minutes on 2 cores)")
    p.add_argument("--train-tokens", type=positive, default=None, help="SAE training tokens per layer")
    p.add_argument("--eval-tokens", type=positive, default=None, help="validation tokens for the summary")
    p.add_argument("--dashboard-tokens", type=non_negative, default=None,
                   help="validation tokens scanned for the dashboards, families and head report (0: skip them)")
    p.add_argument("--seed", type=seed, default=0)


def run_quickstart_cmd(args: argparse.Namespace) -> None:
    from attnsae.quickstart import QuickstartConfig, run_quickstart

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
    from attnsae.evals.metrics import evaluate
    from attnsae.io import atomic_dir, atomic_write_json, printable
    from attnsae.views.plots import density_histogram
    from attnsae.views.tables import eval_table

    out = check_out(args.out, "eval", args.sae, args.source)
    saes, model = load_saes_and_model(args.sae, args.model, args.device)
    args.source = corpus_for_sae(saes[0], args.source)
    tokens = load_tokens(args, model, args.n_tokens, args.progress)
    report = evaluate(model, saes, tokens, batch_size=args.batch_size, progress=args.progress,
                      keep_bos=args.prepend_bos and not args.splice_bos, names=sae_names(args.sae))
    report.meta = {"source": args.source, "split": args.split, "n_tokens_requested": args.n_tokens,
                   "sae_paths": [printable(p) for p in args.sae],
                   "sae_model_names": [sae.cfg.model_name for sae in saes]}
    with atomic_dir(out, owner="eval", inputs=args.sae) as tmp:  # both files, or neither (a full disk)
        atomic_write_json(report.to_dict(), tmp / "eval.json")
        density_histogram(report, tmp / "density.png",
                          title=f"feature density ({printable(args.source)} {args.split})")
    if report.ce_refused:
        print(f"note: {report.ce_refused}")
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
    import torch

    from attnsae.io import printable
    from attnsae.reading import read_features
    from attnsae.studies.examples import DashboardConfig
    from attnsae.studies.scan import ScanConfig

    cfg = DashboardConfig(scan=ScanConfig(n_top=args.n_top, batch_size=args.batch_size, seed=args.seed),
                          n_bands=args.n_bands, per_band=args.per_band)
    out = check_out(args.out, "dashboard", args.sae, args.source)
    saes, model = load_saes_and_model(args.sae, args.model, args.device)
    args.source = corpus_for_sae(saes[0], args.source)
    tokens = torch.from_numpy(load_tokens(args, model, args.n_tokens, args.progress))
    summary = read_features(model, saes, tokens, out, cfg, names=sae_names(args.sae),
                            corpus={"source": printable(args.source), "split": args.split},
                            neuronpedia=args.neuronpedia, progress=args.progress, paths=args.sae)
    print_site_summary(summary)


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
    from attnsae.attribution import attribute
    from attnsae.attribution.inputs import check_features
    from attnsae.models import check_device, load_model
    from attnsae.sae.checks import sae_layer
    from attnsae.sae.formats import load_sae

    check_device(args.device)
    sae = load_sae(args.sae, device=args.device)
    sae_layer(sae)  # refuse an SAE on another hook, or a bad feature, before loading the model
    check_features(sae, args.feature)
    upstream = [load_sae(p, device=args.device) for p in args.upstream_sae]
    model = load_model(model_for_sae(sae, args.model), device=args.device)
    check_saes_fit(model, [args.sae, *args.upstream_sae], [sae, *upstream])
    report = attribute(model, sae, args.prompt, args.feature, args.position, depth=args.depth, top_k=args.top_k,
                       upstream_saes=upstream)
    if args.json:
        print_json(report.to_dict())
    else:
        print_report(report)
    if not report.closes:
        raise AttnsaeError(f"the RDFA tree does not close: worst node error {report.max_relative_residual:.2e} of "
                           f"its terms' magnitude exceeds the tolerance {report.tolerance:.0e}; this is a bug or an "
                           "unsupported model, do not trust the tree")


def print_report(report) -> None:
    r = report.rdfa
    strs = r.token_strs
    t = report.position
    print(f"feature {report.feature} of blocks.{report.layer}.attn.hook_z at position {t} {strs[t]!r}: "
          f"activation {report.activation:.4g}")
    print(f"  pre-activation {report.pre_activation:.4g} = DFA {sum(r.by_src):.4g} + bias {report.bias:.4g}")
    if report.activation == 0:
        print("  (the feature does not fire here; without --position this is where its pre-activation is largest)")
    print("top sources (DFA summed over heads):")
    for row in report.top_sources(8):
        print(f"  {row['value']:+10.4f}  pos {row['source']:>3}  {row['token']!r}")
    print("by head:  " + "  ".join(f"h{h} {v:+.3f}" for h, v in enumerate(r.by_head)))
    if report.rdfa_refused:
        print(f"note: {report.rdfa_refused}")
    kind = "DFA terms" if report.rdfa_refused else f"RDFA tree (depth {r.depth}, top-k {r.top_k}"
    print(f"{kind}{';' if not report.rdfa_refused else ' (top-k ' + str(r.top_k) + ';'} worst closure error "
          f"{report.max_relative_residual:.1e} of the terms' magnitude, tolerance {report.tolerance:.0e}):")
    _print_node(r.root, strs, indent=1)
    lg = report.logits
    if lg is None:
        print(f"note: {report.logits_refused}")
        return
    print(f"direct logit effect ({lg.definition}):")
    print("  up:   " + "  ".join(f"{s!r} {v:+.3f}" for s, v in zip(lg.top_strs, lg.top_values)))
    print("  down: " + "  ".join(f"{s!r} {v:+.3f}" for s, v in zip(lg.bottom_strs, lg.bottom_values)))


def _label(node, strs: list[str]) -> str:
    if node.kind == "head_source":
        return f"{node.name}: {node.position} <- {node.source} {strs[node.source]!r}"
    if node.kind == "feature":
        return f"{node.name} @ {node.position} {strs[node.position]!r} (act {node.activation:.3g})"
    return f"{node.name} @ {node.position}"


def _print_node(node, strs: list[str], indent: int) -> None:
    pad = "  " * indent
    print(f"{pad}{node.value:+10.4f}  {_label(node, strs)}")
    for child in sorted(node.children, key=lambda c: -abs(c.value)):
        _print_node(child, strs, indent + 1)
    for name, value in node.remainders.items():
        print(f"{pad}  {value:+10.4f}  ({name})")


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
    import torch

    from attnsae.models import load_model

    sae_paths = [args.sae] if isinstance(args.sae, str) else list(args.sae or [])
    out = check_out(args.out, f"study {args.study}", sae_paths, getattr(args, "source", None))
    if args.study == "prefix-induction":
        from attnsae.case_studies import run_prefix_induction

        if args.sae:
            (sae,), model = load_saes_and_model([args.sae], args.model, args.device)
        else:
            sae, model = None, load_model(args.model, device=args.device)
        tokens = torch.from_numpy(load_tokens(args, model, args.n_tokens, args.progress))
        result = run_prefix_induction(model, tokens, out, inputs=sae_paths, sae=sae, n_seqs=args.n_seqs,
                                      seq_len=args.seq_len, max_prefix=args.max_prefix, seed=args.seed,
                                      max_pairs=args.max_pairs, progress=args.progress)
        print(result["table"])
    else:
        from attnsae.case_studies import run_ioi

        saes, model = load_saes_and_model(args.sae, args.model, args.device) if args.sae else (
            [], load_model(args.model, device=args.device))
        result = run_ioi(model, saes or None, out, inputs=sae_paths,
                         n_prompts=args.n_prompts, seed=args.seed, progress=args.progress, k_layers=args.k_layers,
                         per_head=args.per_head, head_layers=args.head_layers, max_features=args.max_features)
        v = result["validation"]["summary"]["all"]
        print(f"IOI on {args.model}: mean logit(IO) - logit(S) {v['mean_logit_diff']:.2f}, accuracy "
              f"{v['accuracy']:.0%}")
        print(f"circuit layers (S2 patching): {result['patching']['layers']}")
        for kind, r in result["noising"].items():
            print(f"noising {kind}: {r['kept']['all']:.0%} of the logit difference kept")
    print(f"\nwrote {out}")


# ----------------------------------------------------------------------------------------------- the table

# ----------------------------------------------------------------------------------------------- explore

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def explore_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae", nargs="+", required=True, metavar="DIR", help="SAE folders (one per layer) to explore")
    add_model_args(p, sae_default=True)
    p.add_argument("--dashboard", default=None, metavar="DIR",
                   help="a dashboards folder of these SAEs (`attnsae dashboard`): family labels and feature pages")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this machine only; anything else is reachable by others)")
    p.add_argument("--port", type=_port, default=8000, help="port (0 picks a free one)")


def _port(text: str) -> int:
    value = _int_at_least(text, 0)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535, got {value}")
    return value


def run_explore(args: argparse.Namespace) -> None:
    import uvicorn

    from attnsae.serve.app import create_app, listen, url_of

    if args.dashboard is not None and not (Path(args.dashboard) / "index.html").is_file():
        raise AttnsaeError(f"--dashboard {args.dashboard} is not a dashboards folder (no index.html): give the folder "
                           "`attnsae dashboard` or the quickstart wrote")
    saes, model = load_saes_and_model(args.sae, args.model, args.device)
    app = create_app(model, saes, args.dashboard)
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
    "train": ("train attention-output SAEs (the paper's recipe by default; relu, topk or jumprelu)", train_args,
              run_train),
    "cache": ("harvest hook_z activations once into an on-disk cache that `train --cache` reads", cache_args,
              run_cache),
    "eval": ("evaluate SAEs on held-out tokens: sparsity, reconstruction, CE loss recovered, KL, density", eval_args,
             run_eval),
    "dashboard": ("feature dashboards (top examples with DFA), feature families and head polysemanticity",
                  dashboard_args, run_dashboard),
    "attribute": ("explain a feature on a prompt: DFA by source and head, recursive DFA, logit effect",
                  attribute_args, run_attribute),
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


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``attnsae: error:`` line (exit 2) like every other user error."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"attnsae: error: {self.prog.removeprefix('attnsae').strip() or 'usage'}: {message}; see "
                     f"`{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    from attnsae import __version__

    parser = _Parser(prog="attnsae", description="Sparse autoencoders on attention outputs (hook_z).")
    parser.add_argument("--version", action="version", version=f"attnsae {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (help, add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        add_args(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an unexpected error")
        p.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        with stop_on_signals():
            args.func(args)
    except AttnsaeError as e:
        say(f"attnsae: error: {one_line(str(e))}")
        return 2
    except KeyboardInterrupt as e:  # Ctrl+C or SIGTERM (Stopped), after every cleanup on the way out has run
        stopped = e if isinstance(e, Stopped) else Stopped()
        detail = f"; {stopped.detail}" if stopped.detail else ""
        say(f"attnsae: stopped by {stopped.name}{detail}")
        return 128 + stopped.signum
    except OSError as e:  # a full disk is not a bug: the writes that know their file say which one
        if not disk_full(e.filename or ".", e) or args.debug:
            return _internal_error(args, e)
        say(f"attnsae: error: {one_line(str(write_error(e.filename or 'a file', e)))}")
        return 2
    except Exception as e:  # a bug: say so in one line, traceback on request
        return _internal_error(args, e)
    return 0


def _internal_error(args: argparse.Namespace, e: Exception) -> int:
    if args.debug:
        raise e
    text = " ".join(str(e).split())[:300]
    say(f"attnsae: error: internal error (a bug in attnsae): {type(e).__name__}: {text}; rerun with "
        f"`attnsae --debug {args.command} ...` for the traceback and report it")
    return 3


def say(line: str) -> None:
    """One line on stderr in one write: the processes of a distributed run share the terminal, and print's separate
    newline lets their lines run together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` on one line, at most ``limit`` characters: a long middle (a quoted value) is elided, so the end of the
    message, which says what to do, stays."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return f"{text[:keep]} ... {text[-keep:]}"


if __name__ == "__main__":
    sys.exit(main())
