"""Training data: the train/validation split, foreground-aware random patches and augmentation.

2D patches are single z-slices of the same volume the 3D model samples from, so the two models
learn from the same voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform

from mitoseg import io
from mitoseg.errors import MitosegError


@dataclass
class Volume:
    """An image (Z, Y, X) as stored (any dtype), its mask (Z, Y, X) uint8 {0, 1, IGNORE}, and the intensity
    window that maps the image to the network's [0, 1] (`io.intensity_range` of the whole volume).
    Patches are normalised as they are read, so no float copy of the volume is ever made.
    `margin`: the image's first `margin` columns in X are not the mask's (the mask covers the rest): a validation
    part's neighbourhood, predicted with it and not scored (`scored`)."""

    image: np.ndarray
    mask: np.ndarray
    window: tuple[float, ...] = (0.0, 1.0)
    margin: int = 0

    def scored(self, probs: np.ndarray) -> np.ndarray:
        """The part of `probs` (Z, Y, X), a prediction of `image`, that `mask` covers."""
        return probs[:, :, self.margin:]


IGNORE = 2  # mask value of voxels nobody annotated: no loss, no sampling centre, no score
# X columns of the training part that the validation part is predicted with (`split`), as `predict` sees its
# voxels in the whole volume; measured on CA1 (40 slices, 2D model, tile 256): IoU 0.877 predicted alone, 0.891
# with 64 columns, 0.891 with 128 or 256 (0.896 inside whole slices, whose tiles lie elsewhere;
# experiments/val_margin.py, results/ca1-ablation/val_margin.md)
VAL_MARGIN = 64


def check_labels(mask: np.ndarray, name: str = "labels") -> float:
    """Refuse label volumes a model cannot learn from: values other than 0, 1 and `IGNORE` (object ids, grey
    levels, a 0/255 mask: `io.load_pair` makes files into 0/1), no annotated voxel (all `IGNORE`), no
    foreground among the annotated voxels, or nothing but foreground. Returns the foreground's share of the
    annotated voxels."""
    other = (mask != 0) & (mask != 1) & (mask != IGNORE)
    if other.any():
        values = io.first_values(np.unique(mask[other]))
        raise MitosegError(f"{name} hold values other than 0, 1 (foreground) and {IGNORE} (not annotated): {values}; "
                           "make them 0/1 first (labels > 0 for object ids; io.load_pair thresholds label files)")
    annotated = int(np.count_nonzero(mask != IGNORE))
    fg = int(np.count_nonzero(mask == 1))
    if annotated == 0:
        raise MitosegError(f"{name} hold no annotated voxel (check --annotated-slices and --unlabeled)")
    if fg == 0:
        raise MitosegError(f"{name} hold no foreground voxels{' where annotated' if annotated < mask.size else ''}: "
                           "nothing to learn (check --label-threshold)")
    if fg == annotated and annotated < mask.size:  # e.g. --unlabeled naming the background of a 0/255 mask
        raise MitosegError(f"{name} are foreground wherever annotated: nothing to learn (check --unlabeled: does it "
                           "name the background? and --label-threshold)")
    if fg == annotated:
        raise MitosegError(f"{name} are foreground everywhere: nothing to learn (check --label-threshold)")
    return fg / annotated


