"""Peak memory and time of `instances.morphology` (the shape columns of `mitoseg label --table`) for one object
whose bounding box is the whole volume, today's code beside a git revision's (--base) in one run.

An object across the volume is what a network of mitochondria, or a mask of 0/1 given as labels, makes. The
stand-in: the real Drosophila VNC masks mirror-tiled to --shape (default 48 x 2048 x 1536, the full CA1
volume's planes) as uint32 labels of one id (every mitochondrion of the mask is object 1), stored as label's
Zarr output (shards of 64 x 512 x 512, one-slice chunks). Each revision measures it in a fresh process
(`measure_blockwise`, then `morphology` timed), reporting its peak resident set above the baseline before
`morphology` (VmHWM, VmRSS from /proc/self/status). Before 2026-12-08 the object's whole box was read and
meshed at once (about 54 bytes per voxel of its box); today a box past `instances.LARGE_BOX` voxels is read in
slabs of at most `instances.SLAB` voxels, with the same values (checked: rtol 1e-9).

Run from the repository root:
    .venv/bin/python benchmarks/bench_large_object.py --base a9aa363   # ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_large_object.py --small          # a 16 x 512 x 512 stand-in, seconds
Writes large_object.json (large_object_small.json) into --out (default results/bench/).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np

VOXEL = (50.0, 4.6, 4.6)


def child(spec: dict) -> None:
    """In a fresh process: the table of the one-object labels at spec["labels"], by spec["revision"]'s code."""
    import zarr

    from mitoseg import instances

    module = common.module_at(spec["revision"], "instances") if spec["revision"] else instances
    labels = zarr.open_array(spec["labels"], mode="r")
    table = module.measure_blockwise(labels, 1, VOXEL)
    baseline = common.proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here on (Linux: resets the peak to the current RSS)
    t0 = time.perf_counter()
    shape = module.morphology(labels, table, VOXEL)
    seconds = time.perf_counter() - t0
    common.report({"seconds": seconds, "baseline_rss_mib": baseline / 1024,
                   "peak_rss_mib": common.proc_status_kib("VmHWM") / 1024,
                   "table": {k: np.asarray(v).tolist() for k, v in shape.items()}})


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--shape", type=common.parse_shape, default=(48, 2048, 1536), help="stand-in shape Z,Y,X")
    p.add_argument("--base", metavar="REV", help="also measure with this git revision's instances module")
    args = p.parse_args()
    from mitoseg import blocks

    shape = (16, 512, 512) if args.small else tuple(args.shape)
    info = common.machine_info("cpu")
    common.print_header(f"morphology of one object across a {shape} volume", info,
                        ["stand-in: the real Drosophila masks mirror-tiled, every mitochondrion object 1"])
    work = Path(tempfile.mkdtemp(prefix="mitoseg-bench-large-object-"))
    rows = []
    try:
        _, mask = common.load_stack()
        labels = common.mirror_tile(mask, shape).astype(np.uint32)
        out = blocks.open_output(work / "labels.zarr", shape, "uint32", (64, 512, 512), {}, {"kind": "labels"})
        for b in blocks.grid(shape, (64, 512, 512)):
            out.write(b, labels[b])
        blocks.finish(out)
        box = int(np.prod(shape))
        del labels
        for who in ("today", args.base):
            if who is None:
                continue
            result = common.run_child(__file__, {"labels": str(work / "labels.zarr"),
                                                 "revision": None if who == "today" else who})
            row = {"code": who, "box_voxels": box, "seconds": result["seconds"],
                   "peak_above_baseline_mib": result["peak_rss_mib"] - result["baseline_rss_mib"],
                   "bytes_per_box_voxel": (result["peak_rss_mib"] - result["baseline_rss_mib"]) * 2**20 / box}
            row["table"] = result.pop("table")
            rows.append(row)
            print(f"   {who}: {row['seconds']:.1f} s, peak {row['peak_above_baseline_mib']:.0f} MiB above baseline",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if len(rows) == 2:
        a, b = rows[0].pop("table"), rows[1].pop("table")
        rows[0]["same_result_as_base"] = all(np.allclose(a[k], b[k], rtol=1e-9, equal_nan=True) for k in a)
    else:
        rows[0].pop("table")
    print(common.table(rows, [("code", "code", ""), ("seconds", "s", ".1f"),
                              ("peak_above_baseline_mib", "peak MiB", ".0f"), ("bytes_per_box_voxel", "B/voxel", ".1f"),
                              ("same_result_as_base", "same result", "")]))
    path = common.save_json(args.out, common.output_name("large_object", args.small),
                            {"benchmark": "large_object", "machine": info, "base": args.base, "shape": list(shape),
                             "data": "stand-in mirror-tiled from the drosophila-vnc-stack1 masks, one object",
                             "results": rows})
    print(f"saved {path}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
    else:
        main()
