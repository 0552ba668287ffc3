"""Blockwise sliding-window prediction with Gaussian blending, into Zarr, in bounded memory.

Tiles lie on one global grid over the whole volume (nnU-Net's step rule). An output block gathers
every tile that overlaps it, so a volume predicted block by block equals the volume predicted whole:
no seams, whatever the block size, and blocks are independent (resumable, parallel on Dask).
Memory holds one block, its input halo and a batch of tiles, never the volume.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mitoseg import io, memory
from mitoseg.errors import MitosegError
from mitoseg.models import autocast, channels_last

Block = tuple[slice, slice, slice]


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


def iter_blocks(shape: tuple[int, ...], block: tuple[int, ...]) -> Iterator[Block]:
    """Blocks of at most `block` voxels tiling `shape` in C order."""
    ranges = [range(0, s, b) for s, b in zip(shape, block, strict=True)]
    for lo in itertools.product(*ranges):
        yield tuple(slice(a, min(a + b, s)) for a, b, s in zip(lo, block, shape, strict=True))


def _flips(ndim: int, tta: bool) -> list[tuple[int, ...]]:
    """Flip axes of a batch tensor (B, C, [Z,] Y, X) for test-time augmentation: in-plane flips."""
    if not tta:
        return [()]
    y, x = ndim - 2, ndim - 1
    return [(), (x,), (y,), (y, x)]


@torch.inference_mode()
def _infer(model: torch.nn.Module, batch: np.ndarray, device: torch.device, tta: bool, amp: bool) -> np.ndarray:
    """Foreground probabilities float32 for a batch of tiles (B, 1, [Z,] Y, X), averaged over flips."""
    x = torch.from_numpy(batch).to(device, non_blocking=True)
    x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
    acc = None
    flips = _flips(x.ndim, tta)
    with autocast(device, amp):
        for axes in flips:
            xi = torch.flip(x, axes) if axes else x
            p = torch.sigmoid(model(xi).float())
            p = torch.flip(p, axes) if axes else p
            acc = p if acc is None else acc + p
    return (acc / len(flips)).cpu().numpy()


def block_plan(shape: tuple[int, ...], block: Block, tile: tuple[int, int, int],
               overlap: float) -> tuple[tuple[int, int, int], list[list[int]], Block]:
    """For one output block: the tile size (clipped to the volume), each axis's tile starts that overlap
    the block, and the input region those tiles read (the block plus its halo)."""
    tile = tuple(min(t, s) for t, s in zip(tile, shape, strict=True))
    starts = []
    for axis in range(3):
        lo, hi = block[axis].start, block[axis].stop
        starts.append([s for s in compute_steps(shape[axis], tile[axis], overlap)
                       if s < hi and s + tile[axis] > lo])
    region = tuple(slice(min(s), max(s) + t) for s, t in zip(starts, tile, strict=True))
    return tile, starts, region


def read_region(volume: Any, region: Block, window: tuple[float, float]) -> np.ndarray:
    """The normalised float32 input of a block's region."""
    return io.normalize(volume[region], window)


