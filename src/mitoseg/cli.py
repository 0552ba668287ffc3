"""The `mitoseg` command line: parses arguments and calls the Python API, nothing more.

User mistakes print one line ``mitoseg: error: ...`` and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from mitoseg import __version__
from mitoseg.checks import arg
from mitoseg.errors import MitosegError

FP32_HELP = "compute in float32 (default: bf16 autocast on GPUs and on CPUs with native bf16)"
IMAGE_HELP = "image volume: TIFF, slice folder, file.h5:dataset, file.zarr"
THRESHOLD_HELP = ("foreground: value >= this; for mitoseg probabilities a probability in (0, 1) (default 0.5, "
                  "scaled to 0..255 when stored as uint8), for other inputs a raw value (e.g. 0.5 for another "
                  "tool's probabilities, 128 for an anti-aliased 0..255 mask); a mask of two values needs none "
                  "(any value > 0)")
LABEL_THRESHOLD_HELP = ("foreground: label > this (default 0); label volumes with more than two values (anti-aliased "
                        "masks, e.g. 0..255 PNGs: use 127) are refused until it is given")


class _Parser(argparse.ArgumentParser):
    """argparse with one line per mistake: ``mitoseg predict: error: ...`` (status 2), no usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _voxel(values: list[float]) -> tuple[float, float, float]:
    return tuple(float(v) for v in values)


def _preset(a: argparse.Namespace) -> str:
    """The preset `--quick` or `--preset` names ("full" when neither); both, naming two, refused."""
    if a.quick and a.preset not in (None, "quick"):
        raise MitosegError(f"--quick is --preset quick: give it or --preset {a.preset}, not both")
    return "quick" if a.quick else a.preset or "full"


def cmd_train(a: argparse.Namespace) -> None:
    from mitoseg import io
    from mitoseg.config import PRESETS
    from mitoseg.train import check_resume, resumed_config, train

    changes = {k: v for k, v in dict(
        epochs=a.epochs, minutes=a.minutes, patch_xy=a.patch_xy, patch_z=a.patch_z, batch=a.batch, lr=a.lr,
        iterations_per_epoch=a.iterations_per_epoch, validate_every=a.validate_every, norm=a.norm,
        bn_freeze=a.bn_freeze, ema=a.ema, elastic=a.elastic, gamma_field=a.gamma_field, normalize=a.normalize,
        context_slices=a.context_slices, planes=a.planes, full_resolution=a.full_resolution,
        boundary_weight=a.boundary_weight, loader_workers=a.loader_workers, val_fraction=a.val_fraction, seed=a.seed,
        device=a.device, label_threshold=a.label_threshold, voxel_size=a.voxel_size, unlabeled=a.unlabeled,
        annotated_slices=a.annotated_slices, init=a.init, amp=False if a.fp32 else None).items() if v is not None}
    if a.epochs is not None and a.minutes is None and not a.resume:  # N epochs, not the preset's minutes
        changes["minutes"] = None
    if a.planes == 3 and (a.dims or 2) == 3:
        raise MitosegError("--planes is the 2D model's (slices cut along three axes); a 3D model sees the volume whole")
    if a.resume:  # the run's saved settings, those it read its labels with too; others given are refused
        check_resume(a.out, {**changes, **({"dims": a.dims} if a.dims else {}),
                             **({"preset": _preset(a)} if a.quick or a.preset else {})})
        cfg = resumed_config(a.out, changes)
        threshold = cfg.label_threshold
        if threshold == 0 and cfg.unlabeled is not None:  # runs begun before 2026-12-07 recorded 0 for none given:
            threshold = None  # their mask was made by the rule, not by > 0 (an ilastik export's 1 and 2 both)
        image, mask = io.load_pair(a.image, a.labels, threshold, cfg.unlabeled)
    else:
        io.check_place(a.out, inputs=(a.image, a.labels))  # --overwrite must not delete them with an old run
        stated = None if a.voxel_size else io.voxel_size(a.image)  # an ImageJ TIFF's or OME-Zarr's own
        preset = _preset(a)
        cfg = PRESETS[preset](a.dims or 2, **changes, **(
            {"voxel_size": stated} if stated else {} if a.voxel_size else {"voxel_size_stated": False}),
            data=f"{io.file_name(a.image)} with labels {io.file_name(a.labels)}")
        image, mask = io.load_pair(a.image, a.labels, a.label_threshold, a.unlabeled)
        if cfg.dims == 3 and a.patch_z is None and image.shape[0] < cfg.patch_z:  # a thin stack: as `compare` does
            from dataclasses import replace

            from mitoseg.compare import patch_depth

            cfg = replace(cfg, patch_z=patch_depth(image.shape[0], cfg.voxel_size, most=cfg.patch_z))
            print(f"patch depth {cfg.patch_z} slices: the image holds {image.shape[0]} (the preset's "
                  f"{PRESETS[preset](3).patch_z} would not fit)")
        voxel = "voxel size " + " x ".join(f"{v:g}" for v in cfg.voxel_size) + " nm"
        if a.voxel_size:
            print(f"{voxel} (--voxel-size)")
        elif stated:
            print(f"{voxel}, as the image states")
        else:
            print(f"{voxel}, the default: the image states none; give --voxel-size (it sets the 3D encoder's "
                  "strides, and predictions record it; without it they record no voxel size)")
    train(cfg, image, mask, a.out, resume=a.resume, overwrite=a.overwrite, progress=not a.quiet)
    print((Path(a.out) / "summary.json").read_text(), end="")  # as written: strict JSON (no NaN)