def parse_slices(text: str, depth: int) -> list[int]:
    """Slice indices from text such as "0,40-43,120" (ranges inclusive), each in [0, depth)."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise MitosegError(f"annotated slices {text!r}: use indices and ranges such as 0,40-43,120") from None
        if a > b:
            raise MitosegError(f"annotated slices {part!r}: a range runs from the lower slice to the higher")
        if not 0 <= a <= b < depth:
            raise MitosegError(f"annotated slices {part!r} outside the volume's slices 0..{depth - 1}")
        out.update(range(a, b + 1))
    if not out:
        raise MitosegError(f"annotated slices {text!r} name no slice")
    return sorted(out)


def annotate_slices(mask: np.ndarray, slices: list[int]) -> np.ndarray:
    """A copy of `mask` (Z, Y, X) in which every slice not in `slices` is `IGNORE` (not annotated); a bool mask's
    copy is uint8 (in bool, `IGNORE` would be foreground)."""
    out = np.full(mask.shape, IGNORE, np.promote_types(mask.dtype, np.uint8))
    out[slices] = mask[slices]
    return out


def foreground_outside(mask: np.ndarray, slices: list[int]) -> list[int]:
    """The slices (Z indices) of `mask` (Z, Y, X) outside `slices` that hold foreground (1): painted, yet not
    named as annotated, so `annotate_slices` leaves them out."""
    named = set(slices)
    return [int(z) for z in np.flatnonzero((mask == 1).any(axis=(1, 2))) if int(z) not in named]


def counts(volume: Volume | None) -> dict:
    """{"annotated_voxels", "foreground_voxels"} of a volume's mask ({} for none): what a run learned from."""
    if volume is None:
        return {}
    return {"annotated_voxels": int(np.count_nonzero(volume.mask != IGNORE)),
            "foreground_voxels": int(np.count_nonzero(volume.mask == 1))}


def split(image: np.ndarray, mask: np.ndarray, val_fraction: float,
          window: tuple[float, ...] = (0.0, 1.0)) -> tuple[Volume, Volume | None]:
    """Hold out the last `val_fraction` of the X axis for validation; both parts are views with `window`.

    X is cut (not Z) so thin stacks keep every section in both parts; each part must hold annotated voxels and
    foreground (an empty validation part scores an empty prediction 1.0, and picks it). The validation part's image
    starts `VAL_MARGIN` columns before the cut (its `margin`: never scored, and its labels unused), so its first
    columns are predicted as `predict` predicts them in the whole volume, not at an edge. Returns (train, val or None).
    """
    if val_fraction <= 0:
        return Volume(image, mask, window), None
    nx = image.shape[2]
    cut = nx - max(1, int(round(nx * val_fraction)))
    if cut < 1:
        raise MitosegError(f"volume too narrow ({nx} voxels in X) for a validation split")
    for part, where, then, empty in (
            (mask[:, :, :cut], f"training part (x < {cut}, the first {1 - val_fraction:.0%} of X)", "learn nothing",
             "learn background alone"),
            (mask[:, :, cut:], f"validation part (x >= {cut}, the last {val_fraction:.0%} of X)", "score nothing",
             "choose its checkpoint and post-processing for predicting nothing")):
        if not (part != IGNORE).any():  # partial annotation (boxes) all on one side of the cut
            raise MitosegError(f"the {where} holds no annotated voxel, so the run would {then}: annotate some there "
                               "too, or change --val-fraction")
        if not (part == 1).any():  # validation: checkpoints and post-processing chosen for predicting nothing
            raise MitosegError(f"the {where} holds no foreground (mitochondria), so the run would {empty}: change "
                               "--val-fraction, or crop the volume so that both parts hold some")
    lent = min(cut, VAL_MARGIN)
    return (Volume(image[:, :, :cut], mask[:, :, :cut], window),
            Volume(image[:, :, cut - lent:], mask[:, :, cut:], window, lent))


def check_image(image: np.ndarray, rule: str = "percentile", name: str = "image") -> tuple[float, ...]:
    """The image's grey-level window (`io.intensity_range` by `rule`), refusing an image volume of one grey level:
    no model learns from it (an empty or wrongly exported stack); and one of two or three: a mask or labels given as
    the image, said before any patch size."""
    low, high = np.min(image), np.max(image)
    if low == high:
        raise MitosegError(f"{name} holds one grey level ({low:g}) everywhere: nothing to learn from")
    return io.intensity_range(image, rule=rule, flat=f"the {name}")


