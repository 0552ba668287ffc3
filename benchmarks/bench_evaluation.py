"""The CPU work of `mitoseg compare` after each training, which a GPU machine waits on, step by step.

On the real CA1 volumes (`../shared/data/lucchi-derived`): choosing the post-processing on the
validation split (`postprocess.choose`: the Z smoothing, then thresholds, minimum sizes and hole filling),
applying it to the whole test volume (`postprocess.apply`), the scores with object F1 (`compare._scores`),
the instance labels, and their measurements and morphology (`instances`), and where the errors lie
(`metrics.error_places`). The probabilities are a stand-in made from the truth (Gaussian-blurred, sigma 2
voxels, plus noise of sd 0.15, stored as uint8 as `predict` stores them): these steps' time depends on the
masks' objects, not on how the probabilities were made. With --base REV, `postprocess.choose`,
`postprocess.apply`, `instances.label`, `metrics.match_instances` and `metrics.error_places` of that git
revision run beside today's, on the same arrays, and are checked to give the same result (against a revision
before the Z smoothing, today's choice searches none: `z_sigmas=(0.0,)`).

With --run RUN, the whole of it instead, on real probabilities: `compare.evaluate_probabilities` (choice,
scores, labels, error places) on those a `compare` model folder saved (val_probs.zarr, test_probs.zarr,
test_probs_tta.zarr, copied to a temporary folder), in a fresh process; with --base REV also that revision's,
checked out in a temporary git worktree and run the same way, one after the other, checked to return the same
scores.

Run from the repository root:
    .venv/bin/python benchmarks/bench_evaluation.py --base d1df43a   # ~2.5 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_evaluation.py --small          # a 32 x 256 x 256 crop, seconds
    .venv/bin/python benchmarks/bench_evaluation.py --run runs/ca1-cpu-amx/model_2D --base d1df43a  # ~2 min
Writes evaluation.json (evaluation_small.json; evaluation_run_<folder name>.json with --run) into --out (default
results/bench/).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np
from scipy import ndimage

PROBABILITIES = ("val_probs.zarr", "test_probs.zarr", "test_probs_tta.zarr")


def stand_in(truth: np.ndarray, seed: int) -> np.ndarray:
    """uint8 'probabilities' (0..255) with soft edges and speckle, from a {0, 1} truth (Z, Y, X)."""
    rng = np.random.default_rng(seed)
    probs = ndimage.gaussian_filter(truth.astype(np.float32), 2.0) + rng.normal(0, 0.15, truth.shape).astype(np.float32)
    return np.rint(np.clip(probs, 0, 1) * 255).astype(np.uint8)


def main() -> None:
    from mitoseg import compare, instances, metrics, postprocess
    from mitoseg.data import split

    p = common.parser(__doc__)
    p.add_argument("--base", metavar="REV", help="also time choose, apply and label of this git revision, side by side")
    p.add_argument("--run", type=Path, help="time the whole evaluation of this compare model folder's probabilities")
    p.add_argument("--evaluate-once", type=Path, help=argparse.SUPPRESS)  # the child of --run
    args = p.parse_args()
    if args.evaluate_once:
        return evaluate_once(args.evaluate_once)
    if args.run and args.small:
        p.error("--small crops the stand-in volumes; --run times a whole compare folder as it is: give one")
    if args.run:
        return whole_run(args.run, args.base, args.out)
    info = common.machine_info("cpu")
    common.print_header("evaluation steps of mitoseg compare (CPU)", info,
                        ["probabilities: a stand-in from the truth (blurred, noisy); the steps' time depends on "
                         "the masks' objects"])
    bench = compare.load_benchmark("lucchi")
    train_image, train_mask = bench.train_image, bench.train_mask
    test_mask = bench.test_mask > 0
    if args.small:
        train_image, train_mask, test_mask = (a[:32, :256, :256] for a in (train_image, train_mask, test_mask))
    _, val = split(train_image, train_mask, 0.15)
    val_probs, test_probs = stand_in(val.mask > 0, args.seed), stand_in(test_mask, args.seed + 1)
    base = common.module_at(args.base, "postprocess") if args.base else None
    base_instances = common.module_at(args.base, "instances") if args.base else None
    base_metrics = common.module_at(args.base, "metrics") if args.base else None

    rows = []

    def step(name: str, fn, voxels: int, base_fn=None):
        seconds, result = common.timed(fn)
        row = {"step": name, "voxels": voxels, "seconds": seconds}
        if base_fn is not None:
            row["base_seconds"], base_result = common.timed(base_fn)
            row["speedup_over_base"] = row["base_seconds"] / seconds
            row["same_result_as_base"] = _same(result, base_result)
        rows.append(row)
        print(f"   {name}: {seconds:.2f} s" + (f" (base {row['base_seconds']:.2f} s)" if base_fn else ""), flush=True)
        return result

    smoothing = base is None or hasattr(base, "Z_SIGMAS")  # revisions before 2026-12-05 search no Z smoothing
    same_search = {} if smoothing else {"z_sigmas": (0.0,)}
    chosen, _ = step("choose post-processing (validation split)",
                     lambda: postprocess.choose(val_probs, val.mask, **same_search),
                     val_probs.size, base and (lambda: base.choose(val_probs, val.mask)))
    final = step("apply it (test volume)", lambda: postprocess.apply(test_probs, chosen), test_probs.size,
                 base and (lambda: base.apply(test_probs, base.PostProcessing(
                     **(chosen.as_dict() if smoothing else _plain(chosen.as_dict()))))))
    step("scores and object F1", lambda: compare._scores(final, test_mask, chosen.min_size), final.size)
    labels = step("instance labels", lambda: instances.label(final, 26, min_size=chosen.min_size), final.size,
                  base and (lambda: base_instances.label(final, 26, min_size=chosen.min_size)))
    truth = instances.label(test_mask, 26, min_size=chosen.min_size)
    step("object matching (metrics.match_instances, in the scores)", lambda: metrics.match_instances(labels, truth),
         final.size, base and (lambda: base_metrics.match_instances(labels, truth)))
    step("where the errors are (metrics.error_places)",
         lambda: metrics.error_places(final, test_mask, bench.voxel_size), final.size,
         base and (lambda: base_metrics.error_places(final, test_mask, bench.voxel_size)))
    step("measure and morphology",
         lambda: instances.morphology(labels, instances.measure(labels, bench.voxel_size), bench.voxel_size),
         labels.size)

    cols = [("step", "step", ""), ("voxels", "voxels", ",d"), ("seconds", "s", ".2f")]
    if args.base:
        cols += [("base_seconds", f"s at {args.base}", ".2f"), ("speedup_over_base", "x", ".2f"),
                 ("same_result_as_base", "same result", "")]
    print()
    print(common.table(rows, cols))
    print(f"   chosen: {chosen}")
    path = common.save_json(args.out, common.output_name("evaluation", args.small),
                            {"benchmark": "evaluation", "machine": info, "base": args.base,
                             "chosen": chosen.as_dict(), "rows": rows})
    print(f"\n   saved {path}")


def evaluate_once(run: Path) -> None:
    """In this process: evaluate a copy of `run`'s probabilities; print seconds and scores as JSON."""
    from mitoseg import compare

    bench = compare.load_benchmark("lucchi")
    with tempfile.TemporaryDirectory() as tmp:
        for name in PROBABILITIES:
            shutil.copytree(run / name, Path(tmp) / name)
        t0 = time.perf_counter()
        row = compare.evaluate_probabilities(Path(tmp), bench, True, 0.15)
        seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "row": row}, default=str))


