"""Volume I/O: one way to open TIFF, slice folders, HDF5, Zarr and .npy lazily, and safe Zarr outputs.

Every reader returns an array-like of shape (Z, Y, X) that supports numpy slicing and reads only
the slices asked for, so gigavoxel volumes never need to fit in memory.
Conventions:
- a path may carry an inner dataset after a colon: ``cells.h5:raw``, ``run.zarr:probs``;
- images are greyscale; RGB stacks and 2D images are refused with a message (no silent guess), but a TIFF of one
  page, a volume of one slice (a section Fiji saved);
- labels are binarised as ``label > threshold`` with ``threshold = 0`` unless the user gives one
  (anti-aliased masks such as 0..255 PNGs want ``127``);
- outputs are written under ``<name>.partial`` and renamed when complete, so a crash never leaves a
  half-written result under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mitoseg import checks, omezarr
from mitoseg.errors import MitosegError

TIFF = {".tif", ".tiff"}
SLICE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"}
H5 = {".h5", ".hdf5", ".hdf"}
ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")  # v3, v2 array, v2 group


def is_zarr(path: Path) -> bool:
    """True for a path named *.zarr or a folder holding a Zarr array or group (v2 or v3)."""
    return path.suffix.lower() == ".zarr" or _zarr_marked(path)


def _zarr_marked(path: Path) -> bool:
    """True for a folder holding a Zarr array's or group's metadata file (v2 or v3)."""
    return path.is_dir() and any((path / m).exists() for m in ZARR_MARKERS)


def file_name(spec: str | Path) -> str:
    """A volume's file name (with its inner dataset), without the folders above it: what a run records of its data."""
    path, inner = split_path(spec)
    return path.name + (f":{inner}" if inner else "")


def split_path(spec: str | Path) -> tuple[Path, str | None]:
    """Split ``file.h5:inner/path`` into the file path and the inner dataset (None if absent). Anything but a
    path (str or Path: an array) is refused."""
    if not isinstance(spec, str | Path):
        raise MitosegError(f"a volume's path (str or Path) is needed here, not a {type(spec).__name__}; arrays in "
                           "memory go to predict.predict_volume, train.train, instances.label or metrics.evaluate")
    text = str(spec)
    head, sep, tail = text.rpartition(":")
    if sep and head and tail and Path(head).suffix.lower() in H5 | {".zarr"}:
        return Path(head), tail
    return Path(text), None


def open_volume(spec: str | Path) -> Any:
    """Open a 3D volume lazily; returns an array-like (Z, Y, X) supporting numpy slicing.

    Accepts a multi-page TIFF, a folder of 2D slices (sorted by name), ``.h5:dataset``, ``.zarr``
    (v2 or v3; ``.zarr:array`` for an array inside a group) and ``.npy`` (memory-mapped).
    Raises MitosegError for a missing, unreadable or non-3D input, an unfinished output (``NAME.partial``), and
    for anything but a path (an array).
    """
    path, inner = split_path(spec)
    if not str(spec).strip():
        raise MitosegError("an empty path was given where a volume is needed")
    if not path.exists():
        head, colon, tail = str(spec).rpartition(":")
        if colon and inner is None and Path(head).is_file():  # `:NAME` after a file that holds no named datasets
            raise MitosegError(f"{head} holds no named datasets: `:NAME` names one inside .h5 and .zarr files; give "
                               f"{head} alone" if tail else f"{spec}: a ':' names no dataset: give {head} alone")
        raise MitosegError(f"{path}: " + (f"a broken link (to {os.readlink(path)})" if path.is_symlink() else
                                          "no such file or folder"))
    unfinished = next((p for p in (path, *path.parents) if p.name.endswith(".partial") and is_zarr(p)), None)
    if unfinished is not None:  # its blocks not yet written are zeros: read as finished, a silent wrong answer
        raise MitosegError(f"{unfinished} is the unfinished output of a stopped run: finish "
                           f"{unfinished.name.removesuffix('.partial')} first (predict and label go on with --resume; "
                           "run other commands again)")
    suffix, axes, stated = path.suffix.lower(), None, {}
    try:
        if is_zarr(path):
            arr, axes = _open_zarr(path, inner)
        elif path.is_dir() and (path / "attributes.json").is_file():  # N5's root (BigDataViewer, Paintera, z5py)
            raise MitosegError(f"{path} is an N5 container, which mitoseg does not read: convert it to Zarr or HDF5 "
                               "first (e.g. with z5py, or Fiji's N5 plugins)")
        elif path.is_dir():
            arr = _open_slices(path)
        elif suffix in TIFF:
            arr, stated = _open_tiff(path)
        elif suffix in H5:
            arr = _open_h5(path, inner)
        elif suffix == ".npy":
            try:
                arr = np.load(path, mmap_mode="r")
            except ValueError:  # numpy's advice for pickles (load unsafely) is no answer for a volume
                raise MitosegError(f"{path} is no .npy array of numbers (numpy.save of a volume)") from None
        elif suffix in SLICE_SUFFIXES:
            raise MitosegError(f"{path} is a single 2D image; a volume (Z, Y, X) is needed: pass the folder")
        else:
            raise MitosegError(f"{path}: unknown volume format {suffix!r} (use TIFF, a slice folder, .h5, .zarr)")
    except MitosegError:
        raise
    except Exception as e:  # the libraries raise many types for corrupt files
        raise MitosegError(f"{spec}: cannot be read ({type(e).__name__}: {e})") from None
    if axes is None:  # (an OME-Zarr's axes: `spatial` checks them)
        refuse_axis_order(_dimension_names(arr), str(spec))
    volume = check_volume(spatial(arr, str(spec), axes), str(spec))
    return volume if isinstance(volume, np.ndarray) else Readable(volume, str(spec), stated)


def _dimension_names(arr: Any) -> list[str]:
    """The names an array gives its axes: Zarr v3's dimension_names, Zarr v2's xarray `_ARRAY_DIMENSIONS`, HDF5's
    dimension labels; [] where it gives none."""
    names = getattr(getattr(arr, "metadata", None), "dimension_names", None)
    names = names or dict(getattr(arr, "attrs", {}) or {}).get("_ARRAY_DIMENSIONS")
    if names is None and hasattr(arr, "dims"):  # h5py
        names = [d.label for d in arr.dims]
    return [str(n) for n in names or [] if n is not None]


def refuse_axis_order(names: Sequence[str], name: str) -> None:
    """Refuse a volume whose axis names (`_dimension_names`, a TIFF's axes) put x, y and z in another order than
    z, y, x: read as (Z, Y, X), Y would be taken as Z."""
    space = [n.lower() for n in names if n.lower() in ("x", "y", "z")]
    if sorted(space) == ["x", "y", "z"] and space != ["z", "y", "x"]:
        raise MitosegError(f"{name} states its axes in the order {', '.join(s.upper() for s in space)}; mitoseg reads "
                           "them as Z, Y, X: save it with the axes in that order")


TIFF_KIND = "mitoseg_kind"  # the ImageJ description's key for the `kind` of a mitoseg output `convert` wrote


class Readable:
    """A lazily read volume whose reads that fail (a damaged chunk, page or shard, found only when read, deep in a
    run) raise a MitosegError naming the file and the region; all else is the array's own. Hand-written: zarr,
    tifffile, h5py and the codecs each raise their own types. `stated`: attributes the file states elsewhere (a
    TIFF's kind), added to the array's own."""

    def __init__(self, arr: Any, name: str, stated: dict | None = None):
        self.arr, self.name, self.stated = arr, name, stated or {}

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr in ("arr", "name", "stated"):  # not found on this object (e.g. unpickling)
            raise AttributeError(attr)
        if attr == "attrs" and self.stated:
            return {**dict(getattr(self.arr, "attrs", {}) or {}), **self.stated}
        return getattr(self.arr, attr)

    def __len__(self) -> int:
        return len(self.arr)

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.arr[key]
        except (MitosegError, IndexError, TypeError):  # ours, or an index the caller got wrong: as they are
            raise
        except Exception as e:  # noqa: BLE001 - whatever a codec or a file system raised
            raise MitosegError(f"{self.name}: cannot be read at {_region(key)} ({type(e).__name__}: {e}); the file "
                               "may be damaged") from None

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[...], dtype=dtype)


def _region(key: Any) -> str:
    """An index as words: "slices 8-11, rows 0-255, columns 0-255" for slices of (Z, Y, X)."""
    key = key if isinstance(key, tuple) else (key,)
    words = []
    for name, k in zip(("slices", "rows", "columns"), key, strict=False):  # a key may index fewer axes
        if isinstance(k, slice) and k.start is not None and k.stop is not None and (k.step or 1) == 1:
            words.append(f"{name} {k.start}-{k.stop - 1}")
        elif isinstance(k, int | np.integer):
            words.append(f"{name[:-1]} {k}")
    return ", ".join(words) or "a part of it"


AXIS_WORDS = {"channel": "channels", "time": "time points", "c": "channels", "t": "time points"}  # by type, name


