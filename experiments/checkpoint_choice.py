"""Can the checkpoint be chosen for robustness? Validation IoU under a changed gamma, epoch by epoch.

    python experiments/checkpoint_choice.py --out runs/choice/choice3d.json --dims 3 --seed 1
    python experiments/checkpoint_choice.py --out runs/choice/old3d.json --run runs/mix/recipe_3D --no-test

Trains the ablation's recipe (`experiments/ablation.py`: the `quick` preset's patches, `--iterations`
iterations, validation every 50) and keeps the weights of every validated epoch. Each epoch's weights
then score the validation strip (the training volume's last 15 % in X) after gamma `--val-gammas`
(applied to the whole training volume's grey levels, its window taken again, as the test's change is).
Rules that choose a checkpoint from validation scores alone (the product's: best validation IoU at any
threshold; the last epoch; the best mean or worst of the unchanged and changed validation IoUs) each
pick an epoch; the picked epochs score the central `--slices` test slices as they are and under each of
`--test-gammas` (default 1.4; IoU at 0.5, no TTA), as every ablation row. The test volume never chooses
anything. `--run`: an existing run folder instead (its best.pt and last.pt, or its epoch files);
`--no-test`: validation only. Writes the JSON and a Markdown table beside it; an interrupted call keeps
what it measured and goes on from there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from ablation import PER_EPOCH, central_slices, gamma, score, strip_alone  # experiments/: on sys.path
from record import header, save

from mitoseg import compare, config, data, io, train


def train_keeping_epochs(cfg: config.Config, bench, folder: Path) -> None:
    """Train `cfg` into `folder`, writing each validated epoch's weights to epoch_NNN.pt beside last.pt.

    The training loop keeps only the best and the last checkpoint; its checkpoint writer is wrapped for
    this run (and every epoch written) rather than adding an option no user needs."""
    original = train._save

    def keep(obj: dict, path: Path) -> None:
        original(obj, path)
        if path.name == "last.pt":
            epoch = obj["state"]["epoch"]
            weights = {k: obj[k] for k in ("model", "config", "state", "intensity")}
            original(weights, path.parent / f"epoch_{epoch:03d}.pt")

    train._save, seconds = keep, train.CHECKPOINT_SECONDS
    train.CHECKPOINT_SECONDS = 0.0
    try:
        train.train(cfg, bench.train_image, bench.train_mask, folder, overwrite=True, progress=False)
    finally:
        train._save, train.CHECKPOINT_SECONDS = original, seconds


def validation_iou(model, cfg: config.Config, image: np.ndarray, mask: np.ndarray) -> float:
    """IoU at 0.5 on the validation strip of a training volume `image` (its own window) as training splits it."""
    _, val = data.split(image, mask, cfg.val_fraction, io.intensity_range(image, rule=cfg.normalize))
    val = strip_alone(val)
    return score(model, cfg, val.image, val.mask, val.window)


def checkpoints(folder: Path) -> dict[int, Path]:
    """A run folder's checkpoints by epoch: every epoch's file when kept (epoch_NNN.pt), else best.pt and
    last.pt (their epoch read from the checkpoint)."""
    kept = {int(f.stem.removeprefix("epoch_")): f for f in folder.glob("epoch_*.pt")}
    files = [folder / n for n in ("best.pt", "last.pt") if (folder / n).exists()]
    return kept or {torch.load(f, map_location="cpu", weights_only=False)["state"]["epoch"]: f for f in files}


def rules(epochs: list[dict], val_gammas: list[float]) -> dict[str, int]:
    """Each rule's chosen epoch from the validation columns alone (ties: the earlier epoch)."""
    def pick(key) -> int:
        return max(epochs, key=lambda e: (key(e), -e["epoch"]))["epoch"]

    chosen = {"best validation IoU, any threshold (mitoseg)": pick(lambda e: e["val_iou_best"]),
              "last epoch": epochs[-1]["epoch"]}
    for g in val_gammas:
        key = f"val_iou_gamma_{g}"
        chosen[f"best mean of validation IoU and IoU under gamma {g}"] = pick(lambda e, k=key: e["val_iou"] + e[k])
        chosen[f"best worse of validation IoU and IoU under gamma {g}"] = pick(lambda e, k=key: min(e["val_iou"], e[k]))
    return chosen


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    p.add_argument("--dims", type=int, choices=(2, 3), default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=int, default=600, help="training iterations")
    p.add_argument("--slices", type=int, default=64, help="central test slices to score")
    p.add_argument("--val-gammas", type=float, nargs="+", default=[1.4, 1.7],
                   help="gammas the validation strip is scored under")
    p.add_argument("--test-gammas", type=float, nargs="+", default=[1.4],
                   help="gammas the chosen epochs' test slices are scored under (besides as they are)")
    p.add_argument("--runs", default=None, help="folder for the run folder (default: beside --out, in runs/)")
    p.add_argument("--run", default=None, help="an existing run folder to score instead of training one")
    p.add_argument("--no-test", action="store_true", help="score the validation strip only")
    a = p.parse_args(argv)
    out = Path(a.out)
    bench = compare.load_benchmark("lucchi")
    if a.run:
        folder = Path(a.run)
        cfg = config.Config.load(folder / "config.json")
    else:
        folder = (Path(a.runs) if a.runs else out.parent / "runs") / f"choice_seed{a.seed}_{a.dims}D"
        cfg = config.quick(a.dims, epochs=max(1, a.iterations // PER_EPOCH), minutes=None,
                           iterations_per_epoch=PER_EPOCH, seed=a.seed)
        if not ((folder / "summary.json").exists() and config.Config.load(folder / "config.json") == cfg):
            train_keeping_epochs(cfg, bench, folder)
    summary = train.summarize(folder)
    z0, image, truth = central_slices(bench, a.slices)
    result = header(__file__, argv, bench.description, dims=cfg.dims, seed=cfg.seed, iterations=summary["iterations"],
                    test_slices=[z0, z0 + a.slices], summary=summary)
    files = checkpoints(folder)
    before = json.loads(out.read_text()) if out.exists() else {}
    epochs = {e["epoch"]: e for e in before.get("epochs", [])}
    for row in train.read_log(folder):
        if int(row["epoch"]) in files:
            epochs.setdefault(int(row["epoch"]), {"epoch": int(row["epoch"]), "val_iou": row["val_iou"],
                                                 "val_iou_best": row["val_iou_best"]})
    epochs = [epochs[k] for k in sorted(epochs)]

    def record(chosen=None, tests=None) -> None:
        full = dict(result, val_gammas=a.val_gammas, test_gammas=a.test_gammas, epochs=epochs, chosen=chosen or {},
                    test=tests or {})
        save(out, full, markdown(full))

    for g in a.val_gammas:
        changed = gamma(bench.train_image, g)
        for e in epochs:
            if f"val_iou_gamma_{g}" not in e:
                model, mcfg = train.load_model(files[e["epoch"]])
                e[f"val_iou_gamma_{g}"] = validation_iou(model, mcfg, changed, bench.train_mask)
                print(f"epoch {e['epoch']}: validation IoU {e['val_iou']:.4f}, gamma {g} "
                      f"{e[f'val_iou_gamma_{g}']:.4f}", flush=True)
                record()
        del changed
    chosen = rules(epochs, a.val_gammas)
    if a.no_test:
        record(chosen)
        print(markdown(json.loads(out.read_text())))
        return
    windows = {1.0: io.intensity_range(bench.test_image, rule=cfg.normalize)}
    for g in a.test_gammas:  # each change's window is taken on the whole changed test volume, as a user's would be
        windows[g] = io.intensity_range(gamma(bench.test_image, g), rule=cfg.normalize)
    tests = {int(k): v for k, v in before.get("test", {}).items()}
    for epoch in sorted(set(chosen.values())):
        scores, model = tests.setdefault(epoch, {}), None
        for g in (1.0, *a.test_gammas):
            key = "test_iou" if g == 1.0 else f"test_iou_gamma_{g}"
            if key not in scores:
                if model is None:
                    model, mcfg = train.load_model(files[epoch])
                scores[key] = score(model, mcfg, image if g == 1.0 else gamma(image, g), truth, windows[g])
                print(f"epoch {epoch}: {key} {scores[key]:.4f}", flush=True)
                record(chosen, tests)
    record(chosen, tests)
    print(markdown(json.loads(out.read_text())))


def markdown(result: dict) -> str:
    """The epochs' validation scores, then each rule's pick with its test scores."""
    g, m = result["val_gammas"], result["machine"]
    lines = [f"# Choosing the checkpoint under a changed gamma: {result['dims']}D model, seed {result['seed']}, "
             f"{result['iterations']} iterations", "",
             f"Data: {result['data']}. Validation strip: the training volume's last 15 % in X, IoU at 0.5 (and at "
             f"its best threshold: the product's choice), as it is and under gamma {', '.join(map(str, g))}; "
             f"test: slices {result['test_slices'][0]}..{result['test_slices'][1] - 1} of the test volume, raw at "
             f"0.5. Machine: {m['cpu']} ({m['cpu_count']} cores). Date: {result['date']}. "
             f"Command: `{result['command']}`", "",
             "| epoch | validation IoU | any threshold | " + " | ".join(f"gamma {x}" for x in g) + " |",
             "|---|---|---|" + "---|" * len(g)]
    for e in result["epochs"]:
        keys = ("val_iou", "val_iou_best", *(f"val_iou_gamma_{x}" for x in g))
        cells = [f"{e[k]:.4f}" if k in e else "—" for k in keys]
        lines.append(f"| {e['epoch']} | " + " | ".join(cells) + " |")
    if result["chosen"]:
        gs = result.get("test_gammas") or [result["test_gamma"]]  # records before --test-gammas: one gamma
        lines += ["", "| rule | epoch | test IoU | " + " | ".join(f"test IoU, gamma {t}" for t in gs) + " |",
                  "|---|---|---|" + "---|" * len(gs)]
        for rule, epoch in result["chosen"].items():
            s = result["test"].get(str(epoch), result["test"].get(epoch)) or {}
            cells = [f"{s['test_iou']:.4f}" if "test_iou" in s else "—"]
            for t in gs:
                x = s.get(f"test_iou_gamma_{t}")
                cells.append("—" if x is None or "test_iou" not in s else f"{x:.4f} ({x - s['test_iou']:+.4f})")
            lines.append(f"| {rule} | {epoch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
