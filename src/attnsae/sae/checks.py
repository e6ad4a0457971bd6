"""Does an SAE fit a model? One check for every stage that runs an SAE on a model (splice, evals, attribution,
studies), so each refuses the same things with the same line.

An attention SAE reads ``blocks.{L}.attn.hook_z`` (heads concatenated, ``d_in = n_heads * d_head``) of the model it
was trained on, without input normalisation.
"""

from __future__ import annotations

import copy
import hashlib
import operator
import re
from pathlib import Path

import torch

from attnsae.activations import d_in_of, hook_z_name
from attnsae.errors import AttnsaeError
from attnsae.models import model_name
from attnsae.sae.model import SAE

HOOK_Z_RE = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")
# two names of one model: what an SAE's cfg says -> what TransformerLens calls it
MODEL_ALIASES = {"gpt2-small": "gpt2"}


def sae_layer(sae: SAE) -> int | None:
    """The layer an SAE reads, from ``cfg.hook_name`` (else ``cfg.layer``); None if it names neither.

    Raises if the hook is not an attention ``hook_z``, or disagrees with ``cfg.layer``.
    """
    hook = sae.cfg.hook_name
    if not hook:
        return sae.cfg.layer
    m = HOOK_Z_RE.match(hook)
    if m is None:
        raise AttnsaeError(f"the SAE reads {hook!r}, not blocks.{{L}}.attn.hook_z; attnsae works with "
                           "attention-output (hook_z) SAEs only")
    layer = int(m.group(1))
    if sae.cfg.layer is not None and sae.cfg.layer != layer:
        raise AttnsaeError(f"the SAE's config is inconsistent: hook {hook!r} but layer {sae.cfg.layer}; fix cfg.json")
    return layer


def fingerprint(sae: SAE) -> str:
    """A short digest of the SAE's weights (float32 bytes of W_enc, b_enc, W_dec, b_dec, and the threshold): what a
    dashboard records so that a reader can refuse it for other SAEs."""
    h = hashlib.sha256()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        t = getattr(sae, name, None)
        if isinstance(t, torch.Tensor):
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def same_model(a: str, b: str) -> bool:
    """Whether two model names (or local paths) name one model."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()

    def canon(n: str) -> str:
        n = n.rstrip("/").split("/")[-1].lower()
        return MODEL_ALIASES.get(n, n)

    return canon(a) == canon(b)


def check_sae(model, sae: SAE, layer: int | None = None) -> int:
    """Refuse an SAE made for another model, hook, layer or shape; return the layer it reads.

    ``layer`` (default: the SAE's own) must agree with the SAE's own layer when it names one.
    """
    own = sae_layer(sae)
    if layer is None:
        if own is None:
            raise AttnsaeError("the SAE names no hook or layer (cfg.hook_name is empty); set hook_name to "
                               "blocks.{L}.attn.hook_z or give its layer")
        layer = own
    elif own is not None and own != layer:
        raise AttnsaeError(f"the SAE was trained on {hook_z_name(own)}, not {hook_z_name(layer)}; use it at its own "
                           "layer")
    try:
        layer = operator.index(layer)
    except TypeError:
        raise AttnsaeError(f"layer must be an integer, got {layer!r}") from None
    n_layers = int(model.cfg.n_layers)
    if not 0 <= layer < n_layers:
        raise AttnsaeError(f"the SAE reads layer {layer}, but the model has layers 0..{n_layers - 1}; use an SAE "
                           "trained on this model")
    trained_on, ours = sae.cfg.model_name, model_name(model)
    if trained_on and ours and not same_model(trained_on, ours):
        raise AttnsaeError(f"the SAE was trained on model {trained_on!r}, not {ours!r}; pass --model {trained_on}")
    d_in = d_in_of(model)
    if sae.d_in != d_in:
        raise AttnsaeError(f"the SAE has d_in {sae.d_in}, but this model's hook_z has n_heads*d_head = "
                           f"{model.cfg.n_heads}*{model.cfg.d_head} = {d_in}; use an SAE trained on this model")
    if sae.cfg.normalize_activations != "none":
        raise AttnsaeError(f"the SAE uses normalize_activations={sae.cfg.normalize_activations!r}; attnsae supports "
                           "only 'none' (fold the scaling into the weights first)")
    return layer


def cpu_sae(sae: SAE) -> SAE:
    """The SAE itself on the CPU, else a CPU copy (attribution and studies compute on the CPU)."""
    return sae if sae.device.type == "cpu" else copy.deepcopy(sae).cpu()
