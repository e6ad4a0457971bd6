"""The IOI metric and activation patching of ``blocks.{L}.attn.hook_z`` at per-prompt positions.

* :func:`logit_diff`: ``logit(IO) - logit(S)`` at each prompt's own END: [n].
* :func:`validate_ioi`: mean logit diff and accuracy (share of prompts with logit diff > 0); a model that cannot do
  the task is refused with one :class:`AttnsaeError` line.
* Patching (noising): run the corrupted prompts, keep their hook_z at a role's position (``[n, n_heads, d_head]``
  per layer), then run the clean prompts with those rows written over the clean hook_z at the same role's position
  of each clean prompt — all heads (:func:`noise`), or one layer / one head at a time (:func:`patch_scan`). Source
  and destination positions are each prompt's own, so the two datasets need not align token for token.
* :func:`pick_layers`: the layers whose hook_z at S2 carries the most of the logit diff (what the paper's layers 5
  and 6 are in GPT-2 Small), read from the scan rather than assumed.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attnsae.activations import StopForward, hook_z_name
from attnsae.errors import AttnsaeError
from attnsae.models import check_tokens, model_name
from attnsae.studies.ioi.dataset import IOIDataset

BATCH = 32  # prompts per forward pass
MIN_LOGIT_DIFF = 1.0  # validate_ioi's bars: a model below either cannot do IOI
MIN_ACCURACY = 0.8

HookList = list[tuple[str, Callable]]


def logit_diff(logits: Tensor, ds: IOIDataset, rows: slice | None = None) -> Tensor:
    """``logit(IO) - logit(S)`` at END per prompt: logits [b, pos, vocab] of the prompts ``ds[rows]`` -> float [b]."""
    rows = rows or slice(0, len(ds))
    b = torch.arange(logits.shape[0])
    end = ds.pos["END"][rows].to(logits.device)
    at_end = logits[b, end].float()  # [b, vocab]
    return (at_end[b, ds.io_tok[rows].to(logits.device)] - at_end[b, ds.s_tok[rows].to(logits.device)]).cpu()


@torch.no_grad()
def run_logit_diff(model, ds: IOIDataset, hooks: Callable[[slice], HookList] | None = None,
                   batch_size: int = BATCH) -> Tensor:
    """Logit diff per prompt [n], with ``hooks(rows)`` (forward hooks for the prompts ``rows``) in place."""
    tokens = check_tokens(model, ds.tokens, min_len=2)
    out = []
    for i in range(0, len(ds), batch_size):
        rows = slice(i, min(i + batch_size, len(ds)))
        with model.hooks(fwd_hooks=hooks(rows) if hooks else []):
            logits = model(tokens[rows])
        out.append(logit_diff(logits, ds, rows))
    return torch.cat(out)


def summarize(ld: Tensor, ds: IOIDataset) -> dict:
    """Mean logit diff and accuracy over all prompts, per order (ABBA / BABA) and per template."""
    groups = {"all": list(range(len(ds)))}
    for key in sorted(set(ds.orders)) + sorted(set(ds.templates)):
        groups[key] = [i for i, (o, t) in enumerate(zip(ds.orders, ds.templates)) if key in (o, t)]
    return {k: {"n": len(ix), "mean_logit_diff": float(ld[ix].mean()), "accuracy": float((ld[ix] > 0).float().mean())}
            for k, ix in groups.items() if ix}


def validate_ioi(model, ds: IOIDataset, min_logit_diff: float | None = None, min_accuracy: float | None = None,
                 batch_size: int = BATCH) -> dict:
    """The clean run's logit diff per prompt and its summary; refuses a model below either bar (one line).

    The bars default to :data:`MIN_LOGIT_DIFF` and :data:`MIN_ACCURACY`.
    """
    min_logit_diff = MIN_LOGIT_DIFF if min_logit_diff is None else min_logit_diff
    min_accuracy = MIN_ACCURACY if min_accuracy is None else min_accuracy
    ld = run_logit_diff(model, ds, batch_size=batch_size)
    summary = summarize(ld, ds)
    mean, acc = summary["all"]["mean_logit_diff"], summary["all"]["accuracy"]
    if not (mean >= min_logit_diff and acc >= min_accuracy):
        raise AttnsaeError(f"model {model_name(model) or 'given'} cannot do IOI: mean logit(IO) - logit(S) = "
                           f"{mean:.2f} and accuracy {acc:.0%} on {len(ds)} prompts (needs >= {min_logit_diff:g} and "
                           f">= {min_accuracy:.0%}); use a pretrained language model such as smollm2-135m")
    return {"logit_diff": ld.tolist(), "summary": summary}


# ----------------------------------------------------------------------------------------------- hooks


def _heads(z: Tensor, n_heads: int) -> Tensor:
    """hook_z as ``[batch, pos, n_heads, d_head]`` (some bridges give ``[batch, pos, d_in]``): a view."""
    return z.reshape(z.shape[0], z.shape[1], n_heads, -1)


@torch.no_grad()
def z_at(model, ds: IOIDataset, role: str, layers: Sequence[int], batch_size: int = BATCH) -> dict[int, Tensor]:
    """hook_z at each prompt's own ``role`` position: ``{layer: [n, n_heads, d_head]}`` (float32, CPU)."""
    tokens = check_tokens(model, ds.tokens, min_len=2)
    H = int(model.cfg.n_heads)
    layers = sorted({int(l) for l in layers})
    got: dict[int, list[Tensor]] = {l: [] for l in layers}

    def saver(layer: int, pos: Tensor):
        def save(z: Tensor, hook=None) -> Tensor:
            zz = _heads(z, H)
            got[layer].append(zz[torch.arange(zz.shape[0]), pos.to(z.device)].detach().float().cpu())
            if layer == layers[-1]:
                raise StopForward  # nothing after the last hook_z asked for is needed
            return z

        return save

    for i in range(0, len(ds), batch_size):
        rows = slice(i, min(i + batch_size, len(ds)))
        with model.hooks(fwd_hooks=[(hook_z_name(l), saver(l, ds.pos[role][rows])) for l in layers]):
            try:
                model(tokens[rows], return_type=None)
            except StopForward:
                pass
    return {l: torch.cat(v) for l, v in got.items()}


