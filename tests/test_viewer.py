"""The napari plugin on a real CA1 crop, headless (QT_QPA_PLATFORM=offscreen): outputs written by the real
predict and label code open through napari's npe2 reader lookup at 5 nm, and the widget segments an image
layer in a thread worker. Layers go into napari's ViewerModel: the Qt viewer's canvas needs OpenGL, which
the offscreen platform lacks (the widget itself is real Qt)."""

import json
import os
import re
import shutil
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
import zarr
from conftest import missing

from mitoseg import blocks, cli, instances, io, predict
from mitoseg import train as tr
from mitoseg.config import Config

VOXEL = (5.0, 5.0, 5.0)
CROP = np.s_[60:76, 64:192, 256:384]  # 16 x 128 x 128 of the CA1 test volume, with 3 mitochondria


@pytest.fixture(scope="module")
def napari():
    try:
        import napari
        import napari.components  # noqa: F401
    except ImportError as e:
        missing(f"napari ({e}): pip install -e '.[dev]'")  # fails in CI, where it must be installed
    import npe2

    npe2.PluginManager.instance().discover()  # what napari.Viewer() does first: finds mitoseg's manifest
    return napari


@pytest.fixture(scope="module")
def run(tmp_path_factory, lucchi_crop):
    """A 2D model trained for 2 iterations on a CA1 training crop (tests/test_train.py's tiny config, smaller)."""
    cfg = Config(dims=2, patch_xy=64, patch_z=2, batch=1, epochs=1, iterations_per_epoch=2, warmup_iterations=1,
                 tile_xy=64, tile_z=8, overlap=0.25, val_fraction=0.25, voxel_size=VOXEL)
    folder = tmp_path_factory.mktemp("run") / "tiny"
    tr.train(cfg, lucchi_crop[0][:8, :128, :128], lucchi_crop[1][:8, :128, :128], folder, progress=False)
    return folder


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, lucchi_dir, run):
    """A CA1 test crop as an OME-Zarr image, its probabilities (OME-Zarr) and mask (plain Zarr) from
    `predict.predict`, and its ground truth labelled by `instances.label_volume` into OME-Zarr, alone and
    as the image's NGFF image-label "truth"."""
    d = tmp_path_factory.mktemp("outputs")
    raw = np.asarray(io.open_volume(lucchi_dir / "testing.tif")[CROP])
    truth = io.binarize(io.open_volume(lucchi_dir / "testing_groundtruth.tif")[CROP])
    for name, data, kind in (("image.ome.zarr", raw, "image"), ("truth.ome.zarr", truth, "mask")):
        out = blocks.open_output(d / name, data.shape, data.dtype, data.shape, {}, {"kind": kind, "voxel_size": VOXEL})
        out.write(tuple(slice(0, s) for s in data.shape), data)
        blocks.finish(out)
    predict.predict(run, d / "image.ome.zarr", d / "probs.ome.zarr", mask_out=d / "mask.zarr", progress=False)
    n = instances.label_volume(d / "truth.ome.zarr", d / "labels.ome.zarr", progress=False)
    assert n == 3
    instances.label_volume(d / "truth.ome.zarr", d / "image.ome.zarr" / "labels" / "truth", progress=False)
    return d, raw


