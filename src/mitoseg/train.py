"""One training loop for both models: patches, Dice+BCE, AdamW, warmup+cosine, checkpoints, resume.

A run folder holds everything needed to repeat or continue it:
``config.json``, ``versions.json``, ``annotation.json`` (annotated and foreground voxels of the training and
validation parts), ``log.csv`` (one row per epoch), ``summary.json``,
``last.pt`` (after the first epoch, then after each epoch ending 30 s or more after the last write, and
at the end; used by --resume, which trains the epochs after it again), ``best.pt`` (best validation
IoU, written with last.pt) and, at the end, ``postprocessing.json`` (how `predict` makes masks, chosen on
the validation split: `choose_postprocessing`; a 2D run on near-isotropic voxels also chooses for the planes
it was not trained on: ``postprocessing_planes3.json`` for three planes, ``_planes1`` for XY slices).
Randomness is re-seeded from (seed, epoch) at every epoch start, so a resumed run draws the same
patches as an uninterrupted one; with batch-preparing processes beside a GPU (`loader_workers`) a run
repeats for the same number of processes, and a resumed one draws new patches.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import pickle
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mitoseg import __version__, data, io, memory, metrics, postprocess
from mitoseg.config import Config, other_planes, with_planes
from mitoseg.errors import MitosegError
from mitoseg.models import (
    autocast,
    bf16_native,
    build_model,
    channels_last,
    encoder_strides,
    input_multiple,
    pick_device,
    synchronize,
)
from mitoseg.predict import default_tile, predict_array, to_storage, unlike_voxels

LOG_FIELDS = ["epoch", "iterations", "loss", "val_dice", "val_iou", "val_iou_best", "val_threshold", "monitor_iou",
              "lr", "epoch_seconds", "seconds_per_iteration", "elapsed_seconds", "skipped_steps", "peak_memory_mib"]
MAX_SKIPPED_IN_A_ROW = 10  # non-finite steps in a row before training stops as diverged
# last.pt and best.pt are written after the first epoch, then when this many seconds have passed since
# they were last written, and at the end: on a GPU an epoch takes ~1.5 s and writing them (155 MiB
# for 2D, 461 MiB for 3D with the optimiser state) cost more than the training (results/README.md)
CHECKPOINT_SECONDS = 30.0
SLAB = 16  # slices read at a time by `data_id`
FREEZE_BATCHES = 50  # training batches that estimate the BatchNorm statistics frozen at `Config.bn_freeze`
EMA_BN_BATCHES = 20  # training batches that estimate an averaged model's BatchNorm statistics (`Config.ema`)


def versions() -> dict:
    """Software and hardware the run used, for the record."""
    import monai

    info = {"mitoseg": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "monai": monai.__version__, "numpy": np.__version__, "machine": platform.machine(), "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def cpu_name() -> str:
    """The CPU model as the OS reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def learning_rate(config: Config, iteration: int, progress: float) -> float:
    """Linear warmup over `warmup_iterations`, then cosine decay to zero as progress goes 0 -> 1."""
    if iteration < config.warmup_iterations:
        return config.lr * (iteration + 1) / config.warmup_iterations
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def iterations_per_epoch(config: Config, train_shape: tuple[int, ...]) -> int:
    """Iterations in one epoch: `iterations_per_epoch`, or enough to sample the training volume's voxels once."""
    if config.iterations_per_epoch:
        return config.iterations_per_epoch
    per_iteration = config.samples_per_batch * int(np.prod(config.patch))
    return max(1, math.ceil(int(np.prod(train_shape)) / per_iteration))


def _save(obj: dict, path: Path) -> None:
    with io.writing(path) as partial:  # whole or not at all; a stopped write leaves no partial file
        try:
            torch.save(obj, partial)
        except RuntimeError as e:  # torch says a failed write (a full disk: "unexpected pos") in its own words
            raise MitosegError(f"{path} could not be written ({str(e).splitlines()[0][:120]}): a full disk?") from None


RESUME_FREE = ("device", "loader_workers", "amp")  # where and how fast it trains, not what


def check_resume(out: str | Path, changes: dict) -> None:
    """Refuse settings given with --resume (`changes`: Config field -> value) that differ from the run's saved
    ones, which a resumed run trains with, but for `RESUME_FREE`; nothing to check without a saved config."""
    path = Path(out) / "config.json"
    if not path.is_file():
        return
    saved = Config.load(path)
    differ = [f"{k.replace('_', '-')} (saved {getattr(saved, k)}, given {v})" for k, v in changes.items()
              if k not in RESUME_FREE and _setting(k, getattr(saved, k)) != _setting(k, v)
              and not (k == "preset" and saved.preset is None)]  # runs of before 2026-12-08 recorded none
    if differ:
        raise MitosegError(f"--resume continues {out} with its saved settings; these differ: {', '.join(differ)}: "
                           "leave them out, or train a new run")


def _setting(name: str, value) -> object:
    """A setting as --resume compares it: annotated slices as the slices they name ("0,5-7" is "0,5,6,7"), the
    --init run as the folder its path names ("./runs/a/" is "runs/a")."""
    if name == "init" and value:
        return str(Path(value).resolve())
    if name == "annotated_slices" and value:
        try:
            return data.parse_slices(value, 2**31)
        except MitosegError:
            return value
    return io.jsonable(value)