def spatial(arr: Any, name: str, axes: list[tuple[str, str | None]] | None = None) -> Any:
    """`arr` seen as (Z, Y, X) when its axes beyond three are of size 1 (OME-Zarr's t and c, bioformats2raw's
    5D TCZYX, Ilastik's trailing channel): `Squeezed`; other arrays unchanged. `axes`, an OME-Zarr's (name, type)
    of each axis, say which are space (`omezarr.is_space`); without them trailing, then leading, axes of size 1
    are dropped (Ilastik's one-slice (1, Y, X, 1) is (1, Y, X)). An extra axis longer than 1 (channels, time
    points) is one line."""
    shape = tuple(int(n) for n in arr.shape)
    if len(shape) <= 3 and axes is None:
        return arr
    if axes is not None:
        space = [i for i, axis in enumerate(axes) if omezarr.is_space(axis)]
        other = [f"{shape[i]} {AXIS_WORDS.get(kind or '', AXIS_WORDS.get(a, f'positions along axis {a!r}'))}"
                 for i, (a, kind) in enumerate(axes) if i not in space and shape[i] > 1]
        if other:
            raise MitosegError(f"{name} holds {' x '.join(other)} (axes {', '.join(str(a) for a, _ in axes)}, shape "
                               f"{shape}); mitoseg segments one greyscale volume (Z, Y, X): save the one to segment "
                               "on its own")
        if len(space) != 3:
            raise MitosegError(f"{name} has the spatial axes {[axes[i][0] for i in space]}; a volume (z, y, x) is "
                               "needed")
        names = [str(axes[i][0]).lower() for i in space]
        if sorted(names) == ["x", "y", "z"] and names != ["z", "y", "x"]:  # NGFF: zyx; read otherwise, Y were Z
            raise MitosegError(f"{name} stores its space axes in the order {', '.join(names)}; mitoseg reads them "
                               "as z, y, x: save it with the axes in that order")
        keep = tuple(space)
    else:
        first, last = 0, len(shape)
        while last - first > 3 and shape[last - 1] == 1:
            last -= 1
        while last - first > 3 and shape[first] == 1:
            first += 1
        if last - first > 3:
            return arr  # check_volume names the shape
        keep = tuple(range(first, last))
    return arr if keep == tuple(range(len(shape))) else Squeezed(arr, keep)


def _expand(key: Any, ndim: int) -> tuple:
    """A numpy index of an `ndim`-axis array as one entry per axis (its Ellipsis and missing axes as full slices)."""
    key = key if isinstance(key, tuple) else (key,)
    dots = [i for i, k in enumerate(key) if k is Ellipsis]
    if dots:
        key = key[:dots[0]] + (slice(None),) * (ndim - len(key) + 1) + key[dots[0] + 1:]
    return key + (slice(None),) * (ndim - len(key))


class Squeezed:
    """An array with extra axes of size 1 seen as the (Z, Y, X) of its axes `keep`; reads only what is indexed.

    Hand-written because zarr and h5py arrays have no views (numpy's squeeze would read the whole volume).
    """

    def __init__(self, arr: Any, keep: tuple[int, ...]):
        self.arr, self.keep = arr, keep
        self.shape = tuple(int(arr.shape[k]) for k in keep)
        self.dtype, self.ndim = np.dtype(arr.dtype), len(keep)
        chunks, shards = getattr(arr, "chunks", None), getattr(arr, "shards", None)
        self.chunks = tuple(chunks[k] for k in keep) if chunks else None
        self.shards = tuple(shards[k] for k in keep) if shards else None

    @property
    def attrs(self) -> Any:
        return getattr(self.arr, "attrs", {})

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def _full(self, key: Any) -> tuple:
        """`key` (ints, slices and Ellipsis on the (Z, Y, X) view) as an index of the stored array: 0 along the
        other axes."""
        key = _expand(key, self.ndim)
        full: list[Any] = [0] * len(self.arr.shape)
        for axis, part in zip(self.keep, key, strict=True):
            full[axis] = part
        return tuple(full)

    def __getitem__(self, key: Any) -> Any:
        parts = key if isinstance(key, tuple) else (key,)
        if all(isinstance(k, int | np.integer | slice) or k is Ellipsis for k in parts):
            return self.arr[self._full(key)]
        if any(k is None or (hasattr(k, "ndim") and k.ndim > 1) for k in parts):  # new axes, masks: numpy's own
            return np.asarray(self)[key]
        # index arrays: the slab they lie in (ints as one-voxel slices), then numpy's own indexing of it
        parts = _expand(key, self.ndim)
        slab = tuple(slice(k, k + 1 or None) if isinstance(k, int | np.integer) else k if isinstance(k, slice)
                     else slice(None) for k in parts)
        again = tuple(0 if isinstance(k, int | np.integer) else slice(None) if isinstance(k, slice) else k
                      for k in parts)
        return np.asarray(self.arr[self._full(slab)])[again]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.arr[self._full(key)] = value

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = np.asarray(self[:])
        return arr if dtype is None else arr.astype(dtype)


def check_volume(arr: Any, name: str) -> Any:
    """Refuse what mitoseg cannot segment: not 3D, RGB, complex or boolean-free odd dtypes."""
    shape = tuple(arr.shape)
    if len(shape) == 4 and shape[-1] in (3, 4):
        raise MitosegError(f"{name} has {shape[-1]} colour channels {shape}; convert it to greyscale first")
    if len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4:  # no volume is 3 or 4 pixels wide
        raise MitosegError(f"{name} looks like one colour image (Y, X, channels) {shape}; a greyscale volume "
                           "(Z, Y, X) is needed")
    if len(shape) == 2:
        raise MitosegError(f"{name} is a 2D image {shape}; a volume (Z, Y, X) is needed (one section: an array of "
                           f"shape (1, {shape[0]}, {shape[1]}), or a TIFF)")
    if len(shape) != 3:
        raise MitosegError(f"{name} has shape {shape}; a 3D volume (Z, Y, X) is needed")
    kind = np.dtype(arr.dtype).kind
    if kind not in "uifb":
        raise MitosegError(f"{name} has dtype {arr.dtype}; integers or floats are needed")
    if min(shape) == 0:
        raise MitosegError(f"{name} is empty, shape {shape}")
    return arr


def _open_zarr(path: Path, inner: str | None) -> tuple[Any, list | None]:
    """The Zarr array at `path` (an OME-Zarr image: its highest resolution) and its OME-Zarr axes (name, type), else
    None."""
    import zarr

    if path.is_dir() and not _zarr_marked(path):
        raise MitosegError(f"{path} holds no Zarr array or group (an empty or unfinished .zarr folder)")
    node = zarr.open(str(path), mode="r")
    if inner and not isinstance(node, zarr.Group):
        raise MitosegError(f"{path} is one Zarr array, not a group: give it without :{inner}")
    if inner:
        try:
            node = node[inner]
        except KeyError:
            raise MitosegError(f"{path}: no array {inner!r} in this Zarr store") from None
    node = one_image(node)
    if isinstance(node, zarr.Group) and omezarr.multiscales(dict(node.attrs)):
        return omezarr.level0(node)[0], omezarr.axes(node)  # OME-Zarr: the highest resolution
    if isinstance(node, zarr.Group):
        names = _contents(node)
        if len(names) == 1 and isinstance(node[names[0]], zarr.Array):  # its one array, as an HDF5 file's one dataset
            return node[names[0]], None
        within = f"{inner.strip('/')}/" if inner else ""  # a group inside the store: its names from the store's top
        raise MitosegError(f"{path}{f':{inner}' if inner else ''} is a Zarr group; name an array or image in it as "
                           f"{path}:{within}NAME ({', '.join(within + n for n in names) or 'it holds none'})")
    return node, None


def _contents(group: Any, prefix: str = "") -> list[str]:
    """The arrays and OME-Zarr images in a Zarr group, nested ones too, by path (``seg/mito``), sorted."""
    names = [prefix + k for k, _ in group.arrays()]
    for k, g in group.groups():
        names += [prefix + k] if omezarr.multiscales(dict(g.attrs)) else _contents(g, f"{prefix}{k}/")
    return sorted(names)


def one_image(node: Any) -> Any:
    """A Zarr group that is no OME-Zarr image, holds no array and exactly one image (bioformats2raw's root: its image
    in "0" beside the metadata group "OME"): that image; else `node` (a group of arrays and images needs a NAME)."""
    import zarr

    if not isinstance(node, zarr.Group) or omezarr.multiscales(dict(node.attrs)) or any(True for _ in node.arrays()):
        return node
    images = [g for _, g in node.groups() if omezarr.multiscales(dict(g.attrs))]
    return images[0] if len(images) == 1 else node


