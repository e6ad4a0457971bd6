"""What attribution reads from the user and from the model: checked SAEs, prompts, features, and hook captures.

Every bad input is one :class:`AttnsaeError` line: an SAE trained on another hook or model, a feature index out of
range, a prompt longer than the model's context.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

from attnsae.errors import AttnsaeError
from attnsae.models import check_tokens
from attnsae.sae.model import SAE



def check_features(sae: SAE, features: int | Iterable[int]) -> list[int]:
    """Feature indices as a list, each in ``0..d_sae-1``."""
    feats = [features] if isinstance(features, int) else [int(f) for f in features]
    for f in feats:
        if not 0 <= f < sae.cfg.d_sae:
            raise AttnsaeError(f"feature {f} is out of range: the SAE has features 0..{sae.cfg.d_sae - 1}")
    if not feats:
        raise AttnsaeError("no features given")
    return feats


def tokenize(model, prompts: str | Sequence[str], prepend_bos: bool = True) -> tuple[Tensor, Tensor]:
    """Prompts -> (tokens int64 [batch, pos] right-padded with BOS, lengths int64 [batch]).

    BOS (CLS in an encoder) is prepended as in training (``prepend_bos``). Right padding is harmless under causal
    attention: a padded position never influences an earlier one, and attribution ignores destinations at or past
    ``lengths[b]``. An encoder attends both ways, so its runs take :func:`attention_mask` of the lengths.
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


