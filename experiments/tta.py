"""Which test-time augmentation (TTA) set is worth its cost: flips, 90° turns, z flips?

    python experiments/tta.py RUN [RUN ...] --out results/ca1-ablation/tta/tta.json [--slices 64]
        [--sets none flips dihedral flips_z dihedral_z]

For each run folder (a trained 2D or 3D model on CA1), the validation split and the central `--slices`
slices of the CA1 test volume are predicted with the product's predictor, averaging over each set of
`predict.TTA_SETS` (none: the raw prediction; flips: the 4 in-plane flips; dihedral: the 8 turns and
flips of the plane; *_z: the same with and without a flip of Z, 3D only) and scored as foreground IoU at
probability 0.5; the seconds each test prediction took are kept. Writes the JSON and a Markdown table
beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ablation import central_slices, validation_strip  # experiments/ is the script's folder, so on sys.path
from record import header, provenance, save

from mitoseg import compare, io, metrics, predict, train


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="trained run folders on CA1 (e.g. runs/robust-runs/recipe_3D)")
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    p.add_argument("--slices", type=int, default=64, help="central test slices to score")
    p.add_argument("--sets", nargs="+", default=["none", *predict.TTA_SETS],
                   choices=["none", *predict.TTA_SETS], help="TTA sets to score (none: no TTA)")
    a = p.parse_args(argv)
    bench = compare.load_benchmark("lucchi")
    z0, image, truth = central_slices(bench, a.slices)
    meta = header(__file__, argv, bench.description, slices=[z0, z0 + a.slices])
    rows = []
    for run in a.runs:
        model, cfg = train.load_model(run)
        window = io.intensity_range(bench.test_image, rule=cfg.normalize)
        val = validation_strip(bench, cfg)
        for name in a.sets:
            if cfg.dims == 2 and name.endswith("_z"):
                continue  # a 2D model has no Z to flip: the same as the set without
            tta = name != "none"
            if tta:
                predict.TTA_SET = name  # what tta=True averages over
            row = {"model": f"{cfg.dims}D", "folder": Path(run).name, "tta": name,
                   "transforms": len(predict._transforms(5 if cfg.dims == 3 else 4, tta))}
            tile = predict.default_tile(cfg.dims, val.image.shape, cfg.tile)
            probs = predict.predict_array(model, val.image, cfg.dims, tile, cfg.overlap, val.window, tta=tta,
                                          amp=cfg.amp)
            row["validation"] = metrics.scores(metrics.confusion(probs >= 0.5, val.mask))["jaccard"]
            tile = predict.default_tile(cfg.dims, image.shape, cfg.tile)
            t0 = time.perf_counter()
            probs = predict.predict_array(model, image, cfg.dims, tile, cfg.overlap, window, tta=tta, amp=cfg.amp)
            row["test_seconds"] = round(time.perf_counter() - t0, 1)
            row["test"] = metrics.scores(metrics.confusion(probs >= 0.5, truth))["jaccard"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            save(a.out, {**meta, "rows": rows}, table(rows, z0, a.slices, meta))  # an interrupted run keeps its rows
    print(table(rows, z0, a.slices, meta))


def table(rows: list[dict], z0: int, slices: int, meta: dict) -> str:
    """The rows as Markdown: one line per model and TTA set, differences against the same model's raw."""
    raw = {r["folder"]: r for r in rows if r["tta"] == "none"}
    lines = [f"Foreground IoU at probability 0.5; test: central {slices} slices ({z0}..{z0 + slices - 1}); "
             "validation: the training volume's validation split; in brackets: against the same model "
             "without TTA. " + provenance(meta), "",
             "| model | TTA | transforms | validation IoU | test IoU | seconds (test slices) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        base = raw.get(r["folder"])

        def diff(key, r=r, base=base):
            return f" ({r[key] - base[key]:+.3f})" if base and r is not base else ""

        lines.append(f"| {r['model']} {r['folder']} | {r['tta']} | {r['transforms']} | {r['validation']:.3f}"
                     f"{diff('validation')} | {r['test']:.3f}{diff('test')} | {r['test_seconds']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
