"""OME-Zarr outputs: level 0 through the block engine, a pyramid, NGFF metadata that ome-zarr-py reads
at the right physical scale; OME-Zarr inputs open at their highest resolution."""

import numpy as np
import pytest
import zarr
from conftest import same_partition
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader

from mitoseg import blocks, instances, io, omezarr
from mitoseg.errors import MitosegError

VOXEL = (50.0, 4.6, 4.6)


def _write(path, data, kind, block=(4, 128, 128)):
    out = blocks.open_output(path, data.shape, data.dtype, block, {}, {"kind": kind, "voxel_size": VOXEL})
    for b in blocks.grid(data.shape, block):
        out.write(b, data[b])
    blocks.finish(out)
    return path


def test_image_pyramid_reads_back_at_physical_scale(tmp_path, droso):
    raw = droso[0][:, :512, :384]
    path = _write(tmp_path / "raw.ome.zarr", raw, "image")
    node = next(iter(Reader(parse_url(str(path)))()))  # ome-zarr-py's own reader, as napari uses it
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales[0] == list(VOXEL) and scales[1] == [50.0, 9.2, 9.2]  # Z (50 nm) is not halved
    # a mean of 2 x 2 voxels lies between their centres: level 1 is half a level-0 voxel (2.3 nm) off in-plane
    assert node.metadata["coordinateTransformations"][1][1]["translation"] == pytest.approx([0.0, 2.3, 2.3])
    assert node.metadata["coordinateTransformations"][2][1]["translation"] == pytest.approx([0.0, 6.9, 6.9])
    assert omezarr.multiscales(dict(zarr.open_group(str(path), mode="r").attrs))[0]["type"] == "mean"
    assert [d.shape for d in node.data] == [(20, 512, 384), (20, 256, 192), (20, 128, 96), (20, 64, 48)][:len(scales)]
    assert len(scales) == 3  # the next level would be under 64 pixels wide
    np.testing.assert_array_equal(np.asarray(node.data[0]), raw)
    mean = raw[:, :2 * 256, :2 * 192].reshape(20, 256, 2, 192, 2).mean(axis=(2, 4))
    assert np.abs(np.asarray(node.data[1]).astype(float) - mean).max() <= 0.5  # averaged, rounded
    assert np.array_equal(io.open_volume(path)[:], raw) and io.voxel_size(path) == VOXEL
    group = zarr.open_group(str(path), mode="r")  # each level's blocks fit in it (before: level 0's, (4, 128, 128))
    assert [blocks.block_of(group[str(i)]) for i in range(3)] == [(4, 128, 128), (4, 128, 128), (4, 128, 96)]


def test_labels_are_downsampled_by_nearest_and_label_writes_ome(tmp_path, droso):
    mask = droso[1][:, :256, :256]
    n = instances.label_volume(_write(tmp_path / "mask.zarr", mask, "mask"), tmp_path / "l.ome.zarr",
                               (8, 128, 128), voxel_size=VOXEL, progress=False)
    labels = io.open_volume(tmp_path / "l.ome.zarr")
    assert labels.dtype == np.uint32 and labels[:].max() == n >= 3  # several objects (5)
    assert same_partition(labels[:], instances.label(mask, 26))
    node = next(iter(Reader(parse_url(str(tmp_path / "l.ome.zarr")))()))
    level1 = np.asarray(node.data[1])
    np.testing.assert_array_equal(level1, labels[:][:, ::2, ::2])  # ids kept, never averaged
    assert all(len(t) == 1 for t in node.metadata["coordinateTransformations"])  # each a voxel of level 0: no shift
    assert io.voxel_size(tmp_path / "l.ome.zarr") == VOXEL
    # an NGFF image-label on its own (ome-zarr-py reads a Label, not an image), every level named z, y, x
    assert any(isinstance(spec, Label) for spec in node.specs)
    group = zarr.open_group(str(tmp_path / "l.ome.zarr"), mode="r")
    assert omezarr.multiscales(dict(group.attrs))[0]["type"] == "nearest"
    assert [group[d["path"]].metadata.dimension_names for d in omezarr.multiscales(dict(group.attrs))[0]["datasets"]] \
        == [("z", "y", "x")] * len(node.data)


