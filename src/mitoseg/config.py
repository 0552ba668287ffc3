"""The one configuration of a training run, saved as JSON beside its results so the run can be repeated."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from mitoseg import checks, io
from mitoseg.errors import MitosegError

# MONAI FlexibleUNet backbones whose 3D strides `models.encoder_strides` can set for anisotropic voxels (resnet10
# and the bottleneck ResNets fail there); every measured mitoseg result is resnet18's
ENCODERS = ("resnet18", "resnet34")


@dataclass
class Config:
    """Everything that decides a training run. Both models share every field except `dims`.

    Patch extent: both models see the same in-plane extent ``patch_xy``; the 3D model sees
    ``patch_z`` slices at once, the 2D model sees single slices, ``patch_z`` times as many per batch,
    so an iteration processes the same number of voxels for both. With ``context_slices`` k the 2D
    model also sees the k slices above and below each slice as input channels (2.5D; it still predicts
    the one slice); the 3D model ignores it.
    Epoch: ``iterations_per_epoch`` iterations; by default as many as it takes to sample as many
    voxels as the training volume holds (the study never defined it; both models use this one).
    """

    dims: int = 2
    patch_xy: int = 256
    patch_z: int = 32
    batch: int = 2
    epochs: int = 50
    minutes: float | None = None
    iterations_per_epoch: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_iterations: int = 20
    fg_fraction: float = 0.5
    val_fraction: float = 0.15
    label_threshold: float | None = None  # None: not given (binary labels, or of two annotated values the higher)
    intensity_aug: float = 1.0  # strength of whole-patch scale, shift and gamma augmentation (0: off)
    slice_jitter: float = 0.1  # per-slice gain range (offset: half of it); 0: off
    elastic: float = 0.0  # probability of an in-plane elastic deformation per training patch (0: off)
    gamma_field: float = 0.0  # probability of a gamma varying smoothly across a training patch (0: off)
    bn_batches: int = 0  # batches that re-estimate BatchNorm statistics before each validation (0: off)
    # iteration from which BatchNorm statistics stay fixed (re-estimated once, then used in training as in
    # prediction); None: never. At batch 1 a BatchNorm layer otherwise normalises each patch by itself.
    bn_freeze: int | None = None
    # decay per step of an exponential moving average of the weights that is validated, kept and delivered
    # instead of the last step's weights (its BatchNorm statistics re-estimated for it); 0: off
    ema: float = 0.0
    validate_every: int = 1  # epochs between validations (and test-subset scores); the last one always
    loader_workers: int | None = None  # processes preparing batches (None: 0 on a CPU, up to 12 on a GPU)
    context_slices: int = 0  # neighbouring slices on each side given to the 2D model as channels (0: none)
    # planes the 2D model is trained on and predicts along: 1 (XY slices) or 3 (XY, ZX and ZY slices, its
    # prediction the mean of the three; for near-isotropic voxels); the 3D model ignores it
    planes: int = 1
    # channels of a full-resolution stage (two 3x3 convolutions of the input) whose features the decoder's last
    # block takes as its skip; 0: none (FlexibleUNet as it is: its encoder starts at half resolution)
    full_resolution: int = 0
    # the training cross-entropy of voxels within 2 pixels in-plane of a labelled outline weighs 1 + this (0: off)
    boundary_weight: float = 0.0
    voxel_size: tuple[float, float, float] = (5.0, 5.0, 5.0)
    # False: neither the training image nor the user stated the voxel size, so `voxel_size` is the default: it
    # plans the 3D encoder's strides, but outputs record no size from it and predict notes no difference to it
    voxel_size_stated: bool = True
    seed: int = 0
    amp: bool = True
    device: str = "auto"
    # prediction settings used for validation and as defaults for `mitoseg predict`
    tile_xy: int = 256
    tile_z: int = 32
    overlap: float = 0.5
    encoder: str = "resnet18"  # one of ENCODERS
    norm: str = "batch"  # "batch" (BatchNorm) or "instance" (InstanceNorm, independent of batch size)
    # how grey levels reach the network (`io.intensity_range`): "percentile" (linear 0.5-99.5 % window) or
    # "equalize" (histogram equalisation between them: blind to gamma); runs saved without it are percentile
    normalize: str = "percentile"
    # a little annotation: the only annotated slices ("0,40-43"; None: all), the label value that means
    # "not annotated" (recorded; applied when the labels are read), and the run whose weights start training
    annotated_slices: str | None = None
    unlabeled: float | None = None
    init: str | None = None
    # what the run learned from, in words (a data set's provenance, or the image's and labels' file names), for its
    # reports and its bioimage.io package; None: not recorded (runs of mitoseg before it was)
    data: str | None = None
    # the preset whose defaults the run began from ("quick", "cpu", "full"; None: none, or not recorded: runs of
    # mitoseg before 2026-12-08), so that its folder says how it was made and `train --resume --quick` is checked
    preset: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dims not in (2, 3):
            raise MitosegError(f"dims must be 2 or 3, not {self.dims!r}")
        self.dims = int(self.dims)
        if self.encoder not in ENCODERS:
            raise MitosegError(f"encoder must be one of {', '.join(ENCODERS)}, not {self.encoder!r}")
        if self.norm not in ("batch", "instance"):
            raise MitosegError(f"norm must be batch or instance, not {self.norm!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise MitosegError(f"preset must be one of {', '.join(PRESETS)}, not {self.preset!r}")
        if self.normalize not in io.RULES:
            raise MitosegError(f"normalize must be one of {', '.join(io.RULES)}, not {self.normalize!r}")
        if self.voxel_size is None:
            raise MitosegError("voxel_size must be three numbers (z, y, x), not None")
        checks.check(**{f.name: getattr(self, f.name) for f in fields(self) if f.name in checks.RULES})
        checks.flags(**{f.name: getattr(self, f.name) for f in fields(self) if f.type == "bool"})
        self.voxel_size = tuple(float(v) for v in self.voxel_size)
        if self.planes not in (1, 3):
            raise MitosegError(f"planes must be 1 or 3, not {self.planes}")
        if self.dims == 2 and self.planes == 3 and self.context_slices:
            raise MitosegError("a 2D model of three planes takes no neighbouring slices: give --planes 3 or "
                               "--context-slices, not both")
        check_planes(self.slice_planes, self.voxel_size)

    @property
    def patch(self) -> tuple[int, int, int]:
        """Labelled training patch (Z, Y, X) of one sample: depth 1 for the 2D model (whose input also holds
        `context` slices on each side)."""
        return (self.patch_z if self.dims == 3 else 1, self.patch_xy, self.patch_xy)

    @property
    def context(self) -> int:
        """Neighbouring slices on each side of a slice that the model takes as channels: 0 for the 3D model."""
        return self.context_slices if self.dims == 2 else 0

    @property
    def slice_planes(self) -> int:
        """Planes the model is trained on and predicts along: `planes` for the 2D model, 1 for the 3D model."""
        return self.planes if self.dims == 2 else 1

    @property
    def samples_per_batch(self) -> int:
        """Patches per iteration: the 2D model takes patch_z slices for every 3D patch."""
        return self.batch if self.dims == 3 else self.batch * self.patch_z

    @property
    def tile(self) -> tuple[int, int, int]:
        """Prediction tile (Z, Y, X)."""
        return (self.tile_z if self.dims == 3 else 1, self.tile_xy, self.tile_xy)

    def save(self, path: str | Path) -> None:
        io.write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> Config:
        data = io.read_json(path)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def near_isotropic(voxel_size: tuple[float, ...]) -> bool:
    """Whether voxels (Z, Y, X, nm) have no axis over twice another's: the ones a 2D model may slice along three
    planes."""
    return max(voxel_size) <= 2 * min(voxel_size)


def check_planes(planes: int, voxel_size: tuple[float, ...]) -> None:
    """Refuse slices along three planes (`planes` 3) of voxels (Z, Y, X, nm) with an axis over twice another's:
    a ZX or ZY slice of such a stack looks unlike the XY slices the model knows."""
    if planes == 3 and not near_isotropic(voxel_size):
        z, y, x = (f"{v:g}" for v in voxel_size)
        raise MitosegError(f"--planes 3 needs near-isotropic voxels (no axis over twice another's); these are "
                           f"{z} x {y} x {x} nm (Z, Y, X): use XY slices (--planes 1)")


def with_planes(config: Config, planes: int) -> Config:
    """`config` predicting along `planes` (1: XY slices, 3: XY, ZX and ZY) instead of its own: another choice
    only for a 2D model without neighbouring slices, at the run's near-isotropic voxel size."""
    if planes == config.slice_planes:
        return config
    if config.dims == 3:
        raise MitosegError("--planes is for a 2D model; this run is a 3D model")
    if planes == 3 and config.context_slices:
        raise MitosegError("a 2D model of neighbouring slices (--context-slices) predicts XY slices only: give no "
                           "--planes 3")
    if planes == 3 and not near_isotropic(config.voxel_size):  # said of the run, not as the image's voxels
        z, y, x = (f"{v:g}" for v in config.voxel_size)
        raise MitosegError(f"this model was trained on {z} x {y} x {x} nm voxels (Z, Y, X), too anisotropic for "
                           "slices along ZX and ZY: it predicts XY slices only (give no --planes 3)")
    return replace(config, planes=planes)


