"""Separate mitochondria into objects with 3D connected components, and measure the objects.

`label` works in memory. `label_blockwise` labels volumes larger than RAM block by block and gives
the same partition as `label` on the whole volume. dask_image.ndmeasure.label was not used for it:
it has no min_size, and written to zarr its dask graph keeps every labelled block in memory until the
global merge has run (and it uses scipy.ndimage.label per block instead of the faster cc3d).

How `label_blockwise` works (two passes over the blocks, in C order):
1. each block is labelled alone with cc3d (`summarize_block`: local ids, their sizes, the six faces);
   cc3d.region_graph on the thin slabs where a block meets the up to seven blocks before it (faces,
   edges and corners, built from their faces alone) gives the ids that touch (`block_pairs`);
2. the equivalence graph is solved with scipy.sparse.csgraph (`merge_blocks`: provisional id = running
   offset + local id, objects under min_size dropped, final ids in order of first provisional id),
   and each block is labelled again (cc3d is deterministic) and rewritten through its part of the
   lookup table (`relabel_block`).
A block's summary needs no neighbour, `block_pairs` only the summaries of its neighbours, and pass 2
only the mask and a table: the steps are pure functions, which `mitoseg.cluster.label_dask` maps over
a dask.distributed cluster with the same result, id for id.
"""

from __future__ import annotations

import csv
import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import cc3d
import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
from tqdm import tqdm

from mitoseg import blocks, checks, io, omezarr
from mitoseg.errors import MitosegError
from mitoseg.io import block_marker

CONNECTIVITIES = (6, 18, 26)
COLUMNS = (
    "id", "voxels", "volume_um3", "centroid_z", "centroid_y", "centroid_x",
    "bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1",
)  # fmt: skip


def _check_connectivity(connectivity: int) -> None:
    if connectivity not in CONNECTIVITIES:
        raise MitosegError(f"connectivity must be 6, 18 or 26 (3D), not {connectivity!r}")


def _check_ids(dtype: Any) -> None:
    if not np.issubdtype(dtype, np.integer):
        raise MitosegError(f"labels must be an integer array of object ids, got dtype {dtype}"
                           + ("; a mask: label it first (instances.label)" if np.dtype(dtype) == np.bool_ else ""))


def _check_3d(name: str, shape: Sequence[int]) -> None:
    if len(shape) != 3:
        raise MitosegError(f"{name} must be 3D (z, y, x), got shape {tuple(shape)}")


def _cc3d_connectivity(shape: Sequence[int], connectivity: int) -> int:
    """18 instead of 26 for arrays one voxel thin, where both agree (cc3d 4.1.1 may raise there with 26)."""
    return 18 if connectivity == 26 and min(shape) == 1 else connectivity


def label(mask: np.ndarray, connectivity: int = 26, min_size: int = 0) -> np.ndarray:
    """Connected components of a 3D binary mask (voxels > 0 are foreground; more than two values, e.g.
    probabilities, are refused: `io.foreground`).

    Returns uint32 labels of the mask's shape (z, y, x): 0 background, objects 1..N consecutive in the
    order cc3d numbers them. Objects with fewer than `min_size` voxels are removed before numbering
    (the same labels as cc3d.dust then connected components, from one labelling pass instead of two).
    """
    _check_connectivity(connectivity)
    checks.check(min_size=min_size)
    mask = np.asarray(io.refuse_path(mask, "mask"))
    _check_3d("mask", mask.shape)
    foreground = io.foreground(mask)
    labels, n = cc3d.connected_components(foreground, connectivity=_cc3d_connectivity(mask.shape, connectivity),
                                          out_dtype=np.uint32, return_N=True)
    if min_size > 0:
        keep = _sizes(labels, foreground, int(n)) >= min_size
        keep[0] = False
        renumber = np.zeros(keep.size, np.uint32)
        renumber[keep] = np.arange(1, np.count_nonzero(keep) + 1, dtype=np.uint32)
        labels = _remap(labels, foreground, renumber)
    return labels


def _sizes(labels: np.ndarray, foreground: np.ndarray, n: int) -> np.ndarray:
    """Voxels of each id 0..n of `labels` (int64; id 0 counts none), counted over the `foreground` voxels
    (bool, where labels > 0) alone: in EM, organelles fill a few % of a volume, and counting a few % is far
    faster than the whole (a 64 x 512 x 512 block at 5 %: 6 against 94 ms, by hand)."""
    return np.bincount(labels[foreground], minlength=n + 1)


