"""napari plugin (``pip install "mitoseg[napari]"``): a reader for mitoseg outputs, a widget that segments
an image layer, and `view` behind ``mitoseg view``.

The reader opens, lazily as dask arrays at physical scale (nm per voxel):
- a Zarr array or ``*.ome.zarr`` written by ``mitoseg predict`` / ``mitoseg label`` (its attribute `kind`
  names the layer type: probability -> image, mask and labels -> labels); an OME-Zarr image opens as its
  whole pyramid (the NGFF multiscales datasets), followed by its NGFF image-labels;
- a ``mitoseg compare`` report folder (report.json): the test volume when its data set is found here, and
  each model's test probabilities and instances;
- any other volume `io.open_volume` reads (TIFF, slice folder, HDF5), as an image (for ``mitoseg view``).
napari and Qt are imported inside the functions (magicgui, when installed, at import for the widget's base
class): this module imports without them, and `view` says how to install them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mitoseg import datasets, io, omezarr
from mitoseg.errors import MitosegError

try:
    from magicgui.widgets import Container as _Container  # installed with napari
except ImportError:  # mitoseg without napari: `view` says how to install it
    _Container = object

NEEDS_NAPARI = 'mitoseg view needs napari: pip install "mitoseg[napari]"'
LayerData = tuple[Any, dict, str]  # napari's (data, keyword arguments of add_<type>, layer type)


def _lazy(volume: Any) -> Any:
    """A dask array over an array-like (Z, Y, X), chunked as stored (else one slice per chunk)."""
    import dask.array as da

    chunks = getattr(volume, "chunks", None)
    if not (isinstance(chunks, tuple) and len(chunks) == 3):
        chunks = (1, *volume.shape[1:])
    return da.from_array(volume, chunks=chunks, asarray=False) if not isinstance(volume, da.Array) else volume


def _meta(name: str, voxel: Sequence[float] | None, kind: str, origin: Sequence[float] | None = None,
          **extra: Any) -> dict:
    """napari layer metadata: at `voxel` (z, y, x) nm, or in pixels (unit "pixel", not nm) when it is None."""
    return {"name": name, "scale": tuple(float(v) for v in voxel or (1.0, 1.0, 1.0)),
            "units": "nm" if voxel else "pixel", "axis_labels": ("z", "y", "x"),
            "metadata": {"mitoseg_kind": kind}, **({"translate": tuple(map(float, origin))} if origin else {}),
            **extra}


def _name(path: Path) -> str:
    """A layer's name: the file name without its volume suffix (.zarr, .ome.zarr, .tif, .tiff)."""
    name = path.name.removesuffix(omezarr.SUFFIX)
    return Path(name).stem if Path(name).suffix.lower() in {".zarr", *io.TIFF} else name


def _ome_group(path: Path) -> Any | None:
    """The OME-Zarr image group (NGFF multiscales) at `path`, else None."""
    group = _open_group(path)
    return group if group is not None and omezarr.multiscales(dict(group.attrs)) else None


