"""Memory a job will need, checked against what the machine has before anything large is allocated.

A setting whose memory exceeds the machine (a ``--d-sae`` of ten million, an ``--n-top`` of a million) is refused in
one line that says how much it would take and how much there is, instead of swapping for minutes or being killed by
the kernel. Estimates are of the large tensors only, so the check refuses only what cannot fit.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from attnsae.errors import AttnsaeError


def available_bytes(device: str | torch.device = "cpu") -> int | None:
    """Memory free for new tensors on ``device``: the GPU's free memory, or the host's available memory (the smaller
    of /proc/meminfo's MemAvailable and the cgroup's limit minus its use); None where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            pass
    return min(found) if found else None


def gib(n: float) -> str:
    """A byte count for people: ``12.3 GiB`` / ``456 MiB``."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_fits(need: int, what: str, fix: str, device: str | torch.device = "cpu") -> None:
    """Refuse ``what`` (e.g. "the SAEs with their Adam states") when its ``need`` bytes exceed what ``device`` has."""
    have = available_bytes(device)
    if have is not None and need > have:
        raise AttnsaeError(f"{what} would need about {gib(need)} of memory, but {gib(have)} is available on "
                           f"{torch.device(device).type}; {fix}")
