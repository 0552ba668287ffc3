"""Which kernel runs the 3D U-Net's convolutions on a CPU, and what `models.Conv3d` changes (float32).

PyTorch sends a float32 CPU convolution with batch 1 and few values to its im2col kernel
(`aten::slow_conv3d_forward`) instead of oneDNN; `models.Conv3d` hands those to oneDNN as the same
convolution in two groups. Measured here, each time for mitoseg's model and for the same weights with
plain `nn.Conv3d` (PyTorch's own choice):
1. the kernels of one training step (forward + backward), counted by torch's profiler, for the `cpu`
   preset's 32 x 128 x 128 patch and the thin-stack test's 8 x 64 x 64 patch of 50 nm sections;
2. plain `nn.Conv3d` at batch 2 against batch 1 on the thin patch (batch 2 takes oneDNN by itself);
3. inference of one 32 x 256 x 256 prediction tile (channels-last, inference mode, as `predict` runs);
4. how far float32 gradients are from float64 ones (same weights, real Drosophila patch, thin model):
   per weight tensor, the largest error over the tensor's largest gradient; plain at batch 1 (im2col),
   mitoseg at batch 1, plain at batch 2 (oneDNN by PyTorch's own choice; float64 at batch 2 beside it).
Timings are medians, the variants run in turn. Untrained, seeded models; the real Drosophila stack.

Run from the repository root:
    .venv/bin/python benchmarks/bench_conv3d.py --out results/bench/2026-12-05-conv3d   # ~2 min, 2 cores
    .venv/bin/python benchmarks/bench_conv3d.py --small   # the thin patch only, an 8 x 64 x 64 tile, one repeat
Writes conv3d.json (conv3d_small.json) into --out.
"""

from __future__ import annotations

import statistics
import time

import common
import numpy as np
import torch
from torch import nn

from mitoseg.config import Config, cpu
from mitoseg.models import build_model

THIN = dict(patch_z=8, patch_xy=64, voxel_size=(50.0, 4.6, 4.6))


def step(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """One forward + backward of a mean-square loss; the parameter gradients."""
    model.zero_grad()
    model(x).square().mean().backward()
    return [p.grad.clone() for p in model.parameters()]


def kernels(model: nn.Module, x: torch.Tensor) -> dict:
    with torch.profiler.profile() as prof:
        step(model, x)
    counts = {e.key: e.count for e in prof.key_averages()}
    return {"im2col": counts.get("aten::slow_conv3d_forward", 0), "onednn": counts.get("aten::mkldnn_convolution", 0)}


def median_seconds(fns: dict, repeats: int) -> dict:
    """Median wall seconds of each function, the functions called in turn `repeats` times after one warm-up."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def gradient_errors(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> dict:
    rel = [float((g.double() - r).abs().max() / r.abs().max()) for g, r in zip(grads, reference, strict=True)
           if float(r.abs().max()) > 0]
    return {"max": max(rel), "median": float(np.median(rel))}


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per variant (default 5)")
    args = p.parse_args()
    common.setup(args)
    repeats, shape = (1, (8, 64, 64)) if args.small else (args.repeats, (32, 256, 256))  # the inference tile
    info = common.machine_info(torch.device("cpu"))
    common.print_header("3D convolution kernels on the CPU (float32)", info, [common.UNTRAINED])
    raw, _ = common.load_stack()
    raw = common.mirror_tile(raw, (64, *raw.shape[1:]))  # 20 sections, mirrored in Z to 64
    rows = {}

    patches = (("cpu preset, 32 x 128 x 128", cpu(3)), ("thin stack, 8 x 64 x 64", Config(dims=3, **THIN)))
    for name, cfg in patches[1:] if args.small else patches:
        torch.manual_seed(args.seed)
        model = build_model(cfg).train()
        z, xy = cfg.patch_z, cfg.patch_xy
        x = torch.from_numpy(raw[:z, 256:256 + xy, 256:256 + xy].astype(np.float32) / 255)[None, None]
        rows[name] = {"mitoseg": kernels(model, x), "plain nn.Conv3d": kernels(common.plain_conv3d(model), x)}
        print(f"   {name}: kernels of one training step {rows[name]}", flush=True)

    torch.manual_seed(args.seed)
    thin = build_model(Config(dims=3, **THIN)).train()
    base = common.plain_conv3d(thin)
    x1 = torch.from_numpy(raw[:8, 256:320, 256:320].astype(np.float32) / 255)[None, None]
    x2 = torch.cat([x1, torch.from_numpy(raw[8:16, 256:320, 256:320].astype(np.float32) / 255)[None, None]])
    steps = median_seconds({"plain, batch 1": lambda: step(base, x1), "plain, batch 2": lambda: step(base, x2),
                            "mitoseg, batch 1": lambda: step(thin, x1)}, repeats)
    print(f"   thin patch, seconds per training step: {steps}", flush=True)

    torch.manual_seed(args.seed)
    predictor = build_model(cpu(3)).eval().to(memory_format=torch.channels_last_3d)
    predictor_plain = common.plain_conv3d(predictor)
    tile = torch.from_numpy(raw[:shape[0], :shape[1], :shape[2]].astype(np.float32) / 255)[None, None]
    tile = tile.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        tiles = median_seconds({"mitoseg": lambda: predictor(tile), "plain nn.Conv3d": lambda: predictor_plain(tile)},
                               repeats)
    print(f"   {' x '.join(map(str, shape))} tile, seconds of inference: {tiles}", flush=True)

    reference = common.plain_conv3d(thin).double()
    errors = {
        "plain, batch 1 (im2col)": gradient_errors(step(base, x1), step(reference, x1.double())),
        "mitoseg, batch 1 (oneDNN)": gradient_errors(step(thin, x1), step(reference, x1.double())),
        "plain, batch 2 (oneDNN by itself)": gradient_errors(step(base, x2), step(reference, x2.double())),
    }
    for name, err in errors.items():
        print(f"   float32 gradient error over float64, {name}: largest {err['max']:.1e}, median {err['median']:.1e}")

    payload = {"benchmark": "conv3d", "machine": info, "settings": {"repeats": repeats, "seed": args.seed},
               "notes": [common.UNTRAINED, "training mode (BatchNorm of the batch), float32, CPU"],
               "kernels_per_training_step": rows, "thin_step_seconds": steps,
               f"tile_{'x'.join(map(str, shape))}_inference_seconds": tiles, "gradient_error_over_float64": errors}
    print(f"\n   saved {common.save_json(args.out, common.output_name('conv3d', args.small), payload)}")


if __name__ == "__main__":
    main()