def write_z_hook(src: Tensor, pos: Tensor, heads: Sequence[int] | None, n_heads: int) -> Callable:
    """A forward hook that writes ``src [b, n_heads, d_head]`` over hook_z at ``(row i, pos[i])`` for each row of
    the batch, for ``heads`` only (None: all); every other entry is left as the model computed it."""

    def hook(z: Tensor, hook=None) -> Tensor:
        new = z.clone()
        zz = _heads(new, n_heads)
        b = torch.arange(zz.shape[0], device=z.device)
        hs = slice(None) if heads is None else torch.as_tensor(list(heads), device=z.device)
        s = src.to(z.device, z.dtype)
        if heads is None:
            zz[b, pos.to(z.device)] = s
        else:
            zz[b[:, None], pos.to(z.device)[:, None], hs[None]] = s[:, hs]
        return new

    return hook


def patch_hooks(model, ds: IOIDataset, role: str, sources: Mapping[int, Tensor],
                heads: Mapping[int, Sequence[int] | None] | None = None) -> Callable[[slice], HookList]:
    """``hooks(rows)`` for :func:`run_logit_diff`: at each layer of ``sources`` ({layer: [n, n_heads, d_head]}),
    write the source rows over the clean hook_z at each prompt's ``role`` position (``heads[layer]``, default all)."""
    H = int(model.cfg.n_heads)

    def hooks(rows: slice) -> HookList:
        return [(hook_z_name(l), write_z_hook(src[rows], ds.pos[role][rows], (heads or {}).get(l), H))
                for l, src in sources.items()]

    return hooks


# ----------------------------------------------------------------------------------------------- patching