def resumed_config(out: str | Path, free: dict) -> Config:
    """The config a resumed run trains with: its saved one, with the `RESUME_FREE` settings of `free` (Config
    field -> value: where and how fast it trains) applied; the others in `free` are not looked at."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise MitosegError(f"{out} holds no run to resume (no config.json)")
    return replace(Config.load(path), **{k: v for k, v in free.items() if k in RESUME_FREE})


def _prepare_dir(out: Path, resume: bool, overwrite: bool, inputs: tuple = ()) -> None:
    if out.exists() and not out.is_dir():
        raise MitosegError(f"{out} is a file; --out names the run's folder")
    io.check_place(out, inputs=inputs)  # not inside a file, nor the run it starts from (`--init`)
    io.claim(out)  # a second training into it would delete or mix this one's checkpoints
    if resume:
        if not (out / "last.pt").exists():
            raise MitosegError(f"{out} holds no checkpoint (last.pt) to resume from{kept_aside(out)}"
                               + ("; --overwrite starts it again" if out.is_dir() and any(out.iterdir()) else ""))
        return
    if replaced(out).exists() and (not overwrite or (out / "last.pt").exists()):  # only a --overwrite goes on with it
        if out.exists() and not (out / "last.pt").exists():  # a `mv` back would put it inside that beginning
            raise MitosegError(f"{kept_aside(out)[2:]}, and {out} the new run's unfinished beginning: delete {out} "
                               f"and rename {replaced(out).name} to {out.name} to keep the old run, or delete both to "
                               "start again")
        raise MitosegError(f"{kept_aside(out)[2:]}: move it back to {out}, or delete it, first")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise MitosegError(f"{out} already exists; pass --overwrite to replace it"
                               + (" or --resume to continue" if (out / "last.pt").exists() else
                                  " (it holds no checkpoint to resume from: stopped in its first epoch?)"))
        io.replaceable(out)
        if replaced(out).exists() and not (out / "last.pt").exists():  # a killed --overwrite: its beginning here,
            shutil.rmtree(out)  # the run it was replacing in NAME.replaced, kept on
        else:
            io.remove(replaced(out))
            out.rename(replaced(out))  # deleted at the new run's first checkpoint; put back if it stops before
    out.mkdir(parents=True, exist_ok=True)


def replaced(out: Path) -> Path:
    """Where `--overwrite` keeps the run it replaces until the new run's first checkpoint (``<out>.replaced``)."""
    out = Path(os.path.abspath(out))  # "." and "runs/a/.." have names too
    return out.with_name(out.name + ".replaced")


def kept_aside(out: Path) -> str:
    """"; NAME.replaced holds ..." when a stopped `train --overwrite` left the run it was replacing there, else ""."""
    return f"; {replaced(out)} holds the run a stopped `train --overwrite` was replacing" \
        if replaced(out).exists() else ""


LONG_ON_CPU = 2000  # iterations without --minutes that are noted on a CPU (the cpu preset's 30 minutes: about 2,100)
MOSTLY = 0.5  # a foreground share of the annotated voxels above this is noted before training: labels misread?
BARELY = 0.1  # a best validation IoU under this (at any threshold) is noted after training: the masks will be poor


def learned_bar(share: float) -> float:
    """The best validation IoU (any threshold) a model that learned reaches: twice the validation's foreground
    `share` (what calling every voxel mitochondria scores), or halfway from it to 1 where that is less (a partial
    annotation of mitochondria and a ring of background: share 0.54, bar 0.77), and at least 0.01; below, its masks
    are mostly wrong."""
    return max(min(2 * share, (1 + share) / 2), 0.01)


def learned(best_iou: float, share: float) -> bool:
    """Whether a model's best validation IoU reaches `learned_bar` of the validation's foreground `share`."""
    return best_iou >= learned_bar(share)


def all_foreground(counts: dict) -> float:
    """The IoU of calling every annotated voxel mitochondria: the foreground's share of `data.counts`' voxels."""
    return counts["foreground_voxels"] / counts["annotated_voxels"] if counts else 0.0


def validate(model: torch.nn.Module, val: data.Volume | None, config: Config, device: torch.device) -> dict:
    """Dice ("f1") and IoU ("jaccard") of the prediction thresholded at 0.5 on a volume normalised by
    its window, on its annotated voxels, and the best IoU over `postprocess.THRESHOLDS` ("best_jaccard",
    at "best_threshold"; a model calibrated below or above 0.5 still shows what it has learned). NaN
    without a volume."""
    if val is None:
        return {"f1": float("nan"), "jaccard": float("nan"), "best_jaccard": float("nan"),
                "best_threshold": float("nan")}
    tile = default_tile(config.dims, val.image.shape, config.tile)
    probs = val.scored(predict_array(model, val.image, config.dims, tile, config.overlap, val.window, device,
                                     amp=config.amp))
    truth = val.mask
    annotated = val.mask != data.IGNORE
    if not annotated.all():
        probs, truth = probs[annotated], val.mask[annotated]
    at = {t: metrics.scores(metrics.confusion(probs >= t, truth)) for t in postprocess.THRESHOLDS}
    best = max(sorted(at, key=lambda t: abs(t - 0.5)), key=lambda t: at[t]["jaccard"])  # ties: nearest 0.5
    return {**at[0.5], "best_jaccard": at[best]["jaccard"], "best_threshold": best}


def masked_loss(logits: torch.Tensor, labels: torch.Tensor, boundary: float = 0.0) -> torch.Tensor:
    """Dice + binary cross-entropy (MONAI's DiceCELoss with sigmoid, to the last digit) over the annotated
    voxels only: `labels` float {0, 1, IGNORE}, both (B, 1, [Z,] Y, X). `boundary` > 0 weighs the cross-entropy
    of the voxels of `outline_band` 1 + `boundary` times (the sum is still divided by the annotated voxels)."""
    from monai.losses import MaskedDiceLoss

    annotated = (labels != data.IGNORE).float()
    target = (labels == 1).float()
    dice = MaskedDiceLoss(sigmoid=True)(logits, target, annotated)
    weight = annotated * (1 + boundary * outline_band(target)) if boundary else annotated
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    return dice + bce / annotated.sum().clamp(min=1.0)


def outline_band(target: torch.Tensor, width: int = 2) -> torch.Tensor:
    """1.0 where a voxel's (2 `width` + 1)-pixel square in Y and X holds foreground and background (within
    `width` pixels in-plane of a labelled outline), else 0.0; `target` float {0, 1} (B, 1, [Z,] Y, X)."""
    k = 2 * width + 1
    if target.ndim == 5:
        pool = partial(torch.nn.functional.max_pool3d, kernel_size=(1, k, k), stride=1, padding=(0, width, width))
    else:
        pool = partial(torch.nn.functional.max_pool2d, kernel_size=k, stride=1, padding=width)
    return pool(target) + pool(-target)  # the window's max minus its min


