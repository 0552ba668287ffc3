"""Peak memory of `predict_volume` on a Zarr volume of size V and 8V: set by the block, not the volume.

The real Drosophila stack is mirror-tiled into Zarr volumes V = 20x512x512 and 8V = 40x1024x1024 (each
axis doubled). Each prediction (2D model, tile 256, overlap 0.25, batch 8, output uint8 Zarr) runs in a
fresh subprocess, which reports its peak resident set (VmHWM from /proc/self/status, and
getrusage ru_maxrss) and, on CUDA, torch's peak GPU memory. Before measuring its baseline the child
imports everything, builds the (untrained, seeded) model and warms it up on one batch of tiles, so
"increment" = peak - baseline is what predicting the volume added.

Two block settings are run for each volume:
* fixed: blocks of 10x512x512 for both volumes (V is 2 blocks, 8V is 16): the increment should stay
  flat while the volume grows 8x, since a block and its tile halo are all that is held;
* default: `predict.default_block` (the product default: whole planes, about 2**25 voxels per block):
  a volume smaller than that budget is one block, so memory grows with it up to the budget, then stays.
The naive baseline is what holding the whole volume as float32 would take: voxels x 4 bytes (a lower
bound: an in-memory blend also needs its accumulators, ~13 bytes per voxel with `predict_array`).

Run from the repository root:
    .venv/bin/python benchmarks/bench_memory.py            # ~5 min on 2 CPU cores (4 predictions)
    .venv/bin/python benchmarks/bench_memory.py --small    # seconds (4x128x128 and 8x256x256, tile 64)
Writes memory.json and memory.png (memory_small.* with --small) into --out (default results/bench/).
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np


def child(spec: dict) -> None:
    """Runs in the fresh subprocess: predict one Zarr volume and print the memory it took as JSON."""
    import torch
    import zarr

    from mitoseg.config import quick
    from mitoseg.models import build_model, pick_device
    from mitoseg.predict import default_block, predict_array, predict_volume

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = pick_device(spec["device"])
    torch.manual_seed(spec["seed"])
    model = build_model(quick(2)).to(device).eval()
    volume = zarr.open_array(spec["input"], mode="r")
    tile = tuple(spec["tile"])
    warm = np.asarray(volume[: spec["batch_size"], : tile[1], : tile[2]])  # warm-up: one full batch of tiles
    predict_array(model, warm, 2, tile, spec["overlap"], device=device, batch_size=spec["batch_size"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = common.proc_status_kib("VmRSS")
    block = tuple(spec["block"]) if spec["block"] else default_block(tuple(volume.shape), tile)
    t0 = time.perf_counter()
    predict_volume(model, volume, spec["output"], 2, tile, spec["overlap"], block=block,
                   batch_size=spec["batch_size"], device=device, progress=False)
    common.sync(device)
    seconds = time.perf_counter() - t0
    result = {"baseline_rss_mib": baseline / 1024, "peak_rss_mib": common.proc_status_kib("VmHWM") / 1024,
              "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "end_rss_mib": common.proc_status_kib("VmRSS") / 1024, "block_zyx": list(block), "seconds": seconds}
    if device.type == "cuda":
        result["gpu_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    common.report(result)


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--base", type=common.parse_shape, default=None,
                   help="volume V as Z,Y,X; 8V doubles each axis (default 20,512,512; 4,128,128 with --small)")
    p.add_argument("--block", type=common.parse_shape, default=None,
                   help="the fixed block Z,Y,X (default 10,512,512; 2,128,128 with --small)")
    p.add_argument("--modes", nargs="+", default=["fixed", "default"], choices=["fixed", "default"])
    p.add_argument("--tile", type=int, default=None, help="in-plane tile of the 2D model (default 256; 64 --small)")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    base = args.base or ((4, 128, 128) if args.small else (20, 512, 512))
    fixed = args.block or ((2, 128, 128) if args.small else (10, 512, 512))
    tile = (1, *(2 * [args.tile or (64 if args.small else 256)]))
    device = common.setup(args)
    info = common.machine_info(device)
    common.print_header("peak memory of predict_volume (Zarr in, Zarr out) for a volume V and 8V", info,
                        [common.UNTRAINED, "each prediction in a fresh subprocess"])

    raw, _ = common.load_stack()
    sizes = {"V": base, "8V": tuple(2 * s for s in base)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmpdir:
        tmp = Path(tmpdir)
        for label, shape in sizes.items():
            arr = common.mirror_tile(raw, shape)
            src = tmp / f"{label}.zarr"
            common.write_zarr(src, arr, (min(shape[0], 8), min(shape[1], 512), min(shape[2], 512)))
            for mode in args.modes:
                print(f"   {label} {shape}, {mode} block ...", flush=True)
                spec = {"input": str(src), "output": str(tmp / f"{label}_{mode}_probs.zarr"), "tile": tile,
                        "overlap": args.overlap, "batch_size": args.batch_size, "device": args.device,
                        "threads": args.threads, "seed": args.seed, "block": fixed if mode == "fixed" else None}
                r = common.run_child(__file__, spec)
                voxels = int(np.prod(shape))
                rows.append(dict(r, size=label, mode=mode, volume_zyx=list(shape), voxels=voxels,
                                 increment_mib=r["peak_rss_mib"] - r["baseline_rss_mib"],
                                 naive_float32_mib=voxels * 4 / 2**20, volume_uint8_mib=voxels / 2**20))
    shown = [dict(r, volume="x".join(map(str, r["volume_zyx"])), block="x".join(map(str, r["block_zyx"])))
             for r in rows]
    cols = [("size", "size", ""), ("volume", "volume", ""), ("mode", "block mode", ""), ("block", "block", ""),
            ("seconds", "predict s", ".1f"), ("baseline_rss_mib", "baseline MiB", ",.0f"),
            ("peak_rss_mib", "peak RSS MiB", ",.0f"), ("increment_mib", "increment MiB", ",.1f"),
            ("naive_float32_mib", "naive f32 MiB", ",.1f")]
    if device.type == "cuda":
        cols.append(("gpu_peak_mib", "GPU peak MiB", ",.0f"))
    print()
    print(common.table(shown, cols))
    summary = {}
    for mode in args.modes:
        small_r, big_r = (next(r for r in rows if r["size"] == s and r["mode"] == mode) for s in ("V", "8V"))
        summary[mode] = {"peak_ratio_8v_over_v": big_r["peak_rss_mib"] / small_r["peak_rss_mib"],
                         "increment_ratio_8v_over_v": big_r["increment_mib"] / max(small_r["increment_mib"], 1e-9)}
        print(f"   {mode} block: volume x8 -> peak RSS x{summary[mode]['peak_ratio_8v_over_v']:.2f}, "
              f"increment x{summary[mode]['increment_ratio_8v_over_v']:.2f} (naive float32 volume: x8.00)")
    print("   baseline = RSS after imports, model and a one-batch warm-up; increment = peak - baseline")

    name = common.output_name("memory", args.small)
    payload = {"benchmark": "memory", "machine": info,
               "settings": {"base": base, "fixed_block": fixed, "tile": tile, "overlap": args.overlap,
                            "batch_size": args.batch_size, "model": "2D", "output_dtype": "uint8",
                            "data": common.DROSO.name},
               "notes": [common.UNTRAINED, "peak RSS = VmHWM of a fresh child process",
                         "naive = voxels x 4 bytes (the volume as float32), a lower bound for in-memory prediction"],
               "results": rows, "summary": summary}
    path = common.save_json(args.out, name, payload)

    plt = common.figure()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    groups = [f"{r['size']}\n{r['mode']}" for r in rows]
    x = np.arange(len(rows))
    common.memory_bars(axes[0], rows, groups)
    axes[0].set_title("predict_volume peak RSS")
    axes[1].bar(x - 0.2, [r["increment_mib"] for r in rows], 0.4, label="predict_volume increment")
    axes[1].bar(x + 0.2, [r["naive_float32_mib"] for r in rows], 0.4, label="naive: volume as float32")
    axes[1].set_xticks(x, groups)
    axes[1].set_ylabel("MiB")
    axes[1].set_title("increment vs whole volume in memory")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"V = {'x'.join(map(str, sizes['V']))}, 8V = {'x'.join(map(str, sizes['8V']))}; "
                 f"fixed block {'x'.join(map(str, fixed))}", fontsize=9)
    fig_path = common.save_figure(fig, args.out, name, info)
    print(f"\n   saved {path} and {fig_path}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
    else:
        main()
