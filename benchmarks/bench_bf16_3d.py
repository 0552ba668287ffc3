"""One 3D training step (forward + backward) on a CPU, float32 against bf16 autocast, by patch and voxel size.

Why `train.training_amp` keeps bf16 for 3D patches of at most 32 x 128 x 128 voxels, at least 8 slices deep as the
network sees them (padded to its Z strides: 4 for 50 x 4.6 x 4.6 nm, 32 for 5 nm), whose encoder halves Y and X
from its first stage: outside that, oneDNN's bf16 backward of some convolutions stalls (the full preset's
32 x 256 x 256 patch: its decoder's 256 -> 128 convolution at 4 x 32 x 32; voxels finer along Z; 2 to 4 ssTEM
sections, padded to 4). Each case runs in
a fresh subprocess with a time limit (`--limit` seconds for a warm-up step and two timed ones); a case past it is
reported as stalled, one whose process dies as crashed. Untrained, seeded model (weights do not change the speed),
random input.

Run from the repository root:
    .venv/bin/python benchmarks/bench_bf16_3d.py --out results/bench/2026-12-08-bf16-3d-depth --limit 90  # ~10 min
    .venv/bin/python benchmarks/bench_bf16_3d.py --small   # the 32 x 128 x 128 cube only
Writes bf16_3d.json (bf16_3d_small.json) into --out.
"""

from __future__ import annotations

import json
import sys
import time

import common

CASES = [((32, 128, 128), (5.0, 5.0, 5.0)), ((32, 128, 128), (50.0, 4.6, 4.6)), ((32, 256, 256), (5.0, 5.0, 5.0)),
         ((32, 128, 128), (2.0, 10.0, 10.0)), ((8, 128, 128), (50.0, 4.6, 4.6)), ((4, 128, 128), (50.0, 4.6, 4.6)),
         ((2, 128, 128), (50.0, 4.6, 4.6)), ((2, 128, 128), (5.0, 5.0, 5.0))]


def child(spec: dict) -> None:
    """Two timed training steps (after one warm-up) of the case `spec`; their seconds as the RESULT line."""
    import torch

    from mitoseg.config import Config
    from mitoseg.models import autocast, build_model, channels_last

    torch.manual_seed(spec["seed"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    z, y, x = spec["patch"]
    net = channels_last(build_model(Config(dims=3, patch_z=z, patch_xy=y, voxel_size=tuple(spec["voxel"]))), 3)
    data = torch.randn(1, 1, z, y, x).to(memory_format=torch.channels_last_3d)
    seconds = []
    for _ in range(3):
        t0 = time.perf_counter()
        with autocast(torch.device("cpu"), spec["bf16"]):
            loss = net(data).float().mean()
        loss.backward()
        seconds.append(time.perf_counter() - t0)
    common.report({"step_seconds": min(seconds[1:])})


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        return child(json.loads(sys.argv[2]))
    p = common.parser(__doc__)
    p.add_argument("--limit", type=float, default=120.0, help="seconds a case may take before it counts as stalled")
    args = p.parse_args()
    common.setup(args)
    info = common.machine_info()
    notes = [common.UNTRAINED, "batch 1, channels-last, each case in a fresh subprocess",
             f"a case past {args.limit:g} s (warm-up and two steps) is stalled"]
    common.print_header("3D training steps on a CPU: float32 and bf16", info, notes)
    rows = []
    for patch, voxel in CASES[:1] if args.small else CASES:
        row = {"patch": "x".join(map(str, patch)), "voxel_nm": "x".join(f"{v:g}" for v in voxel)}
        for name, bf16 in (("fp32", False), ("bf16", True)):
            spec = {"patch": patch, "voxel": voxel, "bf16": bf16, "seed": args.seed, "threads": args.threads}
            r = common.run_child(__file__, spec, timeout=args.limit, crash_ok=True)
            row[name] = r.get("step_seconds") if r else None  # None: stalled or crashed, said in row[name_failed]
            if row[name] is None:
                row[f"{name}_failed"] = f"crashed (exit {r['crashed']})" if r else f"stalled (> {args.limit:g} s)"
            print(f"   {row['patch']} at {row['voxel_nm']} nm, {name}: "
                  + (f"{row[name]:.2f} s" if row[name] is not None else row[f"{name}_failed"]), flush=True)
        rows.append(row)
    print()
    print(common.table(rows, [("patch", "patch", ""), ("voxel_nm", "voxel nm", ""), ("fp32", "fp32 s/step", ".2f"),
                              ("bf16", "bf16 s/step", ".2f"), ("bf16_failed", "bf16 failed", "")]))
    payload = {"benchmark": "bf16_3d", "machine": info, "settings": {"limit_s": args.limit, "cases": CASES},
               "notes": notes, "results": rows}
    print(f"\nwrote {common.save_json(args.out, common.output_name('bf16_3d', args.small), payload)}")


if __name__ == "__main__":
    main()
