"""Start a forward at block L without running blocks 0..L-1: ``with skipped_blocks(model, L): model(resid,
start_at_layer=L)``.

TransformerLens's bridge takes ``start_at_layer`` (``input`` is then the residual ``[batch, pos, d_model]`` entering
block L) but still runs blocks 0..L-1 on it, and block L throws their output away when it swaps the residual back
in. An evaluation that intervenes on each layer of a 30-layer model in turn pays for those blocks on every run: half
the model on average. Inside ``skipped_blocks(model, L)`` each of blocks 0..L-1 hands its input on untouched
instead, so block L's output, every hook from block L on and the logits are those of the bridge's own
``start_at_layer`` run, bit for bit, for the cost of blocks L..n-1 alone.

* **Scoped.** Nothing changes at load: inside the ``with`` block each skipped block gets :func:`_pass_through`
  bound as its ``forward``; after the block the module is as it was. A ``copy.deepcopy`` taken inside rebinds the
  method to the copy, whose blocks are not skipping (:data:`_SKIPPING`), so the copy's first call drops it and runs
  the block.
* **Steps aside.** A skipped block runs after all, at each call, when anything could tell: a hook on one of its
  HookPoints, a hook of the user's (any but transformers' and TransformerLens's own) on a module inside it, or a
  global module hook. The whole block steps aside (skips nothing) for a model
  that is not a bridge (HookedTransformer's ``start_at_layer`` skips by itself), in train mode, or nested in another
  ``skipped_blocks`` of the same model.
* **Checked.** At the first use per model and layer a random residual of one 8-position context runs from block L
  both ways, every hook of the model set aside for the call (no hook of the user's sees it); on a mismatch (an
  architecture whose blocks hand later blocks more than the residual) the blocks run, and a warning says so once.
"""

from __future__ import annotations

import contextlib
import types
import warnings
import weakref
from typing import Iterator

import torch
from torch import nn

from attnsae.models.fast_attention import global_hooks, hooked

_SKIPPING: weakref.WeakSet = weakref.WeakSet()  # blocks that pass their input on now
_VERDICT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {layer: did the probe agree}
HOOK_KINDS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
FRAMEWORKS = ("transformers.", "transformer_lens.")  # modules whose own hooks on a block are not a user's


def _watched(block: nn.Module) -> bool:
    """Whether a hook could tell that ``block`` did not run: any hook on one of its HookPoints, or a hook of anyone
    but transformers and TransformerLens (which keep output-capturing hooks on the wrapped modules) on any module in
    it."""
    for m in block.modules():
        if type(m).__name__ == "HookPoint":
            if hooked(m):
                return True
            continue
        for kind in HOOK_KINDS:
            for fn in getattr(m, kind, {}).values():
                if not getattr(fn, "__module__", "").startswith(FRAMEWORKS):
                    return True
    return False


def _pass_through(self, *args, **kwargs):
    """A skipped block's forward: its hidden-state input, unchanged; the block's own forward when it is not skipping
    (a deep copy's block: the method is dropped for good) or when a hook could see the difference."""
    if self not in _SKIPPING:
        vars(self).pop("forward", None)
    if self not in _SKIPPING or global_hooks() or _watched(self):
        return type(self).forward(self, *args, **kwargs)
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def _installed(blocks: list[nn.Module]) -> Iterator[None]:
    for b in blocks:
        vars(b)["forward"] = types.MethodType(_pass_through, b)
    _SKIPPING.update(blocks)
    try:
        yield
    finally:
        _SKIPPING.difference_update(blocks)
        for b in blocks:
            vars(b).pop("forward", None)


@contextlib.contextmanager
def _hooks_set_aside(model: nn.Module) -> Iterator[None]:
    """Every module's hooks removed for the block and put back after it."""
    saved = [(m, {k: getattr(m, k).copy() for k in HOOK_KINDS if hasattr(m, k)}) for m in model.modules()]
    try:
        for m, hooks in saved:
            for k in hooks:
                getattr(m, k).clear()
        yield
    finally:
        for m, hooks in saved:
            for k, d in hooks.items():
                getattr(m, k).update(d)


@torch.no_grad()
def _probe(model, layer: int) -> bool:
    """The logits of a random residual entering block ``layer`` (one 8-position context), blocks 0..layer-1 run and
    skipped: the same (to the dtype's rounding)? False when either way fails."""
    param = next(model.parameters())
    g = torch.Generator().manual_seed(0)
    resid = torch.randn(1, 8, int(model.cfg.d_model), generator=g).to(param)
    try:
        with _hooks_set_aside(model):
            plain = model(resid.clone(), start_at_layer=layer)
            with _installed(list(model.blocks)[:layer]):
                skipped = model(resid.clone(), start_at_layer=layer)
    except Exception:  # a bridge whose layer loop wants more than a hidden state back: run its blocks
        return False
    tol = 1e-4 if plain.dtype == torch.float32 else 2e-2
    return plain.shape == skipped.shape and torch.allclose(
        plain.float(), skipped.float(), rtol=tol, atol=tol * float(plain.abs().max()) + 1e-6)


@contextlib.contextmanager
def skipped_blocks(model, layer: int | None) -> Iterator[int]:
    """Within the block, blocks 0..``layer``-1 of ``model`` (a TransformerBridge) hand their input on unchanged
    whenever nothing could tell (module docstring): run ``model(resid, start_at_layer=layer)`` inside it. Yields how
    many blocks are skipped (0: none, ``layer`` None or 0, or the block stepped aside)."""
    blocks = list(getattr(model, "blocks", []))[:layer or 0]
    if (not blocks or not hasattr(model, "_setup_start_at_layer") or model.training
            or any(b in _SKIPPING for b in blocks)):
        yield 0
        return
    verdicts = _VERDICT.setdefault(model, {})
    if layer not in verdicts:
        verdicts[layer] = _probe(model, layer)
        if not verdicts[layer] and sum(not v for v in verdicts.values()) == 1:  # once per model
            warnings.warn(f"attnsae: skipping blocks 0..{layer - 1} changes this model's output; running them",
                          RuntimeWarning, stacklevel=3)
    if not verdicts[layer]:
        yield 0
        return
    with _installed(blocks):
        yield len(blocks)