def test_reader_opens_outputs_lazily_at_physical_scale(napari, outputs):
    import dask.array as da

    d, raw = outputs
    viewer = napari.components.ViewerModel()
    for name in ("image.ome.zarr", "probs.ome.zarr", "mask.zarr", "labels.ome.zarr"):
        viewer.open(d / name, plugin="mitoseg")  # napari finds our npe2 reader through the entry point
    kinds = {x.name: (type(x).__name__, x.metadata["mitoseg_kind"]) for x in viewer.layers}
    assert kinds == {"image": ("Image", "image"), "truth": ("Labels", "labels"), "probs": ("Image", "probability"),
                     "mask": ("Labels", "mask"), "labels": ("Labels", "labels")}
    for layer in viewer.layers:
        assert tuple(layer.scale) == VOXEL and [str(u) for u in layer.units] == ["nanometer"] * 3
        levels = layer.data if layer.multiscale else [layer.data]
        assert all(isinstance(level, da.Array) for level in levels)
        assert levels[0].shape == raw.shape
    ome = viewer.layers["labels"]
    assert ome.multiscale and [x.shape for x in ome.data] == [(16, 128, 128), (8, 64, 64)]  # the pyramid
    np.testing.assert_array_equal(np.asarray(ome.data[0]), io.open_volume(d / "labels.ome.zarr")[:])
    np.testing.assert_array_equal(np.asarray(viewer.layers["truth"].data[0]), np.asarray(ome.data[0]))
    np.testing.assert_array_equal(np.asarray(viewer.layers["image"].data[0]), raw)
    assert viewer.layers["probs"].contrast_limits == [0.0, 255.0]
    assert not viewer.layers["mask"].multiscale  # a plain Zarr output (its voxel size in its attributes)
    # a volume that states no voxel size is in pixels (the scale bar must not call them nm); Zarr of other
    # content is declined (napari may offer it to another reader) rather than raising in napari
    from mitoseg.viewer import napari_get_reader

    zarr.create_array(str(d / "plain.zarr"), data=raw)
    _, meta, _ = napari_get_reader(str(d / "plain.zarr"))(str(d / "plain.zarr"))[0]
    assert meta["units"] == "pixel" and meta["scale"] == (1.0, 1.0, 1.0)
    zarr.open_group(str(d / "empty.zarr"), mode="w")
    zarr.create_array(str(d / "flat.zarr"), data=raw[0])
    other = zarr.open_group(str(d / "other.zarr"), mode="w")
    other.create_array("a", data=raw[0])
    other.create_array("b", data=raw[:2])
    assert [napari_get_reader(str(d / n)) for n in ("empty.zarr", "flat.zarr", "other.zarr")] == [None] * 3
    # an interrupted output's unfinished blocks are zeros: declined, and said (before: opened as finished)
    from mitoseg.viewer import layer_data

    shutil.copytree(d / "mask.zarr", d / "cut.zarr.partial")
    said = []
    with pytest.MonkeyPatch.context() as m:  # napari alone says "refused the file", not why
        m.setattr("napari.utils.notifications.show_warning", said.append)
        assert napari_get_reader(str(d / "cut.zarr.partial")) is None
    assert len(said) == 1 and "cut.zarr.partial is the unfinished output of a stopped run" in said[0]
    with pytest.raises(io.MitosegError, match=r"cut.zarr.partial is the unfinished output of a stopped run: finish "
                                           r"cut.zarr first \(predict and label go on with --resume"):
        layer_data(d / "cut.zarr.partial")


def test_reader_opens_a_compare_report_folder(napari, outputs):
    d, _ = outputs
    report = d / "report"
    (report / "model_2D").mkdir(parents=True)
    (report / "compare.json").write_text("{}")
    (report / "report.json").write_text(json.dumps(
        {"data": {"name": "lucchi", "voxel_size": list(VOXEL), "test_shape": [165, 768, 1024]}}))
    probs = io.open_volume(d / "probs.ome.zarr")[:]
    zarr.create_array(str(report / "model_2D" / "test_probs.zarr"), data=probs, chunks=probs.shape)  # as compare
    labels = instances.label(probs >= 128)
    zarr.create_array(str(report / "model_2D" / "test_labels.zarr"), data=labels, chunks=labels.shape)
    viewer = napari.components.ViewerModel()
    viewer.open(report, plugin="mitoseg")
    assert [(x.name, type(x).__name__) for x in viewer.layers] == [
        ("test image", "Image"), ("2D probability", "Image"), ("2D instances", "Labels")]
    assert viewer.layers["test image"].data.shape == (165, 768, 1024)  # the CA1 test volume, lazily
    assert all(tuple(x.scale) == VOXEL for x in viewer.layers)
    np.testing.assert_array_equal(np.asarray(viewer.layers["2D instances"].data), labels)
    # another tool's report.json is no compare report (before: KeyError 'data', or a JSONDecodeError)
    from mitoseg.viewer import napari_get_reader

    for text in ('{"tool": "other"}', "{not json"):
        (d / "other").mkdir(exist_ok=True)
        (d / "other" / "report.json").write_text(text)
        assert napari_get_reader(str(d / "other")) is None


