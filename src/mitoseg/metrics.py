"""Segmentation metrics: voxel-level scores from a confusion matrix, and object-level matching.

Voxel metrics only need the four confusion counts, so `confusion_blockwise` gives exact scores for
volumes larger than RAM by summing the counts of one block at a time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cc3d
import edt  # seung-lab's anisotropic distance transform (float32): by hand 0.9 s vs scipy's 6.8 s on a CA1 slab
import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from mitoseg import checks
from mitoseg.errors import MitosegError

SLAB_VOXELS = 2**22  # voxels per slab in `confusion` and object matching: bounded temporaries


@dataclass(frozen=True)
class Counts:
    """Voxel confusion counts of a binary prediction against a binary truth (plain Python ints)."""

    tp: int
    fp: int
    fn: int
    tn: int

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def total(self) -> int:
        """Number of voxels counted."""
        return self.tp + self.fp + self.fn + self.tn


def _check_same_shape(pred_shape: Sequence[int], truth_shape: Sequence[int]) -> None:
    if tuple(pred_shape) != tuple(truth_shape):
        raise MitosegError(f"prediction shape {tuple(pred_shape)} differs from ground-truth shape {tuple(truth_shape)}")


def _slabs(a: np.ndarray, b: np.ndarray):
    """Pairs of flat views (or small copies) of `a` and `b` along their first axis, about SLAB_VOXELS each,
    so that temporaries follow the slab, not the volume."""
    if a.ndim == 0:
        yield a.ravel(), b.ravel()
        return
    per = max(1, SLAB_VOXELS // max(1, int(np.prod(a.shape[1:]))))
    for i in range(0, a.shape[0], per):
        yield a[i:i + per].ravel(), b[i:i + per].ravel()


def confusion(pred: np.ndarray, truth: np.ndarray) -> Counts:
    """Confusion counts of two in-memory binary arrays of the same shape (any ndim, any dtype).

    A voxel is foreground where its value is > 0; an array of more than two values (probabilities, an
    anti-aliased mask) is refused (`io.foreground`). Counts are exact integers; temporaries are one slab
    of about 4 M voxels, whatever the volume.
    """
    from mitoseg import io

    pred = np.asarray(io.refuse_path(pred, "the prediction"))
    truth = np.asarray(io.refuse_path(truth, "the truth"))
    _check_same_shape(pred.shape, truth.shape)
    tp = fp = fn = 0
    for p, t in _slabs(pred, truth):
        p, t = io.foreground(p, "the prediction"), io.foreground(t, "the truth")
        both = int(np.count_nonzero(p & t))
        tp, fp, fn = tp + both, fp + int(np.count_nonzero(p)) - both, fn + int(np.count_nonzero(t)) - both
    return Counts(tp=tp, fp=fp, fn=fn, tn=int(pred.size) - tp - fp - fn)


def confusion_blockwise(pred, truth, block: Sequence[int] = (64, 512, 512), progress: bool = False) -> Counts:
    """Confusion counts of two array-likes of the same shape, read one block (`blocks.grid`) at a time.

    `pred` and `truth` are anything with `.shape` that returns numpy arrays when sliced (numpy,
    zarr.Array, h5py.Dataset, a tifffile zarr store...). `block` is the block size in voxels per axis
    (z, y, x for 3D); memory is about two blocks. Foreground is > 0, as in `confusion`.
    """
    from mitoseg import blocks

    _check_same_shape(pred.shape, truth.shape)
    total = Counts(0, 0, 0, 0)
    for sl in tqdm(blocks.grid(pred.shape, block), desc="confusion", unit="block", disable=not progress):
        total = total + confusion(np.asarray(pred[sl]), np.asarray(truth[sl]))
    return total


def evaluate(prediction: str | Path | Any, truth: str | Path | Any, threshold: float | None = None,
             label_threshold: float | None = None,
             block: Sequence[int] | None = None, client: Any = None, progress: bool = True, places: bool = False,
             voxel_size: Sequence[float] | None = None, objects: bool = False, unlabeled: float | None = None) -> dict:
    """The `mitoseg evaluate` command: voxel scores (see `scores`) of a prediction against the truth, two
    volumes (paths or array-likes, Z, Y, X) read block by block, in this process or on a Dask `client`
    (then both must be paths every worker can read), in blocks `block` (Z, Y, X voxels; default
    `blocks.reading_block` of the prediction).

    Prediction: mitoseg probabilities are foreground at >= `threshold` (a probability, default 0.5);
    other volumes are masks, foreground > 0 unless `threshold` is given. Truth: foreground >
    `label_threshold`; without one it must hold two values at most (`io.check_binary`). A truth with no
    foreground is refused (recall and F1 would mean nothing).

    With `places`, also ``result["places"]``: where the errors lie (`error_places`) and its ``voxel_size``
    (z, y, x) nm: the given one, else the one either volume states, else None (voxels taken as cubes);
    then the scores too are computed in this process, on both volumes read into memory once (refused above
    `MAX_PLACES_VOXELS`). With `objects`, so too ``result["objects"]``: `match_instances` of the two volumes' objects
    at IoU >= 0.5 (the prediction as it is: apply a minimum size first, `mitoseg label`): a side's own object ids
    where it holds them (`_objects`), else its mask's 26-connected objects; "prediction_objects" and
    "truth_objects" say which.
    `unlabeled`: the truth's value of voxels nobody annotated (a partial annotation, as `train --unlabeled`
    takes it): they are left out of every count; of the two other values the higher is foreground unless
    `label_threshold` says otherwise. Not with `places` or `objects`, which need a whole truth.
    """
    from mitoseg import blocks, checks, cluster, io

    checks.per_axis(block=block)
    block = tuple(block) if block is not None else None
    checks.check(value_threshold=threshold, label_threshold=label_threshold, block=block, voxel_size=voxel_size,
                 unlabeled=unlabeled)
    pred = io.open_volume(prediction) if isinstance(prediction, str | Path) else prediction
    true = io.open_volume(truth) if isinstance(truth, str | Path) else truth
    for name, volume in (("prediction", pred), ("truth", true)):
        if not hasattr(volume, "shape"):
            raise MitosegError(f"the {name} must be a path or an array (numpy, Zarr, Dask), not a "
                               f"{type(volume).__name__}")
    if label_threshold is None:  # given, it says the reference is meant as it is (another model's probabilities)
        io.refuse_output(true, truth if isinstance(truth, str | Path) else "the truth", "the true labels",
                         ("probability",))
    _check_same_shape(pred.shape, true.shape)
    if len(pred.shape) != 3:
        raise MitosegError(f"evaluate takes two volumes (Z, Y, X), not arrays of shape {tuple(pred.shape)}")
    _notes(prediction, truth, pred, true)
    block = block or blocks.reading_block(pred)
    in_memory = places or objects
    if in_memory and int(np.prod(pred.shape)) > MAX_PLACES_VOXELS:
        raise MitosegError(f"--{'places' if places else 'objects'} reads both volumes and their labelled objects "
                           f"into memory: {int(np.prod(pred.shape)):,} voxels are more than the "
                           f"{MAX_PLACES_VOXELS:,} it takes; evaluate a crop for it")
    if unlabeled is not None:
        if in_memory:
            raise MitosegError("--places and --objects need a whole truth; score a partial annotation (--unlabeled) "
                               "without them")
        label_threshold = _annotated_threshold(true, unlabeled, label_threshold)
    elif label_threshold is None:
        io.check_binary(true, "the truth's labels")
    else:
        io.label_threshold_note(true, label_threshold, "the truth's labels")
    t = io.foreground_threshold(pred, threshold, f"the prediction {prediction}" if isinstance(prediction, str | Path)
                                else "the prediction")
    job = {"prediction": prediction, "truth": truth, "threshold": t, "label_threshold": label_threshold or 0,
           "unlabeled": unlabeled}
    if in_memory:  # both masks in memory anyway: the counts come from them, not from a second reading
        mask = _read_binary(pred, lambda v: _foreground(v, t), block)
        truth_mask = _read_binary(true, lambda v: v > (label_threshold or 0), block)
        total = confusion(mask, truth_mask)
    elif client is not None:
        job.update(prediction=cluster._spec(prediction, "prediction"), truth=cluster._spec(truth, "truth"))
        parts = blocks.run(cluster._confusion_task, blocks.grid(pred.shape, block), job, client, "evaluate", progress)
        total = sum(parts, Counts(0, 0, 0, 0))
    else:
        job.update(prediction=pred, truth=true)
        parts = blocks.run(block_confusion, blocks.grid(pred.shape, block), job, None, "evaluate", progress)
        total = sum(parts, Counts(0, 0, 0, 0))
    if total.tp + total.fn == 0:
        raise MitosegError("the truth holds no foreground voxels: recall and F1 are undefined "
                           "(check --label-threshold, or evaluate a region with objects)")
    result = scores(total)
    if places:
        paths = [v for v in (prediction, truth) if isinstance(v, str | Path)]
        stated = voxel_size or next(filter(None, map(io.voxel_size, paths)), None)
        result["places"] = {**error_places(mask, truth_mask, stated or (1.0, 1.0, 1.0)),
                            "voxel_size": [float(v) for v in stated] if stated else None}
    if objects:
        (pred_objects, pred_from), (true_objects, true_from) = (_objects(pred, mask, t),
                                                                _objects(true, truth_mask, label_threshold or 0))
        result["objects"] = {**match_instances(pred_objects, true_objects, 0.5),
                             "prediction_objects": pred_from, "truth_objects": true_from}
    return result


def _objects(volume: Any, mask: np.ndarray, cut: float | None) -> tuple[np.ndarray, str]:
    """The objects of one side of `evaluate(objects=True)` and where they come from: its own values where they are
    object ids ("ids": integers cut at 1 or below, so every id is foreground, holding more than one id: a `mitoseg
    label` output, an instance annotation; two ids that touch stay two objects), else the 26-connected components of
    its `mask` ("26-connected")."""
    from mitoseg import io

    if np.dtype(volume.dtype).kind in "iu" and cut is not None and cut <= 1 and io.stated_kind(volume) != "probability":
        ids = np.where(mask, np.asarray(volume[...]), 0)
        found = ids[mask]
        if found.size and found.min() != found.max():
            return ids, "ids"
    return cc3d.connected_components(mask, connectivity=26), "26-connected"


def stated_voxel(volume: Any) -> tuple[float, float, float] | None:
    """The voxel size a volume's path states (`io.voxel_size`), None for arrays and for sizes it refuses (where a
    size is used, the refusal is said)."""
    from mitoseg import io

    try:
        return io.voxel_size(volume) if isinstance(volume, str | Path) else None
    except MitosegError:
        return None


def _notes(prediction: Any, truth: Any, pred: Any, true: Any) -> None:
    """One line each (stderr) when the arguments look swapped (the truth a mitoseg mask or labels output, the
    prediction not) or the two volumes state other voxel sizes (another volume, or a wrong calibration)."""
    import sys

    from mitoseg import io

    kind = io.stated_kind(true)
    if kind in ("mask", "labels") and io.stated_kind(pred) is None:
        print(f"note: the truth is a mitoseg {kind} output and the prediction is not: if the two are swapped, "
              "precision and recall are exchanged (the order is PREDICTION TRUTH)", file=sys.stderr)
    sizes = [stated_voxel(v) for v in (prediction, truth)]
    if all(sizes) and not np.allclose(sizes[0], sizes[1], rtol=0.01):
        words = [" x ".join(f"{v:g}" for v in s) for s in sizes]
        print(f"note: the prediction states {words[0]} nm voxels and the truth {words[1]} nm: another volume, or a "
              "wrong calibration?", file=sys.stderr)


MAX_PLACES_VOXELS = 2**30  # `evaluate(places=True)` holds both volumes and their labelled objects in memory


def _read_binary(volume, foreground, block: Sequence[int]) -> np.ndarray:
    """Bool (Z, Y, X): `foreground(block)` of a volume read block by block (no float copy of the whole)."""
    from mitoseg import blocks

    out = np.empty(volume.shape, bool)
    for b in blocks.grid(volume.shape, tuple(block)):
        out[b] = foreground(np.asarray(volume[b]))
    return out


def block_confusion(block: tuple[slice, ...], job: dict) -> Counts:
    """Confusion counts of one block of `job`'s prediction and truth (array-likes), thresholded as in
    `evaluate`."""
    p = _foreground(np.asarray(job["prediction"][block]), job["threshold"])
    t = np.asarray(job["truth"][block])
    if job.get("unlabeled") is not None:  # voxels nobody annotated are not scored
        annotated = t != job["unlabeled"]
        p, t = p[annotated], t[annotated]
    return confusion(p, t > job["label_threshold"])


def _annotated_threshold(truth: Any, unlabeled: float, label_threshold: float | None) -> float:
    """The label threshold of a partly annotated truth: `label_threshold`, else the lower of the two values its
    annotated voxels hold (as `io.load_pair` reads labels for training): in a subsample, else in the whole truth
    (annotation on a few slices, which the subsample may skip)."""
    from mitoseg import io

    if label_threshold is not None:
        return label_threshold
    values = io.sampled_values(truth)
    annotated = values[values != unlabeled]
    if annotated.size < 2 and values.size > 1 and not io.held_whole(truth):  # else all read already
        values = io.all_values(truth)
        annotated = values[values != unlabeled]
    return io.higher_is_foreground(annotated, unlabeled, "the truth's labels")


def _foreground(values: np.ndarray, threshold: float | None) -> np.ndarray:
    """Bool: a prediction's foreground, > 0 for a mask (`threshold` None), else >= `threshold` (`io.at_least`)."""
    from mitoseg import io

    return values > 0 if threshold is None else io.at_least(values, threshold)


