"""Next-token loss of a run, a chunk of positions at a time: ``LossHead`` runs the model (from the tokens, or from
a recorded residual at block L with blocks 0..L-1 skipped) and scores the run's CE and KL into ``LossSums``.

See :mod:`attnsae.evals.metrics` (its "Memory" paragraph) for why the logits are made a chunk at a time.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from attnsae.activations import StopForward
from attnsae.errors import AttnsaeError
from attnsae.models.architecture import param
from attnsae.models.skip_blocks import skipped_blocks

MAX_CHUNK_BYTES = 256 * 2**20  # default budget of one position chunk's [rows, d_vocab] float32 tensors
KEEP_CLEAN_BYTES = 512 * 2**20  # the clean run's log-probabilities kept per batch when they fit (LossHead.keep)
KEEP_RESIDUAL_BYTES = 512 * 2**20  # the clean run's residuals kept per batch when they fit (LossHead.run's record)
LIVE_CHUNK_TENSORS = 4  # [rows, d_vocab] float32 tensors (or their equivalent) alive at once while scoring a chunk


class LossSums:
    """Streaming sums of next-token CE and KL(clean || this run) over predicted positions."""

    def __init__(self) -> None:
        self.ce = self.kl = 0.0
        self.n = 0
        self.rows: dict[str, list[Tensor]] = {"ce": [], "kl": [], "n": []}  # per context, one tensor per batch
        self._batch: dict[str, Tensor] = {}  # the current batch's per-context sums, over its chunks

    def update(self, logp: Tensor, targets: Tensor, logp_clean: Tensor | None = None) -> None:
        """Add one chunk of predicted positions.

        Args:
            logp: this run's float32 log-probabilities ``[..., d_vocab]``.
            targets: the next tokens ``[...]``.
            logp_clean: the clean run's log-probabilities at the same positions ``[..., d_vocab]`` for the KL; it is
                overwritten (the KL is reduced in place, so that no further ``[..., d_vocab]`` tensor is made).
        """
        rows = {"ce": -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double().flatten(1).sum(1),
                "n": torch.full((targets.shape[0],), targets[0].numel(), dtype=torch.float64)}  # [batch]
        self.ce += rows["ce"].sum().item()
        if logp_clean is not None:
            p_clean = logp_clean.exp()
            diff = logp_clean.sub_(logp)  # logp_clean - logp
            rows["kl"] = p_clean.mul_(diff).sum(-1).double().flatten(1).sum(1)
            self.kl += rows["kl"].sum().item()
        self.n += targets.numel()
        for k, v in rows.items():
            self._batch[k] = self._batch[k] + v.cpu() if k in self._batch else v.cpu()

    def end_batch(self) -> None:
        """The batch's chunks are all in: keep its per-context sums (rows of the batch are contexts)."""
        for k, v in self._batch.items():
            self.rows[k].append(v)
        self._batch = {}

    def per_context(self, key: str) -> Tensor:
        """float64 [n_contexts]: a sum (``ce``, ``kl``, ``n`` predictions) per context."""
        return torch.cat(self.rows[key])

    @property
    def mean_ce(self) -> float:
        return self.ce / self.n

    @property
    def mean_kl(self) -> float:
        return self.kl / self.n


