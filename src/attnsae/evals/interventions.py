"""Interventions on ``blocks.{L}.attn.hook_z``: several edits at once, on SAE features and on attention heads, the
edited run's logits and features, and greedy generation with the edits applied (the explorer's ``/api/intervene``
and ``/api/generate``).

An :class:`Edit` acts on one target, at one position or at every position:

* a **feature** ``(layer, feature)`` of the SAE at ``layer``: its activation ``f_j[t]``. Every SAE is spliced in
  with its error term kept (:func:`attnsae.evals.splice.splice_hook`), so hook_z becomes
  ``z + Σ_j (f'_j[t] − f_j[t]) W_dec[j]``: exactly ``z`` wherever no edit changed anything;
* a **head** ``(layer, head)``: its slice ``z[t, head, :]`` of hook_z ``[pos, n_heads, d_head]``, at any layer, with
  or without an SAE there.

Ops: ``zero`` (x ← 0), ``scale`` (x ← s·x), ``set`` (x ← v; a head's d_head values all become v) and ``patch``
(x ← the same target's value on a second prompt B, as B's clean run has it: activation patching).

* **One layer, both kinds:** head edits act first, on hook_z as the model computed it; the SAE then reads the edited
  hook_z and its feature edits apply. So a head edit moves that layer's features, and :attr:`EditedRun.feature_acts`
  (each SAE's reading of hook_z, before its feature edits) shows it.
* **Overlaps:** two edits of one target at the same position (or one of them at every position) are refused: their
  order would matter.
* **Patch positions:** ``from_position`` is the position of B read into ``position`` of this prompt. Prompts of the
  same length align position by position (``from_position`` defaults to ``position``; ``position=None`` patches every
  position); prompts of different lengths need both ``position`` and ``from_position`` on every patch.
* **Generation** (:func:`generate`): greedy, the whole sequence run again for each new token (no KV cache, so every
  edit sees absolute positions). An edit at one position stays on that prompt token; zero, scale and set at every
  position act on every generated token too; a patch at every position covers the prompt's positions only (B has no
  generated tokens).

The hooks live in ``model.hooks`` for the length of one call and are removed on the way out, an error included.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from attnsae.activations import hook_z_name
from attnsae.errors import AttnsaeError
from attnsae.models.fast_attention import fused_attention
from attnsae.evals.splice import ObserveFn, saes_by_layer, splice_hook
from attnsae.models import model_name, n_ctx
from attnsae.models.hooks import capture
from attnsae.sae.model import SAE, SAEOutput

OPS = ("zero", "scale", "set", "patch")


@dataclass(frozen=True)
class Edit:
    """One edit: a feature (``feature``) or a head (``head``) at ``layer``, at ``position`` (None: every position).

    ``value``: the factor of ``scale``, the value of ``set`` (neither for ``zero`` and ``patch``); ``from_position``:
    the position of prompt B a ``patch`` reads (default: the same position, on prompts of the same length)."""

    layer: int
    feature: int | None = None
    head: int | None = None
    position: int | None = None
    op: str = "zero"
    value: float | None = None
    from_position: int | None = None

    @property
    def kind(self) -> str:
        return "head" if self.head is not None else "feature"

    @property
    def name(self) -> str:
        """``L1/123`` (a feature) or ``L1.H3`` (a head)."""
        return f"L{self.layer}.H{self.head}" if self.head is not None else f"L{self.layer}/{self.feature}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


def _range(what: str, value: int, n: int, whose: str) -> None:
    if not 0 <= value < n:
        raise AttnsaeError(f"{what} {value} is out of range: {whose} {what}s 0..{n - 1}")


def _patch_positions(e: Edit, n_tokens: int, n_source: int | None) -> Edit:
    """A patch with its ``from_position`` filled in by the alignment rule (module docstring), or a refusal."""
    if n_source is None:
        raise AttnsaeError(f"{e.name} is patched from prompt B but no prompt B was given: give the other prompt")
    if e.from_position is not None:
        if e.position is None:
            raise AttnsaeError(f"{e.name}: from_position needs a position too (one position of B patched into one "
                               "of this prompt); leave both out to patch every position")
        _range("position", e.from_position, n_source, "prompt B has")
        return e
    if n_source != n_tokens:
        raise AttnsaeError(f"{e.name}: the prompts differ in length (this one {n_tokens} tokens, B {n_source}), so "
                           "positions do not align: give position and from_position, or prompts of equal length")
    return replace(e, from_position=e.position)


def check_edits(model, saes: Mapping[int, SAE], edits: Sequence[Edit], n_tokens: int,
                n_source: int | None = None) -> list[Edit]:
    """``edits`` checked against the model, its SAEs ``{layer: SAE}``, a prompt of ``n_tokens`` tokens and prompt B
    of ``n_source`` (patches); each patch gets its ``from_position``. Anything wrong is a one-line refusal."""
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    out: list[Edit] = []
    for e in edits:
        if not isinstance(e, Edit):
            raise AttnsaeError(f"an edit must be an Edit, not {type(e).__name__}")
        if (e.feature is None) == (e.head is None):
            raise AttnsaeError(f"an edit at layer {e.layer} names {'both' if e.head is not None else 'neither'} a "
                               "feature and a head: give exactly one")
        if e.head is not None:
            _range("layer", e.layer, n_layers, "the model has")
            _range("head", e.head, n_heads, "the model has")
        else:
            if e.layer not in saes:
                raise AttnsaeError(f"layer {e.layer} has no SAE here, so it has no features to edit: the SAEs read "
                                   f"layers {', '.join(map(str, sorted(saes)))} (a head edit works at any layer)")
            _range("feature", e.feature, saes[e.layer].cfg.d_sae, f"the SAE of layer {e.layer} has")
        if e.position is not None:
            _range("position", e.position, n_tokens, "the prompt has")
        if e.op not in OPS:
            raise AttnsaeError(f"{e.name}: op must be one of {', '.join(OPS)}, not {e.op!r}")
        if e.op in ("scale", "set") and (e.value is None or not math.isfinite(e.value)):
            raise AttnsaeError(f"{e.name}: {e.op} needs a finite value")
        if e.op in ("zero", "patch") and e.value is not None:
            raise AttnsaeError(f"{e.name}: value is for scale and set only; leave it out for {e.op}")
        if e.op == "patch":
            e = _patch_positions(e, n_tokens, n_source)
        elif e.from_position is not None:
            raise AttnsaeError(f"{e.name}: from_position is for patch only")
        for other in out:
            if other.name == e.name and (None in (other.position, e.position) or other.position == e.position):
                where = "every position" if None in (other.position, e.position) else f"position {e.position}"
                raise AttnsaeError(f"two edits of {e.name} overlap at {where}: give one edit per target and position")
        out.append(e)
    return out


@torch.no_grad()
def source_values(model, saes: Mapping[int, SAE], edits: Sequence[Edit], source_tokens: Tensor | None
                  ) -> list[Tensor | None]:
    """For each patch in ``edits`` its target's values on prompt B (``source_tokens`` [S_B], one clean run): a
    feature's activations [S_B], a head's hook_z slice [S_B, d_head]; None for the other edits."""
    patches = [e for e in edits if e.op == "patch"]
    if not patches:
        return [None] * len(edits)
    if source_tokens is None:
        raise AttnsaeError("a patch needs prompt B: give the other prompt")
    z = capture(model, source_tokens[None], sorted({hook_z_name(e.layer) for e in patches}),
                stop_at_layer=max(e.layer for e in patches) + 1)  # the run stops after the deepest patched layer
    acts: dict[int, Tensor] = {}
    out: list[Tensor | None] = []
    for e in edits:
        zl = z[hook_z_name(e.layer)][0] if e.op == "patch" else None  # [S_B, n_heads, d_head]
        if zl is None:
            out.append(None)
        elif e.head is not None:
            out.append(zl[:, e.head])
        else:
            if e.layer not in acts:
                sae = saes[e.layer]
                acts[e.layer] = sae.encode(zl.flatten(1).to(sae.device, sae.dtype)).float().cpu()  # [S_B, d_sae]
            out.append(acts[e.layer][:, e.feature])
    return out


def _apply(e: Edit, x: Tensor, source: Tensor | None) -> None:
    """Edit ``x`` in place: the target's values at every position, [batch, pos] (a feature) or [batch, pos, d_head]
    (a head); ``source``: its values on prompt B, [S_B] or [S_B, d_head] (a patch)."""
    if e.op == "patch":
        src = source.to(x.device, x.dtype)
        if e.position is None:  # every prompt position; generated tokens have no counterpart in B
            n = min(x.shape[1], len(src))
            x[:, :n] = src[:n]
        else:
            x[:, e.position] = src[e.from_position]
        return
    at = slice(None) if e.position is None else e.position
    if e.op == "zero":
        x[:, at] = 0
    elif e.op == "scale":
        x[:, at] *= e.value
    else:
        x[:, at] = e.value


def _layer_hook(heads: list[tuple[Edit, Tensor | None]], splice: Callable | None) -> Callable:
    """The hook_z hook of one layer: the head edits, then the SAE splice (with its feature edits), either optional."""

    def hook(z: Tensor, hook=None) -> Tensor:  # z [batch, pos, n_heads, d_head]
        if heads:
            z = z.clone()
            for e, src in heads:
                _apply(e, z[:, :, e.head], src)
        return splice(z) if splice is not None else z

    return hook


def _feature_edit(feats: list[tuple[Edit, Tensor | None]]) -> Callable[[int, Tensor], Tensor]:
    def edit(layer: int, acts: Tensor) -> Tensor:  # [batch, pos, d_sae]
        acts = acts.clone()
        for e, src in feats:
            _apply(e, acts[:, :, e.feature], src)
        return acts

    return edit


@contextlib.contextmanager
def editing(model, saes: Mapping[int, SAE], edits: Sequence[Edit], sources: Sequence[Tensor | None] | None = None,
            observe: ObserveFn | None = None) -> Iterator[None]:
    """Within the block, every forward pass of ``model`` has ``edits`` applied (checked ones: :func:`check_edits`;
    ``sources`` from :func:`source_values` for patches). ``observe(layer, z_cat, SAEOutput)`` sees every SAE's reading
    of hook_z (then every SAE is spliced in, error kept); without it only the SAEs with feature edits are."""
    sources = list(sources) if sources is not None else [None] * len(edits)
    layers = {e.layer for e in edits} | (set(saes) if observe is not None else set())
    hooks = []
    for layer in sorted(layers):
        heads = [(e, s) for e, s in zip(edits, sources) if e.layer == layer and e.head is not None]
        feats = [(e, s) for e, s in zip(edits, sources) if e.layer == layer and e.feature is not None]
        splice = None
        if layer in saes and (feats or observe is not None):
            splice = splice_hook(saes[layer], layer, with_error=True, edit=_feature_edit(feats) if feats else None,
                                 observe=observe)
        hooks.append((hook_z_name(layer), _layer_hook(heads, splice)))
    with model.hooks(fwd_hooks=hooks):
        yield


@dataclass
class EditedRun:
    """One run with edits: ``logits`` [S, d_vocab] (float32, CPU) and ``feature_acts`` {layer: [S, d_sae]}, each
    SAE's activations as it read hook_z (after the head edits and upstream edits, before its own feature edits);
    ``edits``: as checked (patches with their ``from_position``)."""

    logits: Tensor
    feature_acts: dict[int, Tensor]
    edits: list[Edit]


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def run_edited(model, saes: SAE | Sequence[SAE] | Mapping[int, SAE], tokens: Tensor, edits: Sequence[Edit],
               source_tokens: Tensor | None = None) -> EditedRun:
    """Run ``tokens`` [S] with ``edits`` (``source_tokens`` [S_B]: prompt B, for patches) and every SAE spliced in,
    error terms kept: with no edit, or edits that change nothing, the logits are the model's own."""
    by_layer = saes_by_layer(model, saes)
    edits = check_edits(model, by_layer, edits, len(tokens), None if source_tokens is None else len(source_tokens))
    sources = source_values(model, by_layer, edits, source_tokens)
    acts: dict[int, Tensor] = {}

    def observe(layer: int, x: Tensor, out: SAEOutput) -> None:
        acts[layer] = out.feature_acts[0].detach().float().cpu()

    with editing(model, by_layer, edits, sources, observe), fused_attention(model):  # as the clean capture runs
        logits = model(tokens[None].to(_device(model)), return_type="logits")
    return EditedRun(logits[0].detach().float().cpu(), acts, edits)


