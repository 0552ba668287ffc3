"""The CPU work of `mitoseg compare` after each training, which a GPU machine waits on, step by step.

On the real CA1 volumes (`../shared/data/lucchi-derived`): choosing the post-processing on the
validation split (`postprocess.choose`: the Z smoothing, then thresholds, minimum sizes and hole filling),
applying it to the whole test volume
(`postprocess.apply`), the scores with object F1 (`compare._scores`), the instance labels, and their
measurements and morphology (`instances`). The probabilities are a stand-in made from the truth
(Gaussian-blurred, sigma 2 voxels, plus noise of sd 0.15, stored as uint8 as `predict` stores them):
these steps' time depends on the masks' objects, not on how the probabilities were made. With --base
REV, `postprocess.choose`, `postprocess.apply` and `instances.label` of that git revision run beside
today's, on the same arrays, and are checked to give the same result (today's choice then searches no
Z smoothing, which older revisions lack: `z_sigmas=(0.0,)`).

Run from the repository root:
    .venv/bin/python benchmarks/bench_evaluation.py --base 3223dbc   # ~1.5 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_evaluation.py --small          # a 32 x 256 x 256 crop, seconds
Writes evaluation.json (evaluation_small.json) into --out (default results/bench/).
"""

from __future__ import annotations

import common
import numpy as np
from scipy import ndimage


def stand_in(truth: np.ndarray, seed: int) -> np.ndarray:
    """uint8 'probabilities' (0..255) with soft edges and speckle, from a {0, 1} truth (Z, Y, X)."""
    rng = np.random.default_rng(seed)
    probs = ndimage.gaussian_filter(truth.astype(np.float32), 2.0) + rng.normal(0, 0.15, truth.shape).astype(np.float32)
    return np.rint(np.clip(probs, 0, 1) * 255).astype(np.uint8)


def main() -> None:
    from mitoseg import compare, instances, postprocess
    from mitoseg.data import split

    p = common.parser(__doc__)
    p.add_argument("--base", metavar="REV", help="also time choose, apply and label of this git revision, side by side")
    args = p.parse_args()
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

    same_search = {"z_sigmas": (0.0,)} if base else {}  # what an older revision searches
    chosen, _ = step("choose post-processing (validation split)",
                     lambda: postprocess.choose(val_probs, val.mask, **same_search),
                     val_probs.size, base and (lambda: base.choose(val_probs, val.mask)))
    final = step("apply it (test volume)", lambda: postprocess.apply(test_probs, chosen), test_probs.size,
                 base and (lambda: base.apply(test_probs, base.PostProcessing(**_plain(chosen.as_dict())))))
    step("scores and object F1", lambda: compare._scores(final, test_mask, chosen.min_size), final.size)
    labels = step("instance labels", lambda: instances.label(final, 26, min_size=chosen.min_size), final.size,
                  base and (lambda: base_instances.label(final, 26, min_size=chosen.min_size)))
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


def _plain(setting: dict) -> dict:
    """A post-processing setting without the Z smoothing, which revisions before 2026-12-05 lack."""
    return {k: v for k, v in setting.items() if k != "z_sigma"}


def _same(a, b) -> bool:
    """Whether two results of a step are equal: masks voxel for voxel, (setting, candidates) pairs as data
    (the candidates without Z smoothing, by their settings)."""
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))

    def scored(rows: list[dict]) -> dict:
        return {tuple((k, v) for k, v in _plain(r).items() if k != "jaccard"): r["jaccard"]
                for r in rows if not r.get("z_sigma")}

    return _plain(a[0].as_dict()) == _plain(b[0].as_dict()) and scored(a[1]) == scored(b[1])


if __name__ == "__main__":
    main()
