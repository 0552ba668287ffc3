"""Blockwise sliding-window prediction with Gaussian blending, into Zarr, in bounded memory.

Tiles lie on one global grid over the whole volume (nnU-Net's step rule). An output block gathers
every tile that overlaps it, so a volume predicted block by block equals the volume predicted whole:
no seams, whatever the block size, and blocks are independent (resumable, parallel on Dask).
Memory holds one block, its input halo and a batch of tiles, never the volume.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import json
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mitoseg import blocks, checks, io, memory, metrics, omezarr, postprocess
from mitoseg.config import Config, check_planes
from mitoseg.errors import MitosegError
from mitoseg.models import accelerator, autocast, channels_last, model_dims

Block = blocks.Block


def compute_steps(size: int, tile: int, overlap: float) -> list[int]:
    """Tile start positions along one axis: tiles of `tile` voxels cover [0, size), overlapping by
    about `overlap` of a tile, first at 0 and last ending at `size` (nnU-Net's rule)."""
    tile = min(tile, size)
    if size == tile:
        return [0]
    n = math.ceil((size - tile) / max(1.0, tile * (1 - overlap))) + 1
    step = (size - tile) / (n - 1)
    return [int(round(step * i)) for i in range(n)]


def gaussian_weight(tile: tuple[int, ...], sigma_scale: float = 0.125) -> np.ndarray:
    """Blending weight of one tile, float32 of shape `tile`: a Gaussian centred on the tile with
    sigma = sigma_scale * size per axis (flat along axes of size 1); never zero, so edges count a little."""
    w = np.ones(tile, dtype=np.float64)
    for axis, n in enumerate(tile):
        if n == 1:
            continue
        x = np.arange(n) - (n - 1) / 2
        g = np.exp(-0.5 * (x / (sigma_scale * n)) ** 2)
        shape = [1] * len(tile)
        shape[axis] = n
        w = w * g.reshape(shape)
    w /= w.max()
    w = np.maximum(w, w[w > 0].min(), out=w)
    return w.astype(np.float32)


@functools.lru_cache(maxsize=4)
def _device_weight(tile: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """`gaussian_weight(tile)` on `device`, computed once per tile and device, not per block (a whole
    2048 x 1536 slice's weight takes tens of milliseconds); only ever read."""
    return torch.from_numpy(gaussian_weight(tile)).to(device)


# Test-time augmentation: each transform is (quarter turns in-plane, flipped axes), the axes named
# "z", "y", "x"; a tile is flipped, then turned, and its prediction turned and flipped back. Hand-written:
# MONAI's TestTimeAugmentation draws random transforms of a whole volume; here a fixed set runs per tile batch.
TTA_SETS = {
    "flips": [(0, ()), (0, ("x",)), (0, ("y",)), (0, ("y", "x"))],
    "dihedral": [(k, f) for k in range(4) for f in ((), ("x",))],
    "flips_z": [(0, f + z) for z in ((), ("z",)) for f in ((), ("x",), ("y",), ("y", "x"))],
    "dihedral_z": [(k, f + z) for z in ((), ("z",)) for k in range(4) for f in ((), ("x",))],
}
TTA_SET = "flips"  # what `tta=True` averages over


def _transforms(ndim: int, tta: bool) -> list[tuple[int, tuple[int, ...]]]:
    """Test-time transforms of a batch tensor (B, C, [Z,] Y, X) as (quarter turns in the (Y, X) plane,
    flipped tensor axes): `TTA_SET` when `tta`, else the identity alone; a 2D batch has no z to flip."""
    if not tta:
        return [(0, ())]
    axis = {"z": ndim - 3, "y": ndim - 2, "x": ndim - 1}
    return [(k, tuple(axis[a] for a in f)) for k, f in TTA_SETS[TTA_SET] if ndim == 5 or "z" not in f]


@torch.inference_mode()
def _infer(model: torch.nn.Module, x: torch.Tensor, tta: bool, amp: bool) -> torch.Tensor:
    """Foreground probabilities float32 on x's device for a batch of tiles x (B, 1, [Z,] Y, X) on the
    model's device, averaged over the test-time transforms (`_transforms`)."""
    fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    x = x.contiguous(memory_format=fmt)
    plane = (x.ndim - 2, x.ndim - 1)
    acc = None
    transforms = _transforms(x.ndim, tta)
    with autocast(x.device, amp):
        for k, axes in transforms:
            xi = torch.flip(x, axes) if axes else x
            xi = torch.rot90(xi, k, plane).contiguous(memory_format=fmt) if k else xi
            p = torch.sigmoid(model(xi).float())
            p = torch.rot90(p, -k, plane) if k else p
            p = torch.flip(p, axes) if axes else p
            acc = p if acc is None else acc + p
    return acc / len(transforms)


def block_plan(shape: tuple[int, ...], block: Block, tile: tuple[int, int, int],
               overlap: float, context: int = 0) -> tuple[tuple[int, int, int], list[list[int]], Block]:
    """For one output block: the tile size (clipped to the volume), each axis's tile starts that overlap
    the block, and the input region those tiles read: the block plus its halo and, for a 2D model that
    takes `context` neighbouring slices on each side, that many more slices in Z, which reach past the
    volume's first and last slice there (`io.read_region` repeats those)."""
    tile = tuple(min(t, s) for t, s in zip(tile, shape, strict=True))
    starts = []
    for axis in range(3):
        lo, hi = block[axis].start, block[axis].stop
        starts.append([s for s in compute_steps(shape[axis], tile[axis], overlap)
                       if s < hi and s + tile[axis] > lo])
    region = tuple(slice(min(s), max(s) + t) for s, t in zip(starts, tile, strict=True))
    return tile, starts, (slice(region[0].start - context, region[0].stop + context), *region[1:])


def input_planes(model: torch.nn.Module, dims: int) -> int:
    """Planes a 2D model predicts along (its `planes`, set by `models.build_model`: 1 or 3, `io.PLANES`);
    1 for a 3D model or a model built elsewhere."""
    return int(getattr(model, "planes", 1)) if dims == 2 else 1


def input_context(model: torch.nn.Module, dims: int) -> int:
    """Neighbouring slices on each side that a 2D model takes as channels with each slice (its `context`,
    set by `models.build_model`); 0 for a 3D model or a model built elsewhere."""
    return int(getattr(model, "context", 0)) if dims == 2 else 0


def to_device(raw: np.ndarray, window: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """The normalised float32 input (`io.normalize`) of a region on `device`: a uint8 region travels as it
    is and goes through `io.lookup_table` there (a quarter of float32's copy to a GPU, no host pass);
    other dtypes are normalised on the host."""
    if raw.dtype == np.uint8:
        table = torch.from_numpy(io.lookup_table(raw.dtype, window)).to(device)
        raw = torch.from_numpy(np.require(raw, requirements=["C", "W"])).to(device)
        out = torch.empty(raw.shape, dtype=torch.float32, device=device)
        step = max(1, 2**24 // max(1, raw[0].numel()))  # the int64 indices of about 16 M voxels at a time
        for i in range(0, raw.shape[0], step):
            out[i:i + step] = table[raw[i:i + step].long()]
        return out
    return torch.from_numpy(io.normalize(raw, window)).to(device)


def auto_batch(tile: tuple[int, int, int], device: torch.device) -> int:
    """Tiles per batch when not given: about 2 M input voxels on CPU, 16 M on a GPU (padded to 32)."""
    voxels = int(np.prod([max(32, -(-t // 32) * 32) if t > 1 else 1 for t in tile]))
    budget = 2**24 if accelerator(device) else 2**21
    return max(1, budget // voxels)


def predict_block(model: torch.nn.Module, volume: Any, block: Block, tile: tuple[int, int, int],
                  overlap: float, window: tuple[float, ...], device: torch.device, dims: int,
                  batch_size: int | None = None, tta: bool = False, amp: bool = True,
                  raw: np.ndarray | None = None) -> np.ndarray:
    """Probabilities float32 (block shape) for one block of `volume` (Z, Y, X), from every tile of the
    global grid that overlaps the block, blended with Gaussian weights (`blend_block`, on `device`)."""
    return blend_block(model, volume, block, tile, overlap, window, device, dims, batch_size, tta, amp,
                       raw).cpu().numpy()


@torch.inference_mode()
def blend_block(model: torch.nn.Module, volume: Any, block: Block, tile: tuple[int, int, int],
                overlap: float, window: tuple[float, ...], device: torch.device, dims: int,
                batch_size: int | None = None, tta: bool = False, amp: bool = True,
                raw: np.ndarray | None = None) -> torch.Tensor:
    """`predict_block`'s probabilities as a float32 tensor on `device`. `raw` is the block's region already
    read with `io.read_region` (read here when None; normalised on the model's device, `to_device`).
    A 2D model of three planes (`input_planes`) predicts the block slice by slice along each axis, each on its
    own global tile grid, and gives their mean; `raw` then serves the XY slices only."""
    if input_planes(model, dims) == 3:
        acc = None
        for order in io.PLANES:
            view = volume if order == io.PLANES[0] else io.Transposed(volume, order)
            p = _blend_plane(model, view, tuple(block[a] for a in order), tile, overlap, window, device, dims,
                             batch_size, tta, amp, raw if order == io.PLANES[0] else None)
            p = p.permute(*np.argsort(order).tolist())
            acc = p if acc is None else acc.add_(p)
            del p
        return acc.div_(len(io.PLANES))
    return _blend_plane(model, volume, block, tile, overlap, window, device, dims, batch_size, tta, amp, raw)


def _blend_plane(model: torch.nn.Module, volume: Any, block: Block, tile: tuple[int, int, int],
                 overlap: float, window: tuple[float, ...], device: torch.device, dims: int,
                 batch_size: int | None, tta: bool, amp: bool, raw: np.ndarray | None) -> torch.Tensor:
    """`blend_block` along the volume's first axis: a 3D model, or a 2D model slice by slice."""
    context = input_context(model, dims)
    tile, starts, region = block_plan(tuple(volume.shape), block, tile, overlap, context)
    batch_size = batch_size or auto_batch(tile, device)
    channels_last(model, dims)  # a no-op once converted
    # The region goes to the model's device once and its tiles are cut and blended there (on a GPU, not
    # on the host batch by batch); the caller copies the blended block back.
    image = to_device(io.read_region(volume, region) if raw is None else raw, window, device)
    weight = _device_weight(tile, device)
    bshape = tuple(b.stop - b.start for b in block)
    acc = torch.zeros(bshape, dtype=torch.float32, device=device)
    # tiles that do not overlap (a 2D model's whole slices) cover each voxel once: no weights to divide by
    alone = all(b - a >= t for s, t in zip(starts, tile, strict=True) for a, b in itertools.pairwise(s))
    norm = None if alone else torch.zeros(bshape, dtype=torch.float32, device=device)
    corners = list(itertools.product(*starts))
    for i in range(0, len(corners), batch_size):
        chunk = corners[i:i + batch_size]
        # a tile's input reaches `context` slices further in Z on each side
        tiles = torch.stack([image[tuple(slice(c - h - r.start, c + t + h - r.start)
                                         for c, r, t, h in zip(corner, region, tile, (context, 0, 0), strict=True))]
                             for corner in chunk])
        tiles = tiles[:, None] if dims == 3 else tiles[:, :1 + 2 * context]  # (B, 1, Z, Y, X) or (B, 1 + 2k, Y, X)
        probs = _infer(model, tiles, tta, amp)
        probs = probs[:, 0] if dims == 3 else probs  # back to (B, Z, Y, X)
        for corner, p in zip(chunk, probs, strict=True):
            src, dst = [], []
            for c, t, b in zip(corner, tile, block, strict=True):
                lo, hi = max(c, b.start), min(c + t, b.stop)
                src.append(slice(lo - c, hi - c))
                dst.append(slice(lo - b.start, hi - b.start))
            src, dst = tuple(src), tuple(dst)
            if norm is None:
                acc[dst] = p[src]
            else:
                acc[dst] += p[src] * weight[src]
                norm[dst] += weight[src]
    return acc if norm is None else acc.div_(norm)


def predict_array(model: torch.nn.Module, image: np.ndarray, dims: int, tile: tuple[int, int, int],
                  overlap: float = 0.5, window: tuple[float, ...] | None = None,
                  device: torch.device | None = None, batch_size: int | None = None, tta: bool = False,
                  amp: bool = True) -> np.ndarray:
    """Probabilities float32 (Z, Y, X) for an in-memory volume: one block covering it all. `window`
    defaults to `io.intensity_range` of `image` by the model's own rule (`input_rule`)."""
    check_call(model, image, dims, "predict_array", tile, overlap)
    device = device or next(model.parameters()).device
    window = window or input_window(model, image)
    block = tuple(slice(0, s) for s in image.shape)
    model.eval()
    return predict_block(model, image, block, tile, overlap, window, device, dims, batch_size, tta, amp)


def check_call(model: Any, image: Any, dims: Any, name: str, tile: Any, overlap: Any) -> tuple[int, ...]:
    """The shape of `image` when `model` is a loaded network of `dims` (2 or 3), `image` a volume (Z, Y, X),
    `tile` three sizes and `overlap` in [0, 1); else MitosegError in one line (`name`: the function called)."""
    if not isinstance(model, torch.nn.Module):
        raise MitosegError(f"{name} takes a loaded model (train.load_model), not a {type(model).__name__}; "
                           "predict.predict takes a run folder or checkpoint")
    found = model_dims(model)
    if dims not in (2, 3) or found not in (None, dims):
        raise MitosegError(f"dims must be {found or '2 or 3'} (the model's), not {dims!r}")
    checks.per_axis(tile=tile)
    checks.check(tile=tile, overlap=overlap)
    if not hasattr(image, "shape"):
        takes = "a volume's path or an array" if name == "predict_volume" else "an array"
        raise MitosegError(f"{name} takes {takes} (numpy, zarr, dask), not a {type(image).__name__}")
    shape = tuple(image.shape)
    if len(shape) != 3:
        raise MitosegError(f"the image must be a volume (Z, Y, X), not an array of shape {shape}")
    return shape


def input_window(model: torch.nn.Module, volume: Any, match_training: bool = False) -> tuple[float, ...]:
    """The window that maps `volume` (Z, Y, X) to the network's [0, 1]: by the model's rule (`input_rule`,
    `io.intensity_range`), or with `match_training` after its grey levels are moved onto the training
    volume's histogram (`io.matched_window`), which undoes another acquisition's contrast, brightness and
    gamma as long as the volume holds a similar mixture of tissue. Raises MitosegError when the model
    carries no training histogram (runs trained before it was kept)."""
    if not match_training:
        return io.intensity_range(volume, rule=input_rule(model), flat="the image")
    intensity = getattr(model, "intensity", None)
    if not intensity:
        raise MitosegError("this model was trained before mitoseg kept the training volume's histogram with it; "
                           "train it again to use --match-training")
    return io.matched_window(volume, intensity["reference"], intensity["window"], image="the image")


def input_rule(model: torch.nn.Module) -> str:
    """The intensity rule ("percentile" or "equalize") a model's inputs need: set by `models.build_model`
    from its config; "percentile" for a model built elsewhere."""
    return getattr(model, "normalize", "percentile")


def to_storage(probs: np.ndarray | torch.Tensor, dtype: str) -> np.ndarray:
    """Probabilities as stored, on the host: 'uint8' maps [0, 1] to 0..255 (rounded half to even),
    'float16' keeps them as floats; computed where `probs` lies (a GPU copies back the small dtype)."""
    return _stored(probs, dtype).cpu().numpy()


def _stored(probs: np.ndarray | torch.Tensor, dtype: str) -> torch.Tensor:
    p = torch.as_tensor(probs)
    if dtype == "uint8":
        return torch.round(p * 255).to(torch.uint8)
    if dtype == "float16":
        return p.half()
    raise MitosegError(f"probability dtype must be uint8 or float16, not {dtype!r}")


WHOLE_SLICE_PIXELS = 2**22  # 2048 x 2048; 2048 x 1536 slices peaked at 2.5 GiB on CPU (results/README.md)
# a 2D model of three planes predicts whole slices only where the whole volume is one block (the CA1 shape)
WHOLE_VOLUME_VOXELS = 2**27


def default_tile(dims: int, shape: tuple[int, ...], tile: tuple[int, int, int],
                 planes: int = 1) -> tuple[int, int, int]:
    """The prediction tile (Z, Y, X) when the user gives none: for a 2D model, the whole slice of a
    volume (Z, Y, X) whose slices have at most 2048 x 2048 pixels (each slice computed once, with no
    blending: 1.8x less work than 256-pixel tiles at overlap 0.25 on the CA1 shape); else `tile`. A 2D model
    of three `planes` takes whole slices only of a volume of at most `WHOLE_VOLUME_VOXELS`, predicted as one
    block (`plan`): a slice across a block reaches out of it along the other planes."""
    whole = planes == 1 or math.prod(shape) <= WHOLE_VOLUME_VOXELS
    if dims == 2 and shape[1] * shape[2] <= WHOLE_SLICE_PIXELS and whole:
        return (1, int(shape[1]), int(shape[2]))
    return tuple(tile)


@functools.lru_cache(maxsize=64)
def tiles_per_length(size: int, tile: int, overlap: float) -> dict[int, int]:
    """Along one axis of `size` voxels: {block length: tiles computed in all blocks of that length}, for
    every length from 1 to the whole axis. An output block gathers each tile that overlaps it, so
    a tile straddling a block border is computed once per block it touches."""
    tile = min(tile, size)
    starts = compute_steps(size, tile, overlap)
    out = {}
    for length in range(1, size + 1):
        out[length] = sum(bisect.bisect_left(starts, min(lo + length, size)) - bisect.bisect_right(starts, lo - tile)
                          for lo in range(0, size, length))
    return out


def default_block(shape: tuple[int, ...], tile: tuple[int, int, int], overlap: float = 0.25,
                  budget_voxels: int = 2**25) -> tuple[int, int, int]:
    """The block shape (Z, Y, X) of at most `budget_voxels` (128 MiB of float32; at least one tile) that
    computes the fewest tiles in all (fewest blocks on a tie), each axis then grown as far as the budget
    allows without computing more. A 2D model's whole-slice tile gives whole-plane blocks; a 3D tile's
    blocks are as deep as the budget allows where that saves tiles at block borders (hand-written:
    the block engine's own cost, which no library plans for)."""
    tables = [tiles_per_length(s, t, overlap) for s, t in zip(shape, tile, strict=True)]
    fronts = []  # per axis: the shortest length for each new, lower tile count
    for table in tables:
        lengths, fewest = [], math.inf
        for length, n in table.items():
            if n < fewest:
                lengths.append(length)
                fewest = n
        fronts.append(lengths)
    best, best_key = None, None
    for block in itertools.product(*fronts):
        voxels = math.prod(block)
        key = (voxels > budget_voxels, math.prod(t[b] for t, b in zip(tables, block, strict=True)),
               math.prod(-(-s // b) for s, b in zip(shape, block, strict=True)), voxels)
        if best_key is None or key < best_key:
            best, best_key = list(block), key
    for axis in (2, 1, 0):  # whole planes first, then depth
        cap = max(best[axis], budget_voxels // (math.prod(best) // best[axis]))
        limit = tables[axis][best[axis]]
        best[axis] = max(length for length, n in tables[axis].items() if length <= cap and n <= limit)
    return tuple(best)


def tiles_computed(shape: tuple[int, ...], tile: tuple[int, ...], overlap: float, block: tuple[int, ...]) -> int:
    """How many tiles (`tile`, Z, Y, X) the blocks `block` of a volume of `shape` compute in all."""
    return math.prod(tiles_per_length(s, t, overlap)[min(b, s)] for s, t, b in zip(shape, tile, block, strict=True))


# a block that decompresses this many times its voxels is noted: 512-deep chunks under a 2D model's 8-slice blocks
# are 64 times; 64-deep ones (convert's Zarr v2 layout) 8 times, not noted
CHUNK_WASTE = 16


def chunk_note(chunks: Any, block: tuple[int, ...]) -> str | None:
    """A note when the image's chunks (Z, Y, X voxels: what a read decompresses whole) are so much larger than the
    prediction's `block` that each block decompresses `CHUNK_WASTE` times the voxels it needs or more, else None (no
    chunks: a TIFF, a contiguous HDF5, an array in memory)."""
    if not isinstance(chunks, tuple) or len(chunks) != 3 or not all(isinstance(c, int | np.integer) for c in chunks):
        return None  # a Dask array's chunks are tuples of sizes
    waste = float(np.prod([max(1.0, c / b) for c, b in zip(chunks, block, strict=True)]))
    if waste < CHUNK_WASTE:
        return None
    return (f"note: the image is stored in chunks of {tuple(int(c) for c in chunks)} voxels and predicted in blocks of "
            f"{block}: each block decompresses about {waste:.0f} times the voxels it needs; `mitoseg convert IMAGE "
            "--out NEW.zarr` rewrites it as Zarr v3 of one-slice chunks, read slice by slice")


def slow_block(shape: tuple[int, ...], tile: tuple[int, ...], overlap: float, block: tuple[int, ...],
               default: tuple[int, ...]) -> str | None:
    """A note when the user's `block` computes over twice the tiles of the `default` block (a tile is computed
    once per block it overlaps), else None."""
    given, best = tiles_computed(shape, tile, overlap, block), tiles_computed(shape, tile, overlap, default)
    if given <= 2 * best:
        return None
    return (f"note: --block {' '.join(map(str, block))} computes {given} tiles, {given / best:.0f} times the {best} "
            f"of the default block ({' '.join(map(str, default))}): leave --block out unless memory needs it")


def fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's weights: which model wrote an output, for the resume check."""
    h = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Settings:
    """How a volume is predicted (Z, Y, X voxels): the tile and its `overlap`, the intensity `window` mapped
    to [0, 1], test-time augmentation, bf16 (`amp`), the stored `dtype`, the mask's `threshold` and the
    output `block`, the `planes` a 2D model predicts along (`input_planes`), and the `source` volume's
    `io.content_id`. Everything but `batch_size` decides the values, and a resume must match it."""

    tile: tuple[int, int, int]
    overlap: float
    window: tuple[float, ...]
    block: tuple[int, int, int]
    dtype: str = "uint8"
    threshold: float = 0.5
    tta: bool = False
    amp: bool = True
    batch_size: int | None = None
    planes: int = 1
    source: str = ""

    def __post_init__(self) -> None:
        checks.check(tile=self.tile, block=self.block, overlap=self.overlap, threshold=self.threshold,
                     batch_size=self.batch_size)
        if self.dtype not in ("uint8", "float16"):
            raise MitosegError(f"probability dtype must be uint8 or float16, not {self.dtype!r}")


def plan(volume: Any, dims: int, tile: tuple[int, int, int], overlap: float, block: tuple[int, int, int] | None = None,
         window: tuple[float, ...] | None = None, planes: int = 1, **options: Any) -> Settings:
    """The prediction settings for `volume` (Z, Y, X): `block` defaults to `default_block`, `window` to
    `io.intensity_range` of the volume; `options` are the other `Settings` fields. A 2D model's tile is
    one slice deep whatever `tile` says. A 2D model of three `planes` (`input_planes`) slices each block along
    every axis: its blocks are planned as a 3D model's with a cube of the tile's width (the whole volume when
    its tiles are whole slices, `default_tile`)."""
    tile = tuple(int(t) for t in tile)
    tile = (1, *tile[1:]) if dims == 2 else tile
    window = tuple(float(w) for w in (window or io.intensity_range(volume)))
    shape = tuple(volume.shape)
    cost_tile = (min(tile[1], shape[0]), *tile[1:]) if dims == 2 and planes == 3 else tile
    whole = dims == 2 and planes == 3 and tuple(tile[1:]) == shape[1:]
    default = shape if whole else default_block(shape, cost_tile, overlap)
    if block is not None:
        note = slow_block(shape, cost_tile, overlap, tuple(int(b) for b in block), default)
        if note:
            print(note, file=sys.stderr)
    block = tuple(int(b) for b in (block or default))
    note = chunk_note(getattr(volume, "chunks", None), block)
    if note:
        print(note, file=sys.stderr)
    return Settings(tile=tile, overlap=float(overlap), window=window, block=block, planes=planes,
                    source=io.content_id(volume), **options)


def recorded(settings: Settings, model_id: str) -> dict:
    """What decides a prediction's values, as its output records them (attribute "settings", beside the shape,
    dtype and block): the `settings` but the batch size, block, threshold and dtype, the model (`model_id`, see
    `fingerprint`) and, with TTA, which transforms were averaged."""
    values = {k: v for k, v in asdict(settings).items() if k not in ("batch_size", "block", "threshold", "dtype")}
    values["model"] = model_id
    if settings.tta:
        values["tta_set"] = TTA_SET
    return io.jsonable(values)


def predicted_alike(path: str | Path, settings: Settings, model: torch.nn.Module) -> bool:
    """Whether the Zarr array at `path` (a finished output of `predict_volume`, or its ``.partial``) was
    predicted by `model` with `settings` (what `recorded` keeps) into the dtype they ask for: a run that goes
    on after an interruption may keep it, or resume it."""
    import zarr

    if not Path(path).exists():
        return False
    stored = zarr.open_array(str(path), mode="r")
    old = dict(stored.attrs.get("settings", {}))
    return np.dtype(stored.dtype) == np.dtype(settings.dtype) and all(
        old.get(k) == v or (k == "source" and io.same_source(old.get(k), v))
        for k, v in recorded(settings, fingerprint(model)).items())


def kept(out: str | Path, mask_out: str | Path | None, shape: tuple[int, ...], settings: Settings, model_id: str,
         attrs: dict | None, resume: bool, overwrite: bool) -> bool:
    """Whether a resumed prediction of probabilities alone (no unfinished ``.partial``) finds them finished at
    `out` by this model with these settings and the voxel size and origin of `attrs` (kept as they are: `predict
    --mask --resume` blurring along Z, interrupted while writing the mask, with --overwrite too: its probabilities
    were written by the run it resumes); a prediction finished otherwise is refused (`blocks.keep_finished`), or with
    `overwrite` replaced."""
    if not resume or mask_out is not None or io.partial_path(out).exists():
        return False
    stated = {k: v for k, v in (attrs or {}).items() if k in ("voxel_size", "origin")}
    try:
        return blocks.keep_finished(out, "probability", shape, settings.dtype, settings.block,
                                    recorded(settings, model_id), stated)
    except MitosegError:
        if overwrite:  # written otherwise: replaced
            return False
        raise


def open_outputs(shape: tuple[int, ...], out: str | Path, mask_out: str | Path | None, settings: Settings,
                 model_id: str, attrs: dict | None, resume: bool, overwrite: bool) -> list[blocks.Output]:
    """The probability output (and the mask output) of a prediction through the block engine; a resume
    must match the settings and the model (`model_id`, see `fingerprint`); without `resume` or `overwrite`, an
    unfinished one is refused (`io.refuse_left`)."""
    if not (resume or overwrite):
        io.refuse_left((out, mask_out), io.unfinished((out, mask_out)))
    values = recorded(settings, model_id)
    meta = dict(attrs or {}, overlap=settings.overlap, tile=settings.tile, tta=settings.tta, window=settings.window,
                created=time.strftime("%F %T"))
    if settings.tta:  # which transforms were averaged: a resume must average the same
        meta["tta_set"] = TTA_SET
    outputs = [blocks.open_output(out, shape, settings.dtype, settings.block, values,
                                  dict(meta, kind="probability"), resume, overwrite)]
    if mask_out is not None:
        outputs.append(blocks.open_output(mask_out, shape, "uint8", settings.block,
                                          dict(values, threshold=settings.threshold),
                                          dict(meta, kind="mask", threshold=settings.threshold), resume, overwrite))
    return outputs


def encode_block(probs: np.ndarray | torch.Tensor, settings: Settings, mask: bool) -> list[np.ndarray]:
    """What is stored of one block's probabilities, on the host: the probabilities as `settings.dtype`,
    then (with `mask`) the mask, uint8 {0, 1} where the stored probability >= threshold (so it agrees with
    `postprocess.apply` of the stored volume, and with the choice made on stored probabilities); computed
    where `probs` lies."""
    stored = _stored(probs, settings.dtype)
    arrays = [stored.cpu().numpy()]
    if mask:
        cut = settings.threshold * 255 if settings.dtype == "uint8" else io.cut(np.float16, settings.threshold)
        arrays.append((stored >= cut).to(torch.uint8).cpu().numpy())
    return arrays


def write_block(outputs: list[blocks.Output], block: Block, arrays: list[np.ndarray]) -> None:
    """Store one block's `encode_block` arrays in `outputs` (the mask first), marking it done in each."""
    if len(outputs) > 1:
        outputs[1].write(block, arrays[1])
    outputs[0].write(block, arrays[0])  # the probabilities' marker decides a resume


def pipeline_depth(device: torch.device) -> int:
    """Blocks read ahead and writes in flight in `predict_volume`: 1 beside a CPU model (the cores compute),
    up to 4 beside a GPU (each block's codec runs on one core; a quarter of the cores this process may use)."""
    return max(1, min(4, metrics.cores() // 4)) if accelerator(device) else 1


@io.releasing
def predict_volume(model: torch.nn.Module, image: Any, out: str | Path, dims: int,
                   tile: tuple[int, int, int], overlap: float = 0.5, block: tuple[int, int, int] | None = None,
                   dtype: str = "uint8", mask_out: str | Path | None = None, threshold: float = 0.5,
                   batch_size: int | None = None, tta: bool = False, amp: bool = True,
                   device: torch.device | None = None, attrs: dict | None = None, overwrite: bool = False,
                   resume: bool = False, progress: bool = True, window: tuple[float, ...] | None = None) -> Path:
    """Predict a whole volume block by block, in this process, into a Zarr array of probabilities at `out`.

    image: array-like (Z, Y, X) or a path understood by `io.open_volume`. Writes `<out>.partial`
    first and renames when done (`blocks.open_output`); with `resume`, blocks finished by an earlier run
    with the same settings and model are skipped (other settings are refused).
    Optionally writes a binary mask (uint8 {0, 1}, probability >= threshold) to `mask_out`.
    `window`: the intensity window mapped to [0, 1] (default: `io.intensity_range` of this volume by the
    model's rule, `input_rule`; give the larger volume's window when `image` is a part of it). Returns the
    output path. Its attribute `seconds` holds this run's time per stage: `read` (the input regions),
    `compute` (normalise, network, blend and encode, `blend_block`), `write` (the Zarr chunks and markers),
    each summed over the threads that overlap them, and `wall`.
    `cluster.predict_volume_dask` does the same on a Dask cluster, with the same result.
    """
    from tqdm.auto import tqdm

    volume = io.open_volume(image) if isinstance(image, str | Path) else image
    shape = check_call(model, volume, dims, "predict_volume", tile, overlap)
    io.refuse_output(volume, image if isinstance(image, str | Path) else "the image", "the EM image",
                     ("probability", "mask", "labels"))
    checks.per_axis(block=block)
    window = window or input_window(model, volume)
    settings = plan(volume, dims, tile, overlap, block, window, planes=input_planes(model, dims), dtype=dtype,
                    threshold=threshold, tta=tta, amp=amp,
                    batch_size=batch_size)
    if kept(out, mask_out, shape, settings, fingerprint(model), attrs, resume, overwrite):
        return Path(out)
    io.check_output(out, overwrite, "zarr", (image,))
    if mask_out is not None:
        io.check_output(mask_out, overwrite, "zarr", (image,))
    device = device or next(model.parameters()).device
    model.eval()
    outputs = open_outputs(shape, out, mask_out, settings, fingerprint(model), attrs, resume, overwrite)
    todo = outputs[0].todo(blocks.grid(shape, settings.block))
    bar = tqdm(total=len(todo), desc=f"predict {Path(out).name}", unit="block", disable=not progress)
    tile, window = settings.tile, settings.window

    # Reading the next blocks and writing the last ones overlap with the model's work (zarr codecs release
    # the GIL); at most `depth` reads and `depth` writes are in flight, so memory stays bounded.
    depth = pipeline_depth(device)
    seconds = {"read": 0.0, "compute": 0.0, "write": 0.0}  # busy time per stage, summed over threads
    lock = threading.Lock()

    def timed(stage, fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        with lock:
            seconds[stage] += time.perf_counter() - t0
        return result

    start = time.perf_counter()
    context = input_context(model, dims)
    with blocks.ticking(bar), ThreadPoolExecutor(max_workers=2 * depth) as pool:
        read = lambda b: timed("read", io.read_region, volume, block_plan(shape, b, tile, overlap, context)[2])  # noqa: E731
        reads = deque(pool.submit(read, b) for b in todo[:depth])
        writes: deque = deque()
        for i, b in enumerate(todo):
            raw = reads.popleft().result()
            if i + depth < len(todo):
                reads.append(pool.submit(read, todo[i + depth]))
            t0 = time.perf_counter()
            p = blend_block(model, volume, b, tile, settings.overlap, window, device, dims, batch_size, tta, amp, raw)
            arrays = encode_block(p, settings, mask_out is not None)
            seconds["compute"] += time.perf_counter() - t0
            del p
            while len(writes) >= depth:
                writes.popleft().result()
            writes.append(pool.submit(timed, "write", write_block, outputs, b, arrays))
            bar.update()
        for w in writes:
            w.result()
    seconds["wall"] = time.perf_counter() - start
    outputs[0].array.attrs["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    bar.close()
    blocks.finish(*outputs, overwrite=overwrite, progress=progress)
    memory.release()
    return Path(out)


@io.releasing
def predict(model: str | Path | Sequence[str | Path], image: str | Path, out: str | Path, *,
            mask_out: str | Path | None = None,
            tile_xy: int | None = None, tile_z: int | None = None, overlap: float | None = None,
            block: tuple[int, int, int] | None = None, dtype: str = "uint8", threshold: float | None = None,
            batch_size: int | None = None, tta: bool = False, amp: bool = True, device: str = "auto",
            client: Any = None, overwrite: bool = False, resume: bool = False, progress: bool = True,
            match_training: bool = False, planes: int | None = None,
            voxel_size: tuple[float, float, float] | None = None) -> Path:
    """The `mitoseg predict` command: a run folder or checkpoint's model over a whole volume, in this
    process (`predict_volume`) or on a Dask `client` (`cluster.predict_volume_dask`), with the same result.
    `match_training`: map the volume's grey levels onto the training volume's histogram first (`input_window`).
    `planes`: a 2D model predicts along 1 (XY) or 3 planes (XY, ZX and ZY, the mean) instead of the run's
    (`model_for`; three planes about triple the time and need near-isotropic voxels), with the run's post-processing
    chosen for those planes (`postprocess.read`), where its training chose one, else none.
    Several models (e.g. a 2D and a 3D run): the voxel-wise mean of their probabilities (`predict_mean`).

    Defaults come from the run: `tile_xy`/`tile_z` (a 2D model: whole slices up to 2048 x 2048 when
    `tile_xy` is not given) and `overlap`. The outputs record `voxel_size` (z, y, x) nm when given, else the one
    the input states (`io.voxel_size`: OME-Zarr, ImageJ TIFF, a mitoseg output), else the run's when stated
    (`recorded_voxel`); an `out` (or `mask_out`) named *.ome.zarr is written as OME-Zarr with a pyramid at that
    scale. Returns `out`.

    The mask: probability >= `threshold` when given; else the run's post-processing chosen on validation
    (`postprocess.read`: its Z smoothing, then its threshold, `write_mask`; its minimum object size and hole
    filling are left to `mitoseg label`), else >= 0.5. The outputs' attribute "postprocessing" holds the run's
    choice ("postprocessing_planes": the planes it was chosen for), the mask's "threshold" and "z_sigma" what it
    applied.
    """
    checks.check(tile_xy=tile_xy, tile_z=tile_z, overlap=overlap, block=block, threshold=threshold,
                 batch_size=batch_size, voxel_size=voxel_size)
    checks.per_axis(block=block)
    if not isinstance(model, str | Path) and not model:
        raise MitosegError("no model given: name a run folder or checkpoint")
    models = (model,) if isinstance(model, str | Path | torch.nn.Module) else tuple(model)
    wrong = next((m for m in models if not isinstance(m, str | Path)), None)
    if wrong is not None:
        given = "a loaded model" if isinstance(wrong, torch.nn.Module) else f"a {type(wrong).__name__}"
        raise MitosegError(f"predict.predict takes run folders or checkpoints (paths), not {given}; a loaded model "
                           "goes to predict.predict_volume")
    for output in (out, mask_out) if mask_out is not None else (out,):
        io.check_place(output, "zarr", (image, *models))
    if not (resume or overwrite):  # an earlier run's finished blocks are never discarded silently
        io.refuse_left((out, mask_out), io.unfinished((out, mask_out), members=True))
    if mask_out is not None and Path(mask_out).absolute() == Path(out).absolute():
        raise MitosegError(f"the probabilities and the mask are both {out}: give two outputs")
    if mask_out is not None:  # one inside the other (but an image-label): replacing the outer would delete both
        probs, mask = Path(out).resolve(), Path(mask_out).resolve()
        if (probs in mask.parents and not omezarr.is_ome_path(out)) or mask in probs.parents:
            raise MitosegError(f"the mask {mask_out} and the probabilities {out} lie one inside the other: give "
                               "two outputs side by side")
        if omezarr.label_of(mask_out) is None or omezarr.label_of(mask_out).resolve() != probs:  # of another image:
            omezarr.refuse_other_voxel(mask_out, voxel_size)  # the label's would differ from the probabilities'
    volume = io.open_volume(image)  # once: a TIFF of thousands of pages takes seconds to open
    io.refuse_output(volume, image, "the EM image", ("probability", "mask", "labels"))
    if resume and not overwrite and mask_out is not None and all(
            Path(p).exists() and not io.partial_path(p).exists() for p in (out, mask_out)):
        raise MitosegError(f"{out} and {mask_out} are finished: nothing to resume (--overwrite predicts them again)")
    single = isinstance(model, str | Path) or len(model) == 1
    chosen = postprocess.read(model if isinstance(model, str | Path) else model[0], planes) if single else None
    stated = voxel_size or io.voxel_size(image)
    note = None
    if chosen and stated:
        chosen, note = _chosen_at(chosen, model if isinstance(model, str | Path) else model[0], stated)
    pp = postprocess.PostProcessing(threshold) if threshold is not None else chosen or postprocess.PostProcessing()
    inside = mask_out is not None and omezarr.label_of(mask_out) is not None and \
        omezarr.label_of(mask_out).resolve() == Path(out).resolve()  # an image-label of the image written here
    if note and threshold is None:  # a threshold given applies no choice (this function's probabilities pass too)
        print(note, file=sys.stderr)
    if (pp.z_sigma or inside) and mask_out is not None:  # a pass of its own afterwards: the mask needs neighbouring
        # blocks (Z smoothing), or the image it labels written first
        io.check_output(mask_out, overwrite, "zarr", (image,))
        predict(model, image, out, tile_xy=tile_xy, tile_z=tile_z, overlap=overlap, block=block, dtype=dtype,
                threshold=pp.threshold, batch_size=batch_size, tta=tta, amp=amp, device=device, client=client,
                overwrite=overwrite, resume=resume, progress=progress, match_training=match_training,
                planes=planes, voxel_size=voxel_size)  # on --resume, finished alike probabilities are kept
        write_mask(out, mask_out, pp, overwrite=overwrite, resume=resume, progress=progress, client=client)
        return Path(out)
    threshold = pp.threshold
    if not isinstance(model, str | Path):
        if len(model) > 1:
            return predict_mean(model, image, out, mask_out=mask_out, threshold=threshold, dtype=dtype,
                                overwrite=overwrite, resume=resume, progress=progress, tile_xy=tile_xy, tile_z=tile_z,
                                overlap=overlap, block=block, batch_size=batch_size, tta=tta, amp=amp, device=device,
                                client=client, match_training=match_training, planes=planes, voxel_size=voxel_size)
        model = model[0]
    attrs = {"model": Path(model).name}
    if chosen:  # the run's choice, for `mitoseg label` and the user; the mask's own attributes say what it applied
        attrs["postprocessing"] = chosen.as_dict()
        attrs["postprocessing_planes"] = postprocess.chosen_for(model, planes)
    if stated:
        attrs["voxel_size"] = tuple(float(v) for v in stated)  # else the run's, when stated (`recorded_voxel`)
    origin = io.origin(image) if isinstance(image, str | Path) else None
    if origin:  # a crop of a larger volume: where it lies
        attrs["origin"] = origin
    if client is not None:
        from mitoseg import cluster

        return cluster.predict_volume_dask(
            client, model, image, out, tile_xy=tile_xy, tile_z=tile_z, overlap=overlap, block=block, dtype=dtype,
            mask_out=mask_out, threshold=threshold, batch_size=batch_size, tta=tta, amp=amp, overwrite=overwrite,
            resume=resume, progress=progress, attrs=attrs, device=None if device == "auto" else device,
            match_training=match_training, planes=planes)
    net, config = model_for(model, volume, device, planes, stated)
    written = predict_volume(net, volume, out, config.dims, run_tile(config, volume.shape, tile_xy, tile_z),
                             config.overlap if overlap is None else overlap, block, dtype, mask_out, threshold,
                             batch_size, tta, amp, attrs={**recorded_voxel(config), **attrs},
                             overwrite=overwrite, resume=resume, progress=progress,
                             window=input_window(net, volume, match_training))
    if warning := unlearned(model):
        print(warning, file=sys.stderr)
    return written


THIN_SLICES = 16  # a volume of fewer slices is noted when a model predicts it along three planes


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def unlearned(model: str | Path) -> str | None:
    """The warning that a run has not learned (its summary.json: `train.learned`), said again after each prediction
    with it (training's warning ends a long log; a refusal stays one line); None for a run that learned, or a
    checkpoint."""
    try:
        found = json.loads((Path(model) / "summary.json").read_text())
    except (OSError, ValueError):  # none (a checkpoint, an unfinished run), or damaged: nothing to say
        return None
    if not isinstance(found, dict) or found.get("learned") is not False:
        return None
    return (f"mitoseg: warning: {Path(model).name} has not learned (best validation IoU "
            f"{found['best_val_iou_any_threshold']:.3f}; calling every voxel mitochondria scores "
            f"{found['all_foreground_iou']:.3f}): its masks will be mostly wrong")


def model_for(model: str | Path, image: Any, device: str | torch.device = "auto",
              planes: int | None = None, voxel_size: tuple[float, ...] | None = None,
              say: Callable[[str], Any] = _to_stderr) -> tuple[torch.nn.Module, Config]:
    """(model, config) of a run folder or checkpoint to predict `image` (a path, or an array) with: along
    `planes` when given (`train.load_model`), refused where a model of three planes meets voxels (`voxel_size`,
    else the ones the volume states) of an axis over twice another's (`config.check_planes`). Its notes (an
    unfinished training, voxels unlike the model's) go to `say`, by default the console."""
    from mitoseg.train import load_model

    net, config = load_model(model, device, planes)
    if (Path(model) / "config.json").is_file() and not (Path(model) / "summary.json").exists():
        say(f"note: the training of {Path(model).name} did not finish (no summary.json): it predicts with the "
            "checkpoint it had reached; `mitoseg train ... --resume` finishes it")
    stated = voxel_size or (io.voxel_size(image) if isinstance(image, str | Path) else None)
    if stated:
        check_planes(config.slice_planes, stated)
    elif config.slice_planes == 3:
        say("note: the image states no voxel size: three planes assume near-isotropic voxels (give --voxel-size "
            "to have that checked)")
    depth = int((io.open_volume(image) if isinstance(image, str | Path) else image).shape[0])
    if config.dims == 3 and depth < config.patch[0]:  # `PadToMultiple` pads its tiles by repeating end slices
        say(f"note: the 3D model learned from patches of {config.patch[0]} slices and this volume has {depth}: its "
            "tiles are padded by repeating the first and last slices, unlike anything it learned from (accuracy there "
            "unmeasured; a 2D model suits a stack this thin)")
    if config.slice_planes == 3 and depth < THIN_SLICES:
        say(f"note: three planes on a volume of {depth} slice{'s' * (depth > 1)}: its ZX and ZY slices are {depth} "
            "pixels tall, unlike anything the model learned from; --planes 1 predicts the XY slices alone")
    if stated and config.voxel_size_stated:  # a run trained at the default size: nothing known to compare
        # a model along XY slices sees the pixels alone: Z counts for 3D models and three planes
        axes = slice(1, 3) if config.dims == 2 and config.slice_planes == 1 else slice(0, 3)
        other = voxel_note(config.voxel_size[axes], stated[axes])
        if other:
            say(other)
    return net, config


def _chosen_at(chosen: postprocess.PostProcessing, run: str | Path,
               voxel: Sequence[float]) -> tuple[postprocess.PostProcessing, str | None]:
    """The run's post-processing `chosen` on its training voxels, for an image of `voxel` (z, y, x nm) unlike them
    (`unlike_voxels`; both stated): its Z blur and minimum size kept in nm (`postprocess.at_voxels`), and the note
    that says so; else as chosen, and None."""
    config = Path(run) / "config.json"
    trained = Config.load(config) if config.is_file() else None
    if trained is None or not trained.voxel_size_stated or not unlike_voxels(trained.voxel_size, voxel):
        return chosen, None
    moved = postprocess.at_voxels(chosen, trained.voxel_size, voxel)
    changed = []
    if moved.z_sigma != chosen.z_sigma:
        changed.append(f"blurs {moved.z_sigma:g} slices along Z (not {chosen.z_sigma:g})")
    if moved.min_size != chosen.min_size:
        changed.append(f"keeps objects of {moved.min_size:,} voxels or more (not {chosen.min_size:,})")
    if not changed:
        return moved, None
    words = [" x ".join(f"{float(v):g}" for v in size) for size in (trained.voxel_size, voxel)]
    return moved, (f"note: the run's post-processing was chosen on {words[0]} nm voxels; on these {words[1]} nm ones "
                   f"it {' and '.join(changed)}: the same nm")


def recorded_voxel(config: Config) -> dict:
    """{"voxel_size": (z, y, x) nm} of the run's training data for the outputs that state none of their own;
    {} when that was the default, stated by nobody (`Config.voxel_size_stated`)."""
    return {"voxel_size": tuple(config.voxel_size)} if config.voxel_size_stated else {}


def unlike_voxels(trained: Sequence[float], other: Sequence[float]) -> bool:
    """Whether voxel sizes (nm, axis by axis) differ by more than a factor 1.5 along an axis: what a model learned
    to see is then another size there."""
    return any(not 1 / 1.5 <= float(o) / float(t) <= 1.5 for o, t in zip(other, trained, strict=True))


def voxel_note(trained: Sequence[float], stated: Sequence[float]) -> str | None:
    """One line when the image's voxels (z, y, x nm, or y, x) differ from those the model was trained on
    (`unlike_voxels`); None when alike."""
    if not unlike_voxels(trained, stated):
        return None
    words = [" x ".join(f"{float(v):g}" for v in size) for size in (trained, stated)]
    return (f"note: the model was trained on {words[0]} nm voxels and the image's are {words[1]} nm: its accuracy on "
            "them is unmeasured (resample the image to the model's voxels, or train on such voxels)")


@io.releasing
def write_mask(probs: str | Path, out: str | Path, pp: postprocess.PostProcessing, overwrite: bool = False,
               resume: bool = False, progress: bool = True, client: Any = None) -> Path:
    """The mask (uint8 {0, 1}, Z, Y, X) of stored probabilities (`predict_volume`'s Zarr) at `out`, block by
    block on their blocks: blurred along Z by `pp.z_sigma` slices (`postprocess.ZSmoothed`: each block read
    with its neighbouring slices), then >= `pp.threshold`; equal to `postprocess.apply` of the whole volume without
    its minimum size and hole filling. In this process, or one Dask task a block on `client`. Resumable like every
    block engine output. Returns `out`."""
    source = io.open_volume(probs)
    shape, block = tuple(source.shape), blocks.block_of(source)
    attrs = {k: v for k, v in source.attrs.items() if k not in ("settings", "kind", "seconds")}
    settings = {"probabilities": dict(source.attrs.get("settings", {})), "postprocessing": pp.as_dict()}
    output = blocks.open_output(out, shape, "uint8", block, settings,
                                dict(attrs, kind="mask", threshold=pp.threshold, z_sigma=pp.z_sigma),
                                resume, overwrite)
    job = {"probs": str(Path(probs).absolute()), "out": str(Path(out).absolute()), "z_sigma": pp.z_sigma,
           "threshold": pp.threshold, "run": output.run}
    blocks.run(_mask_task, output.todo(blocks.grid(shape, block)), job, client, f"mask {Path(out).name}", progress)
    blocks.finish(output, overwrite=overwrite, progress=progress)
    return Path(out)


def _mask_task(block: blocks.Block, job: dict) -> None:
    """One block of `write_mask`'s mask, written into its output (in this process or on a Dask worker)."""
    blurred = postprocess.ZSmoothed(io.open_volume(job["probs"]), job["z_sigma"])
    blocks.Output.reopen(job["out"], job["run"]).write(block, postprocess.apply(blurred[block],
                                                                    postprocess.PostProcessing(job["threshold"])))


def mean_probabilities(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The voxel-wise mean of stored probabilities of one shape: uint8 (0..255) as uint8, rounded half up
    (the mean of a 2D and a 3D model that `compare` scores as "2D+3D"), float16 as float16."""
    if parts[0].dtype == np.uint8:
        total = parts[0].astype(np.uint16)
        for part in parts[1:]:
            total += part
        return ((total + len(parts) // 2) // len(parts)).astype(np.uint8)
    return (sum(part.astype(np.float32) for part in parts) / len(parts)).astype(parts[0].dtype)


@io.releasing
def predict_mean(models: Sequence[str | Path], image: str | Path, out: str | Path, *,
                 mask_out: str | Path | None = None, threshold: float = 0.5, dtype: str = "uint8",
                 overwrite: bool = False, resume: bool = False, progress: bool = True, **each: Any) -> Path:
    """The voxel-wise mean of several models' probabilities (`mean_probabilities`) at `out`, and with
    `mask_out` the mask where it is >= `threshold`. Each model first predicts the whole volume as `predict`
    does (`each`: its other options) into ``<out>.partial.members/<i>.zarr``, removed when done; with
    `resume`, finished members predicted alike (this model, these settings) are kept, unfinished ones resumed,
    others refused. `each`'s "planes" goes to the 2D models
    only (a 3D model sees every axis), each checked before any is predicted. Returns `out`."""
    from tqdm.auto import tqdm

    from mitoseg.train import load_model

    io.check_output(out, overwrite)
    if mask_out is not None:
        io.check_output(mask_out, overwrite)
    planes = each.pop("planes", None)
    configs = [load_model(m, "cpu")[1] for m in models]  # every member found before any predicts
    dims = [c.dims for c in configs]
    trained = {tuple(c.voxel_size) for c in configs if c.voxel_size_stated}
    if len(trained) > 1 and each.get("voxel_size") is None and io.voxel_size(image) is None:
        words = " and ".join(" x ".join(f"{v:g}" for v in size) + " nm" for size in sorted(trained))
        raise MitosegError(f"the models were trained on voxels of {words} and {io.file_name(image)} states none: give "
                           "--voxel-size Z Y X (nm), which the mean records")
    member_planes = [None if planes is None or d == 3 else planes for d in dims]
    for m, p in zip(models, member_planes, strict=True):
        if p is not None:
            model_for(m, image, "cpu", p, each.get("voxel_size"))  # a refusal now, not after the others predict
    members = io.members_path(out)
    if not resume:
        io.remove(members)
    paths = [members / f"{i}.zarr" for i in range(len(models))]
    for i, (model, path, p) in enumerate(zip(models, paths, member_planes, strict=True)):
        if progress:  # the bar below names the member's output (0.zarr, 1.zarr), not the model
            print(f"model {i + 1} of {len(models)}: {model}", file=sys.stderr)
        predict(model, image, path, dtype=dtype, resume=resume, progress=progress, planes=p, **each)  # a finished
        # member is kept only when predicted alike
    arrays = [io.open_volume(path) for path in paths]
    shape, block = tuple(arrays[0].shape), blocks.block_of(arrays[0])
    settings = {"members": [dict(a.attrs["settings"]) for a in arrays]}
    attrs = {k: arrays[0].attrs[k] for k in ("origin", "tta", "tta_set") if k in arrays[0].attrs}
    stated = [a.attrs["voxel_size"] for a in arrays if "voxel_size" in a.attrs]  # a run that stated none records none
    if stated:
        attrs["voxel_size"] = stated[0]
    attrs.update(model=[str(Path(m).name) for m in models], created=time.strftime("%F %T"))
    outputs = [blocks.open_output(out, shape, arrays[0].dtype, block, settings, dict(attrs, kind="probability"),
                                  resume, overwrite)]
    if mask_out is not None:
        outputs.append(blocks.open_output(mask_out, shape, "uint8", block, dict(settings, threshold=threshold),
                                          dict(attrs, kind="mask", threshold=threshold), resume, overwrite))
    cut = threshold * 255 if arrays[0].dtype == np.uint8 else threshold
    for b in tqdm(outputs[0].todo(blocks.grid(shape, block)), desc=f"mean {Path(out).name}", unit="block",
                  disable=not progress):
        mean = mean_probabilities([a[b] for a in arrays])
        write_block(outputs, b, [mean, io.at_least(mean, cut).astype(np.uint8)])
    blocks.finish(*outputs, overwrite=overwrite, progress=progress)
    io.remove(members)
    return Path(out)


def run_tile(config: Any, shape: tuple[int, ...], tile_xy: int | None, tile_z: int | None) -> tuple[int, int, int]:
    """The prediction tile of a run for a volume: the user's, else the run's (2D: whole slices, see
    `default_tile`)."""
    tile = (tile_z or config.tile[0], tile_xy or config.tile[1], tile_xy or config.tile[2])
    tile = (1, *tile[1:]) if config.dims == 2 else tile
    return default_tile(config.dims, tuple(shape), tile, config.slice_planes) if tile_xy is None else tile
