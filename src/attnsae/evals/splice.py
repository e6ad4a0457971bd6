"""Splicing: run a model with SAEs in place of ``blocks.{L}.attn.hook_z``, or with hook_z ablated.

Every helper here is a context manager that adds TransformerLens forward hooks (``model.hooks``) for the duration of
the ``with`` block; any forward pass inside it sees the intervention.

* :func:`splice_saes` replaces ``z [batch, pos, n_heads, d_head]`` by the SAE reconstruction ``x_hat`` (reshaped
  back). With ``with_error=True`` the error term ``z - x_hat`` is added back, so everything downstream is exact;
  an ``edit(layer, feature_acts) -> feature_acts`` callback changes features first, and the error term stays that
  of the unedited features (the paper's IOI feature ablation):

      with_error  edit   hook_z becomes
      False       None   x_hat = decode(f)
      False       g      decode(g(f))
      True        None   z itself (x_hat + (z - x_hat) without the rounding)
      True        g      decode(g(f)) + (z - decode(f))

* :func:`ablate_z` replaces hook_z by zeros (b_O is still added after W_O) or by given mean vectors.
* :func:`mean_z` computes those position-independent means over token contexts.

``keep_bos=True`` leaves position 0 (the forced BOS, which the SAEs are trained without) exactly as the model
computes it; ``edit`` and ``observe`` still see every position, so positions index the same as the tokens.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attnsae.activations import d_in_of, harvest_z, hook_z_name
from attnsae.errors import AttnsaeError
from attnsae.sae.checks import check_sae
from attnsae.sae.model import SAE, SAEOutput

EditFn = Callable[[int, Tensor], Tensor]  # (layer, feature_acts [batch, pos, d_sae]) -> same shape
ObserveFn = Callable[[int, Tensor, SAEOutput], None]  # (layer, z_cat [batch, pos, d_in], SAE output on it)


def saes_by_layer(model, saes: SAE | Sequence[SAE] | Mapping[int, SAE]) -> dict[int, SAE]:
    """Check SAEs against ``model``: a mapping keys them by layer, a sequence uses each SAE's own layer."""
    if isinstance(saes, SAE):
        saes = [saes]
    if isinstance(saes, Mapping):
        return {check_sae(model, sae, layer): sae for layer, sae in saes.items()}
    out: dict[int, SAE] = {}
    for sae in saes:
        layer = check_sae(model, sae)
        if layer in out:
            raise AttnsaeError(f"two SAEs for layer {layer}: give one SAE per layer")
        out[layer] = sae
    return out


def _keep_first(new: Tensor, old: Tensor, keep_bos: bool) -> Tensor:
    """``new`` with position 0 taken from ``old`` when ``keep_bos``; both ``[batch, pos, ...]``."""
    if not keep_bos:
        return new
    return torch.cat([old[:, :1], new[:, 1:]], dim=1)


def splice_hook(sae: SAE, layer: int, with_error: bool = False, edit: EditFn | None = None,
                observe: ObserveFn | None = None, keep_bos: bool = False) -> Callable:
    """The forward hook behind :func:`splice_saes` for one layer (see the module docstring for what it returns)."""

    def hook(z: Tensor, hook=None) -> Tensor:
        if with_error and edit is None and observe is None:
            return z
        z_cat = z.reshape(z.shape[0], z.shape[1], sae.d_in)  # [batch, pos, d_in]
        x = z_cat.to(sae.device, sae.dtype)
        out = sae(x)
        if observe is not None:
            observe(layer, x, out)
        if edit is None:
            new = x if with_error else out.x_hat
        else:
            edited = edit(layer, out.feature_acts)
            if not isinstance(edited, Tensor) or edited.shape != out.feature_acts.shape:
                raise AttnsaeError("an SAE edit function must return feature activations of the shape it was given "
                                   f"{tuple(out.feature_acts.shape)}")
            # with the error term: x + (g(f) - f) W_dec, the same as decode(g(f)) + (x - decode(f)) but exactly x
            # wherever the edit changed nothing
            new = x + (edited - out.feature_acts) @ sae.W_dec if with_error else sae.decode(edited)
        new = _keep_first(new.to(z.device, z.dtype), z_cat, keep_bos)
        return new.reshape(z.shape)

    return hook