def cmd_convert(a: argparse.Namespace) -> None:
    from mitoseg import omezarr
    from mitoseg.convert import convert

    done = convert(a.input, a.out, _voxel(a.voxel_size) if a.voxel_size else None, tuple(a.block) if a.block else None,
                   overwrite=a.overwrite, progress=not a.quiet, labels=a.labels, zarr_format=a.zarr_format)
    voxel = done["voxel_size"]
    stated = (" (--voxel-size)" if a.voxel_size else ", the image's" if omezarr.label_of(a.out)
              else ", as the input states")
    words = f"voxel size {' x '.join(f'{v:g}' for v in voxel)} nm{stated}" if voxel else \
        "no voxel size: its image states none in nm (an image-label takes its image's)" if omezarr.label_of(a.out) \
        else "no voxel size: the input states none" + (" (the OME-Zarr's axes have no unit: read as voxels)"
                                                        if omezarr.is_ome_path(a.out) else "") + "; give --voxel-size"
    print(f"wrote {a.out} ({done['dtype']}, {words})")
    for note in done["notes"]:
        print(note)


def _client(a: argparse.Namespace, outputs: tuple = (), inputs: tuple = ()):
    """A Dask client for --scheduler local or --dask-address, else a context holding None (this process). An
    existing output among `outputs` (one of the command's `inputs`, or not) is refused first, as the command would
    refuse it (not after the seconds a cluster takes to start, or a timeout of 30 s)."""
    if a.workers is not None and a.scheduler != "local":  # before: ignored in silence
        raise MitosegError("--workers sets the processes of --scheduler local"
                           + (": a running cluster (--dask-address) has its own" if a.dask_address else
                              "; without it everything runs in this process"))
    if not (a.dask_address or a.scheduler == "local"):
        return contextlib.nullcontext(None)
    from mitoseg import cluster

    if a.dask_address and a.scheduler == "local":
        raise MitosegError("--dask-address uses a running cluster, --scheduler local starts one: give one of them")
    from mitoseg import io

    given = [Path(out).absolute() for out in outputs if out is not None]
    for out in given if not (a.overwrite or getattr(a, "resume", False) or len(set(given)) < len(given)) else ():
        if out.exists():  # (outputs given twice: the command says so)
            io.check_output(out, False, None, inputs)  # raises: an input of the command, or it exists

    client = cluster.client(a.dask_address, workers=a.workers or 2)
    if not a.quiet:  # where the blocks will run (a scheduler without workers is said by cluster.client)
        print(cluster.scheduler_info(client))
    return cluster.closing(client)


def cmd_predict(a: argparse.Namespace) -> None:
    from mitoseg import io
    from mitoseg.predict import predict

    finished = _written_by(a.out) if a.resume and not io.partial_path(a.out).exists() else None
    with _client(a, (a.out, a.mask), (a.image, *a.model)) as client:
        predict(a.model, a.image, a.out, mask_out=a.mask, tile_xy=a.tile_xy, tile_z=a.tile_z, overlap=a.overlap,
                block=a.block, dtype=a.dtype, threshold=a.threshold, batch_size=a.batch_size, tta=a.tta,
                amp=not a.fp32, device=a.device, client=client, overwrite=a.overwrite, resume=a.resume,
                progress=not a.quiet, match_training=a.match_training, planes=a.planes,
                voxel_size=_voxel(a.voxel_size) if a.voxel_size else None)
    if finished is not None and _written_by(a.out) == finished:  # finished alike by an earlier run (else refused)
        print(f"kept {a.out}, finished earlier with these settings" + (f"; wrote {a.mask}" if a.mask else ""))
    else:
        print(f"wrote {a.out}" + (f" and {a.mask}" if a.mask else ""))
    print(_voxel_words(a))
    if a.mask:
        print(_mask_words(a.mask))


def _voxel_words(a: argparse.Namespace) -> str:
    """The voxel size a prediction recorded (what `label` measures objects in) and where it came from."""
    from mitoseg import io

    found = io.voxel_size(a.out)
    if not found:
        return ("voxel size: none recorded (neither the image nor the run's training data stated one): give "
                "--voxel-size, or `mitoseg label` measures in voxels")
    voxel = " x ".join(f"{v:g}" for v in found) + " nm"
    if a.voxel_size:
        return f"voxel size {voxel} (--voxel-size)"
    if io.voxel_size(a.image):
        return f"voxel size {voxel}, as the image states"
    return f"voxel size {voxel}, the run's: the image states none; give --voxel-size if its voxels differ"


def _along(attrs: dict) -> str:
    """" for three planes" where an output's run post-processing was chosen for predicting along three planes."""
    return " for three planes" if attrs.get("postprocessing_planes") == 3 else ""


def _slices(sigma: float) -> str:
    return f"{sigma:g} slice{'' if sigma == 1 else 's'}"


def _mask_words(path: str) -> str:
    """What a --mask output applied, and what of the run's post-processing is left to `mitoseg label`."""
    from mitoseg import io, postprocess

    attrs = io.open_volume(path).attrs
    chosen, applied = attrs.get("postprocessing"), f"probability >= {attrs['threshold']:g}"
    along = _along(attrs)
    if attrs.get("z_sigma"):
        applied = f"probabilities blurred along Z ({_slices(attrs['z_sigma'])}), then {applied}"
    if not chosen:
        return f"mask: {applied}"
    if chosen["threshold"] != attrs["threshold"] or chosen["z_sigma"] != attrs.get("z_sigma", 0):
        return (f"mask: {applied} (--threshold, applied alone: not the run's post-processing chosen on validation"
                f"{along}, {postprocess.words(chosen)}; nor will `mitoseg label` of it apply that)")
    rest = f"; `mitoseg label {path}` then removes objects under {chosen['min_size']:,} voxels" \
        if chosen["min_size"] else ""
    holes = " (its hole filling is not applied)" if chosen["fill_holes"] else ""
    return f"mask: {applied}, the run's post-processing chosen on validation{along}{rest}{holes}"


def cmd_label(a: argparse.Namespace) -> None:
    from mitoseg import io
    from mitoseg.instances import label_volume

    with _client(a, (a.out, a.table), (a.input,)) as client:
        n = label_volume(a.input, a.out, a.block, a.connectivity, a.min_size, a.threshold, a.voxel_size, a.table,
                         client, a.resume, a.overwrite, progress=not a.quiet)
    print(f"{n:,} object{'s' * (n != 1)} -> {a.out}" + (f", table {a.table}" if a.table else ""))
    if a.table and not a.voxel_size and io.voxel_size(a.input) is None:
        print(f"{a.input} states no voxel size: the table measures voxels of 1 x 1 x 1 nm; give --voxel-size Z Y X "
              "(nm) for physical sizes, and for shapes (sphericity, elongation) of voxels that are not cubes")
    words = _label_words(a.input, a.out)
    if words:
        print(words)