@contextlib.contextmanager
def _errors_of(name: str):
    """The messages a library's logger `name` logs at ERROR inside the block (a list, filled as they come), kept
    from the terminal (the command line mutes tifffile's) but not from the caller."""
    import logging

    logger, said = logging.getLogger(name), []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: said.append(record.getMessage())
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield said
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _open_tiff(path: Path) -> tuple[Any, dict]:
    """A TIFF's array and what it states besides (`_open_tiff_pages`)."""
    with _errors_of("tifffile") as said:
        arr, stated = _open_tiff_pages(path)
    if said:  # e.g. "invalid page offset": a file cut short reads as fewer slices, in silence
        raise MitosegError(f"{path}: tifffile could not read all of it ({said[0].split('> ')[-1]}): the file may be "
                           "truncated or damaged")
    return arr, stated


def _open_tiff_pages(path: Path) -> tuple[Any, dict]:
    """A TIFF's array, and {"kind": ...} where `convert` wrote a mitoseg output to it (probability, mask, labels, in
    its ImageJ description: a TIFF has no attributes), else {}; refused where its axes are more than one volume's or
    stated in another order than Z, Y, X."""
    import tifffile
    import zarr

    arr = _level0(zarr.open(tifffile.imread(path, aszarr=True), mode="r"))
    if arr.ndim == 2:  # pages written one by one (a loop of TiffWriter.write) are series of one page each
        with tifffile.TiffFile(path) as tif:
            pages = {(s.shape, s.dtype.name) for s in tif.series}
            several = len(tif.series)
        if several > 1 and len(pages) > 1:
            raise MitosegError(f"{path}: its {several} pages are images of different sizes or types "
                               f"({', '.join(sorted(f'{sh} {dt}' for sh, dt in pages))}); a volume needs one")
        if several > 1:  # one volume of its pages, as Fiji opens them
            arr = _level0(zarr.open(tifffile.imread(path, aszarr=True, is_shaped=False), mode="r"))
        else:  # one page (a section Fiji saved, a 1-slice volume `convert` wrote): a volume of one slice
            arr = np.asarray(arr)[np.newaxis]
    stated = {}
    if arr.ndim >= 3:  # an ImageJ or OME hyperstack, tifffile's shaped metadata: the axes it states
        with tifffile.TiffFile(path) as tif:
            series, kind = tif.series[0], (tif.imagej_metadata or {}).get(TIFF_KIND)
            volumes = [s.shape for s in tif.series if sum(a not in "SC" for a in s.axes) >= 3]  # not a thumbnail's
        if len(volumes) > 1:  # read, the first alone would be taken, the others dropped without a word
            raise MitosegError(f"{path} holds {len(volumes)} volumes (TIFF series of shapes "
                               f"{', '.join(map(str, volumes))}); mitoseg reads one: save each on its own")
        stated = {"kind": kind} if kind in ("probability", "mask", "labels") else {}
        extra = [f"{n} {AXIS_WORDS[a.lower()]}" for a, n in zip(series.axes, series.shape, strict=True)
                 if a in "CT" and n > 1]  # colour samples (S): check_volume names them
        if extra:
            raise MitosegError(f"{path} holds {' x '.join(extra)} (axes {series.axes}, shape {series.shape}); mitoseg "
                               "segments one greyscale volume (Z, Y, X): save the one to segment on its own")
        refuse_axis_order(list(series.axes), str(path))  # read as Z, Y, X whatever their order: Y were Z
    if arr.ndim and min(arr.shape):
        arr[-1]  # a truncated file fails on its last page: fail here, not in the middle of a run
    return arr, stated


def _level0(node: Any) -> Any:
    """A TIFF's array: a pyramidal TIFF (reduced-resolution sub-IFDs or pages) opens as a group of levels, the
    full resolution "0"."""
    import zarr

    return node["0"] if isinstance(node, zarr.Group) else node


def _open_h5(path: Path, inner: str | None) -> Any:
    import h5py

    f = h5py.File(path, "r")
    names: list[str] = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    names += [k for k in f if k not in names and isinstance(f.get(k), h5py.Dataset)]  # external links: not visited
    if inner is None:
        if len(names) != 1:
            raise MitosegError(f"{path}: name the dataset as {path}:NAME (datasets: {', '.join(names) or 'none'})")
        inner = names[0]
    if inner not in f or not isinstance(f[inner], h5py.Dataset):
        raise MitosegError(f"{path}: no dataset {inner!r} in this HDF5 file (datasets: {', '.join(names) or 'none'})")
    return f[inner]


class SliceStack:
    """A folder of 2D images seen as a lazy (Z, Y, X) volume; reads only the slices indexed.

    Hand-written because tifffile's sequence reader takes TIFF only and dask-image needs pims.
    """

    def __init__(self, files: list[Path]):
        self.files = files
        first = _read_slice(files[0])
        self.dtype = first.dtype
        self.shape = (len(files), *first.shape)
        self.ndim = len(self.shape)
        header = _slice_header(files[0])
        for f in files[1:]:  # headers only: a slice of another size or mode fails here, not in the middle of a run
            other = _slice_header(f)
            if other != header:
                raise MitosegError(f"slice {f.name} is {other[0]} {other[1]}, the first {files[0].name} {header[0]} "
                                   f"{header[1]}: all slices need one size and type")

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        zkey, rest = key[0], key[1:]
        if isinstance(zkey, int | np.integer):
            return _read_slice(self.files[zkey])[rest]
        picked = self.files[zkey]
        if not picked:
            return np.zeros((0, *self.shape[1:]), self.dtype)[(slice(None), *rest)]
        out = np.stack([_read_slice(f)[rest] for f in picked])
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self[:]
        return arr if dtype is None else arr.astype(dtype)


def _read_slice(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() in TIFF:
            import tifffile

            return tifffile.imread(path)
        from PIL import Image

        with Image.open(path) as im:  # a 1-bit slice as 0/255, like the 8-bit slices it is stacked with
            return np.asarray(im.convert("L") if im.mode == "1" or _grey_palette(im) else im)
    except Exception as e:  # the libraries raise many types for corrupt files
        raise MitosegError(f"slice {path} cannot be read ({type(e).__name__}: {e})") from None


def _grey_palette(im: Any) -> bool:
    """Whether a PIL image is a palette image whose colours are all grey: its grey levels are the image (an
    index is only a place in the palette). A palette of colours is read as its indices: a label image."""
    if im.mode != "P":
        return False
    colours = np.asarray(im.getpalette("RGB") or [0, 0, 0], np.uint8).reshape(-1, 3)
    return bool((colours == colours[:, :1]).all())


def _slice_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a slice file holds, from its header alone."""
    try:
        if path.suffix.lower() in TIFF:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                return tuple(series.shape), np.dtype(series.dtype)
        from PIL import Image

        with Image.open(path) as im:  # lazy: reads the header
            mode = {"1": np.uint8, "L": np.uint8, "I;16": np.uint16, "I": np.int32, "F": np.float32}.get(im.mode)
            channels = len(im.getbands())
            shape = (im.height, im.width) + ((channels,) if channels > 1 else ())
            return shape, np.dtype(mode or np.uint8)
    except Exception as e:
        raise MitosegError(f"slice {path} cannot be read ({type(e).__name__}: {e})") from None


def _open_slices(path: Path) -> SliceStack:
    files = sorted((p for p in path.iterdir() if p.suffix.lower() in SLICE_SUFFIXES and not p.name.startswith(".")),
                   key=natural_order)  # hidden files (macOS's ._NAME beside each slice) are no slices
    if not files:
        raise MitosegError(f"{path}: folder holds no image slices (TIFF/PNG/JPEG)")
    stack = SliceStack(files)
    if len(stack.shape) != 3:
        raise MitosegError(f"{path}: slices have shape {stack.shape[1:]}; greyscale 2D slices are needed")
    return stack


def natural_order(path: Path) -> tuple:
    """A slice file's place in its folder: by name with every run of digits read as a number (slice_2 before
    slice_10, as Fiji's File > Import > Image Sequence sorts), then by the name itself."""
    parts = re.split(r"([0-9]+)", path.name)  # text, digits, text, ...: digits at the odd places
    return [int(part) if k % 2 else part for k, part in enumerate(parts)], path.name


IMAGEJ_UNITS_NM = {"nm": 1.0, "nanometer": 1.0, "micron": 1000.0, "um": 1000.0, "\u00b5m": 1000.0, "\\u00B5m": 1000.0,
                   "mm": 1e6, "cm": 1e7}  # ImageJ's unit names (it writes micrometres as "micron" or an escaped "µm")


def voxel_size(spec: str | Path) -> tuple[float, float, float] | None:
    """The voxel size (z, y, x) in nm a volume states: an OME-Zarr's scale, a mitoseg output's `voxel_size`
    attribute, or an ImageJ TIFF's calibration (its slice spacing and pixel width in a known unit, as Fiji
    saves them); None when it states none. A stated size out of `checks.RULES` (under 0.1 nm, 0, not a number) is
    refused: it would measure nothing, or objects 1e9 times too small (micrometres written as nm)."""
    path, _ = split_path(spec)
    if not path.exists():  # a misspelt name is not a volume that states no size
        raise MitosegError(f"{path}: no such file or folder")
    found = (_imagej_voxel_size(path) or _ome_tiff_voxel_size(path)) if path.suffix.lower() in TIFF and path.is_file() \
        else _stated(spec, "scale", "voxel_size")
    if found is not None and not all(checks.RULES["voxel_size"].ok(v) for v in found):
        raise MitosegError(f"{spec} states a voxel size of {' x '.join(f'{v:g}' for v in found)} nm, not sizes >= "
                           f"{checks.RULES['voxel_size'].low:g} nm (micrometres written as nm?): give --voxel-size")
    return found


def origin(spec: str | Path) -> tuple[float, float, float] | None:
    """Where a volume starts in space, (z, y, x) nm: an OME-Zarr's translation (a crop of a larger volume), a
    mitoseg output's `origin` attribute; None when it states none (it starts at 0)."""
    found = _stated(spec, "translation", "origin")
    return found if found and any(found) else None


def _stated(spec: str | Path, transform: str, attribute: str) -> tuple[float, float, float] | None:
    """What a Zarr volume states, (z, y, x) nm: an OME-Zarr's level-0 `transform` ("scale", "translation"), else a
    mitoseg output's `attribute`; None for other volumes or when it states none."""
    path, inner = split_path(spec)
    if not is_zarr(path):
        return None
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
        node = one_image(node[inner] if inner else node)
    except Exception as e:  # missing, empty or not Zarr: one line, as `open_volume` says
        raise MitosegError(f"{spec}: cannot be read ({type(e).__name__}: {e})") from None
    if isinstance(node, zarr.Group) and omezarr.multiscales(dict(node.attrs)):
        return omezarr.transform(node, transform)
    found = dict(node.attrs).get(attribute)
    return tuple(float(v) for v in found) if found else None


def _imagej_voxel_size(path: Path) -> tuple[float, float, float] | None:
    """(z, y, x) nm of an ImageJ TIFF stack that states its slice spacing, pixel size and unit; else None."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            meta, (x, y) = tif.imagej_metadata or {}, tif.pages[0].resolution  # pixels per unit
            unit = IMAGEJ_UNITS_NM.get(str(meta.get("unit", "")))
            if unit is None or "spacing" not in meta:
                return None
            size = (float(meta["spacing"]) * unit, unit / y, unit / x)
            return tuple(float(f"{v:.12g}") for v in size)  # 4.6, not the 4.6000000000000005 of a rational
    except Exception:  # an unreadable TIFF says so where it is opened; here it states no size
        return None


OME_UNITS_NM = {"nm": 1.0, "\u00b5m": 1000.0, "um": 1000.0, "mm": 1e6, "\u00c5": 0.1, "pm": 1e-3}


def _ome_tiff_voxel_size(path: Path) -> tuple[float, float, float] | None:
    """(z, y, x) nm of an OME-TIFF that states its first image's PhysicalSizeZ/Y/X (micrometres unless it names
    another unit, as OME says); else None."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.is_ome:
                return None
            image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
            pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
            size = tuple(float(pixels[f"PhysicalSize{a}"]) * OME_UNITS_NM[pixels.get(f"PhysicalSize{a}Unit", "\u00b5m")]
                         for a in "ZYX")
            return tuple(float(f"{v:.12g}") for v in size)
    except Exception:  # no such sizes, an unknown unit: it states none mitoseg can read
        return None


