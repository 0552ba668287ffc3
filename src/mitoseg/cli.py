"""The `mitoseg` command line: parses arguments and calls the Python API, nothing more.

User mistakes print one line ``mitoseg: error: ...`` and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from mitoseg.errors import MitosegError

FP32_HELP = "compute in float32 (default: bf16 autocast on GPUs, and for prediction on CPUs with native bf16)"


def _voxel(values: list[float]) -> tuple[float, float, float]:
    return tuple(float(v) for v in values)


def cmd_train(a: argparse.Namespace) -> None:
    from mitoseg import io
    from mitoseg.config import PRESETS
    from mitoseg.train import train

    image, mask = io.load_pair(a.image, a.labels, a.label_threshold)
    changes = {k: v for k, v in dict(
        epochs=a.epochs, minutes=a.minutes, patch_xy=a.patch_xy, patch_z=a.patch_z, batch=a.batch, lr=a.lr,
        iterations_per_epoch=a.iterations_per_epoch, val_fraction=a.val_fraction, seed=a.seed,
        device=a.device, label_threshold=a.label_threshold, voxel_size=a.voxel_size,
        amp=False if a.fp32 else None).items() if v is not None}
    cfg = PRESETS["quick" if a.quick else a.preset](a.dims, **changes)
    summary = train(cfg, image, mask, a.out, resume=a.resume, overwrite=a.overwrite, progress=not a.quiet)
    print(json.dumps(summary, indent=2))


def cmd_predict(a: argparse.Namespace) -> None:
    from mitoseg import io
    from mitoseg.predict import default_tile, predict_volume
    from mitoseg.train import load_model

    dask = a.dask_address or a.scheduler == "local"
    model, cfg = load_model(a.model, "cpu" if dask else a.device)
    tile = (a.tile_z or cfg.tile[0], a.tile_xy or cfg.tile[1], a.tile_xy or cfg.tile[2])
    if cfg.dims == 2:
        tile = (1, *tile[1:])
    if a.tile_xy is None:
        tile = default_tile(cfg.dims, io.open_volume(a.image).shape, tile)
    overlap = cfg.overlap if a.overlap is None else a.overlap
    attrs = {"model": str(a.model), "voxel_size": cfg.voxel_size}
    if dask:
        from mitoseg import cluster

        del model
        with cluster.client(a.dask_address, workers=a.workers) as client:
            cluster.predict_volume_dask(client, a.model, a.image, a.out, tile, overlap, a.block, a.dtype, a.mask,
                                        a.threshold, a.batch_size, a.tta, a.overwrite, a.resume, not a.quiet,
                                        amp=not a.fp32, attrs=attrs, device=None if a.device == "auto" else a.device)
    else:
        predict_volume(model, a.image, a.out, cfg.dims, tile, overlap, block=a.block, dtype=a.dtype,
                       mask_out=a.mask, threshold=a.threshold, batch_size=a.batch_size, tta=a.tta,
                       amp=not a.fp32, device=None, attrs=attrs, overwrite=a.overwrite, resume=a.resume,
                       progress=not a.quiet)
    print(f"wrote {a.out}" + (f" and {a.mask}" if a.mask else ""))


def cmd_label(a: argparse.Namespace) -> None:
    from mitoseg import instances, io

    volume = io.open_volume(a.input)
    io.check_output(a.out, a.overwrite)
    if a.table:
        io.check_output(a.table, a.overwrite)
    voxel = a.voxel_size or dict(getattr(volume, "attrs", {}) or {}).get("voxel_size") or (1.0, 1.0, 1.0)
    block = tuple(a.block) if a.block else (min(volume.shape[0], 64), 512, 512)
    attrs = {"kind": "labels", "voxel_size": voxel, "connectivity": a.connectivity}
    threshold = io.foreground_threshold(volume, a.threshold)
    if a.dask_address or a.scheduler == "local":
        from mitoseg import cluster

        with cluster.client(a.dask_address, workers=a.workers) as client:
            n = cluster.label_dask(client, a.input, a.out, block, a.connectivity, a.min_size, threshold,
                                   progress=not a.quiet, attrs=attrs, overwrite=a.overwrite)
    else:
        out = io.create_zarr(a.out, tuple(volume.shape), "uint32", block, attrs, resume=a.resume)
        n = instances.label_blockwise(volume, out, block, a.connectivity, a.min_size, threshold,
                                      progress=not a.quiet, done=io.done_dir(a.out, a.resume))
        io.finish_output(a.out, a.overwrite)
    if a.table:
        table = instances.measure_blockwise(io.open_volume(a.out), n, voxel, block, progress=not a.quiet)
        instances.write_table(table, a.table)
    print(f"{n} objects -> {a.out}" + (f", table {a.table}" if a.table else ""))


def cmd_evaluate(a: argparse.Namespace) -> None:
    from mitoseg import io, metrics

    pred = io.open_volume(a.prediction)
    truth = io.open_volume(a.truth)
    t = io.foreground_threshold(pred, a.threshold)
    binary = io.Thresholded(pred, 0 if t is None else t, strict=t is None)
    counts = metrics.confusion_blockwise(binary, io.Thresholded(truth, a.label_threshold), progress=not a.quiet)
    result = metrics.scores(counts)
    for k, v in result.items():
        print(f"{k:>10}: {v:.4f}" if isinstance(v, float) else f"{k:>10}: {v}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


def cmd_compare(a: argparse.Namespace) -> None:
    from mitoseg.compare import compare

    compare(a.out, a.dataset, a.data, "quick" if a.quick else a.preset, a.epochs, a.minutes, a.seed,
            a.overwrite, progress=not a.quiet, command="mitoseg " + shlex.join(sys.argv[1:]), tta=a.tta)


def cmd_data(a: argparse.Namespace) -> None:
    from mitoseg import download

    if a.action == "fetch":
        path = download.fetch(a.name, a.dest, a.overwrite, progress=not a.quiet, base_url=a.base_url)
        print(f"{a.name} is in {path}")
    else:
        found = download.data_dir(a.name, a.dest)
        print(found if found else f"{a.name}: not found (run: mitoseg data fetch {a.name})")


def _dask_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Dask cluster (docs/cluster.md)")
    g.add_argument("--scheduler", choices=("single", "local"), default="single",
                   help="single: this process (default); local: a Dask LocalCluster of --workers processes")
    g.add_argument("--workers", type=int, default=2, help="worker processes of --scheduler local")
    g.add_argument("--dask-address", metavar="ADDRESS",
                   help="run the blocks on the Dask scheduler at tcp://host:port (or a scheduler file); "
                        "inputs and outputs must be on a filesystem the workers share")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mitoseg", description="Segment mitochondria in EM volumes with 2D/3D U-Nets.")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a 2D or 3D U-Net (ResNet18 encoder) on an image and its labels")
    t.add_argument("image", help="image volume: TIFF, slice folder, file.h5:dataset, file.zarr")
    t.add_argument("labels", help="label volume of the same shape (foreground: label > --label-threshold)")
    t.add_argument("--out", required=True, help="run folder (config, log, checkpoints)")
    t.add_argument("--dims", type=int, choices=(2, 3), default=2)
    t.add_argument("--preset", default="full", choices=("quick", "cpu", "full"),
                   help="quick: 3 minutes on a CPU; cpu: 30 minutes on 2 cores; full: the GPU preset (default)")
    t.add_argument("--quick", action="store_true", help="same as --preset quick")
    t.add_argument("--epochs", type=int)
    t.add_argument("--minutes", type=float, help="stop after this much training time")
    t.add_argument("--iterations-per-epoch", type=int)
    t.add_argument("--patch-xy", type=int)
    t.add_argument("--patch-z", type=int)
    t.add_argument("--batch", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--val-fraction", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    t.add_argument("--fp32", action="store_true", help=FP32_HELP)
    t.add_argument("--label-threshold", type=float, default=0.0, help="foreground: label > this (127: anti-aliased)")
    t.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"), help="nm")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("predict", help="predict probabilities for a whole volume, block by block, into Zarr")
    r.add_argument("image")
    r.add_argument("--model", required=True, help="run folder or checkpoint (.pt)")
    r.add_argument("--out", required=True, help="probabilities, a .zarr path")
    r.add_argument("--mask", help="also write a binary mask here (.zarr)")
    r.add_argument("--threshold", type=float, default=0.5, help="probability threshold of --mask")
    r.add_argument("--dtype", choices=("uint8", "float16"), default="uint8")
    r.add_argument("--tile-xy", type=int, help="in-plane tile (default: 2D whole slices up to 2048x2048 pixels, "
                   "else the run's tile)")
    r.add_argument("--tile-z", type=int)
    r.add_argument("--overlap", type=float)
    r.add_argument("--block", type=int, nargs=3, metavar=("Z", "Y", "X"), help="output block and chunk size")
    r.add_argument("--batch-size", type=int, help="tiles per batch (default: by tile size and device)")
    r.add_argument("--tta", action="store_true", help="average over in-plane flips")
    r.add_argument("--device")
    r.add_argument("--fp32", action="store_true", help=FP32_HELP)
    r.add_argument("--resume", action="store_true", help="skip blocks an interrupted run finished")
    r.add_argument("--overwrite", action="store_true")
    _dask_options(r)
    r.set_defaults(func=cmd_predict, device="auto")

    lab = sub.add_parser("label", help="separate objects with 3D connected components; write labels and a table")
    lab.add_argument("input", help="probabilities or mask volume")
    lab.add_argument("--out", required=True, help="label volume, a .zarr path")
    lab.add_argument("--table", help="per-object CSV (id, voxels, volume_um3, centroid, bbox)")
    lab.add_argument("--threshold", type=float, help="probability threshold (default 0.5; masks: > 0)")
    lab.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=26)
    lab.add_argument("--min-size", type=int, default=0, help="drop objects with fewer voxels")
    lab.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"), help="nm")
    lab.add_argument("--block", type=int, nargs=3, metavar=("Z", "Y", "X"))
    lab.add_argument("--resume", action="store_true", help="skip blocks an interrupted run finished")
    lab.add_argument("--overwrite", action="store_true")
    _dask_options(lab)
    lab.set_defaults(func=cmd_label)

    e = sub.add_parser("evaluate", help="precision, recall, F1, Jaccard, accuracy, mean IoU on a whole volume")
    e.add_argument("prediction", help="probabilities or mask")
    e.add_argument("truth", help="ground-truth labels")
    e.add_argument("--threshold", type=float, help="probability threshold (default 0.5; masks: > 0)")
    e.add_argument("--label-threshold", type=float, default=0.0)
    e.add_argument("--json", help="also write the scores here")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("compare", help="the study end to end: train 2D and 3D, predict, evaluate, label, report")
    c.add_argument("--out", default="report", help="report folder")
    c.add_argument("--dataset", default="auto", choices=("auto", "lucchi", "drosophila"))
    c.add_argument("--data", help="folder with the data set's files")
    c.add_argument("--quick", action="store_true", help="same as --preset quick (the demo)")
    c.add_argument("--preset", default="full", choices=("quick", "cpu", "full"),
                   help="quick: 3 minutes per model (demo); cpu: 30 minutes per model on 2 cores (about 80 "
                        "minutes in all); full: the GPU preset (default)")
    c.add_argument("--epochs", type=int, help="equal epochs for both models")
    c.add_argument("--minutes", type=float, help="equal training minutes for each model")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="also score test-time augmentation (4 in-plane flips; 4x the inference time); "
                        "default: on for every preset but quick")
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(func=cmd_compare)

    d = sub.add_parser("data", help="find or download public data sets")
    d.add_argument("action", choices=("fetch", "where"))
    d.add_argument("name", nargs="?", default="lucchi", choices=("lucchi", "lucchi-volume"))
    d.add_argument("--dest", help="folder to download into (default: the cache)")
    d.add_argument("--base-url", help="a mirror holding the same files")
    d.add_argument("--overwrite", action="store_true")
    d.set_defaults(func=cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mitoseg` console script; returns the exit status."""
    args = parser().parse_args(argv)
    logging.getLogger("tifffile").setLevel(logging.ERROR)  # its warnings on corrupt files precede our one line
    try:
        args.func(args)
    except MitosegError as e:
        print(f"mitoseg: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mitoseg: interrupted; run again with --resume to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
