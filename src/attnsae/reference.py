"""The shipped reference model: its architecture, training mix, and the scores its model card reports.

A 2-layer GPT-2 (d_model 256, 8 heads, n_ctx 256, MLPs) trained on the standard library's source. The training mix
plants repeated spans so that induction heads form early (see ``mix_batch``). The scores here are the ones the
model card and the tests use:

* previous-token score of a head: mean attention from position t to t-1 on validation text;
* induction score of a head: on ``[BOS] r r`` (r = random tokens), mean attention from the second copy's
  position t to the token right after the first occurrence of token t;
* repeat gain: mean log-probability of the repeated half minus that of the first half.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

REFERENCE_NAME = "attnsae-stdlib-2l"
REFERENCE_DIR = Path(__file__).parent / "reference"
EOT_TOKEN = "<|endoftext|>"


@dataclass
class ReferenceConfig:
    """Architecture and recipe of the reference model (all defaults are the shipped run's)."""

    vocab_size: int = 8192
    n_layer: int = 2
    n_head: int = 8
    d_model: int = 256
    n_ctx: int = 256
    batch_size: int = 32
    total_tokens: int = 24_000_000
    tail_tokens: int = 0  # after the cosine schedule, this many more tokens at the final learning rate
    lr: float = 2e-3
    min_lr_frac: float = 0.1
    warmup_steps: int = 200
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    repeat_text_frac: float = 0.25
    repeat_random_frac: float = 0.25
    repeat_min: int = 16
    repeat_max: int = 127
    seed: int = 0

    @property
    def schedule_steps(self) -> int:
        """Steps of the warm-up + cosine schedule."""
        return -(-self.total_tokens // (self.batch_size * self.n_ctx))

    @property
    def total_steps(self) -> int:
        """All steps: the schedule, then ``tail_tokens`` at the final learning rate."""
        return self.schedule_steps + -(-self.tail_tokens // (self.batch_size * self.n_ctx))

    def lr_at(self, step: int) -> float:
        """Linear warm-up from 0, then cosine from ``lr`` down to ``min_lr_frac * lr`` at the last step."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        t = (step - self.warmup_steps) / max(1, self.schedule_steps - self.warmup_steps)
        t = min(t, 1.0)
        return self.lr * (self.min_lr_frac + (1 - self.min_lr_frac) * 0.5 * (1 + np.cos(np.pi * t)))

    def to_dict(self) -> dict:
        return asdict(self)


def gpt2_config(cfg: ReferenceConfig, eot_id: int):
    """The HF ``GPT2Config`` of the reference architecture (no dropout, tied embeddings)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.n_ctx,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        tie_word_embeddings=True,
    )


def mix_batch(
    stream: np.ndarray, cfg: ReferenceConfig, rng: np.random.Generator, bos_id: int
) -> np.ndarray:
    """One training batch ``int64 [batch_size, n_ctx]`` of the reference mix.

    Every row starts with BOS followed by a random window ``x`` of the token stream. A ``repeat_text_frac`` share of
    rows become ``[BOS] x[:n] x[:n] x[n:]`` (truncated), a ``repeat_random_frac`` share get ``n`` uniformly random
    tokens written twice in a row at a random offset; ``n`` is uniform in ``[repeat_min, repeat_max]``.
    """
    B, T = cfg.batch_size, cfg.n_ctx
    starts = rng.integers(0, len(stream) - T, size=B)
    kinds = rng.random(B)
    ns = rng.integers(cfg.repeat_min, cfg.repeat_max + 1, size=B)
    out = np.empty((B, T), dtype=np.int64)
    out[:, 0] = bos_id
    for b in range(B):
        x = stream[starts[b] : starts[b] + T - 1]
        n = int(ns[b])
        if kinds[b] < cfg.repeat_text_frac:
            out[b, 1:] = np.concatenate([x[:n], x[:n], x[n:]])[: T - 1]
        else:
            out[b, 1:] = x
            if kinds[b] < cfg.repeat_text_frac + cfg.repeat_random_frac:
                r = rng.integers(0, cfg.vocab_size, size=n)
                r[r == bos_id] = (bos_id + 1) % cfg.vocab_size
                off = int(rng.integers(1, T - 2 * n + 1))
                out[b, off : off + n] = r
                out[b, off + n : off + 2 * n] = r
    return out


# ----------------------------------------------------------------------------------------------- scores


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
        "previous_token": [[round(float(v), 4) for v in row] for row in prev],
        "induction": [[round(float(v), 4) for v in row] for row in ind],
        "repeat_gain_random": round(gain_random, 4),
        "repeat_gain_text": round(gain_text, 4),
    }
