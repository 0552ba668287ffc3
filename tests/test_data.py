"""Training data on the real Drosophila crop: split, label checks, foreground-aware patches, augmentation."""

import numpy as np
import pytest

from mitoseg import data
from mitoseg.errors import MitosegError


@pytest.fixture(scope="module")
def volume(droso_crop) -> data.Volume:
    raw, mask = droso_crop
    return data.Volume(raw.astype(np.float32) / 255.0, mask)


def _d4(arr: np.ndarray):
    """The 8 in-plane flips/rotations of arr (..., Y, X), each with a name."""
    for k in range(4):
        r = np.rot90(arr, k, axes=(-2, -1))
        yield f"rot{k}", r
        yield f"rot{k}+flip", r[..., ::-1]


def _inplane_match(src: np.ndarray, out: np.ndarray) -> bool:
    """Whether out (Z, Y, X) is src with one in-plane flip/rotation applied to every slice, Z order kept."""
    return any(g.shape == out.shape and np.array_equal(g, out) for _, g in _d4(src))


# ---------------------------------------------------------------- split and checks


def test_split_holds_out_last_x_fraction(volume):
    train, val = data.split(volume.image, volume.mask, 0.15)
    # the validation image lends the training part's last VAL_MARGIN columns (predicted, not scored)
    assert train.image.shape == (20, 256, 218) and val.image.shape == (20, 256, 38 + data.VAL_MARGIN)
    assert train.mask.shape == train.image.shape and val.mask.shape == (20, 256, 38) and val.margin == 64
    assert np.array_equal(train.image, volume.image[:, :, :218])
    assert np.array_equal(val.image, volume.image[:, :, 218 - 64:])
    assert np.array_equal(val.scored(val.image), volume.image[:, :, 218:])
    assert np.array_equal(np.concatenate([train.mask, val.mask], axis=2), volume.mask)
    assert val.mask.any()  # the real crop has mitochondria in the held-out strip


def test_split_without_validation_and_too_narrow(volume):
    train, val = data.split(volume.image, volume.mask, 0.0)
    assert val is None and train.image is volume.image and train.mask is volume.mask
    two = np.zeros((2, 4, 2), np.uint8)
    two[:, 1:3] = 1  # foreground in both columns
    train, val = data.split(two, two, 0.1)  # at least one column held out, its margin as wide as the rest
    assert train.image.shape[2] == 1 and val.image.shape[2] == 2 and val.mask.shape[2] == 1 and val.margin == 1
    with pytest.raises(MitosegError, match="too narrow"):
        data.split(volume.image[:, :, :1], volume.mask[:, :, :1], 0.5)


def test_split_refuses_annotation_all_on_one_side(volume):
    """Boxes annotated only left of the validation cut (the last 15 % of X): before, validation scored no voxel
    and logged IoU 1.0; only right of it: a traceback from the patch sampler. Now one line each."""
    boxes = np.full(volume.mask.shape, data.IGNORE, np.uint8)
    boxes[:, 40:140, 100:200] = volume.mask[:, 40:140, 100:200]  # x < 218: the training part only
    with pytest.raises(MitosegError, match=r"the validation part \(x >= 218, the last 15% of X\) holds no annotated "
                                           "voxel, so the run would score nothing"):
        data.split(volume.image, boxes, 0.15)
    boxes = np.full(volume.mask.shape, data.IGNORE, np.uint8)
    boxes[:, 40:140, 220:] = volume.mask[:, 40:140, 220:]
    with pytest.raises(MitosegError, match=r"the training part \(x < 218.* so the run would learn nothing"):
        data.split(volume.image, boxes, 0.15)
    boxes[:, 40:140, 100:200] = volume.mask[:, 40:140, 100:200]  # both sides annotated
    train, val = data.split(volume.image, boxes, 0.15)
    assert (train.mask != data.IGNORE).any() and (val.mask != data.IGNORE).any()