def test_an_ome_zarr_input_without_units_states_no_voxel_size(tmp_path, droso):
    """ome-zarr-py's default image (axes without a unit, scale 1) states no physical size: None, not 1 nm;
    micrometres and metres are converted."""
    from ome_zarr.writer import write_multiscales_metadata

    raw = droso[0][:4, :128, :128]
    for name, unit, scale, expect in (("none", None, 1.0, None), ("um", "micrometer", 0.005, (5.0, 5.0, 5.0)),
                                      ("m", "meter", 5e-9, (5.0, 5.0, 5.0))):
        group = zarr.open_group(str(tmp_path / f"{name}.ome.zarr"), mode="w")
        group.create_array("0", data=raw, dimension_names=omezarr.DIMENSIONS)
        axes = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in "zyx"]
        write_multiscales_metadata(group, [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [scale] * 3}]}], axes=axes)
        got = io.voxel_size(tmp_path / f"{name}.ome.zarr")
        assert got == expect if expect is None else got == pytest.approx(expect), name
        np.testing.assert_array_equal(io.open_volume(tmp_path / f"{name}.ome.zarr")[:], raw)
    # its image-label cannot state a --voxel-size (before: the table measured at it, the label stating none)
    np.save(tmp_path / "mask.npy", (raw > 128).astype(np.uint8))
    with pytest.raises(MitosegError, match="an image-label of an image that states no voxel size, so it cannot"):
        instances.label_volume(tmp_path / "mask.npy", tmp_path / "none.ome.zarr" / "labels" / "m",
                               voxel_size=(50, 4.6, 4.6), progress=False)


@pytest.mark.parametrize("voxel, expect", [((5.0, 5.0, 5.0), (2, 2, 2)), ((50.0, 4.6, 4.6), (1, 2, 2)),
                                           ((10.0, 4.6, 4.6), (1, 2, 2)), ((9.0, 4.6, 4.6), (2, 2, 2))])
def test_z_is_halved_only_while_not_coarser(voxel, expect):
    assert omezarr.factors((64, 1024, 1024), voxel)[0] == expect


def test_labels_written_into_an_image_are_its_ngff_image_label(tmp_path, droso, capsys):
    """`mitoseg label ... --out IMAGE.ome.zarr/labels/NAME`: the labels become an image-label of the image,
    which ome-zarr-py's reader (as napari uses it) finds from the image, at the image's scale."""
    from mitoseg import cli

    raw, mask = droso[0][:, :256, :256], droso[1][:, :256, :256]
    image = _write(tmp_path / "raw.ome.zarr", raw, "image")
    _write(tmp_path / "mask.zarr", mask, "mask")
    for quiet in (["--quiet"], []):  # written again with --overwrite: still listed once
        assert cli.main([*quiet, "label", str(tmp_path / "mask.zarr"), "--out", str(image / "labels" / "mito"),
                         "--overwrite"]) == 0
    assert "pyramid mito: 100%" in capsys.readouterr().err  # the image's levels 1 and 2, a bar of their own
    nodes = list(Reader(parse_url(str(image)))())
    label = next(n for n in nodes if n.load(Label))
    assert label.zarr.path.rstrip("/").endswith("labels/mito") and label.metadata.get("name") == "mito"
    assert same_partition(np.asarray(label.data[0]), instances.label(mask, 26))
    assert [t[0]["scale"] for t in label.metadata["coordinateTransformations"]][0] == list(VOXEL)  # the image's
    assert io.voxel_size(image / "labels" / "mito") == VOXEL
    assert zarr.open_group(str(image / "labels")).attrs["ome"] == {"labels": ["mito"], "version": "0.5"}
    assert zarr.open_group(str(image / "labels" / "mito")).attrs["ome"]["image-label"]["source"] == {
        "image": "../../"}

    # labels of another shape, or into a folder that is no OME-Zarr image: one line, nothing written
    for target, message in [(image / "labels" / "small", "cannot be its image-label"),
                            (tmp_path / "none.ome.zarr" / "labels" / "mito", "is not an OME-Zarr image")]:
        small = "small" in str(target)
        src = _write(tmp_path / "m2.zarr", mask[:, :128], "mask") if small else tmp_path / "mask.zarr"
        assert cli.main(["--quiet", "label", str(src), "--out", str(target), "--overwrite"]) == 2
        assert message in capsys.readouterr().err and not target.exists()
    # another voxel size than the image's: refused (before: the table measured at it, the labels at the image's)
    target = image / "labels" / "other"
    assert cli.main(["--quiet", "label", str(tmp_path / "mask.zarr"), "--out", str(target), "--table",
                     str(tmp_path / "t.csv"), "--voxel-size", "40", "4", "4"]) == 2
    assert "is an image-label: it takes its image's voxel size" in capsys.readouterr().err and not target.exists()
    assert cli.main(["--quiet", "label", str(tmp_path / "mask.zarr"), "--out", str(target), "--voxel-size",
                     *map(str, VOXEL)]) == 0  # the image's own: fine


