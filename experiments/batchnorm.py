"""Does re-estimating BatchNorm statistics after training ("precise BN") steady a trained model?

    python experiments/batchnorm.py RUN [RUN ...] --out results/ca1-cpu/batchnorm.json [--batches 100]

For each run folder (a trained 2D or 3D model on CA1), the best checkpoint is scored as saved (running
statistics: the exponential average of the last training batches) and after `train.recalibrate_batchnorm`
with `--batches` training batches (drawn and augmented as in training; weights unchanged): foreground IoU
at probability 0.5 (no TTA) on the validation split, and on the central `--slices` slices of the CA1
test volume as published and with gamma 1.4 (the change the 3D model failed in the contrast table).
Writes the JSON and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from ablation import gamma  # experiments/ is the script's folder, so on sys.path
from ablation import score as iou
from record import header

from mitoseg import compare, data, io, train


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="trained run folders on CA1 (e.g. a compare report's model_3D)")
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    p.add_argument("--batches", type=int, nargs="+", default=[100], help="training batches per re-estimate")
    p.add_argument("--slices", type=int, default=32, help="central test slices to score")
    a = p.parse_args(argv)
    bench = compare.load_benchmark("lucchi")
    z0 = (bench.test_image.shape[0] - a.slices) // 2
    image, truth = bench.test_image[z0:z0 + a.slices], bench.test_mask[z0:z0 + a.slices]
    window = io.intensity_range(bench.test_image)
    dark, dark_window = gamma(image, 1.4), io.intensity_range(gamma(bench.test_image, 1.4))
    rows = []
    for run in a.runs:
        model, cfg = train.load_model(run)
        train_vol, val_vol = data.split(bench.train_image, bench.train_mask, cfg.val_fraction,
                                        io.intensity_range(bench.train_image))
        sampler = data.PatchSampler(train_vol, cfg.patch, cfg.fg_fraction, np.random.default_rng(cfg.seed))
        tf = data.augmenter(cfg.seed, cfg.dims, cfg.intensity_aug, cfg.slice_jitter)
        device = next(model.parameters()).device
        for batches in [0, *a.batches]:
            t0 = time.perf_counter()
            if batches:
                model, cfg = train.load_model(run)  # from the saved statistics each time
                train.recalibrate_batchnorm(model, sampler, tf, cfg, device, batches, (cfg.seed, 12345))
            row = {"model": f"{cfg.dims}D", "batches": batches, "seconds": time.perf_counter() - t0,
                   "val_iou": iou(model, cfg, val_vol.image, val_vol.mask, val_vol.window),
                   "test_iou": iou(model, cfg, image, truth, window),
                   "test_iou_gamma_1.4": iou(model, cfg, dark, truth, dark_window)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = header(__file__, argv, bench.description, test_slices=[z0, z0 + a.slices])
    out.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    m = meta["machine"]
    lines = [f"BatchNorm statistics as saved (0 batches) and re-estimated over N training batches; IoU at "
             f"probability 0.5, no TTA; test slices {z0}..{z0 + a.slices - 1}. Machine: {m['cpu']} "
             f"({m['cpu_count']} cores). Date: {meta['date']}. Command: `{meta['command']}`", "",
             "| model | BN statistics | validation IoU | test IoU | test IoU, gamma 1.4 | seconds to re-estimate |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        what = "as saved (exponential average)" if not r["batches"] else f"re-estimated, {r['batches']} batches"
        lines.append(f"| {r['model']} | {what} | {r['val_iou']:.4f} | {r['test_iou']:.4f} | "
                     f"{r['test_iou_gamma_1.4']:.4f} | {r['seconds']:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
