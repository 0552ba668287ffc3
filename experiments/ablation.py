"""What each part of the training recipe adds on CA1: one change at a time, at equal iterations.

    python experiments/ablation.py --out results/ca1-ablation/ablation.json [--iterations 200] [--slices 64]

Every row trains both models with the `quick` preset's patches (32 x 128 x 128 voxels per iteration)
for `--iterations` iterations (validation every 50) with one change to the recipe, and scores the
central `--slices` slices of the CA1 test volume (normalised with the whole test volume's window by the
run's rule), raw
at probability 0.5 (no TTA, no post-processing), with the checkpoint of best validation IoU, as
published and with gamma 1.4 applied to the test slices (the contrast change the 3D model failed in
the contrast table). Equal iterations, not equal time: bf16's gain is its speed (benchmarks/bench_train.py),
this table shows what it costs in accuracy. Writes the JSON and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from record import header, save  # experiments/ is the script's folder, so on sys.path

from mitoseg import compare, config, data, io, metrics, predict, train

PER_EPOCH = 50
VARIANTS = {  # folder: (name, Config changes); the first is the recipe every other row changes one thing of
    "recipe": ("recipe", {}),
    "seed1": ("recipe, another seed (run-to-run noise)", {"seed": 1}),
    "no_slice_jitter": ("no per-slice intensity jitter", {"slice_jitter": 0.0}),
    "half_intensity": ("half-strength patch intensity augmentation (about the previous recipe's)",
                       {"intensity_aug": 0.5}),
    "patch_z16": ("16-slice patches (the 3D model pads them to 32, the 2D model takes 16 slices)", {"patch_z": 16}),
    "fp32": ("float32 training instead of bf16", {"amp": False}),
    "ema": ("exponential moving average of the weights (decay 0.99 per step) validated and kept", {"ema": 0.99}),
    "ema_seed1": ("exponential moving average of the weights, another seed", {"ema": 0.99, "seed": 1}),
    "precise_bn": ("BatchNorm statistics re-estimated over 100 batches before each validation", {"bn_batches": 100}),
    "batch2_xy96": ("2 patches of 32 x 96 x 96 per step (1.1x the voxels; 2 augmentation draws per 3D step)",
                    {"batch": 2, "patch_xy": 96}),
    "batch2_xy96_seed1": ("2 patches of 32 x 96 x 96 per step, another seed", {"batch": 2, "patch_xy": 96, "seed": 1}),
    "instance_norm": ("InstanceNorm instead of BatchNorm", {"norm": "instance"}),
    "instance_norm_seed1": ("InstanceNorm instead of BatchNorm, another seed", {"norm": "instance", "seed": 1}),
    "bn_freeze200": ("BatchNorm statistics frozen from iteration 200 (then used in training as in prediction)",
                     {"bn_freeze": 200}),
    "bn_freeze200_seed1": ("BatchNorm statistics frozen from iteration 200, another seed",
                           {"bn_freeze": 200, "seed": 1}),
    "equalize": ("histogram-equalised input (`--normalize equalize`) instead of the linear percentile window",
                 {"normalize": "equalize"}),
    "equalize_seed1": ("histogram-equalised input, another seed", {"normalize": "equalize", "seed": 1}),
    "batch2": ("2 patches per step (2x the voxels; BatchNorm statistics over 2 augmentation draws)", {"batch": 2}),
    "batch2_seed1": ("2 patches per step, another seed", {"batch": 2, "seed": 1}),
    "elastic": ("in-plane elastic deformation of half the patches (`--elastic 0.5`)", {"elastic": 0.5}),
    "elastic_seed1": ("in-plane elastic deformation of half the patches, another seed", {"elastic": 0.5, "seed": 1}),
    "strong_intensity": ("1.5x-strength patch intensity augmentation (gamma 0.4..2.05, scale +-0.45, shift +-0.225)",
                         {"intensity_aug": 1.5}),
    "strong_intensity_seed1": ("1.5x-strength patch intensity augmentation, another seed",
                               {"intensity_aug": 1.5, "seed": 1}),
    "gamma_field": ("a gamma varying smoothly across half the patches (`--gamma-field 0.5`)", {"gamma_field": 0.5}),
    "gamma_field_seed1": ("a gamma varying smoothly across half the patches, another seed",
                          {"gamma_field": 0.5, "seed": 1}),
    "wide_slice_jitter": ("twice the per-slice intensity jitter (gain 1 +- 0.2, offset +- 0.1; brightness drift)",
                          {"slice_jitter": 0.2}),
}
LAST = "recipe, last checkpoint instead of best validation IoU"


def gamma(volume: np.ndarray, g: float) -> np.ndarray:
    """A uint8 volume with gamma `g` applied to its grey levels."""
    return np.clip(np.rint(255 * (volume / 255.0) ** g), 0, 255).astype(np.uint8)


def with_training_histogram(model, cfg, train_image: np.ndarray) -> None:
    """Give a model trained before mitoseg kept the training volume's window and histogram with it the
    ones `predict --match-training` needs, taken from `train_image` (the volume it was trained on)."""
    if not getattr(model, "intensity", None):
        model.intensity = {"window": io.intensity_range(train_image, rule=cfg.normalize),
                           "reference": io.reference_levels(train_image)}


def central_slices(bench, slices: int) -> tuple[int, np.ndarray, np.ndarray]:
    """The first index, the image and the truth (Z, Y, X) of the test volume's central `slices` slices."""
    z0 = (bench.test_image.shape[0] - slices) // 2
    return z0, bench.test_image[z0:z0 + slices], bench.test_mask[z0:z0 + slices]


