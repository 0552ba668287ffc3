"""Where two trained CA1 models are wrong together: the places of their shared errors, the labelled
mitochondria both miss, and pictures of them.

    python experiments/shared_errors.py RUN_A RUN_B --out results/ca1-ablation/shared-errors/shared_errors.json

Each run folder must hold test_probs_tta.zarr and its postprocessing.json (`compare.evaluate_model`); each
model's test mask is its own validation-chosen post-processing of its TTA probabilities. The shared errors
are the errors of the consensus mask (the two masks where they agree, the labels where they do not), placed
by `metrics.error_places`. Figures beside the JSON: `shared_errors.png`, the slice with the most shared
whole-object errors; `surface_zZ.png`, crops of slice Z (`--slices`, default the middle one) where the
labelled outline is densest, each model's outline drawn over the labels'; `missed.png`, the (up to three
largest) labelled objects both models miss, in their middle slices. About two minutes on 2 cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cc3d
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from record import header, provenance, save, short  # experiments/ is the script's folder, so on sys.path

from mitoseg import compare, io, metrics, plots, postprocess

CROP = 160  # voxels (0.8 µm) per side of a surface crop
COLOURS = {"labels": "yellow", "A": "cyan", "B": "magenta"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs=2, metavar="RUN")
    p.add_argument("--out", required=True, help="JSON to write; the .md table and the figures go beside it")
    p.add_argument("--slices", type=int, nargs="+", help="test slices of surface_zZ.png (default: the middle one)")
    a = p.parse_args(argv)
    bench = compare.load_benchmark("lucchi")
    truth = np.asarray(bench.test_mask) > 0
    masks = {}
    for run in a.runs:
        pp = postprocess.read(run)
        masks[short(run)] = postprocess.apply(io.open_volume(Path(run) / "test_probs_tta.zarr")[:], pp) > 0
    (name_a, mask_a), (name_b, mask_b) = masks.items()
    consensus = np.where(mask_a == mask_b, mask_a, truth)
    record = header(__file__, argv, bench.description, runs=list(masks),
                    places={name: metrics.error_places(m, truth, bench.voxel_size) for name, m in
                            [*masks.items(), ("shared", consensus)]})
    record["missed_by_both"] = _missed(truth, mask_a, mask_b)
    record["slice_iou"] = {name: [round(v, 4) for v in _slice_iou(m, truth)] for name, m in masks.items()}

    shared_whole = metrics._whole_objects(truth, consensus) | metrics._whole_objects(consensus, truth)
    z = int(np.argmax(shared_whole.reshape(len(truth), -1).sum(1)))
    image = np.asarray(bench.test_image[z])
    record["figure_slice"], record["surface_slices"] = z, a.slices or [len(truth) // 2]
    out = Path(a.out)
    save(out, record, table(record))
    fig = plots.figure_errors(image, {"both models (shared errors)": consensus[z]}, truth[z], z=z, pixel_nm=5.0)
    plots.save(fig, out.with_name("shared_errors.png"))
    for s in record["surface_slices"]:
        crops = _surface_figure(np.asarray(bench.test_image[s]), truth[s], mask_a[s], mask_b[s], (name_a, name_b), s)
        plots.save(crops, out.with_name(f"surface_z{s}.png"))
    if record["missed_by_both"]:
        plots.save(_missed_figure(bench.test_image, truth, mask_a, mask_b, record["missed_by_both"][:3],
                                  (name_a, name_b)), out.with_name("missed.png"))
    print(table(record))


def _missed(truth: np.ndarray, mask_a: np.ndarray, mask_b: np.ndarray) -> list[dict]:
    """The labelled objects (26-connected) that both masks find less than half of: size (voxels), slices,
    and the fraction of each found by each mask."""
    objects = cc3d.connected_components(truth, connectivity=26)
    sizes = np.bincount(objects.ravel())
    found = [np.bincount(objects[m].ravel(), minlength=sizes.size) / np.maximum(sizes, 1) for m in (mask_a, mask_b)]
    rows = []
    for i in np.flatnonzero((found[0] < 0.5) & (found[1] < 0.5) & (sizes > 0)):
        if i == 0:  # the background
            continue
        zz, yy, xx = np.nonzero(objects == i)
        rows.append({"voxels": int(sizes[i]), "slices": [int(zz.min()), int(zz.max())],
                     "centre": [int(np.median(zz)), int(yy.mean()), int(xx.mean())],
                     "found_a": round(float(found[0][i]), 3), "found_b": round(float(found[1][i]), 3)})
    return sorted(rows, key=lambda r: -r["voxels"])


def _slice_iou(mask: np.ndarray, truth: np.ndarray) -> list[float]:
    """Foreground IoU of each slice (1.0 where neither has foreground)."""
    union = (mask | truth).sum((1, 2))
    return ((mask & truth).sum((1, 2)) / np.maximum(union, 1) + (union == 0)).tolist()


def _missed_figure(image, truth: np.ndarray, a: np.ndarray, b: np.ndarray, rows: list[dict],
                   names: tuple[str, str]) -> Figure:
    """A crop (CROP voxels a side, inside the volume) around each missed object's centre, in its middle slice,
    with the labels' and both models' outlines."""
    fig = Figure(figsize=(5 * len(rows), 5.6), layout="constrained")
    for ax, r in zip(np.atleast_1d(fig.subplots(1, len(rows))), rows, strict=True):
        z, cy, cx = r["centre"]
        y0 = int(np.clip(cy - CROP // 2, 0, truth.shape[1] - CROP))
        x0 = int(np.clip(cx - CROP // 2, 0, truth.shape[2] - CROP))
        sl = np.s_[y0:y0 + CROP, x0:x0 + CROP]
        ax.imshow(np.asarray(image[z])[sl], cmap="gray", interpolation="nearest")
        for key, m in (("labels", truth), ("A", a), ("B", b)):
            if m[z][sl].any():
                ax.contour(m[z][sl].astype(float), levels=[0.5], colors=COLOURS[key], linewidths=1.0)
        ax.set_title(f"{r['voxels']:,} voxels, slices {r['slices'][0]}-{r['slices'][1]}; slice {z}, "
                     f"y {y0}, x {x0}", fontsize="small")
        ax.set_axis_off()
        plots.scale_bar(ax, 5.0)
    _legend(fig, names)
    return fig


def _legend(fig: Figure, names: tuple[str, str]) -> None:
    labels = {"labels": "labels", "A": names[0], "B": names[1]}
    fig.legend(handles=[Line2D([], [], color=COLOURS[k], label=v) for k, v in labels.items()],
               loc="outside lower center", ncol=3, frameon=False)


def _surface_figure(image: np.ndarray, truth: np.ndarray, a: np.ndarray, b: np.ndarray, names: tuple[str, str],
                    z: int) -> Figure:
    """Three crops of one slice where the labelled outline is longest, with the labels' and both models'
    outlines."""
    outline = (truth ^ np.roll(truth, 1, 0)) | (truth ^ np.roll(truth, 1, 1))
    rows, columns = outline.shape[0] // CROP, outline.shape[1] // CROP
    density = outline[:rows * CROP, :columns * CROP].reshape(rows, CROP, columns, CROP).sum((1, 3))
    starts = []
    for flat in np.argsort(density.ravel())[::-1][:3]:
        starts.append(np.unravel_index(flat, density.shape))
    fig = Figure(figsize=(15, 5.6), layout="constrained")
    for ax, (i, j) in zip(fig.subplots(1, 3), starts, strict=True):
        sl = np.s_[i * CROP:(i + 1) * CROP, j * CROP:(j + 1) * CROP]
        ax.imshow(image[sl], cmap="gray", interpolation="nearest")
        for key, m in (("labels", truth), ("A", a), ("B", b)):
            ax.contour(m[sl].astype(float), levels=[0.5], colors=COLOURS[key], linewidths=1.0)
        ax.set_title(f"slice {z}, y {i * CROP}-{(i + 1) * CROP}, x {j * CROP}-{(j + 1) * CROP}", fontsize="small")
        ax.set_axis_off()
        plots.scale_bar(ax, 5.0)
    _legend(fig, names)
    return fig


def table(record: dict) -> str:
    lines = ["# CA1: where two models are wrong together", "", provenance(record), "",
             "Each model's test mask after its validation-chosen post-processing of the TTA probabilities; shared: "
             "the voxels both get wrong.", "",
             "| errors | " + " | ".join(record["places"]) + " |", "|---|" + "---|" * len(record["places"])]
    rows = (("wrong voxels (FP + FN)", lambda e: e["fp"] + e["fn"]), ("false positives", lambda e: e["fp"]),
            ("false negatives", lambda e: e["fn"]),
            ("in whole objects (missed or false)", lambda e: e["fp_whole"] + e["fn_whole"]),
            ("within one voxel of the labelled surface", lambda e: e["fp_near_1"] + e["fn_near_1"]),
            ("within two voxels", lambda e: e["fp_near_2"] + e["fn_near_2"]))
    for label, value in rows:
        lines.append(f"| {label} | " + " | ".join(f"{value(e):,}" for e in record["places"].values()) + " |")
    for name, ious in record["slice_iou"].items():
        worst = np.argsort(ious)[:5]
        lines.append(f"\nPer-slice IoU of {name}: {min(ious):.3f}-{max(ious):.3f}, median {np.median(ious):.3f}; "
                     "lowest in slices " + ", ".join(f"{z} ({ious[z]:.3f})" for z in worst) + ".")
    missed = record["missed_by_both"]
    lines += ["", f"Labelled objects both models find less than half of: {len(missed)} "
              f"({sum(r['voxels'] for r in missed):,} voxels).", "",
              "| voxels | slices | found by A | found by B |", "|---|---|---|---|"]
    lines += [f"| {r['voxels']:,} | {r['slices'][0]}-{r['slices'][1]} | {r['found_a']:.3f} | {r['found_b']:.3f} |"
              for r in missed[:20]]
    lines += ["", f"Figures: `shared_errors.png` (slice {record['figure_slice']}, the most shared whole-object "
              "errors), `surface_zZ.png` (crops of slice Z where the labelled outline is longest, "
              f"Z = {', '.join(map(str, record['surface_slices']))}), `missed.png` (the largest labelled objects both "
              "miss; A, B: " + ", ".join(record["runs"]) + ")."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