def attributes(volume: Any) -> dict:
    """The attributes a volume carries (a Zarr or HDF5 array's, a mitoseg output's settings among them); {} for
    volumes that have none (.npy, a folder of slices)."""
    return dict(getattr(volume, "attrs", {}) or {})


def stated_kind(volume: Any) -> str | None:
    """The `kind` a mitoseg output states (probability, mask, labels, image), else None."""
    return attributes(volume).get("kind")


def refuse_output(volume: Any, name: str | Path, wanted: str, kinds: tuple[str, ...]) -> None:
    """Refuse a mitoseg output of one of `kinds` where `wanted` (words: "the EM image") is needed: a slip, often two
    arguments swapped, that would otherwise run and give a silently wrong answer."""
    found = stated_kind(volume)
    if found in kinds:
        raise MitosegError(f"{name} is a mitoseg {found} output, not {wanted}: are two arguments swapped?")


def kind(volume: Any) -> str:
    """What a volume holds: the `kind` it states, else labels for integers of 32 bits or more (object ids), else
    an image (what decides a napari layer's type and an OME-Zarr pyramid's means or nearest voxels)."""
    dtype = np.dtype(volume.dtype)
    return stated_kind(volume) or ("labels" if dtype.kind in "iu" and dtype.itemsize >= 4 else "image")


