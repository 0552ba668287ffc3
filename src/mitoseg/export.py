"""A trained run -> a bioimage.io model package (spec 0.5, TorchScript weights), testable by bioimageio.core.

The package holds the network with a sigmoid (it returns foreground probabilities in [0, 1]), traced to
TorchScript (which deepImageJ, ilastik, QuPath and bioimageio.core run), a test input cut from a real
volume and the output mitoseg computes for it, axes in nm with the run's voxel size, and the
preprocessing as bioimage.io operations. Built with bioimageio.spec's own description classes.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
import torch

from mitoseg import __version__, io, postprocess
from mitoseg.config import Config
from mitoseg.errors import MitosegError
from mitoseg.models import encoder_strides

LOW, HIGH = 0.5, 99.5  # percentiles of the package's input window, as in `io.intensity_range`
EPS = 1e-6  # bioimage.io's scale_range default
STUDY = ("Made with mitoseg, which reproduces a study of mitochondria segmentation in FIB-SEM with 2D and 3D U-Nets "
         "(ResNet18 encoders)")
CITATIONS = [  # the model's; the training data's come from `data_citations`
    ("He K., Zhang X., Ren S., Sun J. Deep residual learning for image recognition. CVPR 2016 (ResNet18 encoder)",
     "10.1109/CVPR.2016.90"),
    ("Ronneberger O., Fischer P., Brox T. U-Net: convolutional networks for biomedical image segmentation. "
     "MICCAI 2015", "10.1007/978-3-319-24574-4_28"),
]
DATA = {  # words in a run's `data` -> the data set's citation and its imaging tag
    "EPFL CA1": (("Lucchi A., Smith K., Achanta R., Knott G., Fua P. Supervoxel-based segmentation of mitochondria "
                  "in EM image stacks with learned shape features. IEEE TMI 31(2), 2012 (the EPFL CA1 data)",
                  "10.1109/TMI.2011.2171705"), "fib-sem"),
    "Drosophila VNC": (("Gerhard S., Funke J., Martel J., Cardona A., Fetter R. Segmented anisotropic ssTEM dataset "
                        "of neural tissue. figshare, 2013 (the Drosophila VNC stack)", "10.6084/m9.figshare.856713"),
                       "sstem"),
}


LICENSE, AUTHORS = "MIT", ("mitoseg developers",)  # a package's, unless the user names others
DATA_LICENCES = {"Drosophila VNC": "CC BY-NC-SA 3.0 (non-commercial, share-alike)"}  # of data sets mitoseg knows


def data_citations(config: Config) -> tuple[list[tuple[str, str]], list[str]]:
    """The citations and imaging tags of the data set a run learned from (`config.data`), as far as mitoseg knows
    it: none for a user's own data or a run that did not record it (no claim the package cannot back)."""
    found = [entry for words, entry in DATA.items() if words in (config.data or "")]
    return [cite for cite, _ in found], [tag for _, tag in found]


class _Probabilities(torch.nn.Module):
    """The run's network followed by a sigmoid: (B, 1, [Z,] Y, X) float32 [0, 1] -> probabilities."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


class _ZeroPadShortcut(torch.nn.Module):
    """MONAI ResNet's type-A shortcut (stride, then zero channels appended) with sizes taken from the input
    when it runs: MONAI builds its zeros from Python ints, which a trace freezes at the traced size."""

    def __init__(self, planes: int, stride: tuple[int, ...]):
        super().__init__()
        self.planes, self.stride = planes, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[(slice(None), slice(None), *(slice(None, None, k) for k in self.stride))]
        return torch.nn.functional.pad(x, [0, 0] * len(self.stride) + [0, self.planes - x.shape[1]])


def traceable(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of `net` (float32, contiguous) whose trace runs on every input size (its type-A shortcuts
    become `_ZeroPadShortcut`s; the same weights, the same outputs)."""
    from monai.networks.nets.resnet import ResNetBlock

    net = copy.deepcopy(net).float().to(memory_format=torch.contiguous_format)
    for module in net.modules():
        if isinstance(module, ResNetBlock) and isinstance(module.downsample, functools.partial):
            stride = module.downsample.keywords["stride"]
            dims = module.downsample.keywords["spatial_dims"]
            stride = tuple(stride) if isinstance(stride, tuple | list) else (stride,) * dims
            module.downsample = _ZeroPadShortcut(module.downsample.keywords["planes"], stride)
    return net


