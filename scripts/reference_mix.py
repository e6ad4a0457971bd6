"""The shipped reference model's architecture and training mix (its head scores: :mod:`attnsae.studies.head_scores`).

A 2-layer GPT-2 (d_model 256, 8 heads, n_ctx 256, MLPs) trained on the standard library's source. The training mix
plants repeated spans so that induction heads form early (see ``mix_batch``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import numpy as np


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