def _ratio(num: int, den: int) -> float:
    """num / den, and 1.0 for 0 / 0 (the sets being scored are all empty, so nothing was got wrong)."""
    return float(num) / float(den) if den else 1.0


def scores(counts: Counts) -> dict[str, float | int]:
    """Voxel scores of confusion counts, plus the counts themselves (keys tp, fp, fn, tn, as ints).

    precision = tp/(tp+fp), recall = tp/(tp+fn), f1 = dice = 2tp/(2tp+fp+fn),
    jaccard = foreground IoU = tp/(tp+fp+fn), accuracy = (tp+tn)/all,
    mean_iou = mean of jaccard and background IoU tn/(tn+fp+fn).
    Rule for 0/0 (no NaN): a zero denominator means its numerator is zero too, and the score is 1.0
    (e.g. precision of an empty prediction is 1.0; its recall is 0.0 unless the truth is empty too).
    """
    if not isinstance(counts, Counts):
        raise MitosegError(f"scores takes the Counts of metrics.confusion, not a {type(counts).__name__}")
    tp, fp, fn, tn = counts.tp, counts.fp, counts.fn, counts.tn
    jaccard = _ratio(tp, tp + fp + fn)
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "jaccard": jaccard,
        "accuracy": _ratio(tp + tn, counts.total),
        "mean_iou": (jaccard + _ratio(tn, tn + fp + fn)) / 2.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def jaccard(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground IoU of a mask against a truth (Z, Y, X; binary: bool, or 0 and one other value, which is
    foreground; more values are refused, `io.foreground`): `scores`' "jaccard" of their `confusion`."""
    return scores(confusion(pred, truth))["jaccard"]


def _check_labels(name: str, labels: np.ndarray) -> np.ndarray:
    if labels.dtype == np.bool_:  # a mask would be one object
        raise MitosegError(f"{name} must be object ids, not a bool mask: label it first (instances.label)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise MitosegError(f"{name} must be an integer label array, got dtype {labels.dtype}")
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise MitosegError(f"{name} has negative labels; 0 is background and objects are > 0")
    return labels


DENSE_PAIRS = 1 << 22  # `_overlaps` counts (true id, pred id) pairs in one dense array up to this many (32 MiB)


def _overlaps(true_labels: np.ndarray, pred_labels: np.ndarray):
    """Sparse (n_true_ids, n_pred_ids) voxel-overlap matrix plus the sizes of every true and pred id
    (size 0 for the background id 0). Counted slab by slab, so memory follows the slab and the number
    of overlapping pairs, not the volume."""
    n_t = int(true_labels.max(initial=0)) + 1
    n_p = int(pred_labels.max(initial=0)) + 1
    if n_t * n_p <= DENSE_PAIRS:  # every (true, pred) pair's count, background included, in one bincount
        pairs = np.zeros(n_t * n_p, np.int64)
        for t, p in _slabs(true_labels, pred_labels):
            pairs += np.bincount(t.astype(np.int64) * n_p + p, minlength=pairs.size)
        pairs = pairs.reshape(n_t, n_p)
        true_sizes, pred_sizes = pairs.sum(axis=1), pairs.sum(axis=0)
        pairs[0], pairs[:, 0] = 0, 0
        rows, cols = np.nonzero(pairs)
        true_sizes[0] = pred_sizes[0] = 0
        return scipy.sparse.coo_matrix((pairs[rows, cols], (rows, cols)), shape=(n_t, n_p)), true_sizes, pred_sizes
    true_sizes, pred_sizes = np.zeros(n_t, np.int64), np.zeros(n_p, np.int64)
    keys, counts = [], []
    for t, p in _slabs(true_labels, pred_labels):
        t, p = t.astype(np.int64), p.astype(np.int64)
        true_sizes += np.bincount(t, minlength=n_t)
        pred_sizes += np.bincount(p, minlength=n_p)
        both = (t > 0) & (p > 0)
        key, count = np.unique(t[both] * n_p + p[both], return_counts=True)
        keys.append(key)
        counts.append(count)
    true_sizes[0] = pred_sizes[0] = 0
    key, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    count = np.bincount(inverse, weights=np.concatenate(counts), minlength=key.size).astype(np.int64)
    inter = scipy.sparse.coo_matrix((count, (key // n_p, key % n_p)), shape=(n_t, n_p))
    return inter, true_sizes, pred_sizes


def _max_matches(rows: np.ndarray, cols: np.ndarray, iou: np.ndarray) -> int:
    """Size of the Hungarian matching of candidate (true, pred) pairs, each object used at most once.

    Cost as in cellpose: first maximise the number of pairs, then their IoU. Solved separately on each
    connected group of candidates (usually single pairs), so no dense n_true x n_pred matrix is built.
    """
    if rows.size == 0:
        return 0
    r_ids, r = np.unique(rows, return_inverse=True)
    c_ids, c = np.unique(cols, return_inverse=True)
    n_r = r_ids.size
    graph = scipy.sparse.coo_matrix((np.ones(r.size), (r, n_r + c)), shape=(n_r + c_ids.size,) * 2)
    _, group = scipy.sparse.csgraph.connected_components(graph, directed=False)
    edge_group = group[r]
    matched = 0
    for g in np.unique(edge_group):
        sel = edge_group == g
        gr, gr_inv = np.unique(r[sel], return_inverse=True)
        gc, gc_inv = np.unique(c[sel], return_inverse=True)
        if gr.size == 1 or gc.size == 1:
            matched += 1  # a star: only one pair can be matched
            continue
        cost = np.zeros((gr.size, gc.size))  # IoU bonus < 1 in total: never trades a pair for IoU
        cost[gr_inv, gc_inv] = -(1.0 + iou[sel] / (2.0 * min(gr.size, gc.size)))
        ri, ci = linear_sum_assignment(cost)
        matched += int(np.count_nonzero(cost[ri, ci] < 0))
    return matched


def match_instances(pred_labels: np.ndarray, true_labels: np.ndarray,
                    iou_threshold: float = 0.5) -> dict[str, float | int]:
    """Object-level scores: one-to-one matching of predicted and true objects with IoU >= `iou_threshold`.

    `pred_labels`, `true_labels`: in-memory integer label arrays of the same shape (0 = background;
    ids need not be consecutive, memory grows with the largest id). Returns n_pred, n_true, tp
    (matched pairs), fp (unmatched predicted objects), fn (unmatched true objects), and precision =
    tp/n_pred, recall = tp/n_true, f1 = 2tp/(n_pred+n_true), each 1.0 for 0/0 as in `scores`.
    """
    from mitoseg import io

    checks.check(iou_threshold=iou_threshold)
    pred_labels = np.asarray(io.refuse_path(pred_labels, "pred_labels"))
    true_labels = np.asarray(io.refuse_path(true_labels, "true_labels"))
    _check_same_shape(pred_labels.shape, true_labels.shape)
    inter, true_sizes, pred_sizes = _overlaps(_check_labels("true_labels", true_labels),
                                              _check_labels("pred_labels", pred_labels))
    iou = inter.data / (true_sizes[inter.row] + pred_sizes[inter.col] - inter.data)
    keep = iou >= iou_threshold
    tp = _max_matches(inter.row[keep], inter.col[keep], iou[keep])
    n_true = int(np.count_nonzero(true_sizes[1:]))
    n_pred = int(np.count_nonzero(pred_sizes[1:]))
    return {
        "n_pred": n_pred,
        "n_true": n_true,
        "tp": tp,
        "fp": n_pred - tp,
        "fn": n_true - tp,
        "precision": _ratio(tp, n_pred),
        "recall": _ratio(tp, n_true),
        "f1": _ratio(2 * tp, n_pred + n_true),
    }


def cores() -> int:
    """The CPU cores this process may use (its affinity, where the system tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


ERROR_WIDTHS = (1, 2, 4)  # distances to the true surface, in in-plane voxels, that `error_places` counts


def _whole_objects(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Boolean (Z, Y, X): the voxels of `a`'s 26-connected objects that share no voxel with `b` (both bool)."""
    labels = cc3d.connected_components(a, connectivity=26)
    touched = np.zeros(int(labels.max(initial=0)) + 1, bool)
    touched[np.unique(labels[b])] = True
    touched[0] = True
    return ~touched[labels]


def error_places(mask: np.ndarray, truth: np.ndarray, voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
                 widths: Sequence[int] = ERROR_WIDTHS, slab: int = 32) -> dict:
    """Where a binary mask's errors lie against the truth: in whole objects, or how near the true surface.

    `mask`, `truth`: in-memory binary (Z, Y, X) arrays of one shape, foreground > 0 (more values are refused,
    `io.foreground`); `voxel_size` (z, y, x) in nm.
    Each false positive (FP) and false negative (FN) voxel is counted once: in a *whole object* when it
    belongs to a true object the mask misses entirely (FN) or to a 26-connected object of the mask that
    touches no true voxel (FP); otherwise by its Euclidean distance to the true surface (a voxel next to
    it: one voxel), counted as *near* for each width w of `widths` (in-plane voxels) it lies within.
    Returns ints tp, fp, fn, fp_whole, fn_whole, fp_near_W, fn_near_W per width W, and floats jaccard,
    jaccard_whole_right and jaccard_near_W_right: the foreground IoU if those errors were right (FP
    removed, FN found). Distances are exact up to the largest width: the volume is taken `slab` slices
    at a time with as many slices around as that width spans in Z, so memory follows the slab.
    """
    from mitoseg import io

    checks.voxel_size(voxel_size)
    mask = io.foreground(io.refuse_path(mask, "the mask"), "the mask")
    truth = io.foreground(io.refuse_path(truth, "the truth"), "the truth")
    _check_same_shape(mask.shape, truth.shape)
    if mask.ndim != 3:
        raise MitosegError(f"error_places needs (Z, Y, X) volumes, not shape {mask.shape}")
    counts = confusion(mask, truth)
    out = {"tp": counts.tp, "fp": counts.fp, "fn": counts.fn}
    whole = _whole_objects(truth, mask) | _whole_objects(mask, truth)  # missed true objects, false objects
    out["fp_whole"] = int(np.count_nonzero(whole & mask))
    out["fn_whole"] = int(np.count_nonzero(whole & truth))
    spacing = tuple(float(v) for v in voxel_size)
    limits = [w * spacing[-1] * (1 + 1e-9) for w in widths]
    halo = int(np.ceil(max(limits, default=0) / spacing[0]))
    near = {(kind, w): 0 for kind in ("fp", "fn") for w in widths}
    depth = mask.shape[0]
    for z0 in range(0, depth, slab):
        lo, hi = max(0, z0 - halo), min(depth, z0 + slab + halo)
        core = slice(z0 - lo, min(depth, z0 + slab) - lo)
        t = truth[lo:hi]
        if t.all() or not t.any():  # no surface within reach: nothing is near it
            continue
        tc, mc, oc = t[core], mask[lo:hi][core], ~whole[lo:hi][core]
        # one transform of two labels (1 outside the truth, 2 inside) gives every voxel its distance to the other
        # side, i.e. to the true surface from within and without; in uint8, faster than bool for edt (with both
        # changes 2.8x on the CA1 test volume, benchmarks/bench_evaluation.py)
        distance = edt.edt(t.view(np.uint8) + np.uint8(1), anisotropy=spacing, black_border=False,
                           parallel=cores())[core]
        for kind, wrong in (("fn", tc & ~mc & oc), ("fp", mc & ~tc & oc)):
            placed = distance[wrong]
            for w, limit in zip(widths, limits, strict=True):
                near[kind, w] += int(np.count_nonzero(placed <= limit))
    union = counts.tp + counts.fp + counts.fn
    out["jaccard"] = _ratio(counts.tp, union)
    out["jaccard_whole_right"] = _ratio(counts.tp + out["fn_whole"], union - out["fp_whole"])
    for w in widths:
        out[f"fp_near_{w}"], out[f"fn_near_{w}"] = near["fp", w], near["fn", w]
        out[f"jaccard_near_{w}_right"] = _ratio(counts.tp + near["fn", w], union - near["fp", w])
    return out
