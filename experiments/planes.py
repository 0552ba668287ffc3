"""Predicting along three planes without training on them: a 2D model trained on XY slices, predicted along XY alone
and along XY, ZX and ZY (the mean of the three, as `--planes 3` models predict).

    python experiments/planes.py RUN [RUN ...] --out results/ca1-ablation/planes/predict_planes.json [--tta]

For each 2D run folder on CA1, the validation split and the whole CA1 test volume are predicted (with `--tta`
averaged over `predict.TTA_SET`'s transforms, as `mitoseg predict --tta`) by the product's predictor
(`predict.predict_array`, whole slices, the run's bf16 setting), the model loaded along 1 and then 3 planes
(`train.load_model(run, planes=...)`, as `mitoseg predict --planes` does); each chooses its post-processing on
the validation split (`postprocess.choose`) and is scored on the test volume raw (probability 0.5) and
post-processed. Writes the JSON and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from ablation import validation_strip  # experiments/ is the script's folder, so on sys.path
from record import header, provenance, save, short

from mitoseg import compare, io, postprocess, predict, train


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="trained 2D run folders on CA1 (e.g. runs/context/context0_seed0)")
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    p.add_argument("--tta", action="store_true", help="test-time augmentation for both splits")
    a = p.parse_args(argv)
    bench = compare.load_benchmark("lucchi")
    meta = header(__file__, argv, bench.description)
    truth = np.asarray(bench.test_mask)
    rows = []
    for run in a.runs:
        trained = train.load_model(run)[1].slice_planes
        for planes in (1, 3):
            model, cfg = train.load_model(run, planes=planes)
            val = validation_strip(bench, cfg)
            window = io.intensity_range(bench.test_image, rule=cfg.normalize)
            vprobs = predict.predict_array(model, val.image, 2, predict.default_tile(2, val.image.shape, cfg.tile),
                                           cfg.overlap, val.window, tta=a.tta, amp=cfg.amp)
            pp, _ = postprocess.choose(predict.to_storage(vprobs, "uint8"), val.mask)
            t0 = time.perf_counter()
            probs = predict.predict_array(model, bench.test_image, 2,
                                          predict.default_tile(2, bench.test_image.shape, cfg.tile), cfg.overlap,
                                          window, tta=a.tta, amp=cfg.amp)
            seconds = time.perf_counter() - t0
            stored = predict.to_storage(probs, "uint8")  # as `predict` stores them and `compare` scores them
            # voxel scores and object F1 as `mitoseg compare` reports them (objects of at least the minimum size)
            at_half = compare._scores(stored >= 128, truth, 0)
            final = compare._scores(postprocess.apply(stored, pp), truth, pp.min_size)
            row = {"run": short(run), "planes": planes, "tta": a.tta, "trained_planes": trained,
                   "test_seconds": round(seconds, 1), "postprocessing": pp.as_dict(),
                   "raw": at_half["jaccard"], "post": final["jaccard"], "scores_raw": at_half, "scores_post": final}
            rows.append(row)
            print(json.dumps(row), flush=True)
            save(a.out, {**meta, "rows": rows}, table(rows, meta))  # an interrupted run keeps its rows
    print(table(rows, meta))


def table(rows: list[dict], meta: dict) -> str:
    """The rows as Markdown: one line per run and planes predicted along."""
    tta = "with TTA" if rows and rows[0].get("tta") else "no TTA"
    lines = [f"Whole CA1 test volume, {tta}; raw: foreground IoU at probability 0.5; post-processed: the "
             "post-processing chosen on the validation split for that prediction. " + provenance(meta), "",
             "| run (trained on) | predicted along | test IoU raw | + post-processing | chosen | seconds (test) |"
             " F1 / precision / recall / accuracy / object F1: raw; + post-processing |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        pp = r["postprocessing"]
        chosen = f"threshold {pp['threshold']}, Z blur {pp['z_sigma']}, min size {pp['min_size']}"
        lines.append(f"| {r['run']} ({'XY' if r['trained_planes'] == 1 else 'three planes'}) | "
                     f"{'XY' if r['planes'] == 1 else 'XY, ZX, ZY'} | {r['raw']:.4f} | {r['post']:.4f} | {chosen} | "
                     f"{r['test_seconds']:.0f} | {_words(r.get('scores_raw'))}; {_words(r.get('scores_post'))} |")
    return "\n".join(lines)


def _words(s: dict | None) -> str:
    """F1 / precision / recall / accuracy / object F1 of one `score`, or "-" for rows written before it."""
    keys = ("f1", "precision", "recall", "accuracy", "object_f1_iou50")
    return " / ".join(f"{s[k]:.4f}" if k == "accuracy" else f"{s[k]:.3f}" for k in keys) if s else "-"


if __name__ == "__main__":
    main()
