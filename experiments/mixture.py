"""Does moving the grey levels onto the training histogram cost accuracy where a volume holds another mixture?

    python experiments/mixture.py RUN [RUN ...] --out results/ca1-ablation/mixture/mixture.json
        [--slices 64] [--crop 256]

Histogram matching (`mitoseg predict --match-training`, `io.matched_window`) undoes any monotone change of
the grey levels (gamma too) by assuming the new volume holds the same mixture of tissue as the training
volume. This measures what that assumption costs where it does not hold: the central `--slices` slices
of the CA1 test volume are cut into crops of `--crop` x `--crop` pixels, whose share of mitochondria and
other content differs from the training volume's, and each crop is predicted as a volume of its own (as
a user predicts a smaller stack), once with its own linear percentile window (the default) and once
matched, as it is and after gamma 1.4; the crops as part of the whole slab (the slab's own window) are
the reference. Scored at probability 0.5, no TTA, per crop and pooled over all crops (the voxel counts
summed). Writes the JSON and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
from ablation import gamma, with_training_histogram  # experiments/ is the script's folder, so on sys.path
from record import header, save

from mitoseg import compare, io, metrics, predict, train

COLUMNS = {"slab": "in the slab, the slab's window", "own": "own window", "matched": "matched",
           "own_gamma": "own window, gamma 1.4", "matched_gamma": "matched, gamma 1.4"}


def predict_crop(model, cfg, image: np.ndarray, matched: bool) -> np.ndarray:
    """Probabilities (Z, Y, X) float32 of one model on `image` as a volume of its own."""
    window = predict.input_window(model, image, match_training=matched)
    tile = predict.default_tile(cfg.dims, image.shape, cfg.tile)
    return predict.predict_array(model, image, cfg.dims, tile, cfg.overlap, window, amp=cfg.amp)


def levels(volume: np.ndarray) -> np.ndarray:
    """float64 (19,): the volume's grey levels at its 5, 10, ..., 95 % percentiles through its own linear window
    (padding left out as in every window), in the network's 0..1 units."""
    at = np.linspace(5, 95, 19)  # on the 0.1 % grid of `io.reference_levels`, so read off it exactly
    grid = np.linspace(0, 100, io.REFERENCE_POINTS)
    return io.normalize(np.interp(at, grid, io.reference_levels(volume)), io.intensity_range(volume))


def gap(image: np.ndarray, train_levels: np.ndarray) -> float:
    """How far `image`'s grey levels, through its own linear window, land from the training volume's, through
    its own (`train_levels`: `levels` of the training volume): the largest difference. About 0 for a change
    of contrast or brightness alone; it grows with a change of gamma and with another mixture of tissue
    (matching undoes the first and mistakes the second for it)."""
    return float(np.max(np.abs(levels(image) - train_levels)))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="trained run folders")
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    p.add_argument("--slices", type=int, default=64, help="central test slices to use")
    p.add_argument("--crop", type=int, default=256, help="crop size in Y and X, pixels")
    a = p.parse_args(argv)
    bench = compare.load_benchmark("lucchi")
    z0 = (bench.test_image.shape[0] - a.slices) // 2
    image, truth = bench.test_image[z0:z0 + a.slices], bench.test_mask[z0:z0 + a.slices].astype(bool)
    boxes = [(y, x) for y in range(0, image.shape[1] - a.crop + 1, a.crop)
             for x in range(0, image.shape[2] - a.crop + 1, a.crop)]
    meta = header(__file__, argv, bench.description, slices=[z0, z0 + a.slices], crop=a.crop,
                  training_foreground=float(bench.train_mask.astype(bool).mean()))
    train_levels = levels(bench.train_image)
    meta["gaps"] = {name: gap(v, train_levels) for name, v in [
        ("training volume", bench.train_image), ("test volume", bench.test_image),
        ("test volume, gamma 1.4", gamma(bench.test_image, 1.4)), ("slab", image)]}
    rows = []
    for run in a.runs:
        model, cfg = train.load_model(run)
        with_training_histogram(model, cfg, bench.train_image)
        slab = predict_crop(model, cfg, image, matched=False)
        for y, x in boxes:
            box = np.s_[:, y:y + a.crop, x:x + a.crop]
            crop, true = image[box], truth[box]
            probs = {"slab": slab[box], "own": predict_crop(model, cfg, crop, False),
                     "matched": predict_crop(model, cfg, crop, True),
                     "own_gamma": predict_crop(model, cfg, gamma(crop, 1.4), False),
                     "matched_gamma": predict_crop(model, cfg, gamma(crop, 1.4), True)}
            row = {"model": f"{cfg.dims}D", "folder": Path(run).name, "y": y, "x": x,
                   "foreground": float(true.mean()), "median_grey": float(np.median(crop)),
                   "gap": gap(crop, train_levels), "gap_gamma": gap(gamma(crop, 1.4), train_levels)}
            for key, prob in probs.items():
                row[key] = dataclasses.asdict(metrics.confusion(prob >= 0.5, true))
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}
                             | {k: round(iou(row[k]), 4) for k in COLUMNS}), flush=True)
            save(a.out, {**meta, "rows": rows}, table(rows, meta))  # a stopped run keeps its rows
    print(table(rows, meta))


def iou(counts: dict) -> float:
    """Foreground IoU of confusion counts; nan where neither mask nor truth has foreground."""
    union = counts["tp"] + counts["fp"] + counts["fn"]
    return counts["tp"] / union if union else float("nan")


def pooled(rows: list[dict], key: str) -> dict:
    """The confusion counts of `key` summed over `rows`."""
    return {c: sum(r[key][c] for r in rows) for c in ("tp", "fp", "fn", "tn")}


def table(rows: list[dict], meta: dict) -> str:
    """Markdown: per crop and pooled, IoU of each column, matched minus own in the last two."""
    z0, z1 = meta["slices"]
    lines = [f"Foreground IoU (probability 0.5, no TTA) of CA1 test slices {z0}..{z1 - 1} cut into "
             f"{meta['crop']} x {meta['crop']}-pixel crops, each predicted as a volume of its own; training "
             f"volume's foreground {100 * meta['training_foreground']:.1f} %.", "",
             "Gap: `gap` against the training volume (own window; gamma 1.4 in brackets): "
             + ", ".join(f"{k} {v:.3f}" for k, v in meta["gaps"].items()) + ".", "",
             "| model | crop (y, x) | foreground | median grey | gap | " + " | ".join(COLUMNS.values())
             + " | matched - own | the same, gamma 1.4 |", "|---|---|---|---|---|" + "---|" * (len(COLUMNS) + 2)]
    for model in dict.fromkeys((r["model"], r["folder"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["folder"]) == model]
        for r in mine + [None]:
            counts = {k: (r[k] if r else pooled(mine, k)) for k in COLUMNS}
            scores = {k: iou(v) for k, v in counts.items()}
            where = f"{r['y']}, {r['x']}" if r else "**all crops pooled**"
            share = r["foreground"] if r else np.mean([m["foreground"] for m in mine])
            grey = f"{r['median_grey']:.0f}" if r else ""
            gaps = f"{r['gap']:.3f} ({r['gap_gamma']:.3f})" if r else ""
            lines.append(f"| {model[0]} ({model[1]}) | {where} | {100 * share:.1f} % | {grey} | {gaps} | "
                         + " | ".join(f"{v:.3f}" for v in scores.values())
                         + f" | {scores['matched'] - scores['own']:+.3f}"
                         + f" | {scores['matched_gamma'] - scores['own_gamma']:+.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
