"""Inference throughput: mitoseg's `predict_volume` (into a Zarr) side by side with MONAI's sliding window.

Both run the SAME model (untrained and seeded; --model for a trained one) on the same real volume, in
the same run, with the same tile (MONAI's roi), overlap, Gaussian blending (sigma_scale 0.125), batch of
tiles and sigmoid probabilities blended (not logits). Ours runs as the product does by default: bf16
autocast on a GPU or a CPU with native bf16 (AVX512-BF16/AMX), float32 elsewhere (--no-amp: float32).
MONAI runs twice: in float32, as built (its default), and, when ours uses bf16, under the same bf16
autocast, so the table separates what the arithmetic gives from what the rest of the pipeline gives.
The untrained model's BatchNorm statistics are first set from one batch
of real tiles (no gradient step; --no-calibrate skips it): in eval mode an untrained model outputs a
near-constant, which would make the agreement check below say nothing; the speed is the same.

* ours: `mitoseg.predict.predict_volume(model, volume, <tmp>/probs.zarr, ...)`: the product path, from
  an in-memory uint8 volume to a Zarr of probabilities (uint8 by default, --dtype), intensity
  normalisation, blockwise blending and the Zarr write included in the time;
* MONAI: `monai.inferers.sliding_window_inference(x, roi, sw_batch_size, predictor=sigmoid(model(.)),
  overlap, mode="gaussian", sigma_scale=0.125)` under `torch.inference_mode()`, the normalisation of the
  volume to a float32 tensor on the device and the copy of the result back to a numpy array included.
  2D: the Z slices are passed as one batch (Z, 1, Y, X) with roi (tile, tile): MONAI then fills its
  batches of `sw_batch_size` windows across slices, as ours fills its batches across slices (a loop
  over slices would leave a part-empty last batch per slice). 3D: (1, 1, Z, Y, X) with roi = our tile
  clipped to the volume (ours clips it the same way; the model pads 20 slices to 32 alike for both).
* pipeline: ours with a network that returns its input (`Passthrough`): what the pipeline around the
  network costs, the most `predict_volume` could give with an infinitely fast network.

Agreement (with MONAI in the same arithmetic as ours): max and mean |ours - MONAI| of the probabilities, the
max away from the in-plane borders (a tile/4 margin, in Z too for 3D) and the fraction of voxels whose 0.5
threshold differs. Ours stores uint8 (rounding error up to 1/510 = 0.002). MONAI floors its Gaussian weight at
1e-3; ours keeps the Gaussian down to its smallest value (~4e-4 mid-edge, ~1e-7 in a tile's corners), so along
the volume's borders, where every covering tile is near its own edge, MONAI blends almost uniformly and ours
by the Gaussian: differences there can be large with a trained model. The tile grids are the same ("same
grid") when (size - tile) is a multiple of MONAI's step int(tile * (1 - overlap)) (1024 with tile 256 at
overlap 0.25 and 0.5); otherwise MONAI's last-but-one tile sits elsewhere and the blend differs inside the
volume too. Each method is warmed up once on a small crop before timing; the methods run in rotating order
and the median of --repeat runs is reported.

Run from the repository root:
    .venv/bin/python benchmarks/bench_predict.py           # ~10 min on 2 CPU cores (2D 20x1024x1024, 3D 20x512x512)
    .venv/bin/python benchmarks/bench_predict.py --small   # seconds (tiny crops, tile 64)
On CUDA the 3D volume is the whole 20x1024x1024 stack. Writes predict.json and predict.png
(predict_small.* with --small) into --out (default results/bench/).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path

import common
import numpy as np
import torch
import zarr

from mitoseg import io
from mitoseg.config import quick
from mitoseg.models import autocast, bf16_native, build_model
from mitoseg.predict import compute_steps, predict_volume


def ours(model, volume: np.ndarray, dims: int, tile: tuple[int, int, int], overlap: float, batch: int,
         dtype: str, amp: bool, device: torch.device, out: Path, predictor=predict_volume) -> Path:
    return predictor(model, volume, out, dims, tile, overlap, dtype=dtype, batch_size=batch, amp=amp,
                     device=device, overwrite=True, progress=False)


class Passthrough(torch.nn.Module):
    """A "network" that returns its input: `predict_volume` with it times the pipeline around the network
    (reading, normalising, copying, cutting tiles, blending, storing), its ceiling."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))  # a parameter, so the device and fingerprint exist

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def monai(model, volume: np.ndarray, dims: int, tile: tuple[int, int, int], overlap: float, batch: int,
          amp: bool, device: torch.device) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    image = torch.from_numpy(io.normalize(volume, io.intensity_range(volume))).to(device)
    if dims == 2:
        x, roi = image[:, None], tile[1:]  # (Z, 1, Y, X): the slices as a batch
    else:
        x, roi = image[None, None], tile  # (1, 1, Z, Y, X)
    roi = tuple(min(r, s) for r, s in zip(roi, x.shape[2:], strict=True))

    def predictor(t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model(t).float())

    with torch.inference_mode(), autocast(device, amp):
        y = sliding_window_inference(x, roi, batch, predictor, overlap=overlap, mode="gaussian", sigma_scale=0.125)
    y = y[:, 0] if dims == 2 else y[0, 0]
    return y.float().cpu().numpy()


