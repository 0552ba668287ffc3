"""3D connected components (26-connectivity): mitoseg's blockwise labelling vs cc3d and scipy in memory.

The real mitochondria mask of the Drosophila stack (binarised > 127) is mirror-tiled to 80x2048x2048
(335 million voxels; mirroring keeps objects continuous across the seams) and labelled three ways:
* `mitoseg.instances.label_blockwise`: Zarr in (uint8, chunks = blocks), Zarr out (uint32, chunks =
  blocks), blocks of 64x512x512; the time includes creating the output and every read and write;
* `cc3d.connected_components(mask, connectivity=26)` on the whole volume in memory;
* `scipy.ndimage.label(mask, structure=np.ones((3, 3, 3)))` (26-connectivity) on the whole volume.
All three must give the same partition: the same number of objects, the same foreground, and a
one-to-one map between their ids (checked voxel by voxel, outside the timing). Each method is warmed
up once on a small crop; the median of --repeat runs is reported. No model and no GPU are involved:
--device is accepted for uniformity and only recorded.

Run from the repository root:
    .venv/bin/python benchmarks/bench_cc.py            # ~2-4 min on 2 CPU cores (3 runs of each), ~5 GB RAM
    .venv/bin/python benchmarks/bench_cc.py --small    # seconds (24x384x384, blocks 16x128x128)
Writes cc.json and cc.png (cc_small.* with --small) into --out (default results/bench/).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import cc3d
import common
import numpy as np
import scipy.ndimage
import zarr

from mitoseg.instances import label_blockwise

METHODS = ("mitoseg label_blockwise (zarr->zarr)", "cc3d.connected_components", "scipy.ndimage.label")


def run_blockwise(zin, out: Path, block: tuple[int, int, int]) -> tuple[Path, int]:
    zout = zarr.create_array(str(out), shape=zin.shape, dtype=np.uint32, chunks=block, overwrite=True)
    return out, label_blockwise(zin, zout, block=block, connectivity=26)


def run_cc3d(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labels, n = cc3d.connected_components(mask, connectivity=26, return_N=True, out_dtype=np.uint32)
    return labels, int(n)


def run_scipy(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labels, n = scipy.ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    return labels, int(n)


def same_partition(a: np.ndarray, b: np.ndarray) -> dict:
    """Whether two label arrays (ids 1..N, 0 background) split the voxels alike: same foreground, same
    number of objects, and a one-to-one map between ids."""
    fg = a != 0
    same_fg = bool(np.array_equal(fg, b != 0))
    na, nb = int(a.max(initial=0)), int(b.max(initial=0))
    if not same_fg or na != nb:
        return {"same_partition": False, "same_foreground": same_fg, "objects": [na, nb]}
    av, bv = a[fg].astype(np.int64), b[fg].astype(np.int64)
    table = np.zeros(na + 1, np.int64)
    table[av] = bv
    function = bool(np.array_equal(table[av], bv))  # each id of a maps to one id of b
    injective = bool(np.unique(table[1:]).size == na and table[1:].min(initial=1) > 0)
    return {"same_partition": function and injective, "same_foreground": same_fg, "objects": [na, nb]}


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--shape", type=common.parse_shape, default=None,
                   help="mirror-tiled mask Z,Y,X (default 80,2048,2048; 24,384,384 with --small)")
    p.add_argument("--block", type=common.parse_shape, default=None,
                   help="label_blockwise block Z,Y,X (default 64,512,512; 16,128,128 with --small)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per method (default 3)")
    args = p.parse_args()
    shape = args.shape or ((24, 384, 384) if args.small else (80, 2048, 2048))
    block = args.block or ((16, 128, 128) if args.small else (64, 512, 512))
    info = common.machine_info("cpu")
    common.print_header("3D connected components, 26-connectivity", info,
                        ["CPU only (cc3d, scipy): --device does not apply"])

    _, stack = common.load_stack()
    mask = common.mirror_tile(stack, shape)
    voxels = mask.size
    print(f"   mask: real mitochondria mask mirror-tiled to {shape} ({voxels:,} voxels, "
          f"{mask.mean():.1%} foreground); blocks {block}; {args.repeat} run(s) each", flush=True)
    times = {m: [] for m in METHODS}
    counts, checks = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_cc_") as tmpdir:
        tmp = Path(tmpdir)
        zin = common.write_zarr(tmp / "mask.zarr", mask, block)
        crop = np.ascontiguousarray(mask[: block[0], : block[1], : block[2]])  # warm-up on one block
        run_blockwise(common.write_zarr(tmp / "warm_in.zarr", crop, block), tmp / "warm_out.zarr", block)
        run_cc3d(crop)
        run_scipy(crop)
        reference = None
        for r in range(args.repeat):
            print(f"   run {r + 1}/{args.repeat} ...", flush=True)
            t, (ref, n) = common.timed(lambda: run_cc3d(mask))
            times[METHODS[1]].append(t)
            counts[METHODS[1]] = n
            reference = ref if reference is None else reference
            del ref
            t, (labels, n) = common.timed(lambda: run_scipy(mask))
            times[METHODS[2]].append(t)
            counts[METHODS[2]] = n
            if r == 0:
                checks["scipy vs cc3d"] = same_partition(labels, reference)
            del labels
            t, (out, n) = common.timed(lambda r=r: run_blockwise(zin, tmp / f"labels_{r}.zarr", block))
            times[METHODS[0]].append(t)
            counts[METHODS[0]] = n
            if r == 0:
                checks["label_blockwise vs cc3d"] = same_partition(zarr.open_array(str(out), mode="r")[:], reference)
            shutil.rmtree(out)

    rows = []
    for m in METHODS:
        med = common.median(times[m])
        rows.append({"method": m, "seconds_median": med, "seconds_all": times[m], "voxels_per_second": voxels / med,
                     "objects": counts[m], "relative_to_cc3d": med / common.median(times[METHODS[1]])})
    print()
    print(common.table(rows, [("method", "method", ""), ("seconds_median", "seconds", ".3f"),
                              ("voxels_per_second", "voxels/s", ",.0f"), ("objects", "objects", ",d"),
                              ("relative_to_cc3d", "time / cc3d", ".2f")]))
    agree = all(c["same_partition"] for c in checks.values()) and len(set(counts.values())) == 1
    for name, c in checks.items():
        print(f"   {name}: same partition {c['same_partition']} (objects {c['objects'][0]:,} vs {c['objects'][1]:,}, "
              f"same foreground {c['same_foreground']})")
    print(f"   all three agree: {agree}; median of {args.repeat} run(s); label_blockwise includes Zarr reads/writes")

    name = common.output_name("cc", args.small)
    payload = {"benchmark": "cc", "machine": info,
               "settings": {"shape": shape, "block": block, "repeat": args.repeat, "connectivity": 26,
                            "foreground_fraction": float(mask.mean()), "data": common.DROSO.name},
               "results": rows, "checks": checks, "all_agree": agree}
    path = common.save_json(args.out, name, payload)

    plt = common.figure()
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    short = ["label_blockwise\n(zarr -> zarr)", "cc3d\n(in memory)", "scipy.ndimage.label\n(in memory)"]
    ax.barh(short, [r["seconds_median"] for r in rows], color=["C0", "C1", "C2"])
    for i, r in enumerate(rows):
        ax.text(r["seconds_median"], i, f" {r['seconds_median']:.3g} s", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (median)")
    ax.set_title(f"26-connected components of a {'x'.join(map(str, shape))} mask ({voxels / 1e6:.0f} Mvoxels)")
    fig_path = common.save_figure(fig, args.out, name, info)
    print(f"\n   saved {path} and {fig_path}")


if __name__ == "__main__":
    main()
