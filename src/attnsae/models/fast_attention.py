"""Fused attention, scoped and hook-complete: ``with fused_attention(model): ...``.

The TransformerBridge recomputes attention in Python (scores, mask, softmax, dropout, pattern matmul) so that it can
expose ``hook_attn_scores`` and ``hook_pattern``. Most of attnsae's forwards read neither (a harvest, an evaluation, a
dashboard scan read ``hook_z`` or the logits), and for them ``softmax(q k^T * scale + mask) v`` through
``torch.nn.functional.scaled_dot_product_attention`` gives the same ``hook_z`` to fp32 rounding, faster.

* **Scoped.** Nothing is changed at load: inside the ``with`` block each plain GPT-2-style attention
  (:class:`JointQKVAttentionBridge`: no per-head result, no fp32 upcast, no inverse-layer scaling) gets
  :func:`_fused_reconstruct` bound as its ``_reconstruct_attention`` *method*, and each plain rotary attention
  (Llama, SmolLM2, Qwen 2, Mistral without a window: :mod:`attnsae.models.fused_rotary`) gets :func:`_fused_rotary`
  bound as its ``forward``; after the block the module is as it was. A ``copy.deepcopy`` of the model taken inside
  the block rebinds the method to the copy, whose modules are not in the block (:data:`_ACTIVE`), so the copy runs
  the bridge's own attention, its own weights and its own hooks (and drops the method at its first call).
* **Hook-complete.** Each call takes the fused path only when nothing could tell the difference; otherwise the
  bridge's own code runs: any hook (forward, pre-forward, backward) on ``hook_attn_scores`` or ``hook_pattern``, any
  global module hook, train mode (attention dropout), a KV cache the bridge extends (``past_key_values`` or
  ``layer_past``: generation), ``output_attentions``, a mask that is not Hugging Face's plain 4D one of the query's
  shape, or a fully masked row.
* **Checked.** At the first entry each layer's attention runs both ways on random inputs of one 8-token context (its
  hooks set aside for the call, so no hook of the user's sees it); on a mismatch (another TransformerLens version, an
  architecture that looks plain but is not) the block runs the bridge's own attention throughout and says so once.
  The verdict is kept per model object.
"""

from __future__ import annotations

import contextlib
import types
import warnings
import weakref
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module

from attnsae.models import fused_rotary

_ACTIVE: weakref.WeakSet = weakref.WeakSet()  # attention modules inside a fused_attention block, fused now
_INSTALLED: weakref.WeakSet = weakref.WeakSet()  # attention modules holding the fused method by a block's doing
_VERDICT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> did the probe agree


def _joint_eligible(attn) -> bool:
    """Whether an attention module is the plain GPT-2-style bridge the fused path reproduces."""
    from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import JointQKVAttentionBridge

    cfg = attn.config
    return (type(attn) is JointQKVAttentionBridge and cfg is not None
            and not getattr(cfg, "scale_attn_by_inverse_layer_idx", False)
            and not getattr(attn, "_reorder_and_upcast_attn", False)
            and not getattr(cfg, "use_attn_result", False))


def method_of(attn) -> str | None:
    """The method the fused path replaces on ``attn`` (``_reconstruct_attention`` or ``forward``); None: not
    eligible."""
    if _joint_eligible(attn):
        return "_reconstruct_attention"
    return "forward" if fused_rotary.eligible(attn) else None


def eligible(attn) -> bool:
    """Whether an attention module is one the fused path reproduces."""
    return method_of(attn) is not None


def hooked(point) -> bool:
    """Whether a module has a hook of its own (forward, pre-forward, backward)."""
    return bool(point._forward_hooks or point._forward_pre_hooks or point._backward_hooks
                or getattr(point, "_backward_pre_hooks", None))


