"""Shared fixtures: small crops of the real Drosophila VNC ssTEM stack and of the EPFL CA1 volumes
(derived public copy) in ../shared/data, read lazily through `mitoseg.datasets`.

Without the data the tests that need it are skipped, and fail instead when MITOSEG_REQUIRE_DATA=1
(set by .ci/run): CI never passes by skipping.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mitoseg import datasets, metrics
from mitoseg.errors import MitosegError

# Under pytest-xdist (`make test`: -n auto) each test process takes its share of the cores' threads, so the
# processes do not oversubscribe the cores (measured on 2 cores: 2 threads each ran slower than 1 process).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    torch.set_num_threads(max(1, metrics.cores() // WORKERS))

DROSO = datasets.shared_data() / datasets.DROSOPHILA
LUCCHI = datasets.shared_data() / datasets.LUCCHI_DERIVED


def missing(what: str) -> None:
    """Skip a test whose real data is absent, or fail it where the data is required (CI)."""
    message = f"real data not found: {what}"
    if os.environ.get("MITOSEG_REQUIRE_DATA") == "1":
        pytest.fail(message + " (MITOSEG_REQUIRE_DATA=1: CI needs ../shared/data beside the clone)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def droso_dir() -> Path:
    try:
        return datasets.drosophila_dir()
    except MitosegError as e:
        missing(str(e))


@pytest.fixture(scope="session")
def droso(droso_dir) -> tuple[np.ndarray, np.ndarray]:
    """The whole stack: raw uint8 (20, 1024, 1024) and binary mito mask uint8 of the same shape."""
    return datasets.drosophila(droso_dir)


@pytest.fixture(scope="session")
def droso_crop(droso) -> tuple[np.ndarray, np.ndarray]:
    """A crop with many mitochondria: raw uint8 and mask uint8 {0,1}, shape (20, 256, 256)."""
    raw, mask = droso
    return raw[:, 256:512, 256:512].copy(), mask[:, 256:512, 256:512].copy()


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label arrays have the same background and a bijection between their object ids."""
    if not np.array_equal(a > 0, b > 0):
        return False
    fg = a > 0
    pairs = np.unique(np.stack([a[fg], b[fg]]).astype(np.int64), axis=1)
    return pairs.shape[1] == np.unique(a[fg]).size == np.unique(b[fg]).size


def jittered_probabilities(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """Stored uint8 probabilities (0..255) of a real mask (Z, Y, X) with soft edges whose slices jump up to 3
    voxels from one to the next, as a 2D model's do: a blur along Z changes their mask."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shifted = np.stack([np.roll(s, tuple(rng.integers(-3, 4, 2)), (0, 1)) for s in mask])
    return np.round(ndimage.gaussian_filter(shifted.astype(np.float32), (0, 1.5, 1.5)) * 255).astype(np.uint8)


@pytest.fixture(scope="session")
def lucchi_dir() -> Path:
    if not (LUCCHI / "training.tif").exists():
        missing(str(LUCCHI))
    return LUCCHI


@pytest.fixture(scope="session")
def lucchi_crop(lucchi_dir) -> tuple[np.ndarray, np.ndarray]:
    """A CA1 training crop read lazily (only these slices): raw uint8 and mask uint8 {0,1}, (32, 256, 256)."""
    from mitoseg import io

    crop = np.s_[40:72, 64:320, 576:832]
    raw = np.asarray(io.open_volume(lucchi_dir / "training.tif")[crop])
    mask = io.binarize(io.open_volume(lucchi_dir / "training_groundtruth.tif")[crop])
    return raw, mask


def dies_on_call(real, n: int):
    """`real` wrapped to raise KeyboardInterrupt (a Ctrl-C) on its n-th call; `.calls` counts the calls."""

    def wrapped(*a, **k):
        wrapped.calls += 1
        if wrapped.calls == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    wrapped.calls = 0
    return wrapped
