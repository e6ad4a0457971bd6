"""Training on many processes with ``torch.distributed`` (launched by ``torchrun``): data and module parallel.

A run of ``W`` processes is laid out as ``M`` *module groups* (``--module-parallel M``) of ``D = W / M`` ranks each:

* **module parallel**: group ``m`` owns a contiguous block of the run's layers (:meth:`Comm.own_layers`) and trains
  only their SAEs; it harvests only up to its deepest layer;
* **data parallel**: the ``D`` ranks of a group hold the same SAEs. Each harvests its own share of every buffer
  chunk (model batches ``j`` with ``j % D == d``); the shares are all-gathered back into the chunk one process would
  have harvested, so batch ``i`` is the same global batch at every world size. Each rank trains on rows
  ``[d·B/D, (d+1)·B/D)`` of it; gradients and the per-step statistics (firing counts, L0, the AuxK normaliser) are
  averaged or summed over the group, so every rank takes the same optimiser step as one process on the global batch
  (to fp32 summation order). BatchTopK and Matryoshka are the exception: each rank keeps the top ``k x rows`` of its
  own share of the batch (not of the global batch), and their inference threshold follows the smallest activation
  any rank kept (:meth:`Comm.min_`), so the replicas stay alike.

Rank 0 writes ``run_config.json``, ``metrics.jsonl`` and ``checkpoint.pt`` (the states of every SAE, gathered from
each group's first rank, in the single-process format); each group's first rank writes its SAEs' folders. Backends:
NCCL when training on CUDA (each rank on ``cuda:LOCAL_RANK``), gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from attnsae.errors import AttnsaeError
from attnsae.models import check_device


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or anything that sets ``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class RankStopped(AttnsaeError):
    """This rank must stop: another rank failed or was killed, or a signal asked it to."""


class CommError(RuntimeError):
    """A collective failed: a peer is gone, or the connection to it broke (only collectives raise it)."""


def _collective(fn, *args, **kwargs):
    """Run one ``torch.distributed`` collective; its failure becomes a :class:`CommError`."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, dist.DistError) as e:
        raise CommError(f"{type(e).__name__}: {e}") from e


