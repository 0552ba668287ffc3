"""The main job: train the 2D and the 3D U-Net alike, predict the test volume, evaluate, label, report.

The report folder holds ``report.md`` and ``report.json`` (the study's Table 1 layout, with the
study's own numbers beside ours), ``compare.json`` (the job's settings), one run folder per model
(config, log, checkpoints, test probabilities), ``model_2D+3D`` (the mean of the two models' probabilities,
evaluated as a third row) and the figures.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from mitoseg import datasets, download, instances, io, memory, metrics, plots, postprocess
from mitoseg.config import PRESETS, Config, other_planes
from mitoseg.data import VAL_MARGIN, Volume, split
from mitoseg.errors import MitosegError
from mitoseg.predict import default_tile, input_window, mean_probabilities, plan, predict_volume, predicted_alike
from mitoseg.train import choose_postprocessing, learned, load_model, train, versions

# Table 1 of the reference study (Pelapur, M&M 2021): 2D U-Net 1000 epochs, 3D U-Net 25 epochs.
STUDY = {
    "2D": {"precision": 0.5062, "recall": 0.9734, "f1": 0.6660, "study_jaccard": 0.9481, "epochs": 1000,
           "seconds_per_epoch": 23, "train_minutes": 383},
    "3D": {"precision": 0.3146, "recall": 0.9224, "f1": 0.4692, "study_jaccard": 0.8892, "epochs": 25,
           "seconds_per_epoch": 75, "train_minutes": 31},
}


# Published foreground IoU on the EPFL CA1 test volume (EPFL labels unless said), for the report.
PUBLISHED = [
    ("PyTorch Connectomics 3D residual U-Net (threshold and median filter chosen on the test set)", 0.8918),
    ("Xiao et al. 2018, 3D residual FCN", 0.900),
    ("CEM500K-pretrained ResNet50 U-Net (Lucchi++ labels)", 0.895),
]
MONITOR_SLICES = 32  # the test volume's central slices scored at every validation (test IoU against time)


@dataclass
class Benchmark:
    """A train/test pair of volumes with binary masks, and what they are (in words, never a path)."""

    name: str
    description: str
    train_image: np.ndarray
    train_mask: np.ndarray
    test_image: np.ndarray
    test_mask: np.ndarray
    voxel_size: tuple[float, float, float]


def load_benchmark(name: str = "auto", data: str | Path | None = None) -> Benchmark:
    """The study's EPFL CA1 (Lucchi) data when found, else (name 'auto') the Drosophila VNC stack.

    Lucchi: training.tif / testing.tif with their ground truth, 5 nm isotropic: the EPFL files when
    found (``--data``, ``$MITOSEG_DATA``, ``../shared/data/lucchi``, the cache), else the derived public
    copy in ``../shared/data/lucchi-derived``.
    Drosophila: the 20 x 1024 x 1024 ssTEM stack split in X halves (left trains, right tests), masks
    binarised at > 127 (anti-aliased PNGs), voxels 50 x 4.6 x 4.6 nm.
    A `data` folder given is the one used: 'auto' looks there for either data set, never elsewhere.
    """
    if data is not None and not Path(data).is_dir():
        raise MitosegError(f"--data {data}: no such folder")
    if name in ("auto", "lucchi"):
        found = datasets.lucchi_dir(data)
        if found is not None:
            folder, provenance = found
            tr, trm = io.load_pair(folder / "training.tif", folder / "training_groundtruth.tif")
            te, tem = io.load_pair(folder / "testing.tif", folder / "testing_groundtruth.tif")
            return Benchmark("lucchi", provenance, tr, trm, te, tem, (5.0, 5.0, 5.0))
        if name == "lucchi":
            download.paths("lucchi", data)  # raises the helpful message
    if name == "auto" and data is not None and not (Path(data) / "raw").is_dir():
        raise MitosegError(f"--data {data} holds neither the CA1 volumes (training.tif, testing.tif and their "
                           "ground truth) nor the Drosophila stack (raw/, mitochondria/)")
    if name in ("auto", "drosophila"):
        raw, mask = datasets.drosophila(data)
        half = raw.shape[2] // 2
        return Benchmark("drosophila", "Drosophila VNC ssTEM stack 1 (Gerhard et al.); "
                         "train = left half in X, test = right half",
                         raw[:, :, :half], mask[:, :, :half], raw[:, :, half:], mask[:, :, half:],
                         (50.0, 4.6, 4.6))
    raise MitosegError(f"unknown data set {name!r}: use auto, lucchi or drosophila")


def patch_depth(slices: int, voxel_size, dims: int = 3, most: int = 32) -> int:
    """The deepest 3D patch (at most `most` slices) that needs no padding in the model: a multiple of
    the encoder's total Z stride that fits in `slices` (e.g. 32 on CA1, 20 on a 20-section ssTEM stack)."""
    from mitoseg.models import encoder_strides

    z_stride = int(np.prod([s[0] for s in encoder_strides(voxel_size, dims)]))
    fits = min(most, slices) // z_stride * z_stride
    return fits if fits > 0 else min(most, slices)