@torch.no_grad()
def generate(model, tokens: Tensor, n: int, saes: SAE | Sequence[SAE] | Mapping[int, SAE] | None = None,
             edits: Sequence[Edit] = (), source_tokens: Tensor | None = None,
             max_seconds: float | None = None) -> Tensor:
    """``n`` tokens greedily after ``tokens`` [S] (argmax of the last position's logits, EOS included, nothing
    stops early), with ``edits`` applied at every step (module docstring: how they reach generated tokens): int64
    [n]. With no edits, the model's own greedy continuation. ``max_seconds``: stop adding tokens once that much time
    has passed (at least one is made), so the answer may be shorter than ``n``."""
    from attnsae.models.architecture import describe

    if not describe(model).causal:
        raise AttnsaeError(f"{model_name(model)} attends both ways (an encoder): it cannot generate left to right")
    if n < 1 or len(tokens) + n > n_ctx(model):
        raise AttnsaeError(f"cannot generate {n} tokens after {len(tokens)}: {model_name(model)} reads at most "
                           f"{n_ctx(model)} tokens, so ask for 1..{max(0, n_ctx(model) - len(tokens))}")
    by_layer = saes_by_layer(model, saes) if saes is not None else {}
    edits = check_edits(model, by_layer, edits, len(tokens), None if source_tokens is None else len(source_tokens))
    sources = source_values(model, by_layer, edits, source_tokens)
    seq = tokens.to(_device(model))
    start = time.perf_counter()
    with editing(model, by_layer, edits, sources) if edits else contextlib.nullcontext():
        for _ in range(n):
            logits = model(seq[None], return_type="logits")[0, -1]  # [d_vocab]
            seq = torch.cat([seq, logits.argmax().reshape(1)])
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                break
    return seq[len(tokens):].cpu()


