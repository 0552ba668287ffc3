from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr
from conftest import dies_on_call, jittered_probabilities

from mitoseg import io, omezarr, postprocess, predict
from mitoseg.config import Config
from mitoseg.errors import MitosegError
from mitoseg.models import autocast, bf16_native, build_model


class Identity(torch.nn.Module):
    """A 'model' whose logit is the normalised intensity: the exact answer is sigmoid(image) everywhere."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x + 0 * self.p


class Spread(torch.nn.Module):
    """An untrained network's logits, centred and multiplied by 100 so that its probabilities vary."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        y = self.net(x)
        return 100 * (y - y.mean())


@pytest.fixture(scope="module")
def net2d():
    torch.manual_seed(0)
    return build_model(Config(dims=2)).eval()


@pytest.fixture(scope="module")
def net3d():
    torch.manual_seed(0)
    return build_model(Config(dims=3)).eval()


def test_compute_steps_cover_and_overlap():
    for size, tile, overlap in [(100, 32, 0.5), (1024, 256, 0.25), (20, 32, 0.5), (33, 32, 0.5), (64, 32, 0.0)]:
        s = predict.compute_steps(size, tile, overlap)
        t = min(tile, size)
        assert s[0] == 0 and s[-1] + t == size
        assert all(b > a for a, b in zip(s, s[1:], strict=False))
        assert max(np.diff(s), default=0) <= t * (1 - overlap) + 1  # neighbours overlap at least as asked
    assert predict.compute_steps(64, 32, 0.0) == [0, 32]
    assert predict.compute_steps(100, 50, 0.5) == [0, 25, 50]


def test_gaussian_weight():
    w = predict.gaussian_weight((1, 9, 9))
    assert w.shape == (1, 9, 9) and w.dtype == np.float32
    assert w.max() == pytest.approx(1.0) and w.min() > 0
    assert w[0, 4, 4] == w.max()
    np.testing.assert_allclose(w, w[:, ::-1, :])
    np.testing.assert_allclose(w, w[:, :, ::-1])
    w3 = predict.gaussian_weight((5, 8, 8))
    assert w3[2].sum() > w3[0].sum()  # varies along z in 3D
    # hand-computed: sigma = 1 for a 8-long axis, centre at 3.5
    x = np.arange(8) - 3.5
    np.testing.assert_allclose(predict.gaussian_weight((1, 1, 8))[0, 0], np.exp(-0.5 * x**2) / np.exp(-0.125),
                               rtol=1e-6)


def _sigmoid_of_normalised(image: np.ndarray) -> np.ndarray:
    """What an identity network predicts: the sigmoid of the image mapped by its percentile window."""
    return 1 / (1 + np.exp(-io.normalize(image, io.intensity_range(image)).astype(np.float64)))


def test_identity_model_is_exact_and_seamless(droso_crop):
    image = droso_crop[0]
    model = Identity()
    for dims, tile in [(2, (1, 64, 64)), (3, (8, 64, 64))]:
        p = predict.predict_array(model, image, dims, tile, overlap=0.5)
        np.testing.assert_allclose(p, _sigmoid_of_normalised(image), rtol=1e-5)