@contextlib.contextmanager
def splice_saes(
    model,
    saes: SAE | Sequence[SAE] | Mapping[int, SAE],
    with_error: bool = False,
    edit: EditFn | None = None,
    observe: ObserveFn | None = None,
    keep_bos: bool = False,
) -> Iterator[dict[int, SAE]]:
    """Within the block, hook_z of each SAE's layer is replaced by its reconstruction.

    Args:
        saes: one SAE, a list (each at the layer its ``cfg.hook_name`` names) or ``{layer: sae}``.
        with_error: add back the error term ``z - x_hat`` (then the model's outputs are exactly the clean ones
            unless ``edit`` changes features).
        edit: ``edit(layer, feature_acts [batch, pos, d_sae]) -> feature_acts`` applied before decoding.
        observe: ``observe(layer, z_cat [batch, pos, d_in], SAEOutput)`` called on every forward, e.g. to record
            feature activations.
        keep_bos: leave position 0 untouched.

    Yields ``{layer: sae}``. Bad SAEs (``d_in`` not ``n_heads*d_head``, a hook other than ``blocks.{L}.attn.hook_z``,
    a layer out of range) raise :class:`AttnsaeError` before any hook is added.
    """
    by_layer = saes_by_layer(model, saes)
    hooks = [(hook_z_name(l), splice_hook(sae, l, with_error, edit, observe, keep_bos)) for l, sae in by_layer.items()]
    with model.hooks(fwd_hooks=hooks):
        yield by_layer


def ablate_hook(mean: Tensor | None = None, keep_bos: bool = False) -> Callable:
    """A forward hook that sets hook_z to zero (``mean=None``) or to ``mean`` ([d_in] or [n_heads, d_head])."""

    def hook(z: Tensor, hook=None) -> Tensor:
        if mean is None:
            new = torch.zeros_like(z)
        else:
            new = mean.to(z.device, z.dtype).reshape(z.shape[2:]).expand_as(z)
        return _keep_first(new, z, keep_bos).contiguous()

    return hook


@contextlib.contextmanager
def ablate_z(model, layers: Sequence[int] | Mapping[int, Tensor], keep_bos: bool = False) -> Iterator[None]:
    """Within the block, hook_z is zero-ablated at ``layers`` (a list), or mean-ablated (``{layer: mean [d_in]}``).

    W_O's bias b_O is still added, since hook_z comes before W_O.
    """
    means = dict(layers) if isinstance(layers, Mapping) else {l: None for l in layers}
    n_layers, d_in = int(model.cfg.n_layers), d_in_of(model)
    for l, m in means.items():
        if not 0 <= l < n_layers:
            raise AttnsaeError(f"layer {l} is out of range: the model has layers 0..{n_layers - 1}")
        if m is not None and m.numel() != d_in:
            raise AttnsaeError(f"the mean for layer {l} has {m.numel()} values, not n_heads*d_head = {d_in}")
    with model.hooks(fwd_hooks=[(hook_z_name(l), ablate_hook(m, keep_bos)) for l, m in means.items()]):
        yield


@torch.no_grad()
def mean_z(model, tokens: Tensor, layers: Sequence[int], batch_size: int = 16, keep_bos: bool = False,
           progress: bool = False) -> dict[int, Tensor]:
    """Position-independent mean of z_cat over every context of ``tokens [n, pos]``: ``{layer: float64 [d_in]}``.

    With ``keep_bos`` position 0 is left out of the mean (it is left out of the ablation too).
    """
    sums: dict[int, Tensor] = {}
    n = 0
    for i in tqdm(range(0, len(tokens), batch_size), desc="mean hook_z", disable=not progress):
        zs = harvest_z(model, tokens[i:i + batch_size], list(layers), drop_bos=keep_bos)
        for l, z in zs.items():
            sums[l] = sums.get(l, 0) + z.double().sum(0).cpu()
        n += len(next(iter(zs.values())))
    if n == 0:
        raise AttnsaeError("no tokens to take the mean of hook_z over; give more tokens")
    return {l: s / n for l, s in sums.items()}


__all__ = ["splice_saes", "splice_hook", "ablate_z", "ablate_hook", "mean_z", "saes_by_layer"]