def test_widget_predicts_and_labels_in_a_thread_worker(napari, outputs, run, qtbot, tmp_path):
    """The widget takes a run folder's post-processing chosen on validation (its threshold, minimum size and Z
    smoothing; here one written for the test), which the user may change, and labels what `segment` predicts."""
    from mitoseg import postprocess
    from mitoseg.viewer import SegmentWidget

    _, raw = outputs
    net, cfg = tr.load_model(run)  # the same numbers as one in-memory prediction of the whole crop
    whole = predict.to_storage(predict.predict_array(net, raw, 2, (1, 128, 128), cfg.overlap), "uint8")
    t = round(float(np.median(whole)) / 255, 2)  # the model has barely learned: a threshold that splits its output
    chosen = tmp_path / "chosen"
    shutil.copytree(run, chosen)
    postprocess.save(chosen, postprocess.PostProcessing(t, 50, True, 2.0), [], "raw")
    postprocess.save(chosen, postprocess.PostProcessing(0.4, 100), [], "raw", other_planes=3)
    viewer = napari.components.ViewerModel()
    viewer.add_image(raw, name="crop", scale=VOXEL, translate=(300.0, 0.0, 0.0), units="nm")
    widget = SegmentWidget(viewer)
    assert widget.image.value is viewer.layers["crop"]
    widget.model.value = chosen
    assert (widget.threshold.value, widget.min_size.value, widget.z_sigma.value) == (t, 50, 2.0)
    assert widget.status.value == "the run's post-processing chosen on validation (its hole filling is not applied)"
    widget.planes.value = True  # an XY run along three planes: the choice its validation made for them
    assert (widget.threshold.value, widget.min_size.value, widget.z_sigma.value) == (0.4, 100, 0.0)
    assert widget.status.value == "the run's post-processing chosen on validation along three planes"
    widget.planes.value = False
    (chosen / postprocess.OTHER_PLANES_FILE.format(3)).unlink()  # a run trained before it chose for three planes
    widget.planes.value = True
    assert (widget.threshold.value, widget.min_size.value, widget.z_sigma.value) == (0.5, 0, 0.0)
    assert widget.status.value == "the run's post-processing was not chosen along three planes"
    widget.planes.value = False
    assert (widget.threshold.value, widget.min_size.value, widget.z_sigma.value) == (t, 50, 2.0)
    widget.min_size.value = 20
    widget.run.changed.emit(True)
    assert not widget.run.enabled  # running in the worker thread; the viewer stays responsive
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=60_000)
    unlearned = predict.unlearned(chosen)  # the tiny run has not learned: said under the result, as predict says it
    assert unlearned is not None
    status = widget.status.value.split("\n")
    assert re.fullmatch(r"1 object|\d+ objects", status[0]) and status[1:] == [unlearned.removeprefix("mitoseg: ")]
    probs, labels = viewer.layers["crop probability"], viewer.layers["crop instances"]
    assert type(probs).__name__ == "Image" and type(labels).__name__ == "Labels"
    for layer in (probs, labels):
        assert layer.data.shape == raw.shape and tuple(layer.scale) == VOXEL
        assert tuple(layer.translate) == (300.0, 0.0, 0.0)
    assert widget.progress.value == widget.progress.max > 1
    assert np.abs(probs.data.astype(int) - whole).max() <= 1
    blurred = postprocess.smooth_z(probs.data, 2.0) >= t * 255
    assert 0 < blurred.mean() < 1 and not np.array_equal(blurred, probs.data >= t * 255)
    np.testing.assert_array_equal(labels.data, instances.label(blurred, 26, min_size=20))

    widget.model.value = chosen / "best.pt"  # a checkpoint alone: the defaults, not the previous run's choice
    assert (widget.threshold.value, widget.min_size.value, widget.z_sigma.value) == (0.5, 0, 0.0)
    crop = viewer.layers["crop"]
    crop.scale, crop.translate, crop.units = (0.01, 0.01, 0.01), (0.0, 0.0, 0.0), "um"
    widget.start()  # again, the image rescaled to 10 nm (in µm) and moved: its outputs follow it, units too
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=60_000)
    for layer in (viewer.layers["crop probability"], viewer.layers["crop instances"]):
        assert tuple(layer.scale) == (0.01, 0.01, 0.01) and tuple(layer.translate) == (0.0, 0.0, 0.0)
        assert [str(u) for u in layer.units] == ["micrometer"] * 3  # before: nanometer, as on the first run
    # the note `mitoseg predict` prints is shown under the result (before: on a console a launcher hides)
    status = widget.status.value.split("\n")
    assert re.fullmatch(r"1 object|\d+ objects", status[0]) and status[1:] == [
        "note: the model was trained on 5 x 5 nm voxels and the image's are 10 x 10 nm: its accuracy on them "
        "is unmeasured (resample the image to the model's voxels, or train on such voxels)"], widget.status.value
    # (a checkpoint alone, this time: no summary says whether it learned)
    crop.scale, crop.units = (10.0, 10.0, 10.0), "nm"
    viewer.layers["crop"].scale = (50.0, 5.0, 5.0)  # ssTEM-like sections: three planes are refused, as by predict
    widget.planes.value = True
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=10_000)
    assert "near-isotropic voxels" in widget.status.value, widget.status.value
    viewer.layers["crop"].scale, viewer.layers["crop"].units = (0.05, 0.005, 0.005), "um"  # other readers' unit
    widget.start()  # before: taken as pixels, three planes ran on 10x anisotropic voxels
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=10_000)
    assert "near-isotropic voxels" in widget.status.value, widget.status.value
    widget.planes.value = False
    widget.image.value = viewer.layers["crop probability"]  # its own output: refused, as predict refuses it
    assert widget.start() is None and widget.status.value == ("crop probability holds a mitoseg probability, not an "
                                                              "EM image: choose the image layer")
    widget.image.value = viewer.layers["crop"]
    viewer.add_image((raw > 128).astype(np.uint8) * 255, name="mask as image", scale=VOXEL, units="nm")
    widget.image.value = viewer.layers["mask as image"]  # refused as `mitoseg predict` refuses it (before: segmented)
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=10_000)
    assert widget.status.value == ("error: the image holds only the grey levels 0, 255 (sampled): a mask or labels "
                                   "(image and labels swapped?) or a blank export, not an EM image")
    viewer.layers.remove("mask as image")
    widget.image.value = viewer.layers["crop"]

    widget.model.value = outputs[0]  # a folder without a checkpoint: the error is shown, nothing is added
    widget.start()
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=10_000)
    assert "holds no trained model" in widget.status.value and len(viewer.layers) == 3


