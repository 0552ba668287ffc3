"""Probabilities -> masks: smooth along Z, threshold, remove small objects, fill holes; the settings chosen on
validation.

Never chosen on a test volume: `choose` takes the validation split's probabilities and truth, and the
chosen `PostProcessing` is then applied unchanged to the test volume.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
from scipy import ndimage

from mitoseg import checks, io, metrics
from mitoseg.config import Config
from mitoseg.errors import MitosegError

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)  # scored at every validation while training (`train.validate`)
# searched by `choose` on the validation split; wider, because a model may be calibrated far from 0.5 (the CA1
# cpu-preset 3D model chose 0.2 here, 0.3 from THRESHOLDS: test IoU 0.771 against 0.749, results/README.md)
CHOICE_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_SIZES = (0, 1000, 4000, 16000)  # voxels; a CA1 mitochondrion holds 10^5-10^6 voxels at 5 nm
# Gaussian sigmas along Z in slices, searched by `choose` first: a 2D model predicts each slice alone, and on
# CA1 its masks changed from slice to slice far more than in-plane (results/README.md, "Smoothing along Z")
Z_SIGMAS = (0.0, 1.0, 2.0, 4.0, 8.0)
MAX_THREADS = 4  # threads of `choose` (a candidate each, holding a few copies of the volume) and `smooth_z`
FILE = "postprocessing.json"  # in a run folder: the post-processing `predict` applies to its masks
# beside it, a 2D run's choice for the other planes it may predict along (`config.other_planes`)
OTHER_PLANES_FILE = "postprocessing_planes{}.json"


@dataclass(frozen=True)
class PostProcessing:
    """How probabilities become a mask: blurred along Z by a Gaussian of `z_sigma` slices (0: not at all;
    `smooth_z`), then ``probability >= threshold``, then objects (26-connected) with fewer than `min_size`
    voxels removed, then (if `fill_holes`) holes inside objects filled slice by slice (the CA1 labels are
    filled outlines, drawn per slice)."""

    threshold: float = 0.5
    min_size: int = 0
    fill_holes: bool = False
    z_sigma: float = 0.0

    def __post_init__(self) -> None:
        checks.check(threshold=self.threshold, min_size=self.min_size, z_sigma=self.z_sigma)
        checks.flags(fill_holes=self.fill_holes)

    def as_dict(self) -> dict:
        return asdict(self)


def at_voxels(pp: PostProcessing, trained: Any, voxel: Any) -> PostProcessing:
    """`pp`, chosen on voxels of `trained` (z, y, x nm), for voxels of `voxel`: its Z blur kept in nm (slices of the
    new thickness) and its minimum size in nm³ (voxels of the new size); the threshold and hole filling as they
    are."""
    z_sigma = pp.z_sigma * float(trained[0]) / float(voxel[0])
    min_size = pp.min_size * float(np.prod(trained, dtype=np.float64) / np.prod(voxel, dtype=np.float64))
    return replace(pp, z_sigma=round(z_sigma, 2), min_size=int(round(min_size)))


def min_size_for_depth(min_size: int, slices: int, voxel_size: Any) -> tuple[int, str | None]:
    """A run's minimum object size (voxels) for a volume of `slices` slices of `voxel_size` (z, y, x nm; None: cubes):
    as it is, and None; but where the volume is thinner than a ball of that size is wide (no object in it can be
    whole: a section or a few), scaled by the volume's depth over the ball's diameter, and the note that says so."""
    z, y, x = (float(v) for v in (voxel_size or (1.0, 1.0, 1.0)))
    diameter = (6 * min_size * z * y * x / np.pi) ** (1 / 3)  # nm
    depth = slices * z
    if not min_size or depth >= diameter:
        return min_size, None
    scaled = int(round(min_size * depth / diameter))
    unit = "nm" if voxel_size is not None else "voxels"
    return scaled, (f"note: this volume is {slices} slice{'s' * (slices != 1)} ({depth:g} {unit}) deep, thinner than a "
                    f"ball of the run's minimum object size ({min_size:,} voxels) is wide ({diameter:.0f} {unit}): "
                    f"objects of {scaled:,} voxels or more are kept, the minimum scaled to its depth (--min-size "
                    "sets another)")


def smooth_z(probs: np.ndarray, sigma: float, rows: int = 64) -> np.ndarray:
    """Probabilities (Z, Y, X) blurred along Z only by a Gaussian of `sigma` slices (ends mirrored), in their
    own units and dtype (uint8 0..255 rounded back to uint8, floats as float32); computed `rows` rows of Y at
    a time, shared out among threads (`_map`), so the float32 copies stay small. `sigma` 0 returns `probs`
    itself."""
    checks.check(z_sigma=sigma)
    probs = _volume(probs)
    if sigma == 0:
        return probs
    out = np.empty(probs.shape, np.uint8 if probs.dtype == np.uint8 else np.float32)
    step = max(1, rows // _workers(-(-probs.shape[1] // rows)))  # rows in flight stay `rows`, threads or not

    def blur(y: int) -> None:
        blurred = ndimage.gaussian_filter1d(probs[:, y:y + step].astype(np.float32), sigma, axis=0)
        out[:, y:y + step] = np.rint(blurred) if out.dtype == np.uint8 else blurred

    _map(blur, range(0, probs.shape[1], step))
    return out


def halo(z_sigma: float) -> int:
    """Slices on each side that `smooth_z` reads for one slice: scipy's Gaussian reaches int(4 sigma + 0.5),
    so a block smoothed with this many neighbouring slices equals the whole volume smoothed."""
    return int(4 * z_sigma + 0.5)


class ZSmoothed:
    """Stored probabilities (Z, Y, X) seen blurred along Z by `sigma` slices (`smooth_z`), read lazily:
    ``view[z0:z1, y0:y1, x0:x1]`` reads `halo` slices on either side of the block from `source` (an
    array-like such as a Zarr array) and equals the same block of `smooth_z(source[:], sigma)`; uint8
    stays uint8 (0..255), floats become float32. Lets the block engine threshold a blurred volume block
    by block (`predict.write_mask`, `mitoseg label`) without writing the blurred copy."""

    def __init__(self, source, sigma: float) -> None:
        checks.check(z_sigma=sigma)
        self.source, self.sigma = source, float(sigma)
        self.shape = tuple(source.shape)
        stored = np.dtype(source.dtype)
        self.dtype = stored if self.sigma == 0 or stored == np.uint8 else np.dtype(np.float32)
        self.attrs = getattr(source, "attrs", {})

    def __getitem__(self, block: tuple[slice, ...]) -> np.ndarray:
        if not isinstance(block, tuple) or len(block) != 3:
            raise ValueError("ZSmoothed reads blocks: three slices, step 1 along Z")
        z0, z1, step = block[0].indices(self.shape[0])
        if step != 1:
            raise ValueError("ZSmoothed reads blocks: three slices, step 1 along Z")
        r = halo(self.sigma)
        lo, hi = max(0, z0 - r), min(self.shape[0], z1 + r)
        return smooth_z(self.source[lo:hi, block[1], block[2]], self.sigma)[z0 - lo:z1 - lo]


def words(pp: dict) -> str:
    """A chosen post-processing (`PostProcessing.as_dict`) in words; older records have no z_sigma."""
    sigma = pp.get("z_sigma")
    smooth = f"probabilities blurred along Z (Gaussian, {sigma:g} slice{'' if sigma == 1 else 's'}), " if sigma else ""
    small = f"objects under {pp['min_size']:,} voxels removed" if pp["min_size"] else "no objects removed"
    return f"{smooth}threshold {pp['threshold']}, {small}, holes {'filled' if pp['fill_holes'] else 'kept'}"


def for_labels(attrs: dict, threshold: float | None = None, min_size: int | None = None) -> dict:
    """What `mitoseg label` applies to a volume with these attributes, given its --threshold and --min-size
    (None: not given): {"threshold": a probability threshold, or None (a mask: any value > 0), "z_sigma",
    "min_size", "from_run": the keys taken from the run's post-processing chosen on validation}.

    `predict` keeps the run's choice with its outputs (attribute "postprocessing"). Probabilities without a
    given threshold get its Z smoothing and threshold (a given threshold applies alone, as in `predict`); a
    mask written with its threshold and Z smoothing gets nothing more voxel by voxel. `min_size`, when not
    given, is the run's wherever the input followed its choice so far, else 0. Hole filling is never applied:
    it works on whole slices, a labelling block holds part of one."""
    chosen, kind = attrs.get("postprocessing"), attrs.get("kind")
    z_sigma, from_run = 0.0, []
    if chosen and kind == "probability" and threshold is None:
        threshold, z_sigma, from_run = chosen["threshold"], chosen.get("z_sigma", 0.0), ["threshold", "z_sigma"]
    followed = bool(chosen) and (bool(from_run) or (kind == "mask" and attrs.get("threshold") == chosen["threshold"]
                                                    and attrs.get("z_sigma", 0.0) == chosen.get("z_sigma", 0.0)))
    if min_size is None and followed:
        min_size, from_run = chosen["min_size"], [*from_run, "min_size"]
    return {"threshold": threshold, "z_sigma": float(z_sigma), "min_size": int(min_size or 0), "from_run": from_run}


def save(folder: str | Path, pp: PostProcessing, candidates: list[dict], probabilities: str,
         other_planes: int | None = None) -> None:
    """Write a choice to `folder`/postprocessing.json: the chosen `pp`, every candidate's validation IoU and
    which `probabilities` it was chosen on ("raw" or "tta"); with `other_planes`, a 2D run's choice for
    predicting along those planes instead of its own, to `OTHER_PLANES_FILE`."""
    record = {"chosen": pp.as_dict(), "chosen_on": "validation split", "probabilities": probabilities,
              "candidates": candidates}
    name = FILE if other_planes is None else OTHER_PLANES_FILE.format(other_planes)
    io.write_json(Path(folder) / name, record)


def read(run: str | Path, planes: int | None = None) -> PostProcessing | None:
    """The post-processing chosen for a run folder (`save`), for predicting along `planes` (None: the run's own,
    `Config.slice_planes`); None for a checkpoint file, a run without one (saved before training chose it, or
    validated on partly annotated labels), or a 2D run whose validation was never predicted along `planes`
    (trained before runs chose for both, or on voxels too anisotropic for three planes)."""
    own = planes is None or chosen_for(run, None) == planes
    path = Path(run) / (FILE if own else OTHER_PLANES_FILE.format(planes))
    if not path.is_file():
        return None
    return PostProcessing(**io.read_json(path)["chosen"])


def chosen_for(run: str | Path, planes: int | None = None) -> int:
    """The planes that `read(run, planes)`'s choice was made for: `planes` when given, else the run's own
    (`Config.slice_planes`; 1 for a checkpoint file or a 3D run)."""
    if planes is not None:
        return planes
    config = Path(run) / "config.json"
    return Config.load(config).slice_planes if config.is_file() else 1


def _volume(values: Any, name: str = "the probabilities") -> np.ndarray:
    """`values` as an in-memory (Z, Y, X) array; other shapes refused (a 2D array's Y would be blurred as Z)."""
    values = np.asarray(io.refuse_path(values, name))
    if values.ndim != 3:
        raise MitosegError(f"{name} must be a volume (Z, Y, X), not an array of shape {values.shape}")
    return values


def apply(probs: np.ndarray, pp: PostProcessing) -> np.ndarray:
    """Mask uint8 {0, 1} (Z, Y, X) from probabilities (Z, Y, X): float in [0, 1], or uint8 0..255 as stored."""
    if not isinstance(pp, PostProcessing):
        raise MitosegError(f"apply takes a postprocess.PostProcessing, not a {type(pp).__name__}")
    probs = _volume(probs)
    scale = io.probability_scale(probs)
    mask = io.at_least(smooth_z(probs, pp.z_sigma), pp.threshold * scale)
    return _clean(mask, pp)


def _clean(mask: np.ndarray, pp: PostProcessing) -> np.ndarray:
    if pp.min_size > 0:
        mask = cc3d.dust(mask, threshold=int(pp.min_size), connectivity=26)
    if pp.fill_holes:
        mask = fill_holes(mask)
    return mask.astype(np.uint8)


def fill_holes(mask: np.ndarray, slices: int = 16) -> np.ndarray:
    """Bool (Z, Y, X): each slice's holes filled, as `scipy.ndimage.binary_fill_holes` does per slice
    (background not 4-connected to the slice's edge becomes foreground), by connected components of the
    background, faster than scipy's (`benchmarks/bench_evaluation.py`). `slices` slices are labelled in one 2D
    call: stacked along Y, each followed by a row of foreground, so no background component spans two."""
    out = np.array(io.foreground(_volume(mask, "the mask")), dtype=bool)  # probabilities refused: all would fill
    depth, height, width = out.shape
    for z0 in range(0, depth, slices):
        part = out[z0:z0 + slices]
        background = np.zeros((len(part), height + 1, width), bool)
        background[:, :height] = ~part
        labels = cc3d.connected_components(background.reshape(-1, width), connectivity=4)
        labels = labels.reshape(len(part), height + 1, width)[:, :height]
        edge = np.zeros(int(labels.max()) + 1, bool)  # the components touching a slice's edge
        for side in (labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]):
            edge[side] = True
        part |= ~edge[labels]
    return out


def choose(probs: np.ndarray, truth: np.ndarray, thresholds=CHOICE_THRESHOLDS, min_sizes=MIN_SIZES,
           z_sigmas=Z_SIGMAS) -> tuple[PostProcessing, list[dict]]:
    """The post-processing with the best foreground IoU on a validation volume, and every candidate's IoU.

    probs: (Z, Y, X) probabilities (float [0, 1] or uint8 0..255); truth: (Z, Y, X) {0, 1}.
    Two steps: the Z smoothing first, each of `z_sigmas` scored at every threshold alone (rows with
    min_size 0, no hole filling); then, with the best of them, every threshold, minimum size and hole filling.
    Ties go to the simpler setting (less smoothing, threshold nearest 0.5, smaller min_size, no hole
    filling). Each candidate's mask is `apply`'s; the objects are found once per threshold, not per candidate.
    """
    probs = _volume(probs)
    scale = io.probability_scale(probs)
    thresholds = sorted(thresholds, key=lambda t: abs(t - 0.5))

    def smoothing(z_sigma: float) -> tuple[np.ndarray, list[dict]]:
        candidate = smooth_z(probs, z_sigma)
        return candidate, [{**PostProcessing(t, 0, False, z_sigma).as_dict(),
                            "jaccard": _iou(io.at_least(candidate, t * scale), truth)} for t in thresholds]

    rows, best = [], -1.0
    for z_sigma, (candidate, scored) in zip(sorted(z_sigmas), _map(smoothing, sorted(z_sigmas)), strict=True):
        rows += scored
        if max(r["jaccard"] for r in scored) > best:  # strictly: of equals the least smoothing stays
            best, sigma, smoothed = max(r["jaccard"] for r in scored), z_sigma, candidate

    def cleaning(t: float) -> list[dict]:
        mask = io.at_least(smoothed, t * scale)
        objects = cc3d.connected_components(mask, connectivity=26)
        sizes = np.bincount(objects.ravel())
        out = []
        for m in min_sizes:
            keep = sizes >= m
            keep[0] = False
            kept = keep[objects] if m > 0 else mask
            for fill in (False, True):
                pp = PostProcessing(t, m, fill, sigma)
                out.append({**pp.as_dict(), "jaccard": _iou(fill_holes(kept) if fill else kept, truth)})
        return out

    chosen = [row for scored in _map(cleaning, thresholds) for row in scored]
    top = max(chosen, key=lambda r: r["jaccard"])
    return PostProcessing(**{k: v for k, v in top.items() if k != "jaccard"}), rows + chosen


def _map(fn, items: list) -> list:
    """[fn(item) for item in items], in order, computed in up to `MAX_THREADS` threads (one per core at most):
    numpy's and scipy's loops release the GIL (cc3d's labelling does not: it runs one at a time)."""
    items = list(items)
    workers = _workers(len(items))
    if workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _workers(tasks: int) -> int:
    """The threads `_map` uses for this many tasks."""
    return max(1, min(tasks, metrics.cores(), MAX_THREADS))


def _iou(mask: np.ndarray, truth: np.ndarray) -> float:
    return metrics.scores(metrics.confusion(mask, truth))["jaccard"]
