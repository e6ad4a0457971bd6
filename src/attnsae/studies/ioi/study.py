"""The whole IOI study (:func:`ioi_study`): validate, find the circuit's layers, ablate features, noise, read features.

Steps, each a function of this package:

1. :func:`build_ioi_dataset` and :func:`validate_ioi` (refuses a model that cannot do IOI);
2. :func:`patch_scan` with the ABC corruption (S2 replaced by a third name): per layer and per head, hook_z at S2 and
   at END; :func:`pick_layers` takes the ``k_layers`` layers where patching S2 costs the most logit diff;
3. :func:`noise` at S2 of those layers from the ABC run (the floor: everything S2 carries there), corruption A (new
   names and filler), A shifted (every position moved) and B (" and" -> another word); each corruption's loss is
   also given as a share of the floor's (``removed_of_floor``);
4. with SAEs, for each SAE layer: :func:`feature_ablation` at S2 (error kept) and the error-term ablation;
5. :func:`dfa_by_role` for the top features by |delta logit diff|.

The result is plain data; :func:`attnsae.jobs.studies.run_ioi` writes it into one folder (``ioi.json``, ``report.md``
and PNG plots, :mod:`attnsae.views.ioi_report`).
"""

from __future__ import annotations

import time
from typing import Mapping, Sequence

import torch

from attnsae.evals.splice import saes_by_layer
from attnsae.models import model_name
from attnsae.sae.model import SAE
from attnsae.studies.ioi.ablation import feature_ablation
from attnsae.studies.ioi.dataset import NAMES, build_ioi_dataset, corrupt
from attnsae.studies.ioi.patching import BATCH, noise, patch_scan, pick_layers, top_heads, validate_ioi
from attnsae.studies.ioi.sources import dfa_by_role


def ioi_study(model, saes: Mapping[int, SAE] | None, n_prompts: int = 80, seed: int = 0, progress: bool = True,
              k_layers: int = 2, per_head: bool = True, head_layers: int | None = 6, top_features: int = 8,
              max_features: int | None = None, connector: str = "alongside", names: Sequence[str] = NAMES,
              batch_size: int = BATCH) -> dict:
    """Run the IOI study on ``model`` and return its result (plain data).

    Args:
        saes: ``{layer: SAE}`` on ``blocks.{layer}.attn.hook_z`` of this model, or None (no feature steps).
        n_prompts: IOI prompts, spread evenly over the templates x orders (ABBA, BABA).
        k_layers: how many layers the S2 patching scan picks for noising (GPT-2 Small's are 5 and 6).
        per_head: also patch single heads (off: per layer only).
        head_layers: patch single heads in the ``head_layers`` layers where whole-layer patching moves the logit
            diff most, at each position (None: every layer, n_layers x n_heads runs per position).
        top_features: features per SAE whose DFA by source position is read.
        max_features: ablate at most this many S2-active features per SAE (the most active first; None: all).
        connector: corruption B's replacement for " and".
        names: candidate names; those that are not one token in the model's tokenizer are dropped.

    Returns the result dict (what ``ioi.json`` holds): ``meta``, ``dataset``, ``validation``, ``patching`` (with
    ``layers``: the picked layers and ``top_heads``), ``noising`` ({"abc", "names_filler", "names_filler_shifted",
    "connector"}), ``ablation`` ({layer: ...}) and ``dfa`` ({layer: [...]}). A model that cannot do IOI is refused in one line first.
    """
    by_layer = saes_by_layer(model, saes) if saes else {}
    t0 = time.time()
    tok = model.tokenizer
    ds = build_ioi_dataset(tok, n_prompts, seed, names)
    validation = validate_ioi(model, ds, batch_size=batch_size)
    clean_ld = torch.tensor(validation["logit_diff"])

    abc = corrupt(tok, ds, "abc", seed + 1)
    scan = patch_scan(model, ds, abc, per_head=per_head, clean_ld=clean_ld, batch_size=batch_size,
                      progress=progress, head_layers=head_layers)
    layers = pick_layers(scan, "S2", k_layers)
    scan.update(layers=layers, top_heads={r: top_heads(scan, r) for r in scan["roles"]})

    noising = {}
    for kind in ("abc", "names_filler", "names_filler_shifted", "connector"):  # abc: the floor of these layers
        c = abc if kind == "abc" else corrupt(tok, ds, kind, seed + 2, connector=connector)
        noising[kind] = noise(model, ds, c, layers, "S2", clean_ld, batch_size)
        noising[kind]["example"] = c.prompts[0]
    floor = noising["abc"]["kept"]
    for kind in ("names_filler", "names_filler_shifted", "connector"):  # the share of what these layers can remove
        noising[kind]["removed_of_floor"] = {g: (1 - v) / (1 - floor[g]) if g in floor and floor[g] != 1 else None
                                             for g, v in noising[kind]["kept"].items()}

    ablation, reading = {}, {}
    for layer, sae in sorted(by_layer.items()):
        ablation[layer] = feature_ablation(model, sae, ds, max_features=max_features, clean_ld=clean_ld,
                                           batch_size=batch_size, progress=progress)
        top = [r["feature"] for r in ablation[layer]["features"][:top_features]]
        reading[layer] = dfa_by_role(model, sae, ds, top)

    result = {
        "meta": {"model": model_name(model), "n_prompts": n_prompts, "seed": seed, "k_layers": k_layers,
                 "head_layers": head_layers,
                 "connector": connector, "names": ds.names, "sae_layers": sorted(by_layer),
                 "seconds": time.time() - t0, "n_layers": int(model.cfg.n_layers),
                 "n_heads": int(model.cfg.n_heads)},
        "dataset": ds.to_dict(), "validation": validation, "patching": scan, "noising": noising,
        "ablation": ablation, "dfa": reading,
    }
    return result

