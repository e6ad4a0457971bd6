"""Training state and its checkpoint: everything a killed run needs to resume exactly, written in shards.

    OUT/checkpoint.pt                    the manifest: TrainState, the settings, and each SAE's shard file
    OUT/checkpoint/{sae}.step{N}.pt      one SAE's weights, Adam state and firing statistics at step N

The first process of each module group writes its SAEs' shards (atomically, flushed to the disk); process 0 writes
the manifest once every shard is on disk, then removes the shards of earlier steps. A kill at any moment leaves the
previous manifest with the shards it names. Any layout resumes any checkpoint: each process reads the shards of the
SAEs it trains. (A single-file checkpoint of an earlier attnsae, every SAE in ``checkpoint.pt``, still resumes.)
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from attnsae.errors import AttnsaeError
from attnsae.io import atomic_path, make_dir
from attnsae.sae.model import SAE
from attnsae.training.config import ADDED_SETTINGS

SHARDS = "checkpoint"  # the shard folder beside the manifest checkpoint.pt
_SHARD = re.compile(r"^(.+)\.step(\d+)\.pt$")


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


# ----------------------------------------------------------------------------------------------- writing


def _save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically and flushed to the disk (a kill or a crash leaves the previous file)."""
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


def save_shard(manifest: Path, name: str, step: int, sae: SAE, opt: torch.optim.Optimizer,
               firing: FiringStats) -> str:
    """One SAE's state at ``step`` beside the manifest ``manifest``; returns the shard's path relative to its folder."""
    rel = f"{SHARDS}/{name}.step{step}.pt"
    make_dir(manifest.parent / SHARDS)
    _save({"sae": _cpu(sae.state_dict()), "opt": _cpu(opt.state_dict()), "firing": asdict(firing)},
          manifest.parent / rel)
    return rel


def save_manifest(manifest: Path, state: TrainState, settings: dict[str, Any], shards: dict[str, str]) -> None:
    """The manifest naming every SAE's shard (``{name: relative path}``, in the run's order); then the shards of
    other steps go."""
    _save({"state": asdict(state), "settings": settings, "shards": shards}, manifest)
    keep = set(shards.values())
    folder = manifest.parent / SHARDS
    for f in list(folder.iterdir()) if folder.is_dir() else []:
        if _SHARD.match(f.name) and f"{SHARDS}/{f.name}" not in keep:
            f.unlink(missing_ok=True)


def save_checkpoint(path: Path, state: TrainState, saes: list[SAE], opts: list[torch.optim.Optimizer],
                    firing: list[FiringStats], settings: dict[str, Any], names: list[str]) -> None:
    """Every SAE's shard, then the manifest ``path``: the checkpoint of one process (``names``: the SAEs' names)."""
    shards = {n: save_shard(path, n, state.step, s, o, f) for n, s, o, f in zip(names, saes, opts, firing)}
    save_manifest(path, state, settings, shards)


def merged_state(state: TrainState, records: list[list[dict]], names: list[str]) -> TrainState:
    """``state`` with the resampling records of every module group, in the order one process makes them."""
    by_key = {(r["step"], names.index(r["sae"])): r for rs in records for r in rs}
    return replace(state, resamples=[by_key[k] for k in sorted(by_key)])


def _cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it moved to the CPU (state dicts nest dicts and lists)."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


# ----------------------------------------------------------------------------------------------- reading


def _load(path: Path, what: str) -> Any:
    try:
        return torch.load(path, weights_only=False, map_location="cpu")
    except Exception as e:  # truncated / corrupt pickle or zip, a folder, or another file
        raise AttnsaeError(f"corrupt or truncated {what} {path} ({type(e).__name__}); start over with "
                           "--overwrite") from None


def read_manifest(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's manifest, refused when it was made with other ``settings``."""
    ck = _load(path, "checkpoint")
    if not isinstance(ck, dict) or "state" not in ck or "settings" not in ck:
        raise AttnsaeError(f"corrupt or truncated checkpoint {path} (no training state in it); start over with "
                           "--overwrite")
    saved = {**{k: v for k, v in ADDED_SETTINGS.items() if k in settings}, **ck["settings"]}
    if saved != settings:
        diff = sorted(k for k in set(settings) | set(saved) if settings.get(k) != saved.get(k))
        raise AttnsaeError(f"checkpoint {path} was made with other settings ({', '.join(diff[:5])} differ); resume "
                           "with the same settings, or start over with --overwrite or another --out")
    return ck


def load_checkpoint(path: Path, saes: list[SAE], opts: list[torch.optim.Optimizer], settings: dict[str, Any],
                    indices: list[int], names: list[str]) -> tuple[TrainState, list[FiringStats]]:
    """Restore ``saes`` and ``opts`` in place: the run's SAEs ``indices`` of ``names`` (every SAE of the run, in its
    order); refuse a checkpoint of other settings."""
    ck = read_manifest(path, settings)
    firing = []
    for sae, opt, i in zip(saes, opts, indices):
        if "shards" in ck:
            if names[i] not in ck["shards"]:
                raise AttnsaeError(f"checkpoint {path} has no shard of SAE {names[i]}; start over with --overwrite")
            shard = _load(path.parent / ck["shards"][names[i]], "checkpoint shard")
            sd, od, fd = shard["sae"], shard["opt"], shard["firing"]
        else:  # the single-file checkpoint of an earlier attnsae
            sd, od, fd = ck["saes"][i], ck["opts"][i], ck["firing"][i]
        sae.load_state_dict(sd)
        opt.load_state_dict(od)
        firing.append(FiringStats(**fd))
    return TrainState(**ck["state"]), firing
