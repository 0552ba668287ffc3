"""Volume I/O on a crop of the real Drosophila stack: every format reads the same voxels, lazily where it
claims to, every bad input gives a MitosegError, and outputs appear under their final name only when finished."""

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from conftest import jittered_probabilities
from ome_zarr.format import FormatV04
from ome_zarr.writer import write_image
from PIL import Image

from mitoseg import blocks, io
from mitoseg.errors import MitosegError

FORMATS = ["tiff", "tiff_folder", "png_folder", "h5", "zarr_v3", "zarr_v2", "zarr_v2_no_suffix", "zarr_group",
           "zarr_v2_group", "npy", "ome_zarr_tczyx", "h5_zyxc"]


@pytest.fixture(scope="module")
def crop(droso_crop) -> np.ndarray:
    """Raw uint8 (20, 256, 256) from the real stack."""
    return droso_crop[0]


@pytest.fixture(scope="module")
def written(crop, tmp_path_factory) -> dict[str, str]:
    """The same crop written in every format open_volume accepts; maps format name -> spec string."""
    d = tmp_path_factory.mktemp("formats")
    specs = {}
    tifffile.imwrite(d / "stack.tif", crop)
    specs["tiff"] = str(d / "stack.tif")
    for name, suffix in [("tiff_folder", ".tif"), ("png_folder", ".png")]:
        folder = d / name
        folder.mkdir()
        for z, sl in enumerate(crop):
            if suffix == ".tif":
                tifffile.imwrite(folder / f"{z:02d}.tif", sl)
            else:
                Image.fromarray(sl).save(folder / f"{z:02d}.png")
        (folder / "notes.txt").write_text("not a slice, must be ignored\n")
        specs[name] = str(folder)
    with h5py.File(d / "vol.h5", "w") as f:
        f.create_dataset("group/raw", data=crop, chunks=(1, 128, 128))
    specs["h5"] = f"{d / 'vol.h5'}:group/raw"
    for name, fmt, path in [("zarr_v3", 3, "v3.zarr"), ("zarr_v2", 2, "v2.zarr"), ("zarr_v2_no_suffix", 2, "v2dir")]:
        z = zarr.create_array(str(d / path), shape=crop.shape, dtype=crop.dtype, chunks=(4, 64, 64), zarr_format=fmt)
        z[:] = crop
        specs[name] = str(d / path)
    for name, fmt, path in [("zarr_group", 3, "store.zarr"), ("zarr_v2_group", 2, "store2.zarr")]:
        g = zarr.open_group(str(d / path), mode="w", zarr_format=fmt)
        g.create_array("raw", shape=crop.shape, dtype=crop.dtype, chunks=(4, 64, 64))[:] = crop
        g.create_array("other", shape=(2, 2, 2), dtype="f4")
        specs[name] = f"{d / path}:raw"
    np.save(d / "vol.npy", crop)
    specs["npy"] = str(d / "vol.npy")
    # as bioformats2raw and ome-zarr-py write it: NGFF 0.4 (Zarr v2), 5D TCZYX with one time point and channel
    write_image(crop[None, None], zarr.open_group(str(d / "bf.ome.zarr"), mode="w", zarr_format=2), fmt=FormatV04(),
                axes="tczyx", scale_factors=[2], axes_units={a: "micrometer" for a in "zyx"},
                scale={"z": 0.05, "y": 0.0046, "x": 0.0046})
    specs["ome_zarr_tczyx"] = str(d / "bf.ome.zarr")
    with h5py.File(d / "ilastik.h5", "w") as f:  # an Ilastik export: axes zyxc, one channel
        f.create_dataset("exported_data", data=crop[..., None], chunks=(1, 64, 64, 1))
    specs["h5_zyxc"] = str(d / "ilastik.h5")
    return specs


# ---------------------------------------------------------------- reading


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_the_same_crop(written, crop, fmt):
    vol = io.open_volume(written[fmt])
    assert tuple(vol.shape) == crop.shape
    assert np.dtype(vol.dtype) == np.uint8
    assert np.array_equal(np.asarray(vol[:]), crop)
    assert np.array_equal(io.read_volume(written[fmt]), crop)
    assert np.array_equal(io.open_volume(Path(written[fmt]))[:], crop)  # Path and str both accepted


SLICES = [np.s_[2:5, 10:20, 30:40], np.s_[7], np.s_[19], np.s_[3, 5:9], np.s_[::4, ::3, 7], np.s_[0:20:5, 100, 3:250:7],
          np.s_[5:6], np.s_[4, 200, 17], np.s_[1:3, :, 255]]


@pytest.mark.parametrize("fmt", FORMATS)
def test_slicing_matches_numpy(written, crop, fmt):
    vol = io.open_volume(written[fmt])
    for key in SLICES:
        got = np.asarray(vol[key])
        assert got.shape == crop[key].shape, key
        assert np.array_equal(got, crop[key]), key


def test_slice_folder_sorts_by_name_not_creation(tmp_path, crop):
    # written in reverse order: the stack must still follow the file names
    for z in reversed(range(6)):
        tifffile.imwrite(tmp_path / f"s{z:03d}.tiff", crop[z])
    assert np.array_equal(io.open_volume(tmp_path)[:], crop[:6])


def test_pages_written_one_by_one_are_one_volume(tmp_path, crop):
    """A TIFF written page by page (a loop of TiffWriter.write: a series per page) is the volume of its pages,
    as Fiji opens it (before: "a 2D image", its first page); pages of other sizes are named as such."""
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        for page in crop[:5]:
            tif.write(page)
    np.testing.assert_array_equal(io.open_volume(tmp_path / "pages.tif")[:], crop[:5])
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tif:
        for page in (crop[0], crop[1], crop[2, :64, :64]):
            tif.write(page)
    with pytest.raises(MitosegError, match=r"its 3 pages are images of different sizes or types \(\(256, 256\) uint8"):
        io.open_volume(tmp_path / "mixed.tif")


def test_a_pyramidal_tiff_is_its_full_resolution(tmp_path, crop):
    """A TIFF with reduced-resolution sub-IFDs (as pyramids are saved) is read at full resolution (before: "cannot
    be read (AttributeError: 'Group' object has no attribute 'ndim')")."""
    with tifffile.TiffWriter(tmp_path / "pyramid.tif") as tif:
        tif.write(crop[:4], subifds=1, photometric="minisblack")
        tif.write(crop[:4, ::2, ::2], subfiletype=1, photometric="minisblack")
    np.testing.assert_array_equal(io.open_volume(tmp_path / "pyramid.tif")[:], crop[:4])


def test_stated_voxel_sizes_must_be_sizes(tmp_path, crop):
    """A voxel size under 0.1 nm stated by the file (an ImageJ spacing, an OME-Zarr scale) is refused where it
    is read, as a typed one (before: volumes of 0 um3 in tables, a ZeroDivisionError in evaluate --places; sizes
    in micrometres written as nm went into predict and label outputs, tables 1e6 times too small)."""
    for spacing in (0, -50, 0.05):
        tifffile.imwrite(tmp_path / f"s{spacing}.tif", crop[:4], imagej=True, resolution=(0.2, 0.2),
                         metadata={"axes": "ZYX", "unit": "nm", "spacing": spacing})
        with pytest.raises(MitosegError, match=f"states a voxel size of {spacing:g} x 5 x 5 nm, not sizes >= 0.1 nm "
                                               r"\(micrometres written as nm\?\): give --voxel-size"):
            io.voxel_size(tmp_path / f"s{spacing}.tif")
    from mitoseg import metrics

    assert metrics.stated_voxel(tmp_path / "s0.05.tif") is None  # evaluate's notes: the given --voxel-size counts
    tifffile.imwrite(tmp_path / "s50.tif", crop[:4], imagej=True, resolution=(0.2, 0.2),
                     metadata={"axes": "ZYX", "unit": "nm", "spacing": 50})
    assert io.voxel_size(tmp_path / "s50.tif") == (50.0, 5.0, 5.0)
    with pytest.raises(MitosegError, match="s5.tif: no such file or folder"):
        io.voxel_size(tmp_path / "s5.tif")  # misspelt: before None, "states none", and a guessed size went on


def test_slice_folder_reads_unpadded_numbers_as_numbers(tmp_path, crop):
    # slice_2 before slice_10 (as Fiji's Image Sequence), not after it as text sorts
    for z in range(12):
        tifffile.imwrite(tmp_path / f"slice_{z}.tif", crop[z])
    assert np.array_equal(io.open_volume(tmp_path)[:], crop[:12])