def test_segment_along_three_planes_goes_in_one_block_and_gives_the_mean(run, lucchi_crop):
    """`segment(planes=3)` with an XY run: the crop (whole slices along every axis) is one block, one step and
    the labels; its probabilities are the three-plane prediction of the whole crop (the mean of the three)."""
    from mitoseg.viewer import segment

    raw = lucchi_crop[0][8:24, :128, :128]
    steps = segment(raw, run, planes=3)
    seen = []
    while True:
        try:
            seen.append(next(steps))
        except StopIteration as done:
            probs, labels = done.value
            break
    assert seen == ["note: the image states no voxel size: three planes assume near-isotropic voxels (give "
                    "--voxel-size to have that checked)", (1, 2), predict.unlearned(run), (2, 2)]  # the widget shows
    # the notes; the tiny run has not learned
    net, cfg = tr.load_model(run, planes=3)
    expect = predict.to_storage(predict.predict_array(net, raw, 2, (1, 128, 128), cfg.overlap), "uint8")
    np.testing.assert_array_equal(probs, expect)
    net.planes = 1
    assert (predict.to_storage(predict.predict_array(net, raw, 2, (1, 128, 128), cfg.overlap), "uint8") != probs).any()
    assert labels.shape == raw.shape and labels.dtype == np.uint32


def test_view_command_opens_the_outputs(napari, outputs, monkeypatch):
    from mitoseg.viewer import scale_bar

    d, _ = outputs
    opened = []
    monkeypatch.setattr(napari, "Viewer", lambda: opened.append(napari.components.ViewerModel()) or opened[-1])
    monkeypatch.setattr(napari, "run", lambda: None)  # the event loop would wait for the window to close
    assert cli.main(["view", str(d / "image.ome.zarr")]) == 2  # offscreen (these tests'): no window, one line
    assert not opened
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")  # a display, as far as mitoseg can tell
    assert cli.main(["view", str(d / "image.ome.zarr"), str(d / "labels.ome.zarr")]) == 0
    assert [x.name for x in opened[0].layers] == ["image", "truth", "labels"] and scale_bar(opened[0]).visible


