"""Labelling a large mask and its per-object table (`mitoseg label --table`): blockwise labels, then
measurements and shapes read from the chunked Zarr labels, today's code beside a git revision's (--base)
in one run.

A stand-in mask is mirror-tiled from the real Drosophila VNC stack (as bench_full_volume.py does) and
labelled blockwise (`label_blockwise`, timed) into the label command's output (`blocks.open_output`: chunks of
64 x 512 x 512, zarr's write settings; with --base that revision's `blocks` too);
then the two table steps of `instances.label_volume` are timed: `measure_blockwise` (sizes, centroids,
boxes) and `morphology` (each object's mesh and axes, read from its bounding box). The 2026-12-04 GPU
run stopped in the second: it read every object's box apart, decompressing a whole chunk for a small
object.

Run from the repository root:
    .venv/bin/python benchmarks/bench_table.py --base 4414aaa --workers 2   # ~6 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_table.py --small          # a 64 x 512 x 384 stand-in, seconds
Writes table.json (table_small.json) into --out (default results/bench/).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import common
import numpy as np
from bench_full_volume import build_standin

from mitoseg import blocks


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--shape", type=common.parse_shape, default=(256, 2048, 1536), help="stand-in shape Z,Y,X")
    p.add_argument("--base", metavar="REV", help="also time every step as at this git revision, side by side")
    p.add_argument("--workers", type=int, default=0,
                   help="also time both steps on a Dask LocalCluster of this many processes (cluster.table_dask)")
    p.add_argument("--work", type=Path, default=Path("/tmp/mitoseg-bench-table"), help="scratch folder")
    args = p.parse_args()
    import zarr

    from mitoseg import instances

    shape = (64, 512, 384) if args.small else tuple(args.shape)
    info = common.machine_info(common.setup(args))
    common.print_header(f"labels and object table of a {shape} stand-in mask", info)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    _, mask = common.load_stack()
    build_standin(args.work / "mask.zarr", mask, shape)
    masks = zarr.open_array(str(args.work / "mask.zarr"), mode="r")
    base = common.module_at(args.base, "instances") if args.base else None
    engines = {"today": blocks, args.base: common.module_at(args.base, "blocks") if args.base else None}
    rows, tables, n = [], {}, 0
    row = {"step": "label_blockwise"}
    for who, module in (("today", instances), (args.base, base)):
        if module is None:
            continue

        def labelled(m=module, engine=engines[who], path=args.work / f"labels-{who}.zarr"):
            out = engine.open_output(path, shape, "uint32", (64, 512, 512), {}, {"kind": "labels"})
            objects = m.label_blockwise(masks, out.array, (64, 512, 512))
            engine.finish(out)
            return objects

        seconds, objects = common.timed(labelled)
        row["seconds" if who == "today" else "base_seconds"] = seconds
        if who == "today":
            n = objects
        print(f"   label_blockwise ({who}): {seconds:.1f} s, {objects} objects", flush=True)
    labels = zarr.open_array(str(args.work / "labels-today.zarr"), mode="r")
    if base is not None:
        row["speedup_over_base"] = row["base_seconds"] / row["seconds"]
        other = zarr.open_array(str(args.work / f"labels-{args.base}.zarr"), mode="r")
        row["same_result_as_base"] = all(np.array_equal(labels[sl], other[sl]) for sl in
                                         blocks.grid(shape, (64, 512, 512)))
    rows.append(row)
    voxel = (5.0, 5.0, 5.0)
    for step in ("measure_blockwise", "morphology"):
        row = {"step": step}
        for who, module in (("today", instances), (args.base, base)):
            if module is None:
                continue
            if step == "measure_blockwise":
                fn = lambda m=module: m.measure_blockwise(labels, n, voxel)  # noqa: E731
            else:
                fn = lambda m=module: m.morphology(labels, tables["today", "measure_blockwise"], voxel)  # noqa: E731
            seconds, tables[who, step] = common.timed(fn)
            row["seconds" if who == "today" else "base_seconds"] = seconds
            print(f"   {step} ({who}): {seconds:.1f} s", flush=True)
        if base is not None:
            row["speedup_over_base"] = row["base_seconds"] / row["seconds"]
            row["same_result_as_base"] = all(np.array_equal(a, b, equal_nan=a.dtype.kind == "f") for a, b in
                                             zip(tables["today", step].values(), tables[args.base, step].values(),
                                                 strict=True))
        rows.append(row)
    if args.workers:
        from mitoseg import cluster

        with cluster.client(workers=args.workers) as client:
            path = args.work / "labels-today.zarr"
            seconds, dask_table = common.timed(lambda: cluster.table_dask(client, path, n, voxel, progress=False))
        one = tables["today", "morphology"]
        same = all(np.array_equal(one[k], dask_table[k], equal_nan=one[k].dtype.kind == "f") for k in one)
        rows.append({"step": f"both, Dask LocalCluster of {args.workers} processes", "seconds": seconds,
                     "same_result_as_today": same})
        print(f"   both steps on {args.workers} Dask processes: {seconds:.1f} s", flush=True)
    cols = [("step", "step", ""), ("seconds", "s today", ".1f")]
    if args.base:
        cols += [("base_seconds", f"s at {args.base}", ".1f"), ("speedup_over_base", "x", ".1f"),
                 ("same_result_as_base", "same result", "")]
    if args.workers:
        cols.append(("same_result_as_today", "same as one process", ""))
    print(common.table(rows, cols))
    name = common.output_name("table", args.small)
    path = common.save_json(args.out, name, {"benchmark": "table", "machine": info, "base": args.base,
                                             "shape": shape, "objects": n, "label_chunks": [64, 512, 512],
                                             "data": "stand-in mirror-tiled from the drosophila-vnc-stack1 masks",
                                             "results": rows})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
