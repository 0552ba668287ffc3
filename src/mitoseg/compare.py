"""The main job: train the 2D and the 3D U-Net alike, predict the test volume, evaluate, label, report.

The report folder holds ``report.md`` and ``report.json`` (the study's Table 1 layout, with the
study's own numbers beside ours), ``compare.json`` (the job's settings), one run folder per model
(config, log, checkpoints, test probabilities) and the figures.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mitoseg import download, instances, io, metrics, plots
from mitoseg.config import Config, quick
from mitoseg.errors import MitosegError
from mitoseg.predict import default_tile, predict_volume
from mitoseg.train import load_model, peak_memory_mib, train, versions

# Table 1 of the reference study (Pelapur, M&M 2021): 2D U-Net 1000 epochs, 3D U-Net 25 epochs.
STUDY = {
    "2D": {"precision": 0.5062, "recall": 0.9734, "f1": 0.6660, "study_jaccard": 0.9481, "epochs": 1000,
           "seconds_per_epoch": 23, "train_minutes": 383},
    "3D": {"precision": 0.3146, "recall": 0.9224, "f1": 0.4692, "study_jaccard": 0.8892, "epochs": 25,
           "seconds_per_epoch": 75, "train_minutes": 31},
}


@dataclass
class Benchmark:
    """A train/test pair of volumes with binary masks, and what they are."""

    name: str
    description: str
    train_image: np.ndarray
    train_mask: np.ndarray
    test_image: np.ndarray
    test_mask: np.ndarray
    voxel_size: tuple[float, float, float]


def load_benchmark(name: str = "auto", data: str | Path | None = None) -> Benchmark:
    """The study's EPFL CA1 (Lucchi) data when found, else (name 'auto') the Drosophila VNC stack.

    Lucchi: training.tif / testing.tif with their ground truth, 5 nm isotropic.
    Drosophila: the 20 x 1024 x 1024 ssTEM stack split in X halves (left trains, right tests), masks
    binarised at > 127 (anti-aliased PNGs), voxels 50 x 4.6 x 4.6 nm.
    """
    if name in ("auto", "lucchi"):
        found = download.data_dir("lucchi", data)
        if found is not None:
            p = download.paths("lucchi", found)
            tr, trm = io.load_pair(p["training.tif"], p["training_groundtruth.tif"])
            te, tem = io.load_pair(p["testing.tif"], p["testing_groundtruth.tif"])
            return Benchmark("lucchi", f"EPFL CA1 hippocampus FIB-SEM (Lucchi et al.), {found}",
                             tr, trm, te, tem, (5.0, 5.0, 5.0))
        if name == "lucchi":
            download.paths("lucchi", data)  # raises the helpful message
    if name in ("auto", "drosophila"):
        root = download.SHARED_DATA / "drosophila-vnc-stack1"
        if data is not None and name == "drosophila":
            root = Path(data)
        if not (root / "raw").exists():
            raise MitosegError(f"Drosophila stack not found at {root}")
        raw, mask = io.load_pair(root / "raw", root / "mitochondria", threshold=127)
        half = raw.shape[2] // 2
        return Benchmark("drosophila", f"Drosophila VNC ssTEM stack 1 (Gerhard et al.), {root}; "
                         "train = left half in X, test = right half",
                         raw[:, :, :half], mask[:, :, :half], raw[:, :, half:], mask[:, :, half:],
                         (50.0, 4.6, 4.6))
    raise MitosegError(f"unknown data set {name!r}: use auto, lucchi or drosophila")


def configs(preset: str, epochs: int | None, minutes: float | None, voxel_size, seed: int = 0,
            changes: dict | None = None) -> list[Config]:
    """The two configs, identical but for dims. `quick` is the 2-core CPU preset; `full` is for a GPU.
    `changes` overrides any other Config field for both."""
    budget = dict(changes or {})
    if epochs is not None:
        budget["epochs"] = epochs
        budget["minutes"] = minutes
    elif minutes is not None:
        budget.update(epochs=100_000, minutes=minutes)
    out = []
    for dims in (2, 3):
        if preset == "quick":
            cfg = quick(dims, voxel_size=voxel_size, seed=seed, **budget)
        elif preset == "full":
            cfg = Config(dims=dims, voxel_size=voxel_size, seed=seed, **budget)
        else:
            raise MitosegError(f"unknown preset {preset!r}: use quick or full")
        out.append(cfg)
    return out


def run_model(cfg: Config, bench: Benchmark, folder: Path, progress: bool) -> dict:
    """Train one model, predict the test volume, score it and label its instances; returns one table row."""
    summary = train(cfg, bench.train_image, bench.train_mask, folder, overwrite=True, progress=progress)
    model, cfg = load_model(folder, cfg.device)
    t0 = time.perf_counter()
    tile = default_tile(cfg.dims, bench.test_image.shape, cfg.tile)
    predict_volume(model, bench.test_image, folder / "test_probs.zarr", cfg.dims, tile, cfg.overlap,
                   amp=cfg.amp, overwrite=True, progress=progress)
    infer_s = time.perf_counter() - t0
    probs = io.open_volume(folder / "test_probs.zarr")[:]
    pred = (probs >= 128).astype(np.uint8)
    voxel = metrics.scores(metrics.confusion(pred, bench.test_mask))
    labels = instances.label(pred, connectivity=26, min_size=0)
    truth_labels = instances.label(bench.test_mask, connectivity=26)
    objects = metrics.match_instances(labels, truth_labels, iou_threshold=0.5)
    np.save(folder / "test_labels.npy", labels)
    return {
        **{k: voxel[k] for k in ("precision", "recall", "f1", "jaccard", "accuracy", "mean_iou")},
        "epochs": summary["epochs"], "iterations": summary["iterations"],
        "seconds_per_epoch": summary["seconds_per_epoch"], "seconds_per_iteration": summary["seconds_per_iteration"],
        "train_seconds": summary["train_seconds"], "inference_seconds": infer_s,
        "inference_voxels_per_second": bench.test_image.size / infer_s,
        "peak_memory_mib": max(summary["peak_memory_mib"], peak_memory_mib(next(model.parameters()).device)),
        "objects_predicted": objects["n_pred"], "objects_true": objects["n_true"],
        "object_f1_iou50": objects["f1"],
    }


ROWS = [("precision", "Precision"), ("recall", "Recall"), ("f1", "F1 / Dice"), ("jaccard", "Jaccard (foreground IoU)"),
        ("accuracy", "Accuracy (voxels right)"), ("mean_iou", "Mean IoU (fg, bg)"),
        ("study_jaccard", "Study's 'Jaccard Index/Accuracy'"), ("object_f1_iou50", "Object F1 (IoU >= 0.5)"),
        ("epochs", "Epochs"), ("seconds_per_epoch", "Seconds per epoch"), ("train_seconds", "Training time (s)"),
        ("inference_seconds", "Inference time, test volume (s)"), ("peak_memory_mib", "Peak memory (MiB)")]


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if value <= 1.0 else f"{value:.1f}"
    return str(value)


def table_markdown(results: dict) -> str:
    """The study's Table 1 with our two models beside the study's numbers."""
    lines = ["| Metric | mitoseg 2D | mitoseg 3D | study 2D | study 3D |", "|---|---|---|---|---|"]
    for key, title in ROWS:
        ours = [results["models"].get(d, {}).get(key) for d in ("2D", "3D")]
        study = [STUDY[d].get(key) for d in ("2D", "3D")]
        if key == "train_seconds":
            study = [STUDY[d]["train_minutes"] * 60.0 for d in ("2D", "3D")]
        lines.append(f"| {title} | " + " | ".join(_cell(v) for v in ours + study) + " |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, results: dict) -> None:
    """report.json and report.md in the report folder."""
    (out / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    hw = m.get("gpu") or f"{m['cpu']} ({m['cpu_count']} cores)"
    text = [
        f"# mitoseg compare: 2D vs 3D U-Net (ResNet18 encoder) on {results['data']['name']}", "",
        f"Data: {results['data']['description']}. Train {results['data']['train_shape']}, "
        f"test {results['data']['test_shape']} voxels (Z, Y, X), voxel size {results['data']['voxel_size']} nm.",
        f"Preset `{results['preset']}`, budget: {results['budget']}. Machine: {hw}. Date: {results['date']}.",
        f"Command: `{results['command']}`", "",
        table_markdown(results),
        "Our metrics are computed on the whole test volume from one confusion matrix; foreground Jaccard is "
        "TP / (TP + FP + FN). The study's 'Jaccard Index/Accuracy' (0.948 beside F1 0.666) cannot be a "
        "foreground Jaccard, which is at most F1; it is close to voxel accuracy or mean IoU, so both are "
        "listed. Study numbers are on the EPFL CA1 test volume; compare like with like only when the data "
        "set above is that one.", "",
        "![data](figure_data.png)", "![errors](figure_errors.png)", "![instances](figure_instances.png)",
        "![curves](figure_curves.png)", "",
    ]
    (out / "report.md").write_text("\n".join(text))


def figures(out: Path, bench: Benchmark, results: dict) -> None:
    """The study's Figure 1 and 2, error overlays per model, and training curves, as PNG."""
    from mitoseg.train import read_log

    z = int(np.argmax(bench.test_mask.sum(axis=(1, 2))))
    image = bench.test_image[z]
    plots.save(plots.figure_study(image, bench.test_mask[z]), out / "figure_data.png")
    preds = {}
    for d in results["models"]:
        probs = io.open_volume(out / f"model_{d}" / "test_probs.zarr")[z]
        preds[f"{d} U-Net"] = (probs >= 128).astype(np.uint8)
    plots.save(plots.figure_errors(image, preds, bench.test_mask[z]), out / "figure_errors.png")
    best = max(results["models"], key=lambda d: results["models"][d]["f1"])
    labels = np.load(out / f"model_{best}" / "test_labels.npy")
    plots.save(plots.figure_instances(bench.test_image[z], labels, z, bench.voxel_size),
               out / "figure_instances.png")
    logs = {f"{d} U-Net": read_log(out / f"model_{d}") for d in results["models"]}
    plots.save(plots.figure_curves(logs), out / "figure_curves.png")


