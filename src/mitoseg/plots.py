"""Figures of the study: slices with truth, error and instance overlays, 3D renders and training curves.

Conventions (like cellpose's ``plot.py``):
- plotting functions take a matplotlib ``Axes`` and numpy arrays, draw, and return the ``Axes``;
- ``figure_*`` functions assemble a whole figure and return a ``matplotlib.figure.Figure``. They build
  ``Figure`` objects directly, never through ``pyplot``, so there is no global state and no GUI backend:
  they work headless and in threads;
- ``save`` writes a figure as PNG atomically (temporary name in the same folder, then ``os.replace``).

Arrays: images are 2D greyscale slices (Y, X), uint8/uint16 (shown over the dtype's full range) or float
(shown between the 0.5th and 99.5th percentiles); masks are (Y, X) of any dtype, non-zero = foreground;
instance labels are (Y, X) or (Z, Y, X) integer ids (usually uint32), 0 = background.
Voxel sizes are (z, y, x) in nanometres; 3D axes are labelled in micrometres.

Every instance id has one colour (`instance_colors`), a pure function of the id, so an object keeps its
colour across slices, views and figures.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from mpl_toolkits.mplot3d import art3d
from scipy import ndimage
from skimage.measure import marching_cubes

TRUTH_COLOR = (0.1, 0.4, 1.0)
TP_COLOR = (0.1, 0.85, 0.1)
FP_COLOR = (1.0, 0.0, 1.0)
FN_COLOR = (1.0, 0.85, 0.0)
DPI = 120
GOLDEN = 0.6180339887498949

Color = tuple[float, float, float]


# ----------------------------------------------------------------------------------------------- helpers


def _check_2d(name: str, a: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2D (Y, X), got shape {a.shape}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape} like the image")
    return a


def _show_image(ax: Axes, image2d: np.ndarray, title: str | None) -> np.ndarray:
    """Draw a greyscale slice: integer images over the dtype's range, floats between robust percentiles."""
    image = _check_2d("image2d", image2d)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        vmin, vmax = (0, 255) if info.bits == 8 else (float(image.min()), float(image.max()))
    elif image.dtype == bool:
        vmin, vmax = 0, 1
    else:
        finite = image[np.isfinite(image)]
        vmin, vmax = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
    if vmax <= vmin:
        vmax = vmin + 1
    ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="antialiased")
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return image


def _overlay(ax: Axes, rgba: np.ndarray) -> None:
    ax.imshow(rgba, interpolation="nearest")