def whole_run(run: Path, base: str | None, out: Path) -> None:
    """Time `evaluate_once` with today's mitoseg and, given `base`, with that revision's; save and print."""
    info = common.machine_info("cpu")
    common.print_header("the whole evaluation of a saved compare model (compare.evaluate_probabilities, CPU)", info,
                        [f"probabilities: those saved in {run.name} (real, TTA included)"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = [("today", Path(__file__).resolve().parent.parent / "src")]
        if base:
            subprocess.run(["git", "worktree", "add", "--detach", tmp + "/base", base], check=True,
                           capture_output=True, cwd=Path(__file__).resolve().parent)
            sources.append((base, Path(tmp) / "base" / "src"))
        try:
            for name, src in sources:
                env = {**os.environ, "PYTHONPATH": str(src)}
                done = subprocess.run([sys.executable, __file__, "--evaluate-once", str(run)], env=env, check=True,
                                      capture_output=True, text=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append({"code": name, "seconds": result["seconds"], "jaccard": result["row"]["jaccard"],
                             "row": result["row"]})
                print(f"   {name}: {result['seconds']:.1f} s, test IoU {result['row']['jaccard']:.4f}", flush=True)
        finally:
            if base:
                subprocess.run(["git", "worktree", "remove", "--force", tmp + "/base"], capture_output=True,
                               cwd=Path(__file__).resolve().parent)
    same = all(r["row"] == rows[0]["row"] for r in rows)
    if base:
        print(f"   {rows[1]['seconds'] / rows[0]['seconds']:.2f}x faster than {base}; same scores: {same}")
    record = {"benchmark": "evaluation_run", "machine": info, "run": run.name, "base": base, "same_scores": same,
              "rows": rows}
    path = common.save_json(out, f"evaluation_run_{run.name}", record)
    print(f"\n   saved {path}")


def _plain(setting: dict) -> dict:
    """A post-processing setting without the Z smoothing, which revisions before 2026-12-05 lack."""
    return {k: v for k, v in setting.items() if k != "z_sigma"}


def _same(a, b) -> bool:
    """Whether two results of a step are equal: masks voxel for voxel, (setting, candidates) pairs as data
    (the candidates without Z smoothing, by their settings)."""
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    if isinstance(a, dict):
        return a == b

    def scored(rows: list[dict]) -> dict:
        return {tuple((k, v) for k, v in _plain(r).items() if k != "jaccard"): r["jaccard"]
                for r in rows if not r.get("z_sigma")}

    return _plain(a[0].as_dict()) == _plain(b[0].as_dict()) and scored(a[1]) == scored(b[1])


if __name__ == "__main__":
    main()