def noise(model, clean: IOIDataset, corrupted: IOIDataset, layers: Sequence[int], role: str = "S2",
          clean_ld: Tensor | None = None, batch_size: int = BATCH) -> dict:
    """Patch hook_z (all heads) at ``role`` of ``layers`` from the corrupted prompts into the clean ones, together.

    Returns per-prompt ``logit_diff`` [n], its ``summary`` and ``kept`` = mean patched / mean clean logit diff (1:
    the corrupted activations carry the same signal; the paper: 0.93 for corruption A, 0.43 for B in GPT-2 Small).
    """
    if len(corrupted) != len(clean):
        raise AttnsaeError(f"the corrupted set has {len(corrupted)} prompts, the clean one {len(clean)}")
    layers = sorted({int(l) for l in layers})
    if clean_ld is None:
        clean_ld = run_logit_diff(model, clean, batch_size=batch_size)
    sources = z_at(model, corrupted, role, layers, batch_size)
    ld = run_logit_diff(model, clean, patch_hooks(model, clean, role, sources), batch_size)
    summary = summarize(ld, clean)
    clean_summary = summarize(clean_ld, clean)
    kept = {k: v["mean_logit_diff"] / clean_summary[k]["mean_logit_diff"] for k, v in summary.items()}
    return {"layers": layers, "role": role, "logit_diff": ld.tolist(), "summary": summary, "kept": kept}


def patch_scan(model, clean: IOIDataset, corrupted: IOIDataset, roles: Sequence[str] = ("S2", "END"),
               per_head: bool = True, clean_ld: Tensor | None = None, batch_size: int = BATCH,
               progress: bool = True, head_layers: int | None = None) -> dict:
    """Noising one layer, then one head, at a time: hook_z at each ``role`` from the corrupted run.

    ``head_layers``: patch single heads only in the ``head_layers`` layers whose whole-layer patching at that role
    moves the logit diff most (|effect|); None: in every layer (``n_layers x n_heads`` runs per role).

    Returns ``{role: {"layer": [n_layers], "head": [n_layers, n_heads] or None, "head_layers": [scanned layers]}}``
    of the mean patched logit diff minus the clean one (negative: that layer / head carries the signal the
    corruption removes; None for a head of a layer not scanned), with the clean and corrupted means for scale
    (``clean``, ``corrupted``).
    """
    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)
    if clean_ld is None:
        clean_ld = run_logit_diff(model, clean, batch_size=batch_size)
    base = float(clean_ld.mean())
    out: dict = {"clean": base, "corrupted": float(run_logit_diff(model, corrupted, batch_size=batch_size).mean()),
                 "roles": {}}
    k = L if head_layers is None else max(0, min(int(head_layers), L))
    n_runs = len(roles) * (L + (k * H if per_head else 0))
    bar = tqdm(total=n_runs, desc="IOI patching hook_z", disable=not progress)

    def patched(role: str, sources: dict[int, Tensor], layer: int, heads: list[int] | None) -> float:
        hooks = patch_hooks(model, clean, role, {layer: sources[layer]}, None if heads is None else {layer: heads})
        delta = float(run_logit_diff(model, clean, hooks, batch_size).mean()) - base
        bar.update()
        return delta

    for role in roles:
        sources = z_at(model, corrupted, role, range(L), batch_size)
        by_layer = [patched(role, sources, l, None) for l in range(L)]
        scanned = sorted(torch.tensor(by_layer).abs().argsort(descending=True)[:k].tolist()) if per_head else []
        by_head = [[patched(role, sources, l, [h]) for h in range(H)] if l in scanned else [None] * H
                   for l in range(L)] if per_head else None
        out["roles"][role] = {"layer": by_layer, "head": by_head, "head_layers": scanned}
    bar.close()
    return out


def pick_layers(scan: dict, role: str = "S2", k: int = 2) -> list[int]:
    """The ``k`` layers whose patching at ``role`` lowers the logit diff most (ascending layer order)."""
    effect = torch.tensor(scan["roles"][role]["layer"])
    k = max(1, min(k, len(effect)))
    return sorted(int(l) for l in torch.argsort(effect)[:k])


def top_heads(scan: dict, role: str, k: int = 5) -> list[dict]:
    """The ``k`` heads whose patching at ``role`` lowers the logit diff most: ``[{layer, head, delta}]``."""
    head = scan["roles"][role]["head"]
    if head is None:
        return []
    t = torch.tensor([[float("inf") if v is None else v for v in row] for row in head])  # unscanned: never top
    k = min(k, int(t.isfinite().sum()))
    idx = torch.argsort(t.reshape(-1))[:k]
    return [{"layer": int(i) // t.shape[1], "head": int(i) % t.shape[1], "delta": float(t.reshape(-1)[i])}
            for i in idx]
