"""Which execution settings make the U-Nets fastest at inference, measured side by side in one run.

For the 2D and the 3D model (untrained, seeded: weights do not change the speed), on batches of real
tiles: eager float32, channels-last memory format, `torch.compile`, ONNX Runtime (CPU, float32; when
`onnx` and `onnxruntime` are installed, which mitoseg does not need), and, on a GPU or a CPU with native
bf16 (AVX512-BF16/AMX), bf16 autocast with and without channels-last / compile (`mitoseg predict` runs
bf16 channels-last there, float32 channels-last elsewhere). Prints voxels/s
per setting and the speed-up over eager; mitoseg keeps a setting only where it wins here.
Also counts each model's FLOPs per voxel (torch.utils.flop_counter) and, on a GPU, the achieved
TFLOP/s as a fraction of the bf16 peak given by --peak-tflops (H100 SXM dense: 989).

Run from the repository root:
    .venv/bin/python benchmarks/bench_backends.py           # ~5 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_backends.py --small   # seconds
Writes backends.json (backends_small.json) into --out (default results/bench/).
"""

from __future__ import annotations

import contextlib

import common
import numpy as np


def flops_per_voxel(model, x) -> float:
    """Forward FLOPs of one batch divided by its voxels (a multiply-add counts 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / x.numel()


def onnx_runtime(model, x, threads: int):
    """A function running `model` exported to ONNX in ONNX Runtime (CPU, float32) on x's shape, or an error text
    when onnx/onnxruntime are not installed (they are not mitoseg dependencies: `pip install onnx onnxruntime`)."""
    import tempfile

    import torch

    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime not installed"
    path = tempfile.mkdtemp(prefix="bench_onnx_") + "/model.onnx"
    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    xn = x.cpu().numpy()
    return lambda: session.run(None, {"x": xn})[0]


def main() -> None:
    import torch

    from mitoseg.config import Config
    from mitoseg.models import bf16_native, build_model

    p = common.parser(__doc__)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="GPU bf16 dense peak, for the fraction")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="skip the torch.compile settings (their compiling dominates the run's time)")
    args = p.parse_args()
    device = common.setup(args)
    info = common.machine_info(device)
    common.print_header("inference backends", info, [common.UNTRAINED])
    raw, _ = common.load_stack()
    gpu = device.type == "cuda"
    size = 128 if args.small else 256
    shapes = {2: (8 if not gpu else 64, 1, size, size), 3: (1 if not gpu else 8, 1, 32, size, size)}
    settings = [("eager fp32", False, False, False), ("channels-last", True, False, False),
                ("torch.compile", False, True, False)]
    if not gpu:
        settings.append(("ONNX Runtime fp32", False, False, False))
    if bf16_native(device):
        settings += [("bf16", False, False, True), ("bf16 channels-last", True, False, True),
                     ("bf16 compile", False, True, True), ("bf16 channels-last compile", True, True, True)]
    if not args.compile:
        settings = [s for s in settings if not s[2]]
    rows = []
    for dims, shape in shapes.items():
        torch.manual_seed(args.seed)
        base = build_model(Config(dims=dims)).to(device).eval()
        tiles = common.mirror_tile(raw, (shape[0] * (shape[2] if dims == 3 else 1), size, size))
        x = torch.from_numpy(tiles.reshape(shape).astype(np.float32) / 255).to(device)
        fpv = flops_per_voxel(base, x)
        eager = None
        for name, channels_last, compiled, bf16 in settings:
            model = base
            xi = x
            if channels_last:
                fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
                model, xi = base.to(memory_format=fmt), x.to(memory_format=fmt)
            if compiled:
                try:
                    model = torch.compile(model)
                except Exception as e:  # noqa: BLE001 - report, don't stop the benchmark
                    rows.append({"model": f"{dims}D", "setting": name, "error": str(e)[:80]})
                    continue
            amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

            def run(model=model, xi=xi, amp=amp):
                with torch.inference_mode(), amp:
                    return model(xi)

            try:
                if name.startswith("ONNX"):
                    run = onnx_runtime(model, xi, torch.get_num_threads())
                    if isinstance(run, str):
                        rows.append({"model": f"{dims}D", "setting": name, "error": run})
                        continue
                common.timed(run, device)  # warm-up (compiles)
                times = [common.timed(run, device)[0] for _ in range(args.repeats)]
            except Exception as e:  # noqa: BLE001
                rows.append({"model": f"{dims}D", "setting": name, "error": str(e)[:80]})
                continue
            vps = x.numel() / common.median(times)
            eager = eager or vps
            row = {"model": f"{dims}D", "setting": name, "seconds": common.median(times), "voxels_per_s": vps,
                   "speedup": vps / eager, "kflop_per_voxel": fpv / 1e3}
            if gpu:
                row["tflops"] = fpv * vps / 1e12
                row["peak_fraction"] = row["tflops"] / args.peak_tflops
            rows.append(row)
            print(f"{dims}D {name}: {vps:,.0f} voxels/s ({vps / eager:.2f}x eager)", flush=True)
            base = base.to(memory_format=torch.contiguous_format)
    cols = [("model", "model", ""), ("setting", "setting", ""), ("seconds", "s/batch", ".3f"),
            ("voxels_per_s", "voxels/s", ",.0f"), ("speedup", "x eager", ".2f"),
            ("kflop_per_voxel", "kFLOP/voxel", ",.1f")]
    if gpu:
        cols += [("tflops", "TFLOP/s", ".1f"), ("peak_fraction", "of peak", ".1%")]
    print(common.table(rows, cols))
    path = common.save_json(args.out, common.output_name("backends", args.small),
                            {"machine": info, "shapes": shapes, "rows": rows, "note": common.UNTRAINED})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
