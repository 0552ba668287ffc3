"""`mitoseg convert`: real volumes into ImageJ TIFFs (as Fiji opens them), Zarr and OME-Zarr, values and
voxel size kept; what an ImageJ TIFF cannot hold exactly is changed only where exact, and said."""

import numpy as np
import pytest
import tifffile
import zarr
from conftest import dies_on_call, same_partition

from mitoseg import blocks, convert, instances, io, omezarr
from mitoseg.cli import main
from mitoseg.errors import MitosegError


@pytest.fixture(scope="module")
def stack(tmp_path_factory, droso):
    """A real ssTEM crop (20, 300, 260) as Fiji saves a calibrated stack: 50 x 4.6 x 4.6 nm."""
    d = tmp_path_factory.mktemp("convert")
    tifffile.imwrite(d / "ij.tif", droso[0][:, :300, :260], imagej=True, resolution=(1 / 4.6, 1 / 4.6),
                     metadata={"spacing": 50, "unit": "nm", "axes": "ZYX"})
    return d


def test_a_calibrated_tiff_goes_to_ome_zarr_and_back_unchanged(stack, droso, capsys):
    raw = droso[0][:, :300, :260]
    assert main(["convert", str(stack / "ij.tif"), "--out", str(stack / "em.ome.zarr")]) == 0
    said = capsys.readouterr()  # the pyramid's blocks have a bar of their own: levels 1 and 2, a block each
    assert "(uint8, voxel size 50 x 4.6 x 4.6 nm, as the input states)" in said.out
    assert "pyramid em.ome.zarr: 100%|██████████| 2/2" in said.err
    group = zarr.open_group(str(stack / "em.ome.zarr"), mode="r")
    assert len(omezarr.multiscales(dict(group.attrs))[0]["datasets"]) == 3  # 300 x 260, 150 x 130, 75 x 65
    assert io.voxel_size(stack / "em.ome.zarr") == pytest.approx((50.0, 4.6, 4.6))
    assert main(["--quiet", "convert", str(stack / "em.ome.zarr"), "--out", str(stack / "back.tif")]) == 0
    with tifffile.TiffFile(stack / "back.tif") as tif:  # what Fiji reads: a ZYX hyperstack calibrated in nm
        meta = tif.imagej_metadata
        assert (meta["slices"], meta["spacing"], meta["unit"]) == (20, 50.0, "nm")
        np.testing.assert_array_equal(tif.asarray(), raw)
    assert io.voxel_size(stack / "back.tif") == pytest.approx((50.0, 4.6, 4.6))
    assert not list(stack.glob("*.partial"))


def test_object_ids_are_kept_exact_or_refused(stack, droso, tmp_path):
    """Labels (uint32) become uint16 when they fit and float32 when every id is exact in it, with a line saying
    so; ids past 2^24 are refused; float64 becomes float32, said; a boolean mask stays 0/1 in uint8."""
    ids = instances.label(droso[1][:, :300, :260], 26).astype(np.uint32)
    assert ids.max() > 1
    cases = [("fit", ids, np.uint16, None), ("wide", np.where(ids > 0, ids + 70_000, 0).astype(np.uint32), np.float32,
             "uint32 values from 0 to "), ("float64", ids.astype(np.float64) / 7, np.float32,
                                           "float64 values written as float32"),
             ("bool", ids > 0, np.uint8, None),
             ("negative", -ids.astype(np.int32), np.int16, None)]  # before: float32, "values up to 0"
    for name, values, stored, said in cases:
        np.save(tmp_path / f"{name}.npy", values)
        done = convert.convert(tmp_path / f"{name}.npy", tmp_path / f"{name}.tif", (50, 4.6, 4.6), progress=False)
        back = tifffile.imread(tmp_path / f"{name}.tif")
        assert back.dtype == stored and (done["notes"] == [] if said is None else said in done["notes"][0]), name
        np.testing.assert_array_equal(back, values.astype(stored), err_msg=name)
        if name == "wide":
            assert same_partition(back.astype(np.int64), ids) and back.max() == ids.max() + 70_000
    np.save(tmp_path / "huge.npy", np.where(ids > 0, ids + 2**24, 0).astype(np.uint32))
    with pytest.raises(MitosegError, match="cannot all be exact in an ImageJ TIFF"):
        convert.convert(tmp_path / "huge.npy", tmp_path / "huge.tif", progress=False)
    assert not (tmp_path / "huge.tif").exists() and not (tmp_path / "huge.tif.partial").exists()