def test_split_refuses_a_part_without_foreground(volume):
    """A validation part of background alone scored an empty prediction 1.0 and chose that checkpoint (and a
    post-processing "chosen on validation" on nothing), in silence."""
    mask = volume.mask.copy()
    mask[:, :, 218:] = 0
    with pytest.raises(MitosegError, match=r"the validation part \(x >= 218, the last 15% of X\) holds no foreground "
                                           r"\(mitochondria\), so the run would choose its checkpoint"):
        data.split(volume.image, mask, 0.15)
    mask = volume.mask.copy()
    mask[:, :, :218] = 0
    with pytest.raises(MitosegError, match=r"the training part .* so the run would learn background alone"):
        data.split(volume.image, mask, 0.15)


def test_check_labels(volume):
    assert data.check_labels(volume.mask) == pytest.approx(np.mean(volume.mask[volume.mask != data.IGNORE] == 1))
    with pytest.raises(MitosegError, match="no foreground"):
        data.check_labels(np.zeros_like(volume.mask))
    with pytest.raises(MitosegError, match="foreground everywhere"):
        data.check_labels(np.ones_like(volume.mask), name="my labels")
    with pytest.raises(MitosegError, match="^my labels"):
        data.check_labels(np.ones_like(volume.mask), name="my labels")
    only_fg = np.where(volume.mask > 0, 1, data.IGNORE).astype(np.uint8)  # --unlabeled naming a 0/255's background
    with pytest.raises(MitosegError, match="foreground wherever annotated: nothing to learn \\(check --unlabeled"):
        data.check_labels(only_fg)


def test_check_patch():
    data.check_patch((20, 256, 256), (20, 256, 256))
    data.check_patch((20, 256, 256), (1, 256, 256))
    with pytest.raises(MitosegError, match=r"\(20, 256, 256\) is smaller than the patch \(32, 128, 128\)"):
        data.check_patch((20, 256, 256), (32, 128, 128))  # the default 3D patch on the 20-section stack
    with pytest.raises(MitosegError, match=r"in X: give --patch-xy 100 or less, or more data"):
        data.check_patch((20, 256, 100), (1, 128, 128))  # before: which axis, and by how much, unsaid
    with pytest.raises(MitosegError, match=r"in Z and Y: give --patch-z 20 or less and --patch-xy 100 or less"):
        data.check_patch((20, 100, 3000), (32, 128, 128))
    # 20 ssTEM sections saved as (Y, X, Z): asked, not told to shrink the patch (which trains on it transposed)
    with pytest.raises(MitosegError, match=r"\(512, 512, 20\) is smaller than the patch \(1, 128, 128\) \(Z, Y, X\) in "
                                           r"X, its shortest axis by far: a stack saved as \(Y, X, Z\)\?"):
        data.check_patch((512, 512, 20), (1, 128, 128))
    with pytest.raises(MitosegError, match="smaller than the patch"):
        data.PatchSampler(data.Volume(np.zeros((4, 8, 8), np.float32), np.zeros((4, 8, 8), np.uint8)),
                          (1, 16, 16), 0.5, np.random.default_rng(0))


# ---------------------------------------------------------------- patches


