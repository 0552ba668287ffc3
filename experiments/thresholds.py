"""Test IoU of trained checkpoints at several probability thresholds, and their highest probability.

    python experiments/thresholds.py CHECKPOINT [CHECKPOINT ...] [--slices 66 98]

Each checkpoint (a best.pt / last.pt or a run folder) predicts slices [a, b) of the CA1 test volume,
normalised with the whole test volume's window, and is scored at 0.2, 0.3, 0.4 and 0.5: a model whose
probabilities stay below 0.5 scores 0 at 0.5 even when it segments well at a lower threshold.
"""

from __future__ import annotations

import argparse

from mitoseg import compare, io, metrics, predict, train

THRESHOLDS = (0.2, 0.3, 0.4, 0.5)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--slices", type=int, nargs=2, default=(66, 98), metavar=("FIRST", "END"))
    a = p.parse_args(argv)
    bench = compare.load_benchmark("lucchi")
    z0, z1 = a.slices
    image, truth = bench.test_image[z0:z1], bench.test_mask[z0:z1]
    window = io.intensity_range(bench.test_image)
    print(f"test slices {z0}..{z1 - 1}; IoU at thresholds {THRESHOLDS}")
    for ckpt in a.checkpoints:
        model, cfg = train.load_model(ckpt)
        tile = predict.default_tile(cfg.dims, image.shape, cfg.tile)
        probs = predict.predict_array(model, image, cfg.dims, tile, cfg.overlap, window, amp=cfg.amp)
        ious = [metrics.scores(metrics.confusion(probs >= t, truth))["jaccard"] for t in THRESHOLDS]
        print(f"{ckpt}: max probability {probs.max():.3f}; IoU " + " / ".join(f"{v:.3f}" for v in ious))


if __name__ == "__main__":
    main()