def test_slice_stack_reads_only_requested_slices(written, crop, monkeypatch):
    calls = []
    real = io._read_slice

    def counting(path):
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(io, "_read_slice", counting)
    vol = io.open_volume(written["png_folder"])
    assert isinstance(vol.arr, io.SliceStack)  # read through `io.Readable`
    assert calls == ["00.png"]  # the first slice, for shape and dtype
    calls.clear()
    assert np.array_equal(vol[7], crop[7])
    assert calls == ["07.png"]
    calls.clear()
    assert np.array_equal(vol[2:5, 10:20, 30:40], crop[2:5, 10:20, 30:40])
    assert calls == ["02.png", "03.png", "04.png"]
    calls.clear()
    assert np.array_equal(vol[::8], crop[::8])
    assert calls == ["00.png", "08.png", "16.png"]
    calls.clear()
    assert vol[30:40].shape == (0, 256, 256)
    assert calls == []


def test_other_readers_are_lazy(written):
    assert isinstance(io.open_volume(written["npy"]), np.memmap)
    assert isinstance(io.open_volume(written["h5"]).arr, h5py.Dataset)  # read through `io.Readable`
    for fmt in ["tiff", "zarr_v3", "zarr_v2", "zarr_group"]:
        assert isinstance(io.open_volume(written[fmt]).arr, zarr.Array), fmt


def test_a_damaged_chunk_or_page_is_one_line_naming_the_file(tmp_path, crop, capsys):
    """A Zarr chunk or a TIFF page of junk opened fine and failed deep in a run with the codec's own traceback
    (Zstd decompression error, DeflateError): a MitosegError naming the file and the region read."""
    import os

    import tifffile

    from mitoseg.cli import main

    z = zarr.create_array(str(tmp_path / "z.zarr"), data=crop[:16, :128, :128], chunks=(4, 128, 128))
    (tmp_path / "z.zarr" / "c" / "2" / "0" / "0").write_bytes(os.urandom(5000))
    vol = io.open_volume(tmp_path / "z.zarr")
    np.testing.assert_array_equal(vol[:8], z[:8])  # the rest reads as it is
    with pytest.raises(MitosegError, match=r"z.zarr: cannot be read at slices 6-9 \(.*\); the file may be damaged"):
        vol[6:10]
    tifffile.imwrite(tmp_path / "c.tif", crop[:16, :128, :128], compression="zlib")
    page = tifffile.TiffFile(tmp_path / "c.tif").pages[8]
    data = bytearray((tmp_path / "c.tif").read_bytes())
    data[page.dataoffsets[0]:page.dataoffsets[0] + page.databytecounts[0]] = os.urandom(page.databytecounts[0])
    (tmp_path / "bad.tif").write_bytes(bytes(data))
    for bad in ("z.zarr", "bad.tif"):
        assert main(["--quiet", "convert", str(tmp_path / bad), "--out", str(tmp_path / f"{bad}.out.zarr")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"mitoseg: error: {tmp_path / bad}: cannot be read") and err.count("\n") == 1, err
        assert not list(tmp_path.glob(f"{bad}.out.zarr*"))
    # a TIFF of pages written one by one, cut short after page 8: it read as a volume of 9 slices, in silence
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        for plane in crop[:16, :64, :64]:
            tif.write(plane, compression="zlib")
    page = tifffile.TiffFile(tmp_path / "pages.tif").pages[8]
    cut = (tmp_path / "pages.tif").read_bytes()[:page.dataoffsets[0] + page.databytecounts[0]]
    (tmp_path / "cut.tif").write_bytes(cut)
    with pytest.raises(MitosegError, match="cut.tif: tifffile could not read all of it .*truncated or damaged"):
        io.open_volume(tmp_path / "cut.tif")
    assert io.open_volume(tmp_path / "pages.tif").shape == (16, 64, 64)


def test_split_path():
    assert io.split_path("a/cells.h5:raw") == (Path("a/cells.h5"), "raw")
    assert io.split_path("run.zarr:probs/0") == (Path("run.zarr"), "probs/0")
    assert io.split_path("run.zarr") == (Path("run.zarr"), None)
    assert io.split_path("dir:with:colons/vol.tif") == (Path("dir:with:colons/vol.tif"), None)
    assert io.split_path("cells.h5:/group/raw") == (Path("cells.h5"), "/group/raw")


def test_real_raw_folder_opens_as_full_stack(droso_dir, droso):
    vol = io.open_volume(droso_dir / "raw")
    assert vol.shape == (20, 1024, 1024)
    assert np.array_equal(vol[3, 256:512, 256:512], droso[0][3, 256:512, 256:512])


# ---------------------------------------------------------------- bad inputs


def test_missing_path(tmp_path):
    with pytest.raises(MitosegError, match="no such file or folder"):
        io.open_volume(tmp_path / "nothing.tif")
    with pytest.raises(MitosegError, match="no such file or folder"):
        io.open_volume(f"{tmp_path / 'nothing.h5'}:raw")


def test_random_bytes_tiff(tmp_path):
    bad = tmp_path / "noise.tif"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(MitosegError, match="cannot be read.*TIFF"):
        io.open_volume(bad)


@pytest.mark.parametrize("fraction", [0.001, 0.5, 0.99])
def test_truncated_real_tiff(tmp_path, written, fraction):
    data = Path(written["tiff"]).read_bytes()
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(MitosegError, match="truncated.tif: cannot be read"):
        io.open_volume(bad)


def test_2d_inputs_refused_but_a_one_page_tiff_is_one_slice(tmp_path, droso_dir, crop):
    """A PNG alone is refused (a slice of a folder); a TIFF of one page is a volume of one slice, as Fiji saves one
    section and `convert` a 1-slice volume (before: refused, so mitoseg could not read its own output back)."""
    with pytest.raises(MitosegError, match="single 2D image.*pass the folder"):
        io.open_volume(droso_dir / "mitochondria" / "00.png")
    tifffile.imwrite(tmp_path / "one.tif", crop[0], imagej=True, metadata={"spacing": 50, "unit": "nm"})
    np.testing.assert_array_equal(io.open_volume(tmp_path / "one.tif")[:], crop[:1])
    assert io.voxel_size(tmp_path / "one.tif")[0] == 50
    np.save(tmp_path / "flat.npy", crop[0])
    with pytest.raises(MitosegError, match=r"2D image \(256, 256\); a volume \(Z, Y, X\) is needed \(one section: "
                                           r"an array of shape \(1, 256, 256\), or a TIFF\)"):
        io.open_volume(tmp_path / "flat.npy")
    np.save(tmp_path / "one.npy", crop[:1])
    from mitoseg.convert import convert

    convert(tmp_path / "one.npy", tmp_path / "back.tif", (50, 4.6, 4.6), progress=False)
    np.testing.assert_array_equal(io.open_volume(tmp_path / "back.tif")[:], crop[:1])


def test_rgb_inputs_refused(tmp_path, crop):
    rgb = np.stack([crop[:4]] * 3, axis=-1)
    assert rgb.shape == (4, 256, 256, 3)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.save(tmp_path / "rgb.npy", rgb)
    for name in ["rgb.tif", "rgb.npy"]:
        with pytest.raises(MitosegError, match="3 colour channels.*greyscale"):
            io.open_volume(tmp_path / name)
    folder = tmp_path / "rgb_slices"
    folder.mkdir()
    for z, sl in enumerate(rgb):
        Image.fromarray(sl).save(folder / f"{z}.png")
    with pytest.raises(MitosegError, match="greyscale 2D slices are needed"):
        io.open_volume(folder)


def test_one_bit_slices_read_as_the_8_bit_slices_beside_them(droso_dir):
    """Three of the Drosophila stack's mask PNGs are 1-bit: read as 0/255 like the 8-bit masks they are stacked
    with (before, as 0/1, their mitochondria vanished at > 127)."""
    files = sorted((droso_dir / "mitochondria").glob("*.png"))
    one_bit = [z for z, f in enumerate(files) if Image.open(f).mode == "1"]
    assert one_bit == [1, 7, 18]
    labels = io.open_volume(droso_dir / "mitochondria")
    for z in one_bit:
        got = labels[z]
        assert got.dtype == np.uint8 and set(np.unique(got)) == {0, 255}
        np.testing.assert_array_equal(got, np.asarray(Image.open(files[z]).convert("L")))
        assert 0.03 < (got > 127).mean() < 0.08


def test_palette_slices_read_as_their_grey_levels_or_as_labels(tmp_path, crop, droso_dir):
    """A slice stored as indices into a grey palette (here index 255 - g for grey g) reads as its grey levels,
    not as the indices; indices into a palette of colours (a label image) read as the indices."""
    grey, labels = tmp_path / "grey", tmp_path / "labels"
    grey.mkdir(), labels.mkdir()
    mask = io.open_volume(droso_dir / "mitochondria")[:3, 256:512, 256:512] > 127
    for z in range(3):
        im = Image.fromarray(255 - crop[z]).convert("P")
        im.putpalette([v for i in range(256) for v in (255 - i,) * 3])
        im.save(grey / f"{z}.png")
        lab = Image.fromarray(mask[z].astype(np.uint8)).convert("P")
        lab.putpalette([0, 0, 0, 230, 40, 40])
        lab.save(labels / f"{z}.png")
    assert Image.open(grey / "0.png").mode == Image.open(labels / "0.png").mode == "P"
    np.testing.assert_array_equal(io.open_volume(grey)[:], crop[:3])
    np.testing.assert_array_equal(io.open_volume(labels)[:], mask.astype(np.uint8))


def test_slices_of_another_size_or_a_broken_slice_are_refused_when_opened(tmp_path, crop):
    for name, bad in (("size", lambda f: Image.fromarray(crop[0, :100]).save(f)),
                      ("colour", lambda f: Image.fromarray(np.stack([crop[0]] * 3, axis=-1)).save(f)),
                      ("broken", lambda f: f.write_bytes(b"\x89PNG not really"))):
        folder = tmp_path / name
        folder.mkdir()
        for z in range(4):
            Image.fromarray(crop[z]).save(folder / f"{z}.png")
        bad(folder / "2.png")
        with pytest.raises(MitosegError, match="all slices need one size and type" if name != "broken" else
                           "slice .*2.png cannot be read"):
            io.open_volume(folder)


def test_one_colour_image_is_not_read_as_a_volume(tmp_path, crop):
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([crop[0]] * 3, axis=-1), photometric="rgb")
    with pytest.raises(MitosegError, match=r"looks like one colour image \(Y, X, channels\) \(256, 256, 3\)"):
        io.open_volume(tmp_path / "rgb.tif")
    tifffile.imwrite(tmp_path / "three.tif", crop[:3])  # three slices: a volume
    assert io.open_volume(tmp_path / "three.tif").shape == (3, 256, 256)