def calibrate_batchnorm(model: torch.nn.Module, volume: np.ndarray, dims: int, tile: tuple[int, int, int],
                        batch: int, device: torch.device) -> None:
    """Set BatchNorm running statistics from one batch of real tiles (no gradient, weights untouched).

    An untrained model in eval mode outputs a near-constant (std ~1e-4), which would make the agreement
    check empty; with its normalisation statistics taken from real data its output follows the image.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batch
    image = io.normalize(volume, io.intensity_range(volume))
    if dims == 2:
        x = image[:batch, : tile[1], : tile[2]][:, None]
    else:
        x = image[None, None, : tile[0], : tile[1], : tile[2]]
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(np.ascontiguousarray(x)).to(device))
    model.eval()


def n_tiles(shape: tuple[int, ...], tile: tuple[int, int, int], overlap: float) -> int:
    return int(np.prod([len(compute_steps(s, t, overlap)) for s, t in zip(shape, tile, strict=True)]))


def same_grid(shape: tuple[int, ...], tile: tuple[int, ...], overlap: float, dims: int) -> bool:
    """Whether MONAI's windows start where ours do on every axis it slides along (tile = our clipped tile)."""
    from monai.data.utils import dense_patch_slices

    for size, t in zip(shape[3 - dims:], tile[3 - dims:], strict=True):
        interval = t if t == size else max(1, int(t * (1 - overlap)))  # monai.inferers.utils._get_scan_interval
        theirs = [sl[0].start for sl in dense_patch_slices((size,), (t,), (interval,))]
        if theirs != compute_steps(size, t, overlap):
            return False
    return True


