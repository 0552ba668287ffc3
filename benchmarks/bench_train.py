"""Training step time of the 2D and the 3D U-Net: forward + backward + AdamW step with Dice+BCE loss.

Both models get the same voxels per iteration, as in training: `mitoseg.config.cpu(2)` / `cpu(3)`
(the 2-core CPU preset: 32 slices of 128x128 for 2D, one 32x128x128 patch for 3D, 524,288 voxels; and the
3D model of the anisotropic stack itself, 50 nm sections: one 20x128x128 patch, Z halved only twice), and
on a GPU (or with --full) also the full presets `gpu(2)` / `gpu(3)` (64 slices of 256x256 vs two
32x256x256 patches, 4,194,304 voxels). Each config runs in float32 and, where the device has native
bf16, also under bf16 autocast as `train` runs it; non-finite steps are counted.
Each iteration is exactly the loop body of `mitoseg.train.train`:
patches drawn by `data.PatchSampler` from the real Drosophila stack (mirror-tiled in Z when a patch is
deeper than its 20 sections), `data.augmenter` augmentation, then the step, timed apart from the data
("step") so the model's cost is seen alone; "iteration" is data + step. Models are untrained and seeded.
Medians over --steps timed iterations after --warmup untimed ones (the first allocates AdamW's state).
Every 3D config runs twice, step by step in turn on the same patches: as `train` runs it and, as the
baseline, with plain `nn.Conv3d` (PyTorch's own choice of convolution kernel, as `train` ran until the
fourth session of 2026-12-05; `models.Conv3d` keeps batch-1 float32 CPU convolutions on oneDNN). The
AdamW update is timed apart too (fused since 2026-12-05; its side-by-side record:
results/bench/2026-12-05-adamw/).

Run from the repository root:
    .venv/bin/python benchmarks/bench_train.py            # about 3 minutes on 2 CPU cores
    .venv/bin/python benchmarks/bench_train.py --small    # a few seconds (64x64 patches, 3 steps)
    .venv/bin/python benchmarks/bench_train.py --full     # adds the full presets (slow on CPU: ~15 min)
    .venv/bin/python benchmarks/bench_train.py --change '{"full_resolution": 16}'  # each config also so changed
Writes train.json and train.png (train_small.* with --small) into --out (default results/bench/).
"""

from __future__ import annotations

import json
import resource
import time

import common
import numpy as np
import torch

from mitoseg import data, io
from mitoseg.config import Config, cpu, gpu, quick
from mitoseg.models import autocast, bf16_native, build_model
from mitoseg.train import _finite_step, adamw, learning_rate


def configs(small: bool, full: bool, bf16: bool, change: dict | None = None) -> list[tuple[str, Config]]:
    if small:
        todo = [(f"small {d}D", quick(d, patch_xy=64, patch_z=8)) for d in (2, 3)]
    else:
        todo = [(f"cpu {d}D", cpu(d)) for d in (2, 3)]
        todo.append(("ssTEM 3D", cpu(3, patch_z=20, voxel_size=(50.0, 4.6, 4.6))))  # the whole 20-section stack deep
        if full:
            todo += [(f"full {d}D", gpu(d)) for d in (2, 3)]
    if change:  # each config beside itself with the change, named after it
        todo = [row for name, cfg in todo for row in ((name, cfg), (f"{name}{change_label(change)}",
                                                                    Config(**{**cfg.__dict__, **change})))]
    out = []
    for name, cfg in todo:
        out.append((f"{name} fp32", Config(**{**cfg.__dict__, "amp": False})))
        if bf16:
            out.append((f"{name} bf16", cfg))
    return out


def change_label(change: dict) -> str:
    """What a changed config's name gets after its own: " full_resolution 16"."""
    return " " + ", ".join(f"{k} {v}" for k, v in change.items())


BASELINE = ", plain nn.Conv3d (before)"  # the row's name suffix: PyTorch's own convolution kernels