def test_labels_added_to_a_bioformats2raw_image_follow_its_format(tmp_path, droso):
    """An NGFF 0.4 image (Zarr v2, 5D TCZYX, micrometres, three levels with ome-zarr-py's half-voxel translations),
    as bioformats2raw and ome-zarr-py write them: its image-label is Zarr v2 too, 5D with one time point and channel,
    and has the image's levels, shapes, axes and coordinate transformations (an NGFF "MUST"), so the image's readers
    find it; mitoseg reads it back as (Z, Y, X) at the image's voxel size."""
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    from mitoseg import cli, viewer

    raw, mask = droso[0][:, :300, :260], droso[1][:, :300, :260]  # odd level sizes: 300 x 260 -> 150 x 130 -> 75 x 65
    image = tmp_path / "bf.ome.zarr"
    write_image(raw[None, None], zarr.open_group(str(image), mode="w", zarr_format=2), fmt=FormatV04(), axes="tczyx",
                scale_factors=[2, 4], axes_units={a: "micrometer" for a in "zyx"},
                scale={"z": 0.05, "y": 0.0046, "x": 0.0046})
    _write(tmp_path / "mask.zarr", mask, "mask")
    assert cli.main(["--quiet", "label", str(tmp_path / "mask.zarr"), "--out", str(image / "labels" / "mito")]) == 0

    label = image / "labels" / "mito"
    assert (label / ".zattrs").is_file() and not (label / "zarr.json").exists()  # Zarr v2 inside a Zarr v2 image
    ms_image, ms_label = (omezarr.multiscales(dict(zarr.open_group(str(p), mode="r").attrs))[0] for p in (image, label))
    assert ms_label["axes"] == ms_image["axes"] and ms_label["version"] == "0.4"
    assert [d["coordinateTransformations"] for d in ms_label["datasets"]] == \
        [d["coordinateTransformations"] for d in ms_image["datasets"]]
    group = zarr.open_group(str(label), mode="r")
    shapes = [group[d["path"]].shape for d in ms_label["datasets"]]
    assert shapes == [(1, 1, 20, 300, 260), (1, 1, 20, 150, 130), (1, 1, 20, 75, 65)]
    assert group["0"].metadata.dimension_separator == "/"  # NGFF 0.4's chunk keys
    ids = io.open_volume(label)[:]
    assert same_partition(ids, instances.label(mask, 26))
    # each voxel the level-0 voxel nearest its centre, as ome-zarr-py's half-voxel translations of mean levels place it
    np.testing.assert_array_equal(group["1"][0, 0], ids[:, 1::2, 1::2])
    np.testing.assert_array_equal(group["2"][0, 0], ids[:, 2::4, 2::4])
    assert io.voxel_size(label) == pytest.approx((50.0, 4.6, 4.6))
    node = next(n for n in Reader(parse_url(str(image)))() if n.load(Label))  # ome-zarr-py finds it from the image
    assert node.zarr.path.rstrip("/").endswith("labels/mito") and len(node.data) == 3
    assert zarr.open_group(str(image / "labels"), mode="r").attrs["labels"] == ["mito"]
    # in napari (mitoseg's reader): both as (Z, Y, X) pyramids
    layers = viewer.layer_data(image)
    assert [layer[2] for layer in layers] == ["image", "labels"]
    assert all(level.shape == s[2:] for layer in layers for level, s in zip(layer[0], shapes, strict=True))
    # probabilities are no image-label: one line, nothing written
    with pytest.raises(MitosegError, match="write the probabilities as its own"):
        blocks.open_output(image / "labels" / "p", raw.shape, np.uint8, (8, 128, 128), {}, {"kind": "probability"})
    assert not (image / "labels" / "p.partial").exists()


