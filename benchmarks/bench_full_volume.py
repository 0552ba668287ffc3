"""Gigavoxel scale: the study's full CA1 volume shape (1065 x 2048 x 1536, 3.35 gigavoxels) in bounded memory.

We do not have the full CA1 volume here, so this script builds a stand-in of exactly that shape by
mirror-tiling the real Drosophila VNC stack (image and mitochondria mask) into Zarr, slab by slab.
Then, each through the `mitoseg` command line in a fresh process whose peak resident memory is recorded:
1. `mitoseg predict --mask` of the whole stand-in (3.35 gigavoxels; the first --predict-slices slices
   if given) with the 2D model on whole slices (--tile-xy: the default is the slice, so every slice is
   one tile, computed once, with no seams; 256 with overlap 0.25 is the Config default);
2. the first --resume-slices slices predicted without interruption, then again killed with SIGKILL
   after --kill-after seconds and run with --resume: the output must be identical;
3. `mitoseg label` of the predicted mask of the whole volume (of the stand-in's true mask when only part
   of it was predicted, or when the model is untrained), then its per-object table (as `label --table`
   computes it), timed apart; both on a Dask LocalCluster with --label-workers.
Steps run in the order 1, 3, 2; the JSON is saved after each (`finished` false until the last), with the
prediction's busy seconds per stage (read, compute, write: the output's `seconds` attribute) and, timed
apart in another process (`SETUP`), each step before its first block (imports, device, model, window,
cuDNN tuning) and each step of one block (read, normalise, network, blend, encode, write).
The model is a seeded untrained 2D U-Net unless --model names a run folder (weights do not change the
speed, but an untrained model's mask is meaningless: use a trained one, e.g. `make demo`'s).

Run from the repository root:
    .venv/bin/python benchmarks/bench_full_volume.py --model demo-report/model_2D  # ~45 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_full_volume.py --small    # a 64 x 512 x 384 stand-in, seconds
Writes full_volume.json and a figure of the labelled objects, full_volume.png (full_volume_small.*),
into --out (default results/bench/); --figure-only redraws the figure from a finished --work folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import common
import numpy as np

FULL = (1065, 2048, 1536)
CHUNKS = (64, 512, 512)
CHILD = ("import resource, sys; from mitoseg.cli import main; rc = main(sys.argv[1:]); "
         "print('PEAK_MIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, flush=True); sys.exit(rc)")


def mirror_index(n: int, size: int) -> np.ndarray:
    """Indices 0..n-1 then back n-1..0, repeated, for `size` positions (symmetric tiling)."""
    period = np.concatenate([np.arange(n), np.arange(n)[::-1]])
    return np.resize(period, size)


def build_standin(path: Path, source: np.ndarray, shape: tuple[int, int, int]) -> None:
    """Mirror-tile `source` (Z, Y, X) into a new Zarr array of `shape`, one chunk-deep slab at a time."""
    import zarr

    arr = zarr.create_array(str(path), shape=shape, dtype=source.dtype, chunks=CHUNKS, overwrite=True)
    iy, ix = (mirror_index(source.shape[a], shape[a]) for a in (1, 2))
    plane = source[:, iy][:, :, ix]  # (z_source, Y, X): the in-plane tiling, once
    iz = mirror_index(source.shape[0], shape[0])
    for z0 in range(0, shape[0], CHUNKS[0]):
        arr[z0:z0 + CHUNKS[0]] = plane[iz[z0:z0 + CHUNKS[0]]]


# A prediction's steps timed one by one in a fresh process (argv: model, volume, device, tile_xy, work
# folder), each waited for on the device: what comes before the first block (imports, CUDA, model, window;
# the first block carries cuDNN's tuning), then one default-size block of the whole-slice tiles, step by
# step, without the overlap of predict_volume: read, normalise (to_device), the network alone (one batch,
# times the block's batches), the whole of blend_block (so cutting and blending = the rest), encode and
# copy to the host, write both Zarr chunks.
SETUP = """
import json, sys, time
t = time.perf_counter()
import numpy as np, torch, zarr
from mitoseg import io, predict
from mitoseg.models import synchronize
from mitoseg.train import load_model
out, clock = {"import": time.perf_counter() - t}, time.perf_counter
def step(name, fn):
    t = clock(); r = fn(); synchronize(device); out[name] = clock() - t; return r