def other_planes(config: Config) -> int | None:
    """The planes a run may also predict along besides its own (`with_planes`): 3 for a 2D model of XY slices, 1 for
    one of three planes, where it takes no neighbouring slices and its voxels are near-isotropic; else None."""
    if config.dims != 2 or config.context_slices or not near_isotropic(config.voxel_size):
        return None
    return 3 if config.slice_planes == 1 else 1


def quick(dims: int, **changes) -> Config:
    """The demo preset: 3 minutes of training per model on a 2-core CPU."""
    base = dict(dims=dims, patch_xy=128, patch_z=32, batch=1, epochs=1000, minutes=3.0,
                iterations_per_epoch=20, warmup_iterations=5, tile_xy=256, tile_z=32, overlap=0.25, preset="quick")
    base.update(changes)
    return Config(**base)


def cpu(dims: int, **changes) -> Config:
    """The CPU preset: 30 minutes of training per model on 2 cores (bf16 where the CPU has it), patches
    of 32 x 128 x 128 voxels (the 2D model: 32 slices of 128 x 128), validation every 250 iterations."""
    base = dict(dims=dims, patch_xy=128, patch_z=32, batch=1, epochs=100_000, minutes=30.0,
                iterations_per_epoch=250, warmup_iterations=50, tile_xy=256, tile_z=32, overlap=0.25, preset="cpu")
    base.update(changes)
    return Config(**base)


def gpu(dims: int, **changes) -> Config:
    """The GPU preset ("full"): patches of 32 x 256 x 256 voxels, 2 per batch (the 2D model: 64 slices
    of 256 x 256), 200 epochs of one training volume's voxels each, validated every 5th (on an H200 an
    epoch takes 1.5 s, a validation about as long)."""
    base = dict(dims=dims, patch_xy=256, patch_z=32, batch=2, epochs=200, warmup_iterations=100,
                tile_xy=256, tile_z=32, overlap=0.5, validate_every=5, preset="full")
    base.update(changes)
    return Config(**base)


PRESETS = {"quick": quick, "cpu": cpu, "full": gpu, "gpu": gpu}
