"""The graph job (``attnsae graph``): build a prompt's exact attention graph, prune it as circuit-tracer does, measure
its faithfulness on the real model, and write it (our JSON, and optionally circuit-tracer's viewer files)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from attnsae.errors import AttnsaeError
from attnsae.graph.files import FORMAT


def check_graph_out(out: str, inputs: list[str]) -> Path:
    """``--out``: a new ``.json`` file or an attnsae graph file (replaced), never an input or anyone else's file."""
    from attnsae.io import check_writable_dir

    path = Path(out)
    if path.suffix != ".json":
        raise AttnsaeError(f"--out {out} must be a .json file (the graph)")
    for p in inputs:
        if os.path.lexists(p) and os.path.lexists(path) and os.path.realpath(p) == os.path.realpath(path):
            raise AttnsaeError(f"--out {out} is an input (an SAE); an output never replaces an input: give another "
                               "file")
    if os.path.lexists(path):
        if not path.is_file():
            raise AttnsaeError(f"--out {out} exists and is not a file; give a new .json path")
        try:  # our files open with their format (graph_dict puts it first); a big one is not read whole
            with open(path, "rb") as fh:
                head = fh.read(256).decode("utf-8", "replace")
        except OSError:
            head = ""
        if not re.match(r'\s*\{\s*"format"\s*:\s*"' + FORMAT + '"', head):
            raise AttnsaeError(f"--out {out} exists and is not a graph attnsae wrote; attnsae replaces only its own "
                               "files: give a new path, or remove it first")
    check_writable_dir(path.parent if str(path.parent) else Path("."))
    return path


def check_png_out(png: str, out: Path) -> Path:
    """``--png``: a new .png file, or one an earlier ``attnsae graph`` drew (its Software text); never ``--out``."""
    from attnsae.io import check_writable_dir
    from attnsae.views.graph_plot import SOFTWARE

    path = Path(png)
    if path.suffix != ".png":
        raise AttnsaeError(f"--png {png} must be a .png file")
    if os.path.lexists(path):
        try:
            with open(path, "rb") as fh:
                ours = path.is_file() and SOFTWARE.encode() in fh.read(1 << 14)
        except OSError:
            ours = False
        if not ours:
            raise AttnsaeError(f"--png {png} exists and is not a picture attnsae graph drew; attnsae replaces only "
                               "its own files: give a new path, or remove it first")
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
    path = check_graph_out(out, sae_paths)
    png_path = check_png_out(png, path) if png is not None else None
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

        graph_picture(json.loads(json_text(data)), png_path)
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