def load_init(model: torch.nn.Module, config: Config, device: torch.device) -> None:
    """Start `model` from the weights of the run (or checkpoint) `config.init` (`check_init`)."""
    other_model, other = check_init(config, device)
    model.load_state_dict(other_model.state_dict())
    # a model along XY slices sees the pixels alone (as `predict.model_for` compares them): Z counts for 3D and 3 planes
    axes = slice(1, 3) if config.dims == 2 and config.slice_planes == 1 else slice(0, 3)
    if other.voxel_size_stated and config.voxel_size_stated and \
            unlike_voxels(tuple(other.voxel_size)[axes], tuple(config.voxel_size)[axes]):
        words = [" x ".join(f"{float(v):g}" for v in c.voxel_size) for c in (other, config)]
        print(f"note: --init {Path(config.init).name} was trained on {words[0]} nm voxels, this run's are "
              f"{words[1]} nm: it starts from features of another scale"
              + (" and other encoder strides" if config.dims == 3 else ""), file=sys.stderr)
    elif other.voxel_size_stated and not config.voxel_size_stated and \
            unlike_voxels(tuple(other.voxel_size)[axes], tuple(config.voxel_size)[axes]):  # nobody said this run's
        words = [" x ".join(f"{float(v):g}" for v in c.voxel_size) for c in (other, config)]
        print(f"note: --init {Path(config.init).name} was trained on {words[0]} nm voxels; this image states none, "
              f"so this run takes the default {words[1]} nm"
              + (" (and its encoder strides)" if config.dims == 3 else "")
              + f": give --voxel-size {words[0].replace(' x ', ' ')} if its voxels are those", file=sys.stderr)


def check_init(config: Config, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, Config]:
    """The model and config of the run (or checkpoint) `config.init`, refused unless it has the same dims,
    encoder, normalisation rule (its weights expect their input normalised as they were trained), neighbouring
    slices (its first layer's input channels), norm and full-resolution channels (its layers)."""
    other_model, other = load_model(config.init, device)
    if (other.dims, other.encoder) != (config.dims, config.encoder):
        raise MitosegError(f"--init {config.init} is a {other.dims}D {other.encoder} run; this run is "
                           f"{config.dims}D {config.encoder}: they must match")
    if other.normalize != config.normalize:
        raise MitosegError(f"--init {config.init} was trained with --normalize {other.normalize}; give the same "
                           f"--normalize (not {config.normalize})")
    if other.context != config.context:
        raise MitosegError(f"--init {config.init} takes {other.context} neighbouring slices on each side; give the "
                           f"same --context-slices (not {config.context})")
    if other.norm != config.norm:
        raise MitosegError(f"--init {config.init} was trained with --norm {other.norm}; give the same --norm (not "
                           f"{config.norm})")
    if other.full_resolution != config.full_resolution:
        raise MitosegError(f"--init {config.init} has {other.full_resolution} full-resolution channels; give the "
                           f"same --full-resolution (not {config.full_resolution})")
    return other_model, other