def validation_strip(bench, cfg) -> data.Volume:
    """The training volume's validation split (through the whole volume's window), the strip alone (`strip_alone`)."""
    return strip_alone(data.split(bench.train_image, bench.train_mask, cfg.val_fraction,
                                  io.intensity_range(bench.train_image, rule=cfg.normalize))[1])


def strip_alone(val: data.Volume) -> data.Volume:
    """A validation split without the columns of context `data.split` lends it: the strip alone, as these
    experiments measured it (before 2026-12-07; training validates it with `data.VAL_MARGIN` columns since)."""
    return data.Volume(val.image[:, :, val.margin:], val.mask, val.window)


def score(model, cfg, image: np.ndarray, truth: np.ndarray, window) -> float:
    """Foreground IoU at probability 0.5 of one model on one image (Z, Y, X)."""
    tile = predict.default_tile(cfg.dims, image.shape, cfg.tile)
    probs = predict.predict_array(model, image, cfg.dims, tile, cfg.overlap, window, amp=cfg.amp)
    return metrics.scores(metrics.confusion(probs >= 0.5, truth))["jaccard"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    p.add_argument("--iterations", type=int, default=200, help="training iterations per model")
    p.add_argument("--slices", type=int, default=64, help="central test slices to score")
    p.add_argument("--runs", default=None, help="folder for the run folders (default: beside --out, in runs/)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="rows to run, in order (default: all); finished run folders are reused")
    p.add_argument("--dims", type=int, nargs="+", choices=(2, 3), default=[2, 3], help="models to train")
    a = p.parse_args(argv)
    out = Path(a.out)
    runs = Path(a.runs) if a.runs else out.parent / "runs"
    bench = compare.load_benchmark("lucchi")
    z0, image, truth = central_slices(bench, a.slices)
    dark = gamma(image, 1.4)
    whole_dark = gamma(bench.test_image, 1.4)
    windows = {rule: (io.intensity_range(bench.test_image, rule=rule),  # of the whole (changed) test volume
                      io.intensity_range(whole_dark, rule=rule)) for rule in io.RULES}
    del whole_dark
    result = header(__file__, argv, bench.description, test_slices=[z0, z0 + a.slices], iterations=a.iterations)
    rows = []
    for key in a.variants:
        name, changes = VARIANTS[key]
        for dims in a.dims:
            cfg = config.quick(dims, epochs=max(1, a.iterations // PER_EPOCH), minutes=None,
                               iterations_per_epoch=PER_EPOCH, **changes)
            folder = runs / f"{key}_{dims}D"
            if (folder / "summary.json").exists() and config.Config.load(folder / "config.json") == cfg:
                summary = train.summarize(folder)  # finished by an earlier, interrupted call: reused
            else:
                summary = train.train(cfg, bench.train_image, bench.train_mask, folder, overwrite=True,
                                      progress=False)
            checkpoints = [(name, "best.pt")] + ([(LAST, "last.pt")] if name == "recipe" else [])
            for row_name, ckpt in checkpoints:
                model, cfg = train.load_model(folder / ckpt)
                row = {"variant": row_name, "dims": dims, "changes": changes, "iterations": summary["iterations"],
                       "best_val_iou": summary["best_val_iou"],
                       "test_iou": score(model, cfg, image, truth, windows[cfg.normalize][0]),
                       "test_iou_gamma_1.4": score(model, cfg, dark, truth, windows[cfg.normalize][1])}
                rows.append(row)
                print(f"{row_name} {dims}D: test IoU {row['test_iou']:.4f}, gamma 1.4 {row['test_iou_gamma_1.4']:.4f}",
                      flush=True)
                # after every row: an interrupted call keeps what it measured
                save(out, dict(result, rows=rows), markdown(dict(result, rows=rows)))
    print(markdown(dict(result, rows=rows)))


def markdown(result: dict) -> str:
    """The ablation table: one row per change, test IoU per model and the difference to the recipe."""
    by = {(r["variant"], r["dims"]): r for r in result["rows"]}
    names = list(dict.fromkeys(r["variant"] for r in result["rows"]))
    base = {d: by.get(("recipe", d)) for d in (2, 3)}
    m = result["machine"]
    lines = [f"# Training recipe ablation on CA1 ({result['iterations']} iterations per model)", "",
             f"Data: {result['data']}; test slices {result['test_slices'][0]}..{result['test_slices'][1] - 1} "
             "of the test volume, raw prediction at 0.5 (no TTA, no post-processing). "
             f"Machine: {m['cpu']} ({m['cpu_count']} cores). Date: {result['date']}. "
             f"Command: `{result['command']}`", "",
             "| change | 2D test IoU | 3D test IoU | 2D, gamma 1.4 | 3D, gamma 1.4 | 2D best val IoU "
             "| 3D best val IoU |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        cells = []
        for key in ("test_iou", "test_iou_gamma_1.4", "best_val_iou"):
            for d in (2, 3):
                if (name, d) not in by:
                    cells.append("—")
                    continue
                v = by[(name, d)][key]
                delta = ("" if name == "recipe" or key == "best_val_iou" or base[d] is None
                         else f" ({v - base[d][key]:+.3f})")
                cells.append(f"{v:.3f}{delta}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