class LossHead:
    """Next-token log-probabilities of a run, a chunk of positions at a time (see the module docstring).

    ``run(tokens)`` returns the run's *states*: the final norm's output ``[batch, pos, d_model]`` when ``linear``
    (the forward stops there), else the model's logits ``[batch, pos, d_vocab]``. ``score`` turns states into CE and
    KL sums chunk by chunk.
    """

    def __init__(self, model, linear: bool, max_chunk_bytes: int = MAX_CHUNK_BYTES,
                 keep_bytes: int | None = None) -> None:
        self.model, self.linear = model, linear
        self.keep_bytes = KEEP_CLEAN_BYTES if keep_bytes is None else keep_bytes
        self.d_vocab = int(model.cfg.d_vocab)
        self.max_chunk_bytes = max_chunk_bytes
        if linear:
            self.W = model.W_U.T  # [d_vocab, d_model], the LM head's own weight (a view)
            b = param(model, "b_U")
            self.b = None if b is None else b.to(self.W.device, self.W.dtype)  # [d_vocab]

    def run(self, inputs: Tensor, start_at_layer: int | None = None, record: dict[int, Tensor] | None = None
            ) -> Tensor:
        """One run's states: ``[batch, pos, d_model]`` (linear head) or ``[batch, pos, d_vocab]``.

        Args:
            inputs: tokens ``[batch, pos]``; with ``start_at_layer=L``, the residual entering block L
                ``[batch, pos, d_model]`` (as ``record`` kept it), the blocks before L skipped
                (:func:`attnsae.models.skip_blocks.skipped_blocks`).
            record: ``{layer: ...}`` whose values this run sets to the residual entering that block (detached).
        """
        box: dict[str, Tensor] = {}
        record = {} if record is None else record

        def keep(layer: int):
            def save(x: Tensor, hook) -> Tensor:
                record[layer] = x.detach().clone()
                return x

            return save

        def stop(h: Tensor, hook) -> Tensor:
            box["h"] = h.detach()
            raise StopForward  # nothing after the final norm is needed: skip the [batch, pos, d_vocab] logits

        hooks = [(f"blocks.{layer}.hook_resid_pre", keep(layer)) for layer in record]
        kw = {} if start_at_layer is None else {"start_at_layer": start_at_layer}
        with skipped_blocks(self.model, start_at_layer):
            if not self.linear:
                return self.model.run_with_hooks(inputs, fwd_hooks=hooks, **kw)
            try:
                self.model.run_with_hooks(inputs, fwd_hooks=hooks + [("ln_final.hook_out", stop)], return_type=None,
                                          **kw)
            except StopForward:
                pass
        if "h" not in box:
            raise AttnsaeError("the model's forward never reached ln_final.hook_out, so CE cannot be measured")
        return box["h"]

    def to_record(self, tokens: Tensor, layers: Sequence[int]) -> dict[int, Tensor | None] | None:
        """``{layer: None}`` for the clean run on ``tokens [batch, pos]`` to fill (:meth:`run`'s ``record``), so that
        each intervened run can start at its layer with the blocks before it skipped; None (every run starts from the
        tokens) when the residuals would not fit :data:`KEEP_RESIDUAL_BYTES` or the model names no
        ``hook_resid_pre``."""
        size = next(self.model.parameters()).element_size()
        if len(layers) * tokens.numel() * int(self.model.cfg.d_model) * size > KEEP_RESIDUAL_BYTES:
            return None
        if any(f"blocks.{layer}.hook_resid_pre" not in self.model.hook_dict for layer in layers):
            return None
        return dict.fromkeys(layers)

    def logp(self, states: Tensor) -> Tensor:
        """states ``[batch, n, d]`` -> float32 log-probabilities ``[batch, n, d_vocab]``."""
        logits = F.linear(states, self.W, self.b) if self.linear else states
        return F.log_softmax(logits.float(), dim=-1)

    def chunk_positions(self, batch: int) -> int:
        """Positions per chunk: ``[batch * n, d_vocab]`` float32 tensors, :data:`LIVE_CHUNK_TENSORS` of them alive
        at once, within ``max_chunk_bytes`` (at least one position)."""
        rows = self.max_chunk_bytes // (LIVE_CHUNK_TENSORS * 4 * self.d_vocab)
        return max(1, rows // batch)

    def chunks(self, batch: int, pos: int) -> Iterator[slice]:
        """Slices of the ``pos - 1`` predicted positions (the last position predicts nothing)."""
        n = self.chunk_positions(batch)
        return (slice(s, min(s + n, pos - 1)) for s in range(0, pos - 1, n))

    def keep(self, clean: Tensor) -> list[Tensor] | None:
        """The clean run's log-probabilities chunk by chunk (``[batch, n, d_vocab]`` each), kept for the batch's
        intervened runs when they fit :data:`KEEP_CLEAN_BYTES`, so that each run computes one LM head, not two; else
        None (each run recomputes them). ``clean``: the clean run's states ``[batch, pos, d]``."""
        b, s = clean.shape[:2]
        if b * (s - 1) * self.d_vocab * 4 > self.keep_bytes:
            return None
        return [self.logp(clean[:, sl]) for sl in self.chunks(b, s)]

    def score(self, states: Tensor, targets: Tensor, sums: LossSums, clean: Tensor | None = None,
              kept: list[Tensor] | None = None) -> None:
        """Add a run's CE (and, given the clean run's states ``clean``, its KL) to ``sums``.

        states, clean: ``[batch, pos, d]``; targets: ``[batch, pos - 1]``; kept: the clean run's log-probabilities
        (:meth:`keep`), used for the KL instead of recomputing them, and as the run's own when ``clean`` is None
        (``states`` is then the clean run). The values are the same either way.
        """
        for i, sl in enumerate(self.chunks(*states.shape[:2])):
            if clean is None:
                sums.update(kept[i] if kept is not None else self.logp(states[:, sl]), targets[:, sl])
            else:
                ref = kept[i].clone() if kept is not None else self.logp(clean[:, sl])  # update() overwrites it
                sums.update(self.logp(states[:, sl]), targets[:, sl], ref)
        sums.end_batch()
