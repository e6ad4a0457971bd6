"""Head scores of a causal LM: previous-token and induction scores, and the loss gain on repeated text.

* previous-token score of a head: mean attention from position t to t-1 on text;
* induction score of a head: on ``[BOS] r r`` (r = random tokens), mean attention from the second copy's
  position t to the token right after the first occurrence of token t;
* repeat gain: mean log-probability of the repeated half minus that of the first half.

The reference model's card reports these (``scripts/train_reference_model.py``); the tests check them.
"""

from __future__ import annotations

import torch

def repeated_random_tokens(
    n_seq: int, half: int, vocab_size: int, bos_id: int, seed: int = 0
) -> torch.Tensor:
    """``[BOS] r r`` with ``r`` of ``half`` random non-BOS tokens: ``int64 [n_seq, 1 + 2*half]``."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(0, vocab_size - 1, (n_seq, half), generator=g)
    r = r + (r >= bos_id).long()  # skip the BOS id
    bos = torch.full((n_seq, 1), bos_id, dtype=torch.long)
    return torch.cat([bos, r, r], dim=1)


def repeated_text(rows: torch.Tensor, half: int, bos_id: int) -> torch.Tensor:
    """``[BOS] x x`` with ``x`` the first ``half`` non-BOS tokens of each row: ``int64 [n, 1 + 2*half]``."""
    x = rows[:, 1 : 1 + half]
    bos = torch.full((rows.shape[0], 1), bos_id, dtype=torch.long)
    return torch.cat([bos, x, x], dim=1)


def induction_scores(patterns: list[torch.Tensor], half: int) -> torch.Tensor:
    """Per-head induction score ``[n_layers, n_heads]`` on ``[BOS] r r`` patterns.

    ``patterns[l]``: ``[batch, head, dest, src]``. For destination ``t`` in the second copy (``t = half+1+i``) the
    induction target is the token after the first occurrence: ``src = i + 2``. The last position's target would be
    the first copy's end + 1 = the second copy's first token, which is the right answer too, so all ``half``
    destinations count.
    """
    scores = []
    dest = torch.arange(half + 1, 2 * half + 1)
    src = dest - half + 1
    for p in patterns:
        scores.append(p[:, :, dest, src].mean(dim=(0, 2)))
    return torch.stack(scores)


def previous_token_scores(patterns: list[torch.Tensor]) -> torch.Tensor:
    """Per-head previous-token score ``[n_layers, n_heads]``: mean attention from t to t-1 over t >= 1."""
    scores = []
    for p in patterns:
        t = torch.arange(1, p.shape[-1])
        scores.append(p[:, :, t, t - 1].mean(dim=(0, 2)))
    return torch.stack(scores)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each next token: ``[batch, pos-1]`` from logits ``[batch, pos, vocab]``."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return lp.gather(-1, tokens[:, 1:, None])[..., 0]


def repeat_gain(logits: torch.Tensor, tokens: torch.Tensor, half: int) -> float:
    """Mean log-prob of the second copy minus the first copy's (first copy's first token excluded: after BOS)."""
    lp = token_logprobs(logits, tokens)  # lp[:, j] predicts tokens[:, j+1]
    first = lp[:, 1:half]  # predicts first-copy tokens 2..half
    second = lp[:, half + 1 : 2 * half]  # predicts second-copy tokens 2..half
    return float(second.mean() - first.mean())


@torch.no_grad()
def hf_patterns_and_logits(model, tokens: torch.Tensor, batch_size: int = 32) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Attention patterns (per layer ``[batch, head, dest, src]``) and logits of an HF causal LM (eager attention)."""
    pats: list[list[torch.Tensor]] = []
    logits = []
    for i in range(0, len(tokens), batch_size):
        out = model(tokens[i : i + batch_size], output_attentions=True)
        logits.append(out.logits)
        pats.append(list(out.attentions))
    n_layers = len(pats[0])
    return [torch.cat([p[l] for p in pats]) for l in range(n_layers)], torch.cat(logits)


def head_scores(model, val_rows: torch.Tensor, vocab_size: int, bos_id: int, n_seq: int = 64,
                half: int = 60, text_half: int = 100) -> dict:
    """The model card's head scores for an HF causal LM with eager attention.

    ``val_rows``: ``int64 [n, n_ctx]`` validation contexts (BOS at 0). Returns plain lists:
    ``previous_token`` and ``induction`` ``[n_layers][n_heads]``, ``repeat_gain_random``, ``repeat_gain_text``.
    """
    text = val_rows[:n_seq]
    pats, _ = hf_patterns_and_logits(model, text)
    prev = previous_token_scores(pats)
    rnd = repeated_random_tokens(n_seq, half, vocab_size, bos_id)
    pats, logits = hf_patterns_and_logits(model, rnd)
    ind = induction_scores(pats, half)
    gain_random = repeat_gain(logits, rnd, half)
    rep = repeated_text(val_rows[:n_seq], text_half, bos_id)
    _, logits = hf_patterns_and_logits(model, rep)
    gain_text = repeat_gain(logits, rep, text_half)
    return {
        "previous_token": prev.tolist(), "induction": ind.tolist(),
        "repeat_gain_random": float(gain_random), "repeat_gain_text": float(gain_text),
    }
