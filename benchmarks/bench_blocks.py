"""Block planning: `predict.default_block` (fewest tiles computed) against the rule it replaced.

A block gathers every tile of the global grid that overlaps it, so a tile that straddles a block border
is computed once per block it touches. The rule before (1024-wide in-plane blocks, as deep as 2**25
voxels allow) cut 3D volumes into 32-slice blocks; `default_block` picks the shape of at most 2**25
voxels with the fewest tile computations (`predict.tiles_per_length`). Both predict the same mirror-tiled
real Drosophila stack with the same (untrained, seeded) 3D model, tile 32 x 256 x 256, overlap 0.25, into
uint8 Zarr, in one run, one after the other; the outputs must be identical (blocks never change values).

Run from the repository root:
    .venv/bin/python benchmarks/bench_blocks.py            # ~4 min on 2 CPU cores (128 x 1024 x 1024)
    .venv/bin/python benchmarks/bench_blocks.py --small    # seconds (40 x 256 x 256, tile 16 x 64 x 64)
Writes blocks.json (blocks_small.json with --small) into --out (default results/bench/).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import common
import numpy as np


def old_default_block(shape: tuple[int, ...], tile: tuple[int, ...], budget: int = 2**25) -> tuple[int, ...]:
    """The rule `default_block` replaced: 1024-wide in-plane blocks, as deep as the budget allows."""
    by, bx = min(shape[1], max(1024, tile[1])), min(shape[2], max(1024, tile[2]))
    return (min(shape[0], max(tile[0], budget // (by * bx))), by, bx)


def main() -> None:
    import torch
    import zarr

    from mitoseg.config import Config
    from mitoseg.models import build_model
    from mitoseg.predict import default_block, predict_volume, tiles_per_length

    p = common.parser(__doc__)
    p.add_argument("--shape", type=common.parse_shape, default=None,
                   help="mirror-tiled volume Z,Y,X (default 128,1024,1024; 40,256,256 with --small)")
    p.add_argument("--overlap", type=float, default=0.25)
    args = p.parse_args()
    device = common.setup(args)
    shape = args.shape or ((40, 256, 256) if args.small else (128, 1024, 1024))
    tile = (16, 64, 64) if args.small else (32, 256, 256)
    budget = 2**19 if args.small else 2**25
    info = common.machine_info(device)
    common.print_header("Block planning: fewest tiles vs the earlier rule (3D model)", info, [common.UNTRAINED])
    raw, _ = common.load_stack()
    volume = common.mirror_tile(raw, shape)
    torch.manual_seed(args.seed)
    model = build_model(Config(dims=3)).to(device).eval()
    plans = {"earlier rule": old_default_block(shape, tile, budget),
             "default_block (fewest tiles)": default_block(shape, tile, args.overlap, budget)}
    rows, outputs = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_blocks_") as tmpdir:
        tmp = Path(tmpdir)
        source = common.write_zarr(tmp / "image.zarr", volume, (min(shape[0], 64), 256, 256))
        warm = np.ascontiguousarray(volume[: tile[0], : tile[1], : tile[2]])
        predict_volume(model, warm, tmp / "warm.zarr", 3, tile, args.overlap, progress=False, device=device)
        for name, block in plans.items():
            tiles = math.prod(tiles_per_length(s, t, args.overlap)[b]
                              for s, t, b in zip(shape, tile, block, strict=True))
            out = tmp / f"{len(rows)}.zarr"
            seconds, _ = common.timed(lambda b=block, o=out: predict_volume(
                model, source, o, 3, tile, args.overlap, block=b, progress=False, device=device), device)
            outputs[name] = np.asarray(zarr.open_array(str(out), mode="r")[:])
            rows.append({"plan": name, "block": "x".join(map(str, block)), "tiles computed": tiles,
                         "seconds": seconds, "Mvoxel/s": volume.size / seconds / 1e6})
    first, second = outputs.values()
    identical = bool(np.array_equal(first, second))
    ideal = math.prod(tiles_per_length(s, t, args.overlap)[s] for s, t in zip(shape, tile, strict=True))
    print(common.table(rows, [("plan", "plan", "s"), ("block", "block", "s"), ("tiles computed", "tiles", "d"),
                              ("seconds", "seconds", ".1f"), ("Mvoxel/s", "Mvoxel/s", ".2f")]))
    print(f"   one block holding the whole volume would compute {ideal} tiles; outputs identical: {identical}")
    common.save_json(args.out, common.output_name("blocks", args.small),
                     {"machine": info, "shape": shape, "tile": tile, "overlap": args.overlap, "budget_voxels": budget,
                      "rows": rows, "tiles_if_one_block": ideal, "outputs_identical": identical,
                      "speedup": rows[0]["seconds"] / rows[1]["seconds"]})


if __name__ == "__main__":
    main()
