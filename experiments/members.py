"""Several trained CA1 models together: the voxel-wise mean of their saved probabilities, post-processed as
validation chooses, against each model alone.

    python experiments/members.py --group NAME RUN RUN [RUN ...] [--group ...] --out runs/members/members.json

Each run folder must hold the probabilities `compare.evaluate_model` saved (val_probs.zarr and
test_probs_tta.zarr). For every run and every group: `predict.mean_probabilities` of the members (what
`mitoseg predict --model A --model B` writes), `postprocess.choose` on the validation split, then the whole
test volume scored raw (at 0.5) and post-processed. Nothing is trained or predicted; a minute or two per
row on 2 cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from record import header, provenance, save, short  # experiments/ is the script's folder, so on sys.path

from mitoseg import compare, io, metrics, postprocess, predict
from mitoseg.data import split


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", nargs="+", action="append", required=True, metavar="NAME RUN",
                   help="a name, then the run folders whose probabilities are averaged")
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    a = p.parse_args(argv)
    if any(len(g) < 3 for g in a.group):
        p.error("each --group takes a name and at least two run folders")
    bench = compare.load_benchmark("lucchi")
    _, val = split(bench.train_image, bench.train_mask, 0.15)
    truths = {"validation": np.asarray(val.mask) > 0, "test": np.asarray(bench.test_mask) > 0}
    record = header(__file__, argv, bench.description, rows=[])
    runs = sorted({run for g in a.group for run in g[1:]})
    wrong = {}  # each run's wrong test voxels (its own post-processed mask against the labels)
    for name, members in [(short(r), [r]) for r in runs] + [(g[0], g[1:]) for g in a.group]:
        probs = {"validation": predict.mean_probabilities([_read(m, "val_probs.zarr") for m in members])[
                     :, :, -val.mask.shape[2]:],  # the strip's columns (compares since 2026-12-07: 64 more before)
                 "test": predict.mean_probabilities([_read(m, "test_probs_tta.zarr") for m in members])}
        pp, candidates = postprocess.choose(probs["validation"], truths["validation"])
        mask = postprocess.apply(probs["test"], pp) > 0
        voxel = metrics.scores(metrics.confusion(mask, truths["test"]))
        if len(members) == 1:
            wrong[members[0]] = mask != truths["test"]
        every = np.logical_and.reduce([wrong[m] for m in members])
        some = np.logical_or.reduce([wrong[m] for m in members])
        record["rows"].append({
            "name": name, "members": [short(m) for m in members], "chosen": pp.as_dict(),
            "validation_iou": max(c["jaccard"] for c in candidates),
            "test_iou_tta_raw": metrics.jaccard(probs["test"] >= 128, truths["test"]),
            "test": {k: voxel[k] for k in ("jaccard", "f1", "precision", "recall", "accuracy")},
            "wrong": int(np.count_nonzero(mask != truths["test"])),
            "members_wrong_all": int(np.count_nonzero(every)), "members_wrong_any": int(np.count_nonzero(some))})
        save(a.out, record, table(record))
    print(table(record))


def _read(run: str, name: str) -> np.ndarray:
    return io.open_volume(Path(run) / name)[:]


def table(record: dict) -> str:
    lines = ["# CA1: trained models together (the mean of their probabilities)", "", provenance(record), "",
             "TTA probabilities (uint8, the mean rounded as `mitoseg predict` does); post-processing chosen on the "
             "validation split; the whole test volume.", "",
             "| models | chosen on validation | validation IoU | test IoU, TTA at 0.5 "
             "| **test IoU, + post-processing** "
             "| F1 | precision / recall | wrong voxels | wrong in every member / in any |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        c, t = r["chosen"], r["test"]
        setting = (f"threshold {c['threshold']:g}, Z blur {c['z_sigma']:g}, min {c['min_size']:,}"
                   + (", holes filled" if c["fill_holes"] else ""))
        models = r["name"] if r["members"] == [r["name"]] else f"{r['name']} ({' + '.join(r['members'])})"
        lines.append(f"| {models} | {setting} | {r['validation_iou']:.4f} | "
                     f"{r['test_iou_tta_raw']:.4f} | **{t['jaccard']:.4f}** | {t['f1']:.4f} | "
                     f"{t['precision']:.3f} / {t['recall']:.3f} | {r['wrong']:,} | "
                     + (f"{r['members_wrong_all']:,} / {r['members_wrong_any']:,} |" if len(r["members"]) > 1 else "|"))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