@pytest.mark.parametrize("patch", [(8, 64, 64), (1, 64, 64), (1, 16, 16)])
def test_fg_patches_hold_foreground_near_centre(volume, patch):
    sampler = data.PatchSampler(volume, patch, 1.0, np.random.default_rng(1))
    shape = volume.image.shape
    n_centred = 0
    for _ in range(300):
        corner = sampler.corner()
        assert all(0 <= c <= s - p for c, s, p in zip(corner, shape, patch, strict=True))
        sl = tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))
        assert volume.mask[sl].any()
        # on each axis where the patch was not clipped at a border, the chosen foreground voxel lies within a
        # quarter patch of the centre
        centre = tuple(slice(c, c + p) if c in (0, s - p) else slice(c + p // 2 - p // 4, c + p // 2 + p // 4 + 1)
                       for c, s, p in zip(corner, shape, patch, strict=True))
        assert volume.mask[centre].any()
        n_centred += all(0 < c < s - p for c, s, p in zip(corner[1:], shape[1:], patch[1:], strict=True))
    assert n_centred > 100


def test_fg_fraction_changes_how_often_patches_hold_foreground(volume):
    patch = (1, 16, 16)

    def fg_rate(fraction):
        sampler = data.PatchSampler(volume, patch, fraction, np.random.default_rng(2))
        _, ys = sampler.sample(400)
        return float(np.mean(ys.reshape(len(ys), -1).max(axis=1) > 0))

    uniform, half, always = fg_rate(0.0), fg_rate(0.5), fg_rate(1.0)
    assert always == 1.0
    assert uniform < 0.5  # about 4 % of the crop is mitochondria
    assert uniform + 0.25 < half < 1.0


def test_uniform_corners_are_spread(volume):
    patch = (4, 64, 64)
    sampler = data.PatchSampler(volume, patch, 0.0, np.random.default_rng(3))
    corners = np.array([sampler.corner() for _ in range(4000)])
    for axis, (s, p) in enumerate(zip(volume.image.shape, patch, strict=True)):
        c = corners[:, axis]
        assert c.min() == 0 and c.max() == s - p  # both extremes reached, never beyond
        edges = np.round(np.linspace(0, s - p + 1, 5))  # integer edges: 4 bins of whole corner values
        expected = np.diff(edges) / (s - p + 1)
        counts = np.histogram(c, bins=edges)[0]
        assert np.all(np.abs(counts / len(c) - expected) < 0.03), (axis, counts, expected)
        assert abs(c.mean() - (s - p) / 2) < 0.05 * (s - p)


def test_sample_shapes_dtypes_and_alignment(volume):
    patch = (8, 64, 64)
    xs, ys = data.PatchSampler(volume, patch, 0.5, np.random.default_rng(4)).sample(6)
    assert xs.shape == ys.shape == (6, 1, 8, 64, 64)
    assert xs.dtype == ys.dtype == np.float32
    assert set(np.unique(ys)) <= {0.0, 1.0}
    # the same rng replays the same corners: each patch is the volume at that corner, image and mask aligned
    replay = data.PatchSampler(volume, patch, 0.5, np.random.default_rng(4))
    for x, y in zip(xs, ys, strict=True):
        z0, y0, x0 = replay.corner()
        sl = np.s_[z0:z0 + 8, y0:y0 + 64, x0:x0 + 64]
        assert np.array_equal(x[0], volume.image[sl]) and np.array_equal(y[0], volume.mask[sl])


def test_2d_samples_are_single_slices(volume):
    xs, ys = data.PatchSampler(volume, (1, 128, 128), 0.5, np.random.default_rng(5)).sample(32)
    assert xs.shape == ys.shape == (32, 1, 1, 128, 128)


def test_seeded_samplers_repeat(volume):
    def draw(seed):
        return data.PatchSampler(volume, (4, 32, 32), 0.5, np.random.default_rng(seed)).sample(8)

    a, b, c = draw(7), draw(7), draw(8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_max_fg_points_subsamples_foreground(volume):
    sampler = data.PatchSampler(volume, (1, 32, 32), 1.0, np.random.default_rng(9), max_fg_points=50)
    assert sampler.fg.size == 50 and len(np.unique(sampler.fg)) == 50
    assert np.all(volume.mask.ravel()[sampler.fg] == 1)
    _, ys = sampler.sample(50)
    assert np.all(ys.reshape(50, -1).max(axis=1) == 1)


def test_empty_mask_falls_back_to_uniform(volume):
    empty = data.Volume(volume.image, np.zeros_like(volume.mask))
    xs, ys = data.PatchSampler(empty, (2, 32, 32), 1.0, np.random.default_rng(0)).sample(5)
    assert xs.shape == (5, 1, 2, 32, 32) and not ys.any()


# ---------------------------------------------------------------- augmentation


@pytest.fixture(scope="module")
def mask_patches(volume) -> np.ndarray:
    """Real mask patches (n, 1, 8, 64, 64) float32 {0, 1}, each holding foreground."""
    _, ys = data.PatchSampler(volume, (8, 64, 64), 1.0, np.random.default_rng(11)).sample(12)
    return ys


@pytest.mark.parametrize("dims", [2, 3])
def test_augment_keeps_image_and_label_aligned(mask_patches, dims):
    patches = mask_patches if dims == 3 else mask_patches[:, :, :1]
    tf = data.augmenter(seed=0, dims=dims)
    agree, spatial_changed, intensity_changed, draws = [], 0, 0, 0
    for _ in range(8):
        x, y = data.augment(tf, patches.copy(), patches.copy())
        assert x.shape == y.shape == patches.shape
        assert x.dtype == y.dtype == np.float32
        assert set(np.unique(y)) <= {0.0, 1.0}
        agree.append(np.mean((x > 0.5) == (y > 0.5)))
        for src, xi, yi in zip(patches, x, y, strict=True):
            assert yi.sum() == src.sum()  # flips and rotations move voxels, never create or drop them
            if len({g.tobytes() for _, g in _d4(src[0])}) < 8:
                continue  # a patch with a symmetry (e.g. all foreground) may not show the change
            draws += 1
            spatial_changed += not np.array_equal(yi, src)
            intensity_changed += not np.all(np.isin(xi, [0.0, 1.0]))
    assert min(agree) > 0.99
    assert draws >= 24 and spatial_changed > 0.5 * draws
    assert intensity_changed > 0.3 * draws


def test_augmenter_is_seeded(mask_patches):
    runs = [data.augment(data.augmenter(seed, 3), mask_patches.copy(), mask_patches.copy()) for seed in (5, 5, 6)]
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][0], runs[2][0])