def check_patch(shape: tuple[int, ...], patch: tuple[int, int, int], name: str = "training volume") -> None:
    """Refuse a volume smaller than one training patch; one whose X is far the shortest axis is asked whether it is a
    stack saved as (Y, X, Z) (a smaller patch would train on it transposed)."""
    if any(s < p for s, p in zip(shape, patch, strict=True)):
        z, y, x = shape
        if 4 * x <= min(z, y):
            raise MitosegError(f"{name} {tuple(shape)} is smaller than the patch {patch} (Z, Y, X) in X, its shortest "
                               "axis by far: a stack saved as (Y, X, Z)? mitoseg reads volumes as (Z, Y, X): save it "
                               "with its slices first")
        limits: dict[str, int] = {}  # the option that sets each short axis's patch size, and the most it may be
        for axis, s, p in zip("ZYX", shape, patch, strict=True):
            if s < p:
                option = "--patch-z" if axis == "Z" else "--patch-xy"
                limits[option] = min(limits.get(option, s), s)
        short = " and ".join(a for a, s, p in zip("ZYX", shape, patch, strict=True) if s < p)
        give = " and ".join(f"{option} {n} or less" for option, n in limits.items())
        raise MitosegError(f"{name} {tuple(shape)} is smaller than the patch {patch} (Z, Y, X) in {short}: give "
                           f"{give}, or more data")


class PatchSampler:
    """Draws random patches; a `fg_fraction` of them is centred on a foreground voxel, the others anywhere
    (on an annotated voxel when the mask holds unannotated ones, `IGNORE`).

    Hand-written (MONAI's RandCropByPosNegLabel rescans the whole label volume per call).
    """

    def __init__(self, volume: Volume, patch: tuple[int, int, int], fg_fraction: float,
                 rng: np.random.Generator, max_fg_points: int = 1_000_000, context: int = 0, planes: int = 1):
        check_patch(volume.image.shape, patch)
        self.volume, self.patch, self.fg_fraction, self.rng = volume, patch, fg_fraction, rng
        self.context, self.planes = context, planes
        self.fg = self._points(volume.mask == 1, rng, max_fg_points)
        partial = volume.mask == IGNORE
        # partly annotated: the other patches are centred on an annotated voxel, so none is all unannotated
        self.annotated = self._points(~partial, rng, max_fg_points) if partial.any() else None

    @staticmethod
    def _points(where: np.ndarray, rng: np.random.Generator, most: int) -> np.ndarray:
        points = np.flatnonzero(where.ravel())
        return rng.choice(points, most, replace=False) if points.size > most else points

    def corner(self, patch: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
        """The low corner (z, y, x) of the next patch (of `patch`'s extent, default the sampler's; at most
        the volume's)."""
        shape = self.volume.image.shape
        patch = patch or self.patch
        centres = None
        if self.fg.size and self.rng.random() < self.fg_fraction:
            centres = self.fg
        elif self.annotated is not None:
            centres = self.annotated
        if centres is not None:
            centre = np.unravel_index(self.rng.choice(centres), shape)
            low = [c - p // 2 + int(self.rng.integers(-(p // 4), p // 4 + 1))
                   for c, p in zip(centre, patch, strict=True)]
        else:
            low = [int(self.rng.integers(0, s - p + 1)) for s, p in zip(shape, patch, strict=True)]
        return tuple(int(np.clip(c, 0, s - p)) for c, s, p in zip(low, shape, patch, strict=True))

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n patches: images float32 normalised to [0, 1] by the volume's window, (n, 1, Z + 2 * context, Y, X):
        the patch's slices and `context` more on each side (the end slices repeated past the volume's ends,
        as `io.read_region` does in prediction), and masks float32 {0, 1, IGNORE} of the patch, (n, 1, Z, Y, X)."""
        xs, ys = [], []
        for _ in range(n):
            if self.planes == 1:
                z, y, x = self.corner()
                sl = np.s_[z:z + self.patch[0], y:y + self.patch[1], x:x + self.patch[2]]
                region = (slice(z - self.context, z + self.patch[0] + self.context), *sl[1:])
                xs.append(io.normalize(io.read_region(self.volume.image, region), self.volume.window))
                ys.append(self.volume.mask[sl])
            else:
                image, mask = self._plane_patch(io.PLANES[int(self.rng.integers(3))])
                xs.append(image)
                ys.append(mask)
        return (np.stack(xs)[:, None].astype(np.float32), np.stack(ys)[:, None].astype(np.float32))

    def _plane_patch(self, order: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """One patch of a single slice across the volume's axis `order[0]`, its axes in `order` (its shape
        `self.patch`): the normalised image and the mask. Where the volume is shorter than the patch (165
        slices, 256-voxel patches), the image is mirrored past the volume's end and the mask there is IGNORE."""
        shape = self.volume.image.shape
        extent = [0, 0, 0]
        for axis, p in zip(order, self.patch, strict=True):
            extent[axis] = p
        clipped = tuple(min(e, s) for e, s in zip(extent, shape, strict=True))
        low = self.corner(clipped)
        sl = tuple(slice(c, c + e) for c, e in zip(low, clipped, strict=True))
        image = io.normalize(np.asarray(self.volume.image[sl]), self.volume.window)
        mask = np.asarray(self.volume.mask[sl])
        short = [(0, e - c) for e, c in zip(extent, clipped, strict=True)]
        if any(after for _, after in short):
            image = np.pad(image, short, mode="symmetric")
            mask = np.pad(mask, short, constant_values=IGNORE)
        return image.transpose(order), mask.transpose(order)