def _label_words(input: str, out: str) -> str:
    """What `mitoseg label` took from the run's post-processing chosen on validation (`postprocess.for_labels`),
    or "" when nothing."""
    from mitoseg import io

    applied = io.open_volume(out).attrs.get("applied", {})
    if not applied.get("from_run"):
        return ""
    done = []
    if "z_sigma" in applied["from_run"] and applied["z_sigma"]:
        done.append(f"probabilities blurred along Z ({_slices(applied['z_sigma'])})")
    if "threshold" in applied["from_run"]:
        done.append(f"probability >= {applied['threshold']:g}")
    if "min_size" in applied["from_run"]:
        scaled = f" (its {applied['min_size_chosen']:,} scaled to this depth)" if "min_size_chosen" in applied else ""
        done.append(f"objects under {applied['min_size']:,} voxels removed{scaled}" if applied["min_size"]
                    else "no objects removed by size")
    attrs = io.open_volume(input).attrs
    holes = attrs.get("postprocessing", {}).get("fill_holes")
    return (f"the run's post-processing chosen on validation{_along(attrs)}: {', '.join(done)}"
            + (" (its hole filling is not applied)" if holes else "") + "; --threshold / --min-size override it")


def _evaluate_words(prediction: str, threshold: float | None) -> str:
    """Where `mitoseg evaluate` scored a run's probabilities at 0.5 but the run chose another post-processing
    on validation: one line that says so and how to score its choice; else ""."""
    from mitoseg import io

    attrs = io.attributes(io.open_volume(prediction))
    chosen = attrs.get("postprocessing") if attrs.get("kind") == "probability" else None
    if threshold is not None or not chosen or (chosen["threshold"] == 0.5 and not chosen.get("z_sigma")):
        return ""
    blur = f"Z blur {chosen['z_sigma']:g} slices, " if chosen.get("z_sigma") else ""
    return (f"scored at probability 0.5; the run chose {blur}threshold {chosen['threshold']:g} on validation: "
            "score the mask of `mitoseg predict --mask` or `mitoseg label`'s output for its choice")


def cmd_evaluate(a: argparse.Namespace) -> None:
    from mitoseg import io, metrics

    if a.json:
        io.check_output(a.json, a.overwrite, "file", (a.prediction, a.truth))
    with _client(a) as client:
        result = metrics.evaluate(a.prediction, a.truth, a.threshold, a.label_threshold, client=client,
                                  progress=not a.quiet, places=a.places,
                                  voxel_size=_voxel(a.voxel_size) if a.voxel_size else None, objects=a.objects,
                                  unlabeled=a.unlabeled)
    for k, v in result.items():
        if k not in ("places", "objects"):
            print(f"{k:>10}: {v:.4f}" if isinstance(v, float) else f"{k:>10}: {v}")
    if a.places:
        print(_places_words(result["places"]))
    if a.objects:
        o = result["objects"]
        made = {o["prediction_objects"], o["truth_objects"]}
        how = made.pop() if len(made) == 1 else f"predicted {o['prediction_objects']}, true {o['truth_objects']}"
        print(f"objects ({how.replace('ids', 'object ids')}, matched one to one at IoU >= 0.5): {o['n_true']:,} true, "
              f"{o['n_pred']:,} predicted, {o['tp']:,} matched: precision {o['precision']:.4f}, recall "
              f"{o['recall']:.4f}, F1 {o['f1']:.4f}")
    words = _evaluate_words(a.prediction, a.threshold)
    if words:
        print(words)
    if a.unlabeled is not None:
        scored = sum(result[k] for k in ("tp", "fp", "fn", "tn"))
        print(f"scored on the {scored:,} annotated voxels of the truth (those of value {a.unlabeled:g}, nobody's "
              "annotation, left out)")
    if a.json:
        io.write_json(a.json, result)  # never a half-written file, under its name or as NAME.partial


def _places_words(e: dict) -> str:
    """One line: where `metrics.error_places`' wrong voxels lie, and what the IoU would be without some."""
    from mitoseg import metrics

    wrong, whole = e["fp"] + e["fn"], e["fp_whole"] + e["fn_whole"]
    widths = metrics.ERROR_WIDTHS
    near = [e[f"fp_near_{w}"] + e[f"fn_near_{w}"] for w in widths]

    def share(n: int) -> str:
        return f"{n:,} ({n / max(wrong, 1):.0%})"

    voxel = (" x ".join(f"{v:g}" for v in e["voxel_size"]) + " nm voxels" if e["voxel_size"]
             else "voxels taken as cubes: give --voxel-size if they are not")
    pixel = e["voxel_size"][-1] if e["voxel_size"] else None  # distances count in-plane pixels (`error_places`)

    def within(w: int) -> str:
        return f"{w * pixel:g} nm" if pixel else f"{w} pixel{'s' * (w > 1)}"

    return (f"where the {wrong:,} wrong voxels lie: {share(whole)} in whole objects (missed or false); "
            + ", ".join(f"{share(n)} within {within(w)}" for w, n in zip(widths, near, strict=True))
            + f" of the true surface ({voxel}; distances counted in in-plane pixels"
            + (f" of {pixel:g} nm" if pixel else "") + f"); IoU {e['jaccard_whole_right']:.4f} if "
            f"the whole-object errors were right, {e[f'jaccard_near_{widths[1]}_right']:.4f} if those within "
            f"{within(widths[1])} were")


def public_command(args: list[str]) -> str:
    """The command line as a report records it, with no path of this machine: an absolute path is written
    relative to the current folder when it lies inside it, else as `.../NAME` (its last part)."""

    def public(word: str) -> str:
        key, eq, value = word.partition("=") if word.startswith("--") else ("", "", word)
        if not Path(value).is_absolute():
            return word
        path, here = Path(value), Path.cwd()
        value = str(path.relative_to(here)) if path.is_relative_to(here) else f".../{path.name}"
        return key + eq + value

    return "mitoseg " + shlex.join(public(w) for w in args)


