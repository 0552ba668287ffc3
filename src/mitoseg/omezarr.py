"""OME-Zarr (NGFF 0.5, or 0.4 on Zarr v2 when asked): outputs named ``*.ome.zarr`` are image groups with a
multiscale pyramid and the voxel size as physical scale; inputs may be OME-Zarr (the highest resolution level is read).

The metadata is written by ome-zarr-py (`ome_zarr.writer.write_multiscales_metadata`); the pyramid is
built here, one level from the one before, one output chunk at a time (ome-zarr-py's `write_image`
wants the whole volume, or a dask graph of it, and a downsampler of its own), so memory stays a chunk.
Images and probabilities are averaged (2 x 2 in-plane, and in Z while Z is not coarser than twice the
in-plane pixel; each averaged level translated by half the voxels it averages), masks and labels take the
nearest voxel, so ids are never blended.

An output path ``<image>.ome.zarr/labels/<name>`` (a mask or labels) is written as an NGFF image-label
of that existing image, in the image's layout (`Image`: Zarr v2 for NGFF 0.4, its axes and units, one level
per level of the image with its shape and coordinate transformations, size 1 along time and channel),
listed in ``<image>/labels`` and pointing back to it, so viewers that read OME-Zarr (napari, the ome-zarr-py
reader) show it over its image.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SUFFIX = ".ome.zarr"
AXES = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
DIMENSIONS = ("z", "y", "x")  # every level's zarr dimension_names, which NGFF 0.5 requires to match the axes
UNITS_NM = {"picometer": 1e-3, "angstrom": 0.1, "nanometer": 1.0, "micrometer": 1000.0, "millimeter": 1e6,
            "centimeter": 1e7, "meter": 1e9}
MIN_SIZE = 64  # the pyramid stops when an in-plane axis of the next level would be smaller


def is_ome_path(path: str | Path) -> bool:
    """Whether an output path asks for OME-Zarr (its name ends in .ome.zarr)."""
    return str(path).rstrip("/").lower().endswith(SUFFIX)


def label_of(path: str | Path) -> Path | None:
    """The OME-Zarr image whose image-label an output path ``<image>/labels/<name>`` names (the image named
    *.ome.zarr, or any OME-Zarr image on disk: bioformats2raw's ``<root>.ome.zarr/0``), else None."""
    path = Path(str(path).rstrip("/"))
    image = path.parent.parent
    return image if path.parent.name == "labels" and (is_ome_path(image) or is_image(image)) else None


def is_image(path: str | Path) -> bool:
    """Whether `path` is an OME-Zarr image group on disk (NGFF multiscales in its zarr.json or .zattrs)."""
    import json

    for name in ("zarr.json", ".zattrs"):
        try:
            attrs = json.loads((Path(path) / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(attrs, dict) and multiscales(attrs.get("attributes", attrs) if name == "zarr.json" else attrs):
            return True
    return False


def is_ome_output(path: str | Path) -> bool:
    """Whether an output path is written as OME-Zarr: an image (``*.ome.zarr``) or an image-label."""
    return is_ome_path(path) or label_of(path) is not None


@dataclass(frozen=True)
class Image:
    """The layout of an OME-Zarr image that an image-label of it follows: its Zarr format (2: NGFF 0.4, 3:
    0.5), its axes as its metadata states them (units included), each level's path, coordinate transformations
    and shape (level 0 first), its voxel size (z, y, x) in nm (None when it states none) and the multiscales' own
    transformations. Space axes are the last three (NGFF orders time and channel first); a label has size 1 along
    the others."""

    zarr_format: int
    axes: list
    datasets: list
    shapes: list
    voxel: tuple[float, float, float] | None
    shared: list | None = None  # the multiscales' own coordinate transformations, applied to every level

    @property
    def lead(self) -> int:
        """The number of axes before the three space axes (t, c)."""
        return len(self.shapes[0]) - 3


def refuse_other_voxel(path: str | Path, voxel_size: Sequence[float] | None) -> None:
    """MitosegError when `path` is an image-label and `voxel_size` (z, y, x nm, given by the user) differs from
    its image's: the label takes its image's, so a measurement at the given size would not be the label's."""
    from mitoseg.errors import MitosegError

    if voxel_size is None or label_of(path) is None:
        return
    image = label_layout(path).voxel
    if image is None:
        raise MitosegError(f"{path} is an image-label of an image that states no voxel size, so it cannot state "
                           "--voxel-size; give the image one (mitoseg convert --voxel-size), or write the output as "
                           "its own NAME.ome.zarr")
    if not np.allclose(tuple(float(v) for v in voxel_size), image):
        words = [" x ".join(f"{float(v):g}" for v in size) for size in (voxel_size, image)]
        raise MitosegError(f"{path} is an image-label: it takes its image's voxel size ({words[1]} nm), not "
                           f"{words[0]} nm; leave out --voxel-size, or write the output as its own NAME.ome.zarr")


def label_layout(path: str | Path, shape: tuple[int, ...] | None = None) -> Image:
    """The layout of the image an image-label output ``<image>.ome.zarr/labels/<name>`` belongs to, after
    checking that the image exists, is NGFF 0.4 or 0.5 with three space axes last, and (given `shape`) that its
    highest resolution is `shape` (Z, Y, X) in space (MitosegError otherwise)."""
    import zarr

    from mitoseg.errors import MitosegError

    image = label_of(path)
    try:
        group = zarr.open_group(str(image), mode="r")
        ms = multiscales(dict(group.attrs))[0]
        found = axes(group)
        shapes = [tuple(int(n) for n in group[d["path"]].shape) for d in ms["datasets"]]
        voxel = level0(group)[1]
    except (FileNotFoundError, KeyError, TypeError, IndexError, ValueError):
        raise MitosegError(f"{image} is not an OME-Zarr image: labels/{Path(path).name} can only be added to an "
                           "existing one (write the image first, or name the output *.ome.zarr)") from None
    if found is None or sum(map(is_space, found)) != 3 or not all(map(is_space, found[-3:])):
        raise MitosegError(f"{image} is an OME-Zarr image of NGFF {version(group) or 'before 0.4'} with axes "
                           f"{[a for a, _ in found] if found else 'unnamed'}: labels can be added to NGFF 0.4 and 0.5 "
                           "images whose last three axes are space (z, y, x); write them as their own NAME.ome.zarr")
    if shape is not None and shapes[0][-3:] != tuple(shape):
        raise MitosegError(f"{image} holds an image of shape {shapes[0][-3:]} (z, y, x); labels of shape "
                           f"{tuple(shape)} cannot be its image-label")
    return Image(group.metadata.zarr_format, list(ms["axes"]), list(ms["datasets"]), shapes, voxel,
                 ms.get("coordinateTransformations"))


def create_level0(partial: str | Path, shape: tuple[int, ...], dtype: Any, block: tuple[int, ...],
                  image: Image | None = None, zarr_format: int = 3) -> Any:
    """Create the image group at `partial` with its level-0 array "0" (blocks `block`, `blocks.storage`) and
    return that array as (Z, Y, X): of shape `shape` in NGFF 0.5 (`zarr_format` 3) or 0.4 (2), or, for an
    image-label of `image`, in the image's Zarr format with its axes (size 1 along time and channel)."""
    import zarr

    from mitoseg import blocks

    lead = image.lead if image else 0
    zarr_format = image.zarr_format if image else zarr_format
    group = zarr.open_group(str(partial), mode="w", zarr_format=zarr_format)
    array = group.create_array("0", shape=(1,) * lead + tuple(shape), dtype=dtype, fill_value=0, config=blocks.WRITE,
                               **blocks.storage(block, zarr_format, lead), **_array_kwargs(image, zarr_format))
    return space_view(array)


def space_view(array: Any) -> Any:
    """A level's array as (Z, Y, X): its last three axes (NGFF puts time and channel, of size 1 in a label, first)."""
    from mitoseg import io

    return io.Squeezed(array, tuple(range(array.ndim - 3, array.ndim))) if array.ndim > 3 else array


def register_label(path: str | Path) -> None:
    """List the finished image-label at ``<image>/labels/<name>`` in its image (once) and point it back to
    the image (NGFF ``image-label`` metadata, written by ome-zarr-py), in the image's Zarr format."""
    import zarr
    from ome_zarr.format import CurrentFormat
    from ome_zarr.writer import add_metadata, get_metadata, write_label_metadata

    path = Path(str(path).rstrip("/"))
    zarr_format = zarr.open_group(str(label_of(path)), mode="r").metadata.zarr_format
    labels = zarr.open_group(str(path.parent), mode="a", zarr_format=zarr_format)
    listed = get_metadata(labels).get("labels", [])
    if path.name in listed:  # written again (--overwrite): listed once
        add_metadata(labels, {"labels": [n for n in listed if n != path.name]})
    write_label_metadata(labels, path.name, source={"image": "../../"})
    if zarr_format == 3:  # the labels group's own NGFF version, which ome-zarr-py leaves out
        ome = dict(labels.attrs["ome"])
        labels.attrs["ome"] = {**ome, "version": ome.get("version", CurrentFormat().version)}


def write_label_levels(partial: str | Path, path: str | Path, progress: bool = False) -> None:
    """Add levels 1.. and the NGFF metadata to the image-label being written at `partial` (level "0" done) for
    ``<image>/labels/<name>`` = `path`: one level per level of the image, of its shape and with its coordinate
    transformations (its multiscales' own too) and axes (an NGFF "MUST"), each voxel the level-0 voxel nearest
    its centre as those transformations place it (ids are never blended). Levels left by an interrupted run
    are built again. `progress`: a bar of the levels' blocks."""
    import zarr
    from ome_zarr.writer import add_metadata, check_format, write_multiscales_metadata

    from mitoseg import blocks

    image = label_layout(path)
    group = zarr.open_group(str(partial), mode="r+")
    src, lead = group["0"], (0,) * image.lead
    first = image.datasets[0].get("coordinateTransformations", [])
    shapes = [full[-3:] for full in image.shapes[1:]]
    bar = _levels_bar(shapes, blocks.block_of(src)[-3:], Path(path).name, progress)
    for level, shape in enumerate(shapes, start=1):
        block = tuple(map(min, blocks.block_of(src)[-3:], shape))
        dst = group.create_array(str(level), shape=(1,) * image.lead + shape, dtype=src.dtype, fill_value=0,
                                 config=blocks.WRITE, overwrite=True, **blocks.storage(block, image.zarr_format,
                                                                                       image.lead),
                                 **_array_kwargs(image))
        picks = nearest(first, image.datasets[level].get("coordinateTransformations", []), shape, src.shape[-3:])
        for b in blocks.grid(shape, block):
            dst[lead + b] = src.oindex[lead + tuple(p[s] for p, s in zip(picks, b, strict=True))]
            bar.update()
    bar.close()
    datasets = [{"path": str(k), "coordinateTransformations": d["coordinateTransformations"]}
                for k, d in enumerate(image.datasets)]
    write_multiscales_metadata(group, datasets, axes=image.axes, name=Path(path).name)
    if image.shared:  # the transformations the image's multiscales apply to every level (ome-zarr-py takes none)
        ms = multiscales(dict(group.attrs))
        ms[0]["coordinateTransformations"] = image.shared
        add_metadata(group, {"multiscales": ms})
    add_metadata(group, {"image-label": {"version": check_format(group).version}})


def _levels_bar(shapes: list[tuple[int, ...]], block: tuple[int, ...], name: str, progress: bool) -> Any:
    """A progress bar of the blocks of pyramid levels of `shapes` (Z, Y, X), each level's block `block` cut to it."""
    from tqdm.auto import tqdm

    from mitoseg import blocks

    total = sum(len(blocks.grid(s, tuple(map(min, block, s)))) for s in shapes)
    return tqdm(total=total, desc=f"pyramid {name}", unit="block", disable=not progress or not total)


def nearest(first: list, other: list, shape: tuple[int, ...], full: tuple[int, ...]) -> list[np.ndarray]:
    """Per space axis, the index of the level-0 voxel (of `full` voxels) nearest the centre of each voxel of a
    level of `shape`, as the levels' coordinate transformations (`first`: level 0's, `other`: that level's) place
    them: the corner voxel under scales alone, the middle one under the half-voxel translations of mean levels."""
    s0, sk = _values(first, "scale") or [1.0] * 3, _values(other, "scale") or [1.0] * 3
    t0, tk = _values(first, "translation") or [0.0] * 3, _values(other, "translation") or [0.0] * 3
    return [np.clip(np.floor((t - u + s * np.arange(n)) / r + 0.5 + 1e-6), 0, m - 1).astype(np.int64)  # ties: up
            for t, u, s, r, n, m in zip(tk, t0, sk, s0, shape, full, strict=True)]


def _array_kwargs(image: Image | None, zarr_format: int = 3) -> dict:
    """How a level's array is created: NGFF 0.5 names its dimensions, 0.4 (Zarr v2) separates chunk indices by "/"
    (mitoseg's own image: `zarr_format`; an image-label: its image's)."""
    from ome_zarr.format import FormatV04

    if (image.zarr_format if image else zarr_format) == 2:
        return {"chunk_key_encoding": FormatV04().chunk_key_encoding}
    if image is None:
        return {"dimension_names": DIMENSIONS}
    return {"dimension_names": [(a.get("name") if isinstance(a, dict) else a) for a in image.axes]}


def multiscales(attrs: dict) -> list | None:
    """The NGFF multiscales list of a group's attributes (0.5: under "ome"; 0.4: at the top), or None."""
    return (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")


def level0(group: Any) -> tuple[Any, tuple[float, float, float] | None]:
    """The highest-resolution array of an OME-Zarr image group and its voxel size (z, y, x) in nm (None
    when the metadata has no spatial scale, or a spatial axis without a known unit)."""
    first = multiscales(dict(group.attrs))[0]["datasets"][0]
    return group[first["path"]], transform(group, "scale")


def transform(group: Any, kind: str) -> tuple[float, float, float] | None:
    """Level 0's voxel size (`kind` "scale") or where it starts ("translation") of an OME-Zarr image group along
    its three space axes (the last three), in nm: its dataset's transformations followed by the multiscales' own
    (applied to every level); None when neither states it or a space axis has no known unit."""
    ms = multiscales(dict(group.attrs))[0]
    units = [a.get("unit") if isinstance(a, dict) else None for a in ms.get("axes") or AXES][-3:]
    level, shared = ms["datasets"][0].get("coordinateTransformations", []), ms.get("coordinateTransformations", [])
    found = [_values(level, kind), _values(shared, kind)]
    if all(v is None for v in found) or any(u not in UNITS_NM for u in units):  # no unit: no physical size
        return None
    scale = (_values(level, "scale") or [1.0] * 3, _values(shared, "scale") or [1.0] * 3)
    if kind == "scale":
        values = np.multiply(*scale)
    else:  # world = shared scale * (level scale * index + level translation) + shared translation
        values = np.multiply(scale[1], _values(level, kind) or [0.0] * 3) + (_values(shared, kind) or [0.0] * 3)
    return tuple(float(v) * UNITS_NM[u] for v, u in zip(values, units, strict=True))


def _values(transforms: list, kind: str) -> list[float] | None:
    """The last three numbers of the `kind` ("scale", "translation") transformation in `transforms`, else None."""
    values = next((t[kind] for t in transforms if t.get("type") == kind), None)
    return [float(v) for v in values[-3:]] if values is not None and len(values) >= 3 else None


def axes(group: Any) -> list[tuple[str, str | None]] | None:
    """The (name, type) of each axis of an OME-Zarr image group (0.4 and 0.5; a 0.3 list of names has no types),
    else None (0.1-0.2 state none: their arrays are 5D TCZYX)."""
    found = multiscales(dict(group.attrs))[0].get("axes")
    if not found:
        return None
    return [(a.get("name"), a.get("type")) if isinstance(a, dict) else (str(a), None) for a in found]


def is_space(axis: tuple[str, str | None]) -> bool:
    """Whether an axis (name, type) is spatial: its type says so, or, untyped, it is named z, y or x."""
    name, kind = axis
    return kind == "space" if kind else str(name).lower() in ("z", "y", "x")


def version(group: Any) -> str | None:
    """The NGFF version an OME-Zarr image group states (0.5: under "ome"; 0.4: in its multiscales)."""
    attrs = dict(group.attrs)
    return (attrs.get("ome") or {}).get("version") or (multiscales(attrs) or [{}])[0].get("version")


def factors(shape: tuple[int, ...], voxel_size: tuple[float, float, float]) -> list[tuple[int, int, int]]:
    """The downsampling factor of each pyramid level from the one before: in-plane 2, in Z 2 while the Z
    spacing is at most twice the in-plane one; as many levels as keep in-plane axes >= MIN_SIZE."""
    spacing, size, out = list(map(float, voxel_size)), list(map(int, shape)), []
    while min(size[1:]) // 2 >= MIN_SIZE:
        f = (2 if spacing[0] <= 2 * min(spacing[1:]) and size[0] >= 2 else 1, 2, 2)
        spacing = [s * k for s, k in zip(spacing, f, strict=True)]
        size = [n // k for n, k in zip(size, f, strict=True)]
        out.append(f)
    return out


def write_pyramid(path: str | Path, voxel_size: tuple[float, float, float] | None, nearest: bool, name: str,
                  origin: tuple[float, float, float] | None = None, progress: bool = False) -> None:
    """Add levels 1.. (from level "0") and the NGFF metadata to the image group at `path`, level 0 translated to
    `origin` (z, y, x) nm when given (a crop of a larger volume). `voxel_size` None (nobody stated it): scale 1
    and axes without a unit, so readers take voxels, not 1 nm. A level of means is translated by half the voxels
    it averages more (its voxel centres lie between theirs), one of nearest voxels is not (each is a voxel of level
    0); the multiscales' `type` says which. NGFF 0.5, or 0.4 when the group is Zarr v2. `progress`: a bar of the
    levels' blocks."""
    import zarr
    from ome_zarr.format import CurrentFormat, FormatV04
    from ome_zarr.writer import add_metadata, write_multiscales_metadata

    from mitoseg import blocks

    group = zarr.open_group(str(path), mode="r+")
    zarr_format = group.metadata.zarr_format  # 3: NGFF 0.5, 2: 0.4 (as `create_level0` made it)
    fmt = FormatV04() if zarr_format == 2 else CurrentFormat()
    axes = AXES if voxel_size is not None else [{"name": a, "type": "space"} for a in "zyx"]
    voxel_size = voxel_size or (1.0, 1.0, 1.0)
    scale, shift = np.asarray(voxel_size, dtype=float), np.asarray(origin or (0.0, 0.0, 0.0), dtype=float)
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale.tolist()}]
                 + ([{"type": "translation", "translation": shift.tolist()}] if shift.any() else [])}]
    steps = factors(group["0"].shape, voxel_size)
    shapes = list(itertools.accumulate(steps, lambda s, f: tuple(n // k for n, k in zip(s, f, strict=True)),
                                       initial=tuple(group["0"].shape)))[1:]
    bar = _levels_bar(shapes, blocks.block_of(group["0"]), Path(path).name.removesuffix(".partial"), progress)
    for level, (f, shape) in enumerate(zip(steps, shapes, strict=True), start=1):
        src = group[str(level - 1)]
        block = tuple(min(b, max(1, n)) for b, n in zip(blocks.block_of(src), shape, strict=True))  # fits the level
        dst = group.create_array(str(level), shape=shape, dtype=src.dtype, fill_value=0, config=blocks.WRITE,
                                 overwrite=True, **blocks.storage(block, zarr_format),  # resumed: built again
                                 **_array_kwargs(None, zarr_format))
        for b in blocks.grid(shape, block):  # one output block at a time, from its source region
            if nearest:  # zarr reads every f-th voxel itself: memory stays one output chunk
                dst[b] = src[tuple(slice(s.start * k, s.stop * k, k) for s, k in zip(b, f, strict=True))]
            else:
                region = np.asarray(src[tuple(slice(s.start * k, s.stop * k) for s, k in zip(b, f, strict=True))])
                dst[b] = downsample(region, f)
            bar.update()
        shift = shift if nearest else shift + (np.asarray(f) - 1) / 2 * scale
        scale = scale * np.asarray(f)
        datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": scale.tolist()}]
                         + ([{"type": "translation", "translation": shift.tolist()}] if shift.any() else [])})
    bar.close()
    write_multiscales_metadata(group, datasets, fmt=fmt, axes=axes, name=name, metadata={
        "description": "each level from the one before: 2 x 2 in-plane, 2 in Z while Z is not coarser than twice "
                       "the in-plane pixel", "method": "mitoseg.omezarr.write_pyramid"})
    ms = multiscales(dict(group.attrs))
    ms[0]["type"] = "nearest" if nearest else "mean"  # ome-zarr-py's writer leaves the downscaling type out
    add_metadata(group, {"multiscales": ms})
    if nearest:  # a mask or labels: an NGFF image-label, which OME-Zarr viewers show as labels
        add_metadata(group, {"image-label": {"version": fmt.version}})


def downsample(region: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """`region` (Z, Y, X, each a multiple of `f`) reduced by `f`: the mean of each f-block, rounded back to
    an integer dtype."""
    z, y, x = (n // k for n, k in zip(region.shape, f, strict=True))
    mean = region.reshape(z, f[0], y, f[1], x, f[2]).mean(axis=(1, 3, 5), dtype=np.float64)
    return np.rint(mean).astype(region.dtype) if np.issubdtype(region.dtype, np.integer) else mean.astype(region.dtype)