def volume_layer(path: str | Path, voxel_size: Sequence[float] | None = None, name: str | None = None,
                 kind: str | None = None) -> LayerData:
    """One volume as a napari layer tuple, lazily: an OME-Zarr image as its pyramid (the multiscales
    datasets as a list of dask arrays, level 0 first), anything else `io.open_volume` reads as one dask
    array (Z, Y, X).

    The layer type comes from `kind`, else the output's `kind` attribute (probability: image 0..1, magma,
    additive; mask, labels: labels; image), else the dtype (integers of 32 bits or more: labels).
    The scale is the voxel size (z, y, x) in nm the volume states (`io.voxel_size`), else `voxel_size`,
    else 1 1 1 in pixels (napari's scale bar then counts pixels, not nm); the translate where it states it
    starts (`io.origin`: a crop of a larger volume). `name`
    defaults to the file name without its .zarr / .ome.zarr suffix.
    """
    import dask.array as da

    path = Path(path)
    level0 = io.open_volume(path)
    try:
        voxel = io.voxel_size(path) or voxel_size  # None: in pixels
    except MitosegError:  # it states sizes that are none (0 nm): the given ones, when given
        if voxel_size is None:
            raise
        voxel = voxel_size
    data: Any = _lazy(level0)
    group = _ome_group(path)
    if group is not None:
        levels = [da.from_zarr(group[d["path"]]) for d in omezarr.multiscales(dict(group.attrs))[0]["datasets"]]
        levels = [a[(0,) * (a.ndim - 3)] for a in levels]  # (Z, Y, X): time and channel (size 1) come first
        data = levels if len(levels) > 1 else levels[0]
    kind = kind or io.kind(level0)
    dtype = np.dtype(level0.dtype)
    name = name or _name(path)
    shown = {"origin": io.origin(path), **({"multiscale": True} if isinstance(data, list) else {})}
    if kind in ("mask", "labels"):
        return data, _meta(name, voxel, kind, opacity=0.5, **shown), "labels"
    if kind == "probability":
        top = 255.0 if dtype == np.uint8 else 1.0
        return data, _meta(name, voxel, kind, colormap="magma", blending="additive", contrast_limits=(0.0, top),
                           opacity=0.7, **shown), "image"
    return data, _meta(name, voxel, kind, colormap="gray", **shown), "image"


