"""`mitoseg label` and `mitoseg evaluate` reading predict's outputs: their default block today
(`blocks.reading_block`: 64 x 512 x 512 widened to whole chunks of the input, then made shallower to as many
voxels) against the plain 64 x 512 x 512 blocks it replaced, in one run.

predict stores probabilities as shards of one-slice whole-plane chunks (`blocks.storage`), so a 512-wide block
decompresses each chunk once per block across it: 4 times for CA1's 768 x 1024 planes, 12 for the full
volume's 2048 x 1536. Two stand-ins, written as predict writes (`blocks.open_output`, uint8, kind probability,
shards of `predict.default_block` for a 2D model's whole-slice tile): probabilities made from the real CA1 test
labels (`bench_evaluation.stand_in`: Gaussian-blurred, sigma 2 voxels, plus noise of sd 0.15, so they compress as
probabilities do), of the CA1 test shape, and mirror-tiled to the full volume's planes, --depth slices deep. The
truth is the CA1 test labels' TIFF, and for the second its mirror-tiling in convert's Zarr (64 x 512 x 512 shards).
`instances.label_volume` and `metrics.evaluate` run with each block; the labels must hold the same objects (one
to one) and the scores must be the same.

Run from the repository root:
    .venv/bin/python benchmarks/bench_read_block.py              # ~4 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_read_block.py --small      # a 40 x 768 x 1024 crop, half a minute
Writes read_block.json (read_block_small.json) into --out (default results/bench/).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import common
import numpy as np
from bench_evaluation import stand_in

from mitoseg import blocks


def write_probabilities(path: Path, probs: np.ndarray) -> None:
    """uint8 probabilities (Z, Y, X) stored as `predict` stores them for a 2D model's whole-slice tile."""
    from mitoseg import predict

    block = predict.default_block(probs.shape, (1, *probs.shape[1:]))
    out = blocks.open_output(path, probs.shape, "uint8", block, {}, {"kind": "probability"})
    for b in blocks.grid(probs.shape, block):
        out.write(b, probs[b])
    blocks.finish(out)


def same_objects(a, b, block: tuple[int, ...]) -> bool:
    """Whether two label arrays (Z, Y, X) hold the same objects, whatever their ids: the same background, and
    the (id in a, id in b) pairs of the foreground a one-to-one map."""
    pairs = set()
    for sl in blocks.grid(a.shape, block):
        x, y = np.asarray(a[sl]).astype(np.uint64), np.asarray(b[sl]).astype(np.uint64)
        if not np.array_equal(x == 0, y == 0):
            return False
        pairs.update(np.unique((x << np.uint64(32)) | y)[1:].tolist() if x.any() else [])
    left, right = {p >> 32 for p in pairs}, {p & (2**32 - 1) for p in pairs}
    return len(left) == len(right) == len(pairs)


def main() -> None:
    import zarr

    from mitoseg import compare, instances, metrics

    p = common.parser(__doc__)
    p.add_argument("--depth", type=int, default=96, help="slices of the full-plane stand-in (default 96)")
    args = p.parse_args()
    info = common.machine_info("cpu")
    common.print_header("label and evaluate: default block against 64 x 512 x 512", info,
                        ["probabilities: a stand-in from the CA1 test labels (blurred, noisy), stored as predict "
                         "stores them"])
    truth = compare.load_benchmark("lucchi").test_mask > 0
    work = Path(tempfile.mkdtemp(prefix="mitoseg-bench-read-block-"))
    cases = [("CA1 test shape", truth[:40] if args.small else truth)]
    if not args.small:
        cases.append(("full-volume planes", common.mirror_tile(truth, (args.depth, 2048, 1536))))
    rows = []
    try:
        for name, mask in cases:
            folder = work / name.replace(" ", "-")
            folder.mkdir()
            probs_path, truth_path = folder / "probs.zarr", folder / "truth.zarr"
            write_probabilities(probs_path, stand_in(mask, args.seed))
            out = blocks.open_output(truth_path, mask.shape, "uint8", (64, 512, 512), {}, {"kind": "mask"})
            for b in blocks.grid(mask.shape, (64, 512, 512)):
                out.write(b, mask[b].astype(np.uint8))
            blocks.finish(out)
            probs = zarr.open_array(str(probs_path), mode="r")
            today = blocks.reading_block(probs)
            print(f"\n{name} {mask.shape}: predict's chunks {probs.chunks}, shards {probs.shards}; "
                  f"default block today {today}", flush=True)
            done = {}
            for who, block in (("today", None), ("64 x 512 x 512", (64, 512, 512))):
                labels = folder / f"labels-{who.replace(' ', '')}.zarr"
                s_label, n = common.timed(lambda b=block, o=labels, i=probs_path: instances.label_volume(
                    i, o, b, threshold=0.5, progress=False))
                s_eval, scores = common.timed(lambda b=block, i=probs_path, t=truth_path: metrics.evaluate(
                    i, t, block=b, progress=False))
                done[who] = (zarr.open_array(str(labels), mode="r"), n, scores)
                print(f"   {who}: label {s_label:.1f} s ({n} objects), evaluate {s_eval:.1f} s", flush=True)
                rows.append({"volume": name, "shape": list(mask.shape), "block": who,
                             "block_voxels": list(block or today), "label_s": s_label, "evaluate_s": s_eval,
                             "objects": n, "f1": scores["f1"]})
            (a, na, sa), (b, nb, sb) = done.values()
            rows[-2]["same_result"] = bool(na == nb and sa == sb and same_objects(a, b, (64, 512, 512)))
            rows[-2]["label_speedup"] = rows[-1]["label_s"] / rows[-2]["label_s"]
            rows[-2]["evaluate_speedup"] = rows[-1]["evaluate_s"] / rows[-2]["evaluate_s"]
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(common.table(rows, [("volume", "volume", ""), ("block", "block", ""), ("label_s", "label s", ".1f"),
                              ("evaluate_s", "evaluate s", ".1f"), ("objects", "objects", ""),
                              ("label_speedup", "label x", ".2f"), ("evaluate_speedup", "evaluate x", ".2f"),
                              ("same_result", "same result", "")]))
    path = common.save_json(args.out, common.output_name("read_block", args.small),
                            {"benchmark": "read_block", "machine": info,
                             "data": "probabilities: stand-in from the CA1 test labels (derived public copy: "
                                     "per-slice stretched images, polygon-filled labels), blurred and noisy",
                             "results": rows})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
