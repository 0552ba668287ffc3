"""Is the linear window the models' best input? A fixed gamma after it, chosen on the validation strip.

    python experiments/input_gamma.py RUN [RUN ...] --out runs/input_gamma/input_gamma.json
        [--gammas 1 0.85 0.7 0.55] [--slices 32]

Every contrast table so far found the percentile models scoring higher on the CA1 test volume under gamma 0.7
than as published (+0.001 to +0.040) and lower under gamma 1.4. If a model simply works best on brighter
mid-tones, a fixed gamma g < 1 after its window would gain on the volume as it is and turn a volume darkened by
gamma 1.4 into one near gamma 1.4 g, which it handles. For each run and each g of `--gammas`, the network's input
becomes t ** g (t: the volume's linear window, 0..1; a 256-level window for `io.normalize`). The validation strip
(the training volume's last 15 % in X, through the training volume's window, as training validates) alone
picks g: the best IoU at 0.5, ties to the g nearest 1. The central `--slices` test slices, as published and under
gamma 0.7 and 1.4 (applied to the grey levels, the window taken again, as in `experiments/contrast.py`), are
scored with g = 1 and with the picked g (IoU at 0.5, no TTA). Writes the JSON and a Markdown table beside it;
rows are written as they come.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from ablation import central_slices, gamma, score, validation_strip  # experiments/: on sys.path
from record import header, save

from mitoseg import compare, io, train

TEST_GAMMAS = (1.0, 0.7, 1.4)  # changes of the test volume's grey levels (1.0: as published)


def with_input_gamma(window: tuple[float, ...], g: float) -> tuple[float, ...]:
    """A 256-level window mapping grey level v to about ((v - low) / (high - low)) ** g, from a linear one."""
    low, high = window[0], window[-1]
    return tuple(float(v) for v in low + (high - low) * np.linspace(0.0, 1.0, 256) ** (1.0 / g))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="trained run folders (percentile rule)")
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    p.add_argument("--gammas", type=float, nargs="+", default=[1.0, 0.85, 0.7, 0.55], help="input gammas to validate")
    p.add_argument("--slices", type=int, default=32, help="central test slices to score")
    a = p.parse_args(argv)
    bench = compare.load_benchmark("lucchi")
    z0, image, truth = central_slices(bench, a.slices)
    meta = header(__file__, argv, bench.description, slices=[z0, z0 + a.slices])
    rows = []
    for run in a.runs:
        model, cfg = train.load_model(run)
        val = validation_strip(bench, cfg)
        row = {"model": f"{cfg.dims}D", "folder": Path(run).name,
               "validation": {g: score(model, cfg, val.image, val.mask, with_input_gamma(val.window, g))
                              for g in a.gammas}}
        best = max(row["validation"].values())
        row["picked"] = min((g for g, v in row["validation"].items() if v == best), key=lambda g: abs(g - 1.0))
        row["test"] = {}
        for g in sorted({1.0, row["picked"]}, reverse=True):
            for change in TEST_GAMMAS:
                vol = image if change == 1.0 else gamma(image, change)
                window = with_input_gamma(io.intensity_range(vol), g)
                row["test"][f"{g} {change}"] = score(model, cfg, vol, truth, window)
        rows.append(row)
        print(json.dumps(row), flush=True)
        save(a.out, {**meta, "rows": rows}, table(rows, meta))
    print(table(rows, meta))


def table(rows: list[dict], meta: dict) -> str:
    """The Markdown tables: validation IoU per input gamma, then test IoU with g = 1 and the picked g."""
    z0, z1 = meta["slices"]
    gammas = sorted({g for r in rows for g in r["validation"]}, reverse=True)
    lines = ["Validation strip IoU (0.5, no TTA) per input gamma g (input t ** g after the linear window):", "",
             "| model | " + " | ".join(f"g = {g:g}" for g in gammas) + " | picked |",
             "|---|" + "---|" * (len(gammas) + 1)]
    for r in rows:
        cells = [f"{r['validation'][g]:.4f}" if g in r["validation"] else "—" for g in gammas]
        lines.append(f"| {r['model']} ({r['folder']}) | " + " | ".join(cells) + f" | {r['picked']:g} |")
    lines += ["", f"Test IoU (0.5, no TTA), CA1 test slices {z0}..{z1 - 1}, with g = 1 and the picked g; in "
              "brackets the change against g = 1:", "",
              "| model | input gamma | as published | gamma 0.7 | gamma 1.4 |", "|---|---|---|---|---|"]
    for r in rows:
        for g in sorted({1.0, r["picked"]}, reverse=True):
            cells = []
            for change in TEST_GAMMAS:
                v, base = r["test"][f"{g} {change}"], r["test"][f"1.0 {change}"]
                cells.append(f"{v:.4f}" + ("" if g == 1.0 else f" ({v - base:+.4f})"))
            lines.append(f"| {r['model']} ({r['folder']}) | {g:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
