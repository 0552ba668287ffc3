"""How little annotation is enough: the CA1 annotation curve, suggested vs evenly spread slices, and
transfer from CA1 to the Drosophila ssTEM stack.

    python experiments/annotation.py --out results/annotation/annotation.json [--iterations 150]
    python experiments/annotation.py --out ... --parts curve --dims 3 --counts 1 2 8 165

All runs: the `quick` preset's patches (32 x 128 x 128 voxels per iteration: one 3D patch, or 32 2D
slices), exactly `--iterations` iterations (validation every 50, on the annotated voxels of the
validation split), the checkpoint of best validation IoU, scored raw (probability 0.5, no TTA, no
post-processing). The curve and suggest run for each model in `--dims`; transfer uses the 2D model.
1. Curve: CA1 training volume with only k slices annotated, spread evenly (slice (i + 0.5) * 165 / k),
   for each k in `--counts`; test IoU on the central `--slices` slices of the CA1 test volume.
   `--choices N` also trains on N - 1 other even spreads (shifted by j / N of the spacing) for the
   spread over slice choices; `--seed S` trains the curve's runs with another seed (folders `..._sS`).
2. Suggest: the first k's model ranks the other slices (`mitoseg suggest`, TTA unless `--no-tta`); a run
   annotated on those k slices plus k suggested ones, and (2D) one on those k slices plus suggested
   `--box`-pixel boxes holding as many pixels as k slices (the rest of their slices not annotated), are
   compared with the curve's run on 2k evenly spread slices, for each model in `--dims`.
3. Transfer: the Drosophila stack (left half trains, right half tests), 1, 2 and 5 annotated slices,
   from scratch and fine-tuned from the curve's run on all CA1 slices (`--init`), for
   `--transfer-iterations` iterations each.
Rows of an earlier --out are kept unless this call measures the same row again (`--only-new`: rows already
in --out are not measured again); `--parts transfer` (say) runs only that part.
Writes the JSON after every row (an interrupted call keeps what it measured; finished runs are reused)
and a Markdown table and a figure of the curve (PNG) beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from record import header, save  # experiments/ is the script's folder, so on sys.path

from mitoseg import compare, config, data, datasets, io, metrics, models, plots, predict, suggest, train

PER_EPOCH = 50
PARTS = ("curve", "suggest", "transfer")


def even(k: int, depth: int, shift: float = 0.5) -> list[int]:
    """k slice indices spread evenly through `depth` slices: at `shift` (0..1) of each of k equal parts
    (0.5: their centres)."""
    return sorted({int((i + shift) * depth / k) for i in range(k)})


def shifts(n: int) -> list[float]:
    """The positions within each part of n slice choices: the centre first, then n - 1 others."""
    return [(0.5 + j / n) % 1.0 for j in range(n)]


def key(part: str, row: dict) -> tuple:
    """What makes a row the same measurement (older rows: the 2D model, the first choice)."""
    if part == "curve":
        return row.get("dims", 2), row["annotated"], row.get("choice", 0), row.get("seed", 0)
    if part == "suggest":
        return row.get("dims", 2), row["annotated"], row.get("kind", "slices")
    return (row["annotated"],)


def score(run: Path, image: np.ndarray, truth: np.ndarray, whole: np.ndarray) -> float:
    """Foreground IoU at probability 0.5 of a run's best model on an image (Z, Y, X), a part of the volume
    `whole` whose window (by the run's rule) normalises it."""
    model, cfg = train.load_model(run)
    window = io.intensity_range(whole, rule=cfg.normalize)
    tile = predict.default_tile(cfg.dims, image.shape, cfg.tile)
    probs = predict.predict_array(model, image, cfg.dims, tile, cfg.overlap, window, amp=cfg.amp)
    return metrics.scores(metrics.confusion(probs >= 0.5, truth))["jaccard"]


def fit(folder: Path, image, mask, iterations: int, dims: int = 2, **changes) -> dict:
    """Train (or reuse a finished identical run in) `folder`; its summary."""
    cfg = config.quick(dims, epochs=max(1, iterations // PER_EPOCH), minutes=None, iterations_per_epoch=PER_EPOCH,
                       **changes)
    if (folder / "summary.json").exists() and config.Config.load(folder / "config.json") == cfg:
        return train.summarize(folder)
    return train.train(cfg, image, mask, folder, overwrite=True, progress=False)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    p.add_argument("--iterations", type=int, default=150, help="training iterations per run")
    p.add_argument("--counts", type=int, nargs="+", default=[2, 4, 8, 165], help="annotated CA1 slices per run")
    p.add_argument("--dims", type=int, nargs="+", default=[2], choices=[2, 3], help="models of the curve")
    p.add_argument("--choices", type=int, default=1, help="slice choices per count on the curve")
    p.add_argument("--seed", type=int, default=0, help="training seed of the curve's runs")
    p.add_argument("--slices", type=int, default=64, help="central CA1 test slices to score")
    p.add_argument("--box", type=int, default=256, help="side in pixels of the suggested boxes")
    p.add_argument("--no-tta", action="store_true", help="suggest from plain predictions (no flips)")
    p.add_argument("--transfer", type=int, nargs="+", default=[1, 2, 5], help="annotated Drosophila slices")
    p.add_argument("--transfer-iterations", type=int,
                   help="training iterations per transfer run (default: --iterations)")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS,
                   help="parts to run; the others' rows are kept from an earlier --out")
    p.add_argument("--runs", default=None, help="folder for the run folders (default: runs/ beside --out)")
    p.add_argument("--only-new", action="store_true", help="skip the rows already in --out")
    a = p.parse_args(argv)
    out = Path(a.out)
    runs = Path(a.runs) if a.runs else out.parent / "runs"
    ca1 = compare.load_benchmark("lucchi")
    depth = ca1.train_image.shape[0]
    z0 = (ca1.test_image.shape[0] - a.slices) // 2
    test = (ca1.test_image[z0:z0 + a.slices], ca1.test_mask[z0:z0 + a.slices], ca1.test_image)
    result = header(__file__, argv, ca1.description, test_slices=[z0, z0 + a.slices], iterations=a.iterations,
                    transfer_iterations=a.transfer_iterations or a.iterations, curve=[], suggest=[], transfer=[])
    command = result["command"]
    if out.exists():  # keep the earlier rows (a row measured again replaces its earlier self)
        earlier = json.loads(out.read_text())
        result.update({k: v for k, v in earlier.items() if k not in ("command", "date", "machine")})
        result["commands"] = list(dict.fromkeys([*earlier.get("commands", [earlier["command"]]), command]))
        result["dates"] = sorted({*earlier.get("dates", [earlier["date"]]), result["date"]})

    def measured(part: str, row: dict) -> bool:
        """Whether `--only-new` skips this row (one already in --out)."""
        done = a.only_new and any(key(part, r) == key(part, row) for r in result[part])
        if done:
            print(part, "already measured:", key(part, row), flush=True)
        return done

    def add(part: str, row: dict) -> None:
        result[part] = [r for r in result[part] if key(part, r) != key(part, row)] + [row]
        print(part, {k: v for k, v in row.items() if k != "slices"}, flush=True)
        write(out, result)

    for dims in a.dims if "curve" in a.parts else []:  # 1. the curve
        for k in a.counts:
            for choice, shift in enumerate(shifts(1 if k >= depth else a.choices)):  # every slice: one choice
                slices = even(k, depth, shift)
                folder = runs / ("ca1" + ("_3d" if dims == 3 else "") + f"_{k}" + (f"_c{choice}" if choice else "")
                                 + (f"_s{a.seed}" if a.seed else ""))
                if measured("curve", {"dims": dims, "annotated": len(slices), "choice": choice, "seed": a.seed}):
                    continue
                s = fit(folder, ca1.train_image, ca1.train_mask, a.iterations, dims, seed=a.seed,
                        annotated_slices=None if k >= depth else ",".join(map(str, slices)))
                add("curve", {"dims": dims, "annotated": len(slices), "choice": choice, "seed": a.seed,
                              "slices": slices,
                              "best_val_iou": s["best_val_iou"], "test_iou": score(folder, *test),
                              "train_seconds": s["train_seconds"], "cpu": train.cpu_name(),
                              "bf16": models.bf16_native(torch.device("cpu"))})

    k = a.counts[0]  # 2. suggested slices (or boxes) vs evenly spread slices, same annotated pixels
    volume = datasets.lucchi_dir()[0] / "training.tif"
    base = even(k, depth)
    cells = len(suggest.boxes(ca1.train_image.shape[1:], a.box))
    for dims in a.dims if "suggest" in a.parts and 2 * k in a.counts else []:
        tag = "_3d" if dims == 3 else ""
        evenly = next(r for r in result["curve"] if key("curve", r) == (dims, 2 * k, 0, 0))  # the curve's run
        for kind, count in (("slices", k), ("boxes", k * cells))[:2 if dims == 2 else 1]:  # 3D: slices only
            if measured("suggest", {"dims": dims, "annotated": 2 * k, "kind": kind}):
                continue
            picked = suggest.suggest(runs / f"ca1{tag}_{k}", volume, count=count, annotated=",".join(map(str, base)),
                                     progress=False, box=a.box if kind == "boxes" else None, tta=not a.no_tta)
            mask = np.full_like(ca1.train_mask, data.IGNORE)  # annotated: the even slices and the picks
            for z, y, x, h, w in [(z, 0, 0, *ca1.train_mask.shape[1:]) for z in base] + \
                    [(r["slice"], r["y"], r["x"], r["height"], r["width"]) for r in picked]:
                mask[z, y:y + h, x:x + w] = ca1.train_mask[z, y:y + h, x:x + w]
            folder = runs / (f"ca1{tag}_{k}+{k}suggested" + (f"_boxes{a.box}" if kind == "boxes" else ""))
            s = fit(folder, ca1.train_image, mask, a.iterations, dims)
            add("suggest", {"dims": dims, "annotated": 2 * k, "kind": kind, "box": a.box if kind == "boxes" else None,
                            "tta": not a.no_tta, "slices": base,
                            "suggested": [[r["slice"], r["y"], r["x"]] for r in picked]
                            if kind == "boxes" else [r["slice"] for r in picked],
                            "best_val_iou": s["best_val_iou"], "test_iou": score(folder, *test),
                            "evenly_test_iou": evenly["test_iou"], "cpu": train.cpu_name(),
                            "bf16": models.bf16_native(torch.device("cpu"))})

    if "transfer" not in a.parts:
        write(out, result)
        print(markdown(result))
        return
    droso = compare.load_benchmark("drosophila")  # 3. transfer
    source = runs / f"ca1_{max(a.counts)}"
    dtest = (droso.test_image, droso.test_mask, droso.test_image)
    for n in a.transfer:
        slices = ",".join(map(str, even(n, droso.train_image.shape[0])))
        row = {"annotated": n, "slices": slices}
        if measured("transfer", row):
            continue
        for name, init in (("scratch", None), ("fine_tuned", str(source))):
            folder = runs / f"droso_{n}_{name}"
            s = fit(folder, droso.train_image, droso.train_mask, a.transfer_iterations or a.iterations,
                    annotated_slices=slices,
                    voxel_size=droso.voxel_size, init=init)
            row[f"{name}_best_val_iou"] = s["best_val_iou"]
            row[f"{name}_test_iou"] = score(folder, *dtest)
        add("transfer", {**row, "cpu": train.cpu_name(), "bf16": models.bf16_native(torch.device("cpu"))})
    write(out, result)
    print(markdown(result))


def write(out: Path, result: dict) -> None:
    save(out, result, markdown(result))
    if result["curve"]:
        plots.save(figure(result), out.with_suffix(".png"))


def figure(result: dict) -> Figure:
    """Test IoU against annotated slices (log axis): every run a dot, the mean over runs (slice choices,
    seeds) a line, per model; the study's IoU (from its F1, all 165 slices) dashed."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for dims, color in ((2, "tab:blue"), (3, "tab:orange")):
        rows = [r for r in result["curve"] if r.get("dims", 2) == dims]
        if not rows:
            continue
        ax.scatter([r["annotated"] for r in rows], [r["test_iou"] for r in rows], color=color, s=18, alpha=0.6)
        counts = sorted({r["annotated"] for r in rows})
        means = [np.mean([r["test_iou"] for r in rows if r["annotated"] == n]) for n in counts]
        ax.plot(counts, means, color=color, label=f"{dims}D model (line: mean over runs)")
        f1 = compare.STUDY[f"{dims}D"]["f1"]
        ax.axhline(f1 / (2 - f1), color=color, ls="--", lw=1, label=f"the study's {dims}D model, all slices")
    ax.set(xscale="log", xlabel="annotated CA1 training slices (evenly spread, of 165)",
           ylabel="test foreground IoU", ylim=(0, 1),
           title=f"How little annotation is enough ({result['iterations']} iterations per run)")
    ticks = sorted({r["annotated"] for r in result["curve"]})
    ax.set_xticks(ticks, [str(n) for n in ticks])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def markdown(result: dict) -> str:
    """The three tables of a result."""
    m = result["machine"]
    cpus = sorted({r["cpu"] for part in PARTS for r in result[part] if "cpu" in r} or {m["cpu"]})
    lines = [f"# How little annotation is enough ({result['iterations']} iterations per run)", "",
             f"CA1 data: {result['data']}; test slices {result['test_slices'][0]}..{result['test_slices'][1] - 1} "
             "of the CA1 test volume, raw prediction at 0.5 (no TTA, no post-processing), best-validation "
             f"checkpoint. Machines ({m['cpu_count']} cores each): "
             + "; ".join(f"[{i + 1}] {c}" for i, c in enumerate(cpus)) + " (the [n] after a cell; none: not "
             "recorded). "
             f"Dates: {', '.join(result.get('dates', [result['date']]))}. "
             "Commands: " + "; ".join(f"`{c}`" for c in result.get("commands", [result["command"]])), "",
             "## Test IoU against annotated training slices (CA1, evenly spread)", "",
             "Each cell: test IoU (best validation IoU); several runs (slice choices, seeds): their mean, then "
             "each; sN: trained with seed N (else seed 0). "
             "†: trained in bf16 autocast on a CPU with native bf16; unmarked: float32 on a CPU without it "
             "(the JSON names each row's CPU).", "",
             "| annotated slices | 2D model | 3D model |", "|---|---|---|"]
    for n in sorted({r["annotated"] for r in result["curve"]}):
        cells = []
        for dims in (2, 3):
            rows = sorted((r for r in result["curve"] if r["annotated"] == n and r.get("dims", 2) == dims),
                          key=lambda r: (r.get("choice", 0), r.get("seed", 0)))
            each = ", ".join(f"{r['test_iou']:.3f} ({r['best_val_iou']:.3f}){' †' if r.get('bf16') else ''}"
                             + (f" s{r['seed']}" if r.get("seed") else "")
                             + (f" [{cpus.index(r['cpu']) + 1}]" if r.get("cpu") in cpus else "")
                             for r in rows)
            mean = float(np.mean([r["test_iou"] for r in rows])) if rows else 0.0
            cells.append("—" if not rows else each if len(rows) == 1 else f"**{mean:.3f}**: {each}")
        lines.append(f"| {n} | {cells[0]} | {cells[1]} |")
    if result["suggest"]:
        lines += ["", "## Suggested slices or boxes vs evenly spread slices (CA1)", "",
                  "k evenly spread slices are annotated; the model trained on them (`mitoseg suggest`; ‡: without "
                  "TTA) picks what to annotate next: k more slices, or boxes holding as many pixels; the same "
                  "model trained on them, compared with 2k evenly spread slices. Each cell: test IoU.", "",
                  "| model | annotated pixels, in slices | 2k evenly spread | k even + k suggested slices | "
                  "k even + suggested boxes | suggested slices |", "|---|---|---|---|---|---|"]
        for dims, n in sorted({(r.get("dims", 2), r["annotated"]) for r in result["suggest"]}):
            rows = {r.get("kind", "slices"): r for r in result["suggest"]
                    if r["annotated"] == n and r.get("dims", 2) == dims}
            cell = {kind: f"{r['test_iou']:.3f}" + (" ‡" if r.get("tta", True) is False else "")
                    + (f" ({len(r['suggested'])} of {r['box']}²)" if kind == "boxes" else "")
                    for kind, r in rows.items()}
            evenly = next(iter(rows.values()))["evenly_test_iou"]
            picked = ", ".join(map(str, rows["slices"]["suggested"])) if "slices" in rows else "—"
            lines.append(f"| {dims}D | {n} | {evenly:.3f} | {cell.get('slices', '—')} | {cell.get('boxes', '—')} "
                         f"| {picked} |")
    if result["transfer"]:
        lines += ["", f"## Transfer to Drosophila ssTEM (2D model, {result.get('transfer_iterations')} iterations; "
                  "train: left half, test: right half)", "",
                  "| annotated slices | from scratch: test IoU | fine-tuned from CA1: test IoU |", "|---|---|---|"]
        lines += [f"| {r['annotated']} | {r['scratch_test_iou']:.3f} | {r['fine_tuned_test_iou']:.3f} |"
                  for r in result["transfer"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