model, volume, device, tile, work = sys.argv[1], sys.argv[2], torch.device(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
step("device_init", lambda: torch.zeros(1, device=device))
net, config = step("load_model", lambda: load_model(model, device))
vol = step("open_volume", lambda: io.open_volume(volume))
window = step("input_window", lambda: predict.input_window(net, vol))
step("fingerprint", lambda: predict.fingerprint(net))
shape = (1, min(tile, vol.shape[1]), min(tile, vol.shape[2]))
settings = predict.plan(vol, 2, shape, 0.25, window=window)
block = tuple(slice(0, n) for n in settings.block)
_, _, region = predict.block_plan(vol.shape, block, shape, 0.25)
step("first_block", lambda: predict.predict_block(net, vol, block, shape, 0.25, window, device, 2))
batch = predict.auto_batch(shape, device)
raw = step("block_read", lambda: io.read_region(vol, region))
image = step("block_normalise", lambda: predict.to_device(raw, window, device))
step("block_network_one_batch", lambda: predict._infer(net, image[:batch, None], False, True))
out["block_batches"] = -(-settings.block[0] // batch)
probs = step("block_blend_block_total", lambda: predict.blend_block(net, vol, block, shape, 0.25, window, device, 2,
                                                               raw=raw))
arrays = step("block_encode_to_host", lambda: predict.encode_block(probs, settings, True))
files = [zarr.create_array(f"{work}/setup-{i}.zarr", shape=settings.block, chunks=settings.block, dtype="uint8",
                           overwrite=True) for i in range(2)]
def write():
    for f, a in zip(files, arrays):
        f[:] = a
step("block_write", write)
out["block_voxels"] = int(np.prod(settings.block))
print("SETUP", json.dumps({k: round(v, 4) for k, v in out.items()}), flush=True)
"""


def steps_timed_apart(model: str, volume: Path, device: str, tile_xy: int, work: Path) -> dict:
    """Seconds of each step of a prediction timed apart (`SETUP`), in a fresh process."""
    out = subprocess.run([sys.executable, "-c", SETUP, model, str(volume), device, str(tile_xy), str(work)],
                         capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("SETUP ")), None)
    if line is None:
        sys.exit(f"the setup timing failed:\n{out.stdout}{out.stderr}")
    return json.loads(line[len("SETUP "):])


def run_cli(args: list[str], kill_after: float | None = None, code: str = CHILD) -> dict:
    """Run `mitoseg ARGS` (or Python `code` with ARGS) in a fresh process; returns seconds, peak resident
    MiB, the exit status and the objects it reported, if it did ("N objects -> ...")."""
    t0 = time.perf_counter()
    argv = ["--quiet", *args] if code is CHILD else list(args)
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if kill_after is not None:
        try:
            proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    peak = next((float(line.split()[1]) for line in out.splitlines() if line.startswith("PEAK_MIB")), None)
    objects = next((int(line.split()[0]) for line in out.splitlines() if " objects -> " in line), None)
    if proc.returncode not in (0, -signal.SIGKILL):
        sys.exit(f"{' '.join(args)} failed:\n{out}")
    result = {"seconds": time.perf_counter() - t0, "peak_mib": peak, "returncode": proc.returncode}
    return result if objects is None else {**result, "objects": objects}


# The object table of a finished labelling, as `mitoseg label --table` computes it after labelling
# (argv: labels, number of objects, Dask workers (0: this process), CSV path).
TABLE = """
import resource, sys
from mitoseg import cluster, instances, io
path, n, workers, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
voxel = (5.0, 5.0, 5.0)
if workers:
    with cluster.client(workers=workers) as client:
        table = cluster.table_dask(client, path, n, voxel, progress=False)
else:
    labels = io.open_volume(path)
    table = instances.morphology(labels, instances.measure_blockwise(labels, n, voxel), voxel)
instances.write_table(table, out)
print("PEAK_MIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, flush=True)
"""


def digest(path: Path) -> str:
    """SHA-256 of a Zarr array's values, read slab by slab."""
    import zarr

    arr = zarr.open_array(str(path), mode="r")
    h = hashlib.sha256()
    for z0 in range(0, arr.shape[0], CHUNKS[0]):
        h.update(np.ascontiguousarray(arr[z0:z0 + CHUNKS[0]]).tobytes())
    return h.hexdigest()


def model_folder(args, work: Path) -> Path:
    """--model, or a seeded untrained 2D model saved as a checkpoint mitoseg can load."""
    if args.model:
        return Path(args.model)
    import torch

    from mitoseg.config import Config
    from mitoseg.models import build_model

    torch.manual_seed(args.seed)
    cfg = Config(dims=2, tile_xy=256, overlap=0.25)
    path = work / "untrained2d.pt"
    torch.save({"model": build_model(cfg).state_dict(), "config": cfg.__dict__}, path)
    return path


def figure(work: Path, out: Path, name: str, info: dict, voxel_size: float = 5.0) -> Path:
    """The labelled objects on an XY slice through the middle of the stand-in, and on an XZ section
    across two labelling block borders in Z (dashed)."""
    import zarr

    from mitoseg import plots

    image = zarr.open_array(str(work / "predict.zarr"), mode="r")
    labels = zarr.open_array(str(work / "labels.zarr"), mode="r")
    z, y = labels.shape[0] // 2, labels.shape[1] // 2
    depth = labels.chunks[0]
    z0, z1 = depth // 2, min(labels.shape[0], depth // 2 + 2 * depth)
    x1 = min(labels.shape[2], 3 * (z1 - z0))
    plt = common.figure()
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 6), width_ratios=[1, 1.6])
    plots.overlay_instances(a, image[z], labels[z], title=f"slice z = {z} (Y x X)")
    plots.overlay_instances(b, image[z0:z1, y, :x1], labels[z0:z1, y, :x1],
                            title=f"section y = {y}, z {z0}-{z1}, x 0-{x1} (Z x X)")
    for border in range(depth * (z0 // depth + 1), z1, depth):
        b.axhline(border - z0 - 0.5, color="white", linestyle="--", linewidth=1)
    fig.suptitle(f"{labels.shape[0]} x {labels.shape[1]} x {labels.shape[2]} stand-in: predicted objects, "
                 f"26-connected, one colour per id; dashed: labelling block borders ({depth} slices)")
    return common.save_figure(fig, out, name, info)


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--shape", type=common.parse_shape, default=FULL, help="stand-in shape Z,Y,X")
    p.add_argument("--predict-slices", type=int, default=0, help="slices to predict (default 0: all)")
    p.add_argument("--tile-xy", type=int, default=None,
                   help="in-plane tile of the 2D model (default: the whole slice; 256 is the config default)")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--resume-slices", type=int, default=64, help="slices of the kill + --resume check")
    p.add_argument("--kill-after", type=float, default=None, help="seconds before the SIGKILL (default: half)")
    p.add_argument("--model", help="run folder or checkpoint of a 2D model (default: untrained 2D)")
    p.add_argument("--label-workers", type=int, default=0,
                   help="label on a Dask LocalCluster of this many worker processes (default 0: this process)")
    p.add_argument("--work", type=Path, default=Path("/tmp/mitoseg-full-volume"), help="scratch folder")
    p.add_argument("--figure-only", action="store_true", help="only redraw the figure from a finished --work")
    args = p.parse_args()
    if args.figure_only:
        device = common.setup(args)
        path = figure(args.work, args.out, common.output_name("full_volume", args.small), common.machine_info(device))
        print(f"saved {path}")
        return
    shape = (64, 512, 384) if args.small else tuple(args.shape)
    n_pred = min(shape[0], args.predict_slices or shape[0])
    n_resume = min(shape[0], 16 if args.small else args.resume_slices)
    tile_xy = args.tile_xy or max(shape[1:])
    device = common.setup(args)
    info = common.machine_info(device)
    common.print_header(f"full-volume stand-in {shape} ({np.prod(shape) / 1e9:.2f} gigavoxels)", info)
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    raw, mask = common.load_stack()
    # label what was predicted (end to end) when a trained model predicted the whole volume; else the
    # stand-in's true mask (an untrained model's mask is noise, unlike any mitochondria)
    label_truth = n_pred < shape[0] or not args.model
    t0 = time.perf_counter()
    if label_truth:
        build_standin(work / "mask.zarr", mask, shape)
    build_standin(work / "predict.zarr", raw, (n_pred, *shape[1:]))
    build_standin(work / "head.zarr", raw, (n_resume, *shape[1:]))
    build_s = time.perf_counter() - t0
    print(f"built stand-ins in {build_s:.0f} s", flush=True)
    name = common.output_name("full_volume", args.small)
    result = {"machine": info, "shape": shape, "voxels": int(np.prod(shape)), "build_seconds": build_s,
              "model": args.model or "untrained 2D (seeded)", "tile_xy": tile_xy, "overlap": args.overlap,
              "note": "stand-in built by mirror-tiling the real Drosophila VNC stack", "finished": False}

    model = str(model_folder(args, work))
    settings = ["--model", model, "--device", str(device), "--tile-xy", str(tile_xy), "--overlap", str(args.overlap)]
    whole = run_cli(["predict", str(work / "predict.zarr"), *settings, "--out", str(work / "probs.zarr"),
                     "--mask", str(work / "pred_mask.zarr")])
    voxels = n_pred * shape[1] * shape[2]
    import zarr

    stages = dict(zarr.open_array(str(work / "probs.zarr"), mode="r").attrs)["seconds"]
    result["predict"] = {"slices": n_pred, "voxels": voxels, **whole, "voxels_per_second": voxels / whole["seconds"],
                         "stage_seconds": stages, "process_start_and_setup_seconds": whole["seconds"] - stages["wall"],
                         "steps_timed_apart": steps_timed_apart(model, work / "predict.zarr", str(device), tile_xy,
                                                                work)}
    common.save_json(args.out, name, result)  # kept if a later step is stopped
    print(f"predict {n_pred} slices: {whole['seconds']:.0f} s, {voxels / whole['seconds'] / 1e6:.2f} Mvoxel/s, "
          f"peak {whole['peak_mib']:.0f} MiB; busy seconds per stage: {stages}; steps timed apart: "
          f"{result['predict']['steps_timed_apart']}", flush=True)

    source = "stand-in mask (mirror-tiled ground truth)" if label_truth else "predicted mask"
    label_in = work / ("mask.zarr" if label_truth else "pred_mask.zarr")
    cluster = ["--scheduler", "local", "--workers", str(args.label_workers)] if args.label_workers else []
    label = run_cli(["label", str(label_in), "--out", str(work / "labels.zarr"), "--voxel-size", "5", "5", "5",
                     *cluster])
    n_objects = label.pop("objects")
    print(f"label {source}, {np.prod(shape) / 1e9:.2f} gigavoxels: {label['seconds']:.0f} s, "
          f"{np.prod(shape) / label['seconds'] / 1e6:.1f} Mvoxel/s, peak {label['peak_mib']:.0f} MiB, "
          f"{n_objects} objects", flush=True)
    result["label"] = {"input": source, "dask_workers": args.label_workers, **label,
                       "peak_mib_of": "the client process only" if args.label_workers else "the process",
                       "objects": n_objects, "voxels_per_second": np.prod(shape) / label["seconds"]}
    common.save_json(args.out, name, result)
    table = run_cli([str(work / "labels.zarr"), str(n_objects), str(args.label_workers), str(work / "objects.csv")],
                    code=TABLE)
    print(f"object table (measurements and shapes of {n_objects} objects): {table['seconds']:.0f} s", flush=True)
    result["table"] = {"dask_workers": args.label_workers, **table}
    result["predict_plus_label_seconds"] = whole["seconds"] + label["seconds"] if n_pred == shape[0] else None
    result["table_seconds"] = table["seconds"]
    common.save_json(args.out, name, result)
    figure(work, args.out, name, info)

    head = ["predict", str(work / "head.zarr"), *settings]
    straight = run_cli([*head, "--out", str(work / "head_probs.zarr")])
    kill_after = args.kill_after or straight["seconds"] / 2
    run_cli([*head, "--out", str(work / "resumed.zarr")], kill_after=kill_after)
    done = len(list((work / "resumed.zarr.partial.done").glob("*")))
    resumed = run_cli([*head, "--out", str(work / "resumed.zarr"), "--resume"])
    identical = digest(work / "head_probs.zarr") == digest(work / "resumed.zarr")
    print(f"{n_resume} slices: killed after {kill_after:.0f} s with {done} blocks done; resumed in "
          f"{resumed['seconds']:.0f} s; identical to the uninterrupted run: {identical}", flush=True)
    result["resume"] = {"slices": n_resume, "uninterrupted": straight, "killed_after_s": kill_after,
                        "blocks_done_before_kill": done, **resumed, "identical": identical}
    result["finished"] = True
    path = common.save_json(args.out, name, result)
    print(json.dumps({k: result[k] for k in ("predict", "resume", "label", "table", "predict_plus_label_seconds")},
                     indent=1, default=str))
    print(f"saved {path}")
    if not identical:
        sys.exit("resumed output differs from the uninterrupted run")


if __name__ == "__main__":
    main()
