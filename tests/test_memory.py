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
