"""A one-minute check of the GPU path before the study, on a synthetic volume (no data needed).

Trains the 2D and the 3D model with the GPU preset ("full": batches of 64 x 256 x 256 and 2 x 32 x 256 x
256) for a few short epochs, validating each epoch on a split and a monitor of the study's sizes
(25 x 768 x 1024 and 32 x 768 x 1024 voxels), then predicts and labels the volume. Prints, per model,
seconds per training iteration, seconds of validation per epoch and prediction voxels per second:
from these the study's training minutes are sized to fit one device call. Fails on any error.

    python benchmarks/gpu/smoke.py [--device cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from mitoseg import config, data, instances, io, train
from mitoseg.predict import default_tile, predict_volume


def synthetic(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blobs (about 10 % of the voxels) in noise: image uint8 and mask uint8 {0, 1}, both `shape`."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), (2, 8, 8))
    mask = (field > np.quantile(field[::4, ::16, ::16], 0.9)).astype(np.uint8)
    image = 100 + 60 * mask + rng.normal(0, 25, shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None, help="folder for smoke.json (default: a temporary one)")
    ap.add_argument("--iterations", type=int, default=10, help="training iterations per epoch")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="mitoseg-smoke-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    image, mask = synthetic((64, 768, 1024))
    monitor = data.Volume(image[:32], mask[:32], io.intensity_range(image))
    print(f"synthetic volume {image.shape} in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = {}
    for dims in (2, 3):
        cfg = config.gpu(dims, epochs=3, iterations_per_epoch=args.iterations, warmup_iterations=5,
                         val_fraction=0.4, device=args.device)
        t0 = time.perf_counter()
        train.train(cfg, image, mask, out / f"model_{dims}D", overwrite=True, progress=False, monitor=monitor)
        wall = time.perf_counter() - t0
        log = train.read_log(out / f"model_{dims}D")
        model, cfg = train.load_model(out / f"model_{dims}D", args.device)
        tile = default_tile(dims, image.shape, cfg.tile)
        t0 = time.perf_counter()
        predict_volume(model, image, out / f"probs_{dims}D.zarr", dims, tile, cfg.overlap, amp=cfg.amp,
                       overwrite=True, progress=False)
        predict_s = time.perf_counter() - t0
        probs = io.open_volume(out / f"probs_{dims}D.zarr")[:]
        t0 = time.perf_counter()
        n = int(instances.label(probs >= 128, 26).max())
        label_s = time.perf_counter() - t0
        train_s = sum(r["epoch_seconds"] for r in log)
        rows[f"{dims}D"] = {
            "workers": train.loader_workers(cfg, torch.device(args.device)),
            "seconds_per_iteration_first_epoch": log[0]["seconds_per_iteration"],
            "seconds_per_iteration_later": float(np.mean([r["seconds_per_iteration"] for r in log[1:]])),
            "validation_seconds_per_epoch": (wall - train_s) / len(log), "train_call_seconds": wall,
            "predict_seconds": predict_s, "predict_voxels_per_second": image.size / predict_s,
            "label_seconds": label_s, "objects": n, "val_iou_last": log[-1]["val_iou"],
            "peak_memory_mib": log[-1]["peak_memory_mib"]}
        print(f"{dims}D: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in rows[f"{dims}D"].items()), flush=True)
    (out / "smoke.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
