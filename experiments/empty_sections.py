"""How much of a Drosophila score the three 1-bit mask sections moved: a compare's final test masks scored against
the truth as mitoseg reads it now and as it read it until 2026-12-07 (sections 1, 7 and 18 empty).

    python experiments/empty_sections.py REPORT_FOLDER --out results/drosophila-quick/empty_sections.json

REPORT_FOLDER: the output of `mitoseg compare --dataset drosophila` (with its models' `test_labels.zarr`, the final
masks' objects). Three of the stack's 20 mask PNGs are 1-bit; stacked with the 8-bit ones they were read as 0/1,
so `> 127` emptied them in training, validation and test alike. Scoring the same masks both ways isolates what the
empty sections did to the test scores alone (not to training). Scores as `mitoseg compare` gives them
(`compare._scores`). Writes the JSON and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from record import header, provenance, save, short  # experiments/ is the script's folder, so on sys.path

from mitoseg import compare, io

ONE_BIT = (1, 7, 18)  # the stack's 1-bit mask sections (tests/test_io.py checks it)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", help="a `mitoseg compare --dataset drosophila` output folder")
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    a = p.parse_args(argv)
    bench = compare.load_benchmark("drosophila")
    before = bench.test_mask.copy()
    before[list(ONE_BIT)] = 0
    report = json.loads((Path(a.report) / "report.json").read_text())
    meta = header(__file__, argv, bench.description, report=short(a.report), report_command=report["command"])
    rows = []
    for model in ("2D", "3D", "2D+3D"):
        path = Path(a.report) / f"model_{model}" / "test_labels.zarr"
        if not path.exists():
            continue
        labels = np.asarray(io.open_volume(path)[:])
        min_size = int(json.loads((path.parent / "postprocessing.json").read_text())["chosen"]["min_size"])
        rows.append({"model": model, "min_size": min_size,
                     "as_read_now": compare._scores(labels > 0, bench.test_mask, min_size, labels=labels),
                     "sections_1_7_18_empty": compare._scores(labels > 0, before, min_size, labels=labels)})
        print(json.dumps(rows[-1]), flush=True)
    save(a.out, {**meta, "rows": rows}, table(rows, meta))
    print(table(rows, meta))


def table(rows: list[dict], meta: dict) -> str:
    """One line per model and truth: the voxel scores and object F1 of the same final masks."""
    lines = [f"The final test masks of `{meta['report_command']}` scored against the Drosophila test half as read "
             "now and with sections 1, 7 and 18 empty (as read until 2026-12-07). " + provenance(meta), "",
             "| model | truth | test IoU | F1 | precision | recall | object F1 | objects (masks / truth) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for key, words in (("as_read_now", "as read now"), ("sections_1_7_18_empty", "sections 1, 7, 18 empty")):
            s = r[key]
            lines.append(f"| {r['model']} | {words} | {s['jaccard']:.4f} | {s['f1']:.4f} | {s['precision']:.4f} | "
                         f"{s['recall']:.4f} | {s['object_f1_iou50']:.3f} | {s['objects_predicted']} / "
                         f"{s['objects_true']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
