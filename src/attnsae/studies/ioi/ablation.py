"""Feature ablation at S2 with an SAE spliced into hook_z and its error term kept (the paper's IOI experiment).

For each feature active at S2, zero it **at each prompt's own S2 position only** (the public code zeroes it at every
S2 position of the batch in every prompt, i.e. also at other prompts' S2 positions: a bug) and record the change of
``logit(IO) - logit(S)``, split by order (ABBA / BABA). With ``splice_saes(..., with_error=True, edit=...)`` hook_z
becomes ``decode(edit(f)) + (z - decode(f))``: exactly ``z`` when the edit changes nothing, so every change is the
feature's. The comparison: drop the SAE's error term ``z - x_hat`` at S2 (hook_z = ``x_hat`` there, ``z`` elsewhere).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attnsae.activations import hook_z_name
from attnsae.evals.splice import EditFn, splice_saes
from attnsae.sae.checks import check_sae
from attnsae.sae.model import SAE
from attnsae.studies.ioi.dataset import IOIDataset
from attnsae.studies.ioi.patching import BATCH, run_logit_diff, summarize, z_at


def zero_at_positions(features: Sequence[int], pos: Tensor) -> EditFn:
    """An edit for :func:`splice_saes`: zero ``features`` at ``(row i, pos[i])`` of a batch ([b] positions, one per
    prompt); every other entry of ``feature_acts [b, pos, d_sae]`` is returned unchanged."""
    feats = torch.as_tensor(list(features), dtype=torch.long)

    def edit(layer: int, acts: Tensor) -> Tensor:
        out = acts.clone()
        b = torch.arange(acts.shape[0], device=acts.device)
        out[b[:, None], pos.to(acts.device)[:, None], feats.to(acts.device)[None]] = 0
        return out

    return edit


def feature_ablation_hooks(sae: SAE, layer: int, ds: IOIDataset, features: Sequence[int], role: str = "S2"
                           ) -> Callable[[slice], list]:
    """``hooks(rows)``: splice ``sae`` at ``layer`` with its error kept, ``features`` zeroed at each prompt's own
    ``role`` position (for :func:`attnsae.studies.ioi.patching.run_logit_diff`)."""
    from attnsae.evals.splice import splice_hook

    def hooks(rows: slice) -> list:
        edit = zero_at_positions(features, ds.pos[role][rows])
        return [(hook_z_name(layer), splice_hook(sae, layer, with_error=True, edit=edit))]

    return hooks


def error_ablation_hooks(sae: SAE, layer: int, ds: IOIDataset, role: str = "S2") -> Callable[[slice], list]:
    """``hooks(rows)``: hook_z at ``layer`` becomes the SAE's reconstruction ``x_hat`` at each prompt's own ``role``
    position (its error term dropped there) and stays ``z`` everywhere else."""

    def hooks(rows: slice) -> list:
        pos = ds.pos[role][rows]

        def hook(z: Tensor, hook=None) -> Tensor:
            new = z.clone()
            zz = new.reshape(z.shape[0], z.shape[1], sae.d_in)
            b = torch.arange(z.shape[0], device=z.device)
            x = zz[b, pos.to(z.device)].to(sae.device, sae.dtype)  # [b, d_in]
            zz[b, pos.to(z.device)] = sae(x).x_hat.to(z.device, z.dtype)
            return new

        return [(hook_z_name(layer), hook)]

    return hooks


@torch.no_grad()
def active_at(model, sae: SAE, layer: int, ds: IOIDataset, role: str = "S2", batch_size: int = BATCH) -> Tensor:
    """The SAE's feature activations at each prompt's ``role`` position: [n, d_sae]."""
    z = z_at(model, ds, role, [layer], batch_size)[layer]  # [n, n_heads, d_head]
    return sae.encode(z.reshape(len(ds), -1).to(sae.device, sae.dtype)).float().cpu()


def feature_ablation(model, sae: SAE, ds: IOIDataset, features: Sequence[int] | None = None, role: str = "S2",
                     max_features: int | None = None, clean_ld: Tensor | None = None, batch_size: int = BATCH,
                     progress: bool = True) -> dict:
    """Zero-ablate each feature at each prompt's own ``role`` position (SAE spliced, error kept).

    features: default every feature active at ``role`` in some prompt, by total activation there (the first
    ``max_features`` of them when given). Returns ``{"layer", "clean", "spliced", "features": [{feature, n_active,
    mean_act, delta: {all, ABBA, BABA, <template>...}, delta_per_prompt [n]}], "error": {delta...}}`` where delta =
    mean over the prompts of that group of (ablated - clean) logit diff; rows sorted by |delta["all"]|, largest first.
    """
    layer = check_sae(model, sae)
    acts = active_at(model, sae, layer, ds, role, batch_size)  # [n, d_sae]
    if features is None:
        fired = (acts > 0).any(0).nonzero()[:, 0]
        features = fired[torch.argsort(acts[:, fired].sum(0), descending=True)].tolist()
    features = [int(f) for f in features][:max_features]
    if clean_ld is None:
        clean_ld = run_logit_diff(model, ds, batch_size=batch_size)
    with splice_saes(model, {layer: sae}, with_error=True, edit=lambda l, f: f):
        spliced = run_logit_diff(model, ds, batch_size=batch_size)  # the splice itself changes nothing

    def deltas(ld: Tensor) -> dict:
        d = ld - clean_ld
        return {k: v["mean_logit_diff"] for k, v in summarize(d, ds).items()}

    rows = []
    for f in tqdm(features, desc=f"IOI ablating layer {layer} features at {role}", disable=not progress):
        ld = run_logit_diff(model, ds, feature_ablation_hooks(sae, layer, ds, [f], role), batch_size)
        rows.append({"feature": f, "n_active": int((acts[:, f] > 0).sum()), "mean_act": float(acts[:, f].mean()),
                     "delta": deltas(ld), "delta_per_prompt": (ld - clean_ld).tolist()})
    rows.sort(key=lambda r: -abs(r["delta"]["all"]))
    err = run_logit_diff(model, ds, error_ablation_hooks(sae, layer, ds, role), batch_size)
    return {"layer": layer, "role": role, "clean": summarize(clean_ld, ds)["all"]["mean_logit_diff"],
            "spliced_max_abs_change": float((spliced - clean_ld).abs().max()),
            "l0_at_role": float((acts > 0).sum(1).float().mean()), "n_candidates": len(features),
            "features": rows, "error": {"delta": deltas(err), "delta_per_prompt": (err - clean_ld).tolist()}}