def cmd_compare(a: argparse.Namespace) -> None:
    from mitoseg.compare import compare

    compare(a.out, a.dataset, a.data, _preset(a), a.epochs, a.minutes, a.seed,
            a.overwrite, progress=not a.quiet, command=public_command(sys.argv[1:]), tta=a.tta,
            resume=a.resume, changes=None if a.planes is None else {"planes": a.planes})


def cmd_data(a: argparse.Namespace) -> None:
    from mitoseg import datasets, download

    if a.action == "fetch":
        path = download.fetch(a.name, a.dest, a.overwrite, progress=not a.quiet, base_url=a.base_url)
        print(f"{a.name} is in {path}")
    else:
        found = download.data_dir(a.name, a.dest)
        derived = datasets.lucchi_dir() if a.name == "lucchi" and not found and a.dest is None else None
        if found:
            print(found)
        elif derived:  # what compare and `make demo` use instead
            print(f"{a.name}: the EPFL files are not found; `compare` uses {derived[0]} ({derived[1]}), "
                  f"`mitoseg data fetch {a.name}` downloads the originals")
        else:
            print(f"{a.name}: not found (run: mitoseg data fetch {a.name})")


def cmd_suggest(a: argparse.Namespace) -> None:
    from mitoseg.suggest import run_annotation, suggest

    rows = suggest(a.run, a.image, a.count, a.gap, a.annotated_slices, tta=a.tta, table=a.table, device=a.device,
                   overwrite=a.overwrite, progress=not a.quiet, box=a.box, labels=a.labels, unlabeled=a.unlabeled)
    if len(rows) < a.count:
        print(f"{len(rows)} of the {a.count} asked: no more lie apart from each other and from the annotated slices "
              "by the gap (--gap)")
    if a.box:
        print("rank  slice      y      x  height  width  uncertainty (bits)  predicted foreground")
        for r in rows:
            print(f"{r['rank']:>4}  {r['slice']:>5}  {r['y']:>5}  {r['x']:>5}  {r['height']:>6}  {r['width']:>5}  "
                  f"{r['uncertainty_bits']:>18.3f}  {r['foreground_fraction']:>19.1%}")
        print("annotate these boxes next (rows y..y+height-1, columns x..x+width-1 of each slice; slices count from 0: "
              "Fiji's slice 1 is 0), give every voxel nobody annotated one value, and train with --unlabeled VALUE")
        return
    print("rank  slice  uncertainty (bits)  predicted foreground")
    for r in rows:
        print(f"{r['rank']:>4}  {r['slice']:>5}  {r['uncertainty_bits']:>18.3f}  {r['foreground_fraction']:>19.1%}")
    picked = sorted(r["slice"] for r in rows)
    annotated = a.annotated_slices if a.annotated_slices is not None else run_annotation(a.run, a.image)
    annotated = None if annotated and annotated.strip().lower() == "none" else annotated
    done = f"{annotated.replace(' ', '')}," if annotated else ""  # pasted unquoted, it must hold
    if a.labels:  # annotated in labels of voxels nobody annotated: no list of slices to give
        print("annotate these slices next (slices count from 0: Fiji's slice 1 is 0), then train with --unlabeled "
              "VALUE as before")
        return
    print(f"annotate these slices next (slices count from 0: Fiji's slice 1 is 0), then train with --annotated-slices "
          f"{done}{','.join(map(str, picked))}")


def cmd_export(a: argparse.Namespace) -> None:
    from mitoseg.export import AUTHORS, export_bioimageio

    path = export_bioimageio(a.run, a.sample, a.bioimageio, overwrite=a.overwrite, license=a.license,
                             authors=a.author or AUTHORS)
    print(f"bioimage.io package: {path}")


def cmd_view(a: argparse.Namespace) -> None:
    from mitoseg.viewer import view

    view(a.paths, voxel_size=a.voxel_size)