def _test_image(data: dict) -> Any | None:
    """A report's test volume (`compare.load_benchmark`'s), lazily, when its data set is found here with the
    report's test shape; else None."""
    try:
        if data["name"] == "lucchi":
            found = datasets.lucchi_dir()
            image = _lazy(io.open_volume(found[0] / "testing.tif")) if found else None
        else:  # drosophila: the test half is the right half in X
            raw = _lazy(io.open_volume(datasets.drosophila_dir() / "raw"))
            image = raw[:, :, raw.shape[2] // 2:]
    except MitosegError:
        return None
    return image if image is not None and list(image.shape) == list(data["test_shape"]) else None


def _is_report(path: Path) -> bool:
    """Whether `path` is a `mitoseg compare` report folder: its compare.json and a report.json stating the data."""
    try:
        return (path / "compare.json").is_file() and "voxel_size" in json.loads(
            (path / "report.json").read_text())["data"]
    except (OSError, ValueError, KeyError, TypeError):  # no report, or another tool's report.json
        return False


def report_layers(folder: str | Path) -> list[LayerData]:
    """A ``mitoseg compare`` report folder as layers at its voxel size (report.json): "test image" (when
    the data set is found here), then per model "2D probability" (with TTA when predicted) and
    "2D instances", the same for the two models' mean ("2D+3D ...", `model_2D+3D`) and for 3D."""
    folder = Path(folder)
    data = json.loads((folder / "report.json").read_text())["data"]
    voxel = tuple(float(v) for v in data["voxel_size"])
    layers = []
    image = _test_image(data)
    if image is not None:
        layers.append((image, _meta("test image", voxel, "image", colormap="gray"), "image"))
    for model in sorted(folder.glob("model_*")):
        d = model.name.removeprefix("model_")
        probs = next((model / n for n in ("test_probs_tta.zarr", "test_probs.zarr") if (model / n).exists()), None)
        if probs is not None:
            layers.append(volume_layer(probs, voxel, f"{d} probability", "probability"))
        if (model / "test_labels.zarr").exists():
            layers.append(volume_layer(model / "test_labels.zarr", voxel, f"{d} instances", "labels"))
    if not layers:
        raise MitosegError(f"{folder}: a report folder without predictions (model_*/test_probs.zarr)")
    return layers


def image_labels(path: str | Path) -> list[Path]:
    """The NGFF image-labels of an OME-Zarr image (``<image>/labels/<name>``, as listed in
    ``<image>/labels``), in their listed order; [] when it has none. One listed but gone is left out, and said."""
    path = Path(path)
    labels = _open_group(path / "labels") if _ome_group(path) is not None else None
    if labels is None:
        return []
    attrs = dict(labels.attrs)
    listed = [path / "labels" / n for n in (attrs.get("ome") or attrs).get("labels", [])]
    for gone in (p for p in listed if not p.exists()):
        print(f"note: {gone} is listed among the image's labels but is not there: left out", file=sys.stderr)
    return [p for p in listed if p.exists()]


def _open_group(path: Path) -> Any | None:
    import zarr

    try:
        return zarr.open_group(str(path), mode="r") if path.is_dir() else None
    except (FileNotFoundError, ValueError, TypeError, KeyError):
        return None


def layer_data(path: str | Path, voxel_size: Sequence[float] | None = None) -> list[LayerData]:
    """The napari layer tuples of one path: a report folder (`report_layers`), or one volume
    (`volume_layer`; `voxel_size` (z, y, x) nm applies where the volume states none) followed by its
    image-labels when it is an OME-Zarr image that has some."""
    given = Path(path)
    path = _image_dir(given)
    if _is_report(path):
        return report_layers(path)
    labels = [volume_layer(p, voxel_size, kind=io.stated_kind(io.open_volume(p)) or "labels")
              for p in image_labels(path)]  # `voxel_size` where they state none, as their image
    name = None if path == given else _name(given)  # not "0"
    return [volume_layer(path, voxel_size, name), *labels]


def _image_dir(path: Path) -> Path:
    """`path`, or the folder of the one OME-Zarr image it holds (bioformats2raw's root: its image in "0"), so its
    pyramid and labels are found."""
    group = _open_group(path)
    one = io.one_image(group) if group is not None else None
    return path / one.path if one is not None and one is not group and one.path else path


def _readable(path: Path) -> bool:
    """A report folder, or a Zarr that mitoseg reads as a volume (an image, its outputs); not a Zarr of other
    content, which napari may then offer to another reader."""
    if not path.is_dir():
        return False
    if _is_report(path):
        return True
    try:
        return io.is_zarr(path) and io.open_volume(_image_dir(path)) is not None
    except MitosegError as e:
        if path.name.endswith(".partial"):  # mitoseg's own unfinished output: napari alone says "refused", not why
            from napari.utils.notifications import show_warning

            show_warning(str(e))
        return False


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader contribution: `layer_data` for a Zarr output or a report folder, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return (lambda p: layer_data(p[0] if isinstance(p, list) else p)) if _readable(Path(path)) else None


def add_layers(viewer: Any, paths: Sequence[str | Path], voxel_size: Sequence[float] | None = None) -> list:
    """Add every path's layers (`layer_data`) to a napari viewer (or `napari.components.ViewerModel`);
    returns the layers added. Volumes that state no voxel size, beside others that all state one and the same
    (an image and its outputs), are shown at it, and said; volumes shown at different voxel sizes are said too
    (napari places them by nm: they do not overlay voxel for voxel)."""
    from napari.layers import Layer

    found = [layer_data(path, voxel_size) for path in paths]

    def scales(units: str) -> dict[tuple[float, ...], str]:  # each scale in `units` -> the first path shown at it
        first: dict[tuple[float, ...], str] = {}
        for path, layers in zip(paths, found, strict=True):
            for _, meta, _ in layers:
                if meta["units"] == units:  # to 6 digits: 4.8999999999999995 nm (from µm) is a TIFF's 4.9 nm
                    first.setdefault(tuple(float(f"{v:.6g}") for v in meta["scale"]), str(path))
        return first

    stated = scales("nm")
    if len(stated) == 1 and scales("pixel"):  # no --voxel-size (it would have scaled them)
        (size, source), = stated.items()
        for i, path in enumerate(paths):
            if any(meta["units"] == "pixel" for _, meta, _ in found[i]):
                found[i] = layer_data(path, size)
                print(f"note: {path} states no voxel size: shown at {source}'s {_nm(size)} to overlay it (give "
                      "--voxel-size to choose another)", file=sys.stderr)
    elif len(stated) > 1:
        print("note: these volumes are shown at different voxel sizes and do not overlay voxel for voxel: "
              + "; ".join(f"{p} at {_nm(s)}" for s, p in stated.items())
              + "".join(f"; {p} in pixels" for p in scales("pixel").values()), file=sys.stderr)
    added = []
    for layers in found:
        for data, meta, kind in layers:
            added.append(viewer.add_layer(Layer.create(data, meta, kind)))
    return added


def _nm(size: Sequence[float]) -> str:
    return " x ".join(f"{v:g}" for v in size) + " nm"


def _import_napari() -> Any:
    try:
        import napari
        import napari.qt  # noqa: F401  # fails without a Qt binding
    except ImportError:
        raise MitosegError(NEEDS_NAPARI) from None
    return napari


def view(paths: Sequence[str | Path], voxel_size: Sequence[float] | None = None) -> None:
    """The ``mitoseg view`` command: a napari window with every path's layers (`add_layers`), the scale bar
    on; returns when the window is closed. MitosegError without napari or (on Linux) without a display."""
    napari = _import_napari()
    for path in paths:
        if not io.split_path(path)[0].exists():
            raise MitosegError(f"{path}: no such file or folder")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                                                 or os.environ.get("QT_QPA_PLATFORM")):
        raise MitosegError("mitoseg view needs a display (DISPLAY is not set)")
    if os.environ.get("QT_QPA_PLATFORM") in ("offscreen", "minimal"):  # no window, and no OpenGL for the canvas
        raise MitosegError(f"mitoseg view needs a display; QT_QPA_PLATFORM={os.environ['QT_QPA_PLATFORM']} shows none")
    viewer = napari.Viewer()
    add_layers(viewer, paths, voxel_size)
    scale_bar(viewer).visible = True
    napari.run()