@dataclass
class Comm:
    """Where this process sits in the run and the collectives the trainer needs; one process: every call is local.

    ``rank``/``world``: global; ``module``/``modules``: this rank's module group and their number; ``data_rank``/
    ``data_world``: its place within the group (the data-parallel replicas of the same SAEs).
    """

    rank: int = 0
    world: int = 1
    modules: int = 1
    device: torch.device = torch.device("cpu")
    group: Any = None  # the process group of this rank's data-parallel replicas (None: one process)

    @property
    def data_world(self) -> int:
        return self.world // self.modules

    @property
    def module(self) -> int:
        return self.rank // self.data_world

    @property
    def data_rank(self) -> int:
        return self.rank % self.data_world

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def leader(self) -> bool:
        """The first rank of its module group: it saves that group's SAEs."""
        return self.data_rank == 0

    @property
    def tag(self) -> str:
        return f"rank {self.rank} of {self.world}"

    # -- layout ---------------------------------------------------------------------------------------------------

    def own_layers(self, layers: list[int]) -> list[int]:
        """This group's contiguous block of ``layers`` (sorted), the blocks as even as possible."""
        layers = sorted(layers)
        if self.modules > len(layers):
            raise AttnsaeError(f"--module-parallel {self.modules} is more than the run's {len(layers)} layers; give at "
                               f"most {len(layers)}")
        q, r = divmod(len(layers), self.modules)
        start = self.module * q + min(self.module, r)
        return layers[start:start + q + (self.module < r)]

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch."""
        n = batch_size // self.data_world
        return slice(self.data_rank * n, (self.data_rank + 1) * n)

    # -- collectives over the data-parallel replicas --------------------------------------------------------------

    def _on(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device) if t.device != self.device else t

    def sum_(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Sum ``t`` over the replicas (``op="min"``: their minimum), in place (the result is on ``t``'s device)."""
        if self.data_world > 1:
            buf = self._on(t)
            _collective(dist.all_reduce, buf, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM,
                        group=self.group)
            if buf is not t:
                t.copy_(buf)
        return t

    def min_(self, t: torch.Tensor) -> torch.Tensor:
        """The minimum of ``t`` over the replicas, in place."""
        return self.sum_(t, op="min")

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of ``t`` over the replicas (a new tensor; ``t`` itself when there is one)."""
        if self.data_world == 1:
            return t
        return self.sum_(t.detach().clone()) / self.data_world

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite ``tensors`` on every replica with the group leader's values."""
        if self.data_world == 1:
            return
        src = self.module * self.data_world
        for t in tensors:
            buf = self._on(t)
            _collective(dist.broadcast, buf, src=src, group=self.group)
            if buf is not t:
                t.copy_(buf)

    def gather_rows(self, local: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        """Every replica's ``local [sizes[d], ...]`` (one per data rank, in order); ``sizes`` is known to all."""
        if self.data_world == 1:
            return [local]
        n = max(sizes)
        pad = self._on(local.new_zeros((n, *local.shape[1:])))
        pad[:len(local)] = self._on(local)
        parts = [torch.empty_like(pad) for _ in sizes]
        _collective(dist.all_gather, parts, pad, group=self.group)
        return [p[:s].to(local.device) for p, s in zip(parts, sizes)]

    # -- collectives over the whole run ---------------------------------------------------------------------------

    def gather_to_root(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (None elsewhere)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world if self.rank == 0 else None
        _collective(dist.gather_object, obj, out, dst=0)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (a small picklable value) on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        _collective(dist.broadcast_object_list, box, src=0)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (a small picklable value), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world
        _collective(dist.all_gather_object, out, obj)
        return out

    def agree_on_checkpoint(self, step: int, tensors: list[torch.Tensor]) -> None:
        """After a resume: every rank read the same step (else one line), and each group's replicas take their
        first rank's loaded state (a file read twice may not be the same file twice)."""
        steps = self.all_gather_object(step)
        if min(steps) != max(steps):
            raise AttnsaeError(f"the processes resumed from different steps ({min(steps)} to {max(steps)}): --out is "
                               "not the same folder on every machine, or its copies lag; give a folder every "
                               "machine shares, then --resume")
        self.broadcast_(tensors)

    def barrier(self) -> None:
        if self.distributed:
            _collective(dist.barrier)


def init(modules: int = 1, device: str = "cpu", timeout_s: float = 1800) -> tuple[Comm, str]:
    """Join the run ``torchrun`` started (one process: a local :class:`Comm`); returns it and this rank's device.

    CUDA devices train on ``cuda:LOCAL_RANK`` over NCCL; CPU over gloo. The global batch must split evenly over the
    data-parallel replicas (checked by the trainer with :func:`check_batch`).
    """
    if not launched():
        if modules != 1:
            raise AttnsaeError(f"--module-parallel {modules} needs {modules} or a multiple of {modules} processes; "
                               f"launch with `torchrun --nproc-per-node {modules} -m attnsae train ...`")
        return Comm(device=check_device(device)), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world % modules:
        raise AttnsaeError(f"--module-parallel {modules} does not divide the {world} processes; give a divisor of "
                           f"{world}")
    cuda = check_device(device).type == "cuda"
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(check_device(device))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    comm = Comm(rank=rank, world=world, modules=modules, device=torch.device(device if cuda else "cpu"))
    d = comm.data_world
    groups = [dist.new_group(list(range(m * d, (m + 1) * d))) for m in range(modules)]  # every rank makes every group
    comm.group = groups[comm.module]
    _stop_on_signal(comm)
    return comm, device


def check_batch(comm: Comm, batch_size: int) -> None:
    if batch_size % comm.data_world:
        raise AttnsaeError(f"batch_size {batch_size} does not split over {comm.data_world} data-parallel ranks; give a "
                           f"multiple of {comm.data_world}")


def close(comm: Comm) -> None:
    if comm.distributed and dist.is_initialized():
        dist.destroy_process_group()


def _stop_on_signal(comm: Comm) -> None:
    """SIGTERM (what torchrun sends the other ranks when one fails) ends this rank with one line, not a traceback."""
    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one line, even if the launcher repeats the signal
        raise RankStopped(f"{comm.tag}: stopped by the launcher (another rank failed or the job was cancelled); rerun "
                          "the same command with --resume to continue from the last checkpoint")

    signal.signal(signal.SIGTERM, stop)


def lost_rank(comm: Comm, e: BaseException) -> AttnsaeError:
    """The one line for a collective that failed because another rank is gone."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the launcher's SIGTERM must not add a second line
    text = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(str(e).split()))  # gloo's "[file.cc:537] " prefix
    first = text.split(". ")[0][:160]
    return AttnsaeError(f"{comm.tag}: lost contact with another rank ({type(e).__name__}: {first}); the job is "
                        "stopped; rerun the same command with --resume to continue from the last checkpoint")