def instance_colors(ids: np.ndarray | Sequence[int]) -> np.ndarray:
    """RGB colours (N, 3) float64 in [0, 1] for instance ids (N,), the same for an id wherever it appears.

    Hue steps by the golden ratio from one id to the next, so neighbouring ids (which connected
    components gives to neighbouring objects) get far-apart hues; saturation and value cycle through
    three levels each, so ids whose hues come close still differ. Id 0 (background) is black.
    """
    ids = np.asarray(ids, dtype=np.uint64).ravel()
    # frac(id * golden) in float64 from the id modulo 2**32, exact enough for uint32 ids
    hue = np.mod((ids % np.uint64(2**32)).astype(np.float64) * GOLDEN, 1.0)
    sat = np.array([0.95, 0.6, 0.8])[(ids % np.uint64(3)).astype(np.intp)]
    val = np.array([1.0, 0.95, 0.75])[((ids // np.uint64(3)) % np.uint64(3)).astype(np.intp)]
    rgb = hsv_to_rgb(np.stack([hue, sat, val], axis=-1))
    rgb[ids == 0] = 0.0
    return rgb


def instance_rgba(labels2d: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Overlay (Y, X, 4) float64 of instance labels (Y, X) int: each id in its `instance_colors` colour
    with opacity `alpha`; background (0) fully transparent."""
    labels = _check_2d("labels2d", labels2d)
    ids, inverse = np.unique(labels, return_inverse=True)
    table = np.zeros((ids.size, 4))
    table[:, :3] = instance_colors(ids)
    table[:, 3] = np.where(ids == 0, 0.0, alpha)
    return table[inverse.reshape(labels.shape)]


def error_rgba(pred2d: np.ndarray, truth2d: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Overlay (Y, X, 4) float64 of a binary prediction against a binary truth, both (Y, X), non-zero =
    foreground: true positives in `TP_COLOR`, false positives in `FP_COLOR`, false negatives in
    `FN_COLOR`, all with opacity `alpha`; true negatives fully transparent."""
    pred = _check_2d("pred2d", pred2d).astype(bool)
    truth = _check_2d("truth2d", truth2d, pred.shape).astype(bool)
    rgba = np.zeros((*pred.shape, 4))
    for where, color in ((pred & truth, TP_COLOR), (pred & ~truth, FP_COLOR), (~pred & truth, FN_COLOR)):
        rgba[where] = (*color, alpha)
    return rgba


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred.astype(bool), truth.astype(bool)
    total = int(pred.sum()) + int(truth.sum())
    return 2.0 * int((pred & truth).sum()) / total if total else 1.0


# ------------------------------------------------------------------------------------------- 2D panels


def overlay_truth(ax: Axes, image2d: np.ndarray, mask2d: np.ndarray, color: Color = TRUTH_COLOR,
                  alpha: float = 0.45, title: str | None = None) -> Axes:
    """Greyscale slice (Y, X) with the ground-truth mask (Y, X), non-zero = foreground, overlaid in
    `color` at opacity `alpha` (the study's Figure 1, right panel)."""
    image = _show_image(ax, image2d, title)
    mask = _check_2d("mask2d", mask2d, image.shape).astype(bool)
    rgba = np.zeros((*mask.shape, 4))
    rgba[mask] = (*color, alpha)
    _overlay(ax, rgba)
    return ax


def overlay_errors(ax: Axes, image2d: np.ndarray, pred2d: np.ndarray, truth2d: np.ndarray,
                   title: str | None = None, alpha: float = 0.55, legend: bool = True) -> Axes:
    """Greyscale slice (Y, X) with the errors of a binary prediction (Y, X) against the truth (Y, X):
    true positives, false positives and false negatives in distinct colours (see `error_rgba`).

    The legend sits under the image, outside the data."""
    image = _show_image(ax, image2d, title)
    _check_2d("pred2d", pred2d, image.shape)
    _overlay(ax, error_rgba(pred2d, truth2d, alpha))
    if legend:
        ax.legend(handles=error_handles(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3,
                  fontsize="small", frameon=False, handlelength=1.2, columnspacing=1.2)
    return ax


def error_handles() -> list[Patch]:
    """Legend handles for the colours of `error_rgba`."""
    return [Patch(color=TP_COLOR, label="true positive"), Patch(color=FP_COLOR, label="false positive"),
            Patch(color=FN_COLOR, label="false negative")]


def overlay_instances(ax: Axes, image2d: np.ndarray, labels2d: np.ndarray, alpha: float = 0.5,
                      title: str | None = None) -> Axes:
    """Greyscale slice (Y, X) with instance labels (Y, X) int (0 = background) overlaid, each object in
    its own `instance_colors` colour at opacity `alpha` (the study's Figure 2)."""
    image = _show_image(ax, image2d, title)
    _check_2d("labels2d", labels2d, image.shape)
    _overlay(ax, instance_rgba(labels2d, alpha))
    return ax


def max_projection(ax: Axes, labels: np.ndarray, axis: int = 0, title: str | None = None) -> Axes:
    """Maximum projection of instance labels (Z, Y, X) int along `axis`, each id in its colour on black:
    a cheap fallback view of the objects when a 3D render is too slow or too cluttered."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D (Z, Y, X), got shape {labels.shape}")
    proj = labels.max(axis=axis)
    ax.imshow(np.zeros(proj.shape), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    _overlay(ax, instance_rgba(proj, 1.0))
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax


# ---------------------------------------------------------------------------------------------- 3D view


def _inplane_factor(shape: tuple[int, int, int], max_voxels: int) -> int:
    z, y, x = shape
    return max(1, math.ceil(math.sqrt(z * y * x / max_voxels)))


def instance_meshes(labels: np.ndarray, voxel_size: Sequence[float] = (1.0, 1.0, 1.0), max_objects: int = 200,
                    step: int = 2, max_voxels: int = 2_000_000,
                    smooth: float = 1.0) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Surface meshes of the largest `max_objects` objects of instance labels (Z, Y, X) int (0 = background).

    Returns ``(id, verts, faces)`` per object, largest first: `verts` (V, 3) float64 are (x, y, z)
    positions in µm (voxel centres at ``(index + 0.5) * voxel_size``), `faces` (F, 3) int index `verts`.
    `voxel_size` is (z, y, x) in nm. If the volume holds more than `max_voxels` voxels it is subsampled
    in plane (every k-th voxel along y and x, spacing scaled by k) so the meshing stays within a few
    seconds; objects are ranked by their voxel count in that subsampled volume, and objects the
    subsampling misses are left out. Each object is meshed with ``skimage.measure.marching_cubes`` on its
    bounding-box crop, padded by one voxel (plus the blur's reach), with ``step_size=step``; objects too
    thin for that step are meshed at step 1. `smooth` > 0 first blurs the crop with a Gaussian of `smooth`
    times the finest voxel spacing (so, on anisotropic stacks, hardly across sections), which takes the
    pixel staircase off the surfaces; 0 meshes the binary crop.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D (Z, Y, X), got shape {labels.shape}")
    if len(voxel_size) != 3:
        raise ValueError(f"voxel_size must be (z, y, x) in nm, got {voxel_size}")
    k = _inplane_factor(labels.shape, max_voxels)
    sub = labels[:, ::k, ::k]
    voxel_um = np.asarray(voxel_size, dtype=float) / 1000
    spacing = (voxel_um[0], voxel_um[1] * k, voxel_um[2] * k)

    ids, compact, counts = np.unique(sub, return_inverse=True, return_counts=True)
    compact = compact.reshape(sub.shape).astype(np.int32)
    if ids.size and ids[0] == 0:
        ids, counts = ids[1:], counts[1:]  # object i now has compact id i + 1
    else:
        compact += 1  # no background: compact ids must start at 1 for find_objects
    order = np.argsort(-counts, kind="stable")[:max_objects]
    boxes = ndimage.find_objects(compact)
    sigma = [smooth * min(spacing) / s for s in spacing]
    pad = 1 + (math.ceil(2 * max(sigma)) if smooth > 0 else 0)
    meshes = []
    for i in order:
        box = boxes[i]
        crop = np.pad(compact[box] == i + 1, pad).astype(np.float32)
        verts, faces = _mesh(crop, spacing, step, sigma if smooth > 0 else None)
        if faces.size == 0:
            continue
        start = np.array([sl.start - pad for sl in box]) * spacing + voxel_um / 2
        meshes.append((int(ids[i]), (verts + start)[:, ::-1].astype(np.float64), faces))  # -> (x, y, z)
    return meshes


def render_instances_3d(ax3d: Axes, labels: np.ndarray, voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
                        max_objects: int = 200, step: int = 2, max_voxels: int = 2_000_000,
                        smooth: float = 1.0, zoom: float = 1.0, title: str | None = None) -> Axes:
    """3D view of the largest `max_objects` objects of instance labels (Z, Y, X) int (0 = background).

    `ax3d` must be a 3D axes (``fig.add_subplot(projection="3d")``); `voxel_size` is (z, y, x) in nm and
    the axes are labelled in µm, with the box aspect of the volume's physical extents (`zoom` scales the
    box in its axes). Each object, meshed by `instance_meshes` (see there for `step`, `max_voxels` and
    `smooth`), is one shaded ``Poly3DCollection`` in its `instance_colors` colour. The y axis runs from
    the back (0) to the front, so from the default viewpoint the render is oriented like the slice images.
    """
    meshes = instance_meshes(labels, voxel_size, max_objects, step, max_voxels, smooth)
    for (_, verts, faces), color in zip(meshes, instance_colors([m[0] for m in meshes]), strict=True):
        poly = art3d.Poly3DCollection(verts[faces], facecolors=[color], edgecolors=[color],
                                      linewidths=0.0, shade=True)
        ax3d.add_collection3d(poly)

    extent = np.array(np.shape(labels)) * np.array(voxel_size, dtype=float) / 1000  # (z, y, x) µm
    ax3d.set_xlim(0, extent[2])
    ax3d.set_ylim(extent[1], 0)
    ax3d.set_zlim(0, extent[0])
    ax3d.set_box_aspect((extent[2], extent[1], max(extent[0], 0.05 * extent[1:].max())), zoom=zoom)
    ax3d.set_xlabel("x (µm)")
    ax3d.set_ylabel("y (µm)")
    ax3d.set_zlabel("z (µm)")
    if title is not None:
        ax3d.set_title(title)
    return ax3d


def _mesh(crop: np.ndarray, spacing: tuple[float, float, float], step: int,
          sigma: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of a binary crop (float32 {0, 1}) at `step`, on the crop blurred by `sigma` (voxels
    per axis) if given; falls back to step 1, then to the unblurred crop, when the object is too thin."""
    smoothed = crop if sigma is None else ndimage.gaussian_filter(crop, sigma)
    tries = [(smoothed, s) for s in dict.fromkeys((step, 1))] + ([(crop, 1)] if sigma is not None else [])
    for volume, s in tries:
        try:
            verts, faces, _, _ = marching_cubes(volume, level=0.5, spacing=spacing, step_size=s)
        except (ValueError, RuntimeError):
            continue
        if faces.size:
            return verts, faces
    return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)


# ------------------------------------------------------------------------------------- training curves


def _column(rows: Sequence[Mapping[str, object]], key: str) -> np.ndarray:
    out = []
    for row in rows:
        value = row.get(key, "")
        try:
            out.append(float(value))  # CSV rows hold strings
        except (TypeError, ValueError):
            out.append(float("nan"))
    return np.array(out, dtype=float)


def training_curves(ax_loss: Axes, ax_val: Axes, logs: Mapping[str, Sequence[Mapping[str, object]]],
                    time_unit: str = "auto", monitor_label: str = "test subset") -> tuple[Axes, Axes]:
    """Training loss, and validation (solid) and monitor (dashed) IoU, against training time, one colour
    per model, every model on the same two axes.

    `logs` maps a model name (e.g. "2D U-Net") to its per-epoch rows (as in ``log.csv``), each with keys
    "loss", "val_iou" (older logs: "val_dice"), optionally "monitor_iou", and "elapsed_seconds" (numbers
    or numeric strings). The x axis is the elapsed training time, so models of different speed compare
    fairly: which model reaches what quality per minute. `time_unit` is "s", "min", "h" or "auto"
    (minutes past 2 minutes, hours past 2 hours). The validation IoU drawn is each epoch's at its best threshold
    ("val_iou_best", by which the checkpoint is kept, marked; older logs: at 0.5): at 0.5 alone a model calibrated
    lower drew 0 while the report gave its kept score.
    """
    longest = max((np.nanmax(_column(r, "elapsed_seconds"), initial=0.0) for r in logs.values() if r),
                  default=0.0)
    if time_unit == "auto":
        time_unit = "h" if longest > 7200 else "min" if longest > 120 else "s"
    scales = {"s": 1.0, "min": 60.0, "h": 3600.0}
    if time_unit not in scales:
        raise ValueError(f"time_unit must be 'auto', 's', 'min' or 'h', got {time_unit!r}")
    scale = scales[time_unit]
    marker = "o" if max((len(r) for r in logs.values()), default=0) <= 30 else None
    metric = "val_iou" if all("val_iou" in r[0] for r in logs.values() if r) else "val_dice"
    name_of = {"val_iou": "IoU", "val_dice": "Dice"}[metric]
    for i, (name, rows) in enumerate(logs.items()):
        t = _column(rows, "elapsed_seconds") / scale
        loss = _column(rows, "loss")
        best_threshold = metric == "val_iou" and "val_iou_best" in rows[0]
        val = _column(rows, "val_iou_best" if best_threshold else metric)
        ax_loss.plot(t, loss, color=f"C{i}", label=name, marker=marker, markersize=3)
        ok = np.isfinite(val)  # epochs between validations log none
        ax_val.plot(t[ok], val[ok], color=f"C{i}", marker=marker, markersize=3,
                    label=f"{name}, validation" + (" (best threshold)" if best_threshold else ""))
        if ok.any():  # the epoch whose checkpoint was kept, as `train` chooses it
            best = int(np.nanargmax(val))
            ax_val.scatter([t[best]], [val[best]], s=40, color=f"C{i}", edgecolors="black", zorder=3)
        monitor = _column(rows, "monitor_iou")
        if metric == "val_iou" and np.isfinite(monitor).any():
            ok = np.isfinite(monitor)
            ax_val.plot(t[ok], monitor[ok], color=f"C{i}", linestyle="--", label=f"{name}, {monitor_label}",
                        marker=marker, markersize=3, markerfacecolor="none")
    for ax, ylabel in ((ax_loss, "training loss (Dice + BCE)"), (ax_val, f"foreground {name_of}")):
        ax.set_xlabel(f"training time ({time_unit})")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    if logs:  # legends below the axes, so they never hide a curve
        for ax in (ax_loss, ax_val):
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize="small", ncol=2, frameon=False)
    ax_loss.set_title("training loss")
    ax_val.set_title(f"{name_of} against training time (best validation marked)")
    return ax_loss, ax_val


# ------------------------------------------------------------------------------------------ figures


def _figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    fig.get_layout_engine().set(h_pad=0.1, w_pad=0.1)  # inches of margin, so titles never touch the edge
    return fig


def scale_bar(ax: Axes, pixel_nm: float, fraction: float = 0.2) -> Axes:
    """A white scale bar in the lower right of an image axes whose pixels are `pixel_nm` nm wide: a round
    length (1, 2 or 5 times a power of ten, in nm or µm) of about `fraction` of the image's width
    (matplotlib's AnchoredSizeBar)."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    width_px = abs(np.diff(ax.get_xlim())[0])
    target = fraction * width_px * pixel_nm
    power = 10 ** math.floor(math.log10(target))
    length = max(m * power for m in (1, 2, 5) if m * power <= target)
    label = f"{length / 1000:g} µm" if length >= 1000 else f"{length:g} nm"
    bar = AnchoredSizeBar(ax.transData, length / pixel_nm, label, "lower right", pad=0.4, color="white",
                          frameon=False, size_vertical=max(1.0, width_px / 150), fontproperties={"size": "small"})
    ax.add_artist(bar)
    return ax


def figure_study(image2d: np.ndarray, mask2d: np.ndarray, z: int | None = None,
                 pixel_nm: float | None = None) -> Figure:
    """The study's Figure 1: a raw slice (Y, X) and the same slice with its mitochondria mask (Y, X);
    `z` (the slice index) goes into the titles, `pixel_nm` draws a scale bar."""
    height, width = np.shape(image2d)[:2]
    fig = _figure((10, 5 * height / width + 0.6))  # the images' aspect plus titles: no blank band
    left, right = fig.subplots(1, 2)
    where = "" if z is None else f"slice {z}: "
    _show_image(left, image2d, f"{where}EM image")
    overlay_truth(right, image2d, mask2d, title=f"{where}mitochondria ground truth")
    if pixel_nm:
        scale_bar(left, pixel_nm)
        scale_bar(right, pixel_nm)
    return fig


def figure_errors(image2d: np.ndarray, preds: Mapping[str, np.ndarray], truth2d: np.ndarray, z: int | None = None,
                  pixel_nm: float | None = None) -> Figure:
    """One panel per model: the slice (Y, X) with that model's binary prediction (Y, X) against the
    truth (Y, X) as true/false positives and false negatives, titled with the model, the slice index `z`
    and the slice's Dice; one legend; `pixel_nm` draws a scale bar."""
    if not preds:
        raise ValueError("preds is empty: give at least one model's prediction")
    n = len(preds)
    height, width = np.shape(image2d)[:2]
    fig = _figure((5 * n, 5 * height / width + 1.1))  # the images' aspect plus titles and legend: no blank band
    axes = np.atleast_1d(fig.subplots(1, n))
    where = "" if z is None else f", slice {z}"
    for ax, (name, pred) in zip(axes, preds.items(), strict=True):
        overlay_errors(ax, image2d, pred, truth2d, legend=False,
                       title=f"{name} prediction vs truth{where}\nDice {_dice(pred, truth2d):.3f} on this slice")
        if pixel_nm:
            scale_bar(ax, pixel_nm)
    fig.legend(handles=error_handles(), loc="outside lower center", ncol=3, frameon=False)
    return fig


def figure_instances(image2d: np.ndarray, labels3d: np.ndarray, z: int,
                     voxel_size: Sequence[float] = (1.0, 1.0, 1.0), max_objects: int = 200,
                     name: str = "predicted") -> Figure:
    """The study's Figure 2: left, instance labels (Z, Y, X) of slice `z` over the image; right, a 3D
    render of the largest `max_objects` objects. `image2d` is slice `z` (Y, X), or the whole (Z, Y, X)
    image volume; `voxel_size` is (z, y, x) in nm."""
    image2d = np.asarray(image2d)
    if image2d.ndim == 3:
        image2d = image2d[z]
    ids = np.unique(np.concatenate([np.unique(s) for s in labels3d]))  # slice by slice: no volume-sized copy
    n = int(np.count_nonzero(ids))
    fig = _figure((12, 5.8))
    # the empty third column keeps the z label of the 3D axes, which the layout engine ignores, on the page
    grid = fig.add_gridspec(1, 3, width_ratios=[1.0, 1.05, 0.08])
    left = fig.add_subplot(grid[0])
    right = fig.add_subplot(grid[1], projection="3d")
    in_slice = int(np.count_nonzero(np.unique(labels3d[z])))
    overlay_instances(left, image2d, labels3d[z], title=f"{name} objects, slice {z}: {in_slice} objects")
    scale_bar(left, float(voxel_size[-1]))
    shown = f"largest {max_objects} of {n}" if n > max_objects else f"all {n}"
    extent = np.array(labels3d.shape) * np.asarray(voxel_size, dtype=float)
    flat = extent[0] / extent[1:].max()
    render_instances_3d(right, labels3d, voxel_size, max_objects=max_objects, title=f"{name} objects in 3D ({shown})",
                        zoom=1.3 if flat < 0.5 else 1.0)  # a flat box leaves room to zoom in
    return fig


MORPHOLOGY_PANELS = (("volume_um3", "volume (µm³)", True), ("sphericity", "sphericity", False),
                     ("length_um", "length, longest ellipsoid axis (µm)", False))


def figure_morphology(tables: Mapping[str, Mapping[str, np.ndarray]], interior_only: bool = True) -> Figure:
    """Distributions of object volume, sphericity and length, one step histogram per table (e.g. a
    model's predicted objects and the ground truth's), on shared bins; `tables` as from
    `instances.morphology`. With `interior_only`, objects touching the volume's border (cut, so their
    shape is not theirs) are left out; the legend gives each table's object count."""
    fig = _figure((13, 4.2))
    axes = fig.subplots(1, len(MORPHOLOGY_PANELS))
    keep = {name: (~np.asarray(t["touches_border"], bool) if interior_only else np.ones(len(t["id"]), bool))
            for name, t in tables.items()}
    for ax, (key, title, log) in zip(axes, MORPHOLOGY_PANELS, strict=True):
        values = {name: np.asarray(t[key], float)[keep[name]] for name, t in tables.items()}
        values = {name: v[np.isfinite(v) & (v > 0)] for name, v in values.items()}
        allv = np.concatenate([v for v in values.values() if v.size] or [np.ones(1)])
        bins = (np.geomspace(allv.min(), allv.max() * 1.001, 25) if log else
                np.linspace(allv.min(), allv.max() * 1.001 + 1e-9, 25))
        for (name, v), color in zip(values.items(), (TP_COLOR, TRUTH_COLOR, FP_COLOR, FN_COLOR), strict=False):
            ax.hist(v, bins=bins, histtype="step", linewidth=1.8, color=color, label=f"{name} ({v.size})")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(title)
        ax.set_ylabel("objects")
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=1, frameon=False, fontsize="small")
    where = ("objects inside the volume (touching its border: left out)" if interior_only else
             "all objects (those touching the volume's border are cut)")
    fig.suptitle(f"Object shape, {where}")
    return fig


def figure_curves(logs: Mapping[str, Sequence[Mapping[str, object]]]) -> Figure:
    """Training loss, and validation and monitor IoU, against training time, one colour per model (see
    `training_curves`)."""
    fig = _figure((11, 5.0))
    ax_loss, ax_val = fig.subplots(1, 2)
    training_curves(ax_loss, ax_val, logs)
    return fig


def save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write `fig` as a PNG at 120 dpi to `path` (parent folders created) atomically: the image is written
    under a temporary name in the same folder and renamed, so `path` never holds a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            fig.savefig(f, format="png", dpi=DPI)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