def feature_changes(before: Mapping[int, Tensor], after: Mapping[int, Tensor], k: int, rel_tol: float
                    ) -> tuple[list[dict], dict[int, float]]:
    """The ``k`` largest changes ``after − before`` of feature activations ({layer: [S, d_sae]}) over every layer
    and position, largest |delta| first, leaving out float rounding: ``|delta| <= rel_tol · max(1, the layer's
    largest |activation|)``. Returns (changes [{"layer", "position", "feature", "before", "after", "delta"}],
    {layer: its tolerance})."""
    found: list[dict] = []
    tolerance: dict[int, float] = {}
    for layer in sorted(after):
        b, a = before[layer], after[layer]
        delta = a - b  # [S, d_sae]
        tolerance[layer] = tol = rel_tol * max(1.0, float(b.abs().max()), float(a.abs().max()))
        flat = delta.abs().flatten()
        top = flat.topk(min(k, len(flat)))
        for v, i in zip(top.values.tolist(), top.indices.tolist()):
            if v > tol:
                t, j = divmod(i, delta.shape[1])
                found.append({"layer": layer, "position": t, "feature": j, "before": float(b[t, j]),
                              "after": float(a[t, j]), "delta": float(delta[t, j])})
    found.sort(key=lambda d: -abs(d["delta"]))
    return found[:k], tolerance


__all__ = ["Edit", "OPS", "check_edits", "source_values", "editing", "EditedRun", "run_edited",
           "generate", "feature_changes"]