def _batch(sampler: data.PatchSampler, tf, config: Config, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch, augmented, on `device`: images and masks (B, 1, [Z,] Y, X), channels-last."""
    x, y = _as_input(config, *data.augment(tf, *sampler.sample(config.samples_per_batch)))
    x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    return x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d), y


def _as_input(config: Config, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Patches as the model takes them: unchanged for the 3D model (B, 1, Z, Y, X); for the 2D model images
    (B, 1 + 2k, Y, X), a slice and its k neighbours on each side as channels, and masks (B, 1, Y, X)."""
    return (x, y) if config.dims == 3 else (x[:, 0], y[:, :, 0])


def augmenter(config: Config, seed: int):
    """`data.augmenter` with the augmentation settings of `config`, seeded with `seed`."""
    return data.augmenter(seed, config.dims, config.intensity_aug, config.slice_jitter, config.elastic,
                          config.gamma_field, z_flip=config.dims == 3 or config.context > 0)


class _Batches(torch.utils.data.IterableDataset):
    """Endless augmented training batches, for DataLoader worker processes: worker w draws patches and
    augmentations from the seeds (seed, first epoch, w), so a run repeats for a given worker count."""

    def __init__(self, sampler: data.PatchSampler, config: Config, first_epoch: int):
        self.sampler, self.config, self.first_epoch = sampler, config, first_epoch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        seeds = [self.config.seed, self.first_epoch, info.id if info is not None else 0]
        self.sampler.rng = np.random.default_rng(seeds)
        tf = augmenter(self.config, int(np.random.SeedSequence(seeds).generate_state(1)[0]))
        while True:
            x, y = _as_input(self.config, *data.augment(tf, *self.sampler.sample(self.config.samples_per_batch)))
            yield torch.from_numpy(x), torch.from_numpy(y)


def loader_workers(config: Config, device: torch.device) -> int:
    """Batch-preparing processes: `config.loader_workers`, else none on a CPU (they would take its cores
    from the network) and up to 12 beside a GPU (the training process prepares a 2D batch in ~0.17 s, far slower
    than a GPU step), leaving two of the cores this process may use (`metrics.cores`: a batch job's share, not
    the machine's) to the training process."""
    if config.loader_workers is not None:
        return config.loader_workers
    return 0 if device.type == "cpu" else max(0, min(12, metrics.cores() - 2))


def batch_stream(sampler: data.PatchSampler, config: Config, device: torch.device, first_epoch: int, workers: int):
    """An endless iterator of training batches (images, masks) on `device`, shaped as `_batch`'s, made by
    `workers` DataLoader processes (forked: they share the volume); close it with `del`."""
    import multiprocessing

    loader = torch.utils.data.DataLoader(
        _Batches(sampler, config, first_epoch), batch_size=None, num_workers=workers, prefetch_factor=4,
        pin_memory=device.type == "cuda",
        multiprocessing_context="fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    layout = torch.channels_last if config.dims == 2 else torch.channels_last_3d
    for x, y in loader:
        yield x.to(device, non_blocking=True).contiguous(memory_format=layout), y.to(device, non_blocking=True)


def _batchnorms(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def train_mode(model: torch.nn.Module, frozen_batchnorm: bool) -> None:
    """`model.train()`; with `frozen_batchnorm` its BatchNorm layers stay in eval mode: they normalise with
    their saved statistics, as in prediction, instead of each batch's own (their weights still learn)."""
    model.train()
    if frozen_batchnorm:
        for m in _batchnorms(model):
            m.eval()


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, sampler: data.PatchSampler, tf, config: Config,
                          device: torch.device, batches: int, seed: tuple[int, ...] = (0,)) -> None:
    """Set every BatchNorm layer's running mean and variance to the plain average over `batches` training
    batches (drawn and augmented as in training, from a generator seeded with `seed`), instead of the
    exponential average (momentum 0.1) of the last few dozen batches. At batch 1 (the 3D model in the
    cpu preset) that average follows the last few patches, so the model's eval-mode outputs shift from
    epoch to epoch ("precise BN", Wu & Johnson 2021). The weights are unchanged; `sampler.rng` is restored
    and `tf` is re-seeded from `seed` (training re-seeds it at every epoch start)."""
    norms = _batchnorms(model)
    if not norms or batches <= 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    rng, sampler.rng = sampler.rng, np.random.default_rng(list(seed))
    tf.set_random_state(seed=int(sampler.rng.integers(2**31)))  # training re-seeds it at every epoch start
    was_training = model.training
    model.train()
    try:
        for _ in range(batches):
            with autocast(device, config.amp):
                model(_batch(sampler, tf, config, device)[0])
    finally:
        sampler.rng = rng
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)


def averaged(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of `model`'s weights (`decay` per training step, torch's own EMA), or
    None when `decay` is 0. Validation, best.pt and the finished last.pt use the average, meant to smooth the
    step-to-step swing of a model trained at batch 1. Its BatchNorm statistics are not averaged: statistics
    taken under earlier weights do not fit the averaged ones (on CA1 that cost the 2D model 0.14 test IoU,
    results/README.md), so training re-estimates them for the average before each validation."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def _copy_batchnorm_statistics(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Every BatchNorm layer of `target` takes the running statistics of `source`'s (the same network)."""
    for a, b in zip(_batchnorms(source), _batchnorms(target), strict=True):
        b.running_mean.copy_(a.running_mean)
        b.running_var.copy_(a.running_var)


def _finite_step(model: torch.nn.Module, loss: torch.Tensor) -> bool:
    """Backpropagate `loss`; True when the loss and every gradient are finite (else gradients are dropped).

    One wait for the device per step: the gradients' largest magnitude (fused reductions; the max norm,
    which cannot overflow where a 2-norm of large finite gradients would) is non-finite exactly when a
    gradient is. A check per gradient tensor waited ~100 times per step, leaving a GPU idle in between."""
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    total = (torch.nn.utils.get_total_norm(grads, norm_type=math.inf) if grads
             else torch.zeros((), device=loss.device))
    if bool(torch.isfinite(loss.detach().float() + total)):  # finite only when both are
        return True
    model.zero_grad(set_to_none=True)
    return False


@io.releasing
def train(config: Config, image: np.ndarray, mask: np.ndarray, out: str | Path, resume: bool = False,
          overwrite: bool = False, progress: bool = True,
          monitor: data.Volume | None = None, postprocessing: bool = True) -> dict:
    """Train one model on an image (Z, Y, X, any dtype) and its mask (Z, Y, X) {0, 1, and 2 where nobody
    annotated}; returns the summary. Other mask values are refused (`data.check_labels`); the config's
    `label_threshold` and `unlabeled` say how `io.load_pair` made such a mask from a file, and are not applied here.
    With `resume`, the run's saved config is trained with (`resumed_config`: of the given one, only its device,
    loader workers and amp apply), its annotated slices too.

    Stops after `config.epochs` epochs or `config.minutes` of training, whichever comes first.
    The image is normalised patch by patch (`io.intensity_range` of the whole volume), never copied.
    `monitor`: an optional volume (image, mask, window) scored like the validation split after every
    epoch and logged as `monitor_iou` (e.g. a part of a test volume with the whole test volume's window,
    to plot test IoU against training time); it never chooses a checkpoint.
    `postprocessing`: end by choosing the post-processing on the validation split (`choose_postprocessing`);
    False for a caller that chooses its own (`compare`, on test-time-augmented probabilities).
    When training ends, `last.pt` keeps the weights only (the optimiser state, twice the weights' size, is
    needed only to resume an interrupted run).
    """
    if not isinstance(config, Config):
        raise MitosegError(f"train takes a config.Config, not a {type(config).__name__}")
    if resume and overwrite:
        raise MitosegError("give --resume (go on with the run) or --overwrite (start it again), not both")
    out = Path(out)
    image, mask = io.refuse_path(image, "the image"), np.asarray(io.refuse_path(mask, "the mask"))
    image = image if hasattr(image, "shape") else np.asarray(image)
    if len(image.shape) != 3:
        raise MitosegError(f"the image must be a volume (Z, Y, X), not an array of shape {tuple(image.shape)}")
    if tuple(image.shape) != tuple(mask.shape):
        raise MitosegError(f"image {image.shape} and labels {mask.shape} differ in shape")
    if resume:  # the saved settings, its annotated slices too
        _prepare_dir(out, resume, overwrite)
        given, config = config, resumed_config(out, {k: getattr(config, k) for k in RESUME_FREE})
        if given.dims != config.dims:
            raise MitosegError(f"{out} holds a {config.dims}D run; cannot resume it as {given.dims}D")
    if config.annotated_slices is not None:  # "" too: it names no slice, refused (not "all slices")
        slices = data.parse_slices(config.annotated_slices, mask.shape[0])
        outside = data.foreground_outside(mask, slices)
        if outside and not resume:
            empty = set(slices) - set(np.flatnonzero((mask == 1).any(axis=(1, 2))).tolist())
            shifted = all(z + 1 in empty for z in outside)  # Fiji's numbers (from 1) given for the painted slices?
            print(f"note: the labels hold foreground in {len(outside)} slice{'s' * (len(outside) > 1)} outside the "
                  f"annotated slices ({io.first_values(np.array(outside))}), left out: name them in "
                  "--annotated-slices if they are annotated" + (
                      "; each lies just below a named one that holds none: slices count from 0 here (Fiji's slice 1 "
                      "is 0), were they numbered as in Fiji?" if shifted else ""), file=sys.stderr)
        mask = data.annotate_slices(mask, slices)
    elif not resume and mask.shape[0] >= 8 and not (mask == data.IGNORE).any():
        held = np.flatnonzero(mask.reshape(mask.shape[0], -1).max(axis=1))  # slices holding foreground
        # labels painted on a few slices apart, the rest trained as background? (an organelle spans neighbouring ones)
        if 0 < held.size <= mask.shape[0] // 4 and (held.size == 1 or np.diff(held).min() > 1):
            print(f"note: foreground lies in only {held.size} of the {mask.shape[0]} slices ({io.first_values(held)}); "
                  "every other voxel is trained on as background: if only some slices are annotated, name them in "
                  "--annotated-slices", file=sys.stderr)
    share = data.check_labels(mask)
    if share > MOSTLY and not resume:  # e.g. boxes of background alone, 99 outside them, without --unlabeled 99
        print(f"note: {share:.1%} of the annotated voxels are foreground (mitochondria seldom are most of a volume): "
              "does a value of the labels mark voxels nobody annotated (--unlabeled VALUE), or the background "
              "(--label-threshold)? Or are they inverted (the background the higher value)? Then invert them first "
              "(in Fiji: Edit > Invert)", file=sys.stderr)
    if resume:
        check_same_data(out, image, mask)
    window = data.check_image(image, config.normalize)
    data.check_patch(image.shape, config.patch)
    part, _ = data.split(image, mask, config.val_fraction)  # annotation on both sides of the validation cut
    cut = part.image.shape[2]
    data.check_patch(part.image.shape, config.patch, f"the training part (x < {cut}; the rest validates)")
    if config.val_fraction <= 0 and not resume:
        print("note: no validation split (--val-fraction 0): no validation IoU, every epoch's weights are kept as the "
              "best, and no post-processing is chosen (predict thresholds at 0.5)", file=sys.stderr)
    if not resume:  # what can be refused is, before --overwrite deletes an old run there
        if config.init:
            check_init(config)
        _prepare_dir(out, resume, overwrite, (config.init,) if config.init else ())
    try:
        config.save(out / "config.json")
        io.write_json(out / "versions.json", versions())
        summary = _train(config, image, mask, window, out, resume, progress, monitor, postprocessing)
        io.release(out)
        return summary
    except BaseException:  # an error or Ctrl-C before the first checkpoint leaves no folder to block a re-run
        if not resume and not (out / "last.pt").exists():
            shutil.rmtree(out, ignore_errors=True)
            if replaced(out).exists():  # the run --overwrite was replacing: as it was
                replaced(out).rename(out)
                exc = sys.exc_info()[1]
                with contextlib.suppress(AttributeError):
                    exc.restored = str(out)  # for the command line's one line
        raise


def check_same_data(out: Path, image: np.ndarray, mask: np.ndarray) -> None:
    """Refuse to resume the run in `out` with an image or labels (`mask` as trained on: annotated slices applied)
    other than those it began with (checksums in its annotation.json: the image's and the labels' `data_id`; runs
    begun before 2026-12-08 record the image's `io.content_id`, of three slices, alone or with the labels'): its
    epochs would mix two data sets."""
    path = out / "annotation.json"
    recorded = io.read_json(path) if path.is_file() else {}
    then = recorded.get("image", {})
    if ("checksum" in then and then["checksum"] != data_id(image)) or (
            "source" in then and not io.same_source(then["source"], io.content_id(image))):
        raise MitosegError(f"{out} was trained on another image (its checksum differs): resume it with the image it "
                           "began with, or start again with --overwrite")
    if recorded.get("labels") not in (None, data_id(mask), io.content_id(mask)):  # content_id: runs of 2026-12-07
        raise MitosegError(f"{out} was trained on other labels (their checksum differs; --annotated-slices are the "
                           "run's): resume it with the labels it began with, or start again with --overwrite")


def data_id(volume) -> str:
    """A checksum of a whole volume (Z, Y, X; any array-like, read `SLAB` slices at a time): a little annotation lies
    on a few slices, an edited image may differ in one, which a checksum of some slices (`io.content_id`: the
    first, middle and last) would not see."""
    import zlib

    crc = zlib.crc32(repr(tuple(volume.shape)).encode())
    for z in range(0, volume.shape[0], SLAB):
        crc = zlib.crc32(np.ascontiguousarray(volume[z:z + SLAB]), crc)  # no copy of a numpy array's slices
    return f"{crc:08x}"


def _train(config: Config, image: np.ndarray, mask: np.ndarray, window: tuple[float, ...], out: Path, resume: bool,
           progress: bool, monitor: data.Volume | None, postprocessing: bool) -> dict:
    """The training loop of `train`, in a prepared run folder; `window` is the image's (`data.check_image`)."""
    from tqdm.auto import tqdm

    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    train_vol, val_vol = data.split(image, mask, config.val_fraction, window)
    # what the run learned from and was validated on, in voxels, and which image (`suggest`); a resumed run's was
    # checked against this data (`check_same_data`)
    if not resume:
        image_id = {"shape": list(image.shape), "source": io.content_id(image), "checksum": data_id(image)}
        io.write_json(out / "annotation.json", {"training": data.counts(train_vol), "validation": data.counts(val_vol),
                                                "image": image_id, "labels": data_id(mask)})
    # kept with every checkpoint: what `predict --match-training` maps another volume's grey levels onto
    intensity = {"window": window, "reference": io.reference_levels(image)}
    sampler = data.PatchSampler(train_vol, config.patch, config.fg_fraction, np.random.default_rng(config.seed),
                                context=config.context, planes=config.slice_planes)
    tf = augmenter(config, config.seed)
    # channels-last throughout (prediction uses it too), so validation never changes the layout mid-run
    model = channels_last(build_model(config).to(device), config.dims)
    if config.init and not resume:
        load_init(model, config, device)
    optimizer = adamw(model, config, device)
    ema = averaged(model, config.ema)
    n_iter = iterations_per_epoch(config, train_vol.image.shape)
    total_iter = n_iter * config.epochs
    if device.type == "cpu" and not config.minutes and total_iter >= LONG_ON_CPU and not resume:
        print(f"note: {total_iter:,} iterations on a CPU without a time limit: the cpu preset's patches take about 30 "
              "minutes for 2,100 on 2 cores, the full preset's (the default, sized for a GPU) far longer; --minutes "
              "sets a limit", file=sys.stderr)

    amp = training_amp(config, device)
    state = {"epoch": 0, "iteration": 0, "elapsed": 0.0, "best_iou": -1.0}
    if resume:
        try:
            ckpt = torch.load(out / "last.pt", map_location=device, weights_only=False)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as e:  # cut short (a copy), or not a checkpoint
            raise MitosegError(f"{out / 'last.pt'} is damaged ({type(e).__name__}): the run cannot go on from it; "
                               "--overwrite starts it again") from None
        if "optimizer" not in ckpt:  # a finished run: at most its post-processing choice was left undone
            if postprocessing and _unchosen(out, config):
                print(f"{out} finished training earlier; its post-processing, left unchosen, is chosen now",
                      file=sys.stderr)
                choose_postprocessing(out, val_vol, config, device, progress, planes=_unchosen(out, config))
            else:
                print(f"{out} finished training earlier: nothing to resume", file=sys.stderr)
            return summarize(out)
        model.load_state_dict(ckpt["model"])
        for group in ckpt["optimizer"]["param_groups"]:  # a checkpoint from before the fused update: fuse it too
            group["fused"] = optimizer.defaults["fused"]
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        state = {"best_iou": -1.0, **ckpt["state"]}
        if progress:
            print(f"{out}: going on from epoch {state['epoch']} of {config.epochs} (last.pt)", flush=True)
    log_path = out / "log.csv"
    # a new log, or on resume the rows up to the checkpoint's epoch (later epochs are trained again)
    rows = [r for r in read_log(out) if r["epoch"] <= state["epoch"]] if resume else []
    with io.writing(log_path) as partial, open(partial, "w", newline="") as f:  # never a log cut short
        writer = csv.DictWriter(f, LOG_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _log_value(k, v) for k, v in r.items()} for r in rows)

    budget = config.minutes * 60 if config.minutes else math.inf
    in_a_row = 0  # non-finite steps in a row, across epochs
    ckpt, best, saved_at = None, None, -math.inf  # best: the best epoch's checkpoint not yet written
    workers = loader_workers(config, device)
    stream = batch_stream(sampler, config, device, state["epoch"], workers) if workers else None
    while state["epoch"] < config.epochs and state["elapsed"] < budget:
        epoch = state["epoch"]
        sampler.rng = np.random.default_rng([config.seed, epoch])
        tf.set_random_state(seed=config.seed + 1000 * epoch)
        torch.manual_seed(config.seed + epoch)
        train_mode(model, state.get("bn_frozen", False))
        losses, t0, done, skipped = [], time.perf_counter(), 0, 0
        bar = tqdm(range(n_iter), desc=f"{config.dims}D epoch {epoch + 1}", leave=False, disable=not progress)
        for _ in bar:
            progress_frac = max(state["iteration"] / total_iter, (state["elapsed"] + time.perf_counter() - t0) / budget)
            lr = learning_rate(config, state["iteration"], progress_frac)
            if config.bn_freeze is not None and not state.get("bn_frozen") and state["iteration"] >= config.bn_freeze:
                recalibrate_batchnorm(model, sampler, tf, config, device, FREEZE_BATCHES, (config.seed, 2))
                state["bn_frozen"] = True
                train_mode(model, True)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = next(stream) if stream is not None else _batch(sampler, tf, config, device)
            with autocast(device, amp):
                loss = masked_loss(model(x).float(), y, config.boundary_weight)
            optimizer.zero_grad(set_to_none=True)
            if _finite_step(model, loss):
                optimizer.step()
                if ema is not None:
                    ema.update_parameters(model)
                losses.append(loss.item())
                in_a_row = 0
            else:  # a non-finite loss or gradient: skip this step, as a GPU loss scaler would
                skipped += 1
                in_a_row += 1
                if in_a_row >= MAX_SKIPPED_IN_A_ROW:  # diverged: stop before the checkpoints are overwritten
                    if best is not None:
                        _save(best, out / "best.pt")
                    raise MitosegError(f"training diverged ({in_a_row} non-finite steps in a row) in epoch "
                                       f"{epoch + 1}; the best and the last saved epoch's checkpoints are in {out}: "
                                       "lower --lr or pass --fp32")
            state["iteration"] += 1
            done += 1
            bar.set_postfix(loss=f"{losses[-1]:.3f}" if losses else "nan")
            if state["elapsed"] + time.perf_counter() - t0 >= budget:
                break
        synchronize(device)
        seconds = time.perf_counter() - t0
        state["elapsed"] += seconds
        state["epoch"] += 1
        last = state["epoch"] >= config.epochs or state["elapsed"] >= budget
        checked = last or state["epoch"] % config.validate_every == 0
        final = ema.module if ema is not None else model  # the model validated, kept as best and delivered
        if checked and not state.get("bn_frozen"):
            batches = config.bn_batches or (EMA_BN_BATCHES if ema is not None else 0)
            recalibrate_batchnorm(final, sampler, tf, config, device, batches, (config.seed, epoch, 1))
        elif checked and ema is not None:  # frozen: the statistics every step since the freeze trained under
            _copy_batchnorm_statistics(model, final)
        val = validate(final, val_vol if checked else None, config, device)
        row = {"epoch": state["epoch"], "iterations": done,
               "loss": float(np.mean(losses)) if losses else float("nan"),
               "val_dice": val["f1"], "val_iou": val["jaccard"], "val_iou_best": val["best_jaccard"],
               "val_threshold": val["best_threshold"],
               "monitor_iou": validate(final, monitor if checked else None, config, device)["jaccard"], "lr": lr,
               "epoch_seconds": seconds, "seconds_per_iteration": seconds / max(done, 1),
               "elapsed_seconds": state["elapsed"], "skipped_steps": skipped,
               "peak_memory_mib": memory.peak_mib(device)}
        with open(log_path, "a", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS, lineterminator="\n").writerow(row)
        if progress:
            score = f" val IoU {row['val_iou']:.4f}" if checked and val_vol is not None else ""
            print(f"{config.dims}D epoch {state['epoch']}: loss {row['loss']:.4f}{score} ({seconds:.1f} s)", flush=True)
        # the best validation IoU (at its best threshold) so far; while it is 0 the latest epoch is kept
        save_now = time.perf_counter() - saved_at >= CHECKPOINT_SECONDS
        if checked and (not val_vol or val["best_jaccard"] > state["best_iou"] or state["best_iou"] <= 0):
            state["best_iou"] = val["best_jaccard"] if val_vol else state["best_iou"]
            weights = final.state_dict() if save_now else _copy(final.state_dict())  # a copy only to keep
            best = {"model": weights, "config": config.__dict__, "state": dict(state), "intensity": intensity}
        ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                "config": config.__dict__, "intensity": intensity}
        if ema is not None:
            ckpt["ema"] = ema.state_dict()
        if save_now:
            if best is not None:
                _save(best, out / "best.pt")
                best = None
            _save(ckpt, out / "last.pt")
            io.remove(replaced(out))  # the run --overwrite replaces: gone once this one can be resumed
            saved_at = time.perf_counter()
    share = all_foreground(data.counts(val_vol))
    if val_vol is not None and not learned(state["best_iou"], share):
        print(f"mitoseg: warning: the {config.dims}D model has not learned (best validation IoU "
              f"{max(state['best_iou'], 0.0):.3f}; calling every voxel mitochondria scores {share:.3f}, a model that "
              f"learned {learned_bar(share):.3f} or more); its masks will be mostly wrong: train longer, or check the "
              "labels", file=sys.stderr, flush=True)
    elif val_vol is not None and state["best_iou"] < BARELY:
        print(f"mitoseg: note: the {config.dims}D model has barely learned (best validation IoU "
              f"{state['best_iou']:.3f}): expect poor masks; train longer, annotate more"
              + ("" if config.init else ", or start from a trained model (--init)"), file=sys.stderr, flush=True)
    if best is not None:
        _save(best, out / "best.pt")
    if ckpt is not None:  # finished: the weights that are delivered, without what only resuming needs
        _save({"model": final.state_dict(), "state": state, "config": config.__dict__, "intensity": intensity},
              out / "last.pt")
    del model, ema, optimizer, sampler, stream  # the stream's worker processes end with it
    memory.release()
    if postprocessing:
        choose_postprocessing(out, val_vol, config, device, progress)
    return summarize(out)