def auto_batch(tile: tuple[int, int, int], device: torch.device) -> int:
    """Tiles per batch when not given: about 2 M input voxels on CPU, 16 M on a GPU (padded to 32)."""
    voxels = int(np.prod([max(32, -(-t // 32) * 32) if t > 1 else 1 for t in tile]))
    budget = 2**24 if device.type == "cuda" else 2**21
    return max(1, budget // voxels)


def predict_block(model: torch.nn.Module, volume: Any, block: Block, tile: tuple[int, int, int],
                  overlap: float, window: tuple[float, float], device: torch.device, dims: int,
                  batch_size: int | None = None, tta: bool = False, amp: bool = True,
                  image: np.ndarray | None = None) -> np.ndarray:
    """Probabilities float32 (block shape) for one block of `volume` (Z, Y, X), from every tile of the
    global grid that overlaps the block, blended with Gaussian weights. `image` is the block's
    region already read with `read_region` (read here when None)."""
    tile, starts, region = block_plan(tuple(volume.shape), block, tile, overlap)
    batch_size = batch_size or auto_batch(tile, device)
    channels_last(model, dims)  # a no-op once converted
    if image is None:
        image = read_region(volume, region, window)
    weight = gaussian_weight(tile)
    bshape = tuple(b.stop - b.start for b in block)
    acc = np.zeros(bshape, np.float32)
    norm = np.zeros(bshape, np.float32)
    corners = list(itertools.product(*starts))
    for i in range(0, len(corners), batch_size):
        chunk = corners[i:i + batch_size]
        tiles = np.stack([image[tuple(slice(c - r.start, c - r.start + t)
                                      for c, r, t in zip(corner, region, tile, strict=True))]
                          for corner in chunk])
        tiles = tiles[:, None] if dims == 3 else tiles[:, :1]  # (B, 1, Z, Y, X) or (B, 1, Y, X)
        probs = _infer(model, np.ascontiguousarray(tiles), device, tta, amp)
        probs = probs[:, 0] if dims == 3 else probs  # back to (B, Z, Y, X)
        for corner, p in zip(chunk, probs, strict=True):
            src, dst = [], []
            for c, t, b in zip(corner, tile, block, strict=True):
                lo, hi = max(c, b.start), min(c + t, b.stop)
                src.append(slice(lo - c, hi - c))
                dst.append(slice(lo - b.start, hi - b.start))
            src, dst = tuple(src), tuple(dst)
            acc[dst] += p[src] * weight[src]
            norm[dst] += weight[src]
    return acc / norm


def predict_array(model: torch.nn.Module, image: np.ndarray, dims: int, tile: tuple[int, int, int],
                  overlap: float = 0.5, window: tuple[float, float] | None = None,
                  device: torch.device | None = None, batch_size: int | None = None, tta: bool = False,
                  amp: bool = True) -> np.ndarray:
    """Probabilities float32 (Z, Y, X) for an in-memory volume: one block covering it all."""
    device = device or next(model.parameters()).device
    window = window or io.intensity_range(image)
    block = tuple(slice(0, s) for s in image.shape)
    model.eval()
    return predict_block(model, image, block, tile, overlap, window, device, dims, batch_size, tta, amp)


def to_storage(probs: np.ndarray, dtype: str) -> np.ndarray:
    """Probabilities as stored: 'uint8' maps [0, 1] to 0..255, 'float16' keeps them as floats."""
    if dtype == "uint8":
        return np.rint(probs * 255).astype(np.uint8)
    if dtype == "float16":
        return probs.astype(np.float16)
    raise MitosegError(f"probability dtype must be uint8 or float16, not {dtype!r}")


WHOLE_SLICE_PIXELS = 2**22  # 2048 x 2048; 2048 x 1536 slices peaked at 2.5 GiB on CPU (results/README.md)


def default_tile(dims: int, shape: tuple[int, ...], tile: tuple[int, int, int]) -> tuple[int, int, int]:
    """The prediction tile (Z, Y, X) when the user gives none: for a 2D model, the whole slice of a
    volume (Z, Y, X) whose slices have at most 2048 x 2048 pixels (each slice computed once, with no
    blending: 1.8x less work than 256-pixel tiles at overlap 0.25 on the CA1 shape); else `tile`."""
    if dims == 2 and shape[1] * shape[2] <= WHOLE_SLICE_PIXELS:
        return (1, int(shape[1]), int(shape[2]))
    return tuple(tile)


def default_block(shape: tuple[int, ...], tile: tuple[int, int, int], budget_voxels: int = 2**25) -> tuple:
    """A block shape of about `budget_voxels` (128 MiB of float32): whole planes when they fit,
    deep enough in Z to keep the extra tiles computed at block borders few, and at least a tile wide
    (a 2D model run on whole slices computes each slice once)."""
    z, y, x = shape
    by, bx = min(y, max(1024, tile[1])), min(x, max(1024, tile[2]))
    bz = max(tile[0], budget_voxels // (by * bx))
    return (min(z, bz), by, bx)


def predict_volume(model: torch.nn.Module, image: Any, out: str | Path, dims: int,
                   tile: tuple[int, int, int], overlap: float = 0.5, block: tuple[int, int, int] | None = None,
                   dtype: str = "uint8", mask_out: str | Path | None = None, threshold: float = 0.5,
                   batch_size: int | None = None, tta: bool = False, amp: bool = True,
                   device: torch.device | None = None, attrs: dict | None = None, overwrite: bool = False,
                   resume: bool = False, progress: bool = True, window: tuple[float, float] | None = None) -> Path:
    """Predict a whole volume block by block into a Zarr array of probabilities at `out`.

    image: array-like (Z, Y, X) or a path understood by `io.open_volume`. Writes `<out>.partial`
    first and renames when done; with `resume`, blocks finished by an earlier run are skipped.
    Optionally writes a binary mask (uint8 {0, 1}, probability >= threshold) to `mask_out`.
    `window`: the intensity window mapped to [0, 1] (default: `io.intensity_range` of this volume;
    give the larger volume's window when `image` is a part of it). Returns the output path.
    """
    from tqdm.auto import tqdm

    volume = io.open_volume(image) if isinstance(image, str | Path) else image
    shape = tuple(volume.shape)
    io.check_output(out, overwrite)
    if mask_out is not None:
        io.check_output(mask_out, overwrite)
    device = device or next(model.parameters()).device
    model.eval()
    window = window or io.intensity_range(volume)
    block = tuple(block or default_block(shape, tile))
    meta = dict(attrs or {}, overlap=overlap, tile=tile, tta=tta, window=window, created=time.strftime("%F %T"))
    probs = io.create_zarr(out, shape, dtype, block, dict(meta, kind="probability"), resume)
    masks = (io.create_zarr(mask_out, shape, "uint8", block, dict(meta, kind="mask", threshold=threshold), resume)
             if mask_out is not None else None)
    done = io.done_dir(out, resume)
    todo = [b for b in iter_blocks(shape, block) if not io.block_marker(done, b).exists()]
    bar = tqdm(total=len(todo), desc=f"predict {Path(out).name}", unit="block", disable=not progress)

    def write(b: Block, p: np.ndarray) -> None:
        probs[b] = to_storage(p, dtype)
        if masks is not None:
            masks[b] = (p >= threshold).astype(np.uint8)
        io.block_marker(done, b).touch()

    # Reading the next block and writing the last one overlap with the model's work (zarr codecs
    # release the GIL); at most one read and one write are in flight, so memory stays bounded.
    with ThreadPoolExecutor(max_workers=2) as pool:
        read = lambda b: read_region(volume, block_plan(shape, b, tile, overlap)[2], window)  # noqa: E731
        pending_read = pool.submit(read, todo[0]) if todo else None
        pending_write = None
        for i, b in enumerate(todo):
            image = pending_read.result()
            pending_read = pool.submit(read, todo[i + 1]) if i + 1 < len(todo) else None
            p = predict_block(model, volume, b, tile, overlap, window, device, dims, batch_size, tta, amp, image)
            if pending_write is not None:
                pending_write.result()
            pending_write = pool.submit(write, b, p)
            bar.update()
        if pending_write is not None:
            pending_write.result()
    bar.close()
    io.finish_output(out, overwrite)
    if mask_out is not None:
        io.finish_output(mask_out, overwrite)
    memory.release()
    return Path(out)
