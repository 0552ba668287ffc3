"""Slice-to-slice jitter (CA1, or --dataset): in the labels, in each model's masks, and what smoothing along Z gains.

    python experiments/z_smoothing.py RUN [RUN ...] --out results/ca1-ablation/z-smoothing/z_smoothing.json
        [--mean RUN_2D RUN_3D] [--work runs/z_smoothing] [--tta] [--dataset lucchi|drosophila]

1. Roughness: a mask (Z, Y, X) blurred along one axis only (a 1D Gaussian of 1 voxel, then >= 0.5) keeps
   an IoU with itself near 1 where its surface is smooth along that axis. On 5 nm isotropic tissue a
   surface should look alike along every axis; a lower IoU along Z means the mask changes from slice to
   slice more than the tissue does. Measured on the training and test labels (outlines drawn per slice)
   and on each run's raw test mask (0.5).
2. The product's choice (`postprocess.choose`) on the validation split, without and with the Z smoothing
   (`postprocess.Z_SIGMAS`), applied to the test volume; raw probabilities (`--tta`: with test-time
   augmentation, as `compare`'s final row), each run's own intensity rule. `--mean`: also the mean of two
   runs' probabilities (`predict.mean_probabilities`).
Probabilities are predicted once into --work and reused. Writes the JSON and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from record import header, provenance, save  # experiments/ is the script's folder, so on sys.path
from scipy import ndimage

from mitoseg import compare, io, metrics, postprocess
from mitoseg.data import split
from mitoseg.predict import mean_probabilities
from mitoseg.train import load_model


def roughness(mask: np.ndarray, sigma: float = 1.0) -> dict[str, float]:
    """IoU of `mask` with itself blurred along Z, Y and X apart (Gaussian of `sigma` voxels, then >= 0.5)."""
    out = {}
    for axis, name in enumerate("zyx"):
        blurred = ndimage.gaussian_filter1d(mask.astype(np.float32), sigma, axis=axis) >= 0.5
        out[name] = metrics.jaccard(blurred, mask)
    return out


def probabilities(run: str, bench: compare.Benchmark, work: Path,
                  tta: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A run's uint8 probabilities of the validation split, that split's truth, and the run's test
    probabilities, raw or with TTA (predicted once into `work`)."""
    model, cfg = load_model(run)
    tag = "_".join(Path(run).parts[-2:])
    _, val = split(bench.train_image, bench.train_mask, cfg.val_fraction)
    out = []
    strip = val.image[:, :, val.margin:]  # the strip alone, as measured before 2026-12-07
    for name, image, window_of in (("val", strip, bench.train_image), ("test", bench.test_image, bench.test_image)):
        path = work / f"{tag}_{name}_probs{'_tta' * tta}.zarr"
        if not path.exists():
            window = io.intensity_range(window_of, rule=cfg.normalize)  # validation: the training volume's window
            compare._predict(model, cfg, image, path, tta, True, window)
        out.append(io.open_volume(path)[:])
    return out[0], val.mask, out[1]


def choices(val_probs: np.ndarray, val_mask: np.ndarray, test_probs: np.ndarray, truth: np.ndarray) -> dict:
    row = {"test_iou_raw": metrics.jaccard(test_probs >= 128, truth),
           "test_mask_roughness": roughness(test_probs >= 128)}
    for key, sigmas in (("without", (0.0,)), ("with", postprocess.Z_SIGMAS)):
        pp, rows = postprocess.choose(val_probs, val_mask, z_sigmas=sigmas)
        row[key] = {"chosen": pp.as_dict(), "validation_iou": max(r["jaccard"] for r in rows),
                    "test_iou": metrics.jaccard(postprocess.apply(test_probs, pp), truth)}
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--mean", nargs=2, metavar=("RUN_2D", "RUN_3D"), help="also the mean of these two runs")
    p.add_argument("--work", type=Path, default=Path("runs/z_smoothing"), help="folder for the probabilities")
    p.add_argument("--tta", action="store_true", help="probabilities with test-time augmentation (4 flips)")
    p.add_argument("--dataset", default="lucchi", choices=("lucchi", "drosophila"),
                   help="compare's data set (default: CA1; drosophila: the 50 nm ssTEM stack, split as compare does)")
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    bench = compare.load_benchmark(a.dataset)
    record = header(__file__, argv, bench.description, tta=a.tta, labels={}, models={})
    for name, mask in (("training", bench.train_mask), ("test", bench.test_mask)):
        record["labels"][name] = roughness(mask.astype(bool))
        print(name, record["labels"][name], flush=True)
    truth = bench.test_mask.astype(bool)
    for run in a.runs:
        record["models"][run] = choices(*probabilities(run, bench, a.work, a.tta), truth)
        print(run, record["models"][run], flush=True)
    if a.mean:
        val_p, val_mask, test_p = zip(*(probabilities(run, bench, a.work, a.tta) for run in a.mean), strict=True)
        name = f"mean of {a.mean[0]} and {a.mean[1]}"
        record["models"][name] = choices(mean_probabilities(list(val_p)), val_mask[0], mean_probabilities(list(test_p)),
                                         truth)
        print(name, record["models"][name], flush=True)
    save(a.out, record, markdown(record))


def markdown(record: dict) -> str:
    lines = ["IoU of a mask with itself blurred along one axis (Gaussian of 1 voxel, then >= 0.5; 1.0: nothing "
             "moved). " + provenance(record), "",
             "| mask | blurred along Z | along Y | along X |", "|---|---|---|---|"]
    lines += [f"| {name} labels | {r['z']:.4f} | {r['y']:.4f} | {r['x']:.4f} |" for name, r in record["labels"].items()]
    lines += [f"| {name}, raw test mask | " + " | ".join(f"{r['test_mask_roughness'][k]:.4f}" for k in "zyx") + " |"
              for name, r in record["models"].items()]
    probs = "probabilities with TTA, 4 in-plane flips" if record.get("tta") else "raw probabilities, no TTA"
    raw = "with TTA" if record.get("tta") else "raw"
    lines += ["", "Post-processing chosen on the validation split (`postprocess.choose`) without and with the Z "
              f"smoothing, applied to the test volume ({probs}).", "",
              f"| model | test IoU {raw} (0.5) | chosen without Z smoothing: test IoU (validation) | chosen with it: "
              "test IoU (validation) | Z sigma chosen (slices) | gain |", "|---|---|---|---|---|---|"]
    for name, r in record["models"].items():
        w, z = r["without"], r["with"]
        lines.append(f"| {name} | {r['test_iou_raw']:.4f} | {w['test_iou']:.4f} ({w['validation_iou']:.4f}) | "
                     f"{z['test_iou']:.4f} ({z['validation_iou']:.4f}) | {z['chosen']['z_sigma']:g} | "
                     f"{z['test_iou'] - w['test_iou']:+.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