BF16_3D_PATCH = (32, 128, 128)  # the largest 3D patch whose bf16 training steps were measured on a CPU
BF16_3D_DEPTH = 8  # the fewest slices (the network's input, padded to its Z strides) measured in bf16 on a CPU


def training_amp(config: Config, device: torch.device) -> bool:
    """Whether training steps run in bf16 (`autocast`): the run's `amp`, but a 3D model on a CPU only with a patch of
    at most `BF16_3D_PATCH` (the quick and cpu presets') and at least `BF16_3D_DEPTH` slices deep as the network
    sees it (padded to the product of its Z strides), whose encoder halves Y and X from its first stage (not voxels
    finer along Z). Else float32, said in a note: oneDNN's bf16 backward of some 3D convolutions outside that stalls
    for minutes a step (`benchmarks/bench_bf16_3d.py`: the full preset's 32 x 256 x 256 patch, 2 x 10 x 10 nm
    voxels, and 4-slice inputs of 128 x 128 on 50 x 4.6 x 4.6 nm: 2 to 4 ssTEM sections)."""
    if not (config.amp and device.type == "cpu" and config.dims == 3 and bf16_native(device)):
        return config.amp
    z_multiple = input_multiple(config.voxel_size, 3)[0]
    depth = -(-config.patch[0] // z_multiple) * z_multiple  # as `models.PadToMultiple` pads it
    measured = all(p <= m for p, m in zip(config.patch, BF16_3D_PATCH, strict=True)) and depth >= BF16_3D_DEPTH \
        and encoder_strides(config.voxel_size, 3)[0][1:] == (2, 2)
    if not measured:
        print(f"note: the 3D model trains in float32 on this CPU: bf16 is used for patches of at most "
              f"{' x '.join(map(str, BF16_3D_PATCH))} voxels, at least {BF16_3D_DEPTH} slices deep as the network "
              "sees them, on voxels no finer along Z than in-plane, where its steps were measured (outside, oneDNN's "
              "bf16 backward of some convolutions stalls for minutes)", file=sys.stderr)
    return measured


def last_checkpoint(out: str | Path) -> tuple[int, int, bool] | None:
    """(epoch, epochs, whether training had finished) of the run `out`'s last.pt, memory-mapped (the weights are
    not read); None when it cannot be read."""
    try:
        ckpt = torch.load(Path(out) / "last.pt", map_location="cpu", weights_only=False, mmap=True)
        return int(ckpt["state"]["epoch"]), int(ckpt["config"]["epochs"]), "optimizer" not in ckpt
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError):
        return None


