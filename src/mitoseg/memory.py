"""Process memory: the peak so far (what reports state), handing freed heap back to the system, and one
heap for all threads.

After a phase that made many mid-sized temporaries (training steps, prediction tiles), glibc keeps the
freed pages in its arenas, so the resident size stays near that phase's peak and the next phase adds
its own on top; `release` returns them (measured on CA1: 2.1 GB resident after a short 3D training,
1.1 GB after `release`). Threads that allocate at the same time (zarr's decompression, `postprocess`'s,
torch's) get arenas of their own, whose free pages no other thread reuses; `one_arena` stops that (the
command line calls it).
"""

from __future__ import annotations

import ctypes
import gc
import resource
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def peak_mib(device: torch.device) -> float:
    """Peak memory so far: GPU memory allocated on CUDA, memory the MPS driver holds on Apple GPUs, else the
    process's peak resident set (MiB)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Start `peak_mib` over from now (`compare` reports each model's own peak, not the process's so far): CUDA's
    peak statistics, and on Linux the resident peak (5 written to /proc/self/clear_refs resets VmHWM, and with it
    ru_maxrss); elsewhere the CPU peak stays the process's."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or not allowed
        pass


def release() -> None:
    """Collect garbage and return the C heap's free pages to the system (glibc's malloc_trim; a no-op
    where there is no glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def one_arena() -> bool:
    """Make glibc's malloc serve every thread from one heap arena (mallopt M_ARENA_MAX 1) from now on; False
    where there is no glibc. `mitoseg` calls it first: the CA1 demo job (`compare --quick`) peaked at 3,663
    MiB with it, 4,117 MiB without (results/README.md, 2026-12-06)."""
    try:
        return ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 1) == 1
    except (OSError, AttributeError):
        return False
