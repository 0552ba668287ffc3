"""Freed heap goes back to the system after `release`; the peak is reported in MiB."""

import sys

import numpy as np
import pytest
import torch

from mitoseg import memory


def _rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc are Linux's")
def test_release_returns_freed_heap():
    memory.release()  # what earlier tests freed is handed back first, so the blocks below need fresh pages
    before = _rss_mib()
    freed, kept = [], []
    for _ in range(6400):  # 400 MiB of 64 KiB blocks (below glibc's mmap threshold: in the heap), each
        freed.append(np.ones(2**13))  # pinned by a small one after it, so the heap's top cannot shrink
        kept.append(np.ones(16))
    del freed
    held = _rss_mib()
    memory.release()
    after = _rss_mib()
    assert held - before > 300  # without `release`, the freed blocks stay resident
    assert after < before + 100
    assert memory.peak_mib(torch.device("cpu")) >= held - 1  # the peak saw the held blocks


ARENA_PROBE = """
import sys, threading
import numpy as np
from mitoseg import memory
if sys.argv[1] == "one":
    assert memory.one_arena()
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
pinned = []
def work():
    freed = []
    for _ in range(1600):  # 100 MiB of 64 KiB blocks, each pinned by a small one after it
        freed.append(np.ones(2**13))
        pinned.append(np.ones(16))
    barrier.wait()  # every thread allocates at once, so without the limit each gets an arena of its own
barrier = threading.Barrier(4)
threads = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
before = rss()
again = [np.ones(2**13) for _ in range(6400)]  # the main thread: 400 MiB again, where the threads' blocks were
print(rss() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc are Linux's")
def test_one_arena_lets_one_thread_reuse_what_others_freed():
    import subprocess

    grown = {kind: float(subprocess.run([sys.executable, "-c", ARENA_PROBE, kind], capture_output=True, text=True,
                                        check=True).stdout) for kind in ("one", "default")}
    assert grown["default"] > 250, grown  # the threads' freed blocks sat in their own arenas
    assert grown["one"] < 100, grown  # one heap: reused


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/clear_refs is Linux's")
def test_reset_peak_starts_the_peak_over():
    """`compare` reports each model's own peak: after `reset_peak` a freed 400 MB array no longer counts (before:
    the model trained second reported the first's peak whenever that was higher)."""
    cpu = torch.device("cpu")
    before = _rss_mib()  # whatever this test process holds already
    block = np.ones(400 * 2**20 // 8)
    del block
    assert memory.peak_mib(cpu) >= before + 390
    memory.reset_peak()
    assert _rss_mib() - 1 <= memory.peak_mib(cpu) < before + 200