def going_on_from(out: str | Path) -> str:
    """What `train --resume` of the run `out` goes on from, in words: its last checkpoint's epoch, or the
    post-processing left to choose after training finished; "" when last.pt cannot be read."""
    found = last_checkpoint(out)
    if found is None:
        return ""  # the general line then
    epoch, epochs, finished = found
    if finished:
        return "to choose the post-processing (training had finished)"
    return f"to go on from its last checkpoint, epoch {epoch} of {epochs} (epochs after it are trained again)"


def choose_postprocessing(out: Path, val: data.Volume | None, config: Config, device: torch.device | str,
                          progress: bool = True, tta: bool = False, planes: Sequence[int] | None = None) -> None:
    """Choose how the run's probabilities become masks (`postprocess.choose`: Z smoothing, threshold, minimum
    object size, hole filling) on its validation split, predicted by the delivered model (with test-time
    augmentation when `tta`) along each of `planes` (default: the run's own, then the other planes it may
    predict along, `config.other_planes`: a 2D model on near-isotropic voxels), and save each choice in `out`,
    where `predict` finds it (`postprocess.save`; the other planes' apart). Nothing without a wholly annotated
    validation split."""
    if val is None or (val.mask == data.IGNORE).any():
        return
    if planes is None:
        planes = [config.slice_planes] + ([other_planes(config)] if other_planes(config) else [])
    for n_planes in planes:
        model, cfg = load_model(out, device, n_planes)
        tile = default_tile(cfg.dims, val.image.shape, cfg.tile, n_planes)
        probs = val.scored(predict_array(model, val.image, cfg.dims, tile, cfg.overlap, val.window, tta=tta,
                                         amp=cfg.amp))
        del model
        pp, candidates = postprocess.choose(to_storage(probs, "uint8"), val.mask)  # as `predict` stores them
        other = n_planes if n_planes != config.slice_planes else None
        postprocess.save(out, pp, candidates, "tta" if tta else "raw", other)
        if progress:
            words = {None: "", 1: " for XY slices", 3: " for three planes"}[other]
            print(f"{config.dims}D post-processing chosen on validation{words}: {postprocess.words(pp.as_dict())}",
                  flush=True)