def test_content_id_tells_another_volume_of_one_shape_and_histogram(lucchi_crop):
    image = lucchi_crop[0]
    assert io.content_id(image) == io.content_id(image.copy()) == io.content_id(zarr.array(image, chunks=(4, 64, 64)))
    assert io.content_id(image) != io.content_id(image[:, ::-1])
    assert io.content_id(image) != io.content_id(image[:-1])


def test_content_id_tells_sparse_masks_apart(lucchi_crop):
    """A mask with one more object off the centre, and a mitoseg output written again, are other inputs (before:
    only three 64-pixel centre crops were read, background in most masks, so a label resume mixed two)."""
    mask = lucchi_crop[1].copy()
    other = mask.copy()
    other[:, :20, :20] = 1  # a corner object through every slice
    assert io.content_id(mask) != io.content_id(other)
    first, again = (zarr.array(mask, chunks=(4, 64, 64)) for _ in range(2))
    first.attrs["created"], again.attrs["created"] = "2026-12-07 10:00:00", "2026-12-07 11:00:00"
    assert io.content_id(first) != io.content_id(again)


def test_extra_axes_of_size_one_are_dropped_and_others_named(written, crop, tmp_path):
    """A 5D OME-Zarr (t = c = 1) or an HDF5 with a trailing channel is the volume it holds, read lazily, at its
    stated voxel size; more channels or time points, or extra axes without names, are one line each."""
    vol = io.open_volume(written["ome_zarr_tczyx"])
    assert isinstance(vol.arr, io.Squeezed) and vol.chunks == crop.shape and vol.ndim == 3
    assert io.voxel_size(written["ome_zarr_tczyx"]) == pytest.approx((50.0, 4.6, 4.6))  # micrometres in nm
    assert np.array_equal(vol[..., 7], crop[..., 7]) and np.array_equal(vol[3, ...], crop[3])
    assert isinstance(io.open_volume(written["h5_zyxc"]).arr.arr, h5py.Dataset)
    two = np.stack([crop[:2], crop[:2]])[None]  # (t, c, z, y, x) = (1, 2, 2, 256, 256)
    write_image(two, zarr.open_group(str(tmp_path / "two.ome.zarr"), mode="w"), axes="tczyx", scale_factors=[])
    with pytest.raises(MitosegError, match=r"holds 2 channels \(axes t, c, z, y, x"):
        io.open_volume(tmp_path / "two.ome.zarr")
    np.save(tmp_path / "4d.npy", np.zeros((1, 2, 3, 4, 1), np.uint8))
    assert io.open_volume(tmp_path / "4d.npy").shape == (2, 3, 4)
    ref = crop[:5, :4, :6]
    view = io.Squeezed(ref[None, None], (2, 3, 4))  # numpy's indexing, advanced keys included
    for key in (np.s_[:, [1, 3]], np.s_[None], np.s_[ref > 50], np.s_[[0, 2], :, [1, 5]], np.s_[-1, 2],
                np.s_[::2, ..., 4], np.s_[np.array([True, False, True, False, True])], 3):
        np.testing.assert_array_equal(view[key], ref[key], err_msg=str(key))
        assert np.asarray(view[key]).shape == ref[key].shape, key
    assert (len(view), view.size, view.nbytes) == (5, ref.size, ref.nbytes)
    with h5py.File(tmp_path / "one.h5", "w") as f:  # Ilastik's export of one slice: (1, Y, X, 1), not (Y, X, 1)
        f["exported_data"] = crop[3:4, ..., None]
    np.testing.assert_array_equal(io.open_volume(tmp_path / "one.h5")[:], crop[3:4])
    np.save(tmp_path / "4d.npy", np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(MitosegError, match="3D volume"):
        io.open_volume(tmp_path / "4d.npy")


def test_space_axes_in_another_order_are_refused(tmp_path, crop):
    """An OME-Zarr whose space axes are stored y, x, z (NGFF asks z, y, x) was read with Y as Z: now one line."""
    group = zarr.open_group(str(tmp_path / "yxz.ome.zarr"), mode="w")
    write_image(crop[:4, :8, :16], group, axes="zyx", scale_factors=[])
    ome = dict(group.attrs)["ome"]
    ome["multiscales"][0]["axes"] = [ome["multiscales"][0]["axes"][i] for i in (1, 2, 0)]
    group.attrs["ome"] = ome
    with pytest.raises(MitosegError, match="stores its space axes in the order y, x, z; mitoseg reads them as z, y"):
        io.open_volume(tmp_path / "yxz.ome.zarr")


def test_4d_and_complex_refused(tmp_path):
    np.save(tmp_path / "4d.npy", np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(MitosegError, match="3D volume"):
        io.open_volume(tmp_path / "4d.npy")
    np.save(tmp_path / "c.npy", np.zeros((2, 3, 4), np.complex64))
    with pytest.raises(MitosegError, match="dtype complex64"):
        io.open_volume(tmp_path / "c.npy")


def test_bad_hdf5_names(tmp_path, crop):
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("group/raw", data=crop[:2])
        f.create_dataset("labels", data=crop[:2])
    with pytest.raises(MitosegError, match=r"name the dataset.*\(datasets: group/raw, labels\)"):
        io.open_volume(path)
    with pytest.raises(MitosegError, match=r"no dataset 'nope' in this HDF5 file \(datasets: group/raw, labels\)"):
        io.open_volume(f"{path}:nope")
    with pytest.raises(MitosegError, match="no dataset 'group'"):  # a group, not a dataset
        io.open_volume(f"{path}:group")
    assert io.open_volume(f"{path}:labels").shape == (2, 256, 256)


def test_single_dataset_hdf5_needs_no_name(tmp_path, crop):
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f.create_dataset("deep/inside/vol", data=crop[:3])
    assert np.array_equal(io.open_volume(tmp_path / "one.h5")[:], crop[:3])
    with h5py.File(tmp_path / "link.h5", "w") as f:  # its one dataset behind an external link (before: "none")
        f["vol"] = h5py.ExternalLink("one.h5", "/deep/inside/vol")
    assert np.array_equal(io.open_volume(tmp_path / "link.h5")[:], crop[:3])


def test_bad_zarr_names(written, tmp_path):
    store = written["zarr_group"].rpartition(":")[0]
    with pytest.raises(MitosegError, match="no array 'nope'"):
        io.open_volume(f"{store}:nope")
    with pytest.raises(MitosegError, match=r"is a Zarr group; name an array or image in it as .*:NAME \(other, raw\)"):
        io.open_volume(store)
    nested = zarr.open_group(str(tmp_path / "nested.zarr"), mode="w")  # nested arrays named too (before: raw alone)
    nested.create_array("raw", data=np.zeros((2, 4, 4), np.uint8))
    nested.create_group("seg").create_array("mito", data=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(MitosegError, match=r"NAME \(raw, seg/mito\)$"):
        io.open_volume(tmp_path / "nested.zarr")
    nested["seg"].create_array("er", data=np.zeros((2, 4, 4), np.uint8))  # a group named inside: its names from the top
    with pytest.raises(MitosegError, match=r"nested.zarr:seg is a Zarr group; name an array or image in it as "
                                           r".*nested.zarr:seg/NAME \(seg/er, seg/mito\)$"):
        io.open_volume(f"{tmp_path / 'nested.zarr'}:seg")
    one = zarr.open_group(str(tmp_path / "one.zarr"), mode="w")  # its one array opens, as an HDF5 file's one dataset
    one.create_group("seg").create_array("mito", data=np.arange(32, dtype=np.uint8).reshape(2, 4, 4))
    np.testing.assert_array_equal(io.open_volume(tmp_path / "one.zarr")[:], np.arange(32).reshape(2, 4, 4))
    store2 = written["zarr_v2_group"].rpartition(":")[0]
    with pytest.raises(MitosegError, match=r"is a Zarr group; name an array"):
        io.open_volume(store2)
    # in its own words (before: the libraries' IndexError on 'fields' and GroupNotFoundError)
    with pytest.raises(MitosegError, match=r"is one Zarr array, not a group: give it without :raw$"):
        io.open_volume(f"{written['zarr_v3']}:raw")
    (tmp_path / "vol.n5").mkdir()
    (tmp_path / "vol.n5" / "attributes.json").write_text('{"n5": "2.5.1"}')  # before: "holds no image slices"
    with pytest.raises(MitosegError, match=r"vol.n5 is an N5 container, which mitoseg does not read"):
        io.open_volume(tmp_path / "vol.n5")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(MitosegError, match=r"holds no Zarr array or group \(an empty or unfinished .zarr folder\)"):
        io.open_volume(tmp_path / "empty.zarr")


def test_empty_folder_and_unknown_suffix(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(MitosegError, match="holds no image slices"):
        io.open_volume(empty)
    odd = tmp_path / "vol.nii"
    odd.write_bytes(b"\0" * 100)
    with pytest.raises(MitosegError, match="unknown volume format '.nii'"):
        io.open_volume(odd)


def test_load_pair(tmp_path, droso_crop):
    raw, mask = droso_crop
    np.save(tmp_path / "img.npy", raw)
    np.save(tmp_path / "lab.npy", mask * 255)
    np.save(tmp_path / "short.npy", mask[:10])
    img, lab = io.load_pair(tmp_path / "img.npy", tmp_path / "lab.npy")
    assert np.array_equal(img, raw) and np.array_equal(lab, mask) and lab.dtype == np.uint8
    with pytest.raises(MitosegError, match=r"image \(20, 256, 256\) and labels \(10, 256, 256\) differ in shape"):
        io.load_pair(tmp_path / "img.npy", tmp_path / "short.npy")
    with pytest.raises(MitosegError, match="label_threshold must be a number >= 0, not -5"):
        io.load_pair(tmp_path / "img.npy", tmp_path / "lab.npy", threshold=-5)
    nan = mask.astype(np.float32)
    nan[3, 100, 100] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    for threshold in (None, 0.5):  # before: "more than two values (0, 1, nan)", or with a threshold background
        with pytest.raises(MitosegError, match="labels .*nan.npy hold NaN values: replace them first"):
            io.load_pair(tmp_path / "img.npy", tmp_path / "nan.npy", threshold=threshold)


# ---------------------------------------------------------------- intensities and labels


def test_intensity_range_uint8_uses_percentiles_too(crop):
    low, high = io.intensity_range(crop)
    assert (low, high) == pytest.approx(tuple(np.percentile(crop, [0.5, 99.5])))


def test_contrast_changes_reach_the_network_alike(lucchi_crop):
    """A CA1 crop squeezed into grey levels 40..210 (the EPFL originals span ~170 levels), darkened or
    brightened, is normalised to nearly the same input as the original."""
    raw, _ = lucchi_crop
    ref = io.normalize(raw, io.intensity_range(raw))
    f = raw.astype(np.float64)
    for changed in (40 + f * 170 / 255, f * 0.6, np.minimum(f * 0.8 + 50, 255)):
        vol = np.rint(changed).astype(np.uint8)
        out = io.normalize(vol, io.intensity_range(vol))
        assert np.abs(out - ref).mean() < 0.01  # uint8 rounding only


def test_equalize_is_blind_to_gamma_where_percentile_is_not(lucchi_crop):
    """Gamma 1.4 and 0.7 on a CA1 crop: the equalising rule gives the network nearly the input of the
    original (levels the change merges differ), the linear percentile window does not."""
    raw, _ = lucchi_crop
    f = raw.astype(np.float64) / 255
    for g in (0.7, 1.4):
        changed = np.rint(255 * f**g).astype(np.uint8)
        diff = {rule: np.abs(io.normalize(changed, io.intensity_range(changed, rule=rule))
                             - io.normalize(raw, io.intensity_range(raw, rule=rule))).mean()
                for rule in io.RULES}
        assert diff["equalize"] < 0.005 and diff["percentile"] > 0.03, diff


def test_equalize_maps_levels_by_rank_for_every_dtype(lucchi_crop):
    """The equalised input of a uint8 crop is (about) each voxel's rank in [0, 1]; uint16 (lookup table)
    and float (interpolation) copies of it get the same input; the 2-level window is the linear rule."""
    raw, _ = lucchi_crop
    window = io.intensity_range(raw, rule="equalize")
    assert len(window) == io.RULES["equalize"] and list(window) == sorted(window)
    out = io.normalize(raw, window)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    rank = (np.argsort(np.argsort(raw, axis=None, kind="stable"), kind="stable") + 0.5) / raw.size
    assert np.abs(out.ravel() - rank).mean() < 0.01  # ties: the mid-rank of a level, within its count
    scaled = raw.astype(np.uint16) * 200
    assert np.allclose(io.normalize(scaled, io.intensity_range(scaled, rule="equalize")), out, atol=1e-6)
    assert np.allclose(io.normalize(raw.astype(np.float32), window), out, atol=1e-6)
    linear = io.intensity_range(raw, rule="percentile")
    assert np.array_equal(io.normalize(raw, linear), io.normalize(raw, (linear[0], linear[1])))
    with pytest.raises(MitosegError, match="normalisation rule"):
        io.intensity_range(raw, rule="zscore")


def test_matched_window_undoes_monotone_changes_and_keeps_the_reference_input(lucchi_crop):
    """Grey levels moved onto a reference histogram (half of a CA1 crop) before the reference's linear window:
    the reference itself gets (about) its linear input back; the other half under gamma 1.4 / 0.7, darker or
    squeezed gets (about) the input of its unchanged self, where its own percentile window does not for gamma;
    a float copy of the reference maps like the uint8 one."""
    raw, _ = lucchi_crop
    ref, new = raw[:16], raw[16:]
    reference, window = io.reference_levels(ref), io.intensity_range(ref)
    assert len(reference) == io.REFERENCE_POINTS and list(reference) == sorted(reference)
    matched = io.matched_window(ref, reference, window)
    assert len(matched) == 256 and np.abs(io.normalize(ref, matched) - io.normalize(ref, window)).mean() < 0.005
    unchanged = io.normalize(new, io.matched_window(new, reference, window))
    f = new.astype(np.float64) / 255
    for name, changed in {"gamma 1.4": 255 * f**1.4, "gamma 0.7": 255 * f**0.7, "darker": 0.6 * new,
                          "squeezed": 40 + new * (170 / 255)}.items():
        changed = np.rint(changed).astype(np.uint8)
        moved = np.abs(io.normalize(changed, io.matched_window(changed, reference, window)) - unchanged).mean()
        linear = np.abs(io.normalize(changed, io.intensity_range(changed))
                        - io.normalize(new, io.intensity_range(new))).mean()
        assert moved < 0.006, (name, moved)
        assert linear > 0.03 or not name.startswith("gamma"), (name, linear)
    as_float = io.matched_window(new.astype(np.float32) / 255, io.reference_levels(ref.astype(np.float32) / 255),
                                 tuple(w / 255 for w in window))
    assert np.abs(io.normalize(new.astype(np.float32) / 255, as_float) - unchanged).mean() < 1e-3


def test_padding_is_left_out_of_every_window(lucchi_crop):
    """A CA1 crop squeezed into 40..210 as the EPFL originals, then placed in black (or white) borders as an
    aligned stack is (56 % of the voxels padding): its percentile, equalising and matched windows are those of
    the crop without the borders; the tissue's own lowest level (under 1 % of the voxels) is kept."""
    raw, _ = lucchi_crop
    ref, new = raw[:16], np.rint(40 + raw[16:] * (170 / 255)).astype(np.uint8)
    reference, window = io.reference_levels(ref), io.intensity_range(ref)
    for border in (0, 255):
        padded = np.pad(new, ((0, 0), (64, 64), (64, 64)), constant_values=border)
        assert np.mean(padded == border) > 0.5
        for rule in io.RULES:  # every voxel sampled (max_samples), so the windows can be equal
            assert io.intensity_range(padded, 10**7, rule) == io.intensity_range(new, 10**7, rule)
        assert io.matched_window(padded, reference, window, 10**7) == io.matched_window(new, reference, window)
    assert io._sample(new, 10**6).min() == new.min()  # no padding: every level kept
    # a raw detector's narrow uint16 range with one black column (0.4 % of the voxels) or two saturated rows: at
    # the rule's 1 % of before, the column became the window's end and the tissue reached the network as 0.9..1
    narrow = np.rint(30000 + raw.astype(np.float64) / 255 * 4000).astype(np.uint16)
    column, rows = narrow.copy(), narrow.copy()
    column[:, :, 0], rows[:, :2, :] = 0, 65535
    assert io.intensity_range(column) == io.intensity_range(rows) == io.intensity_range(narrow)
    padded_ref = io.reference_levels(np.pad(ref, ((0, 0), (8, 8), (8, 8))), 10**7)
    assert np.abs(np.subtract(padded_ref, reference)).max() <= 1  # the crop's few black voxels go with the border


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
def test_intensity_range_percentiles(crop, dtype):
    vol = crop[:8, :64, :64].astype(dtype) * (40 if dtype == np.uint16 else 0.01)
    vol[0, 0, 0] = 60000 if dtype == np.uint16 else 1e6  # one bright artefact must not set the window
    low, high = io.intensity_range(vol)
    exp_low, exp_high = np.percentile(vol.astype(np.float64), [0.5, 99.5])
    assert (low, high) == pytest.approx((exp_low, exp_high))
    assert high <= np.sort(vol, axis=None)[-2]  # the window ignores the artefact
    out = io.normalize(vol, (low, high))
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert np.mean(out == 1.0) < 0.01


def test_intensity_range_large_volume_subsamples_close_to_exact(crop):
    vol = crop.astype(np.uint16) * 100  # 1.3 M voxels > max_samples below: strided subsample
    low, high = io.intensity_range(vol, max_samples=100_000)
    exp_low, exp_high = np.percentile(vol, [0.5, 99.5])
    assert abs(low - exp_low) < 0.02 * (exp_high - exp_low)
    assert abs(high - exp_high) < 0.02 * (exp_high - exp_low)


def test_intensity_range_constant_volume():
    low, high = io.intensity_range(np.full((2, 3, 4), 7.0, np.float32))
    assert (low, high) == (7.0, 8.0)
    with pytest.raises(MitosegError, match="the image holds one grey level \\(7\\) in 99 % of its voxels"):
        io.intensity_range(np.full((2, 3, 4), 7.0, np.float32), flat="the image")


def test_normalize_uint8_window(crop):
    out = io.normalize(crop, (0.0, 255.0))
    assert out.dtype == np.float32
    assert np.allclose(out * 255.0, crop, atol=1e-3)


@pytest.mark.parametrize("rule", ["percentile", "equalize"])
def test_lookup_table_gives_the_arithmetic_values(lucchi_crop, rule):
    """uint8 and uint16 blocks are normalised through a table of every grey level: the values of the
    arithmetic on the same levels as floats, voxel for voxel; other dtypes have no table."""
    raw = lucchi_crop[0][:4, :64, :64]
    for block in (raw, raw.astype(np.uint16) * 200):
        window = io.intensity_range(block, rule=rule)
        assert io.lookup_table(block.dtype, window).shape == (np.iinfo(block.dtype).max + 1,)
        np.testing.assert_array_equal(io.normalize(block, window), io.normalize(block.astype(np.float32), window))
    assert io.lookup_table(np.float32, (0.0, 1.0)) is None


def test_nan_refused(crop):
    vol = crop[:4, :32, :32].astype(np.float32)
    vol[2, 5, 5] = np.nan
    with pytest.raises(MitosegError, match="NaN or infinite"):
        io.intensity_range(vol)
    with pytest.raises(MitosegError, match="NaN or infinite"):
        io.normalize(vol, (0.0, 255.0))
    vol[2, 5, 5] = np.inf
    with pytest.raises(MitosegError, match="NaN or infinite"):
        io.intensity_range(vol)


def test_binarize_real_antialiased_masks(droso_dir, capsys):
    labels = io.read_volume(droso_dir / "mitochondria")
    assert labels.shape == (20, 1024, 1024)
    assert len(np.unique(labels)) > 10  # anti-aliased, not just 0/255
    mask = io.binarize(labels, 127)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert np.array_equal(mask, (labels > 127).astype(np.uint8))
    assert 0.03 < mask.mean() < 0.07
    assert (mask.mean(axis=(1, 2)) > 0.03).all()  # every section labelled, its 1-bit PNGs too
    loose = io.binarize(labels, 0)  # threshold 0 keeps the anti-aliased rim
    assert mask.mean() < loose.mean()
    assert np.all(loose >= mask)
    with pytest.raises(MitosegError, match=r"hold more than two values \(0, .*\): give --label-threshold"):
        io.binarize(labels)  # no threshold: refused, never read silently as > 0
    assert np.array_equal(io.binarize(labels > 127), mask)  # two values: > 0 needs no threshold
    # labels thought of as 0..1: --label-threshold 0.5 takes the rim too, as 0 does: said (before: in silence)
    capsys.readouterr()
    assert np.array_equal(io.binarize(labels, 0.5), loose)
    assert "so --label-threshold 0.5 takes every non-zero voxel as foreground, as 0 does" in capsys.readouterr().err
    io.binarize(labels, 127)
    io.binarize(labels > 127, 0.5)  # 0/1 labels: 0.5 is their middle
    assert capsys.readouterr().err == ""


def test_thresholded_view(droso_dir):
    labels = io.open_volume(droso_dir / "mitochondria")
    view = io.Thresholded(labels, 127)
    assert view.shape == (20, 1024, 1024) and view.dtype == bool and view.ndim == 3
    block = labels[3:6, 100:400, 500:900]
    key = np.s_[3:6, 100:400, 500:900]
    assert np.array_equal(view[key], block > 127)
    assert np.array_equal(io.Thresholded(labels, 127, strict=False)[key], block >= 127)
    assert np.array_equal(io.Thresholded(labels, 255, strict=False)[key], block == 255)
    assert view[key].any() and not view[key].all()


# ---------------------------------------------------------------- outputs


def test_check_output(tmp_path):
    target = tmp_path / "out.zarr"
    assert io.check_output(target, overwrite=False) == target
    target.mkdir()
    with pytest.raises(MitosegError, match="already exists; pass --overwrite"):
        io.check_output(target, overwrite=False)
    assert io.check_output(str(target), overwrite=True) == target
    (tmp_path / "image.tif").write_bytes(b"")
    for path, kind, inputs, words in (
            (tmp_path / "image.tif" / "p.zarr", None, (), "image.tif is a file, not a folder"),
            (tmp_path / "p.tif", "zarr", (), "mitoseg writes Zarr"),
            (tmp_path / "x" / ".." / "image.tif", None, (f"{tmp_path / 'image.tif'}",), "is an input of this command"),
            (tmp_path / "v.h5", None, (f"{tmp_path / 'v.h5'}:raw", np.zeros(3)), "is an input of this command"),
            (target, "file", (), "is a folder; give a file name")):
        with pytest.raises(MitosegError, match=words):
            io.check_output(path, overwrite=True, kind=kind, inputs=inputs)
    assert io.check_output(tmp_path / "new" / "deeper" / "t.csv", False, "file", (tmp_path / "image.tif",))
    # before: "" and "." raised ValueError in partial_path (a traceback); a dangling link was written through after
    # all the work ("Not a directory"), and as an input was "no such file or folder"
    for nameless in ("", ".", "/"):
        with pytest.raises(MitosegError, match="names no file or folder to write: give the output's name"):
            io.check_output(nameless, overwrite=False)
    (tmp_path / "dangling.zarr").symlink_to(tmp_path / "nowhere.zarr")
    with pytest.raises(MitosegError, match=r"dangling.zarr is a broken link \(to .*nowhere.zarr\): remove it"):
        io.check_output(tmp_path / "dangling.zarr", overwrite=False)
    with pytest.raises(MitosegError, match=r"dangling.zarr: a broken link \(to .*nowhere.zarr\)$"):
        io.open_volume(tmp_path / "dangling.zarr")
    # `:NAME` after a file of another format, or a ':' alone, named the file missing (before: "no such file")
    np.save(tmp_path / "v.npy", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(MitosegError, match=r"image.tif holds no named datasets: `:NAME` names one inside .h5 and"):
        io.open_volume(f"{tmp_path / 'image.tif'}:raw")
    with pytest.raises(MitosegError, match=r"v.npy:: a ':' names no dataset: give .*v.npy alone$"):
        io.open_volume(f"{tmp_path / 'v.npy'}:")


def test_an_array_where_a_path_is_needed_is_one_line(droso_crop):
    with pytest.raises(MitosegError, match="a volume's path .* is needed here, not a ndarray"):
        io.open_volume(droso_crop[0])
    with pytest.raises(MitosegError, match="not a ndarray"):
        io.load_pair(*droso_crop)
    with pytest.raises(MitosegError, match="not a ndarray"):  # before: an OSError printing the whole array
        io.voxel_size(droso_crop[0])
    with pytest.raises(MitosegError, match="not a list"):  # before: None, as if it stated no size
        io.voxel_size(["raw.tif"])


def test_foreground_threshold(tmp_path):
    kind = {"kind": "probability"}
    probs = blocks.open_output(tmp_path / "p.zarr", (2, 4, 4), "uint8", (2, 4, 4), {}, kind).array
    probs16 = blocks.open_output(tmp_path / "f.zarr", (2, 4, 4), "float16", (2, 4, 4), {}, kind).array
    mask = np.zeros((2, 4, 4), np.uint8)
    assert io.foreground_threshold(probs, None) == 127.5  # p >= 0.5 <=> stored >= 128
    assert io.foreground_threshold(probs, 0.8) == pytest.approx(204.0)
    assert io.foreground_threshold(probs16, None) == 0.5
    assert io.foreground_threshold(mask, None) is None
    assert io.foreground_threshold(mask, 3) == 3
    with pytest.raises(MitosegError, match="probability in \\(0, 1\\) for mitoseg probabilities, not 3"):
        io.foreground_threshold(probs, 3)
    ids = np.arange(32, dtype=np.uint8).reshape(2, 4, 4)  # object ids, another tool's probabilities...
    with pytest.raises(MitosegError, match=r"the input holds more than two values \(0, 1, 2, 3, ...\)"):
        io.foreground_threshold(ids, None)
    assert io.foreground_threshold(ids, 1) == 1
    # a probability given for whole numbers above 1 (0..255 probabilities of another tool): every non-zero
    # voxel would pass it; for a 0/1 mask or floats it is a plain threshold
    with pytest.raises(MitosegError, match="holds whole numbers up to 31, so --threshold 0.5 would make every"):
        io.foreground_threshold(ids, 0.5)
    assert io.foreground_threshold(ids.astype(np.float32) / 31, 0.5) == 0.5
    # the other way round: a threshold on the 0..255 scale for floats of 0..1 would make nothing foreground
    with pytest.raises(MitosegError, match=r"holds values from 0 to 1 \(sampled\), so --threshold 128 would make no"):
        io.foreground_threshold(ids.astype(np.float32) / 31, 128)
    assert io.foreground_threshold(ids.astype(np.float32), 16) == 16  # floats of another scale: as given
    # floats of 0..255 (Fiji's 32-bit of an 8-bit map) and a probability: before, every voxel was foreground
    with pytest.raises(MitosegError, match=r"holds values from 0 to 31 \(sampled\), so --threshold 0.4 would make "
                                           "nearly every voxel foreground"):
        io.foreground_threshold(ids.astype(np.float64), 0.4)
    assert io.foreground_threshold(ids.astype(np.float32) - 15, 0.5) == 0.5  # signed floats (logits): as given
    assert io.foreground_threshold((ids > 9).astype(np.uint8), 0.5) == 0.5
    # a class export's background 1 and foreground 2 (no 0): read as > 0, every voxel was foreground, one object
    classes = (ids > 9).astype(np.uint8) + 1
    with pytest.raises(MitosegError, match="holds two values, 1 and 2, and no 0, so every voxel would be foreground: "
                                           "if 2 marks mitochondria, give --threshold 2"):
        io.foreground_threshold(classes, None)
    assert io.foreground_threshold(classes, 2) == 2
    with pytest.raises(MitosegError, match="give --label-threshold 1 \\(foreground: label > it\\)"):
        io.binarize(classes)
    np.testing.assert_array_equal(io.binarize(classes, 1), ids > 9)
    io.check_binary(ids > 9)  # bool, and 0/1: as before
    # NaN in another tool's probabilities: >= any threshold is false, so they were read as background in silence
    nan = ids.astype(np.float32) / 31
    nan[1] = np.nan
    with pytest.raises(MitosegError, match=r"the input holds NaN values \(in a subsample\): replace them first"):
        io.foreground_threshold(nan, 0.5)
    written = blocks.open_output(tmp_path / "m.zarr", (2, 4, 4), "uint8", (2, 4, 4), {}, {"kind": "mask"}).array
    written[:] = ids  # mitoseg's own masks are not sampled
    assert io.foreground_threshold(written, None) is None


def test_load_pair_keeps_unannotated_voxels(tmp_path, droso_crop):
    raw, mask = droso_crop
    labels = (mask * 255).astype(np.uint8)
    labels[10:] = 7  # slices 10.. not annotated
    np.save(tmp_path / "img.npy", raw)
    np.save(tmp_path / "lab.npy", labels)
    _, got = io.load_pair(tmp_path / "img.npy", tmp_path / "lab.npy", unlabeled=7)
    assert np.array_equal(got[:10], mask[:10]) and (got[10:] == 2).all()
    with pytest.raises(MitosegError, match="no voxel of the --unlabeled value 9"):
        io.load_pair(tmp_path / "img.npy", tmp_path / "lab.npy", unlabeled=9)
    labels[0, 0, :3] = (1, 2, 3)  # more than two annotated values: a threshold is needed
    np.save(tmp_path / "lab.npy", labels)
    with pytest.raises(MitosegError, match="annotated voxels\\) hold more than two values"):
        io.load_pair(tmp_path / "img.npy", tmp_path / "lab.npy", unlabeled=7)
    _, got = io.load_pair(tmp_path / "img.npy", tmp_path / "lab.npy", threshold=127, unlabeled=7)
    assert (got[10:] == 2).all() and got[0, 0, :3].tolist() == [0, 0, 0]
    np.save(tmp_path / "ilastik.npy", np.where(np.arange(20)[:, None, None] < 10, mask + 1, 0).astype(np.uint8))
    _, got = io.load_pair(tmp_path / "img.npy", tmp_path / "ilastik.npy", unlabeled=0)  # 0 none, 1 bg, 2 fg
    assert np.array_equal(got[:10], mask[:10]) and (got[10:] == 2).all()
    # without --unlabeled: before, a hint to --label-threshold 0, which made every annotated voxel foreground
    with pytest.raises(MitosegError, match="hold the values 0, 1 and 2: if 0 marks voxels nobody annotated"):
        io.load_pair(tmp_path / "img.npy", tmp_path / "ilastik.npy")
    np.save(tmp_path / "one.npy", np.where(np.arange(20)[:, None, None] < 10, np.ones_like(mask), 0).astype(np.uint8))
    with pytest.raises(MitosegError, match=r"hold one value \(1\) besides the --unlabeled 0, so the annotated"):
        io.load_pair(tmp_path / "img.npy", tmp_path / "one.npy", unlabeled=0)  # background only, or foreground?
    # a plain 0/255 mask given --unlabeled 0 by mistake: the line says to leave it out (before: only a threshold)
    np.save(tmp_path / "plain.npy", (mask * 255).astype(np.uint8))
    with pytest.raises(MitosegError, match=r"\(255\) besides the --unlabeled 0, .*if 0 is the background, leave out"):
        io.load_pair(tmp_path / "img.npy", tmp_path / "plain.npy", unlabeled=0)


def test_overwrite_replaces_only_what_mitoseg_writes(tmp_path, crop):
    """--overwrite may replace a file, an empty folder, a run, a report or a Zarr volume; a folder of other
    files (the user's data named as the output by mistake) is refused and left as it was."""
    data = tmp_path / "data"
    data.mkdir()
    tifffile.imwrite(data / "stack.tif", crop[:2])
    with pytest.raises(MitosegError, match="is a folder of other files .* --overwrite replaces only those"):
        io.check_output(data, overwrite=True)
    assert [p.name for p in data.iterdir()] == ["stack.tif"]
    zarr.create_array(str(tmp_path / "p.zarr"), data=crop[:2])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    for ok in ("p.zarr", "run", "empty", "data/stack.tif"):
        assert io.check_output(tmp_path / ok, overwrite=True) == tmp_path / ok


def test_foreground_of_a_binary_mask_and_refusal_of_more_values(droso_crop):
    """`foreground`: > 0 of bool, 0/1 and 0/255 masks of the real stack; probabilities, object ids and NaN
    are refused with the values they hold."""
    mask = droso_crop[1][:4]
    for binary in (mask, mask.astype(bool), mask * 255, mask.astype(np.float32)):
        np.testing.assert_array_equal(io.foreground(binary), mask > 0)
    probs = jittered_probabilities(mask)
    with pytest.raises(MitosegError, match=r"the mask holds more than two values \(0, 1, 2, 3, ...\): a binary"):
        io.foreground(probs)
    ids = mask.astype(np.int32)
    ids[:, :, 128:] *= 7
    with pytest.raises(MitosegError, match=r"\(0, 1, 7\)"):
        io.foreground(ids)
    nan = mask.astype(np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(MitosegError, match="more than two values"):
        io.foreground(nan)
    with pytest.raises(MitosegError, match=r"holds two values without 0 \(1, 2\): a binary mask of 0"):
        io.foreground(mask + 1)  # before: "more than two values (1, 2)"


def test_an_imagej_tiff_states_its_calibration(tmp_path, crop):
    """Fiji's calibration (slice spacing, pixel width, unit) is the TIFF's voxel size in nm; a TIFF without
    one, or in pixels, states none."""
    tifffile.imwrite(tmp_path / "nm.tif", crop[:4], imagej=True, resolution=(1 / 4.6, 1 / 4.6),
                     metadata={"spacing": 50, "unit": "nm", "axes": "ZYX"})
    tifffile.imwrite(tmp_path / "px.tif", crop[:4], imagej=True,
                     metadata={"spacing": 1, "unit": "pixel", "axes": "ZYX"})
    tifffile.imwrite(tmp_path / "plain.tif", crop[:4])
    assert io.voxel_size(tmp_path / "nm.tif") == pytest.approx((50.0, 4.6, 4.6))
    assert io.voxel_size(tmp_path / "px.tif") is None and io.voxel_size(tmp_path / "plain.tif") is None


def test_what_other_tools_write_is_read_or_named(tmp_path, crop):
    """An OME-TIFF's physical sizes (micrometres by default, or its unit), macOS's hidden ._ files beside
    slices, a two-channel ImageJ hyperstack, volumes stating axes X, Y, Z (TIFF, Zarr, HDF5), a TIFF of two volumes,
    a 0/-1 mask, a text file named .npy, an empty path and float labels of 0..1:
    read, or one line that names what they are (before: no voxel size, the folder refused, a bare shape,
    numpy's advice to load a pickle, the current folder read as slices, hints for integer labels)."""
    tifffile.imwrite(tmp_path / "um.ome.tif", crop[:4], metadata={"axes": "ZYX", "PhysicalSizeX": 0.0046,
                                                                  "PhysicalSizeY": 0.0046, "PhysicalSizeZ": 0.05})
    tifffile.imwrite(tmp_path / "nm.ome.tif", crop[:4], metadata={
        "axes": "ZYX", **{f"PhysicalSize{a}": v for a, v in zip("ZYX", (50, 5, 5), strict=True)},
        **{f"PhysicalSize{a}Unit": "nm" for a in "ZYX"}})
    assert io.voxel_size(tmp_path / "um.ome.tif") == (50.0, 4.6, 4.6)
    assert io.voxel_size(tmp_path / "nm.ome.tif") == (50.0, 5.0, 5.0)
    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(3):
        tifffile.imwrite(folder / f"s{z}.tif", crop[z])
        (folder / f"._s{z}.tif").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    np.testing.assert_array_equal(io.open_volume(folder)[:], crop[:3])
    tifffile.imwrite(tmp_path / "zcyx.tif", np.stack([crop[:3], crop[:3]], axis=1), imagej=True,
                     metadata={"axes": "ZCYX"})
    (tmp_path / "text.npy").write_text("not an array")
    tifffile.imwrite(tmp_path / "yxz.tif", np.ascontiguousarray(crop[:3].transpose(1, 2, 0)), metadata={"axes": "YXZ"})
    tifffile.imwrite(tmp_path / "yxzc.tif", np.ascontiguousarray(crop[:3].transpose(1, 2, 0))[..., None],
                     metadata={"axes": "YXZC"})  # a channel of one: read as (Y, X, Z) too
    xyz = np.ascontiguousarray(crop[:3].transpose(2, 1, 0))
    zarr.create_array(str(tmp_path / "xyz.zarr"), data=xyz, dimension_names=("x", "y", "z"))  # xarray's names
    with tifffile.TiffWriter(tmp_path / "two.tif") as tif:  # an image and its mask in one file
        tif.write(crop[:4], photometric="minisblack")
        tif.write((crop[:4] > 100).astype(np.uint8), photometric="minisblack")
    with h5py.File(tmp_path / "xyz.h5", "w") as f:  # HDF5 dimension labels
        f.create_dataset("v", data=xyz)
        for axis, label in enumerate("xyz"):
            f["v"].dims[axis].label = label
    for spec, words in [(tmp_path / "zcyx.tif", r"holds 2 channels \(axes ZCYX"),
                        (tmp_path / "yxz.tif", "states its axes in the order Y, X, Z; mitoseg reads them as Z, Y, X: "
                                               "save it with the axes in that order"),  # before: read, Y taken as Z
                        (tmp_path / "yxzc.tif", "states its axes in the order Y, X, Z"),
                        (tmp_path / "xyz.zarr", "states its axes in the order X, Y, Z"),  # before: read, X taken as Z
                        (tmp_path / "xyz.h5", "states its axes in the order X, Y, Z"),
                        (tmp_path / "two.tif", r"holds 2 volumes \(TIFF series"),  # before: the mask dropped unsaid
                        (tmp_path / "text.npy", "is no .npy array of numbers"), ("", "an empty path was given")]:
        with pytest.raises(MitosegError, match=words):
            io.open_volume(spec)
    signed = np.where(crop[:3] > 100, -1, 0).astype(np.int8)  # a 0/255 mask saved as int8 (before: "and no 0")
    with pytest.raises(MitosegError, match=r"holds only the values -1 and 0, so no voxel would be foreground"):
        io.check_binary(signed, "the truth")
    soft = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 8, 8)
    with pytest.raises(MitosegError, match="give --label-threshold .*0.5 for labels or probabilities of 0..1"):
        io.binarize(soft, None, "labels")


def test_a_threshold_above_sparse_or_empty_floats_is_not_refused():
    """The refusal of --threshold > 1 looks at a sample: a sparse float 0..255 prediction (its few voxels missed)
    or an empty one is scored as given, not refused with a claim the sample cannot back."""
    sparse = np.zeros((64, 512, 512), np.float32)
    sparse[10:12, 200:202, 200:202] = 255
    assert io.foreground_threshold(sparse, 128) == 128
    assert io.foreground_threshold(np.zeros((4, 64, 64), np.float32), 128) == 128


def test_an_output_another_process_writes_is_refused(tmp_path):
    """Two runs on one output: the second is refused in one line naming the first's pid (before: it deleted the
    first's unfinished blocks, and the first renamed a volume of zeros as finished); free again once the first
    ends, and after `finish_output` this process's lock file is gone."""
    import subprocess
    import sys
    import time

    out = tmp_path / "p.zarr"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mitoseg import io; "
                               f"io.claim({str(out)!r}); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MitosegError, match=rf"p.zarr is being written by another mitoseg process \(pid "
                                               rf"{holder.pid}\): wait for it to end"):
            io.check_output(out, overwrite=True)
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    io.check_output(out, overwrite=False)  # the first ended: its lock went with it
    io.check_output(out, overwrite=False)  # this process's own claim is no obstacle to itself
    io.partial_path(out).mkdir()
    io.finish_output(out)
    assert str(out.resolve()) not in io.CLAIMS and not io._lock_file(str(out.resolve())).exists()
    # an API function that fails midway lets go of what it claimed (a notebook that goes on blocks no one)
    from mitoseg import instances

    np.save(tmp_path / "mask.npy", np.eye(4, dtype=np.uint8)[None].repeat(4, axis=0))
    (tmp_path / "t.csv").write_text("an existing table")
    with pytest.raises(MitosegError, match="t.csv already exists"):  # refused after its claim
        instances.label_volume(tmp_path / "mask.npy", tmp_path / "l.zarr", table=tmp_path / "t.csv", progress=False)
    assert str((tmp_path / "t.csv").resolve()) not in io.CLAIMS and not list(tmp_path.glob(".*.lock"))
    # an output in folders that do not exist yet, refused after its claim: the folders go with the lock (before:
    # an empty "new dir/" was left by a refused export)
    from mitoseg import export

    with pytest.raises(MitosegError, match="no such model folder or checkpoint"):
        export.export_bioimageio(tmp_path / "no run", str(tmp_path / "mask.npy"), tmp_path / "new dir" / "p.zip")
    assert not (tmp_path / "new dir").exists()
    io.claim(tmp_path / "new dir" / "deeper" / "l.zarr")
    io.release(tmp_path / "new dir" / "deeper" / "l.zarr")
    assert not (tmp_path / "new dir").exists()
    io.claim(tmp_path / "kept" / "l.zarr")
    (tmp_path / "kept" / "l.zarr").mkdir()  # written: the folder holds it, and stays
    io.release(tmp_path / "kept" / "l.zarr")
    assert (tmp_path / "kept" / "l.zarr").is_dir()


def test_an_image_labels_lock_is_not_made_inside_the_image(tmp_path):
    """`predict --out p.ome.zarr --mask p.ome.zarr/labels/mask` was refused ("p.ome.zarr already exists"): the mask's
    lock made p.ome.zarr/labels/ before the image was written, and every retry met that folder."""
    from mitoseg import instances

    label = tmp_path / "im.ome.zarr" / "labels" / "mito"
    io.claim(label)
    assert not (tmp_path / "im.ome.zarr").exists() and (tmp_path / ".im.ome.zarr.labels.mito.lock").is_file()
    io.release(label)
    np.save(tmp_path / "mask.npy", np.eye(8, dtype=np.uint8)[None].repeat(4, axis=0))
    with pytest.raises(MitosegError):  # its image first
        instances.label_volume(tmp_path / "mask.npy", label, voxel_size=(5, 5, 5), progress=False)
    assert not (tmp_path / "im.ome.zarr").exists()
    instances.label_volume(tmp_path / "mask.npy", tmp_path / "im.ome.zarr", voxel_size=(5, 5, 5), progress=False)
    instances.label_volume(tmp_path / "mask.npy", label, progress=False)
    assert io.open_volume(label).shape == (4, 8, 8) and not list(tmp_path.glob(".*.lock"))


def test_a_lock_that_cannot_be_taken_is_said_of_the_output(tmp_path, monkeypatch):
    """A file system that cannot lock (NFS without lockd: ENOLCK) refused every output as "being written by
    another mitoseg process": it goes on unlocked; a folder nobody may write in is said of the output (before: of
    its hidden lock file, by absolute path)."""
    import errno
    import fcntl

    out = tmp_path / "p.zarr"

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    with monkeypatch.context() as m:
        m.setattr(fcntl, "flock", no_locks)
        io.check_output(tmp_path / "new" / "p.zarr", overwrite=False)
    assert not list(tmp_path.rglob(".*.lock"))
    io.release(tmp_path / "new" / "p.zarr")  # a refusal after it: the folder made for it goes (before: left)
    assert not (tmp_path / "new").exists()

    def refused(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    with monkeypatch.context() as m:
        m.setattr(io.os, "open", refused)
        with pytest.raises(MitosegError, match=rf"p.zarr: cannot write in {tmp_path} \(Permission denied\)"):
            io.check_output(out, overwrite=False)

    def read_only_folder(path, flags, *a):  # as the system answers there for a lock file that is not yet
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied")
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    with monkeypatch.context() as m:  # before: "(No such file or directory)", of the folder that exists
        m.setattr(io.os, "open", read_only_folder)
        with pytest.raises(MitosegError, match=rf"p.zarr: cannot write in {tmp_path} \(Permission denied\)"):
            io.check_output(out, overwrite=False)


def test_remove_takes_a_link_not_what_it_links_to(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x").write_text("kept")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    io.remove(tmp_path / "link")  # before: shutil.rmtree refused a link ("OSError" alone after train --overwrite)
    assert not (tmp_path / "link").is_symlink() and (tmp_path / "real" / "x").read_text() == "kept"


def test_the_current_folder_is_never_replaced(tmp_path, monkeypatch):
    """`train --out . --overwrite` in a run folder ended in a traceback (PosixPath('.') has an empty name; before
    that, the folder was emptied under the user's feet): one line now, for the folder and those above it."""
    (tmp_path / "run" / "inner").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path / "run" / "inner")
    for out in (".", "..", str(tmp_path / "run")):
        with pytest.raises(MitosegError, match="holds the current folder, which --overwrite cannot replace"):
            io.check_output(out, overwrite=True)
    io.replaceable(tmp_path / "other")  # elsewhere: as before


def test_labels_on_slices_the_subsample_skips_are_read(tmp_path, droso):
    raw, mask = droso  # (20, 1024, 1024): a strided subsample of 2 million voxels takes every third slice
    ilastik = np.zeros_like(mask)
    ilastik[[1, 8]] = mask[[1, 8]] + 1  # 0 nobody annotated, 1 background, 2 mitochondria, on two slices it skips
    tifffile.imwrite(tmp_path / "img.tif", raw)
    tifffile.imwrite(tmp_path / "ilastik.tif", ilastik)
    # before: the subsample saw 0 alone, and every painted voxel (background too) was trained on as foreground
    with pytest.raises(MitosegError, match="hold the values 0, 1 and 2: .* give --unlabeled 0"):
        io.load_pair(tmp_path / "img.tif", tmp_path / "ilastik.tif")
    _, got = io.load_pair(tmp_path / "img.tif", tmp_path / "ilastik.tif", unlabeled=0)
    assert np.array_equal(got[[1, 8]], mask[[1, 8]]) and (np.delete(got, [1, 8], axis=0) == 2).all()
    lazy = zarr.create_array(tmp_path / "truth.zarr", shape=ilastik.shape, chunks=(1, 512, 512), dtype=np.uint8)
    lazy[:] = ilastik
    assert io.sampled_values(lazy).tolist() == [0, 1, 2]  # the subsample's one value: the whole volume read
    with pytest.raises(MitosegError, match=r"hold more than two values \(0, 1, 2\)"):  # evaluate's truth
        io.check_binary(zarr.open_array(tmp_path / "truth.zarr", mode="r"), "the truth's labels")
    chunked = zarr.create_array(tmp_path / "c.zarr", shape=ilastik.shape, chunks=(4, 512, 512), dtype=np.uint8)
    chunked[:] = ilastik  # read chunk by chunk (each decompressed once), not in slabs across them
    assert io.all_values(chunked).tolist() == [0, 1, 2] and io.sampled_values(chunked).tolist() == [0, 1, 2]


def test_labels_say_which_annotated_value_is_foreground(tmp_path, droso_crop, capsys):
    raw, mask = droso_crop
    painted = np.zeros_like(mask)
    painted[:4] = np.where(mask[:4] > 0, 1, 2)  # napari: 1 painted on mitochondria, 2 on background, 0 nothing
    np.save(tmp_path / "img.npy", raw)
    np.save(tmp_path / "painted.npy", painted)
    with pytest.raises(MitosegError, match="if 1 marks mitochondria and 2 background, swap the two first"):
        io.load_pair(tmp_path / "img.npy", tmp_path / "painted.npy")
    _, got = io.load_pair(tmp_path / "img.npy", tmp_path / "painted.npy", unlabeled=0)
    assert np.array_equal(got[:4], 1 - mask[:4])  # ilastik's order (the higher is foreground), now said:
    assert "2 is taken as foreground and 1 as background" in capsys.readouterr().err  # before: in silence


def test_image_and_labels_swapped_are_said_so(tmp_path, droso_crop):
    raw, mask = droso_crop
    np.save(tmp_path / "img.npy", raw)
    np.save(tmp_path / "lab.npy", mask * 255)
    # before: "labels img.npy hold more than two values ...: give --label-threshold", and only with one given was the
    # swap said (by training's check of the image)
    with pytest.raises(MitosegError, match=r"the image .*lab.npy holds only the values 0, 255 and the labels .*img.npy "
                                           "many: are the two swapped?"):
        io.load_pair(tmp_path / "lab.npy", tmp_path / "img.npy")


def test_a_file_written_whole_or_not_at_all(tmp_path):
    """`io.writing` (evaluate's --json, label's and suggest's tables): renamed when done, its claim ended; a full
    disk's error, which names no file, is said of the output and leaves no ``NAME.partial`` (before: evaluate's
    --json left an empty s.json.partial and said only "No space left on device")."""
    import errno

    out = tmp_path / "s.json"
    io.check_output(out, False, "file")
    with io.writing(out) as partial:
        partial.write_text("{}")
    assert out.read_text() == "{}" and str(out.resolve()) not in io.CLAIMS
    with pytest.raises(OSError) as said, io.writing(tmp_path / "full.json") as partial:
        partial.write_text("{")
        raise OSError(errno.ENOSPC, "No space left on device")  # what write() raises on a full disk
    assert said.value.filename == str(tmp_path / "full.json") and said.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]