def test_a_mask_becomes_an_image_label_and_mistakes_are_one_line(stack, droso, capsys):
    if not (stack / "em.ome.zarr").exists():
        convert.convert(stack / "ij.tif", stack / "em.ome.zarr", progress=False)
    np.save(stack / "mask.npy", droso[1][:, :300, :260])
    np.save(stack / "soft.npy", droso[1][:, :300, :260] / np.float32(2))
    assert main(["--quiet", "convert", str(stack / "mask.npy"), "--out", str(stack / "em.ome.zarr" / "labels" / "m")]) \
        == 0
    label = stack / "em.ome.zarr" / "labels" / "m"
    assert zarr.open_group(str(label), mode="r").attrs["ome"]["image-label"]["source"] == {"image": "../../"}
    np.testing.assert_array_equal(io.open_volume(label)[:], droso[1][:, :300, :260])
    for argv, said in [([str(stack / "ij.tif"), "--out", str(stack / "x.npy")], "converts to a TIFF (*.tif), Zarr"),
                       ([str(stack / "ij.tif"), "--out", str(stack / "back.tif")], "already exists"),
                       ([str(stack / "ij.tif"), "--out", str(stack / "ij.tif"), "--overwrite"], "is an input"),
                       ([str(stack / "soft.npy"), "--out", str(stack / "em.ome.zarr" / "labels" / "soft")],
                        "holds integer masks and labels, not float32")]:
        if said == "already exists" and not (stack / "back.tif").exists():
            convert.convert(stack / "ij.tif", stack / "back.tif", progress=False)
        capsys.readouterr()
        assert main(["--quiet", "convert", *argv]) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err