def _unchosen(out: Path, config: Config) -> list[int]:
    """The planes (the run's own, then `other_planes`) whose post-processing choice `out` does not hold: what a
    run interrupted while choosing left undone."""
    own = [(config.slice_planes, postprocess.FILE)]
    other = [(n, postprocess.OTHER_PLANES_FILE.format(n)) for n in [other_planes(config)] if n]
    return [n for n, name in own + other if not (out / name).is_file()]


def _copy(state_dict: dict) -> dict:
    """A copy of a model's state dict (tensors cloned where they are): the weights of a best epoch."""
    return {k: v.detach().clone() for k, v in state_dict.items()}


def _log_value(key: str, value: float) -> int | float:
    """A log value as first written: counts as integers."""
    return int(value) if key in ("epoch", "iterations", "skipped_steps") and math.isfinite(value) else value


def read_log(run: str | Path) -> list[dict]:
    """The per-epoch log of a run folder as a list of dicts of floats. A last row without its line end (a kill while
    it was appended) is left out: its numbers may be cut."""
    path = Path(run) / "log.csv"
    lines = path.read_text().splitlines(keepends=True)
    whole = lines if not lines or lines[-1].endswith("\n") else lines[:-1]
    try:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(whole)]
    except (TypeError, ValueError) as e:  # a row of too few or unreadable values: edited, not written so
        raise MitosegError(f"{path} is damaged ({e}): start the run again with --overwrite") from None


