"""Probabilities -> masks: threshold, remove small objects, fill holes; the settings chosen on validation.

Never chosen on a test volume: `choose` takes the validation split's probabilities and truth, and the
chosen `PostProcessing` is then applied unchanged to the test volume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cc3d
import numpy as np

from mitoseg import checks, metrics

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)  # scored at every validation while training (`train.validate`)
# searched by `choose` on the validation split; wider, because a model may be calibrated far from 0.5 (the CA1
# cpu-preset 3D model chose 0.2 here, 0.3 from THRESHOLDS: test IoU 0.771 against 0.749, results/README.md)
CHOICE_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_SIZES = (0, 1000, 4000, 16000)  # voxels; a CA1 mitochondrion holds 10^5-10^6 voxels at 5 nm


@dataclass(frozen=True)
class PostProcessing:
    """How probabilities become a mask: ``probability >= threshold``, then objects (26-connected) with
    fewer than `min_size` voxels removed, then (if `fill_holes`) holes inside objects filled slice by
    slice (the CA1 labels are filled outlines, drawn per slice)."""

    threshold: float = 0.5
    min_size: int = 0
    fill_holes: bool = False

    def __post_init__(self) -> None:
        checks.check(threshold=self.threshold, min_size=self.min_size)

    def as_dict(self) -> dict:
        return asdict(self)


def apply(probs: np.ndarray, pp: PostProcessing) -> np.ndarray:
    """Mask uint8 {0, 1} (Z, Y, X) from probabilities (Z, Y, X): float in [0, 1], or uint8 0..255 as stored."""
    probs = np.asarray(probs)
    scale = 255.0 if probs.dtype == np.uint8 else 1.0
    mask = probs >= pp.threshold * scale
    return _clean(mask, pp)


def _clean(mask: np.ndarray, pp: PostProcessing) -> np.ndarray:
    if pp.min_size > 0:
        mask = cc3d.dust(mask, threshold=int(pp.min_size), connectivity=26)
    if pp.fill_holes:
        mask = fill_holes(mask)
    return mask.astype(np.uint8)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Bool (Z, Y, X): each slice's holes filled, as `scipy.ndimage.binary_fill_holes` does per slice
    (background not 4-connected to the slice's edge becomes foreground), by connected components of the
    background, faster than scipy's (`benchmarks/bench_evaluation.py`)."""
    out = np.array(mask, dtype=bool)
    for z in range(out.shape[0]):
        background = cc3d.connected_components(~out[z], connectivity=4)
        edge = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
        out[z] |= ~np.isin(background, edge)
    return out


def choose(probs: np.ndarray, truth: np.ndarray, thresholds=CHOICE_THRESHOLDS, min_sizes=MIN_SIZES) -> tuple[
        PostProcessing, list[dict]]:
    """The post-processing with the best foreground IoU on a validation volume, and every candidate's IoU.

    probs: (Z, Y, X) probabilities (float [0, 1] or uint8 0..255); truth: (Z, Y, X) {0, 1}.
    Ties go to the simpler setting (threshold nearest 0.5, smaller min_size, no hole filling).
    Each candidate's mask is `apply`'s; the objects are found once per threshold, not per candidate.
    """
    probs = np.asarray(probs)
    scale = 255.0 if probs.dtype == np.uint8 else 1.0
    rows = []
    for t in sorted(thresholds, key=lambda t: abs(t - 0.5)):
        mask = probs >= t * scale
        objects = cc3d.connected_components(mask, connectivity=26)
        sizes = np.bincount(objects.ravel())
        for m in min_sizes:
            keep = sizes >= m
            keep[0] = False
            kept = keep[objects] if m > 0 else mask
            for fill in (False, True):
                pp = PostProcessing(t, m, fill)
                iou = metrics.scores(metrics.confusion(fill_holes(kept) if fill else kept, truth))["jaccard"]
                rows.append({**pp.as_dict(), "jaccard": iou})
    best = max(rows, key=lambda r: r["jaccard"])  # max keeps the first of equals: the simplest
    return PostProcessing(best["threshold"], best["min_size"], best["fill_holes"]), rows