def test_view_overlays_an_image_stating_no_voxel_size_on_its_outputs(napari, outputs, tmp_path, capsys):
    """`mitoseg view IMAGE.tif OUTPUTS`: the TIFF stating no voxel size is shown at the outputs' (before: in
    pixels, 5 times smaller, silently); a TIFF `convert` wrote from instance labels opens as a Labels layer
    (before: a grey image); different voxel sizes are said."""
    import tifffile

    from mitoseg import convert
    from mitoseg.viewer import add_layers

    d, raw = outputs
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    convert.convert(d / "labels.ome.zarr", tmp_path / "labels.tif", progress=False)
    viewer = napari.components.ViewerModel()
    capsys.readouterr()
    add_layers(viewer, [tmp_path / "raw.tif", d / "probs.ome.zarr", tmp_path / "labels.tif"])
    assert [(x.name, type(x).__name__, tuple(x.scale)) for x in viewer.layers] == [
        ("raw", "Image", VOXEL), ("probs", "Image", VOXEL), ("labels", "Labels", VOXEL)]
    assert capsys.readouterr().err == (f"note: {tmp_path / 'raw.tif'} states no voxel size: shown at "
                                       f"{d / 'probs.ome.zarr'}'s 5 x 5 x 5 nm to overlay it (give --voxel-size to "
                                       "choose another)\n")
    add_layers(napari.components.ViewerModel(), [tmp_path / "raw.tif", d / "probs.ome.zarr"], (10.0, 10.0, 10.0))
    assert "shown at different voxel sizes and do not overlay voxel for voxel: " in capsys.readouterr().err
    tifffile.imwrite(tmp_path / "fiji.tif", raw, imagej=True, resolution=(1 / 4.9, 1 / 4.9),
                     metadata={"spacing": 29.0, "unit": "nm", "axes": "ZYX"})
    zarr.create_array(str(tmp_path / "um.zarr"), data=raw).attrs["voxel_size"] = [29.0, 0.0049 * 1000, 0.0049 * 1000]
    viewer = napari.components.ViewerModel()  # 4.8999999999999995 nm (a size in µm) is the TIFF's 4.9 nm
    add_layers(viewer, [tmp_path / "fiji.tif", tmp_path / "um.zarr", tmp_path / "raw.tif"])
    assert "different voxel sizes" not in capsys.readouterr().err
    assert tuple(viewer.layers["raw"].scale) == (29, 4.9, 4.9)


def test_view_without_napari_says_how_to_install(outputs, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "napari", None)  # what `import napari` meets where it is not installed
    assert cli.main(["view", str(outputs[0] / "image.ome.zarr")]) == 2
    assert capsys.readouterr().err == 'mitoseg: error: mitoseg view needs napari: pip install "mitoseg[napari]"\n'


def test_a_given_voxel_size_stands_in_for_one_of_zero(tmp_path):
    """`mitoseg view FILE --voxel-size ...` of a file stating 0 nm slices: the given size, not a dead end."""
    import tifffile

    from mitoseg.viewer import volume_layer

    tifffile.imwrite(tmp_path / "z.tif", np.zeros((4, 32, 32), np.uint8) + np.arange(32, dtype=np.uint8), imagej=True,
                     resolution=(0.2, 0.2), metadata={"axes": "ZYX", "unit": "nm", "spacing": 0.0})
    _, meta, _ = volume_layer(tmp_path / "z.tif", (5.0, 5.0, 5.0))
    assert meta["scale"] == (5.0, 5.0, 5.0) and meta["units"] == "nm"
    with pytest.raises(io.MitosegError, match="states a voxel size of 0 x 5 x 5 nm"):
        volume_layer(tmp_path / "z.tif")


def test_a_given_voxel_size_scales_an_images_labels_as_the_image(tmp_path, lucchi_crop):
    """`mitoseg view IMAGE.ome.zarr --voxel-size 5 5 5` of an image stating none: its image-labels, stating none
    too, at the same scale (before: the image at 5 nm, its labels in pixels, 5 times smaller). The image here:
    labels written as OME-Zarr with no voxel size (unit-less axes), as a prediction of an image stating none."""
    from mitoseg.viewer import layer_data

    np.save(tmp_path / "mask.npy", lucchi_crop[1][:8, :64, :64])
    instances.label_volume(tmp_path / "mask.npy", tmp_path / "im.ome.zarr", progress=False)
    instances.label_volume(tmp_path / "mask.npy", tmp_path / "im.ome.zarr" / "labels" / "mito", progress=False)
    layers = layer_data(tmp_path / "im.ome.zarr", (5.0, 5.0, 5.0))
    assert [(meta["name"], meta["scale"], meta["units"]) for _, meta, _ in layers] == [
        ("im", (5.0, 5.0, 5.0), "nm"), ("mito", (5.0, 5.0, 5.0), "nm")]
    shutil.rmtree(tmp_path / "im.ome.zarr" / "labels" / "mito")  # deleted by hand, still listed: the image opens
    assert [meta["name"] for _, meta, _ in layer_data(tmp_path / "im.ome.zarr")] == ["im"]