def _best(values) -> float:
    """The largest finite value (epochs not validated log NaN), else NaN."""
    return max((v for v in values if math.isfinite(v)), default=float("nan"))


def summarize(run: str | Path) -> dict:
    """Training summary of a run folder (written to summary.json): epochs, times, best validation. Its
    seconds_per_epoch are of the whole epochs (not of a last one cut short by the time limit)."""
    run = Path(run)
    rows = read_log(run)
    iters = sum(r["iterations"] for r in rows)
    whole = [r for r in rows if r["iterations"] == max(q["iterations"] for q in rows)]  # not one cut by --minutes
    summary = {
        "epochs": len(rows),
        "iterations": int(iters),
        "train_seconds": rows[-1]["elapsed_seconds"] if rows else 0.0,
        "seconds_per_epoch": float(np.mean([r["epoch_seconds"] for r in whole])) if rows else 0.0,
        "seconds_per_iteration": (rows[-1]["elapsed_seconds"] / iters) if iters else 0.0,
        "best_val_dice": _best(r["val_dice"] for r in rows),
        "best_val_iou": _best(r["val_iou"] for r in rows),
        # at each epoch's best threshold (older logs: at 0.5); best.pt is chosen by this one
        "best_val_iou_any_threshold": _best(r.get("val_iou_best", r["val_iou"]) for r in rows),
        "skipped_steps": int(sum(r.get("skipped_steps", 0) for r in rows)),
        "final_loss": rows[-1]["loss"] if rows else float("nan"),
        "peak_memory_mib": max((r["peak_memory_mib"] for r in rows), default=0.0),
    }
    if (run / "annotation.json").exists():  # runs since 2026-12-07
        summary["annotation"] = io.read_json(run / "annotation.json")
        share = all_foreground(summary["annotation"]["validation"])
        if summary["annotation"]["validation"] and math.isfinite(summary["best_val_iou_any_threshold"]):
            summary["all_foreground_iou"] = share  # what `predict` warns of (`predict.unlearned`)
            summary["learned"] = learned(summary["best_val_iou_any_threshold"], share)
    undefined = {k: None for k, v in summary.items() if isinstance(v, float) and not math.isfinite(v)}  # no NaN
    io.write_json(run / "summary.json", {**summary, **undefined})  # in a JSON file; `predict` reads it
    return summary


def adamw(model: torch.nn.Module, config: Config, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the run's learning rate and weight decay, fused on a CPU or CUDA device: one kernel
    updates every weight (the same arithmetic to float32 rounding) where the default makes about ten passes
    over them (`benchmarks/bench_train.py`, 2 CPU cores: the 3D model's update 0.054 s instead of 0.102 s)."""
    fused = True if device.type in ("cpu", "cuda") else None
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def checkpoint_path(run: str | Path) -> Path:
    """The checkpoint `load_model` reads of a run folder (best.pt, else last.pt) or checkpoint file; MitosegError
    when there is none."""
    run = Path(run)
    if run.is_dir():
        path = next((run / n for n in ("best.pt", "last.pt") if (run / n).exists()), None)
        if path is None:
            raise MitosegError(f"{run} holds no trained model (best.pt or last.pt){kept_aside(run)}")
        return path
    if not run.exists():
        raise MitosegError(f"{run}: no such model folder or checkpoint")
    return run


def load_model(run: str | Path, device: str | torch.device = "auto",
               planes: int | None = None) -> tuple[torch.nn.Module, Config]:
    """The trained model of a run folder (best.pt, else last.pt) or of a checkpoint file, in eval mode, and
    its config; with `planes`, a 2D model predicting along 1 or 3 planes instead of the run's (`with_planes`)."""
    path = checkpoint_path(run)
    device = pick_device(device) if isinstance(device, str) else device
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
        config = Config(**ckpt["config"])
        model = build_model(config).to(device)
        model.load_state_dict(ckpt["model"])
        model.intensity = ckpt.get("intensity")  # the training volume's window and histogram (None: older runs)
    except (KeyError, TypeError, ValueError, RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise MitosegError(f"{path} is not a mitoseg checkpoint ({type(e).__name__})") from None
    if planes is not None:
        config = with_planes(config, planes)
        model.planes = config.slice_planes  # what `models.build_model` sets from a config
    return model.eval(), config
