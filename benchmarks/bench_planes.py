"""A 2D model along three planes against XY alone: time, peak memory and accuracy of each prediction route.

The CA1 test volume (165 x 768 x 1024, 5 nm; `../shared/data/lucchi-derived`) as a Zarr array is predicted by
`predict.predict_volume` three ways, each in a fresh subprocess:
* XY: whole XY slices, the default blocks (the baseline, what a model of one plane does);
* three planes, whole slices: one block of the whole volume, whole slices along Z, Y and X (`predict.plan`'s
  route for a volume of at most `predict.WHOLE_VOLUME_VOXELS`, CA1's);
* three planes, tiles: 256 x 256 tiles on each plane's global grid, blocks planned as a 3D model's (the route of
  larger volumes, forced here on CA1 to compare it with the whole-slice route on the same voxels).
Each child reports its wall time and peak resident set (VmHWM) over its baseline (imports, model, a warm-up);
the parent scores each output against the labels (foreground IoU at probability 0.5) when `--run` gives a
trained 2D run (loaded along 1 or 3 planes, `train.load_model(run, planes=...)`), and the tiled output's
difference from the whole-slice one. Without `--run` an untrained seeded model times the routes only.

Run from the repository root:
    .venv/bin/python benchmarks/bench_planes.py --run runs/recipe/three-planes_seed1   # ~10 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_planes.py --small                                # seconds, a CA1 crop
Writes planes.json and planes.png (planes_small.* with --small) into --out (default results/bench/).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np

ROUTES = {  # name: (planes, tile in-plane or None for whole slices, block: None = default, "volume" = one block)
    "XY": (1, None, None),
    "three planes, whole slices": (3, None, "volume"),
    "three planes, tiles": (3, 256, None),
}


def child(spec: dict) -> None:
    """Runs in the fresh subprocess: predict the Zarr volume along one route and print time and memory as JSON."""
    import torch
    import zarr

    from mitoseg import predict
    from mitoseg.config import Config
    from mitoseg.models import build_model, pick_device
    from mitoseg.train import load_model

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = pick_device(spec["device"])
    if spec["run"]:
        model, cfg = load_model(spec["run"], device, planes=spec["planes"])
    else:
        torch.manual_seed(spec["seed"])
        cfg = Config(dims=2, planes=spec["planes"])
        model = build_model(cfg).to(device).eval()
    volume = zarr.open_array(spec["input"], mode="r")
    shape = tuple(volume.shape)
    tile = (1, spec["tile"], spec["tile"]) if spec["tile"] else (1, *shape[1:])
    block = shape if spec["block"] == "volume" else None
    warm = np.asarray(volume[:8, :64, :64])
    predict.predict_array(model, warm, 2, (1, 64, 64), cfg.overlap, device=device, amp=cfg.amp)
    baseline = common.proc_status_kib("VmRSS")
    t0 = time.perf_counter()
    out = predict.predict_volume(model, volume, spec["output"], 2, tile, cfg.overlap, block, amp=cfg.amp,
                                 device=device, progress=False)
    common.sync(device)
    seconds = time.perf_counter() - t0
    written = zarr.open_array(str(out), mode="r")
    common.report({"seconds": seconds, "baseline_rss_mib": baseline / 1024,
                   "peak_rss_mib": common.proc_status_kib("VmHWM") / 1024, "tile": list(tile),
                   "block": list(written.chunks)})


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--run", type=Path, help="a trained 2D run on CA1 (default: an untrained seeded model)")
    args = p.parse_args()
    device = common.setup(args)
    info = common.machine_info(device)
    notes = ["each prediction in a fresh subprocess", "uint8 probabilities into Zarr"]
    if not args.run:
        notes.append(common.UNTRAINED + "; no accuracy without --run")
    common.print_header("a 2D model along XY, and along three planes as whole slices or tiles", info, notes)

    import zarr

    from mitoseg import compare, metrics

    bench = compare.load_benchmark("lucchi")
    image, truth = np.asarray(bench.test_image), np.asarray(bench.test_mask)
    if args.small:
        image, truth = image[60:100, 300:428, 400:560], truth[60:100, 300:428, 400:560]  # with mitochondria
    routes = {k: (planes, 64 if args.small and tile else tile, block) for k, (planes, tile, block) in ROUTES.items()}
    rows, outputs = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_planes_") as tmpdir:
        tmp = Path(tmpdir)
        src = tmp / "test.zarr"
        common.write_zarr(src, image, (min(image.shape[0], 32), 256, 256))
        for i, (name, (planes, tile, block)) in enumerate(routes.items()):
            print(f"   {name} ...", flush=True)
            spec = {"input": str(src), "output": str(tmp / f"{i}.zarr"), "planes": planes, "tile": tile,
                    "block": block, "run": str(args.run) if args.run else None, "device": args.device,
                    "threads": args.threads, "seed": args.seed}
            r = common.run_child(__file__, spec)
            outputs[name] = zarr.open_array(spec["output"], mode="r")[:]
            row = dict(r, route=name, planes=planes, increment_mib=r["peak_rss_mib"] - r["baseline_rss_mib"])
            if args.run:
                row["test_iou"] = metrics.jaccard(outputs[name] >= 128, truth)
            rows.append(row)
    whole, tiled = outputs["three planes, whole slices"], outputs["three planes, tiles"]
    diff = np.abs(whole.astype(np.int16) - tiled)
    agreement = {"max_abs_uint8": int(diff.max()), "mean_abs_uint8": float(diff.mean()),
                 "mask_differs_fraction": float(((whole >= 128) != (tiled >= 128)).mean())}
    base = rows[0]["seconds"]
    for r in rows:
        r["time_vs_xy"] = r["seconds"] / base
        r["tile_text"], r["block_text"] = ("x".join(map(str, r[k])) for k in ("tile", "block"))
    cols = [("route", "route", ""), ("tile_text", "tile", ""), ("block_text", "block", ""),
            ("seconds", "predict s", ".1f"), ("time_vs_xy", "x XY", ".2f"), ("peak_rss_mib", "peak RSS MiB", ",.0f"),
            ("increment_mib", "increment MiB", ",.0f")]
    if args.run:
        cols.append(("test_iou", "test IoU (0.5)", ".4f"))
    print()
    print(common.table(rows, cols))
    print(f"   tiled against whole slices (three planes): max |difference| {agreement['max_abs_uint8']} uint8 levels, "
          f"mean {agreement['mean_abs_uint8']:.3f}; mask at 0.5 differs at {agreement['mask_differs_fraction']:.4%} "
          "of voxels")

    name = common.output_name("planes", args.small)
    payload = {"benchmark": "planes", "machine": info,
               "settings": {"volume_zyx": list(image.shape), "data": bench.description,
                            "run": args.run.name if args.run else None, "routes": routes},
               "notes": notes, "results": rows, "tiled_vs_whole_slices": agreement}
    path = common.save_json(args.out, name, payload)

    plt = common.figure()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    x = np.arange(len(rows))
    labels = [r["route"].replace(", ", ",\n") for r in rows]
    axes[0].bar(x, [r["seconds"] for r in rows])
    axes[0].set_xticks(x, labels, fontsize=8)
    axes[0].set_ylabel("seconds to predict the volume")
    for i, r in enumerate(rows):
        if "test_iou" in r:
            axes[0].text(i, r["seconds"], f"IoU {r['test_iou']:.4f}", ha="center", va="bottom", fontsize=7)
    common.memory_bars(axes[1], rows, labels, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.suptitle(f"CA1 test volume {'x'.join(map(str, image.shape))}"
                 + (f", run {args.run.name}" if args.run else ", untrained model"), fontsize=9)
    fig_path = common.save_figure(fig, args.out, name, info)
    print(f"\n   saved {path} and {fig_path}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
    else:
        main()
