"""One training recipe against another on CA1: the `cpu` preset's 2D (or 3D) model with Config changes.

    python experiments/recipe.py --out results/ca1-ablation/full-resolution/full_resolution.json \
        --variant "full resolution 16" '{"full_resolution": 16}' --epochs 15 \
        --baseline "plain 2D, seed 0" runs/context/context0_seed0

Each `--variant NAME CHANGES` (CHANGES: Config fields as JSON) is trained into `--runs`/NAME-slug_seedS and
evaluated exactly as `mitoseg compare --preset cpu` does (`compare.run_model`: raw, + TTA, + the post-processing
chosen on the validation split), one after the other on the same machine. `--epochs N` trains N epochs of
250 iterations each (equal iterations; no time limit) instead of the preset's 30 minutes (equal wall time).
A `--baseline NAME FOLDER` row reads a run folder this script (or context.py) evaluated earlier. A run
folder that already holds its evaluation (`row.json`) is kept. One seed each: a difference under about
0.01-0.02 is within what another seed changes (results/ca1-ablation/ablation600.md).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from record import header, provenance, save  # experiments/ is the script's folder, so on sys.path

from mitoseg import compare, train

VARIANTS = (("raw", "raw"), ("tta", "+ TTA"), ("tta_post", "+ TTA + post-processing"))
CURVE_KEYS = ("epoch", "iterations", "elapsed_seconds", "val_iou", "monitor_iou")


def run_variant(changes: dict, folder: Path, dims: int, seed: int, epochs: int | None) -> dict:
    """Train and evaluate the `cpu` preset's model with `changes` into `folder` (kept when it holds row.json);
    returns its row with its training curve (`curve`: one entry per epoch)."""
    bench = compare.load_benchmark("lucchi", None)
    if not (folder / "row.json").exists():
        cfg = compare.configs("cpu", epochs, None, bench.voxel_size, seed, changes,
                              slices=bench.train_image.shape[0])[dims - 2]
        row = compare.run_model(cfg, bench, folder, progress=False, tta=True, monitor=True)
        (folder / "row.json").write_text(json.dumps(row, indent=2, default=str) + "\n")
    return read_row(folder)


def read_row(folder: Path) -> dict:
    """The evaluated row of a run folder with its training curve."""
    row = json.loads((folder / "row.json").read_text())
    row["curve"] = [{key: r[key] for key in CURVE_KEYS} for r in train.read_log(folder)]
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    p.add_argument("--variant", nargs=2, action="append", default=[], metavar=("NAME", "CHANGES"),
                   help="a row: its name and its Config changes as JSON")
    p.add_argument("--baseline", nargs=2, action="append", default=[], metavar=("NAME", "FOLDER"),
                   help="a row from a run folder evaluated earlier")
    p.add_argument("--dims", type=int, choices=(2, 3), default=2)
    p.add_argument("--epochs", type=int, help="epochs of 250 iterations (default: the preset's 30 minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default="runs/recipe", help="folder for the run folders")
    a = p.parse_args(argv)

    bench = compare.load_benchmark("lucchi", None)
    record = header(__file__, argv, bench.description, seed=a.seed, dims=a.dims, epochs=a.epochs, rows={})
    for name, folder in a.baseline:
        record["rows"][name] = read_row(Path(folder))
    for name, changes in a.variant:
        folder = Path(a.runs) / f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}_seed{a.seed}"
        record["rows"][name] = {"changes": json.loads(changes),
                                **run_variant(json.loads(changes), folder, a.dims, a.seed, a.epochs)}
    save(a.out, record, table(record, f"{a.dims}D recipe variants on CA1"))
    print(table(record, f"{a.dims}D recipe variants on CA1"))


def table(record: dict, title: str) -> str:
    """The rows side by side: test IoU raw / + TTA / + post-processing, the other scores, the training, and the
    validation and test-centre IoU after every epoch."""
    rows = record["rows"]
    budget = f"{record['epochs']} epochs of 250 iterations" if record.get("epochs") else "30 training minutes"
    lines = [f"# {title}", "",
             f"`cpu` preset, {budget} for each new row, on the same machine, seed {record['seed']}, evaluated as "
             "`mitoseg compare` does (post-processing chosen on the validation split). " + provenance(record), "",
             "| | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for key, name in VARIANTS:
        lines.append(f"| test foreground IoU, {name} | "
                     + " | ".join(f"{r['variants'][key]['jaccard']:.4f}" for r in rows.values()) + " |")
    for key, name, fmt in (("f1", "test F1, reported", "{:.4f}"),
                           ("object_f1_iou50", "test object F1 (IoU >= 0.5), reported", "{:.4f}"),
                           ("validation_jaccard", "validation IoU, chosen post-processing", "{:.4f}"),
                           ("best_val_iou", "best validation IoU in training (0.5)", "{:.4f}"),
                           ("iterations", "training iterations", "{:,}"),
                           ("seconds_per_iteration", "seconds per iteration", "{:.3f}"),
                           ("inference_seconds", "test volume prediction, seconds (no TTA)", "{:.0f}")):
        lines.append(f"| {name} | " + " | ".join(fmt.format(r[key]) for r in rows.values()) + " |")
    for name, count in (("test wrong voxels (FP + FN), reported", lambda e: e["fp"] + e["fn"]),
                        ("of them in whole objects (missed or false)", lambda e: e["fp_whole"] + e["fn_whole"]),
                        ("of them next to the labelled surface (within 1 voxel)",
                         lambda e: e["fp_near_1"] + e["fn_near_1"]),
                        ("of them over 1, at most 2 voxels from it",
                         lambda e: e["fp_near_2"] + e["fn_near_2"] - e["fp_near_1"] - e["fn_near_1"])):
        lines.append(f"| {name} | " + " | ".join(f"{count(r['errors']):,}" for r in rows.values()) + " |")
    lines.append("| post-processing chosen | " + " | ".join(
        f"threshold {r['postprocessing']['threshold']}, Z blur {r['postprocessing']['z_sigma']}, "
        f"min size {r['postprocessing']['min_size']}" for r in rows.values()) + " |")
    lines += ["", f"After each epoch (250 iterations): validation IoU / IoU of the test volume's central "
              f"{compare.MONITOR_SLICES} slices, both raw at 0.5 (the training log's `val_iou`, `monitor_iou`).", "",
              "| epoch | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    curves = [r["curve"] for r in rows.values()]
    for i in range(max(len(c) for c in curves)):
        lines.append(f"| {i + 1} | " + " | ".join(
            f"{c[i]['val_iou']:.3f} / {c[i]['monitor_iou']:.3f}" if i < len(c) else "" for c in curves) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
