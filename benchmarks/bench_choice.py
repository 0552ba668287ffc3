"""What choosing a 2D run's post-processing for the other planes adds to the end of `mitoseg train` and `compare`.

On a trained 2D run of CA1 (`--run`, copied to a temporary folder) and the real CA1 validation split
(`../shared/data/lucchi-derived`, the last 15 % of the training volume in X), `train.choose_postprocessing`
timed three ways, one after the other: along the run's own planes only (the baseline: what training did before
it chose for both), along the other planes only (what it adds; raw probabilities, as at the end of `train`), and
the same with test-time augmentation (what `compare` adds after its own choice). Each records the choice it made.

Run from the repository root:
    .venv/bin/python benchmarks/bench_choice.py --run runs/e2e/model_2D           # ~6 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_choice.py --run runs/e2e/model_2D --small   # a 32 x 256 x 256 crop
Writes choice.json (choice_small.json) into --out (default results/bench/).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import common


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--run", type=Path, required=True, help="a 2D run folder trained on CA1 (XY slices)")
    args = p.parse_args()
    device = common.setup(args)
    from mitoseg import compare, data, io, postprocess
    from mitoseg.config import other_planes
    from mitoseg.train import choose_postprocessing, load_model

    info = common.machine_info(device)
    common.print_header("post-processing choice for the other planes", info)
    bench = compare.load_benchmark("lucchi")
    _, cfg = load_model(args.run, device)
    if other_planes(cfg) is None:
        raise SystemExit(f"{args.run} chooses for its own planes only (3D, 2.5D or anisotropic voxels)")
    image, mask = bench.train_image, bench.train_mask
    if args.small:
        image, mask = image[:32, :256, :256], mask[:32, :256, :256]
    _, val = data.split(image, mask, cfg.val_fraction, io.intensity_range(image, rule=cfg.normalize))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(args.run, run)
        other = other_planes(cfg)
        for case, planes, tta in (("own planes (baseline)", cfg.slice_planes, False),
                                  ("other planes, raw (train)", other, False),
                                  ("other planes, TTA (compare)", other, True)):
            t0 = time.perf_counter()
            choose_postprocessing(run, val, cfg, device, progress=False, tta=tta, planes=[planes])
            seconds = time.perf_counter() - t0
            rows.append({"case": case, "planes": planes, "seconds": round(seconds, 1),
                         "chosen": postprocess.read(run, planes).as_dict(), "validation_voxels": val.image.size})
            print(f"{case}: {seconds:.1f} s, chose {postprocess.words(rows[-1]['chosen'])}", flush=True)
    print(common.table(rows, [("case", "case", "s"), ("seconds", "seconds", ".1f")]))
    path = common.save_json(args.out, common.output_name("choice", args.small), {"machine": info, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