def configs(preset: str, epochs: int | None, minutes: float | None, voxel_size, seed: int = 0,
            changes: dict | None = None, slices: int | None = None) -> list[Config]:
    """The two configs, identical but for dims. Presets: `quick` (the 3-minute demo), `cpu` (30 minutes
    per model on 2 cores), `full` (for a GPU). `changes` overrides any other Config field for both;
    `slices` (the training volume's depth) caps the patch depth without padding (`patch_depth`)."""
    if preset not in PRESETS:
        raise MitosegError(f"unknown preset {preset!r}: use {', '.join(sorted(set(PRESETS)))}")
    budget = dict(changes or {})
    if epochs is not None:
        budget["epochs"] = epochs
        budget["minutes"] = minutes
    elif minutes is not None:
        budget.update(epochs=100_000, minutes=minutes)
    if slices is not None and "patch_z" not in budget:
        default_z = PRESETS[preset](3).patch_z
        budget["patch_z"] = patch_depth(slices, voxel_size, most=default_z)
    return [PRESETS[preset](dims, voxel_size=tuple(voxel_size), seed=seed, **budget) for dims in (2, 3)]


def _predict(model, cfg: Config, image: np.ndarray, path: Path, tta: bool, progress: bool,
             window: tuple[float, ...] | None = None, resume: bool = False) -> float:
    """Probabilities uint8 (0..255) of a whole volume through the product's blockwise predictor, written to the
    Zarr array `path`; returns the seconds it took. With `resume`, a finished `path` of this model and these
    settings (`predict.predicted_alike`) is kept, with the seconds it took then, and an unfinished one goes
    on from its finished blocks; anything else is predicted anew."""
    t0 = time.perf_counter()
    tile = default_tile(cfg.dims, image.shape, cfg.tile, cfg.slice_planes)
    settings = plan(image, cfg.dims, tile, cfg.overlap, window=window or input_window(model, image), tta=tta,
                    amp=cfg.amp, planes=cfg.slice_planes)
    if resume and predicted_alike(path, settings, model):
        return float(io.open_volume(path).attrs["seconds"]["wall"])
    go_on = resume and predicted_alike(io.partial_path(path), settings, model)
    predict_volume(model, image, path, cfg.dims, tile, cfg.overlap, amp=cfg.amp, tta=tta, overwrite=True,
                   resume=go_on, progress=progress, window=settings.window,
                   attrs={"voxel_size": tuple(cfg.voxel_size)})  # opened alone (napari, evaluate), at its size
    return time.perf_counter() - t0


def stale_validation(folder: Path, val: Volume) -> bool:
    """Whether the validation probabilities in `folder` were predicted without the margin `split` now gives the
    strip (a compare begun before 2026-12-07): narrower than `val`'s image."""
    path = folder / "val_probs.zarr"
    return path.exists() and io.open_volume(path).shape[2] != val.image.shape[2]


PROBABILITIES = ("val_probs.zarr", "test_probs.zarr", "test_probs_tta.zarr")  # what a run folder's evaluation saves
ENSEMBLE = "2D+3D"  # the report's name of the mean of the two models' probabilities