def test_constant_tiles_blend_to_weighted_mean():
    """Two overlapping tiles with constant outputs 0 and 1: each voxel gets w1 / (w0 + w1) (hand-computed)."""
    calls = []

    class Const(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            out = torch.stack([torch.full_like(x[i], 1e4 if len(calls) + i else -1e4) for i in range(len(x))])
            calls.append(len(x))
            return out

    image = np.arange(96, dtype=np.uint8).reshape(1, 8, 12)  # tiles at x = 0 and x = 4 (tile 8, overlap 0.5)
    p = predict.predict_array(Const(), image, 2, (1, 8, 8), overlap=0.5, batch_size=1)
    w = predict.gaussian_weight((1, 8, 8))[0, 0]
    expect = np.zeros(12)
    expect[8:] = 1
    expect[4:8] = w[:4] / (w[4:] + w[:4])
    np.testing.assert_allclose(p[0, 0], expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
def test_blocks_equal_whole(tmp_path, droso_crop, dims, net2d, net3d):
    """Predicting in small blocks gives the same probabilities as predicting the volume whole."""
    model = net2d if dims == 2 else net3d
    image = droso_crop[0][:12, :96, :80]
    tile = (1, 64, 64) if dims == 2 else (8, 64, 64)
    whole = predict.predict_array(model, image, dims, tile, overlap=0.5)
    out = predict.predict_volume(model, image, tmp_path / "p.zarr", dims, tile, overlap=0.5, block=(5, 40, 48),
                                 dtype="float16", progress=False)
    blocks = io.open_volume(out)[:].astype(np.float32)
    np.testing.assert_allclose(blocks, whole, atol=2e-3)  # float16 storage


def test_a_2d_model_with_context_sees_each_slice_between_its_neighbours(tmp_path, lucchi_crop):
    """A 2.5D model (`context_slices` 1) gets each slice with the one above and below as channels, the end
    slices repeated past the volume's first and last slice; in blocks as whole (the region reads the halo)."""
    torch.manual_seed(0)
    model = build_model(Config(dims=2, context_slices=1)).eval()
    image = lucchi_crop[0][:7, :64, :96]
    window = io.intensity_range(image)
    whole = predict.predict_array(model, image, 2, (1, 64, 96), overlap=0.25, window=window)
    padded = io.normalize(np.concatenate([image[:1], image, image[-1:]]), window)
    x = torch.from_numpy(np.stack([padded[z:z + 3] for z in range(7)]))
    with torch.inference_mode(), autocast(torch.device("cpu")):
        expect = torch.sigmoid(model(x.contiguous(memory_format=torch.channels_last)).float())[:, 0].numpy()
    np.testing.assert_allclose(whole, expect, atol=1e-6)
    spread = Spread(model)  # the neighbours change the answer (far beyond the check's 1e-6): shown spread out
    spread.context = 1
    among = predict.predict_array(spread, image, 2, (1, 64, 96), window=window)[3]
    alone = predict.predict_array(spread, image[3:4], 2, (1, 64, 96), window=window)[0]
    assert np.abs(alone - among).max() > 0.01
    out = predict.predict_volume(model, image, tmp_path / "p.zarr", 2, (1, 64, 96), overlap=0.25, block=(2, 64, 96),
                                 dtype="float16", window=window, progress=False)
    np.testing.assert_allclose(io.open_volume(out)[:].astype(np.float32), whole, atol=2e-3)


def test_a_2d_model_of_three_planes_gives_the_mean_along_each_axis(tmp_path, lucchi_crop):
    """A 2D model of three planes (`planes` 3) predicts slice by slice along Z, Y and X and gives the mean of
    the three, each turned back to (Z, Y, X); blocks give the whole (each plane has its own global tile grid)."""
    torch.manual_seed(0)
    model = build_model(Config(dims=2, planes=3)).eval()
    image = lucchi_crop[0][:24, :40, :56]
    window = io.intensity_range(image)
    whole = predict.predict_array(model, image, 2, (1, 32, 32), overlap=0.25, window=window)
    model.planes = 1
    along = [predict.predict_array(model, np.ascontiguousarray(image.transpose(order)), 2, (1, 32, 32), overlap=0.25,
                                   window=window).transpose(np.argsort(order)) for order in io.PLANES]
    model.planes = 3
    np.testing.assert_allclose(whole, np.mean(along, axis=0), atol=1e-5)
    spread = Spread(model)  # the planes give different answers (shown spread out), so the mean is of three
    spread.planes = 1
    xy = predict.predict_array(spread, image, 2, (1, 32, 32), window=window)
    spread.planes = 3
    assert np.abs(predict.predict_array(spread, image, 2, (1, 32, 32), window=window) - xy).max() > 0.01
    out = predict.predict_volume(model, image, tmp_path / "p.zarr", 2, (1, 32, 32), overlap=0.25, block=(8, 24, 40),
                                 dtype="float16", window=window, progress=False)
    np.testing.assert_allclose(io.open_volume(out)[:].astype(np.float32), whole, atol=2e-3)


def test_an_xy_run_predicts_along_three_planes_when_asked(tmp_path, lucchi_crop, capsys, monkeypatch):
    """`predict(planes=3)` turns a run trained on XY slices into a prediction along three planes: the mean of
    the three, as a model of three planes gives it, recorded in the output's settings (a resume along one
    plane is refused); a volume that states anisotropic voxels is refused, and `planes=1` gives the XY answer."""
    import zarr

    from mitoseg import train as tr

    raw, mask = lucchi_crop
    cfg = Config(dims=2, patch_xy=64, patch_z=8, batch=1, epochs=1, iterations_per_epoch=2, warmup_iterations=1,
                 tile_xy=32, overlap=0.25, val_fraction=0.25, amp=False)
    tr.train(cfg, raw[:8], mask[:8], tmp_path / "run", progress=False)
    image = np.ascontiguousarray(raw[8:24, :40, :56])
    stored = zarr.open_array(str(tmp_path / "image.zarr"), mode="w", shape=image.shape, dtype=image.dtype)
    stored[:] = image
    stored.attrs["voxel_size"] = [5.0, 5.0, 5.0]
    opts = dict(tile_xy=32, block=(8, 24, 40), dtype="float16", amp=False, progress=False)
    out = predict.predict(tmp_path / "run", tmp_path / "image.zarr", tmp_path / "p3.zarr", planes=3, **opts)
    model, _ = tr.load_model(tmp_path / "run")
    assert model.planes == 1
    window = io.intensity_range(image)
    xy = predict.predict_array(model, image, 2, (1, 32, 32), cfg.overlap, window, amp=False)
    model.planes = 3
    expect = predict.predict_array(model, image, 2, (1, 32, 32), cfg.overlap, window, amp=False)
    got = io.open_volume(out)
    np.testing.assert_allclose(got[:].astype(np.float32), expect, atol=5e-4)  # float16 storage near 0.5
    assert np.abs(got[:] - xy).max() > 2e-3 and got.attrs["settings"]["planes"] == 3  # a barely trained model
    opened, real = [], io.open_volume
    with monkeypatch.context() as m:
        m.setattr(io, "open_volume", lambda spec: opened.append(spec) or real(spec))
        one = predict.predict(tmp_path / "run", tmp_path / "image.zarr", tmp_path / "p1.zarr", planes=1, **opts)
    assert opened.count(tmp_path / "image.zarr") == 1  # before: 3 times (a TIFF of 4000 pages: 3.9 s each)
    np.testing.assert_allclose(io.open_volume(one)[:].astype(np.float32), xy, atol=5e-4)
    # the run's post-processing chosen on validation along XY and, apart, along three planes: each applied to its own
    chosen = [postprocess.read(tmp_path / "run", planes) for planes in (1, 3)]
    assert None not in chosen and chosen[0] == postprocess.read(tmp_path / "run")
    for planes in (1, 3):
        predict.predict(tmp_path / "run", tmp_path / "image.zarr", tmp_path / f"q{planes}.zarr", planes=planes,
                        mask_out=tmp_path / f"m{planes}.zarr", **opts)
    attrs = [dict(io.open_volume(tmp_path / f"m{planes}.zarr").attrs) for planes in (1, 3)]
    for pp, attr in zip(chosen, attrs, strict=True):
        assert attr["postprocessing"] == pp.as_dict() and attr["threshold"] == pp.threshold
    # a run trained before runs chose for both: none along three planes, the mask at 0.5
    (tmp_path / "run" / postprocess.OTHER_PLANES_FILE.format(3)).unlink()
    predict.predict(tmp_path / "run", tmp_path / "image.zarr", tmp_path / "q.zarr", planes=3,
                    mask_out=tmp_path / "m.zarr", **opts)
    old = dict(io.open_volume(tmp_path / "m.zarr").attrs)
    assert "postprocessing" not in old and old["threshold"] == 0.5 and not old.get("z_sigma")
    (tmp_path / "p3.zarr").rename(tmp_path / "r.zarr.partial")  # as an interrupted run leaves it
    with pytest.raises(MitosegError, match="other settings \\(planes 3 then, 1 now\\)"):
        predict.predict(tmp_path / "run", tmp_path / "image.zarr", tmp_path / "r.zarr", planes=1, resume=True, **opts)
    stored.attrs["voxel_size"] = [50.0, 5.0, 5.0]
    with pytest.raises(MitosegError, match="near-isotropic voxels.*50 x 5 x 5 nm"):
        predict.predict(tmp_path / "run", tmp_path / "image.zarr", tmp_path / "a.zarr", planes=3, **opts)
    assert not (tmp_path / "a.zarr").exists()
    del stored.attrs["voxel_size"]  # nothing to check it by: said (before: three planes ran on it without a word)
    predict.predict(tmp_path / "run", tmp_path / "image.zarr", tmp_path / "b.zarr", planes=3, **opts)
    err = capsys.readouterr().err
    assert "note: the image states no voxel size: three planes assume near-isotropic voxels" in err
    assert "three planes on a volume of" not in err  # 16 slices: not thin
    zarr.create_array(str(tmp_path / "thin.zarr"), data=image[:2]).attrs["voxel_size"] = [5.0, 5.0, 5.0]
    predict.predict(tmp_path / "run", tmp_path / "thin.zarr", tmp_path / "t.zarr", planes=3, **opts)
    assert "note: three planes on a volume of 2 slices: its ZX and ZY slices are 2 pixels tall" in \
        capsys.readouterr().err  # before: F1 0.89 to 0.66 on one slice, in silence


def test_three_planes_predict_whole_slices_in_one_block_only_where_the_volume_is_one_block():
    """Whole-slice tiles for a 2D model of three planes would reach across every block along the other planes:
    a volume of at most `WHOLE_VOLUME_VOXELS` is one block of whole slices, a larger one gets the run's tiles
    and blocks planned as a 3D model's."""
    small, large = (165, 768, 1024), (1065, 2048, 1536)
    assert predict.default_tile(2, small, (1, 256, 256), planes=3) == (1, 768, 1024)
    assert predict.plan(np.zeros(small, np.uint8), 2, (1, 768, 1024), 0.25, window=(0, 255), planes=3).block == small
    assert predict.default_tile(2, large, (1, 256, 256), planes=3) == (1, 256, 256)
    assert predict.default_tile(2, large, (1, 256, 256)) == (1, 2048, 1536)  # one plane: whole slices
    volume = np.broadcast_to(np.uint8(0), large)  # its shape alone, no memory
    one = predict.plan(volume, 2, (1, 256, 256), 0.25, window=(0, 255)).block
    three = predict.plan(volume, 2, (1, 256, 256), 0.25, window=(0, 255), planes=3).block
    assert one[1:] == large[1:] and one[0] < 32  # whole planes, a few slices deep
    assert min(three) >= 256 and max(three) < 2 * min(three)  # about a cube, at least a tile on every axis


def test_bf16_agrees_with_float32(droso_crop, net2d):
    """bf16 autocast (on where the CPU has native bf16) stays within a few thousandths of float32."""
    image = droso_crop[0][:4, :128, :128]
    fast = predict.predict_array(net2d, image, 2, (1, 64, 64), overlap=0.25, amp=True)
    exact = predict.predict_array(net2d, image, 2, (1, 64, 64), overlap=0.25, amp=False)
    diff = np.abs(fast - exact)
    assert diff.max() < 0.05 and diff.mean() < 5e-3
    assert (diff.max() > 0) == bf16_native(torch.device("cpu"))  # amp reaches the model, and only where native


def test_tta_keeps_exact_answer_for_flip_equivariant_model(droso_crop):
    image = droso_crop[0][:4, :64, :64]
    p = predict.predict_array(Identity(), image, 2, (1, 64, 64), tta=True)
    np.testing.assert_allclose(p, _sigmoid_of_normalised(image), rtol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_tta_sets_average_over_a_group_so_the_answer_turns_and_flips_with_the_image(lucchi_crop, dims, net2d,
                                                                                   net3d, monkeypatch):
    """Averaged over a group of transforms, each undone on its prediction, a model (here an untrained,
    not equivariant one, its logits spread out) answers a turned or flipped image with its answer turned
    or flipped alike."""
    net = Spread(net2d if dims == 2 else net3d)
    image = lucchi_crop[0][:, :64, :64] if dims == 3 else lucchi_crop[0][:2, :64, :64]
    tile = image.shape if dims == 3 else (1, 64, 64)

    def run(x, tta_set):
        monkeypatch.setattr(predict, "TTA_SET", tta_set)
        return predict.predict_array(net, np.ascontiguousarray(x), dims, tile, tta=True, amp=False)

    def turn(a):
        return np.rot90(a, 1, axes=(1, 2))

    full = "dihedral_z" if dims == 3 else "dihedral"
    p = run(image, full)
    np.testing.assert_allclose(run(turn(image), full), turn(p), atol=1e-4)
    np.testing.assert_allclose(run(image[:, :, ::-1], full), p[:, :, ::-1], atol=1e-4)
    if dims == 3:
        np.testing.assert_allclose(run(image[::-1], full), p[::-1], atol=1e-4)
        assert np.abs(run(image[::-1], "dihedral")[::-1] - run(image, "dihedral")).max() > 0.01
    flips = run(image, "flips")  # four flips alone: not a group containing the quarter turn
    assert np.abs(run(turn(image), "flips") - turn(flips)).max() > 0.01
    monkeypatch.setattr(predict, "TTA_SET", "dihedral_z")
    assert (len(predict._transforms(4, True)), len(predict._transforms(5, True))) == (8, 16)  # 2D: no z flip


def test_resume_after_kill_is_identical(tmp_path, droso_crop, net2d, net3d, monkeypatch):
    image = droso_crop[0][:6, :64, :96]
    kw = dict(dims=2, tile=(1, 64, 64), overlap=0.25, block=(2, 64, 48), progress=False)
    ref = predict.predict_volume(net2d, image, tmp_path / "ref.zarr", mask_out=tmp_path / "ref_mask.zarr", **kw)

    real = predict.blend_block
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(predict, "blend_block", dying)
    out = tmp_path / "p.zarr"
    with pytest.raises(KeyboardInterrupt):
        predict.predict_volume(net2d, image, out, mask_out=tmp_path / "m.zarr", **kw)
    assert not out.exists() and io.partial_path(out).exists()  # nothing under the final name
    settings = predict.plan(image, 2, (1, 64, 64), 0.25, (2, 64, 48), predict.input_window(net2d, image))
    assert predict.predicted_alike(io.partial_path(out), settings, net2d)  # what `compare --resume` goes on with
    assert not predict.predicted_alike(io.partial_path(out), replace(settings, tta=True), net2d)
    assert not predict.predicted_alike(io.partial_path(out), settings, net3d)
    assert not predict.predicted_alike(out, settings, net2d)
    # called again as before (a notebook cell run again): refused, as the command line does (before: the finished
    # blocks were deleted silently)
    with pytest.raises(MitosegError, match="p.zarr.partial, .*m.zarr.partial: left by an earlier run"):
        predict.predict_volume(net2d, image, out, mask_out=tmp_path / "m.zarr", **kw)
    calls["n"] = -100
    seen = []
    monkeypatch.setattr(predict, "blend_block", lambda *a, **k: seen.append(1) or real(*a, **k))
    predict.predict_volume(net2d, image, out, mask_out=tmp_path / "m.zarr", resume=True, **kw)
    assert len(seen) == 6 - 3  # 6 blocks, 3 finished before the kill
    np.testing.assert_array_equal(io.open_volume(out)[:], io.open_volume(ref)[:])
    assert predict.predicted_alike(out, settings, net2d) and predict.predicted_alike(ref, settings, net2d)
    assert not predict.predicted_alike(out, replace(settings, dtype="float16"), net2d)
    np.testing.assert_array_equal(io.open_volume(tmp_path / "m.zarr")[:], io.open_volume(tmp_path / "ref_mask.zarr")[:])
    assert not io.partial_path(out).exists()
    # finished probabilities of a resumed --overwrite run (its mask pass stopped): kept alike, replaced otherwise
    # (before: predicted again whatever they were)
    model_id, shape = predict.fingerprint(net2d), image.shape
    assert predict.kept(out, None, shape, settings, model_id, None, resume=True, overwrite=True)
    assert not predict.kept(out, None, shape, replace(settings, dtype="float16"), model_id, None, True, True)
    with pytest.raises(MitosegError, match="was written with other settings"):
        predict.kept(out, None, shape, replace(settings, dtype="float16"), model_id, None, True, False)


def test_resume_refuses_another_tta_set(tmp_path, droso_crop, net2d, monkeypatch):
    image = droso_crop[0][:4, :64, :64]
    kw = dict(dims=2, tile=(1, 64, 64), overlap=0.25, block=(2, 64, 64), tta=True, progress=False)
    out, real = tmp_path / "p.zarr", predict.blend_block

    def dying(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "blend_block", dying)
    with pytest.raises(KeyboardInterrupt):
        predict.predict_volume(net2d, image, out, **kw)
    monkeypatch.setattr(predict, "blend_block", real)
    before = predict.TTA_SET
    other = next(name for name in predict.TTA_SETS if name != before)
    monkeypatch.setattr(predict, "TTA_SET", other)
    with pytest.raises(MitosegError, match=f"other settings .*tta_set '{before}' then, '{other}' now"):
        predict.predict_volume(net2d, image, out, resume=True, **kw)


def test_existing_output_refused(tmp_path, droso_crop, net2d):
    image = droso_crop[0][:2, :64, :64]
    kw = dict(dims=2, tile=(1, 64, 64), progress=False)
    predict.predict_volume(net2d, image, tmp_path / "p.zarr", **kw)
    with pytest.raises(MitosegError, match="already exists"):
        predict.predict_volume(net2d, image, tmp_path / "p.zarr", **kw)
    predict.predict_volume(net2d, image, tmp_path / "p.zarr", overwrite=True, **kw)


def test_inputs_reach_the_device_normalised_as_on_the_host(lucchi_crop):
    """`to_device` (a uint8 region through the lookup table on the device) gives `io.normalize`'s values."""
    raw = lucchi_crop[0][:3, :64, :64]
    for block in (raw, raw.astype(np.uint16), raw.astype(np.float32)):
        for rule in ("percentile", "equalize"):
            window = io.intensity_range(block, rule=rule)
            got = predict.to_device(block, window, torch.device("cpu"))
            assert got.dtype == torch.float32
            np.testing.assert_array_equal(got.numpy(), io.normalize(block, window))


def test_deeper_pipeline_writes_the_same_bytes_and_times_its_stages(tmp_path, droso_crop, net2d, monkeypatch):
    """Several reads and writes in flight (as beside a GPU) store the same bytes as one of each; the output
    records each stage's seconds."""
    image = droso_crop[0][:6, :64, :96]
    kw = dict(dims=2, tile=(1, 64, 64), overlap=0.25, block=(1, 64, 48), progress=False)
    one = predict.predict_volume(net2d, image, tmp_path / "one.zarr", mask_out=tmp_path / "m1.zarr", **kw)
    monkeypatch.setattr(predict, "pipeline_depth", lambda device: 4)
    four = predict.predict_volume(net2d, image, tmp_path / "four.zarr", mask_out=tmp_path / "m4.zarr", **kw)
    np.testing.assert_array_equal(io.open_volume(four)[:], io.open_volume(one)[:])
    np.testing.assert_array_equal(io.open_volume(tmp_path / "m4.zarr")[:], io.open_volume(tmp_path / "m1.zarr")[:])
    seconds = dict(io.open_volume(four).attrs)["seconds"]
    assert set(seconds) == {"read", "compute", "write", "wall"} and seconds["compute"] > 0
    assert 0 < seconds["wall"] and all(v >= 0 for v in seconds.values())


def test_storage_dtypes():
    p = np.array([0.0, 0.5, 0.999, 1.0], np.float32)
    np.testing.assert_array_equal(predict.to_storage(p, "uint8"), [0, 128, 255, 255])
    assert predict.to_storage(p, "float16").dtype == np.float16
    with pytest.raises(MitosegError):
        predict.to_storage(p, "int7")
    assert predict.to_storage(np.array([0.5 / 255, 1.5 / 255], np.float32), "uint8").tolist() == [0, 2]  # to even
    np.testing.assert_array_equal(predict.to_storage(torch.from_numpy(p), "uint8"), predict.to_storage(p, "uint8"))


class CountingIdentity(Identity):
    """Identity that counts the slices it is given."""

    def __init__(self):
        super().__init__()
        self.slices = 0

    def forward(self, x):
        self.slices += x.shape[0]
        return super().forward(x)


def test_whole_slice_tiles_compute_each_slice_once(tmp_path, droso_crop):
    """A 2D tile as large as the slice: one forward pass per slice, exact output, no blending seams."""
    image = droso_crop[0][:6, :200, :144]
    block = predict.default_block(image.shape, (1, 4096, 4096))
    assert block[1:] == image.shape[1:]  # blocks at least a tile wide: slices are not split between blocks
    model = CountingIdentity()
    out = predict.predict_volume(model, image, tmp_path / "p.zarr", 2, (1, 4096, 4096), overlap=0.25,
                                 dtype="float16", progress=False)
    assert model.slices == image.shape[0]
    window = io.intensity_range(image)
    expect = 1 / (1 + np.exp(-io.normalize(image, window)))
    np.testing.assert_allclose(io.open_volume(out)[:].astype(np.float32), expect, atol=2e-3)


def test_default_tile_is_the_whole_slice_for_2d_up_to_2048_squared():
    assert predict.default_tile(2, (1065, 2048, 1536), (1, 256, 256)) == (1, 2048, 1536)
    assert predict.default_tile(2, (10, 2048, 2048), (1, 256, 256)) == (1, 2048, 2048)
    assert predict.default_tile(2, (10, 2049, 2048), (1, 256, 256)) == (1, 256, 256)
    assert predict.default_tile(3, (20, 512, 512), (32, 256, 256)) == (32, 256, 256)


def _old_default_block(shape, tile, budget=2**25):
    """The rule before the tile count was planned: 1024-wide in-plane blocks, as deep as the budget allows."""
    by, bx = min(shape[1], max(1024, tile[1])), min(shape[2], max(1024, tile[2]))
    return (min(shape[0], max(tile[0], budget // (by * bx))), by, bx)


def _tiles(shape, block, tile, overlap=0.25):
    counts = [predict.tiles_per_length(s, t, overlap)[b] for s, b, t in zip(shape, block, tile, strict=True)]
    return int(np.prod(counts))


def test_default_block_computes_fewer_tiles_within_the_budget():
    assert predict.default_block((1065, 2048, 1536), (1, 2048, 1536)) == (10, 2048, 1536)  # whole planes
    assert predict.default_block((8, 300, 200), (1, 256, 256)) == (8, 300, 200)  # small: one block
    for shape, tile in [((165, 768, 1024), (32, 256, 256)), ((1065, 2048, 1536), (32, 256, 256)),
                        ((1065, 2048, 1536), (1, 256, 256)), ((20, 4000, 4000), (1, 256, 256))]:
        block = predict.default_block(shape, tile)
        assert np.prod(block) <= 2**25
        assert all(t <= b <= s for s, b, t in zip(shape, block, tile, strict=True))
        assert _tiles(shape, block, tile) < _tiles(shape, _old_default_block(shape, tile), tile)
    # the full study shape with the 3D tile: 23 % fewer tiles than 32 x 1024 x 1024 blocks
    shape, tile = (1065, 2048, 1536), (32, 256, 256)
    assert _tiles(shape, predict.default_block(shape, tile), tile) <= 0.78 * _tiles(shape, (32, 1024, 1024), tile)


def test_tiles_per_length_counts_the_tiles_the_engine_computes(tmp_path, droso_crop):
    """The block plan's cost model is what predict_volume really runs: one forward per tile and block."""
    image = droso_crop[0][:20, :96, :80]
    tile, block = (8, 32, 32), (7, 40, 80)
    model = CountingIdentity()
    predict.predict_volume(model, image, tmp_path / "p.zarr", 3, tile, overlap=0.25, block=block, batch_size=1,
                           dtype="float16", progress=False)
    assert model.slices == _tiles(image.shape, block, tile)


def test_a_block_that_computes_many_more_tiles_is_noted(droso_crop, capsys):
    """`--block 1 1 1` was accepted in silence: every voxel's block computes each tile over it."""
    image = droso_crop[0][:20, :96, :80]
    tile = (8, 32, 32)
    default = predict.plan(image, 3, tile, 0.25).block
    assert capsys.readouterr().err == ""
    assert predict.plan(image, 3, tile, 0.25, block=default).block == default
    assert capsys.readouterr().err == ""
    assert predict.plan(image, 3, tile, 0.25, block=(2, 4, 4)).block == (2, 4, 4)
    note = capsys.readouterr().err
    given, best = _tiles(image.shape, (2, 4, 4), tile), _tiles(image.shape, default, tile)
    assert f"computes {given} tiles, {given / best:.0f} times the {best} of the default block" in note




def test_a_run_trained_with_equalize_predicts_with_its_rule(tmp_path, lucchi_crop):
    """`predict.predict` normalises a volume by the run's rule: an equalize run records the volume's
    equalising window (256 levels, not the linear 2) and its output is the in-memory prediction with it."""
    import tifffile

    from mitoseg import train as tr

    raw, mask = lucchi_crop
    cfg = Config(dims=2, patch_xy=64, patch_z=8, batch=1, epochs=1, iterations_per_epoch=2, warmup_iterations=1,
                 tile_xy=128, tile_z=8, overlap=0.25, val_fraction=0.25, normalize="equalize", amp=False)
    tr.train(cfg, raw[:8], mask[:8], tmp_path / "run", progress=False)
    model, cfg = tr.load_model(tmp_path / "run")
    assert cfg.normalize == "equalize"
    image = raw[8:12, :128, :128]
    tifffile.imwrite(tmp_path / "image.tif", image)
    out = predict.predict(tmp_path / "run", tmp_path / "image.tif", tmp_path / "p.zarr", dtype="float16",
                          amp=False, progress=False)
    window = io.intensity_range(image, rule="equalize")
    assert tuple(io.open_volume(out).attrs["window"]) == window
    tile = predict.run_tile(cfg, image.shape, None, None)
    expect = predict.predict_array(model, image, 2, tile, cfg.overlap, window, amp=False)
    np.testing.assert_allclose(io.open_volume(out)[:].astype(np.float32), expect, atol=2e-3)  # float16 storage
    # the loaded model carries its rule: the low-level calls without a window use it, not the linear one
    assert predict.input_rule(model) == "equalize"
    np.testing.assert_array_equal(predict.predict_array(model, image, 2, tile, cfg.overlap, amp=False), expect)
    default = predict.predict_volume(model, image, tmp_path / "d.zarr", 2, tile, cfg.overlap, dtype="float16",
                                     amp=False, progress=False)
    np.testing.assert_array_equal(io.open_volume(default)[:], io.open_volume(out)[:])
    assert tuple(io.open_volume(default).attrs["window"]) == window


def test_mask_written_in_blocks_equals_the_whole_volume_smoothed_along_z(tmp_path, lucchi_crop):
    """`write_mask` reads `postprocess.halo` slices beyond each block (`postprocess.ZSmoothed`): on blocks 3
    slices deep, with a blur reaching 4 and 10 slices, its mask is the whole volume's (`postprocess.apply`),
    ends included."""
    import zarr

    from mitoseg import postprocess

    probs = jittered_probabilities(lucchi_crop[1])
    zarr.create_array(str(tmp_path / "p.zarr"), data=probs, chunks=(3, 128, 128))
    for sigma in (1.0, 2.5):
        pp = postprocess.PostProcessing(0.6, z_sigma=sigma)
        out = predict.write_mask(tmp_path / "p.zarr", tmp_path / f"m{sigma}.zarr", pp, progress=False)
        expect = postprocess.apply(probs, pp)
        assert not (expect == (probs >= 153)).all()
        np.testing.assert_array_equal(io.open_volume(out)[:], expect)
        assert io.open_volume(out).attrs["z_sigma"] == sigma


def test_the_block_engine_refuses_dims_not_the_models_and_its_own_input_as_output(tmp_path, droso_crop, net3d):
    """`predict_volume` (the engine under `predict`): dims that are not the model's would fail deep in torch
    after the output was begun; an output named as its input would replace it. Both refused before writing;
    `predict` with no model at all too."""
    zarr_path = tmp_path / "raw.zarr"
    zarr.create_array(str(zarr_path), data=droso_crop[0][:8, :64, :64], chunks=(8, 64, 64))
    with pytest.raises(MitosegError, match=r"takes a loaded model \(train.load_model\), not a str"):
        predict.predict_volume("runs/unet3d", str(zarr_path), tmp_path / "p.zarr", 3, (8, 64, 64), progress=False)
    with pytest.raises(MitosegError, match=r"dims must be 3 \(the model's\), not 2"):
        predict.predict_volume(net3d, str(zarr_path), tmp_path / "p.zarr", 2, (8, 64, 64), progress=False)
    with pytest.raises(MitosegError, match="is an input of this command"):
        predict.predict_volume(net3d, str(zarr_path), str(zarr_path), 3, (8, 64, 64), overwrite=True,
                               progress=False)
    with pytest.raises(MitosegError, match=r"must be a volume \(Z, Y, X\), not an array of shape \(64, 64\)"):
        predict.predict_volume(net3d, droso_crop[0][0, :64, :64], tmp_path / "p.zarr", 3, (8, 64, 64), progress=False)
    # before: an AttributeError and a ValueError of zip() deep inside
    with pytest.raises(MitosegError, match="predict_volume takes a volume's path or an array .*, not a list"):
        predict.predict_volume(net3d, droso_crop[0][:8, :64, :64].tolist(), tmp_path / "p.zarr", 3, (8, 64, 64))
    with pytest.raises(MitosegError, match=r"tile must be three numbers \(z, y, x\), not \(64, 64\)"):
        predict.predict_volume(net3d, str(zarr_path), tmp_path / "p.zarr", 3, (64, 64), progress=False)
    with pytest.raises(MitosegError, match=r"must be a volume \(Z, Y, X\), not an array of shape \(64, 64\)"):
        predict.predict_array(net3d, droso_crop[0][0, :64, :64], 3, (8, 64, 64))  # before: an IndexError
    with pytest.raises(MitosegError, match=r"dims must be 3 \(the model's\), not 2"):
        predict.predict_array(net3d, droso_crop[0][:8, :64, :64], 2, (8, 64, 64))  # before: deep in torch
    for tile, overlap, said in (((8, 64, 64), 1.0, r"overlap must be a number in \[0, 1\), not 1.0"),  # before: a
                                ((8, 64, 64), -0.5, "overlap must be .*, not -0.5"),  # tile per voxel, for hours
                                ((64, 64), 0.25, r"tile must be three numbers \(z, y, x\), not \(64, 64\)")):
        with pytest.raises(MitosegError, match=said):
            predict.predict_array(net3d, droso_crop[0][:8, :64, :64], 3, tile, overlap)
    with pytest.raises(MitosegError, match="predict_array takes an array .*, not a str"):
        predict.predict_array(net3d, str(zarr_path), 3, (8, 64, 64))
    with pytest.raises(MitosegError, match="predict.predict takes run folders or checkpoints .*, not a loaded model"):
        predict.predict(net3d, str(zarr_path), tmp_path / "p.zarr")  # before: a TypeError, not iterable
    probs = tmp_path / "probs.zarr"
    zarr.create_array(str(probs), data=droso_crop[1][:8, :64, :64]).attrs["kind"] = "probability"
    with pytest.raises(MitosegError, match="probs.zarr is a mitoseg probability output, not the EM image"):
        predict.predict_volume(net3d, str(probs), tmp_path / "p.zarr", 3, (8, 64, 64), progress=False)
    io.remove(probs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.zarr"]
    with pytest.raises(MitosegError, match="no model given"):
        predict.predict([], str(zarr_path), tmp_path / "p.zarr")


def test_float16_probabilities_meet_a_threshold_exactly(droso_crop, tmp_path):
    """float16 probabilities of a real mask with soft edges, near 0.4 (which float16 holds as 0.39990234375):
    the mask `predict` writes, `evaluate`'s and `label`'s foreground and `postprocess.apply` all count a voxel
    when its stored value is >= 0.4 as a number, not >= 0.4 rounded to float16."""
    from mitoseg import instances, metrics

    soft = jittered_probabilities(droso_crop[1]).astype(np.float32) / 255
    stored = (soft + (np.float16(0.4) - np.float32(0.4)) * (np.abs(soft - 0.4) < 0.01)).astype(np.float16)
    exact = stored.astype(np.float64) >= 0.4
    assert (stored == np.float16(0.4)).any() and (stored.astype(np.float64) < 0.4).any()  # some just under
    settings = predict.Settings((1, 64, 64), 0.25, (0.0, 1.0), (20, 256, 256), dtype="float16", threshold=0.4)
    np.testing.assert_array_equal(predict.encode_block(torch.as_tensor(stored), settings, True)[1], exact)
    np.testing.assert_array_equal(metrics._foreground(stored, 0.4), exact)
    np.testing.assert_array_equal(instances._foreground(stored, 0.4), exact)
    np.testing.assert_array_equal(postprocess.apply(stored, postprocess.PostProcessing(0.4)), exact)


def test_chunks_far_deeper_than_the_blocks_are_noted(tmp_path, droso_crop, net2d, capsys):
    """A Zarr whose chunks are 16 slices deep under 1-slice blocks: each block decompresses 16 times what it needs
    (512-deep chunks under 8-slice blocks: 64 times), said in one note (before: nothing); 8 times (as 64-deep
    chunks under a 2D model's 8-slice blocks) is not noted."""
    path = tmp_path / "deep.zarr"
    zarr.create_array(str(path), data=droso_crop[0][:16, :64, :64], chunks=(16, 64, 64))
    predict.predict_volume(net2d, str(path), tmp_path / "p.zarr", 2, (1, 64, 64), block=(1, 64, 64), progress=False)
    assert "note: the image is stored in chunks of (16, 64, 64) voxels and predicted in blocks of (1, 64, 64): each " \
           "block decompresses about 16 times the voxels it needs" in capsys.readouterr().err
    predict.predict_volume(net2d, str(path), tmp_path / "q.zarr", 2, (1, 64, 64), block=(2, 64, 64), progress=False)
    assert "chunks" not in capsys.readouterr().err  # 8 times: not noted
    assert predict.chunk_note(((8,), (64,), (64,)), (2, 64, 64)) is None  # a Dask array's chunks


def test_the_runs_post_processing_keeps_its_nm_on_other_voxels(tmp_path, lucchi_crop, capsys):
    """A run's choice made on 5 nm sections (a Z blur of 8 slices, objects of 500 voxels) applied to 50 nm sections:
    kept in nm, 0.8 slices and 50 voxels, and said (before: 8 slices, 400 nm; an audit saw a Drosophila mask's
    IoU fall from 0.262 to 0.152 by it)."""
    import json

    from mitoseg import train as tr

    raw, mask = lucchi_crop
    cfg = Config(dims=2, patch_xy=64, patch_z=8, batch=1, epochs=1, iterations_per_epoch=2, warmup_iterations=1,
                 tile_xy=64, overlap=0.25, val_fraction=0.25, amp=False, voxel_size=(5.0, 5.0, 5.0))
    tr.train(cfg, raw[:8], mask[:8], tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / postprocess.FILE).read_text())
    saved["chosen"] = postprocess.PostProcessing(0.5, 500, False, 8.0).as_dict()
    (tmp_path / "run" / postprocess.FILE).write_text(json.dumps(saved))
    stored = zarr.create_array(str(tmp_path / "image.zarr"), data=np.ascontiguousarray(raw[8:16, :64, :64]))
    stored.attrs["voxel_size"] = [50.0, 5.0, 5.0]
    capsys.readouterr()
    predict.predict(tmp_path / "run", tmp_path / "image.zarr", tmp_path / "p.zarr", mask_out=tmp_path / "m.zarr",
                    amp=False, progress=False)
    err = capsys.readouterr().err
    assert "on these 50 x 5 x 5 nm ones it blurs 0.8 slices along Z (not 8) and keeps objects of 50 voxels or more " \
           "(not 500)" in err
    assert err.count("note: the run's post-processing") == 1  # before: twice (the probabilities' pass said it again)
    assert io.open_volume(tmp_path / "m.zarr").attrs["z_sigma"] == 0.8
    assert io.open_volume(tmp_path / "p.zarr").attrs["postprocessing"]["min_size"] == 50  # what `label` applies
    stored.attrs["voxel_size"] = [5.0, 5.0, 5.0]  # the run's own voxels: as chosen
    predict.predict(tmp_path / "run", tmp_path / "image.zarr", tmp_path / "q.zarr", mask_out=tmp_path / "n.zarr",
                    amp=False, progress=False)
    assert io.open_volume(tmp_path / "n.zarr").attrs["z_sigma"] == 8.0 and "blurs" not in capsys.readouterr().err
    stored.attrs["voxel_size"] = [5.0, 10.0, 10.0]  # its minimum size alone changes: said alone (before: "blurs 8
    predict.predict(tmp_path / "run", tmp_path / "image.zarr", tmp_path / "r.zarr", amp=False, progress=False)
    assert "ones it keeps objects of 125 voxels or more (not 500): the same nm" in capsys.readouterr().err  # (not 8)")
    predict.predict(tmp_path / "run", tmp_path / "image.zarr", tmp_path / "s.zarr", mask_out=tmp_path / "sm.zarr",
                    threshold=0.5, amp=False, progress=False)  # --threshold: no choice applied, none described
    assert "post-processing was chosen" not in capsys.readouterr().err


def test_outputs_finish_together(tmp_path, droso_crop, net2d, monkeypatch):
    image = droso_crop[0][:4, :64, :64]
    kw = dict(dims=2, tile=(1, 64, 64), overlap=0.25, block=(2, 64, 64), progress=False)
    predict.predict_volume(net2d, image, tmp_path / "ref.ome.zarr", mask_out=tmp_path / "ref_mask.ome.zarr", **kw)
    out, mask = tmp_path / "p.ome.zarr", tmp_path / "m.ome.zarr"
    with monkeypatch.context() as m:  # Ctrl-C while the mask's pyramid is built, every block written
        m.setattr(omezarr, "write_pyramid", dies_on_call(omezarr.write_pyramid, 2))
        with pytest.raises(KeyboardInterrupt):
            predict.predict_volume(net2d, image, out, mask_out=mask, **kw)
    # before: the probabilities were finished already, and --resume refused them ("already exists")
    assert not out.exists() and not mask.exists() and io.partial_path(out).exists()
    predict.predict_volume(net2d, image, out, mask_out=mask, resume=True, **kw)
    for got, ref in ((out, "ref.ome.zarr"), (mask, "ref_mask.ome.zarr")):
        np.testing.assert_array_equal(io.open_volume(got)[:], io.open_volume(tmp_path / ref)[:])
    predict.predict_volume(net2d, image, out, mask_out=mask, overwrite=True, **kw)  # old outputs replaced
    np.testing.assert_array_equal(io.open_volume(mask)[:], io.open_volume(tmp_path / "ref_mask.ome.zarr")[:])

