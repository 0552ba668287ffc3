"""What a GPU preset training step costs beside the network: preparing one batch in the training process
(`train._batch`: patches of the CA1 training volume, MONAI augmentation) and writing `last.pt` (weights
and AdamW state). On an H200 a step took ~0.05 s and an epoch ~1.5 s (results/README.md): these costs
decided the batch-preparing processes (`Config.loader_workers`) and the checkpoint interval
(`train.CHECKPOINT_SECONDS`).

Run from the repository root:
    .venv/bin/python benchmarks/bench_train_overhead.py           # ~1 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_train_overhead.py --small   # fewer batches
Writes train_overhead.json (train_overhead_small.json with --small) into --out (default results/bench/).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import common
import numpy as np
import torch

from mitoseg import compare, config, data, io, models, train


def measure(dims: int, bench, batches: int, seed: int) -> dict:
    """One model's row: seconds per batch prepared in this process, and last.pt's size and write time."""
    cfg = config.gpu(dims, seed=seed)
    train_vol, _ = data.split(bench.train_image, bench.train_mask, cfg.val_fraction,
                              io.intensity_range(bench.train_image))
    sampler = data.PatchSampler(train_vol, cfg.patch, cfg.fg_fraction, np.random.default_rng(seed))
    tf = data.augmenter(seed, dims)
    cpu = torch.device("cpu")
    seconds = [common.timed(lambda: train._batch(sampler, tf, cfg, cpu))[0] for _ in range(batches)]
    torch.manual_seed(seed)
    model = models.build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters())
    x, y = train._batch(sampler, tf, config.gpu(dims, batch=1, patch_z=2), cpu)  # a small step fills the state
    train.masked_loss(model(x), y).backward()
    optimizer.step()
    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as tmp:
        path = Path(tmp) / "last.pt"
        save_s, _ = common.timed(lambda: train._save({"model": model.state_dict(),
                                                       "optimizer": optimizer.state_dict()}, path))
        mib = path.stat().st_size / 2**20
    return {"model": f"{dims}D", "batch": "x".join(map(str, (cfg.samples_per_batch, *cfg.patch[3 - dims:]))),
            "batch seconds (mean)": float(np.mean(seconds)), "batch seconds (min)": float(np.min(seconds)),
            "last.pt MiB": mib, "last.pt seconds": save_s}


def main() -> None:
    args = common.parser(__doc__).parse_args()
    device = common.setup(args)
    info = common.machine_info(device)
    common.print_header("Training overhead beside the network (GPU preset, CA1)", info, [common.UNTRAINED])
    bench = compare.load_benchmark("lucchi")
    batches = 3 if args.small else 10
    rows = [measure(dims, bench, batches, args.seed) for dims in (2, 3)]
    print(common.table(rows, [("model", "model", "s"), ("batch", "batch", "s"),
                              ("batch seconds (mean)", "s/batch", ".3f"), ("batch seconds (min)", "min", ".3f"),
                              ("last.pt MiB", "last.pt MiB", ".0f"), ("last.pt seconds", "write s", ".2f")]))
    common.save_json(args.out, common.output_name("train_overhead", args.small),
                     {"machine": info, "batches_timed": batches, "rows": rows})


if __name__ == "__main__":
    main()