def average_runs(members: list[Path], folder: Path) -> None:
    """Write into `folder` the voxel-wise mean (`predict.mean_probabilities`) of the probabilities that every
    one of the `members` run folders holds (`PROBABILITIES`): an ensemble, evaluated like one model."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in PROBABILITIES:
        paths = [m / name for m in members]
        if not all(p.exists() for p in paths):
            continue
        first = io.open_volume(paths[0])
        mean = mean_probabilities([first[:], *(io.open_volume(path)[:] for path in paths[1:])])
        zarr.create_array(str(folder / name), data=mean, chunks=(32, 256, 256), overwrite=True,
                          attributes={k: first.attrs[k] for k in ("voxel_size", "kind") if k in first.attrs})


def _scores(mask: np.ndarray, truth: np.ndarray, min_size: int, labels: np.ndarray | None = None) -> dict:
    """Voxel scores and object F1 of one mask (Z, Y, X) against the truth (Z, Y, X), both {0, 1}: the mask's
    objects of at least `min_size` voxels (26-connected; `labels`: already labelled so) matched against every
    object of the truth, so every model and post-processing is scored against the same objects."""
    voxel = metrics.scores(metrics.confusion(mask, truth))
    if labels is None:
        labels = instances.label(mask, connectivity=26, min_size=min_size)
    objects = metrics.match_instances(labels, instances.label(truth, 26), 0.5)
    del labels
    memory.release()
    row = {k: voxel[k] for k in ("precision", "recall", "f1", "jaccard", "accuracy", "mean_iou")}
    return {**row, "object_f1_iou50": objects["f1"], "objects_predicted": objects["n_pred"],
            "objects_true": objects["n_true"], "object_min_size": min_size}


def run_model(cfg: Config, bench: Benchmark, folder: Path, progress: bool, tta: bool = True,
              monitor: bool = True, resume: bool = False) -> dict:
    """Train one model into `folder` and evaluate it (`evaluate_model`); returns one report row: the
    evaluation's, plus the training's epochs, voxels seen, best validation IoU, seconds and peak memory.
    `monitor`: score the test volume's central slices after every epoch too (the test curve of the
    IoU-against-time figure). `resume`: continue the training an interrupted run left in `folder` from its
    last checkpoint (`train`'s resume), where there is one; else train from the start."""
    z0 = max(0, (bench.test_image.shape[0] - MONITOR_SLICES) // 2)
    test_window = io.intensity_range(bench.test_image, rule=cfg.normalize)
    test_part = Volume(bench.test_image[z0:z0 + MONITOR_SLICES], bench.test_mask[z0:z0 + MONITOR_SLICES],
                       test_window)  # normalised as the whole test volume is
    go_on = resume and (folder / "last.pt").exists()
    memory.reset_peak()  # this model's peak, not the one trained before it
    summary = train(cfg, bench.train_image, bench.train_mask, folder, resume=go_on, overwrite=not go_on,
                    progress=progress, monitor=test_part if monitor else None,
                    postprocessing=False)  # chosen below, on the validation split's TTA probabilities
    row = evaluate_model(folder, bench, progress, tta, cfg.device, resume)
    _, val = split(bench.train_image, bench.train_mask, cfg.val_fraction)
    return {
        **row,
        "epochs": summary["epochs"], "iterations": summary["iterations"],
        "voxels_seen": summary["iterations"] * cfg.samples_per_batch * int(np.prod(cfg.patch)),
        "best_val_iou": summary["best_val_iou"], "best_val_iou_any_threshold": summary["best_val_iou_any_threshold"],
        "skipped_steps": summary["skipped_steps"],
        "seconds_per_epoch": summary["seconds_per_epoch"], "seconds_per_iteration": summary["seconds_per_iteration"],
        "train_seconds": summary["train_seconds"],
        "peak_memory_mib": max(summary["peak_memory_mib"], row["peak_memory_mib"]),
        "learned": learned(summary["best_val_iou_any_threshold"], float(val.mask.mean())),
    }


def evaluate_model(folder: Path, bench: Benchmark, progress: bool = True, tta: bool = True,
                   device: str = "auto", resume: bool = False) -> dict:
    """Evaluate the trained run in `folder` as `compare` does: predict its validation split and the test
    volume raw and with test-time augmentation (TTA, unless `tta` is False) into `folder`
    (`PROBABILITIES`), then score them (`evaluate_probabilities`); a 2D model on near-isotropic voxels also gets
    its post-processing chosen for the planes it was not trained on (`train.choose_postprocessing`). Returns its
    scores with the inference seconds and peak memory. `resume`: keep what an interrupted evaluation of the same
    model predicted (`_predict`)."""
    model, cfg = load_model(folder, device)
    test_window = io.intensity_range(bench.test_image, rule=cfg.normalize)
    window = io.intensity_range(bench.train_image, rule=cfg.normalize)  # the validation split: as in training
    _, val = split(bench.train_image, bench.train_mask, cfg.val_fraction, window)
    _predict(model, cfg, val.image, folder / "val_probs.zarr", tta, progress, val.window, resume)
    infer_s = _predict(model, cfg, bench.test_image, folder / "test_probs.zarr", False, progress, test_window, resume)
    tta_s = _predict(model, cfg, bench.test_image, folder / "test_probs_tta.zarr", True, progress,
                     test_window, resume) if tta else None
    row = evaluate_probabilities(folder, bench, tta, cfg.val_fraction)
    # the choice for the planes a 2D model was not trained on, for `predict --planes` of this run (not scored)
    if other_planes(cfg):
        choose_postprocessing(folder, val, cfg, device, progress=False, tta=tta, planes=[other_planes(cfg)])
    return {
        **row, "inference_seconds": infer_s, "inference_tta_seconds": tta_s,
        "inference_voxels_per_second": bench.test_image.size / infer_s,
        "peak_memory_mib": memory.peak_mib(next(model.parameters()).device),
    }


def evaluate_probabilities(folder: Path, bench: Benchmark, tta: bool = True, val_fraction: float = 0.15) -> dict:
    """Score the probabilities saved in `folder` (`PROBABILITIES`; a model's or an ensemble's): choose the
    post-processing on the validation split's, score the test volume's raw, with TTA (unless `tta` is False)
    and with (TTA +) post-processing, label the last and say where its errors lie (`metrics.error_places`).
    Writes postprocessing.json and test_labels.zarr into `folder`; returns the final variant's scores at the
    top level, each variant under "variants", and the validation split's IoU under the chosen post-processing
    ("validation_jaccard"), which ranks a model against the ensemble without the test volume."""
    _, val = split(bench.train_image, bench.train_mask, val_fraction)
    if stale_validation(folder, val):
        raise MitosegError(f"{folder / 'val_probs.zarr'} was predicted before validation took {VAL_MARGIN} columns "
                           "of context (2026-12-07): evaluate the model again (compare.evaluate_model)")
    pp, candidates = postprocess.choose(val.scored(io.open_volume(folder / "val_probs.zarr")[:]), val.mask)
    postprocess.save(folder, pp, candidates, "tta" if tta else "raw")  # replaces the one `train` chose on raw
    memory.release()
    probs = io.open_volume(folder / "test_probs.zarr")[:]
    variants = {"raw": _scores(probs >= 128, bench.test_mask, 0)}
    if tta:
        del probs
        probs = io.open_volume(folder / "test_probs_tta.zarr")[:]
        variants["tta"] = _scores(probs >= 128, bench.test_mask, 0)
    final = postprocess.apply(probs, pp)
    del probs
    labels = instances.label(final, connectivity=26, min_size=pp.min_size)
    variants["tta_post" if tta else "post"] = _scores(final, bench.test_mask, pp.min_size, labels)
    # compressed: ~1 % of npy; replaced when a saved run is evaluated again
    zarr.create_array(str(folder / "test_labels.zarr"), data=labels, chunks=(32, 256, 256), overwrite=True,
                      attributes={"voxel_size": tuple(bench.voxel_size), "kind": "labels"})
    del labels
    errors = metrics.error_places(final, bench.test_mask, bench.voxel_size)
    del final
    memory.release()
    return {**variants[list(variants)[-1]], "variants": variants, "postprocessing": pp.as_dict(), "errors": errors,
            "validation_jaccard": max(c["jaccard"] for c in candidates)}  # the chosen post-processing's


ROWS = [("precision", "Precision"), ("recall", "Recall"), ("f1", "F1 / Dice"), ("jaccard", "Jaccard (foreground IoU)"),
        ("accuracy", "Accuracy (voxels right)"), ("mean_iou", "Mean IoU (fg, bg)"),
        ("study_jaccard", "Study's 'Jaccard Index/Accuracy'"), ("object_f1_iou50", "Object F1 (IoU >= 0.5)"),
        ("validation_jaccard", "Validation IoU (chosen post-processing)"),
        ("epochs", "Epochs"), ("voxels_seen", "Training voxels seen (millions)"),
        ("seconds_per_epoch", "Seconds per epoch"), ("train_seconds", "Training time (s)"),
        ("inference_seconds", "Inference time, test volume (s)"), ("peak_memory_mib", "Peak memory (MiB)")]
VARIANTS = {"raw": "raw (threshold 0.5)", "tta": "+ TTA (4 in-plane flips)", "tta_post": "+ TTA + post-processing",
            "post": "+ post-processing"}


def _rows(results: dict) -> dict[str, dict]:
    """The report's rows by name: the two trained models, then their ensemble where the report has one."""
    return {**results["models"], **({ENSEMBLE: results["ensemble"]} if results.get("ensemble") else {})}


def _title(name: str) -> str:
    """A row's name in figures: "2D U-Net", "3D U-Net", "2D + 3D U-Nets (mean)"."""
    return "2D + 3D U-Nets (mean)" if name == ENSEMBLE else f"{name} U-Net"


def _cell(value, key: str = "") -> str:
    if value is None:
        return "—"
    if key == "voxels_seen":
        return f"{value / 1e6:,.0f}"
    if isinstance(value, bool) or isinstance(value, int):
        return f"{value:,}" if not isinstance(value, bool) else str(value)
    if isinstance(value, float):
        return f"{value:.4f}" if value <= 1.0 else f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"
    return str(value)


def table_markdown(results: dict) -> str:
    """The study's Table 1 with our two models and their ensemble (final variant) beside the study's numbers."""
    lines = ["| Metric | mitoseg 2D | mitoseg 3D | mitoseg 2D + 3D (mean) | study 2D | study 3D |",
             "|---|---|---|---|---|---|"]
    for key, title in ROWS:
        ours = [_rows(results).get(d, {}).get(key) for d in ("2D", "3D", ENSEMBLE)]
        study = [STUDY[d].get(key) for d in ("2D", "3D")]
        if key == "train_seconds":
            study = [STUDY[d]["train_minutes"] * 60.0 for d in ("2D", "3D")]
        lines.append(f"| {title} | " + " | ".join(_cell(v, key) for v in ours + study) + " |")
    return "\n".join(lines) + "\n"


def variants_markdown(results: dict) -> str:
    """What test-time augmentation and the validation-chosen post-processing add, per model."""
    keys = [("jaccard", "IoU"), ("f1", "F1"), ("precision", "precision"), ("recall", "recall"),
            ("accuracy", "accuracy"), ("object_f1_iou50", "object F1")]
    lines = ["| model | prediction | " + " | ".join(t for _, t in keys) + " |", "|---|---|" + "---|" * len(keys)]
    for d, row in _rows(results).items():
        for v, scores in row["variants"].items():
            empty = scores.get("tp", 1) + scores.get("fp", 1) == 0  # precision 0 / 0, taken as 1: said
            lines.append(f"| {d} | {VARIANTS[v]} | " + " | ".join(
                f"{scores[k]:.4f}" + (" (nothing predicted)" if empty and k == "precision" else "") for k, _ in keys)
                + " |")
    return "\n".join(lines) + "\n"


def errors_markdown(results: dict) -> str:
    """Where each model's final errors lie (`metrics.error_places`): in whole objects, near the true
    surface or farther, and the IoU each kind costs; an empty string for rows without them."""
    widths = metrics.ERROR_WIDTHS
    lines = ["| model | IoU | FP / FN voxels | in whole objects (missed or false) | "
             + " | ".join(f"within {w} voxel{'s' * (w > 1)} of the true surface" for w in widths)
             + " | farther | IoU if the whole-object errors were right | IoU if the errors within "
             + f"{widths[1]} voxels were right |", "|---|---|---|---|" + "---|" * (len(widths) + 3)]
    for d, row in _rows(results).items():
        e = row.get("errors")
        if not e:
            continue
        wrong = e["fp"] + e["fn"]
        whole = e["fp_whole"] + e["fn_whole"]
        near = [e[f"fp_near_{w}"] + e[f"fn_near_{w}"] for w in widths]
        share = [f"{n / max(wrong, 1):.0%}" for n in [whole, *near, wrong - whole - near[-1]]]
        lines.append(f"| {d} | {e['jaccard']:.4f} | {e['fp']:,} / {e['fn']:,} | " + " | ".join(share)
                     + f" | {e['jaccard_whole_right']:.4f} | {e[f'jaccard_near_{widths[1]}_right']:.4f} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def _minutes(m: float) -> str:
    return f"{m:g} minute{'' if m == 1 else 's'}"


def _budget_words(results: dict) -> str:
    b = results["budget"]
    if b["minutes_per_model"] and b["epochs"] >= 100_000:
        return f"{_minutes(b['minutes_per_model'])} of training per model (equal wall time)"
    if b["minutes_per_model"]:
        return f"{b['epochs']} epochs or {_minutes(b['minutes_per_model'])} per model, whichever comes first"
    return f"{b['epochs']} epochs per model (equal epochs)"


def _ranking(results: dict) -> str:
    """One sentence: the rows by validation IoU, best first (none for reports written before it was kept)."""
    rows = {d: r["validation_jaccard"] for d, r in _rows(results).items() if r.get("validation_jaccard") is not None}
    if not rows:
        return ""
    order = sorted(rows, key=rows.get, reverse=True)
    return ("On the validation split (no test volume needed) they rank " + ", ".join(
        f"{d} {rows[d]:.4f}" for d in order) + ".")


def _machine_words(m: dict) -> str:
    return m.get("gpu") or f"{m['cpu']} ({m['cpu_count']} cores)"


def _resumed_words(results: dict) -> str:
    """Where an interrupted compare went on (`compare`'s resume); empty for one that ran through."""
    return "".join(f" Interrupted and resumed on {r['date']}"
                   + (f" on another machine, {_machine_words(r['machine'])}" if _machine_words(r["machine"])
                      != _machine_words(results["machine"]) else "") + "." for r in results.get("resumed", []))


def write_report(out: Path, results: dict) -> None:
    """report.json and report.md in the report folder."""
    (out / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    hw = _machine_words(results["machine"])
    models = results["models"]
    pp = "; ".join(f"{d}: {postprocess.words(r['postprocessing'])}" for d, r in _rows(results).items())
    cfg = results["configs"][0]
    epoch = (f"an epoch is {cfg['iterations_per_epoch']} iterations (not the study's epoch; compare the "
             "voxels seen)" if cfg.get("iterations_per_epoch") else "an epoch samples as many voxels as the training "
             "volume holds")
    text = [
        f"# mitoseg compare: 2D vs 3D U-Net (ResNet18 encoder) on {results['data']['name']}", "",
        f"Data: {results['data']['description']}. Train {tuple(results['data']['train_shape'])}, "
        f"test {tuple(results['data']['test_shape'])} voxels (Z, Y, X), voxel size "
        f"{tuple(results['data']['voxel_size'])} nm. "
        "The last 15 % of the training volume in X is the validation split.",
        f"Preset `{results['preset']}`: {_budget_words(results)}; {epoch}. Machine: {hw}. Date: {results['date']}."
        + _resumed_words(results),
        f"Command: `{results['command']}`", "",
        table_markdown(results),
        "Our scores are on the whole test volume from one confusion matrix, after "
        f"{'test-time augmentation and ' if results.get('tta', True) else ''}"
        f"the post-processing chosen on the validation split ({pp}); object F1 matches the objects left by it "
        "against every object of the truth (26-connected, IoU >= 0.5). Foreground Jaccard is TP / (TP + FP + FN). "
        "The study's 'Jaccard Index/Accuracy' (0.948 beside F1 0.666) cannot be a foreground Jaccard, which is at most "
        "F1; it is close to voxel accuracy or mean IoU, so both are listed. The 2D + 3D column is no third "
        "training: the voxel-wise mean of the two models' probabilities (validation split and test volume"
        f"{', raw and with TTA' if results.get('tta', True) else ''}), its post-processing chosen on the "
        "validation split as theirs. " + _ranking(results), "",
        "## What each step adds (test volume)", "", variants_markdown(results),
    ]
    errors = errors_markdown(results)
    if errors:
        text += ["## Where the errors are (test volume, final masks)", "", errors,
                 "Each wrong voxel counted once, as a share of all wrong voxels: in a whole object (a true "
                 "object missed entirely, or a predicted object touching no true voxel), else by its distance "
                 "to the true objects' surface (the within-columns are cumulative; a voxel next to "
                 f"the surface is at 1; 1 voxel = {results['data']['voxel_size'][-1]:g} nm in-plane). Errors "
                 "next to the surface are where a label's outline is drawn, objects are what a biologist counts.",
                 ""]
    for d, row in models.items():
        if not row.get("learned", True):
            text.append(f"**The {d} model has not learned**: its best validation IoU is "
                        f"{row['best_val_iou_any_threshold']:.3f} (at any threshold). Its scores say nothing "
                        f"about what a {d} U-Net can do.\n")
    if results["data"]["name"] == "lucchi":
        text += ["## Published foreground IoU on the CA1 test volume", "",
                 "| method | IoU |", "|---|---|"]
        text += [f"| {name} | {iou:.3f} |" for name, iou in PUBLISHED]
        text += [f"| study (Pelapur 2021), 2D / 3D, from its F1 | {STUDY['2D']['f1'] / (2 - STUDY['2D']['f1']):.3f}"
                 f" / {STUDY['3D']['f1'] / (2 - STUDY['3D']['f1']):.3f} |", "",
                 "Published numbers are on the EPFL files; ours are on the data named above.", ""]
    text += ["![data](figure_data.png)", "![errors](figure_errors.png)", "![instances](figure_instances.png)",
             "![curves](figure_curves.png)", "",
             "Objects of the best-scoring row (a model or the 2D + 3D mean) and of the ground truth (same "
             "minimum size), one row each with size, "
             "surface, sphericity, length and width: `objects_predicted.csv`, `objects_truth.csv`.", "",
             "![morphology](figure_morphology.png)", ""]
    (out / "report.md").write_text("\n".join(text))


def figures(out: Path, bench: Benchmark, results: dict) -> None:
    """The study's Figure 1 and 2, error overlays per model, and training curves, as PNG."""
    from mitoseg.train import read_log

    z = int(np.argmax(bench.test_mask.sum(axis=(1, 2))))
    image = bench.test_image[z]
    pixel_nm = bench.voxel_size[-1]
    plots.save(plots.figure_study(image, bench.test_mask[z], z, pixel_nm), out / "figure_data.png")
    preds = {}
    for d, row in _rows(results).items():
        name = "test_probs_tta.zarr" if "tta" in row["variants"] else "test_probs.zarr"
        pp = postprocess.PostProcessing(**row["postprocessing"])
        halo = postprocess.halo(pp.z_sigma)  # the slab gives slice z its whole-volume mask
        z0 = max(0, z - halo)
        probs = io.open_volume(out / f"model_{d}" / name)[z0:z + halo + 1]
        preds[_title(d)] = postprocess.apply(probs, dataclasses.replace(pp, min_size=0))[z - z0]
    plots.save(plots.figure_errors(image, preds, bench.test_mask[z], z, pixel_nm), out / "figure_errors.png")
    rows = _rows(results)
    best = max(rows, key=lambda d: rows[d]["jaccard"])
    labels = io.open_volume(out / f"model_{best}" / "test_labels.zarr")[:]
    plots.save(plots.figure_instances(bench.test_image[z], labels, z, bench.voxel_size,
                                      name=f"{_title(best)}, predicted"), out / "figure_instances.png")
    min_size = rows[best]["postprocessing"]["min_size"]
    truth = instances.label(bench.test_mask, 26, min_size=min_size)
    tables = {_title(best): instances.morphology(labels, instances.measure(labels, bench.voxel_size),
                                                   bench.voxel_size),
              "ground truth": instances.morphology(truth, instances.measure(truth, bench.voxel_size), bench.voxel_size)}
    del labels, truth
    for table, file in zip(tables.values(), ("objects_predicted.csv", "objects_truth.csv"), strict=True):
        instances.write_table(table, out / file)
    # all objects: the CA1 test volume is 0.8 µm deep, so most mitochondria touch its border (cut alike in both)
    plots.save(plots.figure_morphology(tables, interior_only=False), out / "figure_morphology.png")
    logs = {f"{d} U-Net": read_log(out / f"model_{d}") for d in results["models"]}
    plots.save(plots.figure_curves(logs), out / "figure_curves.png")


JOB = ("data", "preset", "configs", "tta", "monitor")  # the settings a resumed compare must share (budget: in configs)


def resumed(tmp: Path, fresh: dict) -> dict:
    """The results (compare.json) an interrupted compare left in its folder `tmp`, with the rows of the models
    it finished, when its job (`JOB`) is `fresh`'s; else MitosegError naming each difference. The resume is
    recorded (date, machine) under "resumed"; the rest (first date, machine, command) stays the first run's."""
    old = json.loads((tmp / "compare.json").read_text())
    new = json.loads(json.dumps(fresh, default=str))
    said = new["data"]["description"]  # a user's CA1 folder, called "the EPFL files" by compares begun before 12-07
    if said.startswith(f"{datasets.CA1}, the files of the folder") and old.get("data", {}).get("description") == \
            datasets.ORIGINAL:
        old = json.loads(json.dumps(old).replace(json.dumps(datasets.ORIGINAL)[1:-1], json.dumps(said)[1:-1]))
    diff = []
    for key in JOB:
        if key == "configs" and len(old.get(key) or []) == len(new[key]):
            diff += [f"{c['dims']}D {k} {o.get(k)!r} then, {v!r} now"
                     for o, c in zip(old[key], new[key], strict=True) for k, v in c.items() if o.get(k) != v]
        elif isinstance(old.get(key), dict) and isinstance(new[key], dict):  # the data: name what differs
            diff += [f"{key} {k} {old[key].get(k)!r} then, {v!r} now" for k, v in new[key].items()
                     if old[key].get(k) != v]
        elif old.get(key) != new[key]:
            diff.append(f"{key} {old.get(key)!r} then, {new[key]!r} now")
    if diff:
        shown = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
        raise MitosegError(f"{tmp} was started with other settings ({shown}): resume with the same settings, or "
                           "start again with --overwrite")
    old.pop("ensemble", None)  # recomputed from the models' probabilities
    old["resumed"] = [*old.get("resumed", []), {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": fresh["machine"]}]
    return old


@io.releasing
def compare(out: str | Path, dataset: str = "auto", data: str | Path | None = None, preset: str = "full",
            epochs: int | None = None, minutes: float | None = None, seed: int = 0, overwrite: bool = False,
            progress: bool = True, command: str = "", changes: dict | None = None, tta: bool | None = None,
            monitor: bool | None = None, resume: bool = False) -> dict:
    """Run the whole comparison into the report folder `out`; returns the results dict (report.json).

    Budget: `epochs` (equal epochs for both models) and/or `minutes` (equal training wall time each);
    by default the preset's own (quick: 3 minutes each on CPU). `tta`: also predict with test-time
    augmentation (4x the inference time); `monitor`: score the test volume's central slices after every
    epoch (the test curve in figure_curves.png). Both default to on for every preset but quick.
    `resume`: go on with the compare an interrupted run left in ``<out>.partial`` (same settings, else
    MitosegError): the models it finished are kept, an unfinished training continues from its last
    checkpoint (its minutes count on), an unfinished evaluation keeps the probabilities that model finished
    predicting (`_predict`), the rest runs again; without one, start from the beginning.
    """
    tta = preset != "quick" if tta is None else tta
    monitor = preset != "quick" if monitor is None else monitor
    tmp = io.partial_path(out)
    started = (tmp / "compare.json").exists()  # an interrupted compare, which --resume goes on with
    if resume and not started and (Path(out) / "report.json").exists():
        raise MitosegError(f"{out} is finished: nothing to resume (leave out --resume; with --overwrite the study "
                           "runs again)")
    if started and not resume and not overwrite:
        raise MitosegError(f"{tmp} holds an interrupted compare: add --resume to go on with it, or --overwrite to "
                           "start again")
    out = io.check_output(out, overwrite)
    bench = load_benchmark(dataset, data)
    cfgs = configs(preset, epochs, minutes, bench.voxel_size, seed, {"data": bench.description, **(changes or {})},
                   slices=bench.train_image.shape[0])
    print(f"mitoseg compare on {bench.name}: {bench.description}", flush=True)
    results = {
        "data": {"name": bench.name, "description": bench.description, "train_shape": bench.train_image.shape,
                 "test_shape": bench.test_image.shape, "voxel_size": bench.voxel_size},
        "preset": preset, "budget": {"epochs": cfgs[0].epochs, "minutes_per_model": cfgs[0].minutes},
        "machine": versions(), "date": time.strftime("%Y-%m-%d"), "command": command, "models": {},
        "study": STUDY, "configs": [dict(c.__dict__) for c in cfgs], "tta": tta, "monitor": monitor,
    }
    if resume and not started:
        print(f"no interrupted compare in {tmp} to resume: starting from the beginning", flush=True)
    elif started and not resume:
        print(f"starting again (--overwrite): the interrupted compare in {tmp} is discarded", flush=True)
    resume = resume and started
    if resume:
        results = resumed(tmp, results)
        print(f"resuming the compare in {tmp}: " + ", ".join(
            f"{c.dims}D " + ("finished, kept" if f"{c.dims}D" in results["models"] else
                             _going_on(tmp / f"model_{c.dims}D") if (tmp / f"model_{c.dims}D" / "last.pt").exists()
                             else "from the start")
            for c in cfgs), flush=True)
    else:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _, val = split(bench.train_image, bench.train_mask, cfgs[0].val_fraction)
    for name in [n for n in results["models"] if stale_validation(tmp / f"model_{n}", val)]:
        print(f"{name}: its validation was predicted before it took {VAL_MARGIN} columns of context (2026-12-07): "
              "evaluated again", flush=True)
        del results["models"][name]  # its training is finished: `run_model` goes on to its evaluation
    (tmp / "compare.json").write_text(json.dumps(results, indent=2, default=str))
    for cfg in cfgs:
        name = f"{cfg.dims}D"
        if name in results["models"]:
            continue
        print(f"--- {name} U-Net", flush=True)
        results["models"][name] = run_model(cfg, bench, tmp / f"model_{name}", progress, tta, monitor, resume)
        (tmp / "compare.json").write_text(json.dumps(results, indent=2, default=str))  # kept if stopped later
    print(f"--- {ENSEMBLE}: the mean of the two models' probabilities", flush=True)
    t0 = time.perf_counter()
    average_runs([tmp / f"model_{d}" for d in results["models"]], tmp / f"model_{ENSEMBLE}")
    results["ensemble"] = {**evaluate_probabilities(tmp / f"model_{ENSEMBLE}", bench, tta, cfgs[0].val_fraction),
                           "evaluation_seconds": time.perf_counter() - t0}
    (tmp / "compare.json").write_text(json.dumps(results, indent=2, default=str))
    write_report(tmp, results)  # first: a run stopped while drawing keeps its report in the .partial folder
    figures(tmp, bench, results)
    io.finish_output(out, overwrite)
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.md'} (its figures, tables and models beside it)")
    return results


def _going_on(run: Path) -> str:
    """How a resumed compare goes on with a model whose run has a last checkpoint (`train.last_checkpoint`)."""
    from mitoseg.train import last_checkpoint

    found = last_checkpoint(run)
    if found is None:
        return "from its last checkpoint"
    epoch, epochs, finished = found
    return "trained, evaluated now" if finished else \
        f"from its last checkpoint, epoch {epoch} of {epochs} (epochs after it are trained again)"
