"""One rank of the distributed training tests (run by ``torchrun``): trains the same runs at several layouts of its
processes on a synthetic activation stream and saves each where tests/test_distributed.py compares it to one process.

usage: torchrun --nproc-per-node W tests/dist_worker.py OUT  (writes OUT/{layout}-{run}/...)
"""

import sys

import torch

from attnsae.training import distributed
from attnsae.training.trainer import fit
from dist_runs import RUNS, LayerSource


def main(out: str) -> None:
    world = int(__import__("os").environ["WORLD_SIZE"])
    for modules in (1, 2, world):  # data parallel, both, module parallel
        comm, _ = distributed.init(modules)
        for name, cfg in RUNS.items():
            layers = comm.own_layers(cfg.layers)
            fit(cfg, cfg.specs(LayerSource.D_IN), LayerSource(layers, cfg.batch_size), f"{out}/m{modules}-{name}",
                comm=comm)
        try:  # stopped at batch 15 on every rank: the checkpoint of step 10 remains, for one process to resume
            fit(RUNS["topk"], RUNS["topk"].specs(LayerSource.D_IN), LayerSource(layers, 64, crash_at=15),
                f"{out}/m{modules}-stopped", comm=comm)
        except KeyboardInterrupt:
            pass
    distributed.close(comm)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
