"""How many columns of the training part the validation strip needs to be predicted as `predict` predicts it.

The strip (the training volume's last 15 % in X) predicted alone, with 32 to 256 columns before it (`data.VAL_MARGIN`
is 64), and inside whole slices; each scored on the strip at probability 0.5 and at the best of 0.3-0.7:

    python experiments/val_margin.py RUN --out results/ca1-ablation/val_margin.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from record import header, save, short  # experiments/ is the script's folder, so on sys.path

from mitoseg import compare, io, metrics, predict
from mitoseg.train import load_model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a 2D run folder trained on CA1")
    p.add_argument("--slices", type=int, nargs=2, default=[60, 100], help="the training slices scored (from, to)")
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    a = p.parse_args(argv)
    bench = compare.load_benchmark("lucchi")
    image = np.asarray(bench.train_image[a.slices[0]:a.slices[1]])
    truth = np.asarray(bench.train_mask[a.slices[0]:a.slices[1]]) > 0
    model, cfg = load_model(a.run, "cpu")
    window = io.intensity_range(image, rule=cfg.normalize)
    width = image.shape[2]
    cut = width - max(1, int(round(width * 0.15)))
    record = header(__file__, argv, bench.description, run=short(a.run), tile=list(cfg.tile), rows=[])
    lines = ["| columns before the strip | IoU at 0.5 | best IoU (threshold) | seconds |", "|---|---|---|---|"]
    for margin in (0, 32, 64, 128, 256, cut):
        t0 = time.perf_counter()
        part = image[:, :, cut - margin:]
        probs = predict.predict_array(model, part, 2, predict.default_tile(2, part.shape, cfg.tile), cfg.overlap,
                                      window, amp=cfg.amp)[:, :, margin:]
        iou = {t: metrics.scores(metrics.confusion(probs >= t, truth[:, :, cut:]))["jaccard"]
               for t in (0.3, 0.4, 0.5, 0.6, 0.7)}
        best = max(iou, key=iou.get)
        row = {"margin": margin, "whole_slices": margin == cut, "iou_at_0.5": iou[0.5], "best_iou": iou[best],
               "best_threshold": best, "seconds": time.perf_counter() - t0}
        record["rows"].append(row)
        lines.append(f"| {'all (whole slices)' if margin == cut else margin} | {iou[0.5]:.4f} | {iou[best]:.4f} "
                     f"({best}) | {row['seconds']:.1f} |")
        print(lines[-1], flush=True)
    save(a.out, record, "\n".join(lines))


if __name__ == "__main__":
    main()