def test_sizes_that_are_no_voxel_size_or_block_are_refused_before_writing(stack, tmp_path):
    """Before: (5, 5) was recorded (and `label` failed on it later with a broadcast error), a negative size was
    written and then refused as the output's, leaving it, and a block of two numbers raised zarr's ValueError."""
    for voxel, said in (((5, 5), r"voxel_size must be three numbers \(z, y, x\), not \(5, 5\)"),
                        ((-5, 5, 5), "voxel_size must be a number >= 0.1, not -5"),
                        ((0.05, 0.0046, 0.0046), r"not 0.05 \(voxel sizes are in nm: micrometres x 1000\)")):
        for out in ("c.zarr", "c.tif"):
            with pytest.raises(MitosegError, match=said):
                convert.convert(stack / "ij.tif", tmp_path / out, voxel, progress=False)
    with pytest.raises(MitosegError, match=r"block must be three numbers \(z, y, x\), not \(16, 128\)"):
        convert.convert(stack / "ij.tif", tmp_path / "c.zarr", block=(16, 128), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_what_a_conversion_cannot_keep_is_said_or_refused(stack, droso, tmp_path, capsys):
    """An image-label takes its image's voxel size (--voxel-size refused, the line says whose); booleans become
    uint8 labels (NGFF labels are integers); probabilities are no image-label; `--labels` gives a pyramid of
    nearest voxels to uint16 ids; a TIFF says it keeps no place and makes its folders."""
    from ome_zarr.writer import write_multiscales_metadata

    if not (stack / "em.ome.zarr").exists():
        convert.convert(stack / "ij.tif", stack / "em.ome.zarr", progress=False)
    mask = droso[1][:, :300, :260]
    image = tmp_path / "em.ome.zarr"
    convert.convert(stack / "ij.tif", image, progress=False)
    np.save(tmp_path / "bool.npy", mask > 0)
    assert main(["--quiet", "convert", str(tmp_path / "bool.npy"), "--out", str(image / "labels" / "b")]) == 0
    assert "(uint8, voxel size 50 x 4.6 x 4.6 nm, the image's)" in capsys.readouterr().out
    np.testing.assert_array_equal(io.open_volume(image / "labels" / "b")[:], mask)
    assert main(["--quiet", "convert", str(tmp_path / "bool.npy"), "--out", str(image / "labels" / "c"),
                 "--voxel-size", "5", "5", "5"]) == 2
    assert "takes its image's voxel size; leave out --voxel-size" in capsys.readouterr().err
    probs = tmp_path / "probs.zarr"
    zarr.create_array(str(probs), data=(mask * 200).astype(np.uint8)).attrs["kind"] = "probability"
    assert main(["--quiet", "convert", str(probs), "--out", str(image / "labels" / "p")]) == 2
    assert "write the probabilities as its own NAME.ome.zarr" in capsys.readouterr().err
    ids = (instances.label(mask, 26) * 1000).astype(np.uint16)  # ids no volume of means would hold
    np.save(tmp_path / "ids.npy", ids)
    assert main(["--quiet", "convert", str(tmp_path / "ids.npy"), "--out", str(tmp_path / "ids.ome.zarr"),
                 "--voxel-size", "50", "4.6", "4.6", "--labels"]) == 0
    group = zarr.open_group(str(tmp_path / "ids.ome.zarr"), mode="r")
    assert omezarr.multiscales(dict(group.attrs))[0]["type"] == "nearest"
    assert set(np.unique(group["1"][:])) <= set(np.unique(ids))
    crop = tmp_path / "crop.ome.zarr"
    convert.convert(tmp_path / "ids.npy", crop, (50, 4.6, 4.6), progress=False, labels=True)
    ms = omezarr.multiscales(dict(zarr.open_group(str(crop), mode="r").attrs))
    write_multiscales_metadata(zarr.open_group(str(crop), mode="r+"), [
        {"path": d["path"], "coordinateTransformations": d["coordinateTransformations"] + [
            {"type": "translation", "translation": [100.0, 0.0, 0.0]}]} for d in ms[0]["datasets"]],
        axes=ms[0]["axes"])
    assert main(["--quiet", "convert", str(crop), "--out", str(tmp_path / "new" / "dir" / "ids.tif")]) == 0
    assert "a TIFF keeps no place: this volume starts at 100 x 0 x 0 nm" in capsys.readouterr().out


def test_zarr_v2_for_tools_that_read_no_v3(stack, droso, tmp_path, capsys):
    """`--zarr-format 2`: an OME-Zarr as NGFF 0.4 (Zarr v2, "/" chunk keys, metadata in .zattrs) that ome-zarr-py
    reads as such, a plain Zarr v2 array, values and voxel size kept; labels added to the 0.4 image follow it; a
    TIFF or an image-label with the option is one line; a partial v3 output is not resumed as v2."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    image = tmp_path / "em.ome.zarr"
    assert main(["--quiet", "convert", str(stack / "ij.tif"), "--out", str(image), "--zarr-format", "2"]) == 0
    group = zarr.open_group(str(image), mode="r")
    assert group.metadata.zarr_format == 2 and omezarr.version(group) == "0.4"
    assert (image / "0" / "0" / "0" / "0").is_file()  # NGFF 0.4's "/" chunk keys
    node = next(iter(Reader(parse_url(str(image)))()))
    assert [d.shape for d in node.data] == [(20, 300, 260), (20, 150, 130), (20, 75, 65)]
    np.testing.assert_array_equal(io.open_volume(image)[:], droso[0][:, :300, :260])
    assert io.voxel_size(image) == pytest.approx((50.0, 4.6, 4.6))
    np.save(tmp_path / "mask.npy", droso[1][:, :300, :260])
    convert.convert(tmp_path / "mask.npy", image / "labels" / "mito", progress=False)
    assert zarr.open_group(str(image / "labels" / "mito"), mode="r").metadata.zarr_format == 2
    convert.convert(tmp_path / "mask.npy", tmp_path / "mask.zarr", (50, 4.6, 4.6), progress=False, zarr_format=2)
    plain = zarr.open_array(str(tmp_path / "mask.zarr"), mode="r")
    assert plain.metadata.zarr_format == 2 and plain.attrs["voxel_size"] == [50.0, 4.6, 4.6]
    np.testing.assert_array_equal(plain[:], droso[1][:, :300, :260])
    for out, said in [(tmp_path / "m.tif", "a TIFF has no Zarr format"),
                      (image / "labels" / "other", "an image-label takes its image's Zarr format")]:
        assert main(["--quiet", "convert", str(tmp_path / "mask.npy"), "--out", str(out), "--zarr-format", "2"]) == 2
        assert said in capsys.readouterr().err
    # an input that states no voxel size (predict's OME-Zarr of a plain TIFF, as README's lines make it) converts
    # to an OME-Zarr whose axes have no unit, said (before: refused, as if the input stated one)
    np.save(tmp_path / "raw.npy", droso[0][:, :300, :260])
    for source, out in [(tmp_path / "raw.npy", tmp_path / "raw.ome.zarr"),
                        (tmp_path / "raw.ome.zarr", tmp_path / "04.ome.zarr")]:
        assert main(["convert", str(source), "--out", str(out), "--zarr-format", "2"]) == 0
        assert "no voxel size: the input states none (the OME-Zarr's axes have no unit: read as voxels); give " \
            "--voxel-size" in capsys.readouterr().out
        assert io.voxel_size(out) is None and all("unit" not in a for a in omezarr.multiscales(
            dict(zarr.open_group(str(out), mode="r").attrs))[0]["axes"])
    np.testing.assert_array_equal(io.open_volume(tmp_path / "04.ome.zarr")[:], droso[0][:, :300, :260])
    blocks.open_output(tmp_path / "r.zarr", (4, 8, 8), np.uint8, (4, 8, 8), {})
    with pytest.raises(MitosegError, match="Zarr format 3 then, 2 now"):
        blocks.open_output(tmp_path / "r.zarr", (4, 8, 8), np.uint8, (4, 8, 8), {}, resume=True, zarr_format=2)


def test_a_conversion_that_fails_midway_leaves_nothing(droso, tmp_path, capsys):
    """A slice folder whose seventh slice is cut short (its header reads, its pixels do not): one line, and no
    `NAME.partial` left beside the outputs (before: a partial TIFF, or a partial Zarr and its markers)."""
    from PIL import Image

    folder = tmp_path / "slices"
    folder.mkdir()
    for z, plane in enumerate(droso[0][:8, :128, :128]):
        Image.fromarray(plane).save(folder / f"s{z:02d}.png")
    cut = (folder / "s06.png").read_bytes()
    (folder / "s06.png").write_bytes(cut[: len(cut) // 2])
    for out in ("c.tif", "c.zarr"):
        assert main(["--quiet", "convert", str(folder), "--out", str(tmp_path / out), "--block", "2", "128", "128"]
                    if out.endswith("zarr") else ["--quiet", "convert", str(folder), "--out", str(tmp_path / out)]) == 2
        assert "s06.png cannot be read" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slices"]
    # Ctrl-C while an OME-Zarr's pyramid is built, after every block was written: nothing left either (before:
    # the .partial with its levels and its markers)
    (folder / "s06.png").write_bytes(cut)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(omezarr, "write_pyramid", dies_on_call(omezarr.write_pyramid, 1))
        assert main(["--quiet", "convert", str(folder), "--out", str(tmp_path / "c.ome.zarr"), "--voxel-size",
                     "50", "4.6", "4.6"]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slices"]


def test_a_tiff_past_a_file_size_limit_is_said_of_its_file(droso, tmp_path):
    """Past `ulimit -f` a write stops short, which numpy says as "N requested and M written" alone (before: that
    line, naming neither the file nor why)."""
    import resource
    import subprocess
    import sys

    tifffile.imwrite(tmp_path / "in.tif", droso[0][:8])
    said = subprocess.run([sys.executable, "-m", "mitoseg.cli", "--quiet", "convert", str(tmp_path / "in.tif"), "--out",
                           str(tmp_path / "c.tif")], capture_output=True, text=True,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000)))
    assert said.returncode == 2 and said.stderr.strip().count("\n") == 0, said.stderr
    assert "c.tif: the file stopped growing (" in said.stderr and "a full disk, or a file size limit" in said.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_a_mitoseg_output_keeps_its_kind_in_a_tiff(droso, tmp_path):
    """A TIFF has no attributes: `convert` states a mitoseg output's kind in its ImageJ description, so object ids
    written as uint16 still read as labels (napari: a Labels layer) and probabilities are refused as an EM image
    (before: both read back as a grey "image")."""
    ids = instances.label(droso[1][:, :300, :260], 26).astype(np.uint32)
    probs = (droso[1][:, :300, :260] > 0).astype(np.uint8) * 200
    out = blocks.open_output(tmp_path / "p.zarr", probs.shape, np.uint8, probs.shape, {},
                             {"kind": "probability", "voxel_size": [50.0, 4.6, 4.6]})
    out.write(tuple(slice(0, s) for s in probs.shape), probs)
    blocks.finish(out)
    np.save(tmp_path / "ids.npy", ids)
    tifffile.imwrite(tmp_path / "em.tif", droso[0][:, :300, :260])
    kinds = {}
    for name in ("p.zarr", "ids.npy", "em.tif"):
        convert.convert(tmp_path / name, tmp_path / f"{name}.tif", (50, 4.6, 4.6), progress=False)
        back = io.open_volume(tmp_path / f"{name}.tif")
        kinds[name] = (back.dtype.name, io.kind(back))
    assert kinds == {"p.zarr": ("uint8", "probability"), "ids.npy": ("uint16", "labels"), "em.tif": ("uint8", "image")}
    with pytest.raises(MitosegError, match="p.zarr.tif is a mitoseg probability output, not the EM image"):
        io.refuse_output(io.open_volume(tmp_path / "p.zarr.tif"), tmp_path / "p.zarr.tif", "the EM image",
                         ("probability", "mask", "labels"))
    np.testing.assert_array_equal(io.open_volume(tmp_path / "ids.npy.tif")[:], ids)
