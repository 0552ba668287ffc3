"""The 2D and the 3D model together: does the mean of their probabilities beat either, and hold under gamma?

    python experiments/ensemble.py RUN_2D RUN_3D [RUN_2D RUN_3D ...] --out runs/ensemble/ensemble.json
        [--slices 64] [--changes "as published" gamma drifting]

For each pair of run folders (a 2D and a 3D model trained on CA1), the validation strip (the training
volume's last 15 % in X, through the training volume's window, as training validates) and the central
`--slices` test slices under the grey-level changes of `experiments/contrast.py` whose names hold one of
`--changes` (each changed volume through its own window, the run's rule) are predicted by both models
(no TTA); scored are each model alone and the voxel-wise mean of the two probabilities, foreground IoU at
probability 0.5. The validation columns say whether a user could have seen the gain without the test
volume. Writes the JSON and a Markdown table beside it; rows are written as they come.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from ablation import central_slices, validation_strip  # experiments/ is the script's folder, so on sys.path
from contrast import changes
from record import header, provenance, save

from mitoseg import compare, io, metrics, predict, train

MEMBERS = ("2D", "3D", "mean")


def ious(probs: list[np.ndarray], truth: np.ndarray) -> dict[str, float]:
    """Foreground IoU at probability 0.5 of each model's probabilities (Z, Y, X) and of their mean (`MEMBERS`)."""
    return dict(zip(MEMBERS, [metrics.jaccard(x >= 0.5, truth) for x in (*probs, (probs[0] + probs[1]) / 2)],
                    strict=True))


def both(models: list, image: np.ndarray, window_of) -> list[np.ndarray]:
    """Each (model, config)'s float32 probabilities (Z, Y, X) of `image`, through `window_of(config)`."""
    out = []
    for model, cfg in models:
        tile = predict.default_tile(cfg.dims, image.shape, cfg.tile)
        out.append(predict.predict_array(model, image, cfg.dims, tile, cfg.overlap, window_of(cfg), amp=cfg.amp))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="pairs of trained run folders: a 2D model, then a 3D model")
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    p.add_argument("--slices", type=int, default=64, help="central test slices to score")
    p.add_argument("--changes", nargs="+", default=["as published", "gamma", "drifting"],
                   help="score the changes of experiments/contrast.py whose name holds one of these")
    a = p.parse_args(argv)
    if len(a.runs) % 2:
        p.error("give the runs in pairs: a 2D model, then a 3D model")
    bench = compare.load_benchmark("lucchi")
    z0, image, truth = central_slices(bench, a.slices)
    meta = header(__file__, argv, bench.description, slices=[z0, z0 + a.slices])
    rows = []
    for pair in zip(a.runs[::2], a.runs[1::2], strict=True):
        models = [train.load_model(run) for run in pair]
        if [cfg.dims for _, cfg in models] != [2, 3]:
            p.error(f"{pair}: give a 2D model, then a 3D model")
        folders = " + ".join(Path(run).name for run in pair)
        val = validation_strip(bench, models[0][1])
        probs = both(models, val.image, lambda cfg: io.intensity_range(bench.train_image, rule=cfg.normalize))
        validation = ious(probs, val.mask)
        for name, change in changes().items():
            if not any(part in name for part in a.changes):
                continue
            vol = change(image)
            probs = both(models, vol, lambda cfg, vol=vol: io.intensity_range(vol, rule=cfg.normalize))
            test = ious(probs, truth)
            rows.append({"folders": folders, "change": name, "validation": validation, "test": test})
            print(json.dumps(rows[-1]), flush=True)
            save(a.out, {**meta, "rows": rows}, table(rows, meta))  # a stopped run keeps its rows
    print(table(rows, meta))


def table(rows: list[dict], meta: dict) -> str:
    """The rows as Markdown: one line per pair and change; in brackets the change against the same pair's
    test IoU as published."""
    z0, z1 = meta["slices"]
    published = {r["folders"]: r["test"] for r in rows if r["change"].startswith("as published")}
    lines = [f"Foreground IoU at probability 0.5, no TTA; test: central {z1 - z0} slices ({z0}..{z1 - 1}) under "
             "each change, each changed volume through its own window; validation: the training volume's "
             "validation split; mean: the voxel-wise mean of the 2D and the 3D model's probabilities. "
             + provenance(meta), "",
             "| models | change | validation 2D / 3D / mean | test 2D | test 3D | test mean |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        base = published.get(r["folders"])
        cells = []
        for m in MEMBERS:
            d = f" ({r['test'][m] - base[m]:+.3f})" if base and base is not r["test"] else ""
            cells.append(f"{r['test'][m]:.3f}{d}")
        v = " / ".join(f"{r['validation'][m]:.3f}" for m in MEMBERS)
        lines.append(f"| {r['folders']} | {r['change']} | {v} | {' | '.join(cells)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
