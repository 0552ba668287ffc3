"""The data sets mitoseg is measured on, one loader each, found without relying on where the package is
installed: ``$MITOSEG_SHARED_DATA``, else ``../shared/data`` beside the working directory (the
repository), else beside the source tree (an editable install).

- Drosophila VNC ssTEM stack 1 (Gerhard et al.): 20 sections of 1024 x 1024 pixels, 50 x 4.6 x 4.6 nm,
  with anti-aliased mitochondria masks (PNG, binarised at > 127).
- EPFL CA1 hippocampus FIB-SEM (Lucchi et al.): training and testing volumes with ground truth, 5 nm;
  the EPFL files when found (`download.data_dir`), else the derived public copy in ``lucchi-derived``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mitoseg import download, io
from mitoseg.errors import MitosegError

DROSOPHILA = "drosophila-vnc-stack1"
LUCCHI_DERIVED = "lucchi-derived"
CA1 = "EPFL CA1 hippocampus FIB-SEM (Lucchi et al.)"
DERIVED = f"{CA1}, derived public copy: per-slice stretched images, polygon-filled labels"
ORIGINAL = f"{CA1}, the EPFL files"


def shared_data() -> Path:
    """The shared data folder: $MITOSEG_SHARED_DATA, else ../shared/data from the working directory, else
    beside the source tree (the first that exists; the last when none does)."""
    env = os.environ.get("MITOSEG_SHARED_DATA")
    if env and not Path(env).is_dir():  # a typo in a job's environment: not other data in silence
        raise MitosegError(f"$MITOSEG_SHARED_DATA is {env}: no such folder (set it to the shared data folder, or unset "
                           "it)")
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd().parent / "shared" / "data", download.SHARED_DATA]
    return next((c for c in candidates if c.is_dir()), candidates[-1])


def drosophila_dir(folder: str | Path | None = None) -> Path:
    """The Drosophila stack's folder (with raw/ and mitochondria/); MitosegError when it is not there."""
    root = Path(folder) if folder is not None else shared_data() / DROSOPHILA
    if not (root / "raw").is_dir() or not (root / "mitochondria").is_dir():
        raise MitosegError(f"Drosophila stack not found at {root} (set MITOSEG_SHARED_DATA to the folder holding "
                           f"{DROSOPHILA}/)")
    return root


def drosophila(folder: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The Drosophila stack: raw uint8 (20, 1024, 1024) and mitochondria mask uint8 {0, 1} (> 127)."""
    root = drosophila_dir(folder)
    return io.load_pair(root / "raw", root / "mitochondria", threshold=127)


def lucchi_dir(data: str | Path | None = None) -> tuple[Path, str] | None:
    """The CA1 folder and its provenance in words: the EPFL files when found (`download.data_dir`), else
    the derived public copy in the shared data folder; None when neither is there. A folder the user names
    (`data`) that is not the derived copy is named as given: nothing tells that its files are the EPFL ones."""
    found = download.data_dir("lucchi", data)
    if found is None and data is None:
        found = download.data_dir("lucchi", shared_data() / LUCCHI_DERIVED)
    if found is None:
        return None
    readme = found / "README.md"
    derived = "derived" in found.name or (readme.exists() and "derived public copy" in readme.read_text())
    if derived:
        return found, DERIVED
    if data is None:
        return found, ORIGINAL
    return found, f"{CA1}, the files of the folder {found.name} (their source not checked)"