def augmenter(seed: int, dims: int, intensity: float = 1.0, slice_jitter: float = 0.1, elastic: float = 0.0,
              gamma_field: float = 0.0, z_flip: bool | None = None):
    """MONAI random transforms for one sample dict {"image", "label"} of arrays (1, Z, Y, X).

    With probability `elastic` an in-plane elastic deformation, the same for every slice (Z may be
    anisotropic): control points every 32 pixels moved by normal offsets whose standard deviation is
    drawn from 0..3 pixels per patch, image interpolated bilinearly, label by nearest neighbour, reflected
    at the edges.
    Flips in-plane and, with `z_flip` (default: for the 3D model), in Z (a 2D model's neighbouring slices
    swap sides), 90-degree rotations in-plane only (Z may be anisotropic),
    per-slice contrast and brightness jitter (gain 1 +- `slice_jitter`, offset +- `slice_jitter` / 2;
    0 turns it off), and whole-patch intensity scale (+-0.3), shift (+-0.15), gamma (0.6..1.7) and noise
    on the image alone, ranges times `intensity` (0 turns them off): a model must not depend on the
    microscope's grey levels. With probability `gamma_field` (0: off) also a gamma in the same range that
    varies smoothly across the patch (`RandGammaFieldd`).
    """
    from monai.transforms import (
        Compose,
        Lambdad,
        Rand2DElasticd,
        RandAdjustContrastd,
        RandFlipd,
        RandGaussianNoised,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys = ["image", "label"]
    flip_axes = [0, 1, 2] if (dims == 3 if z_flip is None else z_flip) else [1, 2]
    tfs = []
    if elastic:  # slices as channels, so one in-plane field moves them all
        tfs += [Lambdad(keys, lambda a: a[0]),
                Rand2DElasticd(keys, spacing=32, magnitude_range=(0, 3), prob=elastic, mode=("bilinear", "nearest")),
                Lambdad(keys, lambda a: a[None])]
    if slice_jitter:
        tfs.append(RandSliceIntensityd("image", scale=slice_jitter, shift=slice_jitter / 2, prob=0.5))
    tfs += [RandFlipd(keys, prob=0.5, spatial_axis=a) for a in flip_axes]
    tfs.append(RandRotate90d(keys, prob=0.75, max_k=3, spatial_axes=(1, 2)))
    if intensity:
        tfs += [
            RandScaleIntensityd("image", factors=0.3 * intensity, prob=0.5),
            RandShiftIntensityd("image", offsets=0.15 * intensity, prob=0.5),
            RandAdjustContrastd("image", gamma=(1 - 0.4 * intensity, 1 + 0.7 * intensity), prob=0.5),
        ]
    if gamma_field:
        tfs.append(RandGammaFieldd("image", gamma=(1 - 0.4 * intensity, 1 + 0.7 * intensity), prob=gamma_field))
    tfs.append(RandGaussianNoised("image", std=0.03, prob=0.2))
    tf = Compose(tfs)
    tf.set_random_state(seed=seed)
    return tf


class _RandImaged(MapTransform, RandomizableTransform):
    """With probability `prob`, `change` applied to the image (1, Z, Y, X) float32 under `key`."""

    def __init__(self, key: str, prob: float):
        MapTransform.__init__(self, [key])
        RandomizableTransform.__init__(self, prob)

    def __call__(self, sample: dict) -> dict:
        self.randomize(None)
        if not self._do_transform:
            return sample
        return {**sample, **{key: self.change(np.asarray(sample[key], dtype=np.float32)) for key in self.keys}}


class RandSliceIntensityd(_RandImaged):
    """Multiply each z-slice of the image (1, Z, Y, X) by 1 + U(-scale, scale) and add U(-shift, shift).

    Hand-written: MONAI's intensity transforms change a whole patch alike, but FIB-SEM slices drift
    in brightness one by one (and the CA1 copy's slices were stretched one by one).
    """

    def __init__(self, key: str, scale: float, shift: float, prob: float):
        super().__init__(key, prob)
        self.scale, self.shift = scale, shift

    def change(self, image: np.ndarray) -> np.ndarray:
        n = image.shape[1]
        gain = 1 + self.R.uniform(-self.scale, self.scale, n).astype(np.float32)
        offset = self.R.uniform(-self.shift, self.shift, n).astype(np.float32)
        return image * gain[None, :, None, None] + offset[None, :, None, None]


class RandGammaFieldd(_RandImaged):
    """Raise the image (1, Z, Y, X), scaled to [0, 1] by its own minimum and maximum (as MONAI's
    RandAdjustContrast does), to a gamma that varies smoothly across it: gammas drawn uniformly from
    `gamma` at 2 x 3 x 3 control points (1 x 3 x 3 for a single slice), spread to every voxel by linear
    interpolation through the whole patch.

    Hand-written: MONAI's gamma is one value per patch, which at batch 1 a BatchNorm layer largely
    normalises away in training (but not in prediction); its RandBiasField only multiplies.
    """

    def __init__(self, key: str, gamma: tuple[float, float], prob: float):
        super().__init__(key, prob)
        self.gamma = gamma

    def change(self, image: np.ndarray) -> np.ndarray:
        grid = (min(2, image.shape[1]), 3, 3)
        points = torch.from_numpy(self.R.uniform(*self.gamma, grid).astype(np.float32))
        field = torch.nn.functional.interpolate(points[None, None], size=image.shape[1:], mode="trilinear",
                                                align_corners=True)[0].numpy()
        low, high = image.min(), image.max()
        scaled = (image - low) / max(high - low, 1e-7)
        return scaled**field * (high - low) + low


def augment(tf, images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply `tf` to each sample of a batch (n, 1, Z, Y, X); returns float32 arrays of the same shape."""
    out_x, out_y = [], []
    for x, y in zip(images, masks, strict=True):
        d = tf({"image": x, "label": y})
        out_x.append(np.asarray(d["image"], dtype=np.float32))
        out_y.append(np.asarray(d["label"], dtype=np.float32))
    return np.stack(out_x), np.stack(out_y)
