"""Which slices to annotate next: a trained model's uncertainty per slice, ranked and spread out.

Uncertainty is the mean binary entropy (bits, 0..1) of the model's foreground probability over a
slice, with test-time augmentation (the mean over 4 in-plane flips, so flips that disagree raise it).
Slices are picked greedily, most uncertain first, at least `gap` slices from each other and from the
slices already annotated (neighbouring slices look alike: annotating both teaches little more).
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import numpy as np

from mitoseg import checks, io
from mitoseg.errors import MitosegError

SLAB = 16  # slices read at a time from the probabilities


def entropy(probs: np.ndarray) -> np.ndarray:
    """Binary entropy in bits (0 where certain, 1 at p = 0.5) of probabilities, any shape, float [0, 1]
    or uint8 0..255 as mitoseg stores them."""
    p = np.asarray(probs, dtype=np.float32)
    if np.asarray(probs).dtype == np.uint8:
        p = p / 255.0
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def slice_scores(probs) -> tuple[np.ndarray, np.ndarray]:
    """Per slice of probabilities (Z, Y, X; array-like, read `SLAB` slices at a time): the mean entropy
    (bits) and the predicted foreground fraction (probability >= 0.5), each float64 (Z,)."""
    depth = probs.shape[0]
    uncertainty, foreground = np.zeros(depth), np.zeros(depth)
    half = 128 if np.dtype(probs.dtype) == np.uint8 else 0.5
    for z in range(0, depth, SLAB):
        p = np.asarray(probs[z:z + SLAB])
        uncertainty[z:z + len(p)] = entropy(p).mean(axis=(1, 2))
        foreground[z:z + len(p)] = (p >= half).mean(axis=(1, 2))
    return uncertainty, foreground


def pick(scores: np.ndarray, count: int, gap: int, annotated: list[int] | None = None) -> list[int]:
    """Up to `count` slice indices, highest score first, each more than `gap` slices from every one
    picked before and from `annotated` (fewer when the volume has no room left)."""
    blocked = np.zeros(len(scores), bool)
    for z in annotated or []:
        blocked[max(0, z - gap):z + gap + 1] = True
    chosen = []
    for z in np.argsort(-scores, kind="stable"):
        if len(chosen) == count:
            break
        if not blocked[z]:
            chosen.append(int(z))
            blocked[max(0, z - gap):z + gap + 1] = True
    return chosen


def suggest(run: str | Path, image: str | Path, count: int = 8, gap: int | None = None,
            annotated: str | None = None, tta: bool = True, table: str | Path | None = None,
            device: str = "auto", overwrite: bool = False, progress: bool = True) -> list[dict]:
    """The `mitoseg suggest` command: the `count` slices of `image` (Z, Y, X) to annotate next for the
    model of `run`, as dicts (rank, slice, uncertainty in bits, foreground fraction), most useful first.

    The model predicts the whole volume block by block (`predict.predict`, with TTA unless `tta` is
    False) into a temporary Zarr; `gap` (default: depth // (4 * count), at least 1) keeps picks apart;
    `annotated` ("0,40-43") are slices already annotated, never suggested nor neighboured. `table`: the
    score of every slice as CSV.
    """
    from mitoseg import data, predict

    checks.check(count=count, gap=gap)
    if table:
        io.check_output(table, overwrite)
    depth = io.open_volume(image).shape[0]
    done = data.parse_slices(annotated, depth) if annotated else []
    gap = max(1, depth // (4 * count)) if gap is None else gap
    if not pick(np.zeros(depth), 1, gap, done):  # said before the prediction, not after it
        raise MitosegError(f"no slice left to suggest: all {depth} are annotated or within {gap} of one")
    with tempfile.TemporaryDirectory(prefix="mitoseg-suggest-") as tmp:
        probs = predict.predict(run, image, Path(tmp) / "probabilities.zarr", tta=tta, device=device,
                                progress=progress)
        uncertainty, foreground = slice_scores(io.open_volume(probs))
    chosen = pick(uncertainty, count, gap, done)
    rows = [{"rank": i + 1, "slice": z, "uncertainty_bits": float(uncertainty[z]),
             "foreground_fraction": float(foreground[z])} for i, z in enumerate(chosen)]
    if table:
        with open(table, "w", newline="") as f:
            writer = csv.DictWriter(f, ["slice", "uncertainty_bits", "foreground_fraction", "rank"])
            writer.writeheader()
            rank = {z: i + 1 for i, z in enumerate(chosen)}
            for z in range(depth):
                writer.writerow({"slice": z, "uncertainty_bits": uncertainty[z],
                                 "foreground_fraction": foreground[z], "rank": rank.get(z, "")})
    return rows