def content_id(volume: Any) -> str:
    """A short checksum of a volume's (Z, Y, X) shape, of its whole first, middle and last slices and, for a
    mitoseg output, of when it was written (attribute "created"): an interrupted prediction or labelling resumed on
    another volume of the same shape is told apart, a sparse mask written again too (three slices read, not a
    proof of equality)."""
    import zlib

    z, y, x = (int(s) for s in volume.shape)
    crc = zlib.crc32(repr((z, y, x)).encode())
    crc = zlib.crc32(str(attributes(volume).get("created", "")).encode(), crc)
    old = zlib.crc32(repr((z, y, x)).encode())  # the id of before 2026-12-07: 64-pixel crops at the slices' centres
    y0, x0 = max(0, y // 2 - 32), max(0, x // 2 - 32)
    for k in sorted({0, z // 2, z - 1}):
        plane = np.asarray(volume[k:k + 1])
        crc = zlib.crc32(np.ascontiguousarray(plane), crc)  # its buffer: no copy of a whole slice
        old = zlib.crc32(np.ascontiguousarray(plane[:, y0:y0 + 64, x0:x0 + 64]).tobytes(), old)
    EARLIER_IDS[f"{crc:08x}"] = f"{old:08x}"
    return f"{crc:08x}"


EARLIER_IDS: dict[str, str] = {}  # content_id -> the id outputs written before 2026-12-07 record for that volume


def same_source(old: Any, new: Any) -> bool:
    """Whether an output's recorded input checksum `old` is that of the input whose `content_id` is `new` (in this
    process), by today's rule or by the one of outputs written before 2026-12-07 (kept and resumed as before)."""
    return old == new or (old is not None and old == EARLIER_IDS.get(new))


def read_volume(spec: str | Path) -> np.ndarray:
    """Read a whole volume into memory as a numpy array (Z, Y, X), keeping its dtype."""
    return np.asarray(open_volume(spec)[:])


def refuse_path(values: Any, name: str) -> Any:
    """`values` unchanged unless it is a path (str, Path), refused in one line: the functions that take arrays
    would read a path as an array of shape ()."""
    if isinstance(values, str | Path):
        raise MitosegError(f"{name} must be an array, not the path {str(values)!r}: read it first (io.read_volume, "
                           "or io.open_volume for a lazy one)")
    return values


RULES = {"percentile": 2, "equalize": 256}  # normalisation rule: knots (grey levels at evenly spaced percentiles)


# The three slice planes of a volume (Z, Y, X) as axis orders, slice axis first: XY slices (along Z), ZX
# slices (along Y) and ZY slices (along X). A 2D model of three planes is trained and predicts along each.
PLANES = ((0, 1, 2), (1, 0, 2), (2, 0, 1))


@dataclass(frozen=True)
class Transposed:
    """A volume (Z, Y, X) seen with its axes in `order` (one of `PLANES`): indexing it with slices reads the
    matching region of the volume and transposes it; nothing is read before that."""

    volume: Any
    order: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.volume.shape[a] for a in self.order)

    def __getitem__(self, index: tuple[slice, slice, slice]) -> np.ndarray:
        inner = [slice(None)] * 3
        for i, axis in enumerate(self.order):
            inner[axis] = index[i]
        return np.asarray(self.volume[tuple(inner)]).transpose(self.order)


def read_region(volume: Any, region: tuple[slice, slice, slice]) -> np.ndarray:
    """A region (Z, Y, X slices with steps of 1) of a volume (Z, Y, X) as it is stored; slices of the region
    before the volume's first or after its last slice repeat that slice (a 2D model's neighbouring slices
    at the volume's ends, in training and in prediction alike)."""
    depth = volume.shape[0]
    lo, hi = max(region[0].start, 0), min(region[0].stop, depth)
    raw = np.asarray(volume[(slice(lo, hi), *region[1:])])
    if lo > region[0].start or hi < region[0].stop:
        raw = np.pad(raw, ((lo - region[0].start, region[0].stop - hi), (0, 0), (0, 0)), mode="edge")
    return raw


def intensity_range(arr: Any, max_samples: int = 2_000_000, rule: str = "percentile",
                    flat: str | None = None) -> tuple[float, ...]:
    """The grey levels that `normalize` maps to evenly spaced values from 0 to 1 (the window), in the
    volume's units: its percentiles at ``RULES[rule]`` evenly spaced points from 0.5 to 99.5, taken over a
    strided subsample of the whole volume (about `max_samples` voxels), black borders and other padding left
    out (an end grey level holding more than 0.4 % of the voxels, ``PADDING_SHARE``).

    - "percentile" (two levels: 0.5 and 99.5 %): a linear window. A stack acquired with another contrast or
      brightness (e.g. grey levels 40..210 instead of 0..255) reaches the network as the same [0, 1] input,
      and one bright artefact does not flatten the contrast. For every dtype, uint8 too.
    - "equalize" (256 levels): histogram equalisation between them: each grey level goes to (about) its
      rank in the volume, so any monotone change of the grey levels (gamma too) reaches the network alike,
      as long as the volume holds the same mixture of tissue.

    The window is computed once per volume, so blocks predicted separately still agree with the whole. A
    volume of one grey level (in 99 % of its subsample) gets a window one unit wide, or, named by `flat` (the
    volume's name), is refused: nothing to segment (a blank export, an empty channel, the wrong dataset). Named
    so, a volume of two or three grey levels (bool too) is refused as well: a mask or labels given as the image.
    Raises MitosegError on NaN or infinite values in the subsample, or on an unknown rule.
    """
    if rule not in RULES:
        raise MitosegError(f"normalisation rule must be one of {', '.join(RULES)}, not {rule!r}")
    levels = np.percentile(_sample(arr, max_samples, flat), np.linspace(0.5, 99.5, RULES[rule]))
    if levels[-1] <= levels[0]:
        if flat is not None:
            raise MitosegError(f"{flat} holds one grey level ({levels[0]:g}) in 99 % of its voxels or more: nothing to "
                               "segment (a blank export, an empty channel, the wrong dataset?)")
        levels = np.linspace(levels[0], levels[0] + 1.0, len(levels))
    return tuple(float(v) for v in levels)


PADDING_SHARE = 0.004  # an end grey level holding more than this share of the voxels is padding or saturation: under
# the window's 0.5 % percentile, so such a level never becomes the window's end (at 1 %, one black column did)


def _sample(arr: Any, max_samples: int, image: str | None = None) -> np.ndarray:
    """A strided float64 subsample (flat) of about `max_samples` voxels of the whole volume, without padding:
    the lowest or the highest grey level is left out where it holds more than ``PADDING_SHARE`` of the
    subsample (black borders of an aligned stack, a saturated detector; in tissue the end levels hold few
    voxels), unless nothing would be left. Refuses NaN/inf, and, given the `image`'s name, a subsample of two or
    three grey levels: no EM image has so few, a mask or labels do."""
    step = max(1, int(np.ceil((np.prod(arr.shape) / max_samples) ** (1 / 3))))
    sample = np.asarray(arr[::step, ::step, ::step], dtype=np.float64).ravel()
    if not np.isfinite(sample).all():
        raise MitosegError("the image holds NaN or infinite values; replace them before segmenting")
    levels = np.unique(sample) if image is not None else None
    if levels is not None and 1 < len(levels) <= 3:
        raise MitosegError(f"{image} holds only the grey levels {first_values(levels)} (sampled): a mask or labels "
                           "(image and labels swapped?) or a blank export, not an EM image")
    keep = np.ones(sample.size, bool)
    for end in (sample.min(), sample.max()):
        at_end = sample == end
        if at_end.mean() > PADDING_SHARE:
            keep &= ~at_end
    return sample[keep] if keep.any() else sample


REFERENCE_POINTS = 1001  # percentiles 0, 0.1, ..., 100 of the training volume kept with a model


def reference_levels(arr: Any, max_samples: int = 2_000_000) -> tuple[float, ...]:
    """The volume's grey levels at ``REFERENCE_POINTS`` evenly spaced percentiles from 0 to 100 (its
    histogram, in its units): what `matched_window` maps another volume onto."""
    return tuple(float(v) for v in np.percentile(_sample(arr, max_samples), np.linspace(0, 100, REFERENCE_POINTS)))


def matched_window(arr: Any, reference: tuple[float, ...], window: tuple[float, ...],
                   max_samples: int = 2_000_000, image: str | None = None) -> tuple[float, ...]:
    """A window (256 levels, for `normalize`) that maps `arr` as if its grey levels were first moved onto the
    reference volume's histogram (`reference_levels`, quantile by quantile) and then normalised with that
    volume's `window`. Any monotone change of the grey levels (gamma too) is undone; the volume as trained on
    gets (about) its own window back; padding is left out of both histograms (see `intensity_range`).
    Assumes the volume holds a similar mixture of tissue. Named (`image`), a volume of two or three grey levels is
    refused, as by `intensity_range`."""
    ref, where = np.unique(np.asarray(reference, dtype=np.float64), return_inverse=True)
    ranks = np.bincount(where, np.linspace(0, 100, len(reference))) / np.bincount(where)  # mid-rank of tied levels
    targets = np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(window)), window)  # grey levels -> 0..1
    levels = np.percentile(_sample(arr, max_samples, image), np.interp(targets, ref, ranks))
    if levels[-1] <= levels[0]:
        levels = np.linspace(levels[0], levels[0] + 1.0, len(levels))
    return tuple(float(v) for v in levels)


def normalize(block: np.ndarray, window: tuple[float, ...]) -> np.ndarray:
    """Map intensities to float32 [0, 1] with the window from `intensity_range`: its levels go to evenly
    spaced values from 0 to 1, linearly in between, clipped outside. Levels repeated in the window (a grey
    level that fills several percentiles of a uint8 volume) go to the mean of their values. A uint8 or
    uint16 block goes through `lookup_table` (the same values, one read per voxel)."""
    block = np.asarray(block)
    table = lookup_table(block.dtype, window)
    if table is not None:
        return table[block]
    if not np.isfinite(block).all():
        raise MitosegError("the image holds NaN or infinite values; replace them before segmenting")
    return _normalize_values(block, window)


def lookup_table(dtype: Any, window: tuple[float, ...]) -> np.ndarray | None:
    """float32 (2**8 or 2**16,): `normalize`'s value of every grey level of a uint8 or uint16 image, indexed
    by the grey level; None for other dtypes."""
    if np.dtype(dtype) not in (np.uint8, np.uint16):
        return None
    return _normalize_values(np.arange(np.iinfo(dtype).max + 1), window)


def _normalize_values(values: np.ndarray, window: tuple[float, ...]) -> np.ndarray:
    """`normalize` by arithmetic, on finite values."""
    if len(window) == 2:
        low, high = window
        out = (np.asarray(values, dtype=np.float32) - low) / (high - low)
        return np.clip(out, 0.0, 1.0, out=out)
    levels, where = np.unique(np.asarray(window, dtype=np.float64), return_inverse=True)
    weights = np.bincount(where, np.linspace(0, 1, len(window))) / np.bincount(where)
    return np.interp(values, levels, weights).astype(np.float32)


def check_binary(labels: Any, name: str = "labels", max_samples: int = 2_000_000) -> None:
    """Refuse a label volume with more than two values (`sampled_values`) when no threshold was given: an
    anti-aliased 0..255 mask read as ``> 0`` keeps its soft rim and silently shifts every score; and two values
    without 0 (1/2 of a class export), all ``> 0``."""
    values = sampled_values(labels, max_samples)
    refuse_many(values, name)
    refuse_nonpositive(values, name)
    if values.size == 2 and values[0] > 0:
        raise MitosegError(f"{name} hold two values, {values[0]:g} and {values[1]:g}, and no 0, so every voxel would "
                           f"be foreground: if {values[1]:g} marks mitochondria, give --label-threshold {values[0]:g} "
                           "(foreground: label > it)")