def test_2d_augmenter_never_flips_z(mask_patches):
    src = mask_patches[:, 0]  # (n, Z, Y, X): a real patch whose Z-reversal is not an in-plane transform of it
    usable = [s for s in src if not _inplane_match(s, s[::-1])]
    assert len(usable) >= 6
    batch = np.stack(usable)[:, None]
    tf2, tf3 = data.augmenter(seed=3, dims=2), data.augmenter(seed=3, dims=3)
    z_flips_3d = 0
    for _ in range(6):
        _, y2 = data.augment(tf2, batch.copy(), batch.copy())
        _, y3 = data.augment(tf3, batch.copy(), batch.copy())
        for s, a, b in zip(batch[:, 0], y2[:, 0], y3[:, 0], strict=True):
            assert _inplane_match(s, a)  # 2D: in-plane only, slice order kept
            if not _inplane_match(s, b):
                assert _inplane_match(s[::-1], b)
                z_flips_3d += 1
    assert z_flips_3d > 0  # the check above would see a Z flip: the 3D augmenter does make them
    # a 2D model with neighbouring slices as channels: they swap sides, as the 3D model's slices do
    tf = data.augmenter(seed=3, dims=2, z_flip=True)
    flipped = 0
    for _ in range(6):
        _, y = data.augment(tf, batch.copy(), batch.copy())
        flipped += sum(not _inplane_match(s, a) for s, a in zip(batch[:, 0], y[:, 0], strict=True))
    assert flipped > 0


def test_elastic_deformation_moves_image_and_label_alike_in_plane(lucchi_crop):
    """On a real CA1 mask: a smooth in-plane field of a few pixels, the same on every slice; the label is
    moved by nearest neighbour (unannotated voxels stay IGNORE), the image with it."""
    _, mask = lucchi_crop
    label = np.repeat(mask[None, None, :1, :128, :128], 4, axis=2).astype(np.float32)  # (1, 1, 4, 128, 128)
    label[..., :16, :] = data.IGNORE
    tf = data.augmenter(seed=0, dims=2, intensity=0, slice_jitter=0, elastic=1.0)
    for _ in range(6):
        x, y = data.augment(tf, label.copy(), label.copy())
        assert set(np.unique(y)) == {0.0, 1.0, float(data.IGNORE)}
        assert all(np.array_equal(y[0, 0, 0], y[0, 0, z]) for z in range(4))  # one field for every slice
        assert np.mean(np.rint(x) == y) > 0.97  # the image moved with its label
        changed = min(np.mean(g != y[0, 0, 0]) for _, g in _d4(label[0, 0, 0]))  # beyond flips and rotations
        assert 0 < changed < 0.1  # deformed, by a few pixels: only voxels near edges change