def test_a_crop_of_a_larger_volume_keeps_its_place(tmp_path, droso):
    """An OME-Zarr crop whose level 0 is translated (here 0.5, 1 and 2 micrometres into a larger volume): its labels
    (`label`), conversions (`convert`, through a plain Zarr and back) and napari layers start where it does; mean
    levels add their half voxel to it, nearest-voxel levels do not."""
    from ome_zarr.writer import write_multiscales_metadata

    from mitoseg import convert, viewer

    mask = droso[1][:, :256, :256]
    group = zarr.open_group(str(tmp_path / "crop.ome.zarr"), mode="w")
    group.create_array("0", data=mask, dimension_names=omezarr.DIMENSIONS)
    write_multiscales_metadata(group, [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [0.05, 0.0046, 0.0046]}, {"type": "translation", "translation": [0.5, 1.0, 2.0]}]}],
        axes=[{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"])
    origin = (500.0, 1000.0, 2000.0)
    assert io.origin(tmp_path / "crop.ome.zarr") == pytest.approx(origin)
    instances.label_volume(tmp_path / "crop.ome.zarr", tmp_path / "l.ome.zarr", (8, 128, 128), progress=False)
    convert.convert(tmp_path / "crop.ome.zarr", tmp_path / "plain.zarr", progress=False)
    convert.convert(tmp_path / "plain.zarr", tmp_path / "again.ome.zarr", progress=False)
    for name, level1 in (("l.ome.zarr", origin), ("again.ome.zarr", np.add(origin, (0.0, 2.3, 2.3)))):
        transforms = [d["coordinateTransformations"] for d in
                      omezarr.multiscales(dict(zarr.open_group(str(tmp_path / name), mode="r").attrs))[0]["datasets"]]
        assert transforms[0][1]["translation"] == pytest.approx(origin), name
        assert transforms[1][1]["translation"] == pytest.approx(level1), name
        assert io.origin(tmp_path / name) == pytest.approx(origin)
    assert io.origin(tmp_path / "plain.zarr") == pytest.approx(origin)
    assert viewer.volume_layer(tmp_path / "l.ome.zarr")[1]["translate"] == pytest.approx(origin)
    assert viewer.volume_layer(tmp_path / "plain.zarr")[1]["translate"] == pytest.approx(origin)
    assert "translate" not in viewer.volume_layer(tmp_path / "crop.ome.zarr" / "0")[1]  # an array that states none


def _image(path, data, axes, datasets, shared=None, zarr_format=3):
    """An OME-Zarr image as other tools write them: `datasets` (path, transformations) of `data` downsampled by
    stride, `axes` as given, the multiscales' own transformations `shared`."""
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import add_metadata, write_multiscales_metadata

    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    for d, step in datasets:
        group.create_array(d["path"], data=data[(slice(None),) * (data.ndim - 2) + (slice(None, None, step),) * 2],
                           **({} if zarr_format == 3 else {"chunk_key_encoding": FormatV04().chunk_key_encoding}))
    write_multiscales_metadata(group, [d for d, _ in datasets], axes=axes)
    if shared:
        ms = omezarr.multiscales(dict(group.attrs))
        ms[0]["coordinateTransformations"] = shared
        add_metadata(group, {"multiscales": ms})
    return path


def test_images_as_other_tools_describe_them(tmp_path, droso):
    """The multiscales' own transformations (applied to every level) give the voxel size and place, and an
    image-label keeps them; space axes are known by their type, not their names; bioformats2raw's root opens as
    its one image, and labels of that image are its image-labels; resuming after the levels were begun works."""
    from mitoseg import cli

    raw, mask = droso[0][:, :256, :256], droso[1][:, :256, :256]
    axes = [{"name": n, "type": "space", "unit": "nanometer"} for n in ("plane", "row", "col")]
    image = _image(tmp_path / "shared.ome.zarr", raw, axes,
                   [({"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}, 1),
                    ({"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 2.0, 2.0]}]}, 2)],
                   shared=[{"type": "scale", "scale": [50.0, 4.6, 4.6]},
                           {"type": "translation", "translation": [1000.0, 460.0, 920.0]}])
    assert io.voxel_size(image) == pytest.approx((50.0, 4.6, 4.6)) and io.origin(image) == (1000.0, 460.0, 920.0)
    np.testing.assert_array_equal(io.open_volume(image)[:], raw)  # axes named plane, row, col: space by type
    _write(tmp_path / "mask.zarr", mask, "mask")
    assert cli.main(["--quiet", "label", str(tmp_path / "mask.zarr"), "--out", str(image / "labels" / "m")]) == 0
    ms = omezarr.multiscales(dict(zarr.open_group(str(image / "labels" / "m"), mode="r").attrs))[0]
    assert ms["coordinateTransformations"][1]["translation"] == [1000.0, 460.0, 920.0]
    assert io.voxel_size(image / "labels" / "m") == pytest.approx((50.0, 4.6, 4.6))

    # bioformats2raw: the root holds its image in "0" (NGFF 0.4, Zarr v2, 5D)
    root = tmp_path / "bf.ome.zarr"
    zarr.open_group(str(root), mode="w", zarr_format=2).attrs["bioformats2raw.layout"] = 3
    tczyx = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    _image(root / "0", raw[None, None], tczyx,
           [({"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 0.05, 0.0046, 0.0046]}]},
             1)], zarr_format=2)
    np.testing.assert_array_equal(io.open_volume(root)[:], raw)
    assert io.voxel_size(root) == pytest.approx((50.0, 4.6, 4.6))
    assert cli.main(["--quiet", "label", str(tmp_path / "mask.zarr"), "--out", str(root / "0" / "labels" / "m")]) == 0
    node = next(n for n in Reader(parse_url(str(root / "0")))() if n.load(Label))
    assert node.data[0].shape == (1, 1, 20, 256, 256) and (root / "0" / "labels" / "m" / ".zattrs").is_file()
    from mitoseg import viewer  # `mitoseg view ROOT`: the image in 0 with its labels

    assert [(layer[1]["name"], layer[2]) for layer in viewer.layer_data(root)] == [("bf", "image"), ("m", "labels")]

    # the image's labels group itself, any other place inside an image (through a link too), a table or TIFF in
    # its labels/: no output, nothing replaced; beside the image (even named through "..") is fine
    (tmp_path / "link").symlink_to(image / "labels")
    for argv in (["--out", str(root / "0" / "labels")], ["--out", str(image / "0")],
                 ["--out", str(image / "labels" / "m" / "0")], ["--out", str(tmp_path / "link" / "viasym")],
                 ["--out", str(tmp_path / "x.zarr"), "--table", str(image / "labels" / "t.csv")]):
        assert cli.main(["--quiet", "label", str(tmp_path / "mask.zarr"), *argv, "--overwrite"]) == 2, argv
    assert (root / "0" / "labels" / "m" / ".zattrs").is_file() and (image / "labels" / "m" / "zarr.json").is_file()
    assert not (image / "labels" / "viasym").exists() and not (image / "labels" / "t.csv").exists()
    assert cli.main(["--quiet", "label", str(tmp_path / "mask.zarr"), "--out", str(image / ".." / "beside.zarr")]) == 0
    # a plain group holding arrays beside one image is no bioformats2raw root: it needs a NAME, as before
    zarr.open_group(str(root), mode="a", zarr_format=2).create_array("other", data=mask[:2])
    with pytest.raises(MitosegError, match="name an array or image in it"):
        io.open_volume(root)

    # interrupted while the levels were being built: they are built again on --resume
    partial = io.partial_path(tmp_path / "again.ome.zarr")
    out = blocks.open_output(tmp_path / "again.ome.zarr", mask.shape, mask.dtype, (4, 128, 128), {},
                             {"kind": "mask", "voxel_size": VOXEL})
    for b in blocks.grid(mask.shape, (4, 128, 128)):
        out.write(b, mask[b])
    omezarr.write_pyramid(partial, VOXEL, True, "again")  # then Ctrl-C before the rename
    out = blocks.open_output(tmp_path / "again.ome.zarr", mask.shape, mask.dtype, (4, 128, 128), {},
                             {"kind": "mask", "voxel_size": VOXEL}, resume=True)
    blocks.finish(out)
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "again.ome.zarr"))["1"][:], mask[:, ::2, ::2])