def compare(out: str | Path, dataset: str = "auto", data: str | Path | None = None, preset: str = "quick",
            epochs: int | None = None, minutes: float | None = None, seed: int = 0, overwrite: bool = False,
            progress: bool = True, command: str = "", changes: dict | None = None) -> dict:
    """Run the whole comparison into the report folder `out`; returns the results dict (report.json).

    Budget: `epochs` (equal epochs for both models) and/or `minutes` (equal training wall time each);
    by default the preset's own (quick: 3 minutes each on CPU).
    """
    out = io.check_output(out, overwrite)
    bench = load_benchmark(dataset, data)
    cfgs = configs(preset, epochs, minutes, bench.voxel_size, seed, changes)
    tmp = io.partial_path(out)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    print(f"mitoseg compare on {bench.name}: {bench.description}", flush=True)
    results = {
        "data": {"name": bench.name, "description": bench.description, "train_shape": bench.train_image.shape,
                 "test_shape": bench.test_image.shape, "voxel_size": bench.voxel_size},
        "preset": preset, "budget": {"epochs": cfgs[0].epochs, "minutes_per_model": cfgs[0].minutes},
        "machine": versions(), "date": time.strftime("%Y-%m-%d"), "command": command, "models": {},
        "study": STUDY,
    }
    (tmp / "compare.json").write_text(json.dumps({"configs": [c.__dict__ for c in cfgs], **results}, indent=2,
                                                 default=str))
    for cfg in cfgs:
        name = f"{cfg.dims}D"
        print(f"--- {name} U-Net", flush=True)
        results["models"][name] = run_model(cfg, bench, tmp / f"model_{name}", progress)
    figures(tmp, bench, results)
    write_report(tmp, results)
    io.finish_output(out, overwrite)
    print((out / "report.md").read_text())
    return results