HOOK_KINDS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@contextlib.contextmanager
def hooks_set_aside(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Every hook of each of ``modules`` removed for the block and put back after it (a probe no user hook sees)."""
    saved = [(m, {k: getattr(m, k).copy() for k in HOOK_KINDS if hasattr(m, k)}) for m in modules]
    try:
        for m, hooks in saved:
            for k in hooks:
                getattr(m, k).clear()
        yield
    finally:
        for m, hooks in saved:
            for k, d in hooks.items():
                getattr(m, k).update(d)


def global_hooks() -> bool:
    """Whether a global module hook is registered (it sees every module's call)."""
    return any(getattr(torch_module, name, None) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"))


def _fusable_now(attn, kwargs: dict) -> bool:
    """The conditions every fused call needs (the module docstring's list, less the mask)."""
    if attn not in _ACTIVE or attn.training or kwargs.get("output_attentions"):
        return False
    if kwargs.get("past_key_values") is not None or kwargs.get("layer_past") is not None:
        return False  # the KV cache the bridge's _update_kv_cache extends (generation); transformers' `cache`, an
        # empty DynamicCache in every plain forward, the bridge leaves alone, and so does this path
    return not (hooked(attn.hook_attn_scores) or hooked(attn.hook_pattern) or global_hooks())


def _fusable(attn, q: torch.Tensor, kwargs: dict) -> bool:
    """Whether this GPT-2-style call may take the fused path (the module docstring's list)."""
    if not _fusable_now(attn, kwargs):
        return False
    mask = kwargs.get("attention_mask")
    if mask is None or mask.ndim != 4 or mask.shape[-2] != q.shape[1] or mask.shape[-1] != q.shape[1]:
        return False
    return fused_rotary.mask_verdict(mask)[0]  # a fully masked row (padding): the bridge's own handling of it


def _drop_if_copied(attn, name: str) -> None:
    """A deep copy taken inside a block carries the fused method, rebound to the copy's module, out of the block:
    there its first call removes it, and the copy is the bridge TransformerLens made."""
    if attn not in _INSTALLED and vars(attn).get(name, None) is not None:
        vars(attn).pop(name)


def _fused_rotary(self, *args, **kwargs) -> tuple:
    """A rotary bridge's ``forward`` through SDPA when :func:`_fusable_now` and the call allows it, else the
    bridge's own (bound as a method)."""
    _drop_if_copied(self, "forward")
    if not (_fusable_now(self, kwargs) and fused_rotary.fusable_call(self, args, kwargs)):
        return type(self).forward(self, *args, **kwargs)
    return fused_rotary.fused_forward(self, *args, **kwargs)


def _fused_reconstruct(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> tuple:
    """``_reconstruct_attention`` through SDPA when :func:`_fusable`, else the bridge's own (bound as a method)."""
    _drop_if_copied(self, "_reconstruct_attention")
    if not _fusable(self, q, kwargs):
        return type(self)._reconstruct_attention(self, q, k, v, **kwargs)
    n_heads = self.config.n_heads
    n_kv = getattr(self.config, "n_key_value_heads", None) or n_heads
    q, k, v, batch, seq, d_head = self._reshape_qkv_to_heads(q, k, v, n_heads, n_kv)  # [batch, head, pos, d_head]
    if n_kv != n_heads:
        k = k.repeat_interleave(n_heads // n_kv, dim=1)
        v = v.repeat_interleave(n_heads // n_kv, dim=1)
    z = F.scaled_dot_product_attention(q, k, v, attn_mask=kwargs["attention_mask"], scale=d_head ** -0.5)
    z = self._reshape_attn_output(z, batch, seq, n_heads, d_head)
    return self._apply_output_projection(z), None


def _probe(attn) -> bool | None:
    """Both paths on random inputs of one 8-token causal context: the same output (to the dtype's rounding)? Run on
    the module alone with its hooks set aside for the call, so no hook of the user's sees the probe; None when the
    answer would say nothing (train mode, a global hook: the fused path would not be taken)."""
    if attn.training or global_hooks():
        return None
    param = next(attn.parameters())
    cfg = attn.config
    n_heads, d_head = int(cfg.n_heads), int(cfg.d_head)
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, n * d_head, generator=g).to(param) for n in (n_heads, n_kv, n_kv))
    mask = torch.full((8, 8), torch.finfo(param.dtype).min).triu(1)[None, None].to(param)
    points = [m for m in attn.modules() if type(m).__name__ == "HookPoint"]
    try:
        with hooks_set_aside(points), torch.no_grad():
            if method_of(attn) == "forward":  # a rotary bridge: the whole forward on a hidden state and cos/sin
                x = torch.randn(1, 8, int(cfg.d_model), generator=g).to(param)
                pe = tuple(torch.randn(1, 8, d_head, generator=g).to(param) for _ in "cs")
                kw = {"hidden_states": x, "position_embeddings": pe, "attention_mask": mask}
                plain, fused = type(attn).forward(attn, **kw)[0], fused_rotary.fused_forward(attn, **kw)[0]
            else:
                plain = type(attn)._reconstruct_attention(attn, q, k, v, attention_mask=mask)[0]
                fused = _fused_reconstruct(attn, q, k, v, attention_mask=mask)[0]
    except Exception:  # a private method TransformerLens renamed, or anything else: the bridge's path it is
        return False
    tol = 1e-4 if plain.dtype == torch.float32 else 2e-2
    return torch.allclose(plain.float(), fused.float(), rtol=tol, atol=tol * float(plain.abs().max()) + 1e-6)


@contextlib.contextmanager
def fused_attention(model) -> Iterator[int]:
    """Within the block, every eligible attention layer of ``model`` takes the fused path whenever nothing could tell
    the difference (module docstring); yields how many layers have it (0: none, or the probe disagreed). A nested
    block shares the outer block's state; the model is restored on exit."""
    mods = [b.attn for b in getattr(model, "blocks", []) if getattr(b, "attn", None) is not None and eligible(b.attn)]
    if not mods or any(m in _INSTALLED for m in mods):  # nothing to fuse, or an outer block already did
        yield sum(m in _ACTIVE for m in mods)
        return
    names = [method_of(m) for m in mods]
    saved = [vars(m).get(name) for m, name in zip(mods, names)]
    for m, name in zip(mods, names):
        vars(m)[name] = types.MethodType(_fused_reconstruct if name == "_reconstruct_attention" else _fused_rotary, m)
    _INSTALLED.update(mods)
    try:
        _ACTIVE.update(mods)
        if model not in _VERDICT:
            verdicts = [_probe(m) for m in mods]
            if None not in verdicts:
                _VERDICT[model] = all(verdicts)
                if not _VERDICT[model]:
                    warnings.warn("attnsae: the fused attention disagrees with the bridge's on this model; using the "
                                  "bridge's own attention", RuntimeWarning, stacklevel=3)
        if not _VERDICT.get(model, True):
            _ACTIVE.difference_update(mods)
        yield sum(m in _ACTIVE for m in mods)
    finally:
        _ACTIVE.difference_update(mods)
        _INSTALLED.difference_update(mods)
        for m, name, old in zip(mods, names, saved):
            if old is None:
                vars(m).pop(name, None)
            else:
                vars(m)[name] = old
