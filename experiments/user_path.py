"""A user's commands on the CA1 test volume: `mitoseg predict --tta --mask` of a 2D run along XY and along three
planes, then `mitoseg label`, each applying the run's post-processing chosen on validation for those planes.

    python experiments/user_path.py RUN --out results/ca1-ablation/planes/user_path.json [--work runs/user_path]

RUN: a 2D run folder trained on CA1 by `mitoseg train` (which chose its post-processing on validation for XY
slices and, apart, for three planes). The commands run through `mitoseg.cli.main`, as typed; the probabilities,
masks and labels go to `--work`. A third row labels the three-plane probabilities as a run without a choice
for three planes gets them (`label --threshold 0.5 --min-size 0`). Each row's labels are scored against the
truth as `mitoseg compare` scores (`compare._scores`: voxel scores, and object F1 over the objects of at least
the minimum size the labelling applied, in the labels and in the truth). Writes the JSON and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from record import header, provenance, save, short  # experiments/ is the script's folder, so on sys.path

from mitoseg import compare, datasets, io
from mitoseg.cli import main as mitoseg


def run(command: list[str]) -> float:
    """`mitoseg --quiet COMMAND` in this process; its seconds (MitosegError and failures end the experiment)."""
    t0 = time.perf_counter()
    if mitoseg(["--quiet", *command]) != 0:
        raise SystemExit(f"mitoseg {' '.join(command)} failed")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a 2D run folder trained on CA1 by `mitoseg train`")
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    p.add_argument("--work", default="runs/user_path", help="folder for the predicted and labelled volumes")
    a = p.parse_args(argv)
    bench = compare.load_benchmark("lucchi")
    folder, _ = datasets.lucchi_dir(None)
    test = str(folder / "testing.tif")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    meta = header(__file__, argv, bench.description, run=short(a.run))
    rows = []
    cases = [("XY", ["--planes", "1"], "xy", []), ("XY, ZX, ZY", ["--planes", "3"], "three", []),
             ("XY, ZX, ZY, no choice", None, "three", ["--threshold", "0.5", "--min-size", "0"])]
    for name, planes, stem, label_options in cases:
        probs, mask, labels = (str(work / f"{stem}{end}.zarr") for end in ("", "_mask", f"_labels{len(rows)}"))
        seconds = {}
        if planes is not None:
            seconds["predict"] = run(["predict", test, "--model", a.run, "--out", probs, "--mask", mask, "--tta",
                                      "--overwrite", *planes])
        source = mask if planes is not None else probs
        seconds["label"] = run(["label", source, "--out", labels, "--overwrite", *label_options])
        stored = io.open_volume(labels)
        applied = dict(stored.attrs["applied"])
        objects = np.asarray(stored[:])
        scores = compare._scores(objects > 0, bench.test_mask, applied["min_size"], labels=objects)
        chosen = io.open_volume(probs).attrs.get("postprocessing") if planes is not None else None
        made = dict(io.open_volume(mask).attrs) if planes is not None else {}  # what predict's mask applied
        rows.append({"predicted_along": name, "chosen": chosen, "applied": applied,
                     "mask": {k: made[k] for k in ("threshold", "z_sigma") if k in made} or None,
                     "seconds": {k: round(v, 1) for k, v in seconds.items()}, "scores": scores})
        print(json.dumps(rows[-1]), flush=True)
        save(a.out, {**meta, "rows": rows}, table(rows, meta))  # an interrupted run keeps its rows
    print(table(rows, meta))


def table(rows: list[dict], meta: dict) -> str:
    """The rows as Markdown: one line per way of predicting and labelling."""
    lines = [f"Whole CA1 test volume, run {meta['run']}: `mitoseg predict --tta --mask` then `mitoseg label`, each "
             "with the run's post-processing chosen on validation for the planes predicted along (holes are not "
             "filled: `label` works in blocks). " + provenance(meta), "",
             "| predicted along | threshold, Z blur (mask) | min size (label) | test IoU | F1 | precision | recall | "
             "object F1 | objects (labels / truth) | seconds (predict + label) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, applied = r["scores"], r["applied"]
        made = r["mask"] or applied  # a mask made by predict, or probabilities thresholded by label
        threshold, blur = made["threshold"], made.get("z_sigma", 0.0)
        seconds = " + ".join(f"{v:.0f}" for v in r["seconds"].values())
        lines.append(f"| {r['predicted_along']} | {threshold:g}, {blur:g} | {applied['min_size']:,} | "
                     f"{s['jaccard']:.4f} | {s['f1']:.4f} | {s['precision']:.4f} | {s['recall']:.4f} | "
                     f"{s['object_f1_iou50']:.3f} | {s['objects_predicted']} / {s['objects_true']} | {seconds} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
