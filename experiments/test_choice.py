"""How far the CA1 runs' validation-chosen post-processing is from the best one for the test volume, and
what they score on the footing of the published PyTorch Connectomics number (threshold and median filter
picked on the test set itself).

    python experiments/test_choice.py RUN [RUN ...] --out results/ca1-ablation/test-choice/test_choice.json

Each run folder must hold the probabilities `compare.evaluate_model` saved (val_probs.zarr and
test_probs_tta.zarr, or test_probs.zarr without TTA). Rows, each scored on the validation split and on the
whole test volume:
- chosen on validation: `postprocess.choose` on the validation split (mitoseg's own number);
- chosen on test: the same search on the test volume (not a result: how much the choice costs);
- median filter: a cube of `--medians` voxels over the probabilities, then a threshold from
  `postprocess.CHOICE_THRESHOLDS`, chosen on validation and on test; computed as the majority of the
  thresholded mask in the cube, which is the same (a median commutes with a threshold);
- the validation-chosen mask grown or shrunk by one voxel in each slice (a 3 x 3 cross): whether the two
  volumes' labels draw their outlines at the same place relative to what the model sees.
Some minutes per run on 2 cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from record import header, provenance, save  # experiments/ is the script's folder, so on sys.path
from scipy import ndimage

from mitoseg import compare, io, metrics, postprocess
from mitoseg.data import split

CROSS = ndimage.generate_binary_structure(2, 1)[None]  # one voxel in Y and X, none in Z


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    p.add_argument("--medians", type=int, nargs="+", default=[3, 5, 7], help="median cube sizes, voxels")
    a = p.parse_args(argv)
    bench = compare.load_benchmark("lucchi")
    _, val = split(bench.train_image, bench.train_mask, 0.15)
    truths = {"validation": np.asarray(val.mask) > 0, "test": np.asarray(bench.test_mask) > 0}
    record = header(__file__, argv, bench.description, runs={})
    for run in a.runs:
        folder = Path(run)
        name = "test_probs_tta.zarr" if (folder / "test_probs_tta.zarr").exists() else "test_probs.zarr"
        probs = {"validation": io.open_volume(folder / "val_probs.zarr")[:, :, -val.mask.shape[2]:],  # the strip's
                 "test": io.open_volume(folder / name)[:]}
        record["runs"][folder.name] = rows = {"probabilities": name}
        for on in ("validation", "test"):
            pp, _ = postprocess.choose(probs[on], truths[on])
            masks = {v: postprocess.apply(probs[v], pp) > 0 for v in truths}
            rows[f"chosen on {on}"] = {"setting": pp.as_dict(), **_ious(masks, truths)}
            if on == "validation":
                for label, fn in (("grown", ndimage.binary_dilation), ("shrunk", ndimage.binary_erosion)):
                    rows[f"chosen on validation, {label} one voxel in-plane"] = {
                        "setting": pp.as_dict(), **_ious({v: fn(m, CROSS) for v, m in masks.items()}, truths)}
            del masks
        medians = {v: _median_scores(probs[v], truths[v], a.medians) for v in truths}
        for on in ("validation", "test"):
            size, t = max(medians[on], key=medians[on].get)
            rows[f"median filter chosen on {on}"] = {"setting": {"median": size, "threshold": t},
                                                     **{v: medians[v][(size, t)] for v in truths}}
        save(a.out, record, table(record))
    print(table(record))


def _ious(masks: dict, truths: dict) -> dict:
    """{'validation': IoU, 'test': IoU} of each volume's mask against its truth."""
    return {v: metrics.jaccard(masks[v], truth) for v, truth in truths.items()}


def _median_scores(probs: np.ndarray, truth: np.ndarray, sizes: list[int]) -> dict:
    """{(cube size, threshold): IoU} of the median-filtered probabilities thresholded."""
    scale = 255.0 if probs.dtype == np.uint8 else 1.0
    out = {}
    for t in postprocess.CHOICE_THRESHOLDS:
        above = (probs >= t * scale).astype(np.float32)
        for size in sizes:
            out[(size, t)] = metrics.jaccard(ndimage.uniform_filter(above, size) > 0.5, truth)
    return out


def table(record: dict) -> str:
    lines = ["# CA1: the post-processing chosen on validation against the best for the test volume", "",
             provenance(record), "",
             "Foreground IoU of the TTA probabilities. Rows chosen on the test volume are not results: they show "
             "what the choice on validation costs, and put the runs on the footing of the published PyTorch "
             "Connectomics 0.892 (threshold and median filter picked on the test set).", "",
             "| run | post-processing | setting | validation IoU | test IoU |", "|---|---|---|---|---|"]
    for run, rows in record["runs"].items():
        for what, row in rows.items():
            if what == "probabilities":
                continue
            setting = ", ".join(f"{k} {v:g}" if isinstance(v, float | int) and not isinstance(v, bool)
                                else f"{k} {v}" for k, v in row["setting"].items())
            lines.append(f"| {run} | {what} | {setting} | {row['validation']:.4f} | {row['test']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
