"""Separate mitochondria into objects with 3D connected components, and measure the objects.

`label` works in memory. `label_blockwise` labels volumes larger than RAM block by block and gives
the same partition as `label` on the whole volume. dask_image.ndmeasure.label was not used for it:
it has no min_size, and written to zarr its dask graph keeps every labelled block in memory until the
global merge has run (and it uses scipy.ndimage.label per block instead of the faster cc3d).

How `label_blockwise` works (two passes over the blocks, in C order):
1. each block is labelled alone with cc3d, its ids shifted by the number of ids of the blocks before
   it ("provisional ids"); cc3d.region_graph on the thin slabs where the block meets the blocks
   already done gives the pairs of provisional ids that touch across block faces, edges and corners;
2. the equivalence graph is solved with scipy.sparse.csgraph, objects under min_size are dropped,
   and each block is labelled again (cc3d is deterministic) and rewritten through a lookup table.
Pass 2 only reads the mask and the tables, so it is idempotent per block and may be rerun or mapped
over blocks in any order. The per-block steps are pure functions so they can be mapped with dask.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Sequence
from pathlib import Path

import cc3d
import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
from tqdm import tqdm

from mitoseg.errors import MitosegError

CONNECTIVITIES = (6, 18, 26)
COLUMNS = (
    "id", "voxels", "volume_um3", "centroid_z", "centroid_y", "centroid_x",
    "bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1",
)  # fmt: skip


def _check_connectivity(connectivity: int) -> None:
    if connectivity not in CONNECTIVITIES:
        raise MitosegError(f"connectivity must be 6, 18 or 26 (3D), got {connectivity}")


def _check_3d(name: str, shape: Sequence[int]) -> None:
    if len(shape) != 3:
        raise MitosegError(f"{name} must be 3D (z, y, x), got shape {tuple(shape)}")


def _cc3d_connectivity(shape: Sequence[int], connectivity: int) -> int:
    """18 instead of 26 for arrays one voxel thin, where both agree (cc3d 4.1.1 may raise there with 26)."""
    return 18 if connectivity == 26 and min(shape) == 1 else connectivity


def label(mask: np.ndarray, connectivity: int = 26, min_size: int = 0) -> np.ndarray:
    """Connected components of a 3D binary mask (voxels > 0 are foreground).

    Returns uint32 labels of the mask's shape (z, y, x): 0 background, objects 1..N consecutive.
    Objects with fewer than `min_size` voxels are removed (cc3d.dust) before numbering.
    """
    _check_connectivity(connectivity)
    mask = np.asarray(mask)
    _check_3d("mask", mask.shape)
    foreground = mask > 0
    connectivity = _cc3d_connectivity(mask.shape, connectivity)
    if min_size > 0:
        foreground = cc3d.dust(foreground, threshold=int(min_size), connectivity=connectivity)
    return cc3d.connected_components(foreground, connectivity=connectivity, out_dtype=np.uint32)


def measure(labels: np.ndarray, voxel_size: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, np.ndarray]:
    """Size, centroid and bounding box of every object of a 3D label array (0 = background).

    `voxel_size` is (z, y, x) in nm. Returns a table as a dict of equal-length numpy columns, one row per
    label id present, sorted by id: id (int64), voxels (int64), volume_um3 (float64, voxels *
    prod(voxel_size) / 1e9), centroid_z/y/x (float64, in voxels), bbox_z0/y0/x0/z1/y1/x1 (int64, voxels,
    half-open: the object lies in [z0, z1) x [y0, y1) x [x0, x1)). Keys are in `COLUMNS` order.
    """
    labels = np.asarray(labels)
    _check_3d("labels", labels.shape)
    if len(voxel_size) != 3 or any(float(v) <= 0 for v in voxel_size):
        raise MitosegError(f"voxel_size must be three positive numbers (z, y, x) in nm, got {voxel_size}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise MitosegError(f"labels must be an integer array, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise MitosegError("labels must be >= 0 (0 is background)")
    top = int(labels.max(initial=0))
    original_ids = np.arange(top + 1)
    if top >= labels.size:  # cc3d.statistics needs ids < number of voxels: compact them
        original_ids, labels = np.unique(labels, return_inverse=True)
        if original_ids[0] != 0:  # keep index 0 for the background
            original_ids, labels = np.concatenate([[0], original_ids]), labels + 1
    unsigned = labels.view(f"u{labels.dtype.itemsize}")  # cc3d wants unsigned ids; no copy
    stats = cc3d.statistics(unsigned, no_slice_conversion=True)
    voxels = np.asarray(stats["voxel_counts"], dtype=np.int64)
    ids = np.flatnonzero(voxels)
    ids = ids[ids > 0]
    # no_slice_conversion gives rows (z0, z1, y0, y1, x0, x1) with inclusive ends, in array axis order
    box = np.asarray(stats["bounding_boxes"], dtype=np.int64).reshape(-1, 6)[ids]
    centroids = np.asarray(stats["centroids"], dtype=np.float64).reshape(-1, 3)[ids]
    return {
        "id": original_ids[ids].astype(np.int64),
        "voxels": voxels[ids],
        "volume_um3": voxels[ids] * float(np.prod(np.asarray(voxel_size, dtype=np.float64))) / 1e9,
        "centroid_z": centroids[:, 0],
        "centroid_y": centroids[:, 1],
        "centroid_x": centroids[:, 2],
        "bbox_z0": box[:, 0],
        "bbox_y0": box[:, 2],
        "bbox_x0": box[:, 4],
        "bbox_z1": box[:, 1] + 1,
        "bbox_y1": box[:, 3] + 1,
        "bbox_x1": box[:, 5] + 1,
    }


def write_table(table: dict[str, np.ndarray], path: str | Path) -> None:
    """Write a table of equal-length columns (as returned by `measure`) to a CSV file with a header row."""
    lengths = {len(col) for col in table.values()}
    if len(lengths) > 1:
        raise MitosegError(f"table columns have different lengths: {sorted(lengths)}")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(list(table))
        writer.writerows(zip(*(np.asarray(col).tolist() for col in table.values()), strict=True))


# ---------------------------------------------------------------- blockwise labelling, pure steps


def _foreground(block: np.ndarray, threshold: float | None) -> np.ndarray:
    """Boolean foreground of a block: `block >= threshold`, or `block > 0` when threshold is None."""
    block = np.asarray(block)
    return block > 0 if threshold is None else block >= threshold


def _label_block(mask_block: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """cc3d labels of one boolean block: (uint32 labels 0..n of the block's shape, n)."""
    connectivity = _cc3d_connectivity(mask_block.shape, connectivity)
    labels, n = cc3d.connected_components(mask_block, connectivity=connectivity, return_N=True, out_dtype=np.uint32)
    return labels, int(n)


def _touching_pairs(ext: np.ndarray, connectivity: int) -> np.ndarray:
    """Pairs of different ids that touch in a block with a one-voxel halo before it on each axis.

    `ext` (uint64, shape block + 1 per axis) holds the block's provisional ids at [1:, 1:, 1:] and the
    ids of the blocks before it in the first plane of each axis. Ids of one block never touch each
    other, and every contact with the halo lies in one of the three two-voxel-thick slabs, so only
    those are scanned. Returns an int64 array (k, 2).
    """
    pairs: set[tuple[int, int]] = set()
    for slab in (ext[:2], ext[:, :2], ext[:, :, :2]):
        pairs |= cc3d.region_graph(np.ascontiguousarray(slab), connectivity=connectivity)
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def _global_lookup(sizes: np.ndarray, pairs: np.ndarray, min_size: int) -> tuple[np.ndarray, int]:
    """Final id of every provisional id, from the touching pairs and the provisional sizes.

    `sizes` (int64, n_provisional + 1; index 0 is background) are voxel counts, `pairs` (k, 2) the
    provisional ids that touch. Objects (groups of touching ids) with fewer than `min_size` voxels get 0,
    the others 1..N in order of their first provisional id. Returns (uint32 lookup of len(sizes), N).
    """
    n = sizes.size
    graph = scipy.sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    n_groups, group = scipy.sparse.csgraph.connected_components(graph, directed=False)
    group_sizes = np.bincount(group, weights=sizes, minlength=n_groups)  # float64: exact below 2**53
    _, first = np.unique(group, return_index=True)  # first provisional id of each group
    order = np.argsort(first)
    kept = order[group_sizes[order] >= max(min_size, 1)]  # background (id 0, size 0) is never kept
    if kept.size >= 2**32:
        raise MitosegError("more than 2**32 - 1 objects: they do not fit in uint32 labels")
    new_id = np.zeros(n_groups, dtype=np.uint32)
    new_id[kept] = np.arange(1, kept.size + 1, dtype=np.uint32)
    return new_id[group], int(kept.size)


def _relabel_block(labels: np.ndarray, n: int, lookup: np.ndarray, offset: int) -> np.ndarray:
    """Final uint32 ids of one block with local ids 0..n: id l > 0 becomes lookup[offset + l], 0 stays 0."""
    table = lookup[offset : offset + n + 1].copy()
    table[0] = 0
    return table[labels]


# ---------------------------------------------------------------- blockwise labelling, driver


def _grid(shape: Sequence[int], block: Sequence[int]) -> list[tuple[slice, slice, slice]]:
    """C-order slices of the blocks (z, y, x) covering `shape`; the last block of an axis may be smaller."""
    if len(block) != 3 or any(int(b) < 1 for b in block):
        raise MitosegError(f"block must be three positive sizes (z, y, x), got {tuple(block)}")
    starts = [range(0, n, int(b)) for n, b in zip(shape, block, strict=True)]
    return [
        tuple(slice(s, min(s + int(b), n)) for s, b, n in zip(corner, block, shape, strict=True))
        for corner in itertools.product(*starts)
    ]


def _provisional_pass(mask, blocks, connectivity, threshold, progress):
    """Pass 1: (per-block offsets, provisional sizes, touching pairs), holding a few block-sized arrays and
    the last planes of the blocks done before (buffers shifted by +1 so index 0 is the zero border)."""
    _, n_y, n_x = mask.shape
    z_prev = z_cur = np.zeros((n_y + 1, n_x + 1), np.uint64)  # last z plane of the previous block layer
    y_prev = y_cur = x_prev = None
    offsets, sizes, pairs = [], [np.zeros(1, np.int64)], []
    total = 0
    for zs, ys, xs in tqdm(blocks, desc="label pass 1/2", unit="block", disable=not progress):
        dz, dy, dx = zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start
        if ys.start == 0 and xs.start == 0:  # new layer of blocks
            z_prev, z_cur = z_cur, np.zeros((n_y + 1, n_x + 1), np.uint64)
        if xs.start == 0:  # new row of blocks
            y_prev = y_cur if ys.start else np.zeros((dz, n_x + 1), np.uint64)
            y_cur = np.zeros((dz, n_x + 1), np.uint64)
            x_prev = np.zeros((dz, dy), np.uint64)
        local, n = _label_block(_foreground(mask[zs, ys, xs], threshold), connectivity)
        ext = np.zeros((dz + 1, dy + 1, dx + 1), np.uint64)
        ext[1:, 1:, 1:] = np.where(local > 0, local.astype(np.uint64) + np.uint64(total), 0)
        ext[0] = z_prev[ys.start : ys.stop + 1, xs.start : xs.stop + 1]
        ext[1:, 0] = y_prev[:, xs.start : xs.stop + 1]
        ext[1:, 1:, 0] = x_prev
        pairs.append(_touching_pairs(ext, connectivity))
        z_cur[ys.start + 1 : ys.stop + 1, xs.start + 1 : xs.stop + 1] = ext[-1, 1:, 1:]
        y_cur[:, xs.start + 1 : xs.stop + 1] = ext[1:, -1, 1:]
        x_prev = ext[1:, 1:, -1].copy()
        offsets.append(total)
        sizes.append(np.bincount(local.ravel(), minlength=n + 1)[1:].astype(np.int64))
        total += n
    return offsets, np.concatenate(sizes), np.concatenate(pairs)


def label_blockwise(
    mask,
    out,
    block: Sequence[int] = (64, 512, 512),
    connectivity: int = 26,
    min_size: int = 0,
    threshold: float | None = None,
    progress: bool = False,
) -> int:
    """Label a 3D mask larger than RAM into `out`, block by block; returns the number of objects N.

    `mask`: 3D array-like (z, y, x) that returns numpy arrays when sliced (zarr.Array, h5py.Dataset,
    numpy...); foreground is `mask >= threshold`, or `mask > 0` when threshold is None.
    `out`: pre-created writable array-like of the same shape, dtype uint32 (e.g. a zarr array whose
    chunks divide `block` for efficient writes). It receives ids 1..N (0 background), equal up to
    renumbering to `label(mask, connectivity, min_size)` on the whole volume. `block` is in voxels.
    Memory: a few block-sized arrays (the largest uint64), two full y-x planes of uint64, and tables of
    about 30 bytes per provisional object; the mask is read twice (pass 2 relabels instead of storing).
    """
    _check_connectivity(connectivity)
    _check_3d("mask", mask.shape)
    if tuple(out.shape) != tuple(mask.shape):
        raise MitosegError(f"output shape {tuple(out.shape)} differs from mask shape {tuple(mask.shape)}")
    if np.dtype(out.dtype) != np.uint32:
        raise MitosegError(f"output array must have dtype uint32, got {out.dtype}")
    blocks = _grid(mask.shape, block)
    offsets, sizes, pairs = _provisional_pass(mask, blocks, connectivity, threshold, progress)
    lookup, n_objects = _global_lookup(sizes, pairs, int(min_size))
    for sl, offset in tqdm(
        list(zip(blocks, offsets, strict=True)), desc="label pass 2/2", unit="block", disable=not progress
    ):
        local, n = _label_block(_foreground(mask[sl], threshold), connectivity)
        out[sl] = _relabel_block(local, n, lookup, offset)
    return n_objects
