"""How many CA1 test voxels lie next to the labelled surface, and how many of them the labels' own
slice-to-slice jitter accounts for.

    python experiments/surface_band.py --out results/ca1-ablation/surface-band/surface_band.json

The band: voxels within one voxel (5 nm) of the test labels' surface, inside and outside, by the distance
`metrics.error_places` uses. The jitter: `metrics.error_places` of the labels smoothed along Z (a Gaussian of
`--sigmas` slices, thresholded at 0.5) against the labels themselves. About a minute on 2 cores.
"""

from __future__ import annotations

import argparse

import edt
import numpy as np
from record import header, provenance, save  # experiments/ is the script's folder, so on sys.path
from scipy import ndimage

from mitoseg import compare, metrics


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    p.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 2.0], help="Z Gaussians, in slices")
    a = p.parse_args(argv)

    bench = compare.load_benchmark("lucchi", None)
    truth = np.asarray(bench.test_mask) > 0
    spacing = tuple(float(v) for v in bench.voxel_size)
    distance = edt.edt(truth.view(np.uint8) + np.uint8(1), anisotropy=spacing, black_border=False,
                       parallel=metrics.cores())
    band = distance <= spacing[-1] * (1 + 1e-9)
    record = header(__file__, argv, bench.description, band_inside=int(np.count_nonzero(band & truth)),
                    band_outside=int(np.count_nonzero(band & ~truth)), smoothed={})
    for sigma in a.sigmas:
        smooth = ndimage.gaussian_filter1d(truth.astype(np.float32), sigma, axis=0) >= 0.5
        record["smoothed"][str(sigma)] = metrics.error_places(smooth, truth, bench.voxel_size)
    save(a.out, record, table(record))
    print(table(record))


def table(record: dict) -> str:
    lines = ["# The CA1 test labels' surface band", "", provenance(record), "",
             f"Voxels within one voxel of the labelled surface: {record['band_inside']:,} inside, "
             f"{record['band_outside']:,} outside, {record['band_inside'] + record['band_outside']:,} in all.", "",
             "| labels smoothed along Z (Gaussian, slices), threshold 0.5 | wrong voxels against the labels | "
             "of them within one voxel of the surface | IoU |", "|---|---|---|---|"]
    for sigma, e in record["smoothed"].items():
        lines.append(f"| {sigma} | {e['fp'] + e['fn']:,} | {e['fp_near_1'] + e['fn_near_1']:,} | {e['jaccard']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
