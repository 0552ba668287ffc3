"""Evaluate trained CA1 runs as `mitoseg compare` does, and say where their errors lie.

    python experiments/errors.py RUN [RUN ...] --out results/ca1-errors/errors.json [--no-tta] [--reuse]

Each run folder (from `mitoseg train` or `compare`) is evaluated by `compare.evaluate_model` on the CA1
test volume: post-processing chosen on the validation split, the test volume predicted raw, with TTA
and post-processed, and the final mask's wrong voxels split by `metrics.error_places` into whole
objects and distances to the true surface. Then, as a diagnosis only (nothing is chosen by it), the
test IoU of the chosen post-processing at each threshold of `postprocess.THRESHOLDS` instead of the chosen
one. `--reuse`: take a run's evaluation from the JSON at `--out` when it is there (only the diagnosis
is computed again, from the test probabilities the evaluation saved). Writes the JSON and a Markdown
table beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from record import header, save  # experiments/ is the script's folder, so on sys.path

from mitoseg import compare, io, metrics, postprocess


def threshold_sweep(folder: Path, row: dict, truth) -> dict[str, float]:
    """Test IoU of the row's post-processing at every candidate threshold (a diagnosis on the test volume)."""
    name = "test_probs_tta.zarr" if "tta" in row["variants"] else "test_probs.zarr"
    probs = io.open_volume(folder / name)[:]
    chosen = postprocess.PostProcessing(**row["postprocessing"])
    return {f"{t:g}": metrics.scores(metrics.confusion(
        postprocess.apply(probs, dataclasses.replace(chosen, threshold=t)), truth))["jaccard"]
        for t in postprocess.THRESHOLDS}


def sweep_markdown(models: dict) -> str:
    thresholds = list(next(iter(models.values()))["threshold_sweep"])
    lines = ["| model | threshold chosen on validation | " + " | ".join(f"test IoU at {t}" for t in thresholds) + " |",
             "|---|---|" + "---|" * len(thresholds)]
    for name, row in models.items():
        lines.append(f"| {name} | {row['postprocessing']['threshold']:g} | "
                     + " | ".join(f"{v:.4f}" for v in row["threshold_sweep"].values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--no-tta", action="store_true")
    p.add_argument("--reuse", action="store_true", help="take evaluations already in --out")
    a = p.parse_args(argv)
    bench = compare.load_benchmark("lucchi")
    earlier = json.loads(Path(a.out).read_text())["models"] if a.reuse and Path(a.out).exists() else {}
    record = header(__file__, argv, bench.description, models={})
    for run in a.runs:
        name = Path(run).name
        print(f"--- {name}", flush=True)
        row = earlier.get(name) or compare.evaluate_model(Path(run), bench, progress=True, tta=not a.no_tta)
        row["threshold_sweep"] = threshold_sweep(Path(run), row, bench.test_mask)
        record["models"][name] = row
        save(a.out, record, "\n".join([compare.variants_markdown(record), compare.errors_markdown(record),
                                       sweep_markdown(record["models"])]))
    print(Path(a.out).with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
