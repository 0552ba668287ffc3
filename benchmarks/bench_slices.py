"""Reading a slice of a mitoseg output, as a viewer does: blocks stored as one chunk each (the baseline, mitoseg's
layout before `blocks.storage`) against one shard of one-slice chunks (today's Zarr v3 layout).

The real mitochondria mask of the Drosophila stack is mirror-tiled to 64 x 2048 x 1536 (CA1's full slice size,
one block deep) and stored as mitoseg writes its outputs, block by block (64 x 512 x 512): as probabilities
(uint8, the mask blurred, `predict`'s output) and as object ids (uint32, 26-connected components, `label`'s).
For each layout: the time to write every block (the engine's writes), to read one whole slice (a viewer showing
level 0), one 512 x 512 view of a slice (zoomed in), one block (the engine's later passes: `label`, `--mask`, the
object table), and the bytes on disk. Reads are the median over slices spread through the depth, each from a
freshly opened array (no chunk cache), warmed up once. Values read back are checked equal to what was written.

Run from the repository root:
    .venv/bin/python benchmarks/bench_slices.py            # ~1 min on 2 CPU cores, ~2 GB RAM
    .venv/bin/python benchmarks/bench_slices.py --small    # seconds (16 x 512 x 384, blocks 16 x 128 x 128)
Writes slices.json (slices_small.json with --small) into --out (default results/bench/).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cc3d
import common
import numpy as np
import scipy.ndimage
import zarr

from mitoseg import blocks

LAYOUTS = {"block as one chunk (baseline)": lambda block: {"chunks": block},
           "block as a shard of one-slice chunks": lambda block: blocks.storage(block)}


def stand_in(shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Probabilities and object ids of `shape` from the Drosophila stack's mask, mirror-tiled."""
    mask = common.mirror_tile(common.load_stack()[1] > 0, shape)
    probs = (scipy.ndimage.gaussian_filter(mask.astype(np.float32), 2) * 255).astype(np.uint8)
    return {"probabilities (uint8)": probs, "object ids (uint32)": cc3d.connected_components(mask, connectivity=26)
            .astype(np.uint32)}


def timed_reads(path: Path, selections: list[tuple]) -> float:
    """Median seconds to read each selection from a freshly opened array."""
    times = []
    for sel in selections:
        array = zarr.open_array(str(path), mode="r")
        start = time.perf_counter()
        array[sel]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(data: np.ndarray, block: tuple[int, int, int], kwargs: dict, folder: Path) -> dict:
    path = folder / "volume.zarr"
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    array = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, fill_value=0, config=blocks.WRITE,
                              **kwargs)
    for b in blocks.grid(data.shape, block):
        array[b] = data[b]
    write = time.perf_counter() - start
    back = zarr.open_array(str(path), mode="r")
    assert np.array_equal(back[:], data), "values read back differ"
    z = np.linspace(0, data.shape[0] - 1, 7).astype(int).tolist()
    y, x = data.shape[1] // 2, data.shape[2] // 2
    half = min(256, y, x)
    timed_reads(path, [(z[0],)])  # warm up
    return {"write all blocks s": write,
            "read one slice ms": 1000 * timed_reads(path, [(k,) for k in z]),
            "read a 512 x 512 view ms": 1000 * timed_reads(path, [(k, slice(y - half, y + half),
                                                                   slice(x - half, x + half)) for k in z]),
            "read one block ms": 1000 * timed_reads(path, blocks.grid(data.shape, block)[:5]),
            "on disk MB": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6}


def main() -> None:
    args = common.parser(__doc__).parse_args()
    shape, block = ((16, 512, 384), (16, 128, 128)) if args.small else ((64, 2048, 1536), (64, 512, 512))
    info = common.machine_info("cpu")
    common.print_header("reading a slice of an output: a block as one chunk vs as a shard of one-slice chunks", info,
                        [f"volume {shape}, blocks {block}; no model is involved"])
    volumes = stand_in(shape)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for what, data in volumes.items():
            for layout, kwargs in LAYOUTS.items():
                rows.append({"volume": what, "layout": layout, **measure(data, block, kwargs(block), Path(tmp))})
    print(common.table(rows, [("volume", "volume", ""), ("layout", "layout", ""),
                              ("write all blocks s", "write all blocks s", ".2f"),
                              ("read one slice ms", "one slice ms", ".1f"),
                              ("read a 512 x 512 view ms", "512 x 512 view ms", ".1f"),
                              ("read one block ms", "one block ms", ".1f"), ("on disk MB", "disk MB", ".1f")]))
    payload = {"machine": info, "shape": shape, "block": block, "results": rows}
    print("saved", common.save_json(args.out, common.output_name("slices", args.small), payload))


if __name__ == "__main__":
    main()
