"""Which BatchNorm statistics make a trained model predict best, and hold under a contrast change?

    python experiments/batchnorm.py RUN [RUN ...] --out results/ca1-cpu/batchnorm.json [--batches 100]
        [--target-patches 40]

For each run folder (a trained 2D or 3D model on CA1), the best checkpoint is scored as saved (running
statistics: the exponential average of the last training batches) and after `train.recalibrate_batchnorm`
with `--batches` training batches (drawn and augmented as in training; weights unchanged): foreground IoU
at probability 0.5 (no TTA) on the validation split, and on the central `--slices` slices of the CA1
test volume as published and with gamma 1.4 (the change the 3D model failed in the contrast table).
With `--target-patches N`, two more rows: statistics re-estimated on N random unlabelled patches of the
volume being scored itself (AdaBN, Li et al. 2016: no labels, so a user could do it on a new volume),
and each prediction tile normalised by its own statistics (what BatchNorm does in training at batch 1).
With `--shift-patches N`, one more row: the saved statistics moved by the difference between those of N
random patches of the scored volume and of N random patches of the training volume (both as AdaBN
estimates them), so that a change of the microscope is corrected but not the content's mixture.
With `--match-training`, one more row: the statistics as saved, each volume's grey levels first moved onto
the training volume's histogram (`mitoseg predict --match-training`; not BatchNorm, the same question).
Writes the JSON and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from ablation import gamma, strip_alone, with_training_histogram  # experiments/: the script's folder, on sys.path
from ablation import score as iou
from record import header, save

from mitoseg import compare, data, io, metrics, models, predict, train


@torch.no_grad()
def adapt(model, cfg, volume: np.ndarray, window, patches: int, seed: int = 0) -> None:
    """BatchNorm statistics re-estimated (plain average) over `patches` random crops of `volume` (Z, Y, X)
    of the training patch's shape, in training's batches (2D: patch_z slices per batch); no labels."""
    norms = train._batchnorms(model)
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    rng, (pz, py, px) = np.random.default_rng(seed), cfg.patch
    per_batch = cfg.samples_per_batch
    device = next(model.parameters()).device
    model.train()
    for _ in range(max(1, patches // per_batch)):
        crops = []
        for _ in range(per_batch):
            z, y, x = (int(rng.integers(0, s - p + 1)) for s, p in zip(volume.shape, (pz, py, px), strict=True))
            crops.append(io.normalize(volume[z:z + pz, y:y + py, x:x + px], window))
        batch = torch.from_numpy(np.stack(crops)[:, None].astype(np.float32)).to(device)
        with models.autocast(device, cfg.amp):
            model(batch[:, :, 0] if cfg.dims == 2 else batch)
    for m in norms:
        m.momentum = 0.1
    model.eval()


@torch.no_grad()
def statistics(model, cfg, volume: np.ndarray, window, patches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(running mean, running variance) of every BatchNorm layer of a copy of `model` after `adapt`."""
    probe = copy.deepcopy(model)
    adapt(probe, cfg, volume, window, patches)
    return [(m.running_mean.clone(), m.running_var.clone()) for m in train._batchnorms(probe)]


@torch.no_grad()
def shift(model, cfg, source: np.ndarray, source_window, target: np.ndarray, target_window, patches: int) -> None:
    """Move the saved statistics by target - source (means) and target / source (variances), each estimated
    on `patches` random crops (the same corners where the volumes' shapes agree): what differs between
    the volumes is corrected, the training patches' mixture of content in the saved statistics is kept."""
    src = statistics(model, cfg, source, source_window, patches)
    tgt = statistics(model, cfg, target, target_window, patches)
    for m, (mean_s, var_s), (mean_t, var_t) in zip(train._batchnorms(model), src, tgt, strict=True):
        m.running_mean += mean_t - mean_s
        m.running_var *= (var_t + m.eps) / (var_s + m.eps)


def per_tile(model) -> None:
    """Every BatchNorm layer normalises with the statistics of the batch it is given (prediction: one tile)."""
    for m in train._batchnorms(model):
        m.forward = lambda x, m=m: F.batch_norm(x, None, None, m.weight, m.bias, True, 0.0, m.eps)


def tile_iou(model, cfg, image: np.ndarray, truth: np.ndarray, window) -> float:
    """Like `iou`, one tile per batch (so `per_tile` statistics are one tile's)."""
    tile = predict.default_tile(cfg.dims, image.shape, cfg.tile)
    probs = predict.predict_array(model, image, cfg.dims, tile, cfg.overlap, window, batch_size=1, amp=cfg.amp)
    return metrics.scores(metrics.confusion(probs >= 0.5, truth))["jaccard"]


def adapted_row(run, label: str, cases, adjust) -> dict:
    """One table row: for each (key, scored image, truth, window, whole volume) of `cases`, the saved model
    changed by `adjust(model, cfg, whole volume, window)`, then its IoU on the scored image."""
    row = {"batches": label}
    for key, image, truth, window, volume in cases:
        model, cfg = train.load_model(run)  # from the saved statistics each time
        t0 = time.perf_counter()
        adjust(model, cfg, volume, window)
        row["seconds"] = time.perf_counter() - t0  # the last: on the test volume with gamma 1.4
        row[key] = iou(model, cfg, image, truth, window)
    row = {"model": f"{cfg.dims}D", **row}
    print(json.dumps(row), flush=True)
    return row


