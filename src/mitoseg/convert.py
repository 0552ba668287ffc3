"""One volume into another format: an ImageJ TIFF (what Fiji opens, calibrated in nm), Zarr or OME-Zarr (Zarr v3
and NGFF 0.5, or Zarr v2 and NGFF 0.4 for tools that read no v3).

Any volume mitoseg reads (TIFF, slice folder, HDF5, Zarr, OME-Zarr, .npy) goes in, read a slab of slices
at a time, so memory stays a slab. A TIFF is written by tifffile as an ImageJ hyperstack (axes ZYX, the
voxel size as its spacing, pixel size and unit "nm"); ImageJ holds 8- and 16-bit integers and 32-bit floats
only, so wider integers (object ids) become uint16 when they fit, else float32 when every value is exact in
it (below 2^24), and are refused otherwise; float64 becomes float32. Zarr and OME-Zarr go through the block
engine (`blocks`: written as ``NAME.partial``, an OME-Zarr with its pyramid and NGFF metadata; booleans as
uint8 0/1). Written values are the input's, never rescaled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mitoseg import blocks, checks, io, omezarr
from mitoseg.errors import MitosegError

EXACT_FLOAT32 = 2**24  # every integer up to this is exact in float32
IMAGEJ = (np.uint8, np.uint16, np.int16, np.float32)  # what an ImageJ TIFF holds as it is


@io.releasing
def convert(source: str | Path, out: str | Path, voxel_size: tuple[float, float, float] | None = None,
            block: tuple[int, int, int] | None = None, overwrite: bool = False, progress: bool = True,
            labels: bool = False, zarr_format: int | None = None) -> dict:
    """Write the volume `source` (a path `io.open_volume` reads) to `out`: ``*.tif``/``*.tiff`` an ImageJ TIFF,
    ``*.zarr``/``*.ome.zarr`` Zarr (chunks `block`, default (64, 512, 512) capped at the shape), or
    ``IMAGE/labels/NAME`` an image-label of that OME-Zarr image. `voxel_size` (z, y, x) nm is recorded, else the
    one `source` states, else none (an OME-Zarr's axes then have no unit, scale 1, as `predict` writes one; an
    image-label takes its image's). `labels`: the volume
    holds masks or object ids (an OME-Zarr pyramid of nearest voxels), which integers of 32 bits or more and a
    mitoseg mask or labels output are anyway. `zarr_format` 2 writes Zarr v2 (an OME-Zarr then NGFF 0.4), for
    tools that read no Zarr v3 (zarr-python 2, readers of NGFF 0.4 only); default 3 (NGFF 0.5). Returns what
    was written: {"dtype": stored dtype, "voxel_size": recorded or None, "notes": lines on what the output could
    not keep as it was}."""
    checks.check(voxel_size=voxel_size, block=block)  # before anything is written
    checks.per_axis(block=block)
    volume = io.open_volume(source)
    voxel = tuple(float(v) for v in voxel_size) if voxel_size is not None else io.voxel_size(source)
    origin, notes = io.origin(source), []
    suffix = Path(out).suffix.lower()
    if zarr_format not in (None, 2, 3):
        raise MitosegError(f"Zarr format {zarr_format!r}: mitoseg writes Zarr 2 (NGFF 0.4) or 3 (NGFF 0.5)")
    if zarr_format is not None and (suffix in io.TIFF or omezarr.label_of(out)):
        raise MitosegError(f"{out}: " + ("a TIFF has no Zarr format" if suffix in io.TIFF else "an image-label takes "
                                         "its image's Zarr format") + "; leave out --zarr-format")
    if suffix in io.TIFF:
        io.check_output(out, overwrite, "file", (source,))
        dtype, changed = imagej_dtype(volume, progress)
        notes += [changed] if changed else []
        if origin:
            notes.append(f"a TIFF keeps no place: this volume starts at {_nm(origin)} (z, y, x) in the larger one")
        write_tiff(volume, out, voxel, dtype, overwrite, progress, kind(volume, out, labels))
        return {"dtype": str(dtype), "voxel_size": voxel, "notes": notes}
    if not (io.is_zarr(Path(out)) or omezarr.is_ome_output(out)):
        raise MitosegError(f"{out}: mitoseg converts to a TIFF (*.tif), Zarr (*.zarr) or OME-Zarr (*.ome.zarr)")
    io.check_output(out, overwrite, "zarr", (source,))
    if omezarr.label_of(out):
        if voxel_size is not None:
            raise MitosegError(f"{out} is an image-label: it takes its image's voxel size; leave out --voxel-size")
        image = omezarr.label_layout(out, tuple(volume.shape)).voxel
        if voxel and image and not np.allclose(voxel, image):
            notes.append(f"the input states {_nm(voxel)} voxels; as an image-label it takes its image's {_nm(image)}")
    what = kind(volume, out, labels)
    write_zarr(volume, out, voxel, what, block, overwrite, progress, origin, zarr_format or 3)
    return {"dtype": str(np.dtype(np.uint8 if volume.dtype == bool else volume.dtype)),
            "voxel_size": io.voxel_size(out), "notes": notes}


def _nm(values: tuple[float, ...]) -> str:
    return " x ".join(f"{v:g}" for v in values) + " nm"


def kind(volume: Any, out: str | Path, labels: bool = False) -> str:
    """What an output holds, which decides a Zarr's pyramid (mean or nearest voxel) and a napari layer's type (a TIFF
    states it too, `write_tiff`): a mitoseg output's own
    `kind`; with `labels`, or for integers of 32 bits or more (object ids), labels; else an image. An image-label
    output holds integers (masks, labels: MitosegError otherwise; probabilities are refused by `blocks`)."""
    stated, dtype = io.stated_kind(volume), np.dtype(volume.dtype)
    if omezarr.label_of(out):
        if dtype.kind not in "iub":
            raise MitosegError(f"{out}: an image's labels/ holds integer masks and labels, not {dtype} values")
        return stated or "labels"
    return stated or ("labels" if labels else io.kind(volume))


def imagej_dtype(volume: Any, progress: bool = False) -> tuple[np.dtype, str | None]:
    """The dtype an ImageJ TIFF stores `volume` in, and why it differs from the volume's (None when it does not).
    Integers wider than 16 bits are read once for their range (MitosegError when float32 cannot hold them)."""
    dtype = np.dtype(volume.dtype)
    if dtype in [np.dtype(t) for t in IMAGEJ]:
        return dtype, None
    if dtype.kind == "b" or dtype == np.int8:
        return np.dtype(np.uint8 if dtype.kind == "b" else np.int16), None  # the same values
    if dtype.kind == "f":
        return np.dtype(np.float32), f"{dtype} values written as float32, the only float an ImageJ TIFF holds"
    low, high = value_range(volume, progress)
    if low >= 0 and high <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16), None  # the same values
    if low >= np.iinfo(np.int16).min and high <= np.iinfo(np.int16).max:
        return np.dtype(np.int16), None  # the same values (before: float32, "values up to 0")
    if -EXACT_FLOAT32 <= low and high <= EXACT_FLOAT32:
        return np.dtype(np.float32), (f"{dtype} values from {low:,} to {high:,} written as float32 (exact below "
                                      "2^24): ImageJ holds no integers over 16 bits")
    raise MitosegError(f"values from {low:,} to {high:,} ({dtype}) cannot all be exact in an ImageJ TIFF (16-bit "
                       "integers or float32, exact up to 2^24); convert to Zarr or OME-Zarr instead")


def value_range(volume: Any, progress: bool = False) -> tuple[int, int]:
    """The smallest and largest value of an integer volume, read a slab at a time."""
    from tqdm.auto import tqdm

    low, high, step = None, None, slab(volume)
    for z in tqdm(range(0, volume.shape[0], step), desc="value range", unit="slab", disable=not progress):
        part = np.asarray(volume[z:z + step])
        low = int(part.min()) if low is None else min(low, int(part.min()))
        high = int(part.max()) if high is None else max(high, int(part.max()))
    return low, high


def slab(volume: Any) -> int:
    """Slices read at a time: the depth of the input's blocks (`blocks.block_of`, at most 64), else 16."""
    found = blocks.block_of(volume)
    return int(min(64, found[0])) if found else 16


def write_tiff(volume: Any, out: str | Path, voxel_size: tuple[float, float, float] | None, dtype: Any,
               overwrite: bool = False, progress: bool = True, kind: str | None = None) -> Path:
    """Write `volume` (Z, Y, X) as an ImageJ hyperstack TIFF of `dtype` (one of `IMAGEJ`), slice by slice through
    ``NAME.partial``; calibrated with `voxel_size` (z, y, x) nm when given; a mitoseg output's `kind` (probability,
    mask, labels) in its description (``mitoseg_kind=``, `io.open_volume` reads it back). Returns `out`."""
    import tifffile
    from tqdm.auto import tqdm

    step = slab(volume)

    def slices():
        with tqdm(total=volume.shape[0], desc=f"write {Path(out).name}", unit="slice", disable=not progress) as bar:
            for z in range(0, volume.shape[0], step):
                for plane in np.asarray(volume[z:z + step]).astype(dtype, copy=False):
                    yield plane
                    bar.update(1)

    metadata = {"axes": "ZYX", **({io.TIFF_KIND: kind} if kind and kind != "image" else {})}
    calibration = {}
    if voxel_size is not None:
        calibration = {"resolution": (1 / voxel_size[2], 1 / voxel_size[1])}
        metadata |= {"spacing": voxel_size[0], "unit": "nm"}
    partial = io.partial_path(out)
    io.remove(partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tifffile.TiffWriter(partial, imagej=True) as tif:
            tif.write(slices(), shape=tuple(volume.shape), dtype=dtype, metadata=metadata, **calibration)
    except BaseException as e:  # an unreadable slice, a full disk, Ctrl-C: no half-written file left behind
        io.remove(partial)
        if isinstance(e, OSError) and e.errno is None:  # numpy's short write: "N requested and M written"
            raise MitosegError(f"{out}: the file stopped growing ({e}): a full disk, or a file size limit "
                               "(ulimit -f)?") from None
        raise
    return io.finish_output(out, overwrite)


def write_zarr(volume: Any, out: str | Path, voxel_size: tuple[float, float, float] | None, kind: str,
               block: tuple[int, int, int] | None = None, overwrite: bool = False, progress: bool = True,
               origin: tuple[float, float, float] | None = None, zarr_format: int = 3) -> Path:
    """Write `volume` (Z, Y, X) to the Zarr or OME-Zarr `out` (Zarr `zarr_format`) through the block engine, chunks
    `block`, with its `kind` ("image", "mask", "labels"), `voxel_size` and `origin` (z, y, x) nm in its attributes.
    Returns `out`."""
    from tqdm.auto import tqdm

    shape = tuple(int(n) for n in volume.shape)
    block = tuple(int(b) for b in block) if block else (min(shape[0], 64), 512, 512)
    attrs = {"kind": kind, **({"voxel_size": list(voxel_size)} if voxel_size is not None else {}),
             **({"origin": list(origin)} if origin else {})}
    dtype = np.uint8 if volume.dtype == bool else volume.dtype  # NGFF labels are integers; 0/1 as they were
    output = blocks.open_output(out, shape, dtype, block, {"source": "convert"}, attrs, overwrite=overwrite,
                                zarr_format=zarr_format)
    try:
        for b in tqdm(blocks.grid(shape, block), desc=f"write {Path(out).name}", unit="block", disable=not progress):
            output.write(b, np.asarray(volume[b]).astype(dtype, copy=False))
        blocks.finish(output, overwrite=overwrite, progress=progress)  # an OME-Zarr's pyramid too
    except BaseException:  # a conversion is not resumed: nothing half-written left behind
        io.remove(io.partial_path(out))
        io.remove(output.done)
        raise
    return Path(out)