def divisors(config: Config) -> list[int]:
    """Per spatial axis ((Z,) Y, X) the size every input must be a multiple of (the encoder's total stride)."""
    strides = encoder_strides(config.voxel_size, config.dims)
    return [int(np.prod([s[axis] for s in strides])) for axis in range(config.dims)]


def halos(config: Config, size: Sequence[int]) -> list[int]:
    """Per spatial axis ((Z,) Y, X) the voxels a consumer that predicts block by block adds around each block and
    crops from its output (bioimage.io's output `halo`): the most that leaves an input of `size` (the test
    input: one of mitoseg's tiles, or the sample where smaller) valid (bioimage.io: larger than twice the halo),
    in whole steps of `divisors` so that every block keeps the encoder's grid (the network is not shift
    invariant within a step); 0, no halo, where not even one step fits (Z of a 32-slice tile of an isotropic 3D
    model). Measured (`experiments/halo.py`: a CA1 2D model, a 512 x 512 slice, masks at 0.5 against one whole-slice
    pass): blocks cut edge to edge IoU 0.71-0.98, with a halo of 64 pixels 0.964-0.995, of 96 0.997-0.998
    (mitoseg's own tiles: 0.995); 112, off the grid, 0.983-0.989."""
    return [max(0, (n - d) // 2 // d * d) for n, d in zip(size, divisors(config), strict=True)]


def least_sizes(config: Config, halo: Sequence[int]) -> list[int]:
    """Per spatial axis the smallest input the package takes: the first multiple of `divisors` above twice the
    `halo` (bioimage.io's rule, so a block keeps some voxels after its halo is cropped)."""
    return [(2 * h // d + 1) * d for h, d in zip(halo, divisors(config), strict=True)]


def test_crop(image, config: Config) -> np.ndarray:
    """A central crop of `image` (Z, Y, X) of one prediction tile ((Z,) Y, X; a single slice for the 2D
    model), shrunk to multiples of `divisors`; raw values as float32."""
    depth, height, width = image.shape
    tile = config.tile
    want = [min(t, s) for t, s in zip(tile, (depth, height, width), strict=True)]
    if config.dims == 3:
        want[0] = want[0] // divisors(config)[0] * divisors(config)[0]
    want[1:] = [w // divisors(config)[-1] * divisors(config)[-1] for w in want[1:]]
    if min(want) < 1:
        raise MitosegError(f"the sample volume {tuple(image.shape)} is smaller than one input of the "
                           f"{config.dims}D model (multiples of {divisors(config)} voxels)")
    start = [(s - w) // 2 for s, w in zip((depth, height, width), want, strict=True)]
    crop = np.asarray(image[tuple(slice(a, a + w) for a, w in zip(start, want, strict=True))], dtype=np.float32)
    return crop[0] if config.dims == 2 else crop


def preprocess(x: np.ndarray) -> np.ndarray:
    """What the package's preprocessing does to one input: scale_range over the sample's own 0.5 / 99.5
    percentiles, then clip to [0, 1] (mitoseg takes the percentiles over the whole volume instead)."""
    low, high = np.percentile(x, [LOW, HIGH])
    return np.clip((x - low) / (high - low + EPS), 0.0, 1.0).astype(np.float32)


@io.releasing
def export_bioimageio(run: str | Path, sample: str, out: str | Path, overwrite: bool = False,
                      license: str = LICENSE, authors: Sequence[str] = AUTHORS) -> Path:
    """Write the bioimage.io package (a .zip) of a trained run; its test tensors come from `sample`.

    `sample`: an image volume spec (as `mitoseg predict` reads it) of the kind the model is for; a central
    crop of one tile becomes the package's test input, and the output mitoseg computes for it its test
    output. `license`: the package's SPDX licence id; `authors`: the names it credits. Returns the package's
    path. Needs the `bioimageio` extra (bioimageio.spec, bioimageio.core).
    """
    from mitoseg.train import load_model

    try:
        from bioimageio.spec import save_bioimageio_package
    except ImportError:
        raise MitosegError('mitoseg export --bioimageio needs bioimageio.spec: pip install "mitoseg[bioimageio]"') \
            from None
    from bioimageio.spec.model import v0_5 as m

    try:
        m.LicenseId(license)
    except ValueError:  # pydantic's ValidationError
        raise MitosegError(f"--license {license} is not an SPDX licence id that bioimage.io knows (e.g. MIT, "
                           "CC-BY-4.0, CC-BY-NC-SA-3.0)") from None
    authors = [str(a).strip() for a in authors]
    if not authors or not all(authors):
        raise MitosegError("--author needs a name")
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise MitosegError(f"--bioimageio {out}: the package is a .zip file")
    if out.is_dir():
        raise MitosegError(f"--bioimageio {out} is a folder; give the package's file name")
    io.claim(out)  # another export to the same package would write the same .partial
    if out.exists() and not overwrite:
        raise MitosegError(f"{out} exists; pass --overwrite to replace it")
    model, config = load_model(run, "cpu")
    if config.normalize != "percentile":
        raise MitosegError(f"{run} was trained with --normalize {config.normalize}, which the bioimage.io "
                           "preprocessing steps cannot express; export a run trained with percentile normalisation")
    if config.context:
        raise MitosegError(f"{run} is a 2D model that takes {config.context} neighbouring slices on each side "
                           "(--context-slices), which a bioimage.io consumer would not give it; export a run "
                           "trained without them")
    if config.slice_planes == 3:
        raise MitosegError(f"{run} is a 2D model that predicts along three planes (--planes 3); a bioimage.io "
                           "consumer would predict XY slices only; export a run trained with --planes 1")
    chosen = postprocess.read(run)  # the post-processing the run chose on its validation split
    chosen = chosen.as_dict() if chosen else None
    net = _Probabilities(traceable(model.net)).eval()
    volume = io.open_volume(sample)
    io.refuse_output(volume, sample, "the sample EM image", ("probability", "mask", "labels"))
    io.intensity_range(volume, flat=f"the sample {sample}")  # a blank volume or a mask refused, as `predict` does
    x = test_crop(volume, config)[None, None]
    if not np.isfinite(x).all():
        raise MitosegError(f"--sample {sample}: its test crop holds NaN or infinite values; give a sample without them")
    if x.min() == x.max():  # the package's test tensors would test nothing
        raise MitosegError(f"--sample {sample}: its test crop holds one grey level ({x.min():g}); give an EM volume")
    with torch.no_grad():
        ready = torch.from_numpy(preprocess(x))
        y = net(ready).numpy()
        with warnings.catch_warnings():  # the trace runs on every input size (`traceable`, tested): noise to users
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            traced = torch.jit.trace(net, ready, check_trace=False)
    with tempfile.TemporaryDirectory(prefix="mitoseg-export-") as tmp:
        tmp = Path(tmp)
        traced.save(str(tmp / "weights.torchscript.pt"))
        _without_debug(tmp / "weights.torchscript.pt")
        np.save(tmp / "test_input.npy", x)
        np.save(tmp / "test_output.npy", y.astype(np.float32))
        for name, array in (("sample_input.tif", x), ("sample_output.tif", y)):  # the same, for people's viewers
            tifffile.imwrite(tmp / name, array[0, 0].astype(np.float32))
        halo = halos(config, x.shape[2:])
        (tmp / "README.md").write_text(_readme(run, config, chosen, halo))
        descr = _description(config, tmp, chosen, halo, license, authors)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        try:
            save_bioimageio_package(descr, output_path=partial)
        except BaseException:  # an error or Ctrl-C: nothing left under either name
            partial.unlink(missing_ok=True)
            raise
        partial.replace(out)
    io.release(out)
    return out


def _without_debug(path: Path) -> None:
    """Drop the TorchScript file's debug records (``*.debug_pkl``: source lines with this machine's paths to
    mitoseg and torch), which loading does not need."""
    import zipfile

    with zipfile.ZipFile(path) as old:
        kept = [(item, old.read(item.filename)) for item in old.infolist() if not item.filename.endswith(".debug_pkl")]
    with zipfile.ZipFile(path, "w") as new:
        for item, data in kept:
            new.writestr(item, data)


def _data_licence(config: Config) -> str:
    """The training data's licence in words, when mitoseg knows the data set (for the package's own licence)."""
    found = [licence for words, licence in DATA_LICENCES.items() if words in (config.data or "")]
    return f" Its licence: {'; '.join(found)}; weigh it in this package's licence." if found else ""


def _after(chosen: dict | None) -> str:
    """In words, what turns the package's probabilities into the run's masks and objects."""
    if not chosen:
        return "threshold it at 0.5"
    sigma = chosen.get("z_sigma")
    steps = [f"blur it along Z (Gaussian, sigma {sigma:g} slice{'' if sigma == 1 else 's'})"] if sigma else []
    steps.append(f"threshold it at {chosen['threshold']:g}")
    steps += ["fill holes"] if chosen.get("fill_holes") else []
    steps += [f"remove objects under {chosen['min_size']:,} voxels"] if chosen.get("min_size") else []
    return ", ".join(steps) + " (the post-processing the run chose on its validation split)"


def voxel_words(config: Config) -> str:
    """The run's voxel size (Z, Y, X) in words: "5 x 5 x 5 nm voxels (Z, Y, X)", or that its training data stated
    none (and, for a 3D model, the size its encoder strides were planned for)."""
    size = " x ".join(f"{v:g}" for v in config.voxel_size)
    if config.voxel_size_stated:
        return f"{size} nm voxels (Z, Y, X)"
    return "voxels of a size its training data did not state" + (
        f"; encoder strides planned for {size} nm" if config.dims == 3 else "")


def _description(config: Config, folder: Path, chosen: dict | None, halo: Sequence[int], license: str = LICENSE,
                 authors: Sequence[str] = AUTHORS):
    """The bioimage.io (spec 0.5) model description of files in `folder`; `chosen`: the run's post-processing;
    `halo`: per spatial axis, see `halos`; `license` (SPDX) and `authors` as `export_bioimageio` takes them."""
    from bioimageio.spec.model import v0_5 as m

    names = ["z", "y", "x"][-config.dims:]
    # axes in nm when the run's voxel size was stated; else in voxels (scale 1, no unit): nobody knows their size
    voxel = list(config.voxel_size)[-config.dims:] if config.voxel_size_stated else [1.0] * config.dims
    unit = "nanometer" if config.voxel_size_stated else None
    least = least_sizes(config, halo)
    inputs = [m.BatchAxis(), m.ChannelAxis(channel_names=[m.Identifier("em")])]
    inputs += [m.SpaceInputAxis(id=m.AxisId(n), size=m.ParameterizedSize(min=a, step=d), unit=unit, scale=v)
               for n, a, d, v in zip(names, least, divisors(config), voxel, strict=True)]
    outputs = [m.BatchAxis(), m.ChannelAxis(channel_names=[m.Identifier("foreground")])]
    same = {n: m.SizeReference(tensor_id=m.TensorId("raw"), axis_id=m.AxisId(n)) for n in names}
    outputs += [m.SpaceOutputAxisWithHalo(id=m.AxisId(n), size=same[n], halo=h, unit=unit, scale=v) if h
                else m.SpaceOutputAxis(id=m.AxisId(n), size=same[n], unit=unit, scale=v)
                for n, v, h in zip(names, voxel, halo, strict=True)]
    spatial = [m.AxisId(n) for n in names]
    raw = m.InputTensorDescr(
        id=m.TensorId("raw"), axes=inputs, test_tensor=m.FileDescr(source=folder / "test_input.npy"),
        sample_tensor=m.FileDescr(source=folder / "sample_input.tif"),
        description="EM image, any grey-level range (float32)", data=m.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[
            m.ScaleRangeDescr(kwargs=m.ScaleRangeKwargs(axes=spatial, min_percentile=LOW, max_percentile=HIGH,
                                                        eps=EPS)),
            m.ClipDescr(kwargs=m.ClipKwargs(min=0.0, max=1.0)),
        ])
    prob = m.OutputTensorDescr(
        id=m.TensorId("probability"), axes=outputs, test_tensor=m.FileDescr(source=folder / "test_output.npy"),
        sample_tensor=m.FileDescr(source=folder / "sample_output.tif"),
        description="foreground (mitochondrion) probability; " + (  # at most 128 characters: README has the rest
            f"threshold it at {chosen['threshold']:g}, as the run chose on validation (README: all steps)" if chosen
            else "threshold it at 0.5"),
        data=m.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))
    cites, tags = data_citations(config)
    return m.ModelDescr(
        name=f"mitoseg {config.dims}D U-Net ResNet18 mitochondria",
        description=f"{config.dims}D U-Net with a ResNet18 encoder (MONAI FlexibleUNet) that segments mitochondria "
                    f"in electron microscopy volumes ({voxel_words(config)}), "
                    "trained with mitoseg",
        authors=[m.Author(name=name) for name in authors],
        cite=[m.CiteEntry(text=text, doi=m.Doi(doi)) for text, doi in cites + CITATIONS],
        license=m.LicenseId(license),
        tags=["mitochondria", "electron-microscopy", *tags, "semantic-segmentation", f"{config.dims}d", "unet"],
        documentation=m.FileDescr(source=folder / "README.md"),
        covers=[m.FileDescr(source=c) for c in covers(folder, raw, prob)], inputs=[raw], outputs=[prob],
        weights=m.WeightsDescr(torchscript=m.TorchscriptWeightsDescr(
            source=folder / "weights.torchscript.pt", pytorch_version=m.Version(torch.__version__.split("+")[0]))),
        config={"mitoseg": {"version": __version__, "training": {
            k: Path(v).name if k == "init" and v else v  # the run it started from, by name: no machine path
            for k, v in config.__dict__.items() if k not in ("extra", "device")},
                            "postprocessing": chosen}},
    )


def covers(folder: Path, raw, prob) -> list[Path]:
    """bioimage.io's own cover (the test input and output split along the diagonal, `generate_covers`), written
    into `folder`: given explicitly, as the cover it makes by itself is left out of a saved package."""
    import shutil

    from bioimageio.spec.model.v0_5 import generate_covers

    made = [Path(c.source) for c in generate_covers([(raw, np.load(folder / "test_input.npy"))],
                                                    [(prob, np.load(folder / "test_output.npy"))])]
    for path in made:
        shutil.move(path, folder / path.name)
        shutil.rmtree(path.parent, ignore_errors=True)  # its own temporary folder
    return [folder / path.name for path in made]


def _budget(config: Config) -> str:
    """The training budget in words: epochs, and minutes when the run had a limit."""
    epochs = f"{config.epochs} epoch{'s' * (config.epochs != 1)}"
    return f"At most {epochs} or {config.minutes:g} minutes" if config.minutes else f"{epochs} at most"


def _start(config: Config) -> str:
    """What the run started from and learned on, beyond its data: `--init`'s run, `--annotated-slices`."""
    words = [f" Started from the run `{Path(config.init).name}` (fine-tuned)." if config.init else "",
             f" Annotated slices only: {config.annotated_slices}." if config.annotated_slices else ""]
    return "".join(words)


def _readme(run: str | Path, config: Config, chosen: dict | None, halo: Sequence[int]) -> str:
    """The package's documentation: what goes in, what comes out, how it was trained and validated."""
    summary = Path(run) / "summary.json"
    validation = "No validation record was found beside the checkpoint."
    if Path(run).is_file():
        validation = (f"Exported from the checkpoint `{Path(run).name}` alone: its run's validation record and "
                      "post-processing were not read (export the run folder for them).")
    elif not (Path(run) / "best.pt").exists():
        validation = "The run holds no best checkpoint (`best.pt`): exported from its last one, `last.pt`."
    elif summary.is_file():
        best = json.loads(summary.read_text()).get("best_val_iou")
        validation = (f"Foreground IoU on the run's validation split (the last {config.val_fraction:.0%} of the "
                      f"training volume along X, never trained on), probability >= 0.5: {best:.3f} (best epoch)."
                      if best is not None and math.isfinite(best) else
                      "The run was trained without a validation split: no validation IoU.")
    return f"""# mitoseg {config.dims}D U-Net (ResNet18 encoder) for mitochondria in EM

Exported by mitoseg {__version__} from the training run `{Path(run).name}`.

Input: one EM channel, {config.dims}D, {voxel_words(config)}; every spatial size must
be a multiple of {divisors(config)} voxels, at least {least_sizes(config, halo)}. Predicting block by block,
pad each block by the output's halo
({", ".join(f"{h} voxels in {a}" for h, a in zip(halo, "zyx"[-config.dims:], strict=True))}) and crop it
from the output: blocks cut edge to edge differ at their borders.
Preprocessing: the input's 0.5 and 99.5 percentiles are mapped to 0 and 1, then clipped (mitoseg itself
takes these percentiles over the whole volume and leaves black or white borders out; crop such borders
before running this package elsewhere).
Output: the foreground (mitochondrion) probability; {_after(chosen)}, and split objects with 3D
connected components.

{STUDY}.

## Training

{_budget(config)}; patches {config.patch} voxels, {config.samples_per_batch} a batch,
AdamW lr {config.lr}, Dice + BCE, seed {config.seed}.{_start(config)}
Training data: {config.data or "not recorded by the run"}.{_data_licence(config)}

## Validation

{validation}
"""
