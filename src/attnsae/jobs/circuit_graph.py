"""The graph job (``attnsae graph``): build a prompt's exact attention graph, prune it as circuit-tracer does, measure
its faithfulness on the real model, and write it (our JSON, and optionally circuit-tracer's viewer files)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from attnsae.errors import AttnsaeError
from attnsae.graph.files import FORMAT


def _is_graph_file(head: bytes) -> bool:
    """Our graph files open with their format (graph_dict puts it first): a big one is not read whole."""
    return bool(re.match(r'\s*\{\s*"format"\s*:\s*"' + FORMAT + '"', head.decode("utf-8", "replace")))


def _is_graph_picture(head: bytes) -> bool:
    from attnsae.views.graph_plot import SOFTWARE

    return SOFTWARE.encode() in head


def check_output_file(name: str, flag: str, suffix: str, ours: Callable[[bytes], bool], what: str,
                      inputs: list[str], viewer: str | None) -> Path:
    """An output file of ``attnsae graph`` (``--out``, ``--png``), checked before any work: ``suffix``; new, or a file
    an earlier run wrote (``ours`` of its first 16 KiB; ``what`` names such a file); never an input, nor inside one
    (an SAE folder) or inside ``--viewer`` (that folder is replaced whole)."""
    from attnsae.io import check_writable_dir

    path = Path(name)
    if path.suffix != suffix:
        raise AttnsaeError(f"{flag} {name} must be a {suffix} file")
    real = os.path.realpath(path)
    for p in [*inputs, *([viewer] if viewer else [])]:
        folder = os.path.realpath(p)
        if real == folder or real.startswith(folder.rstrip(os.sep) + os.sep):
            what = "--viewer, which is replaced whole" if p == viewer else "an input (an SAE)"
            raise AttnsaeError(f"{flag} {name} is or lies in {what}; an output never replaces or joins an input: "
                               "give a path outside it")
    if os.path.lexists(path):
        try:
            with open(path, "rb") as fh:
                head = fh.read(1 << 14) if path.is_file() else b""
        except OSError:
            head = b""
        if not ours(head):
            raise AttnsaeError(f"{flag} {name} exists and is not {what}; attnsae replaces only its own files: give a "
                               "new path, or remove it first")
    check_writable_dir(path.parent if str(path.parent) else Path("."))
    return path


def graph_job(sae_paths: list[str], prompt: str, target: list[str] | None = None, model: str | None = None,
              device: str = "cpu", out: str = "graph.json", node_threshold: float = 0.8,
              edge_threshold: float = 0.98, viewer: str | None = None, slug: str | None = None,
              faithful: bool = True, top: int = 10, qk: int = 0, png: str | None = None, mlp: str = "leaf",
              progress: bool = True) -> dict:
    """``attnsae graph``: the graph of ``target`` (words as ``--target`` takes them) on ``prompt`` (BOS prepended)
    through the SAEs at ``sae_paths`` (none: every layer split into heads), MLPs as leaves or linear (``mlp``,
    :class:`attnsae.graph.frozen.FrozenPrompt`), written to ``out``; with ``viewer``, also
    circuit-tracer's viewer files into that folder; ``qk`` edges of the pruned graph get their head's attention score
    split (:mod:`attnsae.graph.qk`); ``png``: the pruned graph's picture. Returns the written dict less its nodes and
    edges."""
    from attnsae.attribution.inputs import tokenize
    from attnsae.graph.build import build_from
    from attnsae.graph.export import circuit_tracer_json, write_viewer_files
    from attnsae.graph.faithfulness import faithfulness
    from attnsae.graph.files import graph_dict
    from attnsae.evals.splice import saes_by_layer
    from attnsae.graph.frozen import FrozenPrompt
    from attnsae.graph.prune import check_thresholds, prune, scores
    from attnsae.graph.qk import qk_split, top_edge_heads
    from attnsae.graph.target import TargetSpec, resolve
    from attnsae.io import atomic_dir, atomic_write_text, check_output_dir, json_text, printable
    from attnsae.jobs.inputs import load_saes_and_model
    from attnsae.models import check_device, load_model

    check_thresholds(node_threshold, edge_threshold)
    spec = TargetSpec.parse(target)
    path = check_output_file(out, "--out", ".json", _is_graph_file, "a graph attnsae wrote", sae_paths,
                             viewer)
    png_path = check_output_file(png, "--png", ".png", _is_graph_picture, "a picture attnsae graph drew",
                                 sae_paths, viewer) if png else None
    if viewer is not None:
        check_output_dir(viewer, "graph", sae_paths, flag="--viewer")
    if sae_paths:
        saes, lm = load_saes_and_model(sae_paths, model, device)
    else:
        check_device(device)
        saes, lm = [], load_model(model, device=device)
    fp = FrozenPrompt(lm, saes_by_layer(lm, saes), tokenize(lm, prompt)[0], mlp)
    tgt = resolve(spec, fp, lm.tokenizer)
    graph = build_from(lm, fp, tgt, progress=progress)
    pruned = prune(graph, node_threshold, edge_threshold)
    extra = {"prompt": prompt, "saes": [printable(p) for p in sae_paths], "scores": scores(graph),
             "decomposition": graph.decomposition(), "closure_max_rel_error": graph.closure}
    if faithful:
        extra["faithfulness"] = faithfulness(lm, fp, graph, tgt, pruned.node_mask, top)
    if qk:
        layers: dict = {}
        extra["qk"] = [qk_split(lm, fp, graph, *key, top=5, layers=layers)
                       for key in top_edge_heads(fp, graph, pruned.edge_mask.nonzero()[:, 0], qk)]
    data = graph_dict(graph, pruned, node_threshold, edge_threshold, extra)
    atomic_write_text(json_text(data), path)
    if png_path is not None:
        from attnsae.views.graph_plot import graph_picture

        graph_picture(data, png_path)
    if viewer is not None:
        name = slug or path.stem
        with atomic_dir(viewer, owner="graph", inputs=sae_paths) as tmp:
            write_viewer_files(circuit_tracer_json(graph, pruned, name, node_threshold, prompt, extra["saes"]), tmp)
    summary = {k: v for k, v in data.items() if k not in ("nodes", "edges")}
    summary["top_nodes"] = [{"node": graph.name(i), "effect": float(graph.effect[i]),
                             "value": float(graph.value[i])} for i in _ranked(graph)[:top]]
    summary["out"] = str(path)
    summary["bytes"] = path.stat().st_size
    summary["viewer"] = viewer
    summary["png"] = None if png_path is None else str(png_path)
    return summary


def _ranked(graph) -> list[int]:
    from attnsae.graph.graph import KINDS

    return [i for i in graph.effect.abs().argsort(descending=True).tolist() if KINDS[int(graph.kind[i])] != "target"]