def _dask_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Dask cluster (docs/cluster.md)")
    g.add_argument("--scheduler", choices=("single", "local"), default="single",
                   help="single: this process (default); local: a Dask LocalCluster of --workers processes")
    g.add_argument("--workers", type=arg("workers"), help="worker processes of --scheduler local (default 2)")
    g.add_argument("--dask-address", metavar="ADDRESS",
                   help="run the blocks on the Dask scheduler at tcp://host:port (or a scheduler file); "
                        "inputs and outputs must be on a filesystem the workers share")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mitoseg", description="Segment mitochondria in EM volumes with 2D/3D U-Nets.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--quiet", action="store_true", help="no progress bars (nor, with Dask, the line saying where "
                   "blocks run)")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a 2D or 3D U-Net (ResNet18 encoder) on an image and its labels")
    t.add_argument("image", help=IMAGE_HELP)
    t.add_argument("labels", help="label volume of the same shape (foreground: label > --label-threshold)")
    t.add_argument("--out", required=True, help="run folder (config, log, checkpoints)")
    t.add_argument("--dims", type=int, choices=(2, 3),
                   help="2 (default): a 2D U-Net on slices; 3: a 3D U-Net")
    t.add_argument("--preset", choices=("quick", "cpu", "full"),
                   help="quick: 3 minutes on a CPU; cpu: 30 minutes on 2 cores; full: the GPU preset (default)")
    t.add_argument("--quick", action="store_true", help="same as --preset quick")
    t.add_argument("--epochs", type=arg("epochs"), help="epochs to train (default: the preset's)")
    t.add_argument("--minutes", type=arg("minutes"), help="stop after this much training time")
    t.add_argument("--iterations-per-epoch", type=arg("iterations_per_epoch"),
                   help="iterations per epoch (default: the preset's; see README)")
    t.add_argument("--validate-every", type=arg("validate_every"), metavar="N",
                   help="validate every N epochs and after the last (default: the preset's; full: 5, else 1)")
    t.add_argument("--norm", choices=("batch", "instance"),
                   help="normalisation layers: batch (default) or instance (independent of the batch size)")
    t.add_argument("--bn-freeze", type=arg("bn_freeze"), metavar="ITERATION",
                   help="from this iteration on, BatchNorm statistics stay fixed and training uses them as "
                        "prediction does (default: never; it hurt the 3D model on CA1, results/README.md)")
    t.add_argument("--ema", type=arg("ema"), metavar="DECAY",
                   help="validate, keep and deliver an exponential moving average of the weights, DECAY per "
                        "step (default: off; 0.99 on CA1 at 600 iterations: 3D level with no averaging, 2D 0.02 "
                        "below it over two seeds, results/README.md)")
    t.add_argument("--elastic", type=arg("elastic"), metavar="P",
                   help="probability of an in-plane elastic deformation per training patch (default: 0, off; 0.5 "
                        "on CA1 gave the 2D model test IoU 0.841 and 0.720 over two seeds, the 3D model 0.704 and "
                        "0.703, level with the recipe, results/README.md)")
    t.add_argument("--gamma-field", type=arg("gamma_field"), metavar="P",
                   help="probability of a gamma (0.6-1.7) that varies smoothly across a training patch, beside "
                        "the whole-patch one (default: 0, off; 0.5 on CA1 left the 3D model losing 0.06-0.09 under "
                        "gamma 1.4 over two seeds, one 2D model 0.010, results/README.md)")
    t.add_argument("--context-slices", type=arg("context_slices"), metavar="K",
                   help="2D model: also give it the K slices above and below each slice as input channels "
                        "(2.5D; default 0; K = 1 on CA1 matched the plain model on validation and lost 0.048 test "
                        "IoU, results/README.md; no bioimage.io export)")
    t.add_argument("--planes", type=arg("planes"), metavar="N",
                   help="2D model: train on and predict along XY slices only (1, default) or along XY, ZX and ZY "
                        "slices, the prediction the mean of the three (3; near-isotropic voxels only; no "
                        "bioimage.io export; on CA1 test IoU 0.888 and 0.893 over two seeds against 0.886 and "
                        "0.885, at 3x the prediction time, results/README.md)")
    t.add_argument("--full-resolution", type=arg("full_resolution"), metavar="C",
                   help="give the decoder's last block C feature channels made from the input at full resolution "
                        "(default 0: none, the ResNet encoder starts at half resolution; 16 on CA1 scored as the "
                        "plain 2D model for a 1.23x step, results/README.md)")
    t.add_argument("--boundary-weight", type=arg("boundary_weight"), metavar="W",
                   help="weigh the cross-entropy of pixels within 2 pixels of a labelled outline 1 + W times "
                        "(default 0: off; 3 on CA1 cost the 2D model 0.006-0.008 test IoU, results/README.md)")
    t.add_argument("--normalize", choices=("percentile", "equalize"),
                   help="how grey levels reach the network: percentile (default: the 0.5-99.5 %% window, linear) "
                        "or equalize (histogram equalisation: blind to gamma changes; no bioimage.io export; "
                        "predict --match-training does it for either rule without retraining)")
    t.add_argument("--loader-workers", type=arg("loader_workers"), metavar="N",
                   help="processes preparing training batches (default: 0 on a CPU, up to 12 beside a GPU)")
    t.add_argument("--patch-xy", type=arg("patch_xy"), help="training patch width and height (pixels)")
    t.add_argument("--patch-z", type=arg("patch_z"), help="training patch depth (slices; 2D: slices per batch)")
    t.add_argument("--batch", type=arg("batch"), help="patches per iteration")
    t.add_argument("--lr", type=arg("lr"), help="peak learning rate of AdamW")
    t.add_argument("--val-fraction", type=arg("val_fraction"),
                   help="share of the X axis held out for validation (default 0.15)")
    t.add_argument("--seed", type=arg("seed"), help="random seed (default 0)")
    t.add_argument("--device", help="auto (default: CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:1, mps")
    t.add_argument("--fp32", action="store_true", help=FP32_HELP)
    t.add_argument("--label-threshold", type=arg("label_threshold"), help=LABEL_THRESHOLD_HELP)
    t.add_argument("--voxel-size", type=arg("voxel_size"), nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel size in nm (chooses the 3D encoder's strides; default: the one the image states, an "
                        "ImageJ TIFF's calibration or an OME-Zarr's scale, else 5 5 5)")
    t.add_argument("--annotated-slices", metavar="LIST",
                   help="only these slices are annotated, e.g. 0,40-43,120, counted from 0 (Fiji's slice 1 is 0; "
                        "the others are ignored)")
    t.add_argument("--unlabeled", type=arg("unlabeled"), metavar="VALUE",
                   help="label value of voxels nobody annotated (ignored in training and validation)")
    t.add_argument("--init", metavar="RUN", help="start from this run's (or checkpoint's) weights: fine-tuning")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("predict", help="predict probabilities for a whole volume, block by block, into Zarr")
    r.add_argument("image", help=IMAGE_HELP)
    r.add_argument("--model", required=True, action="append",
                   help="run folder or checkpoint (.pt); twice (e.g. a 2D and a 3D run): the mean of their "
                        "probabilities")
    r.add_argument("--out", required=True, help="probabilities, a .zarr path")
    r.add_argument("--mask", help="also write a binary mask here (.zarr)")
    r.add_argument("--threshold", type=arg("threshold"),
                   help="probability threshold of --mask, in (0, 1); default: the run's post-processing chosen on its "
                        "validation split (Z smoothing and threshold), else 0.5")
    r.add_argument("--dtype", choices=("uint8", "float16"), default="uint8",
                   help="stored probabilities: uint8 0..255 (default) or float16")
    r.add_argument("--tile-xy", type=arg("tile_xy"),
                   help="in-plane tile (default: 2D whole slices up to 2048x2048 pixels, else the run's tile)")
    r.add_argument("--tile-z", type=arg("tile_z"), help="tile depth of a 3D model (default: the run's)")
    r.add_argument("--overlap", type=arg("overlap"), help="tile overlap, 0 <= overlap < 1 (default: the run's)")
    r.add_argument("--block", type=arg("block"), nargs=3, metavar=("Z", "Y", "X"),
                   help="output block (a shard of one-slice chunks)")
    r.add_argument("--batch-size", type=arg("batch_size"), help="tiles per batch (default: by tile size and device)")
    r.add_argument("--tta", action="store_true", help="average over in-plane flips")
    r.add_argument("--planes", type=arg("planes"), metavar="N",
                   help="a 2D model predicts along 1 plane (XY slices) or 3 (XY, ZX and ZY slices, the mean: about "
                        "3x the time, near-isotropic voxels only; with several --model, the 2D ones); default: the "
                        "run's (train --planes)")
    r.add_argument("--match-training", action="store_true",
                   help="move the volume's grey levels onto the training volume's histogram first: undoes another "
                        "microscope's contrast, brightness and gamma (assumes similar tissue, no large empty areas)")
    r.add_argument("--voxel-size", type=arg("voxel_size"), nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel size in nm recorded with the outputs (default: the one the image states, OME-Zarr or "
                        "ImageJ TIFF, else the run's when its training data stated one, else none)")
    r.add_argument("--device", help="auto (default: CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:1, mps")
    r.add_argument("--fp32", action="store_true", help=FP32_HELP)
    r.add_argument("--resume", action="store_true", help="skip blocks an interrupted run finished")
    r.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _dask_options(r)
    r.set_defaults(func=cmd_predict, device="auto")

    lab = sub.add_parser("label", help="separate objects with 3D connected components; write labels and a table")
    lab.add_argument("input", help="probabilities or mask volume")
    lab.add_argument("--out", required=True, help="label volume, a .zarr path")
    lab.add_argument("--table", help="per-object CSV (id, voxels, volume_um3, centroid, bbox, and shape: "
                     "surface_um2, sphericity, equivalent_diameter_um, length_um, width_um, elongation, "
                     "touches_border)")
    lab.add_argument("--threshold", type=arg("value_threshold"),
                     help=THRESHOLD_HELP.replace("(default 0.5, ", "(default: the run's choice kept with them, "
                                                 "blurred along Z as it chose, else 0.5; "))
    lab.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=26,
                     help="voxel neighbourhood: 6 (faces), 18 (+ edges) or 26 (+ corners, default)")
    lab.add_argument("--min-size", type=arg("min_size"),
                     help="drop objects with fewer voxels (default: the run's choice kept with mitoseg outputs, "
                          "else 0)")
    lab.add_argument("--voxel-size", type=arg("voxel_size"), nargs=3, metavar=("Z", "Y", "X"),
                     help="voxel size in nm, for the table's volumes (default: the input's, else 1 1 1)")
    lab.add_argument("--block", type=arg("block"), nargs=3, metavar=("Z", "Y", "X"),
                     help="block, a shard of one-slice chunks (default 64 512 512, widened to whole chunks of the "
                          "input and made shallower to as many voxels: e.g. whole planes of predict's outputs)")
    lab.add_argument("--resume", action="store_true", help="skip blocks an interrupted run finished")
    lab.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _dask_options(lab)
    lab.set_defaults(func=cmd_label)

    e = sub.add_parser("evaluate", help="precision, recall, F1, Jaccard, accuracy, mean IoU on a whole volume")
    e.add_argument("prediction", help="probabilities or mask")
    e.add_argument("truth", help="ground-truth labels")
    e.add_argument("--threshold", type=arg("value_threshold"), help=THRESHOLD_HELP)
    e.add_argument("--label-threshold", type=arg("label_threshold"), help=LABEL_THRESHOLD_HELP)
    e.add_argument("--unlabeled", type=arg("unlabeled"), metavar="VALUE",
                   help="the truth's value of voxels nobody annotated (a partial annotation): left out of the scores")
    e.add_argument("--places", action="store_true",
                   help="also say where the errors lie: in whole objects (missed or false) or how near the true "
                        "surface (reads both volumes into memory)")
    e.add_argument("--objects", action="store_true",
                   help="also object precision, recall and F1: each volume's 26-connected objects matched one to "
                        "one at IoU >= 0.5 (reads both volumes into memory); the prediction's objects as they are: for "
                        "objects after a minimum size, score `mitoseg label`'s output with --threshold 1")
    e.add_argument("--voxel-size", type=arg("voxel_size"), nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel size in nm, for --places' distances (default: the one either volume states, else 1 1 1)")
    e.add_argument("--json", help="also write the scores here (refused if it exists, unless --overwrite)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    _dask_options(e)
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("compare", help="the study end to end: train 2D and 3D, predict, evaluate, label, report")
    c.add_argument("--out", default="report", help="report folder (default: report)")
    c.add_argument("--dataset", default="auto", choices=("auto", "lucchi", "drosophila"),
                   help="lucchi: EPFL CA1; drosophila: the 20-section ssTEM stack; auto: CA1 when found")
    c.add_argument("--data", help="folder with the data set's files")
    c.add_argument("--quick", action="store_true", help="same as --preset quick (the demo)")
    c.add_argument("--preset", choices=("quick", "cpu", "full"),
                   help="quick: 3 minutes per model (demo); cpu: 30 minutes per model on 2 cores (about 95 "
                        "minutes in all); full: the GPU preset (default)")
    c.add_argument("--epochs", type=arg("epochs"), help="equal epochs for both models")
    c.add_argument("--minutes", type=arg("minutes"), help="equal training minutes for each model")
    c.add_argument("--seed", type=arg("seed"), default=0, help="random seed of both trainings")
    c.add_argument("--planes", type=arg("planes"), metavar="N",
                   help="the 2D model's slice planes, as `train --planes` (1: XY, default; 3: XY, ZX and ZY)")
    c.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="also score test-time augmentation (4 in-plane flips; 4x the inference time); "
                        "default: on for every preset but quick")
    c.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    c.add_argument("--resume", action="store_true",
                   help="go on with an interrupted compare (same settings): keep its finished models and continue "
                        "an unfinished training from its last checkpoint")
    c.set_defaults(func=cmd_compare)

    d = sub.add_parser("data", help="find or download public data sets")
    d.add_argument("action", choices=("fetch", "where"), help="fetch: download; where: say where it is")
    d.add_argument("name", nargs="?", default="lucchi", choices=("lucchi", "lucchi-volume"),
                   help="lucchi: the CA1 train/test pair; lucchi-volume: the full CA1 volume")
    d.add_argument("--dest", help="folder to download into (default: the cache)")
    d.add_argument("--base-url", help="a mirror holding the same files")
    d.add_argument("--overwrite", action="store_true", help="download again over existing files")
    d.set_defaults(func=cmd_data)

    s = sub.add_parser("suggest", help="rank slices (or boxes) to annotate next by the model's uncertainty")
    s.add_argument("run", help="training run folder (or checkpoint) of the current model")
    s.add_argument("image", help=IMAGE_HELP)
    s.add_argument("--count", type=arg("count"), default=8, help="slices (or boxes) to suggest (default 8)")
    s.add_argument("--box", type=arg("box"), metavar="PIXELS",
                   help="suggest PIXELS x PIXELS squares within slices instead of whole slices")
    s.add_argument("--gap", type=arg("gap"),
                   help="suggested slices (boxes at one place) lie more than this many slices apart and from the "
                        "annotated slices (default: depth / (4 x suggestions per place) apart, depth / (4 x "
                        "suggestions) from the annotated slices, less where that leaves none)")
    s.add_argument("--annotated-slices", metavar="LIST",
                   help="slices already annotated, e.g. 0,40-43, counted from 0 (Fiji's slice 1 is 0): never "
                        "suggested, nor their neighbours (default: the run's own on its training image; none: none)")
    s.add_argument("--labels", metavar="LABELS",
                   help="the labels annotated so far, of voxels nobody annotated one value (--unlabeled): slices and "
                        "boxes more than half annotated are not suggested")
    s.add_argument("--unlabeled", type=arg("unlabeled"), metavar="VALUE",
                   help="with --labels: the value of voxels nobody annotated (default: the run's)")
    s.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="average 4 in-plane flips, so disagreement counts as uncertainty (default: on)")
    s.add_argument("--table", help="write every slice's uncertainty to this CSV")
    s.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --table")
    s.set_defaults(func=cmd_suggest)

    x = sub.add_parser("export", help="a trained run as a bioimage.io model package (needs: pip install "
                                      "\"mitoseg[bioimageio]\")")
    x.add_argument("run", help="training run folder (or checkpoint)")
    x.add_argument("--bioimageio", required=True, metavar="MODEL.zip", help="the package to write (.zip)")
    x.add_argument("--sample", required=True, metavar="IMAGE",
                   help="an image volume the model is for; a central crop becomes the package's test input")
    x.add_argument("--license", default="MIT", metavar="SPDX",
                   help="the package's licence, an SPDX id (default MIT; e.g. CC-BY-4.0; weigh your training data's)")
    x.add_argument("--author", action="append", metavar="NAME",
                   help="a name the package credits (repeat for several; default: mitoseg developers)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing package")
    x.set_defaults(func=cmd_export)

    cv = sub.add_parser("convert", help="a volume to an ImageJ TIFF (for Fiji, calibrated in nm), Zarr or OME-Zarr")
    cv.add_argument("input", help="any volume mitoseg reads (TIFF, slice folder, .h5:NAME, .zarr, .ome.zarr, .npy)")
    cv.add_argument("--out", required=True, help="*.tif (ImageJ hyperstack), *.zarr, *.ome.zarr, or "
                                                 "IMAGE.ome.zarr/labels/NAME (an image-label of that image)")
    cv.add_argument("--voxel-size", type=arg("voxel_size"), nargs=3, metavar=("Z", "Y", "X"),
                    help="voxel size in nm to record (default: the one the input states)")
    cv.add_argument("--block", type=arg("block"), nargs=3, metavar=("Z", "Y", "X"),
                    help="Zarr block: a shard of one-slice chunks (Zarr v2: the chunk; default 64 512 512)")
    cv.add_argument("--labels", action="store_true",
                    help="the volume holds masks or object ids: an OME-Zarr pyramid of nearest voxels, never means "
                         "(the default for mitoseg's masks and labels and for integers of 32 bits or more)")
    cv.add_argument("--zarr-format", type=int, choices=(2, 3),
                    help="2: Zarr v2 (an OME-Zarr then NGFF 0.4), for tools that read no Zarr v3 (zarr-python 2, "
                         "NGFF 0.4 readers); default 3 (NGFF 0.5)")
    cv.add_argument("--overwrite", action="store_true", help="replace an existing output")
    cv.set_defaults(func=cmd_convert)

    v = sub.add_parser("view", help="open outputs in napari (needs: pip install \"mitoseg[napari]\")")
    v.add_argument("paths", nargs="+", metavar="PATH",
                   help="a predict or label output (.zarr, .ome.zarr), a compare report folder, or an image volume")
    v.add_argument("--voxel-size", type=arg("voxel_size"), nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel size in nm of volumes that state none (default: the one the others state, else "
                        "none: shown in pixels)")
    v.set_defaults(func=cmd_view)
    p.commands = sub.choices  # each command's parser: its mistakes are said in its name (`main`)
    for command in p.commands.values():  # `mitoseg label ... --quiet` as `mitoseg --quiet label ...`
        dask = any("--scheduler" in x.option_strings for x in command._actions)
        command.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars"
                             + (", nor the line saying where Dask blocks run" if dask else ""))
    return p


def _after_interrupt(a: argparse.Namespace) -> str:
    """What the user can do after Ctrl-C: resume only where something was left to resume from."""
    from mitoseg import io

    if a.command == "train" and (Path(a.out) / "last.pt").exists():
        from mitoseg.train import going_on_from  # imported already: the training ran

        return f"run the same command with --resume {going_on_from(a.out) or 'to go on from its last checkpoint'}"
    left = _unfinished(a)
    if left:
        return (f"run the same command with --resume to go on from what is finished "
                f"({', '.join(p.name for p in left)})")
    if a.command == "compare" and (io.partial_path(a.out) / "compare.json").exists():
        return "run the same command with --resume to keep the finished models and go on from the last checkpoint"
    return "nothing was left half-written (no --resume needed)"


def _kept(a: argparse.Namespace, mine: set[str]) -> str:
    """What an error leaves behind that the user should know of: the finished part of a block output, when this
    process wrote it (its output among the `io.claim`s it took, `mine`: not another process's unfinished output
    that refused it), and not when --resume was given (the error is about resuming it)."""
    ours = getattr(a, "out", None) is not None and str(Path(a.out).resolve()) in mine
    left = _unfinished(a) if ours and not getattr(a, "resume", False) else []
    if left:
        return (f"; what was finished is kept ({', '.join(str(p) for p in left)}): after fixing the cause, the same "
                "command with --resume goes on from it")
    return ""


def _unfinished(a: argparse.Namespace) -> list[Path]:
    """What a stopped predict or label left to go on from: its outputs' unfinished blocks (``.partial``), the
    members of a mean of models, finished labels whose table was not written."""
    from mitoseg import io

    if a.command not in ("predict", "label"):
        return []
    # no torch imported (not mitoseg.predict): a Ctrl-C may have stopped its import
    left = io.unfinished((a.out, getattr(a, "mask", None)), members=a.command == "predict")
    if a.command == "label" and a.table and not a.overwrite and Path(a.out).exists() and not Path(a.table).exists() \
            and Path(a.out).resolve() != io.split_path(a.input)[0].resolve() and _labels_of(a.input, a.out):
        left.append(Path(a.out))
    return left


def _written_by(path: str) -> str | None:
    """Which run wrote the mitoseg output at `path` (its attribute "run", a run's own id; "" for outputs without
    it); None for none there."""
    from mitoseg import io

    try:
        return io.attributes(io.open_volume(path)).get("run", "") if Path(path).exists() else None
    except MitosegError:
        return None


def _labels_of(input: str, path: str) -> bool:
    """Whether `path` is a mitoseg labels output of `input` (what `label` writes before its table; its settings'
    "source", `io.content_id`): the labels of another input are an existing output, not a stopped run's."""
    from mitoseg import io

    try:
        labels = io.open_volume(path)
        return io.stated_kind(labels) == "labels" and \
            io.attributes(labels).get("settings", {}).get("source") == io.content_id(io.open_volume(input))
    except MitosegError:  # not a volume: the command's own checks say what it is
        return False


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


POSITIONAL = {"image", "labels", "input", "prediction", "truth", "run", "paths"}  # argument names without --
PATHS = POSITIONAL | {"out", "init", "model", "mask", "table", "json", "data", "dest", "bioimageio", "sample"}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mitoseg` console script; returns the exit status."""
    try:
        p = parser()
        args, extra = p.parse_known_args(argv)
        if extra:  # a word too many (`--voxel-size 5 5 5 5`): in the command's name, as its other mistakes
            p.commands.get(args.command, p).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # a mistake in the arguments (already one line on stderr); --help and --version exit 0
        if e.code:
            return int(e.code)
        raise
    empty = next((k for k, v in vars(args).items() if v == "" or isinstance(v, list) and "" in v), None)
    if empty is not None:  # an unset shell variable (`--table "$TABLE"`): before, skipped in silence or "." taken
        name = empty if empty in POSITIONAL else "--" + empty.replace("_", "-")
        print(f"mitoseg {args.command}: error: {name} is empty{': give a path' if empty in PATHS else ''}",
              file=sys.stderr)
        return 2
    for key, value in vars(args).items():  # `--out=~/x`: the shell expands ~ only at the start of a word
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, key, os.path.expanduser(value))
        elif isinstance(value, list):
            setattr(args, key, [os.path.expanduser(v) if isinstance(v, str) and v.startswith("~") else v
                                for v in value])
    try:  # MONAI asks for the user's name as it is imported: a user id without a passwd entry (a container's --user)
        getpass.getuser()  # and no $USER raised KeyError there
    except (KeyError, OSError):
        os.environ["USER"] = str(os.getuid())
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # its errors on corrupt files precede our one line
    # zarr's event loop, stopped by Ctrl-C inside a read or write, logs each of its pending tasks at exit (asyncio)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    from mitoseg import io, memory

    memory.one_arena()  # before the work starts threads
    # SIGTERM (kill, a batch system's time limit) as Ctrl-C: the same cleanup (temporary folders, unfinished
    # files) and the same one line; the previous handler is put back for a caller that goes on (tests)
    terminated = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() \
        else None
    left: list[Path] = []
    taken = set(io.TAKEN)
    try:
        # as train and compare: an earlier run's finished work is never discarded silently
        left = [] if getattr(args, "resume", False) or getattr(args, "overwrite", False) else _unfinished(args)
        io.refuse_left([getattr(args, k, None) for k in ("out", "mask", "table")], left)
        args.func(args)
        return 0
    except MitosegError as e:
        said, status = f"mitoseg: error: {e}", 2
    except OSError as e:  # a place the system refused (no space, no permission...) past mitoseg's own checks
        said, status = f"mitoseg: error: {e.strerror or str(e) or type(e).__name__}" + (f": {e.filename}" if e.filename
                                                                            else ""), 2
    except KeyboardInterrupt as e:
        said = f"the run that was at {e.restored} is as it was" if getattr(e, "restored", None) else \
            _after_interrupt(args)
        said, status = f"mitoseg: interrupted; {said}", 130
    finally:
        if terminated is not None:
            signal.signal(signal.SIGTERM, terminated)
        mine = io.TAKEN - taken  # what this command claimed, released or not
        for key in list(io.CLAIMS):  # the command is over: no lock file left beside its outputs
            io.release(key)
    # said once the exception and the work's frames are gone: a progress bar stopped midway is closed with them
    # and ends its line, so this line starts its own
    print(said + ("" if status == 130 or left else _kept(args, mine)), file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
