"""Does the 2D model gain from its neighbouring slices (2.5D input, `--context-slices`) on CA1?

    python experiments/context.py --out results/ca1-ablation/context/context.json --contexts 0 1

For each K of `--contexts`, trains the `cpu` preset's 2D model with K neighbouring slices on each side as
input channels (0: the plain 2D model) and evaluates it exactly as `mitoseg compare --preset cpu` does
(`compare.run_model`: raw, + TTA, + the post-processing chosen on the validation split), one after the
other on the same machine, at equal wall time (the preset's 30 minutes). A run folder that already holds
its evaluation (`row.json`) is kept. One seed each: a difference under about 0.01-0.02 is within what
another seed changes (results/ca1-ablation/ablation600.md: 0.04 at 600 iterations).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from record import header, provenance, save  # experiments/ is the script's folder, so on sys.path

from mitoseg import compare, train

VARIANTS = (("raw", "raw"), ("tta", "+ TTA"), ("tta_post", "+ TTA + post-processing"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    p.add_argument("--contexts", type=int, nargs="+", default=[0, 1], help="neighbouring slices on each side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default="runs/context", help="folder for the run folders")
    a = p.parse_args(argv)

    bench = compare.load_benchmark("lucchi", None)
    record = header(__file__, argv, bench.description, seed=a.seed, rows={}, curves={})
    for k in a.contexts:
        cfg = compare.configs("cpu", None, None, bench.voxel_size, a.seed, {"context_slices": k},
                              slices=bench.train_image.shape[0])[0]
        folder = Path(a.runs) / f"context{k}_seed{a.seed}"
        if not (folder / "row.json").exists():
            row = compare.run_model(cfg, bench, folder, progress=False, tta=True, monitor=True)
            (folder / "row.json").write_text(json.dumps(row, indent=2, default=str) + "\n")
        record["rows"][str(k)] = json.loads((folder / "row.json").read_text())
        record["curves"][str(k)] = [{key: r[key] for key in ("epoch", "elapsed_seconds", "val_iou", "monitor_iou")}
                                    for r in train.read_log(folder)]
    save(a.out, record, table(record))
    print(table(record))


def table(record: dict) -> str:
    rows = record["rows"]
    lines = ["# The 2D model with neighbouring slices as input (2.5D) on CA1", "",
             f"`cpu` preset, 30 training minutes each on the same machine, seed {record['seed']}, evaluated as "
             "`mitoseg compare` does (post-processing chosen on the validation split). " + provenance(record), "",
             "| neighbouring slices on each side | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for key, name in VARIANTS:
        lines.append(f"| test foreground IoU, {name} | "
                     + " | ".join(f"{r['variants'][key]['jaccard']:.4f}" for r in rows.values()) + " |")
    for key, name, fmt in (("f1", "test F1, reported", "{:.4f}"),
                           ("object_f1_iou50", "test object F1 (IoU >= 0.5), reported", "{:.4f}"),
                           ("validation_jaccard", "validation IoU, chosen post-processing", "{:.4f}"),
                           ("best_val_iou", "best validation IoU in training (0.5)", "{:.4f}"),
                           ("iterations", "iterations in 30 minutes", "{:,}"),
                           ("seconds_per_iteration", "seconds per iteration", "{:.3f}"),
                           ("inference_seconds", "test volume prediction, seconds (no TTA)", "{:.0f}")):
        lines.append(f"| {name} | " + " | ".join(fmt.format(r[key]) for r in rows.values()) + " |")
    lines.append("| post-processing chosen | " + " | ".join(
        f"threshold {r['postprocessing']['threshold']}, Z blur {r['postprocessing']['z_sigma']}, "
        f"min size {r['postprocessing']['min_size']}" for r in rows.values()) + " |")
    lines += ["", f"After each epoch (250 iterations): validation IoU / IoU of the test volume's central "
              f"{compare.MONITOR_SLICES} slices, both raw at 0.5 (the training log's `val_iou`, `monitor_iou`).", "",
              "| epoch | " + " | ".join(f"{k} on each side" for k in rows) + " |", "|---|" + "---|" * len(rows)]
    curves = record["curves"]
    for i in range(max(len(c) for c in curves.values())):
        lines.append(f"| {i + 1} | " + " | ".join(
            f"{c[i]['val_iou']:.3f} / {c[i]['monitor_iou']:.3f}" if i < len(c) else "" for c in curves.values()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
