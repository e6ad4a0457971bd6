"""Training state and its atomic checkpoint: everything a killed run needs to resume exactly."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnsae.errors import AttnsaeError
from attnsae.io import atomic_path
from attnsae.sae.model import SAE


@dataclass
class FiringStats:
    """When and how often each latent of one SAE fired: int64 [d_sae] each."""

    last_fired: torch.Tensor  # step after the one at which it last fired
    window_fires: torch.Tensor  # fires since the resample window opened
    total_fires: torch.Tensor

    @classmethod
    def zeros(cls, d_sae: int) -> FiringStats:
        return cls(*(torch.zeros(d_sae, dtype=torch.long) for _ in range(3)))

    def update(self, fired: torch.Tensor, step: int) -> None:
        """``fired [d_sae]``: tokens of the batch of ``step`` on which each latent fired."""
        self.last_fired[fired > 0] = step + 1
        self.window_fires += fired
        self.total_fires += fired

    def dead(self, step: int, window: int) -> torch.Tensor:
        """Latents silent for the last ``window`` steps: [d_sae] bool."""
        return (step - self.last_fired) >= window


@dataclass
class TrainState:
    """What a checkpoint holds besides weights, optimiser states and firing statistics."""

    step: int = 0
    batch_index: int = 0  # next stream batch to read (resampling reads batches too)
    tokens_seen: int = 0
    window_tokens: int = 0  # tokens since the resample window opened
    resamples: list[dict] = field(default_factory=list)


def save_checkpoint(path: Path, state: TrainState, saes: list[SAE | dict], opts: list[torch.optim.Optimizer | dict],
                    firing: list[FiringStats], settings: dict[str, Any]) -> None:
    """Write the whole training state to ``path`` atomically (a kill leaves the previous checkpoint); ``saes`` and
    ``opts`` may be given as their state dicts."""
    def sd(o):
        return o if isinstance(o, dict) else o.state_dict()

    obj = {"state": asdict(state), "saes": [sd(s) for s in saes], "opts": [sd(o) for o in opts],
           "firing": [asdict(f) for f in firing], "settings": settings}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            writer = _Writer(f)
            try:
                torch.save(obj, writer)
            except RuntimeError:  # torch reports a failed write as a RuntimeError; the OSError says why (ENOSPC)
                if writer.error is not None:
                    raise writer.error from None
                raise
            f.flush()
            os.fsync(f.fileno())


class _Writer:
    """A file for ``torch.save`` that keeps the OSError of a failed write (torch only says "unexpected pos")."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def load_checkpoint(path: Path, saes: list[SAE], opts: list[torch.optim.Optimizer], settings: dict[str, Any],
                    indices: list[int] | None = None) -> tuple[TrainState, list[FiringStats]]:
    """Restore ``saes`` and ``opts`` in place from ``path`` (the run's SAEs ``indices``, default all); refuse a
    checkpoint of other settings."""
    try:
        ck = torch.load(path, weights_only=False)
        ck["state"], ck["settings"]
    except Exception as e:  # truncated / corrupt pickle or zip, or another file
        raise AttnsaeError(f"corrupt or truncated checkpoint {path} ({type(e).__name__}); start over with "
                           "--overwrite") from None
    if ck["settings"] != settings:
        diff = sorted(k for k in set(settings) | set(ck["settings"]) if settings.get(k) != ck["settings"].get(k))
        raise AttnsaeError(f"checkpoint {path} was made with other settings ({', '.join(diff[:5])} differ); resume "
                           "with the same settings, or start over with --overwrite or another --out")
    indices = range(len(saes)) if indices is None else indices
    for sae, opt, i in zip(saes, opts, indices):
        sae.load_state_dict(ck["saes"][i])
        opt.load_state_dict(ck["opts"][i])
    return TrainState(**ck["state"]), [FiringStats(**ck["firing"][i]) for i in indices]
