"""What attribution reads from the user and from the model: checked SAEs, prompts, features, and hook captures.

Every bad input is one :class:`AttnsaeError` line: an SAE trained on another hook or model, a feature index out of
range, a prompt longer than the model's context.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor

from attnsae import splice
from attnsae.errors import AttnsaeError
from attnsae.models import model_name
from attnsae.sae import SAE



def sae_layer(sae: SAE) -> int:
    """The layer whose ``blocks.{L}.attn.hook_z`` the SAE reads (from ``cfg.hook_name``, else ``cfg.layer``)."""
    layer = splice.sae_layer(sae)
    if layer is None:
        raise AttnsaeError("the SAE names no hook (cfg.hook_name) or layer; set hook_name to blocks.{L}.attn.hook_z")
    return layer


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def check_sae_fits(model, sae: SAE) -> int:
    """Refuse an SAE made for another model, hook or shape; return its layer."""
    layer = sae_layer(sae)
    c = model.cfg
    if not 0 <= layer < c.n_layers:
        raise AttnsaeError(f"the SAE reads layer {layer}, but the model has layers 0..{c.n_layers - 1}; "
                           "it was trained on another model")
    trained_on, ours = sae.cfg.model_name, model_name(model)
    if trained_on and ours and not _same_model(trained_on, ours):
        raise AttnsaeError(f"the SAE was trained on model {trained_on!r}, not {ours!r}; pass --model {trained_on}")
    d_in = c.n_heads * c.d_head
    if sae.cfg.d_in != d_in:
        raise AttnsaeError(f"the SAE has d_in {sae.cfg.d_in}, but this model's hook_z has n_heads*d_head = {d_in}; "
                           "it was trained on another model")
    if sae.cfg.normalize_activations != "none":
        raise AttnsaeError(f"attribution needs an SAE without input normalisation, not normalize_activations="
                           f"{sae.cfg.normalize_activations!r}")
    return layer


def cpu_sae(sae: SAE) -> SAE:
    """The SAE itself on the CPU, else a CPU copy (attribution computes on the CPU)."""
    return sae if sae.device.type == "cpu" else copy.deepcopy(sae).cpu()


def check_features(sae: SAE, features: int | Iterable[int]) -> list[int]:
    """Feature indices as a list, each in ``0..d_sae-1``."""
    feats = [features] if isinstance(features, int) else [int(f) for f in features]
    for f in feats:
        if not 0 <= f < sae.cfg.d_sae:
            raise AttnsaeError(f"feature {f} is out of range: the SAE has features 0..{sae.cfg.d_sae - 1}")
    if not feats:
        raise AttnsaeError("no features given")
    return feats


def check_tokens(model, tokens: Tensor) -> Tensor:
    """tokens as int64 ``[batch, pos]`` that fits the model's context."""
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.shape[1] == 0 or tokens.shape[0] == 0:
        raise AttnsaeError(f"tokens must be [batch, pos] with pos >= 1, got shape {tuple(tokens.shape)}")
    n_ctx = int(model.cfg.n_ctx)
    if tokens.shape[1] > n_ctx:
        raise AttnsaeError(f"the prompt is {tokens.shape[1]} tokens long, longer than the model's context of "
                           f"{n_ctx} tokens; shorten it")
    return tokens.long()


def tokenize(model, prompts: str | Sequence[str], prepend_bos: bool = True) -> tuple[Tensor, Tensor]:
    """Prompts -> (tokens int64 [batch, pos] right-padded with BOS, lengths int64 [batch]).

    BOS is prepended as in training (``prepend_bos``). Right padding is harmless under causal attention: a padded
    position never influences an earlier one, and attribution ignores destinations at or past ``lengths[b]``.
    """
    from attnsae.corpus import bos_token_id

    tok = model.tokenizer
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not texts:
        raise AttnsaeError("no prompts given")
    bos = bos_token_id(tok)
    rows = [([bos] if prepend_bos else []) + list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    if min(len(r) for r in rows) == 0:
        raise AttnsaeError("a prompt is empty; give some text")
    S = max(len(r) for r in rows)
    tokens = torch.full((len(rows), S), bos, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = torch.tensor(r)
    return check_tokens(model, tokens), torch.tensor([len(r) for r in rows])


def token_strings(model, tokens: Tensor) -> list[str]:
    """Readable strings of a 1-D token sequence."""
    return [model.tokenizer.decode([int(t)]) for t in tokens]


@torch.no_grad()
def capture(model, tokens: Tensor, names: list[str], stop_at_layer: int | None = None) -> dict[str, Tensor]:
    """Run the model on ``tokens`` and return the named hook activations (detached, float32).

    Names the model lacks (``hook_pos_embed`` in a rotary model) are skipped. The run stops before block
    ``stop_at_layer`` when given.
    """
    hook_dict = model.hook_dict
    names = [n for n in names if n in hook_dict]
    out: dict[str, Tensor] = {}

    def saver(name: str):
        def save(x: Tensor, hook) -> Tensor:
            out[name] = x.detach().float()
            return x

        return save

    device = next(model.parameters()).device
    stop = stop_at_layer if stop_at_layer is not None and stop_at_layer < model.cfg.n_layers else None
    model.run_with_hooks(tokens.to(device), fwd_hooks=[(n, saver(n)) for n in names], stop_at_layer=stop,
                         return_type=None)
    return {n: x.cpu() for n, x in out.items()}