def test_slice_intensity_jitter_changes_each_slice_apart(lucchi_crop):
    """On a real CA1 patch each z-slice gets its own gain and offset (slices drift one by one)."""
    raw, mask = lucchi_crop
    image = (raw[None, :8, :64, :64] / 255.0).astype(np.float32)
    tf = data.RandSliceIntensityd("image", scale=0.1, shift=0.05, prob=1.0)
    tf.set_random_state(seed=0)
    out = tf({"image": image, "label": mask[None, :8, :64, :64]})
    assert out["label"] is not None and np.array_equal(out["label"], mask[None, :8, :64, :64])
    gains, offsets = [], []
    for z in range(8):  # out = image * gain + offset, exactly, per slice
        gain, offset = np.polyfit(image[0, z].ravel(), out["image"][0, z].ravel(), 1)
        gains.append(gain)
        offsets.append(offset)
        np.testing.assert_allclose(out["image"][0, z], image[0, z] * gain + offset, atol=1e-5)
    assert all(0.9 <= g <= 1.1 for g in gains) and all(abs(o) <= 0.05 for o in offsets)
    assert np.std(gains) > 0.01  # the slices differ
    never = data.RandSliceIntensityd("image", scale=0.1, shift=0.05, prob=0.0)
    assert never({"image": image})["image"] is image


def test_gamma_field_varies_smoothly_across_a_real_patch(lucchi_crop):
    """On a real CA1 patch: every voxel gets a gamma within the range (relative to the patch's minimum and
    maximum), the gamma differs across the patch, by little from one voxel to the next; the label stays."""
    raw, mask = lucchi_crop
    image = (raw[None, :8, :64, :64] / 255.0).astype(np.float32)
    low, high = image.min(), image.max()
    scaled = (image - low) / (high - low)
    inner = (scaled > 0.05) & (scaled < 0.95)  # where the gamma can be read back
    tf = data.RandGammaFieldd("image", gamma=(0.6, 1.7), prob=1.0)
    tf.set_random_state(seed=0)
    spreads = []
    for _ in range(5):
        out = tf({"image": image, "label": mask[None, :8, :64, :64]})
        assert np.array_equal(out["label"], mask[None, :8, :64, :64])
        assert low - 1e-6 <= out["image"].min() and out["image"].max() <= high + 1e-6
        g = np.full(image.shape, np.nan)
        g[inner] = np.log((out["image"][inner] - low) / (high - low)) / np.log(scaled[inner])
        assert 0.6 - 1e-3 <= np.nanmin(g) and np.nanmax(g) <= 1.7 + 1e-3
        assert np.nanmax(np.abs(np.diff(g, axis=3))) < 0.05  # smooth: control points 32 pixels apart
        spreads.append(np.nanmax(g) - np.nanmin(g))
    assert min(spreads) > 0.1  # not one gamma for the whole patch
    never = data.RandGammaFieldd("image", gamma=(0.6, 1.7), prob=0.0)
    assert never({"image": image})["image"] is image


