"""Could a note tell a changed microscope (gamma) from other content, by the grey levels alone?

    python experiments/gaps.py --out results/ca1-ablation/gaps/gaps.json

The gap of `experiments/mixture.py` (how far a volume's grey levels, through its own linear window, land from
the CA1 training volume's, at the 5-95 % percentiles) of the CA1 test volume as it is and under each grey-level
change of `experiments/contrast.py` (and gamma 0.8 and 1.2), of the Drosophila ssTEM stack (another tissue and
microscope), and of crops of three slabs of 64 test and training slices (the first, central and last), every
128 pixels in Y and X (crops of 256, 384 and 512 pixels square, and whole slices of 768 x 1024), unchanged and
under gamma 1.4. Counts how often a note on a gap above ``NOTE_ABOVE`` would fire. No model
is run. Writes the JSON and a Markdown table beside it.
"""

from __future__ import annotations

import argparse

import numpy as np
from ablation import gamma, validation_strip
from contrast import changes  # experiments/ is the script's folder, so on sys.path
from mixture import gap, levels
from record import header, save

from mitoseg import compare, datasets
from mitoseg.config import Config

STRIDE = 128  # pixels between crops in Y and X (crops overlap)
NOTE_ABOVE = 0.045  # between the whole test volume as published (0.012) and under gamma 1.2 (0.050)


def crops(volume: np.ndarray, size: int) -> list[np.ndarray]:
    """(Z, size, size) crops of `volume` (Z, Y, X) every ``STRIDE`` pixels, whole slices when `size` is at
    least Y."""
    if size >= volume.shape[1]:
        return [volume]
    return [volume[:, y:y + size, x:x + size] for y in range(0, volume.shape[1] - size + 1, STRIDE)
            for x in range(0, volume.shape[2] - size + 1, STRIDE)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    p.add_argument("--slices", type=int, default=64, help="slices per slab the crops come from")
    a = p.parse_args(argv)
    bench = compare.load_benchmark("lucchi")
    train_levels = levels(bench.train_image)
    meta = header(__file__, argv, bench.description, note_above=NOTE_ABOVE, slices=a.slices)
    volumes = {f"test volume, {name}": change(bench.test_image) for name, change in changes().items()}
    volumes |= {f"test volume, gamma {g}": gamma(bench.test_image, g) for g in (0.8, 1.2)}
    volumes["training volume, validation strip (last 15 % in X)"] = validation_strip(bench, Config()).image
    volumes["Drosophila VNC ssTEM stack (another tissue and microscope)"] = datasets.drosophila()[0]
    whole = {name: gap(v, train_levels) for name, v in volumes.items()}
    depth = bench.test_image.shape[0]
    starts = (0, (depth - a.slices) // 2, depth - a.slices)
    rows = []
    for size in (256, 384, 512, 768):
        for source, volume in (("test", bench.test_image), ("training", bench.train_image)):
            pieces = [c for z in starts for c in crops(volume[z:z + a.slices], size)]
            unchanged = [gap(c, train_levels) for c in pieces]
            changed = [gap(gamma(c, 1.4), train_levels) for c in pieces]
            rows.append({"size": size, "source": source, "crops": len(pieces), "unchanged": unchanged,
                         "gamma_1.4": changed})
            print(rows[-1], flush=True)
    save(a.out, {**meta, "whole": whole, "crops": rows}, table(whole, rows, meta))
    print(table(whole, rows, meta))


def table(whole: dict, rows: list[dict], meta: dict) -> str:
    """The Markdown tables of a record: gaps of whole volumes, then crops' gaps and how often they pass the note."""
    limit = meta["note_above"]
    lines = [f"Gap (experiments/mixture.py) against the CA1 training volume; a note would fire above {limit}.",
             "", "| volume | gap | note |", "|---|---|---|"]
    lines += [f"| {name} | {g:.3f} | {'yes' if g > limit else 'no'} |" for name, g in whole.items()]
    lines += ["", f"Crops (every {STRIDE} pixels, overlapping) of three slabs of {meta['slices']} slices (first, "
              "central, last), unchanged and under gamma 1.4:", "",
              "| crop (pixels) | from | crops | gap, unchanged: min / median / max | noted "
              "| gap, gamma 1.4: min / median / max | noted |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for key in ("unchanged", "gamma_1.4"):
            g = np.asarray(r[key])
            cells += [f"{g.min():.3f} / {np.median(g):.3f} / {g.max():.3f}", f"{int((g > limit).sum())} of {g.size}"]
        size = "whole slices" if r["size"] >= 768 else f"{r['size']} x {r['size']}"
        lines.append(f"| {size} | {r['source']} | {r['crops']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