def foreground(mask: np.ndarray, name: str = "the mask") -> np.ndarray:
    """bool, the shape of `mask`: ``mask > 0`` of an in-memory binary mask (bool, or 0 and one other value:
    0/1, 0/255). Refuses more values (probabilities, grey levels, object ids, NaN), which ``> 0`` would
    silently make one blob."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    fg = mask > 0
    top = mask[fg]
    if np.count_nonzero(mask) != top.size or (top.size and (top != top[0]).any()):
        values = np.unique(mask)
        held = f"two values without 0 ({first_values(values)})" if values.size == 2 else \
            f"more than two values ({first_values(values)})"
        raise MitosegError(f"{name} holds {held}: a binary mask of 0 (background) and one other value is needed; "
                           "threshold it first (probabilities >= 0.5, or >= 128 as mitoseg stores them; object ids "
                           "> 0)")
    return fg


def probability_scale(probs: np.ndarray, name: str = "the probabilities") -> float:
    """255.0 for uint8 probabilities (0..255, as mitoseg stores them), 1.0 for floats in [0, 1]; other
    dtypes, and floats outside [0, 1] (0..255 ones would turn every threshold into nearly all), refused."""
    dtype = np.dtype(probs.dtype)
    if dtype == np.uint8:
        return 255.0
    if not np.issubdtype(dtype, np.floating):
        raise MitosegError(f"{name} are {dtype}: probabilities are floats in [0, 1] or uint8 0..255")
    low, high = (float(np.min(probs)), float(np.max(probs))) if probs.size else (0.0, 0.0)
    if not 0 <= low <= high <= 1:
        raise MitosegError(f"{name} are floats from {low:g} to {high:g}, not probabilities in [0, 1] (0..255: store "
                           "them as uint8, or divide by 255)")
    return 1.0


def sampled_values(volume: Any, max_samples: int = 2_000_000) -> np.ndarray:
    """The sorted distinct values of `volume`: of whole numbers (labels) in memory all of them; of another volume
    (a file's, a memory map, floats), those of a strided subsample of about `max_samples` voxels, or of the whole
    volume (`all_values`) when the subsample holds one value at most. Labels painted on a few slices (a little
    annotation) may lie only in slices the stride skips: the subsample then sees the unpainted value alone, and a
    0/1/2 export would pass as one of 0 and 1."""
    if held_whole(volume):
        return np.unique(volume)
    step = max(1, int(np.ceil((np.prod(volume.shape) / max_samples) ** (1 / len(volume.shape)))))
    values = np.unique(np.asarray(volume[(slice(None, None, step),) * len(volume.shape)]))
    return values if values.size > 1 or step == 1 else all_values(volume)


def held_whole(volume: Any) -> bool:
    """Whether `sampled_values` takes every value of `volume`: whole numbers (labels) in memory, not a memory map."""
    return isinstance(volume, np.ndarray) and not isinstance(volume, np.memmap) and volume.dtype.kind in "biu"


def all_values(volume: Any, voxels: int = 2**24) -> np.ndarray:
    """The sorted distinct values of the whole `volume` (Z, Y, X), read by its stored blocks (a Zarr array's shards
    or chunks, an HDF5 dataset's chunks: each decompressed once) when they hold 2**20 to 2**27 voxels, else in
    slabs of about `voxels`."""
    from mitoseg import blocks

    stored = blocks.block_of(volume)
    if stored and len(stored) == len(volume.shape) and 2**20 <= int(np.prod(stored)) <= 2**27:
        regions = blocks.grid(volume.shape, stored)
    else:
        depth = max(1, voxels // max(1, int(np.prod(volume.shape[1:]))))
        regions = [slice(z, z + depth) for z in range(0, volume.shape[0], depth)]
    found = [np.unique(np.asarray(volume[r])) for r in regions]
    return np.unique(np.concatenate(found)) if found else np.array([])


def refuse_many(values: np.ndarray, name: str) -> None:
    """MitosegError when the sorted distinct label `values` are more than two."""
    if values.size > 2:
        floats = np.issubdtype(values.dtype, np.floating) and values.max() <= 1
        raise MitosegError(f"{name} hold more than two values ({first_values(values)}): give --label-threshold "
                           "(foreground is label > it): " + ("0.5 for labels or probabilities of 0..1" if floats else
                                                             "0 if the values are object ids, 127 for anti-aliased "
                                                             "0..255 masks") + "; or, if one value marks voxels "
                           "nobody annotated, --unlabeled VALUE")


def refuse_nonpositive(values: np.ndarray, name: str) -> None:
    """Refuse a mask of two values none above 0 (sorted `values`), where foreground (> 0) would be nothing: most
    often a 0/255 mask saved as signed 8-bit integers, 255 become -1."""
    if values.size == 2 and values[1] <= 0:
        raise MitosegError(f"{name} holds only the values {values[0]:g} and {values[1]:g}, so no voxel would be "
                           f"foreground (> 0): a 0/255 mask saved as signed integers (255 became -1)? Save it "
                           "unsigned (uint8)")


def first_values(values: np.ndarray) -> str:
    """The first four of sorted `values`, as a message shows them: "0, 1, 2, 3, ..."."""
    return ", ".join(f"{v:g}" for v in values[:4]) + (", ..." if values.size > 4 else "")


def binarize(labels: np.ndarray, threshold: float | None = None, name: str = "labels") -> np.ndarray:
    """Foreground mask uint8 {0, 1}: ``labels > threshold``. Without a threshold the labels must hold two
    values at most (`check_binary`: 0/1, 0/255...) and foreground is ``> 0``; give 127 for anti-aliased
    0..255 masks, 0 for object ids."""
    if threshold is None:
        check_binary(labels, name)
        threshold = 0
    label_threshold_note(labels, threshold, name)
    return (np.asarray(labels) > threshold).astype(np.uint8)


def label_threshold_note(labels: Any, threshold: float, name: str = "labels") -> None:
    """One line (stderr) where a label threshold under 1 meets whole numbers of more than two values above 1 (an
    anti-aliased 0..255 mask, labels thought of as 0..1): it takes every non-zero voxel, the rim too, as 0 does."""
    if not 0 < threshold < 1 or not np.issubdtype(np.dtype(labels.dtype), np.integer):
        return
    values = sampled_values(labels)
    if values.size > 2 and values[-1] > 1:
        print(f"note: {name} hold whole numbers up to {values[-1]:g} ({first_values(values)}), so --label-threshold "
              f"{threshold:g} takes every non-zero voxel as foreground, as 0 does (an anti-aliased 0..255 mask's rim "
              "too: 127 takes its middle)", file=sys.stderr)


class Thresholded:
    """A lazy binary view of a volume: ``volume > threshold`` (strict) or ``>= threshold``, per slice read."""

    def __init__(self, volume: Any, threshold: float, strict: bool = True):
        self.volume, self.threshold, self.strict = volume, threshold, strict
        self.shape, self.dtype, self.ndim = tuple(volume.shape), np.dtype(bool), len(volume.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        block = np.asarray(self.volume[key])
        return block > self.threshold if self.strict else block >= self.threshold


def cut(dtype: Any, threshold: float) -> float:
    """The smallest value of `dtype` at least `threshold`, so that ``values >= cut`` is exactly ``values >=
    threshold`` for values of that dtype: numpy 2 and torch compare float16 (float32) values with a Python
    float rounded to their precision (0.4 becomes 0.39990234375 in float16, and a stored 0.3999 would pass)."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f" or dtype.itemsize >= 8:
        return threshold
    value = dtype.type(threshold)
    return float(np.nextafter(value, dtype.type(np.inf)) if float(value) < threshold else value)


def at_least(values: np.ndarray, threshold: float) -> np.ndarray:
    """Bool: ``values >= threshold``, exactly, whatever the precision of `values` (see `cut`)."""
    values = np.asarray(values)
    return values >= cut(values.dtype, threshold)


def foreground_threshold(volume: Any, threshold: float | None, name: str = "the input") -> float | None:
    """The raw-value threshold t for ``volume >= t`` of `mitoseg label` and `evaluate`.

    mitoseg probability outputs (attribute kind='probability'): a probability in (0, 1), default 0.5, scaled
    to 0..255 when stored as uint8. Other volumes: a given threshold applies to the raw values; without one
    they are masks, None (any non-zero voxel is foreground), refused when they hold more than two values or two
    without 0 (in a subsample, unless mitoseg wrote the mask): probabilities of another tool, an anti-aliased mask,
    object ids or a class export's 1/2 read as ``> 0`` would be a silently wrong answer. A threshold under 1 for
    whole numbers above 1, or for floats of 0 and more reaching above 1 (a 0..255 map), is refused too (every
    non-zero voxel would pass it), and one above 1 for floats of at most 1 (none would). Float volumes of another
    tool holding NaN (in a subsample) are refused: read as background.
    """
    kind = stated_kind(volume)
    sample = functools.cache(lambda: sampled_values(volume))  # once at most: a strided pass (it visits every chunk)
    if kind is None and np.issubdtype(np.dtype(volume.dtype), np.floating) and np.isnan(sample()).any():
        raise MitosegError(f"{name} holds NaN values (in a subsample): replace them first (NaN >= any threshold is "
                           "false, so they would be read as background)")
    if kind == "probability":
        if threshold is not None and threshold >= 1:
            raise MitosegError(f"threshold must be a probability in (0, 1) for mitoseg probabilities, not "
                               f"{threshold:g}")
        t = 0.5 if threshold is None else threshold
        return t * 255 if np.dtype(volume.dtype) == np.uint8 else t
    if threshold is None and kind != "mask":
        values = sample()
        if values.size > 2 and kind == "labels":  # object ids of `mitoseg label`
            raise MitosegError(f"{name} is a mitoseg labels output (object ids {first_values(values)}): give "
                               "--threshold 1 to take every object as foreground")
        if values.size > 2:
            raise MitosegError(f"{name} holds more than two values ({first_values(values)}) and is no mitoseg "
                               "probability map: give --threshold (foreground: value >= it; e.g. 0.5 for "
                               "probabilities of another tool, 128 for an anti-aliased 0..255 mask, 1 for object ids)")
        refuse_nonpositive(values, name)
        if values.size == 2 and values[0] > 0:  # a class export's 1/2: every voxel > 0
            raise MitosegError(f"{name} holds two values, {values[0]:g} and {values[1]:g}, and no 0, so every voxel "
                               f"would be foreground: if {values[1]:g} marks mitochondria, give --threshold "
                               f"{values[1]:g} (foreground: value >= it)")
    if threshold is not None and threshold < 1 and np.issubdtype(np.dtype(volume.dtype), np.integer):
        top = sample().max(initial=0)
        if top > 1:  # >= t < 1 of whole numbers is every non-zero voxel: a probability given for stored levels
            raise MitosegError(f"{name} holds whole numbers up to {top:g}, so --threshold {threshold:g} would make "
                               "every non-zero voxel foreground: give a value on its scale (e.g. 128 for 0..255 "
                               "probabilities, 1 for object ids)")
    if threshold is not None and threshold < 1 and np.issubdtype(np.dtype(volume.dtype), np.floating):
        values = sample()
        if values.size and values[0] >= 0 and values[-1] > 1:  # a 0..255 map in floats (Fiji's 32-bit of 8-bit)
            raise MitosegError(f"{name} holds values from {values[0]:g} to {values[-1]:g} (sampled), so --threshold "
                               f"{threshold:g} would make nearly every voxel foreground: give a value on its scale "
                               "(e.g. 128 for 0..255 probabilities)")
    if threshold is not None and threshold > 1 and np.issubdtype(np.dtype(volume.dtype), np.floating):
        values = sample()
        if values.size and 0 <= values[0] and 0 < values[-1] <= 1:  # probabilities of 0..1 and a 0..255 threshold
            raise MitosegError(f"{name} holds values from {values[0]:g} to {values[-1]:g} (sampled), so --threshold "
                               f"{threshold:g} would make no voxel foreground: give a value on its scale (e.g. 0.5 "
                               "for probabilities)")
    return threshold


def load_pair(image: str | Path, labels: str | Path, threshold: float | None = None,
              unlabeled: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read an image volume and its label volume into memory, checked for training or evaluation.

    Returns (image as stored, mask uint8), both (Z, Y, X): {0, 1} by `binarize` (`threshold` as there),
    and 2 (`data.IGNORE`, not annotated) where the labels equal `unlabeled`, when given; then, without a
    `threshold`, of the two values the other voxels hold the higher is foreground (ilastik's labels: 0 not
    annotated, 1 background, 2 mitochondria, with `unlabeled` 0).
    """
    checks.check(label_threshold=threshold, unlabeled=unlabeled)
    img = open_volume(image)
    lab = open_volume(labels)
    refuse_output(img, image, "the EM image", ("probability", "mask", "labels"))
    if threshold is None:  # given, it says the labels are meant as they are
        refuse_output(lab, labels, "the true labels", ("probability",))
    if tuple(img.shape) != tuple(lab.shape):
        raise MitosegError(f"image {tuple(img.shape)} and labels {tuple(lab.shape)} differ in shape")
    raw = np.asarray(lab[:])
    if np.issubdtype(raw.dtype, np.floating) and np.isnan(raw).any():  # NaN > any threshold is False: background
        raise MitosegError(f"labels {labels} hold NaN values: replace them first (0 for background, or a value "
                           "given as --unlabeled for voxels nobody annotated)")
    try:
        mask = _mask_of(raw, threshold, unlabeled, f"labels {labels}")
    except MitosegError:
        levels = sampled_values(img)
        if levels.size <= 3 < sampled_values(raw).size:  # the EM image given as the labels
            raise MitosegError(f"the image {image} holds only the values {first_values(levels)} and the labels "
                               f"{labels} many: are the two swapped? Give the EM image first, then its "
                               "labels") from None
        raise
    return np.asarray(img[:]), mask


def _mask_of(raw: np.ndarray, threshold: float | None, unlabeled: float | None, name: str) -> np.ndarray:
    """The training mask of labels `raw` read into memory, as `load_pair` returns it."""
    if unlabeled is None and threshold is None and sampled_values(raw).tolist() == [0, 1, 2]:
        raise MitosegError(f"{name} hold the values 0, 1 and 2: if 0 marks voxels nobody annotated, 1 background and "
                           "2 mitochondria (ilastik's export), give --unlabeled 0 (if 1 marks mitochondria and 2 "
                           "background, swap the two first); else give --label-threshold (foreground is label > it)")
    if unlabeled is None:
        return binarize(raw, threshold, name)
    missing = raw == unlabeled
    if not missing.any():
        raise MitosegError(f"{name} hold no voxel of the --unlabeled value {unlabeled:g}")
    annotated = raw[~missing]
    if threshold is None:
        threshold = higher_is_foreground(np.unique(annotated), unlabeled, name)
    out = np.full(raw.shape, 2, np.uint8)  # data.IGNORE
    out[~missing] = annotated > threshold
    return out


def higher_is_foreground(values: np.ndarray, unlabeled: float, name: str) -> float:
    """The label threshold of a partial annotation whose annotated voxels (all but those of value `unlabeled`) hold
    the sorted distinct `values`: of two, the lower, so the higher is foreground (0/1, 0/255, ilastik's 1/2), said
    in a note (a napari painting may mean 1 as the organelle); one value or more than two are refused."""
    refuse_many(values, f"{name} (annotated voxels)")
    if values.size < 2:  # background or foreground? nothing tells
        held = f"one value ({values[0]:g})" if values.size else "no value"
        raise MitosegError(f"{name} hold {held} besides the --unlabeled {unlabeled:g}, so the annotated voxels are all "
                           f"of one class: if {unlabeled:g} is the background, leave out --unlabeled; else give "
                           "--label-threshold (foreground: label > it) to say which class they are")
    if values[0] != 0:  # 0 and another value: 0 is the background, nothing to say
        print(f"note: {name}: {values[1]:g} is taken as foreground and {values[0]:g} as background (of the two values "
              f"annotated voxels hold, the higher is foreground; if {values[0]:g} marks the organelle, swap the two "
              "first)", file=sys.stderr)
    return float(values[0])


# ---------------------------------------------------------------- outputs


OTHER_FORMATS = TIFF | H5 | SLICE_SUFFIXES | {".npy", ".csv", ".json"}


def check_output(path: str | Path, overwrite: bool, kind: str | None = None, inputs: tuple = ()) -> Path:
    """Refuse an output another mitoseg process writes now (`claim`), an existing one unless overwrite, a folder
    that `replaceable` refuses, and what `check_place` refuses; returns the path."""
    path = Path(path)
    if path.is_symlink() and not path.exists():  # written through, it failed after the work ("Not a directory")
        raise MitosegError(f"{path} is a broken link (to {os.readlink(path)}): remove it, or give another output")
    check_place(path, kind, inputs)  # first: a folder where a file goes is not cured by --overwrite
    if path.exists() and not overwrite and partial_path(path).exists():  # a --resume of an --overwrite run
        raise MitosegError(f"{path} already exists, and {partial_path(path).name}, left by a run replacing it: go on "
                           "with --resume --overwrite, or start again with --overwrite")
    if path.exists() and not overwrite:
        raise MitosegError(f"{path} already exists; pass --overwrite to replace it")
    replaceable(path)
    claim(path)
    return path


WRITTEN_MARKS = ("config.json", "compare.json", "zarr.json", ".zarray", ".zgroup")  # a run, a report, a Zarr


def replaceable(path: str | Path) -> None:
    """Refuse to replace (--overwrite) a folder that holds files but is none of what mitoseg writes: a run
    (config.json), a compare report (compare.json) or a Zarr volume, and the folder the process runs in (or one
    holding it). A folder of the user's own (their data, say, named as the output by mistake) is never deleted."""
    path = Path(path)
    if path.is_dir() and any(path.iterdir()) and not any((path / mark).exists() for mark in WRITTEN_MARKS):
        raise MitosegError(f"{path} is a folder of other files (not a mitoseg run, report or Zarr volume); "
                           "--overwrite replaces only those: give another output")
    here = Path.cwd().resolve()
    if path.exists() and (path.resolve() == here or path.resolve() in here.parents):
        raise MitosegError(f"{path} holds the current folder, which --overwrite cannot replace: give another output "
                           "or run from another folder")


def check_place(path: str | Path, kind: str | None = None, inputs: tuple = ()) -> Path:
    """Refuse an output inside a file, one that would replace one of `inputs` (paths or ``file.h5:inner`` specs, a
    model's run folder or checkpoint; arrays are skipped) or a folder holding one, one inside an OME-Zarr image but
    its image-label ``IMAGE/labels/NAME`` (no file there), and for `kind` "zarr" a name of another format (*.tif
    ...: mitoseg writes Zarr), for "file" an existing folder; returns the path."""
    path = Path(path)
    for source in (split_path(i)[0].resolve() for i in inputs if isinstance(i, str | Path)):
        if path.resolve() == source:
            raise MitosegError(f"{path} is an input of this command; give another output")
        if path.resolve() in source.parents:
            raise MitosegError(f"{path} holds {source.name}, an input of this command; give another output")
        if source in path.resolve().parents and (source / "config.json").is_file() and path.exists():
            raise MitosegError(f"{path} is a file of the run {source.name}, an input of this command (its model, "
                               "settings or records); give another output")
    above = next((p for p in path.absolute().parents if p.exists()), path.absolute())  # "/" has no parents
    if not above.is_dir():
        raise MitosegError(f"{path}: {above} is a file, not a folder")
    real = path.resolve()  # ".." and links followed: where it would be written
    image = next((p for p in real.parents if omezarr.is_image(p)), None)
    named = omezarr.label_of(path.absolute())  # what the rest of mitoseg takes the name for
    if image is not None and (kind == "file" or named is None or named.resolve() != image):  # e.g. IMAGE/labels
        raise MitosegError(f"{path} is inside the OME-Zarr image {image}: name an image-label of it, "
                           f"{image}/labels/NAME, or an output outside it")
    if kind == "zarr" and path.suffix.lower() in OTHER_FORMATS:
        raise MitosegError(f"{path}: mitoseg writes Zarr; name the output *.zarr or *.ome.zarr")
    if kind == "file" and path.is_dir():
        raise MitosegError(f"{path} is a folder; give a file name")
    return path


CLAIMS: dict[str, int] = {}  # output path -> the lock file's descriptor, held while this process writes it
MADE: dict[str, Path] = {}  # output path -> the outermost folder `claim` made for its lock file
TAKEN: set[str] = set()  # every output path this process has claimed (the command line's `_kept` asks)


def claim(path: str | Path) -> None:
    """Refuse to write `path` while another mitoseg process writes it (two runs on one --out would delete each
    other's unfinished blocks): an exclusive lock on a hidden file beside it (``.NAME.lock``, its folder made),
    held until `release` (`finish_output`, or an API function's error: `releasing`) or the process's end; beside
    the output, so processes with other temporary folders, or on other nodes of a shared file system that locks,
    meet it too. Hand-written: nothing in the stack locks a Zarr output. POSIX (fcntl) only; elsewhere, and on file
    systems that cannot lock, no lock. A folder it cannot write in is said of `path`."""
    key = str(Path(path).resolve())
    if key in CLAIMS:
        return
    try:
        import fcntl
    except ImportError:
        TAKEN.add(key)
        return
    lock = _lock_file(key)
    missing = [p for p in lock.parents if not p.exists()]
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # another user's, left by a killed run: a lock needs no writing
            if not lock.exists():  # a folder not ours to write in: said so, not "no such file"
                raise
            fd = os.open(lock, os.O_RDONLY)
    except OSError as e:  # said of the output, not of its hidden lock file
        raise MitosegError(f"{path}: cannot write in {lock.parent} ({e.strerror or e})") from None
    if missing:
        MADE[key] = missing[-1]
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # a file system that cannot lock (NFS
            os.close(fd)  # without lockd: ENOLCK; some FUSE mounts): no lock, as where fcntl is missing
            lock.unlink(missing_ok=True)
            CLAIMS[key] = -1  # claimed, with no lock file: `release` still removes the folders made for it
            TAKEN.add(key)
            return
        pid = os.read(fd, 16).decode(errors="replace").strip()
        os.close(fd)
        raise MitosegError(f"{path} is being written by another mitoseg process{f' (pid {pid})' if pid else ''}: "
                           "wait for it to end, or stop it first") from None
    with contextlib.suppress(OSError):  # the pid, for the message above; not on another user's file
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
    CLAIMS[key] = fd
    TAKEN.add(key)


def releasing(func: Callable) -> Callable:
    """`func` (an API function that writes outputs) with the claims it took (`claim`) released when it raises: a
    Python session that goes on after an error keeps no other process from those outputs."""
    @functools.wraps(func)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        before = set(CLAIMS)
        try:
            return func(*args, **kwargs)
        except BaseException:
            for key in set(CLAIMS) - before:
                release(key)
            raise

    return wrapped


def release(path: str | Path) -> None:
    """End this process's `claim` on `path`: its lock file removed, and the folders the claim made for it when they
    stayed empty (a refusal after the claim leaves no empty folder)."""
    key = str(Path(path).resolve())
    fd = CLAIMS.pop(key, None)
    if fd is not None and fd >= 0:
        with contextlib.suppress(OSError):  # another user's file in a folder of theirs: left
            _lock_file(key).unlink(missing_ok=True)
        os.close(fd)
    made = MADE.pop(key, None)
    for folder in [_lock_file(key).parent, *_lock_file(key).parent.parents] if made else []:
        if folder != made and made not in folder.parents:
            break
        try:
            folder.rmdir()
        except OSError:  # it holds the output (or anything else): kept
            break


def _lock_file(key: str) -> Path:
    """The lock file of an output's resolved path `key`: hidden, beside it; an image-label's beside its image (made
    inside an image not yet written, its labels/ folder would stand where the image goes)."""
    image = omezarr.label_of(key)
    if image is not None:
        return image.with_name(f".{image.name}.labels.{Path(key).name}.lock")
    return Path(key).with_name(f".{Path(key).name}.lock")


def refuse_left(outputs: Sequence[str | Path | None], left: Sequence[Path]) -> None:
    """Refuse to write `outputs` (None: none) while what an earlier run `left` of them (unfinished blocks,
    ``.partial``) exists: never discarded silently, by the command line or the API. The outputs are claimed
    first, so a run writing them now is said instead."""
    if not left:
        return
    for output in outputs:
        if output is not None:
            claim(output)
    # what an --overwrite run stopped before replacing: an output beside its own .partial, or a file (label's table,
    # written last) beside the labels' .partial
    there = [Path(o).name for o in outputs if o is not None and Path(o).exists()
             and (partial_path(o) in left or Path(o).is_file())]
    how = f"--resume --overwrite to go on from it ({', '.join(there)} already there)" if there else \
        "--resume to go on from it"
    raise MitosegError(f"{', '.join(map(str, left))}: left by an earlier run of this command; add {how}, or "
                       "--overwrite to start again")


def unfinished(outputs: Sequence[str | Path | None], members: bool = False) -> list[Path]:
    """The unfinished parts (``NAME.partial``) that exist of `outputs` (None: none), and with `members` those of
    the first output's ``NAME.partial.members`` (each model's probabilities of an unfinished mean of models,
    `members_path`)."""
    left = [partial_path(o) for o in outputs if o is not None and partial_path(o).exists()]
    if members and members_path(outputs[0]).exists():
        left.append(members_path(outputs[0]))
    return left


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[Path]:
    """A file written whole or not at all: yields ``PATH.partial`` to write, renamed to `path` when the block ends,
    deleted on an error or Ctrl-C (a half-written table is left under neither name). A failed write that names no
    file (a full disk's) is said of `path`. Ends this process's `claim` on `path` either way."""
    tmp = partial_path(path)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno and not e.filename:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    finally:
        release(path)


def write_json(path: str | Path, obj: Any) -> None:
    """`obj` as indented JSON at `path`, whole or not at all (`writing`): a run's record that a kill cut short would
    stop the next command reading it."""
    with writing(path) as partial:
        partial.write_text(json.dumps(obj, indent=2) + "\n")


def read_json(path: str | Path) -> Any:
    """The JSON at `path`; a file that is not JSON (cut short, edited) refused in one line naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise MitosegError(f"{path} is damaged (not JSON: {e}); a run's files are mitoseg's own: start the run "
                           "again with --overwrite, or restore the file") from None


def members_path(out: str | Path) -> Path:
    """Where `predict.predict_mean` keeps each model's probabilities until their mean at `out` is finished."""
    return Path(str(partial_path(out)) + ".members")


def partial_path(path: str | Path) -> Path:
    """Where an output is written until it is complete; MitosegError for a path that names no file or folder."""
    given, path = path, Path(path)
    if not path.name:  # "", ".", "/": an unset shell variable as --out
        raise MitosegError(f"{str(given)!r} names no file or folder to write: give the output's name")
    return path.with_name(path.name + ".partial")


def done_dir(path: str | Path, resume: bool) -> Path:
    """The folder of per-block completion markers of an output being written (``<path>.partial.done``),
    emptied unless resuming; `finish_output` removes it."""
    done = Path(str(partial_path(path)) + ".done")
    if not resume and done.exists():
        shutil.rmtree(done)
    done.mkdir(parents=True, exist_ok=True)
    return done


def block_marker(done: Path, block: tuple[slice, ...]) -> Path:
    """The marker file that says `block` of an output is written."""
    return done / "_".join(str(s.start) for s in block)


def finish_output(path: str | Path, overwrite: bool = False) -> Path:
    """Atomically move ``<path>.partial`` to ``path`` (replacing it when overwrite); drop its markers."""
    path = Path(path)
    if not partial_path(path).exists():
        raise MitosegError(f"{partial_path(path)} does not exist: nothing to finish")
    if path.exists():
        if not overwrite:
            raise MitosegError(f"{path} already exists; pass --overwrite to replace it")
        remove(path)
    os.replace(partial_path(path), path)
    shutil.rmtree(Path(str(partial_path(path)) + ".done"), ignore_errors=True)
    release(path)
    return path


def remove(path: str | Path) -> None:
    """Delete a file or folder if it exists; a link, not what it links to."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def jsonable(obj: Any) -> Any:
    """`obj` as JSON gives it back (tuples become lists, numpy values plain numbers), for Zarr attributes."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