def bench_config(name: str, cfg: Config, volume: data.Volume, device: torch.device, steps: int, warmup: int,
                 seed: int) -> list[dict]:
    """Time `warmup + steps` training iterations of one config; medians of the last `steps`. A 3D config runs
    also as the baseline (plain `nn.Conv3d`, as `train` ran until 2026-12-05's fourth session), step by step
    in turn with the same patches and the same initial weights, so a change of the machine's load hits both."""
    from monai.losses import DiceCELoss

    variants = (False, True) if cfg.dims == 3 else (False,)
    fmt = torch.channels_last if cfg.dims == 2 else torch.channels_last_3d
    models, optimizers = {}, {}
    for baseline in variants:
        torch.manual_seed(seed)
        model = build_model(cfg).to(device)
        if baseline:
            model = common.plain_conv3d(model)
        models[baseline] = model.to(memory_format=fmt).train()  # as train() does
        optimizers[baseline] = adamw(model, cfg, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loss_fn = DiceCELoss(sigmoid=True)
    sampler = data.PatchSampler(volume, cfg.patch, cfg.fg_fraction, np.random.default_rng(seed))
    tf = data.augmenter(seed, cfg.dims)
    times = {b: {"step": [], "update": [], "loss": [], "skipped": 0} for b in variants}
    data_s = []
    for i in range(warmup + steps):
        common.sync(device)
        t0 = time.perf_counter()
        x, y = data.augment(tf, *sampler.sample(cfg.samples_per_batch))
        if cfg.dims == 2:
            x, y = x[:, :, 0], y[:, :, 0]
        x, y = torch.from_numpy(x).to(device).contiguous(memory_format=fmt), torch.from_numpy(y).to(device)
        common.sync(device)
        if i >= warmup:
            data_s.append(time.perf_counter() - t0)
        for baseline in variants:
            model, optimizer, record = models[baseline], optimizers[baseline], times[baseline]
            t1 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, i, 0.0)
            with autocast(device, cfg.amp):
                loss = loss_fn(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            if _finite_step(model, loss):  # as train() does: a non-finite step is skipped
                common.sync(device)
                t_update = time.perf_counter()
                optimizer.step()
                common.sync(device)
                if i >= warmup:
                    record["update"].append(time.perf_counter() - t_update)
            else:
                record["skipped"] += 1
            loss = loss.item()
            common.sync(device)
            if i >= warmup:
                record["step"].append(time.perf_counter() - t1)
                record["loss"].append(loss)
    voxels = cfg.samples_per_batch * int(np.prod(cfg.patch))
    data_med = common.median(data_s)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shape = cfg.patch[3 - cfg.dims:]
    rows = []
    for baseline in variants:
        record = times[baseline]
        step_s, step_med = record["step"], common.median(record["step"])
        rows.append({
            "name": name + (BASELINE if baseline else ""), "dims": cfg.dims,
            "input": f"{cfg.samples_per_batch} x {'x'.join(map(str, shape))}",
            "samples_per_batch": cfg.samples_per_batch, "patch_zyx": list(cfg.patch), "voxels_per_iteration": voxels,
            "amp_bf16": bool(cfg.amp and bf16_native(device)), "skipped_steps": record["skipped"],
            "step_seconds_median": step_med, "step_seconds_min": min(step_s), "step_seconds_all": step_s,
            "adamw_seconds_median": common.median(record["update"]) if record["update"] else None,
            "data_seconds_median": data_med, "data_seconds_all": data_s,
            "iteration_seconds_median": common.median([a + b for a, b in zip(step_s, data_s, strict=True)]),
            "voxels_per_second_step": voxels / step_med,
            "voxels_per_second_iteration": voxels / (step_med + data_med),
            "loss_first_last": [record["loss"][0], record["loss"][-1]],
            "loss_finite": bool(np.isfinite(record["loss"]).all()),
            "peak_memory_mib": peak,
            "peak_memory_kind": ("GPU max_memory_allocated (both variants)" if device.type == "cuda"
                                 else "process peak RSS so far"),
        })
    return rows


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--steps", type=int, default=None, help="timed iterations per model (default 10; 3 with --small)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default 2)")
    p.add_argument("--full", action="store_true", help="also the full presets Config(2)/Config(3) (default on GPU)")
    p.add_argument("--change", type=json.loads, help='Config changes (JSON) each config is also timed with')
    args = p.parse_args()
    steps = args.steps or (3 if args.small else 10)
    device = common.setup(args)
    full = args.full or (device.type == "cuda" and not args.small)
    todo = configs(args.small, full, bf16_native(device), args.change)
    info = common.machine_info(device)
    common.print_header("training step time (forward + backward + AdamW, Dice+BCE)", info, [common.UNTRAINED])

    raw, mask = common.load_stack()
    depth = max([20] + [2 * c.patch_z for _, c in todo if c.dims == 3])
    shape = (depth, 256, 256) if args.small else (depth, *raw.shape[1:])
    image = io.normalize(common.mirror_tile(raw, shape), io.intensity_range(raw))
    volume = data.Volume(image, common.mirror_tile(mask, shape))
    print(f"   data: real Drosophila stack mirror-tiled to {shape}; {args.warmup} warm-up + {steps} timed iterations\n")

    rows = []
    for name, cfg in todo:
        print(f"   {name}{' and' + BASELINE[1:] if cfg.dims == 3 else ''}: {cfg.samples_per_batch} x {cfg.patch} ...",
              flush=True)
        rows += bench_config(name, cfg, volume, device, steps, args.warmup, args.seed)
    cols = [("name", "model", ""), ("input", "batch (n x [Z x] Y x X)", ""), ("skipped_steps", "skipped", "d"),
            ("voxels_per_iteration", "voxels/iter", ",d"),
            ("step_seconds_median", "step s", ".3f"), ("adamw_seconds_median", "of it AdamW s", ".3f"),
            ("data_seconds_median", "data s", ".3f"),
            ("iteration_seconds_median", "iter s", ".3f"), ("voxels_per_second_step", "voxels/s (step)", ",.0f"),
            ("voxels_per_second_iteration", "voxels/s (iter)", ",.0f"), ("peak_memory_mib", "peak MiB", ",.0f")]
    print()
    print(common.table(rows, cols))
    by = {r["name"]: r for r in rows}
    ratios = {}
    for prefix in ("small", "cpu", "ssTEM", "full"):
        for prec in ("fp32", "bf16"):
            two, three = by.get(f"{prefix} 2D {prec}"), by.get(f"{prefix} 3D {prec}")
            if two and three:
                ratios[f"{prefix} {prec}"] = three["step_seconds_median"] / two["step_seconds_median"]
                print(f"   {prefix} {prec}: the 3D step takes {ratios[f'{prefix} {prec}']:.2f}x the 2D step")
        for d in ("2D", "3D"):
            fp32, bf16 = by.get(f"{prefix} {d} fp32"), by.get(f"{prefix} {d} bf16")
            if fp32 and bf16:
                speedup = fp32["step_seconds_median"] / bf16["step_seconds_median"]
                ratios[f"{prefix} {d} bf16 speed-up"] = speedup
                print(f"   {prefix} {d}: bf16 step {speedup:.2f}x faster than float32, "
                      f"{bf16['skipped_steps']} non-finite steps skipped")
        for name in [r["name"] for r in rows if r["name"].startswith(prefix + " ") and BASELINE not in r["name"]]:
            base = by.get(name + BASELINE)
            if base:
                key = f"{name} over plain nn.Conv3d"
                ratios[key] = base["step_seconds_median"] / by[name]["step_seconds_median"]
                print(f"   {name}: step {by[name]['step_seconds_median']:.3f} s as train runs it, "
                      f"{base['step_seconds_median']:.3f} s with plain nn.Conv3d ({ratios[key]:.2f}x)")
    if args.change:
        label = change_label(args.change)
        for row in [r for r in rows if label in r["name"]]:
            name, base = row["name"], by[row["name"].replace(label, "")]
            ratios[f"{name} over without"] = row["step_seconds_median"] / base["step_seconds_median"]
            print(f"   {name}: step {row['step_seconds_median']:.3f} s, {ratios[f'{name} over without']:.2f}x the "
                  f"{base['step_seconds_median']:.3f} s without it")
    print(f"   step = forward+backward+AdamW (median of {steps}); data = sampling+augmentation+copy to device")

    name = common.output_name("train", args.small)
    payload = {"benchmark": "train", "machine": info,
               "settings": {"steps": steps, "warmup": args.warmup, "seed": args.seed, "volume_shape": shape,
                            "change": args.change,
                            "data": f"real Drosophila VNC stack 1 ({common.DROSO.name})"},
               "notes": [common.UNTRAINED, "step timed apart from data loading; GPU synchronised around each",
                         "CPU peak memory is the process's peak RSS so far (cumulative over models)"],
               "results": rows, "ratio_3d_over_2d_step": ratios}
    path = common.save_json(args.out, name, payload)

    plt = common.figure()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [r["name"] for r in rows]
    ax.bar(labels, [r["step_seconds_median"] for r in rows], label="step (fwd+bwd+AdamW)")
    ax.bar(labels, [r["data_seconds_median"] for r in rows], bottom=[r["step_seconds_median"] for r in rows],
           label="data (sample+augment)")
    ax.set_ylabel("seconds per iteration (median)")
    ax.set_title(f"training iteration, same voxels for 2D and 3D ({device.type})")
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend()
    fig_path = common.save_figure(fig, args.out, name, info)
    print(f"\n   saved {path} and {fig_path}")


if __name__ == "__main__":
    main()
