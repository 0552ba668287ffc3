"""The post-processing chosen on the validation split from `postprocess.THRESHOLDS` (0.3-0.7) and from
`postprocess.CHOICE_THRESHOLDS` (0.1-0.9), and the test IoU of each choice, for evaluated CA1 runs.

    python experiments/choice_range.py RUN [RUN ...] --out results/ca1-errors/choice_range.json

Each run folder must hold the probabilities `compare.evaluate_model` saved (val_probs.zarr and
test_probs_tta.zarr, or test_probs.zarr without TTA). Nothing is chosen on the test volume.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from record import header, save  # experiments/ is the script's folder, so on sys.path

from mitoseg import compare, io, metrics, postprocess
from mitoseg.data import split

RANGES = {"0.3-0.7": postprocess.THRESHOLDS, "0.1-0.9": postprocess.CHOICE_THRESHOLDS}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    bench = compare.load_benchmark("lucchi")
    _, val = split(bench.train_image, bench.train_mask, 0.15)
    record = header(__file__, argv, bench.description, rows=[])
    lines = ["| run | thresholds searched | chosen on validation | validation IoU | test IoU |",
             "|---|---|---|---|---|"]
    for run in a.runs:
        folder = Path(run)
        val_probs = io.open_volume(folder / "val_probs.zarr")[:, :, -val.mask.shape[2]:]  # the strip's columns
        name = "test_probs_tta.zarr" if (folder / "test_probs_tta.zarr").exists() else "test_probs.zarr"
        test_probs = io.open_volume(folder / name)[:]
        for span, thresholds in RANGES.items():
            pp, rows = postprocess.choose(val_probs, val.mask, thresholds=thresholds)
            row = {"run": folder.name, "thresholds": span, "chosen": pp.as_dict(),
                   "validation_iou": max(r["jaccard"] for r in rows),
                   "test_iou": metrics.scores(metrics.confusion(postprocess.apply(test_probs, pp),
                                                                bench.test_mask))["jaccard"]}
            record["rows"].append(row)
            holes = "filled" if pp.fill_holes else "kept"
            lines.append(f"| {row['run']} | {span} | threshold {pp.threshold:g}, min {pp.min_size:,}, holes {holes} | "
                         f"{row['validation_iou']:.4f} | {row['test_iou']:.4f} |")
            save(a.out, record, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
