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
* **Steps aside.** A block is skipped only in a ``start_at_layer`` run that starts after it, and runs after all,
  at each call, when anything could tell: a hook on one of its HookPoints, a hook of the user's (any but
  transformers' and TransformerLens's own output-capturing hooks) on a module inside it, a global module hook, train
  mode, a KV cache that already holds positions (the skipped blocks would add none to it). The whole block steps
  aside (skips nothing) for a model that is not a bridge (HookedTransformer's ``start_at_layer`` skips by itself), in
  train mode, under a global hook, nested in another ``skipped_blocks`` of the same model, or where a block's
  ``forward`` was already set on the instance by someone else.
* **Checked.** At the first use per model and layer a random residual of one 8-position context runs from block L
  both ways, every module hook of the model set aside for the call (no hook of the user's sees it); unless the
  logits are the same bits (an architecture whose blocks hand later blocks more than the residual: Gemma 4's shared
  KV, say) the blocks run, and a warning says so once per model.

Whether the bridge's ``start_at_layer`` run itself equals a whole forward is the caller's to check (Gemma 4's
per-layer inputs are made from the tokens, which a residual input does not have): :func:`attnsae.evals.metrics.
evaluate` compares the two once per layer.
"""

from __future__ import annotations

import contextlib
import types
import warnings
import weakref
from typing import Iterator

import torch
from torch import nn

from attnsae.models.fast_attention import HOOK_KINDS, global_hooks, hooked, hooks_set_aside

_SKIPPING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # block -> its index, while it may be skipped
_VERDICT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {layer: did the probe agree}
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
                if not (getattr(fn, "__module__", None) or "").startswith(FRAMEWORKS):
                    return True
    return False


def _cached(args: tuple, kwargs: dict) -> bool:
    """Whether the call carries a KV cache that already holds positions (generation goes on from it)."""
    return any(callable(getattr(v, "get_seq_length", None)) and v.get_seq_length() > 0
               for v in (*args, *kwargs.values()))


def _pass_through(self, *args, **kwargs):
    """A skipped block's forward: its hidden-state input, unchanged, in a ``start_at_layer`` run that starts after
    it; the block's own forward otherwise (any other run, a deep copy's block, where the method is dropped for good,
    train mode, a KV cache with positions in it) or when a hook could see the difference."""
    index = _SKIPPING.get(self)
    if index is None:
        vars(self).pop("forward", None)
    start = getattr(self, "_start_at_layer_idx", None)
    if (index is None or start is None or index >= start or getattr(self, "_stop_at_layer_idx", None) is not None
            or self.training or global_hooks() or _watched(self) or _cached(args, kwargs)):
        return type(self).forward(self, *args, **kwargs)
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def _installed(blocks: list[nn.Module]) -> Iterator[None]:
    for i, b in enumerate(blocks):
        vars(b)["forward"] = types.MethodType(_pass_through, b)
        _SKIPPING[b] = i
    try:
        yield
    finally:
        for b in blocks:
            _SKIPPING.pop(b, None)
            vars(b).pop("forward", None)


@torch.no_grad()
def _probe(model, layer: int) -> bool:
    """The logits of a random residual entering block ``layer`` (one 8-position context), blocks 0..layer-1 run and
    skipped: the same bits? False when either way fails."""
    param = next(model.parameters())
    g = torch.Generator().manual_seed(0)
    resid = torch.randn(1, 8, int(model.cfg.d_model), generator=g).to(param)
    try:
        with hooks_set_aside(model.modules()):
            plain = model(resid.clone(), start_at_layer=layer)
            with _installed(list(model.blocks)[:layer]):
                skipped = model(resid.clone(), start_at_layer=layer)
    except Exception:  # e.g. a bridge whose layer loop wants more than a hidden state back: run its blocks
        return False
    return torch.equal(plain, skipped)  # skipping computes nothing differently: anything else is state between layers


@contextlib.contextmanager
def skipped_blocks(model, layer: int | None) -> Iterator[int]:
    """Within the block, blocks 0..``layer``-1 of ``model`` (a TransformerBridge) hand their input on unchanged in a
    ``model(resid, start_at_layer=layer)`` run whenever nothing could tell (module docstring). Yields how many blocks
    may be skipped (0: none: ``layer`` None or 0, or the block stepped aside)."""
    blocks = list(getattr(model, "blocks", []))[:layer or 0]
    if (not blocks or not hasattr(model, "_setup_start_at_layer") or model.training or global_hooks()
            or any(b in _SKIPPING or "forward" in vars(b) for b in blocks)):  # nested, or a forward someone else set
        yield 0
        return
    verdicts = _VERDICT.setdefault(model, {})
    if layer not in verdicts:
        verdicts[layer] = _probe(model, layer)
        if not verdicts[layer] and sum(not v for v in verdicts.values()) == 1:  # once per model
            warnings.warn(f"attnsae: blocks 0..{layer - 1} of this model cannot be skipped in a start_at_layer run "
                          "(they change its output or fail when skipped); running them", RuntimeWarning, stacklevel=3)
    if not verdicts[layer]:
        yield 0
        return
    with _installed(blocks):
        yield len(blocks)