def matched_row(run, bench, val_vol, image, truth, dark) -> dict:
    """The saved model with each volume's grey levels moved onto the training volume's histogram first, as
    `mitoseg predict --match-training` does (the validation strip and the test volume each as a volume of
    their own); runs trained before the histogram was kept with the model get it from the CA1 training volume."""
    model, cfg = train.load_model(run)
    with_training_histogram(model, cfg, bench.train_image)
    t0 = time.perf_counter()
    val_window, window, dark_window = (predict.input_window(model, v, match_training=True)
                                       for v in (val_vol.image, bench.test_image, gamma(bench.test_image, 1.4)))
    row = {"model": f"{cfg.dims}D", "batches": "matched", "seconds": (time.perf_counter() - t0) / 3,
           "val_iou": iou(model, cfg, val_vol.image, val_vol.mask, val_window),
           "test_iou": iou(model, cfg, image, truth, window),
           "test_iou_gamma_1.4": iou(model, cfg, dark, truth, dark_window)}
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="trained run folders on CA1 (e.g. a compare report's model_3D)")
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    p.add_argument("--batches", type=int, nargs="+", default=[100], help="training batches per re-estimate")
    p.add_argument("--slices", type=int, default=32, help="central test slices to score")
    p.add_argument("--target-patches", type=int, default=0,
                   help="patches of the scored volume that re-estimate the statistics (AdaBN); 0: no such rows")
    p.add_argument("--shift-patches", type=int, default=0,
                   help="patches of the scored and of the training volume whose difference moves the saved "
                        "statistics; 0: no such row")
    p.add_argument("--match-training", action="store_true",
                   help="one more row: the saved statistics, each volume's grey levels moved onto the training "
                        "volume's histogram first (mitoseg predict --match-training)")
    a = p.parse_args(argv)
    bench = compare.load_benchmark("lucchi")
    z0 = (bench.test_image.shape[0] - a.slices) // 2
    image, truth = bench.test_image[z0:z0 + a.slices], bench.test_mask[z0:z0 + a.slices]
    dark = gamma(image, 1.4)
    rows = []
    for run in a.runs:
        model, cfg = train.load_model(run)
        window = io.intensity_range(bench.test_image, rule=cfg.normalize)
        dark_window = io.intensity_range(gamma(bench.test_image, 1.4), rule=cfg.normalize)
        train_vol, val_vol = data.split(bench.train_image, bench.train_mask, cfg.val_fraction,
                                        io.intensity_range(bench.train_image, rule=cfg.normalize))
        val_vol = strip_alone(val_vol)
        sampler = data.PatchSampler(train_vol, cfg.patch, cfg.fg_fraction, np.random.default_rng(cfg.seed),
                                    context=cfg.context)
        tf = train.augmenter(cfg, cfg.seed)
        device = next(model.parameters()).device
        for batches in dict.fromkeys([0, *a.batches]):  # --batches 0: as saved only
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
        cases = [("val_iou", val_vol.image, val_vol.mask, val_vol.window, val_vol.image),
                 ("test_iou", image, truth, window, bench.test_image),
                 ("test_iou_gamma_1.4", dark, truth, dark_window,
                  gamma(bench.test_image, 1.4) if a.target_patches or a.shift_patches else None)]
        if a.target_patches:
            rows.append(adapted_row(run, f"target {a.target_patches}", cases,
                                    lambda m, c, vol, win: adapt(m, c, vol, win, a.target_patches)))
            model, cfg = train.load_model(run)
            per_tile(model)
            rows.append({"model": f"{cfg.dims}D", "batches": "tile", "seconds": 0.0,
                         "val_iou": tile_iou(model, cfg, val_vol.image, val_vol.mask, val_vol.window),
                         "test_iou": tile_iou(model, cfg, image, truth, window),
                         "test_iou_gamma_1.4": tile_iou(model, cfg, dark, truth, dark_window)})
            print(json.dumps(rows[-1]), flush=True)
        if a.shift_patches:
            rows.append(adapted_row(run, f"shift {a.shift_patches}", cases, lambda m, c, vol, win, src=train_vol: shift(
                m, c, src.image, src.window, vol, win, a.shift_patches)))
        if a.match_training:
            rows.append(matched_row(run, bench, val_vol, image, truth, dark))
    meta = header(__file__, argv, bench.description, test_slices=[z0, z0 + a.slices])
    m = meta["machine"]
    lines = [f"BatchNorm statistics as saved (0 batches) and re-estimated over N training batches; IoU at "
             f"probability 0.5, no TTA; test slices {z0}..{z0 + a.slices - 1}. Data: {bench.description}. "
             f"Machine: {m['cpu']} ({m['cpu_count']} cores). Date: {meta['date']}. Command: `{meta['command']}`", "",
             "| model | BN statistics | validation IoU | test IoU | test IoU, gamma 1.4 | seconds to re-estimate |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        what = ("as saved (exponential average)" if not r["batches"] else
                "each prediction tile's own" if r["batches"] == "tile" else
                "as saved; grey levels moved onto the training volume's histogram (predict --match-training)"
                if r["batches"] == "matched" else
                f"re-estimated on {str(r['batches']).split()[-1]} unlabelled patches of the scored volume (AdaBN)"
                if str(r["batches"]).startswith("target") else
                f"moved by scored minus training volume, {str(r['batches']).split()[-1]} random patches each"
                if str(r["batches"]).startswith("shift") else f"re-estimated, {r['batches']} training batches")
        lines.append(f"| {r['model']} | {what} | {r['val_iou']:.4f} | {r['test_iou']:.4f} | "
                     f"{r['test_iou_gamma_1.4']:.4f} | {r['seconds']:.0f} |")
    save(a.out, {**meta, "rows": rows}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