def test_slices_and_partial_annotation(droso_crop):
    _, mask = droso_crop
    assert data.parse_slices("0, 3-5,19", 20) == [0, 3, 4, 5, 19]
    for bad, match in [("20", "outside"), ("5-3", "from the lower slice to the higher"), ("a-b", "use indices"),
                       (",", "name no slice")]:
        with pytest.raises(MitosegError, match=match):
            data.parse_slices(bad, 20)
    partial = data.annotate_slices(mask, [2, 9])
    assert (partial[[2, 9]] == mask[[2, 9]]).all() and (np.delete(partial, [2, 9], axis=0) == data.IGNORE).all()
    # a bool mask alike (before: its other slices were True, all foreground)
    np.testing.assert_array_equal(data.annotate_slices(mask.astype(bool), [2, 9]), partial)
    data.check_labels(partial)
    with pytest.raises(MitosegError, match="no annotated voxel"):
        data.check_labels(np.full_like(mask, data.IGNORE))
    sampler = data.PatchSampler(data.Volume(mask.astype(np.float32), partial), (4, 64, 64), 0.5,
                                np.random.default_rng(3))
    _, ys = sampler.sample(40)
    assert all((y != data.IGNORE).any() for y in ys)  # no patch without an annotated voxel


def test_2d_samples_with_context_repeat_the_end_slice_past_the_volume(droso_crop):
    """A 2D model's neighbouring slices (`context`): an annotated first slice is still a training slice, its
    missing neighbours above it being copies of it (as prediction reads them, `io.read_region`)."""
    raw, mask = droso_crop
    volume = data.Volume(raw, data.annotate_slices(mask, [0]), (0.0, 255.0))
    xs, ys = data.PatchSampler(volume, (1, 64, 64), 0.5, np.random.default_rng(0), context=2).sample(8)
    replay = data.PatchSampler(volume, (1, 64, 64), 0.5, np.random.default_rng(0), context=2)
    assert xs.shape == (8, 1, 5, 64, 64) and ys.shape == (8, 1, 1, 64, 64)
    assert (ys != data.IGNORE).all()  # every patch is of the one annotated slice, the first
    for x in xs[:, 0]:
        z, y, x0 = replay.corner()
        assert z == 0
        np.testing.assert_allclose(x * 255, raw[[0, 0, 0, 1, 2], y:y + 64, x0:x0 + 64], atol=1e-3)


def _found(row: np.ndarray, plane: np.ndarray) -> list[tuple[int, int]]:
    """Where `row` (n,) lies along the last axis of `plane` (rows, cols): (row, first column) of each match."""
    windows = np.lib.stride_tricks.sliding_window_view(plane, row.size, axis=1)
    return [tuple(int(i) for i in hit) for hit in np.argwhere((windows == row).all(axis=-1))]


def test_three_plane_samples_are_slices_along_each_axis(lucchi_crop):
    """A 2D model of three planes (`planes` 3) trains on XY, ZX and ZY slices, each a true slice of the
    volume with Z as its first axis across the other two planes; where the volume (32 slices) is shorter than
    the patch (64), the image is mirrored and the mask there IGNORE, so nothing past the volume is scored."""
    raw, mask = lucchi_crop
    volume = data.Volume(raw, mask, (0.0, 255.0))
    xs, ys = data.PatchSampler(volume, (1, 64, 64), 0.5, np.random.default_rng(0), planes=3).sample(24)
    assert xs.shape == ys.shape == (24, 1, 1, 64, 64)
    seen = set()
    for x, y in zip(np.rint(xs[:, 0, 0] * 255).astype(np.uint8), ys[:, 0, 0], strict=True):
        if (y != data.IGNORE).all():  # an XY slice: some slice of the volume holds it
            seen.add("xy")
            assert any(_found(x[0], raw[z]) for z in range(raw.shape[0]))
            continue
        assert (y[32:] == data.IGNORE).all() and (y[:32] != data.IGNORE).all()
        np.testing.assert_array_equal(x[32:], x[31::-1])  # mirrored past the last slice
        matches = []
        for name, first in (("zx", raw[0]), ("zy", raw[0].T)):  # ZX: raw[:, y, x0:], ZY: raw[:, y0:, x]
            for at, start in _found(x[0], first):
                where = np.s_[:, at, start:start + 64] if name == "zx" else np.s_[:, start:start + 64, at]
                if (raw[where] == x[:32]).all():
                    matches.append(name)
                    np.testing.assert_array_equal(y[:32], mask[where])
        assert matches
        seen.update(matches)
    assert seen == {"xy", "zx", "zy"}