def _remap(labels: np.ndarray, foreground: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[labels]`` (with table[0] == 0), looked up for the `foreground` voxels (bool, where labels > 0)
    alone where they are under a quarter of the array (~3x faster at a few %), else for every voxel."""
    if np.count_nonzero(foreground) * 4 >= foreground.size:
        return table[labels]
    out = np.zeros(labels.shape, table.dtype)
    out[foreground] = table[labels[foreground]]
    return out


def measure(labels: np.ndarray, voxel_size: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, np.ndarray]:
    """Size, centroid and bounding box of every object of a 3D label array (0 = background).

    `voxel_size` is (z, y, x) in nm. Returns a table as a dict of equal-length numpy columns, one row per
    label id present, sorted by id: id (int64; uint64 where ids pass int64's top), voxels (int64), volume_um3
    (float64, voxels * prod(voxel_size) / 1e9), centroid_z/y/x (float64, in voxels), bbox_z0/y0/x0/z1/y1/x1
    (int64, voxels, half-open: the object lies in [z0, z1) x [y0, y1) x [x0, x1)). Keys are in `COLUMNS` order.
    """
    labels = np.asarray(io.refuse_path(labels, "labels"))
    _check_3d("labels", labels.shape)
    checks.voxel_size(voxel_size)
    _check_ids(labels.dtype)
    if labels.size and labels.min() < 0:
        raise MitosegError("labels must be >= 0 (0 is background)")
    top = int(labels.max(initial=0))
    if top >= labels.size:  # cc3d.statistics needs ids < number of voxels: compact them (before any array of top)
        original_ids, labels = np.unique(labels, return_inverse=True)
        if original_ids[0] != 0:  # keep index 0 for the background
            original_ids, labels = np.concatenate([[0], original_ids]), labels + 1
    else:
        original_ids = np.arange(top + 1)
    unsigned = labels.view(f"u{labels.dtype.itemsize}")  # cc3d wants unsigned ids; no copy
    stats = cc3d.statistics(unsigned, no_slice_conversion=True)
    voxels = np.asarray(stats["voxel_counts"], dtype=np.int64)
    ids = np.flatnonzero(voxels)
    ids = ids[ids > 0]
    # no_slice_conversion gives rows (z0, z1, y0, y1, x0, x1) with inclusive ends, in array axis order
    box = np.asarray(stats["bounding_boxes"], dtype=np.int64).reshape(-1, 6)[ids]
    centroids = np.asarray(stats["centroids"], dtype=np.float64).reshape(-1, 3)[ids]
    found = original_ids[ids]
    huge = found.dtype == np.uint64 and found.max(initial=0) > np.iinfo(np.int64).max  # as int64: negative
    return {
        "id": found if huge else found.astype(np.int64),
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


def measure_blockwise(labels, n: int, voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
                      block: Sequence[int] = (64, 512, 512), progress: bool = False) -> dict[str, np.ndarray]:
    """`measure` for a label array larger than RAM (zarr etc.), with ids in 1..n: the same table.

    Sums counts, coordinate sums and box extremes block by block (`block_statistics`, `merge_statistics`),
    the next block read in a thread meanwhile; memory is two blocks plus 11 numbers per object. Hand-written
    because cc3d.statistics needs the whole array at once. `mitoseg.cluster.table_dask` runs the blocks in
    parallel, with the same table.
    """
    io.refuse_path(labels, "labels")
    _check_3d("labels", labels.shape)
    checks.voxel_size(voxel_size)
    grid = blocks.grid(labels.shape, block)
    with ThreadPoolExecutor(max_workers=1) as pool:
        reads = tqdm(_read_ahead(pool, labels, grid), total=len(grid), desc="measure", unit="block",
                     disable=not progress)
        return merge_statistics(n, (block_statistics(arr, b, n) for arr, b in zip(reads, grid, strict=True)),
                                voxel_size)


def block_statistics(arr: np.ndarray, block: blocks.Block, n: int) -> tuple[np.ndarray, ...]:
    """One block's part of `measure_blockwise`: (ids present (int64, k), their voxel counts (k,), coordinate
    sums (3, k) float64, lowest and highest coordinates (3, k) int64), in the volume's coordinates;
    MitosegError for an id above n."""
    flat = np.flatnonzero(arr)
    if not flat.size:
        empty = np.zeros((3, 0))
        return np.zeros(0, np.int64), np.zeros(0, np.int64), empty, empty.astype(np.int64), empty.astype(np.int64)
    ids, inverse = np.unique(arr.ravel()[flat], return_inverse=True)
    if ids[-1] > n:
        raise MitosegError(f"labels hold id {ids[-1]} > {n}: not labelled 1..n")
    coords = [c + s.start for c, s in zip(np.unravel_index(flat, arr.shape), block, strict=True)]
    order = np.argsort(inverse, kind="stable")
    per_id = np.bincount(inverse)
    starts = np.concatenate([[0], np.cumsum(per_id)[:-1]])
    sums = np.stack([np.bincount(inverse, weights=c) for c in coords])
    low = np.stack([np.minimum.reduceat(c[order], starts) for c in coords]).astype(np.int64)
    high = np.stack([np.maximum.reduceat(c[order], starts) for c in coords]).astype(np.int64)
    return ids.astype(np.int64), per_id.astype(np.int64), sums, low, high


def merge_statistics(n: int, parts: Iterable[tuple[np.ndarray, ...]],
                     voxel_size: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, np.ndarray]:
    """`measure_blockwise`'s table from every block's `block_statistics` (ids in 1..n), summed as they come."""
    count = np.zeros(n + 1, np.int64)
    sums = np.zeros((3, n + 1), np.float64)
    low = np.full((3, n + 1), np.iinfo(np.int64).max, np.int64)
    high = np.full((3, n + 1), -1, np.int64)
    for ids, part_count, part_sums, part_low, part_high in parts:
        count[ids] += part_count
        sums[:, ids] += part_sums
        low[:, ids] = np.minimum(low[:, ids], part_low)
        high[:, ids] = np.maximum(high[:, ids], part_high)
    ids = np.flatnonzero(count)
    ids = ids[ids > 0]
    volume = float(np.prod(np.asarray(voxel_size, dtype=np.float64))) / 1e9
    table = {"id": ids.astype(np.int64), "voxels": count[ids], "volume_um3": count[ids] * volume}
    for axis, name in enumerate("zyx"):
        table[f"centroid_{name}"] = sums[axis, ids] / count[ids]
    for axis, name in enumerate("zyx"):
        table[f"bbox_{name}0"] = low[axis, ids]
    for axis, name in enumerate("zyx"):
        table[f"bbox_{name}1"] = high[axis, ids] + 1
    return table


MORPHOLOGY = ("surface_um2", "sphericity", "equivalent_diameter_um", "length_um", "width_um", "elongation",
              "touches_border")
LARGE_BOX = 2**26  # voxels: an object's bounding box above it is read alone, slab by slab (a network across the volume)
SLAB = 2**24  # voxels of one such slab (Z planes of the box)


def morphology(labels, table: dict[str, np.ndarray], voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
               progress: bool = False, block: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """`table` (from `measure` or `measure_blockwise`) with the shape of every object added, each object
    measured whole from its bounding box: surface_um2 (marching-cubes mesh of the object, skimage),
    sphericity (pi^(1/3) (6V)^(2/3) / S of that mesh, V the volume it encloses: 1 for a ball, less for
    anything else, a voxelised ball about 0.9 on cubic voxels, less on flat ones, whose steps between sections
    add surface), equivalent_diameter_um (of the ball of the voxels' volume), length_um and width_um (the
    longest and shortest axis of the ellipsoid of the same second moments, sqrt(20 eigenvalue) of the
    coordinates' covariance in µm, as skimage's axis_major_length and axis_minor_length), elongation (length /
    width) and touches_border (the object reaches a face of the volume, so it may be cut and its shape is not
    the whole object's).

    `labels`: any array-like (Z, Y, X). Objects whose boxes start in the same `block` (default: the array's
    blocks, `blocks.block_of`, else 64 x 512 x 512) are read together, as the one box around them all (`shape_groups`,
    `group_shapes`): a chunked array is decompressed about once, not once per object. Memory: the largest
    such box, but an object whose box passes `LARGE_BOX` voxels is read alone, in slabs of Z planes of at most
    `SLAB` voxels (the same values: `_shape_row` sums over slabs). `mitoseg.cluster.table_dask` measures the
    groups in parallel, with the same table.
    `voxel_size` must be the one `table` was measured with (its volumes tell), else MitosegError."""
    io.refuse_path(labels, "labels")
    _check_3d("labels", labels.shape)
    if hasattr(labels, "dtype"):  # a mask given as the labels: NaN shapes
        _check_ids(labels.dtype)
    checks.voxel_size(voxel_size)
    voxels, volumes = table.get("voxels"), table.get("volume_um3")
    if voxels is not None and volumes is not None and len(voxels):
        measured = float(volumes[0]) * 1e9 / float(voxels[0])  # nm³ of one voxel
        if not np.isclose(measured, float(np.prod(np.asarray(voxel_size, dtype=np.float64))), rtol=1e-3):
            raise MitosegError(f"the table was measured with voxels of {measured:g} nm³ and voxel_size "
                               f"{tuple(float(v) for v in voxel_size)} makes {float(np.prod(voxel_size)):g}: give "
                               "morphology the voxel_size given to measure")
    groups = shape_groups(table, block or blocks.block_of(labels) or (64, 512, 512))
    bar = tqdm(total=len(table["id"]), desc="shape", disable=not progress)
    parts = []
    for rows in groups:
        parts.append(group_shapes(labels, {k: v[rows] for k, v in table.items()}, voxel_size))
        bar.update(len(rows))
    bar.close()
    return join_shapes(table, groups, parts)


def shape_groups(table: dict[str, np.ndarray], block: Sequence[int]) -> list[np.ndarray]:
    """Row indices of `table` (int64 arrays) grouped by the `block` (Z, Y, X voxels) in which each object's
    bounding box starts."""
    lo = np.stack([np.asarray(table[f"bbox_{a}0"], np.int64) for a in "zyx"], axis=1).reshape(-1, 3)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, start in enumerate(lo // np.asarray(block, np.int64)):
        groups.setdefault(tuple(start), []).append(i)
    return [np.asarray(rows, np.int64) for rows in groups.values()]


def group_shapes(labels, rows: dict[str, np.ndarray], voxel_size: Sequence[float]) -> dict[str, np.ndarray]:
    """`morphology`'s columns for the objects of `rows` (a table's rows: id and bounding box), read from
    `labels` as the one box around them all; an object whose box passes `LARGE_BOX` voxels alone, slab by slab
    (`_slabs`)."""
    spacing = np.asarray(voxel_size, dtype=np.float64) / 1000.0  # µm
    shape = np.asarray(labels.shape)
    lo = np.stack([rows[f"bbox_{a}0"] for a in "zyx"], axis=1).astype(np.int64).reshape(-1, 3)
    hi = np.stack([rows[f"bbox_{a}1"] for a in "zyx"], axis=1).astype(np.int64).reshape(-1, 3)
    out = {k: np.zeros(len(lo), np.float64) for k in MORPHOLOGY}
    large = np.prod(hi - lo, axis=1) > LARGE_BOX
    if (~large).any():
        g0, g1 = lo[~large].min(axis=0), hi[~large].max(axis=0)
        region = np.asarray(labels[g0[0]:g1[0], g0[1]:g1[1], g0[2]:g1[2]])
    for i, obj in enumerate(rows["id"]):
        if large[i]:
            slabs = _slabs(labels, obj, lo[i], hi[i])
        else:
            slabs = [(region[tuple(slice(a, b) for a, b in zip(lo[i] - g0, hi[i] - g0, strict=True))] == obj, 0, True)]
        _shape_row(out, i, slabs, spacing)
        out["touches_border"][i] = bool((lo[i] == 0).any() or (hi[i] == shape).any())
    return out


def _slabs(labels, obj: Any, lo: np.ndarray, hi: np.ndarray) -> Iterator[tuple[np.ndarray, int, bool]]:
    """Object `obj`'s boolean mask in its bounding box [lo, hi) of `labels`, read as slabs of Z planes of at most
    `SLAB` voxels: (mask, its first plane in the box, whether it is the last), each slab but the last with the next
    one's first plane too (for the mesh between them)."""
    depth = max(1, SLAB // int(np.prod(hi[1:] - lo[1:])))
    for a in range(int(lo[0]), int(hi[0]), depth):
        end = min(a + depth, int(hi[0]))
        planes = np.asarray(labels[a:min(end + 1, int(hi[0])), lo[1]:hi[1], lo[2]:hi[2]])
        yield planes == obj, a - int(lo[0]), end == int(hi[0])


def join_shapes(table: dict[str, np.ndarray], groups: Sequence[np.ndarray],
                parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`table` with the `group_shapes` columns of each group put back in its rows."""
    out = {k: np.zeros(len(table["id"]), np.float64) for k in MORPHOLOGY}
    for rows, part in zip(groups, parts, strict=True):
        for k in MORPHOLOGY:
            out[k][rows] = part[k]
    out["touches_border"] = out["touches_border"].astype(bool)
    return {**table, **out}


def _shape_row(out: dict[str, np.ndarray], i: int, slabs: Iterable[tuple[np.ndarray, int, bool]],
               spacing: np.ndarray) -> None:
    """Row `i` of `morphology`'s shape columns from the object's boolean mask in its bounding box, given whole as
    one slab ``(mask, 0, True)`` or as `_slabs`: the voxels' moments and the mesh's sums (each cube of the
    marching cubes lies in one slab; the volume enclosed is summed in the box's frame) add up over slabs."""
    from skimage.measure import marching_cubes, mesh_surface_area

    n, first, second = 0, np.zeros(3), np.zeros((3, 3))  # voxel count, sums of coordinates and of their products
    surface = enclosed = 0.0
    for mask, start, last in slabs:
        own = mask if last else mask[:-1]  # the next slab's first plane is its own
        n += _moments(own, start, first, second)
        if not mask.any():  # planes of a box without the object (ids of another tool need not be connected)
            continue
        try:
            verts, faces, _, _ = marching_cubes(np.pad(mask, ((int(start == 0), int(last)), (1, 1), (1, 1))).astype(
                np.float32), 0.5, spacing=tuple(spacing))
        except (ValueError, RuntimeError):  # too small to mesh
            surface = enclosed = float("nan")
            continue
        verts[:, 0] += (start + 1 if start else 0) * spacing[0]  # in the frame of the whole box padded by one
        surface += float(mesh_surface_area(verts, faces))
        enclosed += float(np.einsum("ij,ij->i", verts[faces[:, 0]],
                                    np.cross(verts[faces[:, 1]], verts[faces[:, 2]])).sum()) / 6
    enclosed = abs(enclosed)
    volume = n * float(np.prod(spacing))
    # the coordinates' covariance as skimage's inertia tensor takes it (biased): a solid ellipsoid's variance
    # along a semi-axis a is a^2 / 5, so its full axis is sqrt(20 eigenvalue)
    mean = first / max(n, 1)
    cov = (second / max(n, 1) - np.outer(mean, mean)) * np.outer(spacing, spacing)
    eig = np.sort(np.linalg.eigvalsh(cov)) if n > 1 else np.zeros(3)
    out["surface_um2"][i] = surface
    out["sphericity"][i] = np.pi ** (1 / 3) * (6 * enclosed) ** (2 / 3) / surface if surface > 0 else np.nan
    out["equivalent_diameter_um"][i] = (6 * volume / np.pi) ** (1 / 3)
    out["length_um"][i] = np.sqrt(20 * max(eig[-1], 0.0))
    out["width_um"][i] = np.sqrt(20 * max(eig[0], 0.0))
    out["elongation"][i] = out["length_um"][i] / out["width_um"][i] if out["width_um"][i] > 0 else np.inf


def _moments(mask: np.ndarray, start: int, first: np.ndarray, second: np.ndarray) -> int:
    """Add the sums of the coordinates (z, y, x voxels; z from `start`) of `mask`'s voxels to `first` (3,) and of
    their products to `second` (3, 3), from its projections (no list of coordinates); return its voxel count."""
    zy, zx, yx = (mask.sum(axis=a, dtype=np.int64) for a in (2, 1, 0))
    z, y, x = (np.arange(n, dtype=np.int64) for n in mask.shape)
    z += start
    cz, cy, cx = zy.sum(axis=1), yx.sum(axis=1), yx.sum(axis=0)
    first += [z @ cz, y @ cy, x @ cx]
    second += np.array([[z * z @ cz, z @ zy @ y, z @ zx @ x], [z @ zy @ y, y * y @ cy, y @ yx @ x],
                        [z @ zx @ x, y @ yx @ x, x * x @ cx]], dtype=np.float64)
    return int(cz.sum())


def write_table(table: dict[str, np.ndarray], path: str | Path) -> None:
    """Write a table of equal-length columns (as returned by `measure`) to a CSV file with a header row. An
    undefined value (NaN, infinite: the elongation of an object one section thick) is an empty cell, which
    spreadsheets and pandas read as missing, not as the text "inf"."""
    lengths = {len(col) for col in table.values()}
    if len(lengths) > 1:
        raise MitosegError(f"table columns have different lengths: {sorted(lengths)}")
    with io.writing(path) as tmp, open(tmp, "w", newline="") as f:  # never a half-written table
        writer = csv.writer(f, lineterminator="\n")  # not csv's CRLF: awk and cut read the last column whole
        writer.writerow(list(table))
        writer.writerows(zip(*(_cells(col) for col in table.values()), strict=True))
    io.release(path)


def _cells(column: np.ndarray) -> list:
    """A column's values for the CSV writer: non-finite floats as empty cells."""
    column = np.asarray(column)
    values = column.tolist()
    if np.issubdtype(column.dtype, np.floating) and not np.isfinite(column).all():
        values = ["" if bad else v for v, bad in zip(values, (~np.isfinite(column)).tolist(), strict=True)]
    return values


# ---------------------------------------------------------------- blockwise labelling, pure steps

CODE_SHIFT = 32  # local id l of the block with C-order index i is coded (i << 32) | l: unique without offsets
PREDECESSORS = tuple(d for d in itertools.product((0, 1), repeat=3) if any(d))  # grid offsets of blocks before


class BlockSummary(NamedTuple):
    """What pass 1 keeps of one labelled block: its C-order index in the grid, its number of local ids n,
    the voxels of ids 1..n (int64), and the uint32 local labels of its faces: `lo` the first plane along
    z, y, x (labels[0], labels[:, 0], labels[:, :, 0]), `hi` the last (labels[-1], labels[:, -1], labels[:, :, -1])."""

    index: int
    n: int
    sizes: np.ndarray
    lo: tuple[np.ndarray, ...]
    hi: tuple[np.ndarray, ...]


def _foreground(block: np.ndarray, threshold: float | None) -> np.ndarray:
    """Boolean foreground of a block: `block >= threshold` (`io.at_least`), or `block > 0` when threshold is None."""
    block = np.asarray(block)
    return block > 0 if threshold is None else io.at_least(block, threshold)


def _label_block(mask_block: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """cc3d labels of one boolean block: (uint32 labels 0..n of the block's shape, n)."""
    connectivity = _cc3d_connectivity(mask_block.shape, connectivity)
    labels, n = cc3d.connected_components(mask_block, connectivity=connectivity, return_N=True, out_dtype=np.uint32)
    return labels, int(n)


_FACES = ((0,), (slice(None), 0), (slice(None), slice(None), 0))


def summarize_block(
    mask_block: np.ndarray, index: int, connectivity: int = 26, threshold: float | None = None
) -> BlockSummary:
    """Pass 1 for one block alone: label it with cc3d (local ids 1..n) and keep its sizes and six faces."""
    foreground = _foreground(mask_block, threshold)
    local, n = _label_block(foreground, connectivity)
    sizes = _sizes(local, foreground, n)[1:].astype(np.int64)
    lo = tuple(local[f].copy() for f in _FACES)  # copies: views would keep the whole block alive
    hi = tuple(local[tuple(-1 if i == 0 else i for i in f)].copy() for f in _FACES)
    return BlockSummary(int(index), n, sizes, lo, hi)


def _coded(face: np.ndarray, index: int) -> np.ndarray:
    return np.where(face > 0, face.astype(np.uint64) | np.uint64(int(index) << CODE_SHIFT), np.uint64(0))


def block_pairs(
    own: BlockSummary, before: dict[tuple[int, int, int], BlockSummary | None], connectivity: int = 26
) -> np.ndarray:
    """Coded ids (uint64, (k, 2)) that touch where a block meets the up to seven blocks before it.

    `before[d]` is the summary of the block at grid position (own position - d) for d in PREDECESSORS,
    None or absent at the volume's border. The block and the planes just before it on each axis form
    `ext` (block + 1 voxel per axis, the halo at index 0); every contact across a face, edge or corner lies
    in one of its three two-voxel-thick slabs ext[:2], ext[:, :2], ext[:, :, :2], which are built here
    from faces alone and scanned with cc3d.region_graph. Ids of one block never touch each other.
    """
    dy, dx = own.lo[0].shape
    dz = own.lo[1].shape[0]

    def hi(d: tuple[int, int, int], axis: int) -> np.ndarray | None:
        s = before.get(d)
        return None if s is None else _coded(s.hi[axis], s.index)

    h0 = np.zeros((dy + 1, dx + 1), np.uint64)  # ext[0]: the plane z = z0 - 1
    h1 = np.zeros((dz + 1, dx + 1), np.uint64)  # ext[:, 0]: the plane y = y0 - 1
    h2 = np.zeros((dz + 1, dy + 1), np.uint64)  # ext[:, :, 0]: the plane x = x0 - 1
    if (f := hi((1, 0, 0), 0)) is not None:
        h0[1:, 1:] = f
    if (f := hi((1, 1, 0), 0)) is not None:
        h0[0, 1:] = f[-1]
    if (f := hi((1, 0, 1), 0)) is not None:
        h0[1:, 0] = f[:, -1]
    if (f := hi((1, 1, 1), 0)) is not None:
        h0[0, 0] = f[-1, -1]
    if (f := hi((0, 1, 0), 1)) is not None:
        h1[1:, 1:] = f
    if (f := hi((0, 1, 1), 1)) is not None:
        h1[1:, 0] = f[:, -1]
    h1[0] = h0[0]
    if (f := hi((0, 0, 1), 2)) is not None:
        h2[1:, 1:] = f
    h2[0] = h0[:, 0]
    h2[1:, 0] = h1[1:, 0]
    lo = [_coded(f, own.index) for f in own.lo]
    p1 = np.empty_like(h0)  # ext[1]: the plane z = z0
    p1[0], p1[1:, 0], p1[1:, 1:] = h1[1], h2[1, 1:], lo[0]
    q1 = np.empty_like(h1)  # ext[:, 1]: the plane y = y0
    q1[0], q1[1:, 0], q1[1:, 1:] = h0[1], h2[1:, 1], lo[1]
    r1 = np.empty_like(h2)  # ext[:, :, 1]: the plane x = x0
    r1[0], r1[1:, 0], r1[1:, 1:] = h0[:, 1], h1[1:, 1], lo[2]
    pairs: set[tuple[int, int]] = set()
    for slab in (np.stack([h0, p1]), np.stack([h1, q1], axis=1), np.stack([h2, r1], axis=2)):
        pairs |= cc3d.region_graph(slab, connectivity=connectivity)
    return np.array(sorted(pairs), dtype=np.uint64).reshape(-1, 2)


def merge_blocks(
    counts: Sequence[int], sizes: Sequence[np.ndarray], codes: Sequence[np.ndarray], min_size: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """The global step between the passes, from every block's (n, sizes, block_pairs) in C order.

    Provisional ids: block i's local id l is offsets[i] + l, offsets the running sum of the n before it.
    Returns (int64 offsets per block, uint32 lookup from provisional to final id, number of objects N).
    """
    counts = np.asarray(counts, np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    codes = np.concatenate([np.zeros((0, 2), np.uint64), *codes]).astype(np.uint64)
    block = (codes >> np.uint64(CODE_SHIFT)).astype(np.int64)
    local = (codes & np.uint64(2**CODE_SHIFT - 1)).astype(np.int64)
    pairs = offsets[block] + local
    lookup, n_objects = _global_lookup(np.concatenate([np.zeros(1, np.int64), *sizes]), pairs, int(min_size))
    return offsets, lookup, n_objects


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


def block_table(lookup: np.ndarray, offset: int, n: int) -> np.ndarray:
    """The part of the lookup a block needs in pass 2: final id of local ids 0..n (0 stays 0), uint32."""
    table = lookup[offset : offset + n + 1].copy()
    table[0] = 0
    return table


def relabel_block(
    mask_block: np.ndarray, table: np.ndarray, connectivity: int = 26, threshold: float | None = None
) -> np.ndarray:
    """Pass 2 for one block: label it again (cc3d is deterministic) and map local ids through `table`."""
    foreground = _foreground(mask_block, threshold)
    local, n = _label_block(foreground, connectivity)
    if n != len(table) - 1:
        raise MitosegError(
            f"a block holds {n} objects in pass 2 but {len(table) - 1} in pass 1: "
            "the mask changed while it was being labelled"
        )
    return _remap(local, foreground, table)


# ---------------------------------------------------------------- blockwise labelling, driver


def _read_ahead(pool: ThreadPoolExecutor, volume, items: Sequence[blocks.Block]) -> Iterator[np.ndarray]:
    """`volume[item]` for each of `items` in order, the next one read in `pool` while this one is used."""
    def read(sl: blocks.Block) -> np.ndarray:
        return np.asarray(volume[sl])

    future = pool.submit(read, items[0]) if items else None
    for i in range(len(items)):
        data = future.result()
        future = pool.submit(read, items[i + 1]) if i + 1 < len(items) else None
        yield data


def _write_block(out, block: blocks.Block, labels: np.ndarray, done: Path | None) -> None:
    """Write one block's final labels, then mark it in `done` (when given)."""
    out[block] = labels
    if done is not None:
        block_marker(done, block).touch()


def open_labels(out: str | Path, shape: Sequence[int], block: Sequence[int], connectivity: int, min_size: int,
                threshold: float | None, attrs: dict | None = None, resume: bool = False,
                overwrite: bool = False, z_sigma: float = 0.0, source: str | None = None):
    """The uint32 label output of a labelling through the block engine (`blocks.open_output`); a resume
    must match the connectivity, the minimum size, the threshold, the Z smoothing and the input (`source`:
    its `io.content_id`, when given)."""
    _check_connectivity(connectivity)
    checks.check(min_size=min_size)
    return blocks.open_output(out, shape, "uint32", block,
                              _settings(connectivity, min_size, threshold, z_sigma, source),
                              dict(attrs or {}, kind="labels"), resume, overwrite)


def _settings(connectivity: int, min_size: int, threshold: float | None, z_sigma: float,
              source: str | None = None) -> dict:
    """What a label output records of how it was made (a resume must match it)."""
    settings = {"connectivity": connectivity, "min_size": int(min_size), "threshold": threshold}
    if z_sigma:
        settings["z_sigma"] = float(z_sigma)
    if source:  # the input's checksum: a resume onto other probabilities would mix two labellings
        settings["source"] = source
    return settings


@io.releasing
def label_volume(input: str | Path, out: str | Path, block: Sequence[int] | None = None, connectivity: int = 26,
                 min_size: int | None = None, threshold: float | None = None,
                 voxel_size: Sequence[float] | None = None, table: str | Path | None = None, client: Any = None,
                 resume: bool = False, overwrite: bool = False, progress: bool = True) -> int:
    """The `mitoseg label` command: label a probability or mask volume into a uint32 Zarr at `out`, block by
    block, in this process or on a Dask `client`, and optionally write the per-object table (CSV).

    `threshold` is a probability in (0, 1) for mitoseg probability outputs; other volumes are masks whose
    values > 0 are foreground unless it is given. Not given (None), it and `min_size` come from the run's
    post-processing chosen on validation where `predict` kept it with the input (`postprocess.for_labels`:
    probabilities are then also blurred along Z as chosen, block by block with their neighbouring slices);
    else 0.5 and 0. The output's attribute "applied" says what was applied and what came from the run, "objects"
    the number of objects (ids 1..n). `voxel_size` (z, y, x) nm defaults to the one the input states
    (`io.voxel_size`); with neither, the output states none and the table measures 1 nm voxels. An `out` named
    *.ome.zarr is OME-Zarr. `block` defaults to `blocks.reading_block` of the input (64 x 512 x 512 but where its
    chunks call for another). Returns the number of objects.
    """
    from mitoseg import cluster, postprocess

    checks.check(value_threshold=threshold, voxel_size=voxel_size, min_size=min_size, block=block)
    checks.per_axis(block=block)
    volume = io.open_volume(input)
    io.check_place(out, "zarr", (input,))
    if not (resume or overwrite):  # an earlier run's finished blocks are never discarded silently
        io.refuse_left((out, table), io.unfinished((out,)))
    if resume and not overwrite and (not table or Path(table).exists()) and Path(out).exists() and \
            not io.partial_path(out).exists():
        raise MitosegError(f"{out}{f' and {table} are' if table else ' is'} finished: nothing to resume (--overwrite "
                           "labels again)")
    if table:
        io.check_output(table, overwrite, "file", (input,))
        if Path(table).absolute() == Path(out).absolute():
            raise MitosegError(f"the labels and the table are both {out}: give two outputs")
        if Path(table).suffix.lower() != ".csv":  # e.g. .xlsx: Excel would refuse CSV text under its own format's name
            raise MitosegError(f"{table}: the table is CSV (comma-separated text, which Excel opens): name it "
                               f"{Path(table).with_suffix('.csv').name}")
    omezarr.refuse_other_voxel(out, voxel_size)
    own = io.voxel_size(input)
    stated = voxel_size or own  # None: the output states none, the table measures 1 nm voxels
    voxel = tuple(stated or (1.0, 1.0, 1.0))
    if voxel_size and own and not np.allclose(own, voxel_size, rtol=1e-3):  # a wrong calibration, or the given one
        words = [" x ".join(f"{float(v):g}" for v in size) for size in (own, voxel_size)]
        print(f"note: {io.file_name(input)} states {words[0]} nm voxels and --voxel-size {words[1]} nm: the labels "
              f"record the given ones{' (and the table measures them)' if table else ''}, while the post-processing "
              "it records stays in its voxels", file=sys.stderr)
    block = tuple(block) if block else blocks.reading_block(volume)
    applied = postprocess.for_labels(io.attributes(volume), threshold, min_size)
    if "min_size" in applied["from_run"]:  # chosen on a volume thick enough for whole objects
        scaled, note = postprocess.min_size_for_depth(applied["min_size"], volume.shape[0], stated)
        if note:
            applied.update(min_size=scaled, min_size_chosen=applied["min_size"])
            print(note, file=sys.stderr)
    min_size, z_sigma = applied["min_size"], applied["z_sigma"]
    raw_threshold = io.foreground_threshold(volume, applied["threshold"], str(input))
    attrs = {**({"voxel_size": voxel} if stated else {}), "connectivity": connectivity, "applied": applied}
    source = io.content_id(volume)
    origin = io.origin(input)
    if origin:  # a crop of a larger volume: where it lies
        attrs["origin"] = origin
    if resume and not overwrite and table and blocks.keep_finished(  # labels finished, the table not yet
            out, "labels", tuple(volume.shape), "uint32", block,
            _settings(connectivity, min_size, raw_threshold, z_sigma, source), {"voxel_size": voxel} if stated else {}):
        labels = io.open_volume(out)
        n = io.attributes(labels).get("objects")  # labels finished before 2026-12-07 lack it: ids are 1..n
        if n is None:
            n = max((int(labels[b].max(initial=0)) for b in blocks.grid(tuple(labels.shape), block)), default=0)
    elif client is not None:
        n = cluster.label_dask(client, input, out, block=block, connectivity=connectivity, min_size=min_size,
                               threshold=raw_threshold, progress=progress, attrs=attrs, overwrite=overwrite,
                               resume=resume, z_sigma=z_sigma, stored=True, source=source)
    else:
        output = open_labels(out, tuple(volume.shape), block, connectivity, min_size, raw_threshold, attrs, resume,
                             overwrite, z_sigma, source)
        source = postprocess.ZSmoothed(volume, z_sigma) if z_sigma else volume
        n = label_blockwise(source, output.array, block, connectivity, min_size, raw_threshold, progress, output.done)
        output.array.attrs["objects"] = n
        blocks.finish(output, overwrite=overwrite, progress=progress)
    if table and client is not None:
        write_table(cluster.table_dask(client, out, n, voxel, block, progress), table)
    elif table:
        labels = io.open_volume(out)
        measured = measure_blockwise(labels, n, voxel, block, progress=progress)
        write_table(morphology(labels, measured, voxel, progress=progress), table)
    return n


def label_blockwise(
    mask,
    out,
    block: Sequence[int] = (64, 512, 512),
    connectivity: int = 26,
    min_size: int = 0,
    threshold: float | None = None,
    progress: bool = False,
    done: Path | None = None,
) -> int:
    """Label a 3D mask larger than RAM into `out`, block by block; returns the number of objects N.

    `mask`: 3D array-like (z, y, x) that returns numpy arrays when sliced (zarr.Array, h5py.Dataset,
    numpy...); foreground is `mask >= threshold`, or `mask > 0` when threshold is None.
    `out`: pre-created writable array-like of the same shape, dtype uint32 (e.g. a zarr array whose
    chunks divide `block` for efficient writes). It receives ids 1..N (0 background), equal up to
    renumbering to `label(mask, connectivity, min_size)` on the whole volume. `block` is in voxels.
    Memory: a few block-sized arrays, the faces of two layers of blocks (about two y-x planes of uint32)
    and tables of about 30 bytes per provisional object; the mask is read twice (pass 2 relabels
    instead of storing). `mitoseg.cluster.label_dask` runs the same steps in parallel, with the same result.
    `done`: a folder of per-block markers (`io.done_dir`): pass 2 skips blocks marked there by an
    interrupted run (pass 1 is deterministic, so the ids agree) and marks each block it writes.
    """
    _check_connectivity(connectivity)
    _check_3d("mask", mask.shape)
    if tuple(out.shape) != tuple(mask.shape):
        raise MitosegError(f"output shape {tuple(out.shape)} differs from mask shape {tuple(mask.shape)}")
    if np.dtype(out.dtype) != np.uint32:
        raise MitosegError(f"output array must have dtype uint32, got {out.dtype}")
    grid = blocks.grid(mask.shape, block)
    positions = blocks.positions(mask.shape, block)
    kept: dict[tuple[int, int, int], BlockSummary] = {}  # faces of the blocks of this layer and the one before
    counts, sizes, codes = [], [], []
    # The next block is read, and the last one written, in threads while this one is labelled (zarr's
    # codecs release the GIL): at most one read and one write in flight.
    with ThreadPoolExecutor(max_workers=2) as pool:
        reads = tqdm(_read_ahead(pool, mask, grid), total=len(grid), desc="label pass 1/2", unit="block",
                     disable=not progress)
        for index, (pos, data) in enumerate(zip(positions, reads, strict=True)):
            if pos[1] == pos[2] == 0:
                kept = {p: s for p, s in kept.items() if p[0] == pos[0] - 1}
            s = summarize_block(data, index, connectivity, threshold)
            before = {d: kept.get((pos[0] - d[0], pos[1] - d[1], pos[2] - d[2])) for d in PREDECESSORS}
            codes.append(block_pairs(s, before, connectivity))
            counts.append(s.n)
            sizes.append(s.sizes)
            kept[pos] = s._replace(lo=())
        kept.clear()
        offsets, lookup, n_objects = merge_blocks(counts, sizes, codes, min_size)
        todo = [i for i, sl in enumerate(grid) if done is None or not block_marker(done, sl).exists()]
        bar = tqdm(total=len(grid), initial=len(grid) - len(todo), desc="label pass 2/2", unit="block",
                   disable=not progress)
        writing = None
        for i, data in zip(todo, _read_ahead(pool, mask, [grid[i] for i in todo]), strict=True):
            labels = relabel_block(data, block_table(lookup, offsets[i], counts[i]), connectivity, threshold)
            if writing is not None:
                writing.result()
            writing = pool.submit(_write_block, out, grid[i], labels, done)
            bar.update()
        if writing is not None:
            writing.result()
        bar.close()
    return n_objects