def scale_bar(viewer: Any) -> Any:
    """A napari viewer's scale bar overlay (napari >= 0.9 keeps it in viewer.canvas.overlays)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.overlays.scale_bar if canvas is not None else viewer.scale_bar


# ---------------------------------------------------------------- the segmentation widget


def segment(image: Any, model: str | Path, threshold: float = 0.5, min_size: int = 0, tta: bool = False,
            device: str = "auto", z_sigma: float = 0.0, planes: int | None = None,
            voxel_size: Sequence[float] | None = None,
            ) -> Generator[tuple[int, int] | str, None, tuple[np.ndarray, np.ndarray]]:
    """Predict and label an image volume (Z, Y, X; numpy, dask or zarr) with a trained run's model, as
    ``mitoseg predict`` then ``mitoseg label`` do, in memory; refused as they refuse it (one grey level, a mask).

    A generator: yields the notes `mitoseg predict` would print (str: first voxels unlike the model's, an
    unfinished training; last a run that has not learned) and (steps done, steps) after each block of slices and
    after labelling; returns the
    probabilities uint8 (Z, Y, X; 0..255 for 0..1, as `mitoseg predict` stores them) and the instances
    uint32 (Z, Y, X; 26-connected components of probability >= `threshold` after a blur along Z of
    `z_sigma` slices (`postprocess.smooth_z`), objects under `min_size` voxels removed). Blocks lie on the
    global tile grid (`predict.predict_block`): the result does not depend on them. `planes`: a 2D model
    along 1 or 3 planes instead of the run's (`mitoseg predict --planes`); three planes go block by block as
    `predict.plan` has them (the whole volume at once where it takes whole slices), not in slabs of slices.
    `voxel_size` (z, y, x) nm, the layer's: checked against the model as `mitoseg predict` checks the image's
    (`predict.model_for`: three planes need near-isotropic voxels; voxels unlike the model's are noted).
    """
    from mitoseg import blocks, checks, instances, postprocess, predict

    checks.check(threshold=threshold, min_size=min_size, z_sigma=z_sigma, voxel_size=voxel_size)
    volume = io.check_volume(image, "the image layer")
    notes: list[str] = []
    net, config = predict.model_for(model, volume, device, planes, voxel_size, say=notes.append)
    yield from notes
    tile = predict.run_tile(config, tuple(volume.shape), None, None)
    window = predict.input_window(net, volume)
    if config.slice_planes == 3:  # slices along Y and X would cross every slab of Z: a slab would redo them
        block = predict.plan(volume, config.dims, tile, config.overlap, window=window, planes=3).block
    else:
        block = (max(tile[0], -(-volume.shape[0] // 10)), *volume.shape[1:])  # about 10 steps
    grid = blocks.grid(volume.shape, block)
    probs = np.zeros(volume.shape, np.uint8)
    dev = next(net.parameters()).device
    for i, b in enumerate(grid):
        p = predict.blend_block(net, volume, b, tile, config.overlap, window, dev, config.dims, tta=tta)
        probs[b] = predict.to_storage(p, "uint8")  # encoded where it lies
        yield i + 1, len(grid) + 1
    labels = instances.label(postprocess.smooth_z(probs, z_sigma) >= threshold * 255, connectivity=26,
                             min_size=min_size)
    if warning := predict.unlearned(model):
        yield warning
    yield len(grid) + 1, len(grid) + 1
    return probs, labels


def _layer_voxel(layer: Any) -> tuple[float, ...] | None:
    """An image layer's voxel size (z, y, x) in nm when its scale has units of length (nm as mitoseg's reader
    sets it, µm as other OME-Zarr readers do; napari's units are pint's), else None (pixels: nothing to check)."""
    units = list(getattr(layer, "units", ()))
    if len(units) != 3:
        return None
    try:
        return tuple(float(s) * float((1 * u).to("nanometer").magnitude) for s, u in zip(layer.scale, units,
                                                                                          strict=True))
    except (AttributeError, TypeError, ValueError):  # pixels (no length), or no pint unit
        return None


class SegmentWidget(_Container):
    """npe2 widget contribution "Segment mitochondria": image layer, model (run folder or .pt), threshold,
    minimum object size, Z smoothing, TTA, three planes, a Run button and a progress bar. Choosing a run folder sets the
    threshold, minimum size and Z smoothing to its post-processing chosen on validation (`postprocess.read`),
    and says so. Runs `segment` in a napari thread worker and adds "<image> probability" and "<image>
    instances" at the image layer's scale (replacing the data of layers of those names). A class because
    napari hands a dock widget its viewer through __init__."""

    def __init__(self, napari_viewer: Any) -> None:
        from magicgui import widgets as w

        self.viewer, self.notes = napari_viewer, []  # the notes of the last run, shown under its result
        super().__init__(widgets=[
            w.ComboBox(name="image", label="image", choices=self._images),
            w.FileEdit(name="model", label="model", mode="d", tooltip="run folder (best.pt) or a checkpoint .pt"),
            w.FloatSpinBox(name="threshold", label="threshold", value=0.5, min=0.01, max=0.99, step=0.05),
            w.SpinBox(name="min_size", label="min size (voxels)", value=0, min=0, max=10**9, step=100),
            w.FloatSpinBox(name="z_sigma", label="Z smoothing (slices)", value=0.0, min=0.0, max=32.0, step=0.5,
                           tooltip="blur the probabilities along Z (Gaussian sigma in slices) before the threshold"),
            w.CheckBox(name="tta", label="TTA (4 in-plane flips)", value=False),
            w.CheckBox(name="planes", label="three planes (2D model)", value=False,
                       tooltip="predict along XY, ZX and ZY slices and average them (near-isotropic voxels; "
                               "about 3x the time); off: the run's own planes"),
            w.PushButton(name="run", text="Run"),
            w.ProgressBar(name="progress", label="progress", value=0, min=0, max=1),
            w.Label(name="status", value=""),
        ])
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(lambda _: self.image.reset_choices())
        self.run.changed.connect(self.start)
        self.model.changed.connect(self._run_choice)
        self.planes.changed.connect(self._run_choice)

    def _run_choice(self) -> None:
        """Take the chosen run folder's post-processing chosen on validation for the planes the widget predicts
        along (`postprocess.read`); where it has one for other planes only, say so and put back the defaults."""
        from mitoseg import postprocess

        folder = Path(str(self.model.value).strip())
        chosen = postprocess.read(folder, 3 if self.planes.value else None) if folder.is_dir() else None
        if chosen is None:  # the defaults, not the previous run's choice
            self.threshold.value, self.min_size.value, self.z_sigma.value = 0.5, 0, 0.0
            self.status.value = ("the run's post-processing was not chosen along three planes"
                                 if folder.is_dir() and postprocess.read(folder) else "")
            return
        self.threshold.value, self.min_size.value, self.z_sigma.value = (chosen.threshold, chosen.min_size,
                                                                          chosen.z_sigma)
        self.status.value = ("the run's post-processing chosen on validation"
                             + (" along three planes" if self.planes.value else "")
                             + (" (its hole filling is not applied)" if chosen.fill_holes else ""))

    def _images(self, _: Any) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(x.name, x) for x in self.viewer.layers if isinstance(x, Image)]

    def start(self) -> Any:
        """Run `segment` on the chosen layer in a thread worker (returned, started); None when the image
        layer or the model is missing."""
        from napari.qt.threading import create_worker

        layer, model = self.image.value, str(self.model.value).strip()
        if layer is None or model in ("", "."):
            self.status.value = "choose an image layer and a model"
            return None
        kind = getattr(layer, "metadata", {}).get("mitoseg_kind")
        if kind in ("probability", "mask", "labels"):  # as `mitoseg predict` refuses them
            self.status.value = f"{layer.name} holds a mitoseg {kind}, not an EM image: choose the image layer"
            return None
        self.run.enabled, self.progress.value, self.status.value, self.notes = False, 0, "running...", []
        worker = create_worker(segment, layer.data[0] if layer.multiscale else layer.data, model,
                               self.threshold.value, self.min_size.value, self.tta.value,
                               z_sigma=self.z_sigma.value, planes=3 if self.planes.value else None,
                               voxel_size=_layer_voxel(layer), _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._step)
        worker.returned.connect(lambda result: self._add(layer, *result))
        worker.errored.connect(lambda e: setattr(self.status, "value", "\n".join([f"error: {e}", *self.notes])))
        worker.finished.connect(lambda: setattr(self.run, "enabled", True))
        worker.start()
        return worker

    def _step(self, step: tuple[int, int] | str) -> None:
        if isinstance(step, str):  # a note or warning, kept under the result (a launcher hides the console)
            self.notes.append(step.removeprefix("mitoseg: "))
            self.status.value = "\n".join(["running...", *self.notes])
            return
        self.progress.max, self.progress.value = step[1], step[0]

    def _add(self, layer: Any, probs: np.ndarray, labels: np.ndarray) -> None:
        where = {"scale": layer.scale, "translate": layer.translate, "units": layer.units,
                 "axis_labels": layer.axis_labels}
        for data, suffix, kind, style in (
                (probs, "probability", "image", {"colormap": "magma", "blending": "additive",
                                                 "contrast_limits": (0, 255), "opacity": 0.7,
                                                 "metadata": {"mitoseg_kind": "probability"}}),
                (labels, "instances", "labels", {"opacity": 0.5, "metadata": {"mitoseg_kind": "labels"}})):
            name = f"{layer.name} {suffix}"
            if name in self.viewer.layers:  # the image layer may have moved or been rescaled since
                old = self.viewer.layers[name]
                old.data, old.scale, old.translate, old.units = data, layer.scale, layer.translate, layer.units
            else:
                getattr(self.viewer, f"add_{kind}")(data, name=name, **where, **style)
        n = int(labels.max())
        self.status.value = "\n".join([f"{n} object{'' if n == 1 else 's'}", *self.notes])
