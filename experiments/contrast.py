"""Does a trained model keep its test IoU when the microscope's grey levels change?

    python experiments/contrast.py RUN [RUN ...] --out results/ca1-cpu/contrast.json [--slices 64]
        [--changes NAME ...] [--pad PIXELS [--keep-padding]]

For each run folder (a trained 2D or 3D model), the central `--slices` slices of the CA1 test volume
are changed as another acquisition would change them (squeezed into fewer grey levels as in the EPFL
originals, darker, brighter, flatter, another gamma, brightness drifting slice by slice), predicted
with the product's predictor and scored at probability 0.5. Each change is scored with each of `--rules`:
the rule the run was trained with (`Config.normalize`, see `io.intensity_range`), the linear percentile
window, the rule it replaced (uint8 mapped 0..255 as it is), and the grey levels first moved onto the
training volume's histogram (`mitoseg predict --match-training`; for runs trained before the histogram was
kept with the model, it is taken from the CA1 training volume they were trained on). `--pad` places each
changed volume in black borders of that many pixels in Y and X, as an aligned stack is, and scores the
original region; `--keep-padding` switches the rule that leaves padding out of every window off
(`io.PADDING_SHARE`), to show what it changes. Writes the JSON and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from ablation import with_training_histogram  # experiments/ is the script's folder, so on sys.path
from record import header, save

from mitoseg import compare, io, metrics, postprocess, predict, train


def changes(seed: int = 0) -> dict:
    """Grey-level changes of a uint8 volume (Z, Y, X) -> uint8, by name."""
    rng = np.random.default_rng(seed)

    def u8(x):
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

    def drift(v):
        return u8(v + rng.uniform(-20, 20, (v.shape[0], 1, 1)))

    return {
        "as published (this copy)": lambda v: v,
        "squeezed to 40..210 (EPFL originals span ~170 levels)": lambda v: u8(40 + v * (170 / 255)),
        "flat: 64..192": lambda v: u8(64 + v * 0.5),
        "darker (x 0.6)": lambda v: u8(v * 0.6),
        "brighter (x 0.8 + 50)": lambda v: u8(v * 0.8 + 50),
        "gamma 0.7": lambda v: u8(255 * (v / 255) ** 0.7),
        "gamma 1.4": lambda v: u8(255 * (v / 255) ** 1.4),
        "brightness drifting +-20 levels per slice": drift,
    }


RULES = {"run": None, "percentile": "percentile", "fixed 0..255": (0.0, 255.0), "matched": "matched"}
# None: the run's Config.normalize; "matched": grey levels moved onto the training volume's histogram first


def validation_threshold(run: str | Path) -> float:
    """The probability threshold chosen on the run's validation split (by `train` or `compare`), else 0.5."""
    pp = postprocess.read(run)
    return pp.threshold if pp else 0.5


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="trained run folders (e.g. a compare report's model_2D)")
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    p.add_argument("--slices", type=int, default=64, help="central test slices to use")
    p.add_argument("--rules", nargs="+", choices=list(RULES), default=list(RULES),
                   help="normalisation rules to score (default: all; run: the rule the run was trained with)")
    p.add_argument("--changes", nargs="+", default=[""], help="score only changes whose name holds one of these")
    p.add_argument("--pad", type=int, default=0, help="black border in Y and X, in pixels, around each volume")
    p.add_argument("--keep-padding", action="store_true", help="keep padding in the windows (the rule off)")
    a = p.parse_args(argv)
    if a.keep_padding:
        io.PADDING_SHARE = 1.0  # no grey level holds more than all voxels: nothing is left out
    bench = compare.load_benchmark("lucchi")
    z0 = (bench.test_image.shape[0] - a.slices) // 2
    image, truth = bench.test_image[z0:z0 + a.slices], bench.test_mask[z0:z0 + a.slices]
    pad = ((0, 0), (a.pad, a.pad), (a.pad, a.pad))
    inner = np.s_[:, a.pad:a.pad + image.shape[1], a.pad:a.pad + image.shape[2]]
    rows = []
    meta = header(__file__, argv, bench.description, slices=[z0, z0 + a.slices])
    for run in a.runs:
        model, cfg = train.load_model(run)
        chosen = validation_threshold(run)
        with_training_histogram(model, cfg, bench.train_image)
        for name, change in changes().items():
            if not any(part in name for part in a.changes):
                continue
            vol = np.pad(change(image), pad)
            tile = predict.default_tile(cfg.dims, vol.shape, cfg.tile)
            row = {"model": f"{cfg.dims}D, {cfg.normalize}", "folder": Path(run).name, "change": name,
                   "grey_levels": int(np.ptp(vol)), "validation_threshold": chosen, "padding": a.pad,
                   "padding_left_out": not a.keep_padding}
            for rule in a.rules:
                spec = RULES[rule] or cfg.normalize
                if spec == "matched":  # as `mitoseg predict --match-training`
                    window = predict.input_window(model, vol, match_training=True)
                else:
                    window = io.intensity_range(vol, rule=spec) if isinstance(spec, str) else spec
                probs = predict.predict_array(model, vol, cfg.dims, tile, cfg.overlap, window, amp=cfg.amp)[inner]
                row[rule] = metrics.scores(metrics.confusion(probs >= 0.5, truth))["jaccard"]
                if chosen != 0.5:
                    row[f"{rule}, validation threshold"] = metrics.scores(
                        metrics.confusion(probs >= chosen, truth))["jaccard"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            save(a.out, {**meta, "rows": rows}, table(rows, z0, a.slices, a.rules))  # a stopped run keeps its rows
    print(table(rows, z0, a.slices, a.rules))


def padded(rows: list[dict]) -> str:
    """The table's words for the black borders the rows' volumes were placed in, if any."""
    if not rows or not rows[0].get("padding"):
        return ""
    kept = "left out of the windows" if rows[0]["padding_left_out"] else "kept in the windows: the rule off"
    return f", each placed in black borders of {rows[0]['padding']} pixels in Y and X (padding {kept})"


def table(rows: list[dict], z0: int, slices: int, rules: list[str]) -> str:
    """The Markdown table of `rows`: IoU per rule (and at the validation threshold where it is not 0.5)."""
    keys = [k for rule in rules for k in (rule, f"{rule}, validation threshold") if any(k in r for r in rows)]
    names = {"run": "the run's own rule", "percentile": "percentile rule", "fixed 0..255": "fixed 0..255 (old rule)",
             "matched": "matched to the training histogram"}
    heads = [f"IoU, {names.get(k, k)}" if k in names else f"IoU, {k.split(',')[0]}, at the validation threshold"
             for k in keys]
    lines = [f"Test IoU (no TTA, probability 0.5 unless said) on CA1 test slices {z0}..{z0 + slices - 1} under "
             "grey-level changes" + padded(rows) + "; difference to the unchanged volume in brackets.", "",
             "| model | change | grey levels | " + " | ".join(heads) + " |", "|---|---|---|" + "---|" * len(keys)]
    for r in rows:
        base = next(b for b in rows if (b["model"], b.get("folder")) == (r["model"], r.get("folder")))
        cells = [f"{r[k]:.4f} ({r[k] - base[k]:+.4f})" + (f" at {r['validation_threshold']:g}" if "validation" in k
                                                              else "") if k in r else "—" for k in keys]
        model = f"{r['model']} ({r['folder']})" if "folder" in r else r["model"]
        lines.append(f"| {model} | {r['change']} | {r['grey_levels']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
