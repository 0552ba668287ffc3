"""How wide a halo a bioimage.io consumer needs: blocks cut with a halo against one whole-slice pass.

    python experiments/halo.py RUN --out results/bench/halo.json [--slice 78]

A consumer that predicts block by block (bioimageio.core's `blocksize_parameter`, deepImageJ's tiles) pads
each block by the output's `halo`, predicts and crops it (`export.halos`). This runs the run's exported network
(sigmoid, TorchScript-ready, `export.preprocess` over the whole slice) on a 512 x 512 crop of one CA1 test slice
whole, and block by block as such a consumer does (the slice padded with zeros, blocks of `inner` + 2 `halo`
pixels, their centres kept), for several inner sizes and halos, and reports the largest probability difference
and the IoU of the masks at 0.5 in the crop's interior (64 pixels from its edges), with mitoseg's own
overlapping, blended tiles (`predict.predict_array`) beside them. Writes the JSON and a Markdown table beside it.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from record import header, provenance, save, short

from mitoseg import datasets, export, io
from mitoseg.predict import predict_array
from mitoseg.train import load_model

INNER = (32, 96, 160, 288)
HALOS = (0, 32, 64, 96, 112)
EDGE = 64  # the interior: pixels this far from the crop's edges


def blockwise(net: torch.nn.Module, x: torch.Tensor, inner: int, halo: int) -> np.ndarray:
    """`net` on the (1, 1, Y, X) input block by block as a consumer predicts: zero padding, centres kept."""
    size = x.shape[-1]
    whole = -(-size // inner) * inner
    padded = torch.nn.functional.pad(x, (halo, halo + whole - size, halo, halo + whole - size))
    out = np.zeros((whole, whole), np.float32)
    for y in range(0, whole, inner):
        for x0 in range(0, whole, inner):
            block = net(padded[:, :, y:y + inner + 2 * halo, x0:x0 + inner + 2 * halo]).numpy()[0, 0]
            out[y:y + inner, x0:x0 + inner] = block[halo:halo + inner, halo:halo + inner]
    return out[:size, :size]


def agreement(probs: np.ndarray, whole: np.ndarray) -> dict:
    """Largest probability difference and mask IoU at 0.5 against `whole`, in the interior."""
    a, b = (p[EDGE:-EDGE, EDGE:-EDGE] >= 0.5 for p in (probs, whole))
    return {"max_difference": float(np.abs(probs - whole)[EDGE:-EDGE, EDGE:-EDGE].max()),
            "mask_iou": float((a & b).sum() / max((a | b).sum(), 1))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--out", required=True)
    parser.add_argument("--slice", type=int, default=78, help="the CA1 test slice (default 78)")
    a = parser.parse_args(argv)
    torch.set_num_threads(2)
    folder, data = datasets.lucchi_dir()
    raw = io.open_volume(folder / "testing.tif")[a.slice, 128:640, 256:768].astype(np.float32)[None, None]
    model, config = load_model(a.run, "cpu")
    net = export._Probabilities(export.traceable(model.net)).eval()
    x = torch.from_numpy(export.preprocess(raw))
    low, high = np.percentile(raw, [export.LOW, export.HIGH])
    with torch.no_grad():
        whole = net(x).numpy()[0, 0]
        rows = [{"inner": inner, "halo": halo, **agreement(blockwise(net, x, inner, halo), whole)}
                for halo in HALOS for inner in INNER]
    own = predict_array(model, raw[0], 2, (1, *config.tile[1:]), config.overlap, (float(low), float(high) + export.EPS),
                        torch.device("cpu"), amp=False)[0]
    record = header(__file__, argv, data, run=short(a.run), slice=a.slice,
                    package_halo=export.halos(config, config.tile[1:]), rows=rows,
                    mitoseg_tiles={"tile": list(config.tile[1:]), "overlap": config.overlap, **agreement(own, whole)})
    lines = ["| halo (px) | " + " | ".join(f"inner {i}" for i in INNER) + " |", "|---" * (len(INNER) + 1) + "|"]
    for halo in HALOS:
        cells = [next(r for r in rows if r["halo"] == halo and r["inner"] == i) for i in INNER]
        lines.append(f"| {halo} | " + " | ".join(f"{c['mask_iou']:.4f} ({c['max_difference']:.2f})" for c in cells)
                     + " |")
    mt = record["mitoseg_tiles"]
    save(a.out, record, "\n".join([
        f"Blocks against one whole-slice pass, CA1 test slice {a.slice} (512 x 512), run {short(a.run)}: mask IoU at "
        "0.5 (largest probability difference) in the interior.", "", *lines, "",
        f"mitoseg's own tiles ({mt['tile'][0]} px, overlap {mt['overlap']:g}, blended): {mt['mask_iou']:.4f} "
        f"({mt['max_difference']:.2f}). The package's halo: {record['package_halo']}.", "", provenance(record)]))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