def run_case(model, reference, volume: np.ndarray, dims: int, tile: tuple[int, int, int], overlap: float, args,
             device: torch.device, tmp: Path) -> dict:
    """Time each method `repeat` times, in rotating order, and compare their outputs with ours.

    Methods: ours (bf16 autocast where native, unless --no-amp), MONAI in float32 (as built, its
    default), and, when autocast is active, MONAI under the same bf16 autocast as ours; timed only:
    ours with `Passthrough` for the network (the pipeline's ceiling), and with --base, ours as it was at
    that git revision (`predict_volume` of its `mitoseg/predict.py`).
    """
    amp = args.amp and bf16_native(device)
    methods = ["ours", "monai"] + (["monai_bf16"] if amp else []) + ["pipeline"] + (["base"] if args.base else [])
    passthrough = Passthrough().to(device)
    base = common.module_at(args.base, "predict").predict_volume if args.base else None
    times = {m: [] for m in methods}
    outputs = {}
    for r in range(args.repeat):
        for method in methods[r % len(methods):] + methods[:r % len(methods)]:
            if method in ("pipeline", "base"):
                path = tmp / f"{method}_{r}.zarr"
                net, fn = (passthrough, predict_volume) if method == "pipeline" else (model, base)
                t, _ = common.timed(lambda p=path, net=net, fn=fn: ours(net, volume, dims, tile, overlap,
                                                                        args.batch_size, args.dtype, amp, device,
                                                                        p, fn), device)
                shutil.rmtree(path)
            elif method == "ours":
                path = tmp / f"ours_{r}.zarr"
                t, _ = common.timed(lambda p=path: ours(model, volume, dims, tile, overlap, args.batch_size,
                                                        args.dtype, amp, device, p), device)
                if method not in outputs:
                    stored = zarr.open_array(str(path), mode="r")[:]
                    outputs[method] = stored.astype(np.float32) / (255 if stored.dtype == np.uint8 else 1)
                shutil.rmtree(path)
            else:
                t, result = common.timed(lambda m=method: monai(reference, volume, dims, tile, overlap,
                                                                args.batch_size, m == "monai_bf16", device), device)
                outputs.setdefault(method, result)
            times[method].append(t)
    ours_out = outputs["ours"]
    same_as = "monai_bf16" if amp else "monai"  # MONAI with the same arithmetic as ours
    same = outputs[same_as]
    diff = np.abs(ours_out - same)
    # interior: a tile/4 margin from the volume's borders (in Z too for 3D), where MONAI's 1e-3 weight floor acts
    eff_tile = tuple(min(t, s) for t, s in zip(tile, volume.shape, strict=True))
    margin = [t // 4 if t > 1 else 0 for t in eff_tile]
    interior = diff[tuple(slice(m, n - m) for m, n in zip(margin, diff.shape, strict=True))]
    interior = interior if interior.size else diff
    voxels = volume.size
    med = {m: common.median(times[m]) for m in methods}
    row = {
        "dims": dims, "volume_zyx": list(volume.shape), "voxels": voxels, "tile_zyx": list(eff_tile),
        "overlap": overlap, "batch_size": args.batch_size, "tiles": n_tiles(volume.shape, eff_tile, overlap),
        "ours_bf16": amp, "same_tile_grid": same_grid(volume.shape, eff_tile, overlap, dims),
        "agreement_with": same_as,
        "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
        "interior_margin": margin, "interior_max_abs_diff": float(interior.max()),
        "threshold_disagreement_fraction": float(np.mean((ours_out >= 0.5) != (same >= 0.5))),
        "threshold_disagreement_vs_monai_float32": float(np.mean((ours_out >= 0.5) != (outputs["monai"] >= 0.5))),
        "ours_probability_min_max_std": [float(ours_out.min()), float(ours_out.max()), float(ours_out.std())],
    }
    for m in methods:
        row |= {f"{m}_seconds_median": med[m], f"{m}_seconds_all": times[m], f"{m}_voxels_per_second": voxels / med[m]}
    row["ratio_ours_over_monai_throughput"] = med["monai"] / med["ours"]
    if amp:
        row["ratio_ours_over_monai_bf16_throughput"] = med["monai_bf16"] / med["ours"]
    if args.base:
        row["ratio_ours_over_base_throughput"] = med["base"] / med["ours"]
    return row


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--dims", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    p.add_argument("--overlaps", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--tile", type=int, default=None, help="in-plane tile (default 256; 64 with --small)")
    p.add_argument("--tile-z", type=int, default=32, help="3D tile depth, clipped to the volume (default 32)")
    p.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass, both methods (default 8)")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per method and case (default 1; 2 --small)")
    p.add_argument("--dtype", default="uint8", choices=["uint8", "float16"], help="our stored probabilities")
    p.add_argument("--no-amp", dest="amp", action="store_false",
                   help="ours in float32 too (default: bf16 autocast where native, as the product)")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="keep the untrained model's BatchNorm statistics (near-constant output)")
    p.add_argument("--base", metavar="REV", help="also time ours as it was at this git revision (side by side)")
    p.add_argument("--model", action="append", default=[], metavar="RUN",
                   help="a trained run folder or checkpoint to use instead of the untrained model of its dims "
                        "(same speed; makes the agreement check sharper); may be given twice (2D and 3D)")
    args = p.parse_args()
    args.repeat = args.repeat or (2 if args.small else 1)
    tile_xy = args.tile or (64 if args.small else 256)
    device = common.setup(args)
    info = common.machine_info(device)
    common.print_header("inference: mitoseg predict_volume (Zarr) vs MONAI sliding_window_inference", info,
                        [common.UNTRAINED, "same model, tile, overlap, Gaussian blending, batch, volume"])

    untrained = "untrained, seeded" + (", BatchNorm statistics from real tiles" if args.calibrate else "")
    trained, sources = {}, {2: untrained, 3: untrained}
    for run in args.model:
        from mitoseg.train import load_model

        model, cfg = load_model(run, device)
        trained[cfg.dims], sources[cfg.dims] = model, f"trained: {run}"
    raw, _ = common.load_stack()
    if args.small:
        volumes = {2: raw[:4, 256:448, 256:448], 3: raw[:8, 256:384, 256:384]}
    else:
        volumes = {2: raw, 3: raw if device.type == "cuda" else raw[:, 256:768, 256:768]}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmpdir:
        tmp = Path(tmpdir)
        for dims in args.dims:
            volume = np.ascontiguousarray(volumes[dims])
            tile = (args.tile_z if dims == 3 else 1, tile_xy, tile_xy)
            model = trained.get(dims)
            if model is None:
                torch.manual_seed(args.seed)
                model = build_model(quick(dims)).to(device).eval()
                if args.calibrate:
                    calibrate_batchnorm(model, volume, dims, tile, args.batch_size, device)
            reference = copy.deepcopy(model)  # MONAI runs the model as built; ours converts it to channels-last
            crop = volume[: min(volume.shape[0], 8 if dims == 2 else tile[0]), :tile_xy, :tile_xy]
            ours(model, crop, dims, tile, 0.25, args.batch_size, args.dtype, args.amp, device, tmp / "warm.zarr")
            for amp in {False, args.amp and bf16_native(device)}:
                monai(reference, crop, dims, tile, 0.25, args.batch_size, amp, device)
            for overlap in args.overlaps:
                print(f"   {dims}D volume {volume.shape}, tile {tile}, overlap {overlap} ...", flush=True)
                rows.append(run_case(model, reference, volume, dims, tile, overlap, args, device, tmp))

    cols = [("dims", "model", ""), ("volume", "volume", ""), ("tile", "tile", ""), ("overlap", "overlap", ".2f"),
            ("tiles", "tiles", "d"), ("ours_seconds_median", "ours s", ".2f"),
            ("monai_seconds_median", "MONAI s", ".2f"),
            ("ours_voxels_per_second", "ours vox/s", ",.0f"), ("monai_voxels_per_second", "MONAI vox/s", ",.0f"),
            ("ratio_ours_over_monai_throughput", "ours/MONAI", ".2f"),
            ("monai_bf16_voxels_per_second", "MONAI bf16 vox/s", ",.0f"),
            ("ratio_ours_over_monai_bf16_throughput", "ours/MONAI bf16", ".2f"),
            ("pipeline_voxels_per_second", "pipeline vox/s", ",.0f"),
            *([("ratio_ours_over_base_throughput", f"ours/{args.base}", ".2f")] if args.base else []),
            ("same_tile_grid", "same grid", ""),
            ("max_abs_diff", "max |diff|", ".4f"), ("interior_max_abs_diff", "interior max", ".4f"),
            ("mean_abs_diff", "mean |diff|", ".5f"), ("threshold_disagreement_fraction", "0.5-flips", ".2e"),
            ("spread", "ours p min..max (std)", "")]
    shown = [dict(r, volume="x".join(map(str, r["volume_zyx"])), tile="x".join(map(str, r["tile_zyx"])),
                  dims=f"{r['dims']}D", spread="{:.3f}..{:.3f} ({:.3f})".format(*r["ours_probability_min_max_std"]))
             for r in rows]
    print()
    print(common.table(shown, cols))
    print(f"   ours/MONAI = throughput ratio (>1: ours faster); median of {args.repeat} run(s) each; tiles per"
          " volume; 0.5-flips = fraction of voxels thresholded differently")
    print("   same grid: MONAI's windows start where ours do; interior max: |diff| away from the volume's borders"
          " (tile/4), where MONAI floors the Gaussian weight at 1e-3 and ours does not")
    print("   models: " + "; ".join(f"{d}D {sources[d]}" for d in args.dims))
    if any(r["ours_probability_min_max_std"][2] < 0.01 for r in rows):
        print("   WARNING: a model's output is nearly constant (std < 0.01): the agreement check says little")

    name = common.output_name("predict", args.small)
    payload = {"benchmark": "predict", "machine": info,
               "settings": {"repeat": args.repeat, "batch_size": args.batch_size, "dtype": args.dtype,
                            "ours_bf16_autocast": bool(args.amp and bf16_native(device)), "tile_xy": tile_xy,
                            "tile_z": args.tile_z, "sigma_scale": 0.125, "data": common.DROSO.name,
                            "monai_2d": "slices as one batch (Z, 1, Y, X), roi (tile, tile)",
                            "models": {f"{d}D": sources[d] for d in args.dims}},
               "notes": [common.UNTRAINED, "ours includes normalisation and the Zarr write; MONAI includes "
                         "normalisation, the copy to the device and back to numpy",
                         "diff: ours is stored as uint8 (error <= 1/510) unless --dtype float16"],
               "results": rows}
    path = common.save_json(args.out, name, payload)

    plt = common.figure()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{r['dims']}D ov {r['overlap']:g}" for r in rows]
    x = np.arange(len(rows))
    bars = [("ours", "mitoseg predict_volume (Zarr)"), ("monai", "MONAI sliding_window_inference, float32"),
            ("monai_bf16", "MONAI, same bf16 autocast")]
    bars = [b for b in bars if f"{b[0]}_voxels_per_second" in rows[0]]
    width = 0.8 / len(bars)
    for i, (key, label) in enumerate(bars):
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, [r[f"{key}_voxels_per_second"] / 1e6 for r in rows], width,
               label=label)
    for xi, r in zip(x, rows, strict=True):
        ax.text(xi, r["ours_voxels_per_second"] / 1e6, f"{r['ratio_ours_over_monai_throughput']:.2f}x",
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, labels)
    ax.set_ylabel("million voxels / s")
    ax.set_title(f"inference throughput, same model and settings ({device.type})")
    ax.legend(fontsize=8)
    fig_path = common.save_figure(fig, args.out, name, info)
    print(f"\n   saved {path} and {fig_path}")


if __name__ == "__main__":
    main()
