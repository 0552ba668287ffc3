"""Connected components against scipy.ndimage, measurements against numpy, blockwise == whole volume."""

import csv

import cc3d
import numpy as np
import pytest
import scipy.ndimage as ndi
import skimage.measure
import tifffile
import zarr
from conftest import dies_on_call, jittered_probabilities, same_partition

from mitoseg import instances, io, postprocess
from mitoseg.errors import MitosegError
from mitoseg.instances import COLUMNS, label, label_blockwise, measure, write_table

STRUCTURES = {6: ndi.generate_binary_structure(3, 1), 18: ndi.generate_binary_structure(3, 2), 26: np.ones((3, 3, 3))}


def _consecutive(labels: np.ndarray, n: int) -> bool:
    return np.array_equal(np.unique(labels), np.arange(n + 1)) if n else not labels.any()


def _zarr(data: np.ndarray, chunks: tuple[int, ...], dtype=None) -> zarr.Array:
    z = zarr.create_array(store=zarr.storage.MemoryStore(), shape=data.shape, chunks=chunks, dtype=dtype or data.dtype)
    if dtype is None:
        z[:] = data
    return z


@pytest.fixture(scope="module")
def mask512(droso) -> np.ndarray:
    return droso[1][:, :512, :512].copy()


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_label_equals_scipy_on_real_crop(droso_crop, connectivity):
    _, mask = droso_crop
    labels = label(mask, connectivity=connectivity)
    ref, n = ndi.label(mask, structure=STRUCTURES[connectivity])
    assert labels.dtype == np.uint32 and labels.shape == mask.shape
    assert n > 5 and labels.max() == n
    assert _consecutive(labels, n)
    assert same_partition(labels, ref)


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_label_equals_scipy_on_noise(connectivity):
    # sparse noise: 6, 18 and 26 neighbours give very different partitions, unlike smooth real masks
    mask = np.random.default_rng(1).random((9, 31, 27)) < 0.3
    ref, n = ndi.label(mask, structure=STRUCTURES[connectivity])
    assert same_partition(label(mask, connectivity=connectivity), ref)


def test_label_min_size_removes_exactly_small_objects(droso_crop):
    _, mask = droso_crop
    ref, n = ndi.label(mask, structure=STRUCTURES[26])
    sizes = np.bincount(ref.ravel())[1:]
    min_size = int(np.median(sizes))
    labels = label(mask, connectivity=26, min_size=min_size)
    big = np.flatnonzero(sizes >= min_size) + 1
    assert 0 < big.size < n
    assert labels.max() == big.size and _consecutive(labels, big.size)
    assert np.array_equal(labels > 0, np.isin(ref, big))
    assert same_partition(labels, np.where(np.isin(ref, big), ref, 0))


def test_label_min_size_numbers_objects_as_dust_then_labelling_does(droso_crop):
    _, mask = droso_crop
    counts = set()
    for min_size in (1, 5000, 10000, 20000):  # the crop's 7 objects hold 3,363 to 15,978 voxels
        expected = cc3d.connected_components(cc3d.dust(mask > 0, threshold=min_size, connectivity=26),
                                             connectivity=26, out_dtype=np.uint32)
        got = label(mask, 26, min_size=min_size)
        assert np.array_equal(got, expected)
        counts.add(int(got.max()))
    assert len(counts) >= 3  # the sizes removed different objects


def test_label_rejects_bad_input():
    with pytest.raises(MitosegError, match="connectivity"):
        label(np.zeros((2, 2, 2)), connectivity=8)
    with pytest.raises(MitosegError, match="3D"):
        label(np.zeros((2, 2)))
    for size in (-5, 2.5, "500"):
        with pytest.raises(MitosegError, match="min_size must be an integer >= 0"):
            label(np.zeros((2, 2, 2)), min_size=size)
    for voxel in ((5, 5), (5, float("nan"), 5), (5, -1, 5)):
        with pytest.raises(MitosegError, match="voxel_size must be"):
            measure(np.zeros((2, 2, 2), np.uint32), voxel_size=voxel)


def test_label_refuses_probabilities(droso_crop):
    """Probabilities read as > 0 would be one object over nearly everything: refused, threshold first."""
    probs = jittered_probabilities(droso_crop[1][:4])
    with pytest.raises(MitosegError, match=r"more than two values .*\(probabilities >= 0.5, or >= 128"):
        label(probs)
    assert label(probs >= 128).max() > 1


def test_measuring_needs_a_voxel_size_object_ids_and_arrays(droso_crop, tmp_path):
    """`io.voxel_size` is None for a file stating none: as a voxel size it is refused (before: volumes of NaN µm³,
    a TypeError in morphology); a mask given as labels to `morphology` too (before: NaN sphericity of every object
    but the first), a size of two numbers said as such, and a path where an array is needed named as a path
    (before: "got shape ()")."""
    labels = label(droso_crop[1][:4])
    table = measure(labels, (50, 4.6, 4.6))
    tifffile.imwrite(tmp_path / "plain.tif", labels)
    for call in (lambda: measure(labels, io.voxel_size(tmp_path / "plain.tif")),
                 lambda: instances.measure_blockwise(labels, int(labels.max()), None),
                 lambda: instances.morphology(labels, table, None)):
        with pytest.raises(MitosegError, match=r"voxel_size must be three numbers \(z, y, x\) in nm, not None"):
            call()
    with pytest.raises(MitosegError, match="labels must be an integer array of object ids, got dtype bool; a mask"):
        instances.morphology(labels > 0, table, (50, 4.6, 4.6))
    with pytest.raises(MitosegError, match=r"voxel_size must be three numbers \(z, y, x\), not \(5, 5\)"):
        instances.morphology(labels, table, (5, 5))
    with pytest.raises(MitosegError, match="labels must be an array, not the path .*: read it first"):
        measure(str(tmp_path / "plain.tif"))
    with pytest.raises(MitosegError, match="mask must be an array, not the path"):
        label(tmp_path / "plain.tif")
    assert np.isfinite(instances.morphology(labels, table, (50, 4.6, 4.6))["surface_um2"]).all()


def test_label_volume_checks_its_settings_before_writing(tmp_path, droso_crop):
    """A voxel size or block of two numbers, and a table named as the labels: refused before anything is
    written (before, the labels were finished and the table failed)."""
    zarr.create_array(str(tmp_path / "m.zarr"), data=droso_crop[1][:4], chunks=(4, 128, 128))
    for kw, match in (({"voxel_size": (5, 5)}, "voxel_size must be three numbers"),
                      ({"block": (4, 128)}, "block must be three numbers"),
                      ({"table": tmp_path / "l.zarr"}, "the labels and the table are both")):
        with pytest.raises(MitosegError, match=match):
            instances.label_volume(tmp_path / "m.zarr", tmp_path / "l.zarr", progress=False, **kw)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zarr"]


def test_labels_replaced_and_stopped_before_the_rename_say_how_to_go_on(tmp_path, droso_crop, monkeypatch):
    zarr.create_array(str(tmp_path / "m.zarr"), data=droso_crop[1][:4], chunks=(4, 128, 128))
    out, table = tmp_path / "l.zarr", tmp_path / "t.csv"
    instances.label_volume(tmp_path / "m.zarr", out, table=table, progress=False)
    before = table.read_text()
    with monkeypatch.context() as m:  # --overwrite: the old labels deleted, stopped before the new ones' rename
        m.setattr(io, "finish_output", dies_on_call(io.finish_output, 1))
        with pytest.raises(KeyboardInterrupt):
            instances.label_volume(tmp_path / "m.zarr", out, table=table, overwrite=True, progress=False)
    assert not out.exists() and io.partial_path(out).exists() and table.exists()
    # before: "add --resume", which then refused the old table ("already exists; pass --overwrite")
    with pytest.raises(MitosegError, match=r"add --resume --overwrite to go on from it \(t.csv already there\)"):
        instances.label_volume(tmp_path / "m.zarr", out, table=table, progress=False)
    instances.label_volume(tmp_path / "m.zarr", out, table=table, resume=True, overwrite=True, progress=False)
    assert table.read_text() == before and not io.partial_path(out).exists()


def test_a_voxel_size_given_against_the_stated_one_is_said(tmp_path, droso_crop, capsys):
    stored = zarr.create_array(str(tmp_path / "m.zarr"), data=droso_crop[1][:4], chunks=(4, 128, 128))
    stored.attrs["voxel_size"] = [5.0, 5.0, 5.0]
    instances.label_volume(tmp_path / "m.zarr", tmp_path / "l.zarr", voxel_size=(50, 4.6, 4.6), progress=False,
                           table=tmp_path / "t.csv")
    assert "note: m.zarr states 5 x 5 x 5 nm voxels and --voxel-size 50 x 4.6 x 4.6 nm: the labels record the given " \
           "ones (and the table measures them)" in capsys.readouterr().err  # before: nothing said
    instances.label_volume(tmp_path / "m.zarr", tmp_path / "k.zarr", voxel_size=(5, 5, 5), progress=False)
    assert "note" not in capsys.readouterr().err


def test_measure_matches_numpy(droso_crop, tmp_path):
    _, mask = droso_crop
    labels = label(mask)
    voxel_size = (8.0, 4.0, 5.0)
    table = measure(labels, voxel_size=voxel_size)
    assert tuple(table) == COLUMNS
    assert np.array_equal(table["id"], np.arange(1, labels.max() + 1))
    assert np.array_equal(table["voxels"], np.bincount(labels.ravel())[1:])
    for obj in (1, labels.max() // 2, labels.max()):
        row = obj - 1
        zyx = np.argwhere(labels == obj)
        assert table["voxels"][row] == len(zyx)
        assert table["volume_um3"][row] == pytest.approx(len(zyx) * 8 * 4 * 5 / 1e9)
        centroid = (table["centroid_z"][row], table["centroid_y"][row], table["centroid_x"][row])
        np.testing.assert_allclose(centroid, zyx.mean(axis=0))
        lo = [table[f"bbox_{a}0"][row] for a in "zyx"]
        hi = [table[f"bbox_{a}1"][row] for a in "zyx"]
        assert lo == list(zyx.min(axis=0)) and hi == list(zyx.max(axis=0) + 1)

    path = tmp_path / "objects.csv"
    write_table(table, path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(table["id"]) and tuple(rows[0]) == COLUMNS
    assert int(rows[-1]["voxels"]) == table["voxels"][-1]
    assert float(rows[0]["centroid_y"]) == pytest.approx(table["centroid_y"][0])


def test_measure_sparse_large_ids():
    labels = np.zeros((2, 2, 2), np.int32)
    labels[0, 0, 1] = 100  # ids larger than the number of voxels
    labels[1, :, 1] = 7
    table = measure(labels, voxel_size=(10, 10, 10))
    assert table["id"].tolist() == [7, 100]
    assert table["voxels"].tolist() == [2, 1]
    assert table["centroid_y"].tolist() == [0.5, 0.0]
    assert [table[f"bbox_{k}"][0] for k in ("z0", "y0", "x0", "z1", "y1", "x1")] == [1, 0, 1, 2, 2, 2]
    huge = labels.astype(np.uint64)
    huge[huge == 100] = 2**40  # a supervoxel id of another tool (before: MemoryError, an 8 TiB array of ids)
    assert measure(huge, voxel_size=(10, 10, 10))["id"].tolist() == [7, 2**40]
    huge[huge == 7] = 2**64 - 2  # past int64's top (Paintera's reserved ids): kept, not read as negative
    table = measure(huge, voxel_size=(10, 10, 10))
    assert table["id"].tolist() == [2**40, 2**64 - 2] and table["voxels"].tolist() == [1, 2]
    assert instances.morphology(huge, table, (10, 10, 10))["id"].tolist() == [2**40, 2**64 - 2]
    with pytest.raises(MitosegError, match="voxel_size must be three numbers"):
        measure(labels, voxel_size=(1, 1))
    with pytest.raises(MitosegError, match=r"got dtype bool; a mask: label it first \(instances.label\)"):
        measure(labels > 0)


@pytest.mark.parametrize("share", [0.05, 0.5])
def test_sizes_and_lookup_over_the_foreground_equal_those_over_every_voxel(share):
    """`_sizes` and `_remap` look at the foreground alone when it is sparse (as mitochondria are): the same
    counts and ids as over the whole array, sparse (5 %) and dense (50 %, where the whole array is used)."""
    rng = np.random.default_rng(1)
    mask = rng.random((9, 40, 50)) < share
    labels, n = cc3d.connected_components(mask, connectivity=6, return_N=True, out_dtype=np.uint32)
    sizes = instances._sizes(labels, mask, n)
    assert n > 10 and sizes[0] == 0 and np.array_equal(sizes[1:], np.bincount(labels.ravel())[1:])
    table = rng.integers(1, 1000, n + 1).astype(np.uint32)
    table[0] = 0
    np.testing.assert_array_equal(instances._remap(labels, mask, table), table[labels])


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_label_blockwise_equals_whole_volume(mask512, connectivity):
    block = (7, 100, 130)
    ref = cc3d.connected_components(mask512, connectivity=connectivity)
    # the blocks must cut objects for this test to mean anything
    cut = {int(i) for i in np.unique(ref[:, 99:101]) if i} | {int(i) for i in np.unique(ref[6:8]) if i}
    assert len(cut) > 5
    out = _zarr(mask512, (7, 100, 130), dtype="uint32")
    n = label_blockwise(_zarr(mask512, (5, 128, 128)), out, block=block, connectivity=connectivity)
    labels = out[:]
    assert n == ref.max() and _consecutive(labels, n)
    assert same_partition(labels, ref)


def test_label_blockwise_threshold_and_min_size(mask512):
    prob = np.where(mask512 > 0, 0.75, 0.25).astype(np.float32)
    prob[:, 300:310] = 0.5  # exactly at the threshold: foreground
    expected = label(prob >= 0.5, connectivity=26, min_size=500)
    out = np.zeros(prob.shape, np.uint32)
    n = label_blockwise(_zarr(prob, (10, 256, 256)), out, block=(8, 90, 200), min_size=500, threshold=0.5)
    assert n == expected.max() > 0 and _consecutive(out, n)
    assert same_partition(out, expected)


@pytest.mark.parametrize("seed", range(4))
def test_label_blockwise_noise_odd_blocks(seed):
    rng = np.random.default_rng(seed)
    mask = (rng.random((11, 23, 19)) < 0.35).astype(np.uint8)
    block = tuple(int(b) for b in rng.integers(1, 6, 3))
    for connectivity in (6, 18, 26):
        out = np.zeros(mask.shape, np.uint32)
        n = label_blockwise(mask, out, block=block, connectivity=connectivity, min_size=2)
        expected = label(mask, connectivity=connectivity, min_size=2)
        assert n == expected.max() and _consecutive(out, n)
        assert same_partition(out, expected), (block, connectivity)


def test_label_blockwise_diagonal_across_block_corner_and_edge():
    corner = np.zeros((6, 6, 6), np.uint8)
    corner[np.arange(6), np.arange(6), np.arange(6)] = 1  # crosses the corner shared by 8 blocks
    edge = np.zeros((6, 6, 6), np.uint8)
    edge[2, np.arange(6), np.arange(6)] = 1  # crosses the edge shared by 4 blocks
    expected = {(6, "corner"): 6, (18, "corner"): 6, (26, "corner"): 1, (6, "edge"): 6, (18, "edge"): 1}
    expected[(26, "edge")] = 1
    for (connectivity, name), n_expected in expected.items():
        mask = corner if name == "corner" else edge
        out = np.zeros(mask.shape, np.uint32)
        n = label_blockwise(mask, out, block=(3, 3, 3), connectivity=connectivity)
        assert n == n_expected, (connectivity, name)
        assert same_partition(out, label(mask, connectivity=connectivity))


def test_label_blockwise_rejects_bad_input():
    mask = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(MitosegError, match="shape"):
        label_blockwise(mask, np.zeros((4, 4, 5), np.uint32))
    with pytest.raises(MitosegError, match="uint32"):
        label_blockwise(mask, np.zeros((4, 4, 4), np.int64))
    with pytest.raises(MitosegError, match="connectivity"):
        label_blockwise(mask, np.zeros((4, 4, 4), np.uint32), connectivity=4)
    with pytest.raises(MitosegError, match="block"):
        label_blockwise(mask, np.zeros((4, 4, 4), np.uint32), block=(4, 4))


def test_measure_blockwise_equals_measure(droso):
    labels = instances.label(droso[1][:, :300, :400], connectivity=26)
    z = zarr.create_array(zarr.storage.MemoryStore(), shape=labels.shape, dtype=labels.dtype, chunks=(7, 100, 130))
    z[:] = labels
    whole = instances.measure(labels, (50, 4.6, 4.6))
    blocks = instances.measure_blockwise(z, int(labels.max()), (50, 4.6, 4.6), block=(7, 100, 130))
    assert list(blocks) == list(whole)
    for key in whole:
        np.testing.assert_allclose(blocks[key], whole[key], rtol=1e-12, err_msg=key)
    with pytest.raises(MitosegError, match="not labelled"):
        instances.measure_blockwise(z, 3, block=(7, 100, 130))


def test_label_blockwise_resumes_after_a_kill(tmp_path, droso, monkeypatch):
    from mitoseg import io

    mask = droso[1][:, :200, :260]
    block = (7, 100, 130)
    ref = zarr.create_array(zarr.storage.MemoryStore(), shape=mask.shape, dtype="uint32", chunks=block)
    label_blockwise(mask, ref, block)
    out = instances.open_labels(tmp_path / "l.zarr", mask.shape, block, 26, 0, None)
    real = instances.relabel_block
    monkeypatch.setattr(instances, "relabel_block", dies_on_call(real, 5))
    with pytest.raises(KeyboardInterrupt):
        label_blockwise(mask, out.array, block, done=out.done)
    calls = []
    monkeypatch.setattr(instances, "relabel_block", lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.raises(MitosegError, match="min_size 0 then, 10 now"):
        instances.open_labels(tmp_path / "l.zarr", mask.shape, block, 26, 10, None, resume=True)
    out = instances.open_labels(tmp_path / "l.zarr", mask.shape, block, 26, 0, None, resume=True)
    label_blockwise(mask, out.array, block, done=out.done)
    assert len(calls) == 12 - 4  # 3 x 2 x 2 blocks, 4 written before the kill
    io.finish_output(tmp_path / "l.zarr")
    np.testing.assert_array_equal(io.open_volume(tmp_path / "l.zarr")[:], ref[:])


def test_label_table_interrupted_after_the_labels_resumes_with_the_table_only(tmp_path, droso, monkeypatch):
    """Ctrl-C while the table is measured, after the labels got their name: --resume keeps the labels (labelling
    nothing again) and writes the table an uninterrupted run writes (before: "already exists", only --overwrite,
    which labelled everything again); other settings are still refused."""
    from mitoseg import io

    mask = droso[1][:, :200, :260]
    np.save(tmp_path / "mask.npy", mask)
    block = (7, 100, 130)
    n = instances.label_volume(tmp_path / "mask.npy", tmp_path / "ref.zarr", block, table=tmp_path / "ref.csv",
                               voxel_size=(50, 4.6, 4.6), progress=False)
    real = instances.morphology
    monkeypatch.setattr(instances, "morphology", dies_on_call(real, 1))
    with pytest.raises(KeyboardInterrupt):
        instances.label_volume(tmp_path / "mask.npy", tmp_path / "l.zarr", block, table=tmp_path / "l.csv",
                               voxel_size=(50, 4.6, 4.6), progress=False)
    assert (tmp_path / "l.zarr").exists() and not (tmp_path / "l.csv").exists()
    monkeypatch.setattr(instances, "morphology", real)
    with pytest.raises(MitosegError, match="min_size 0 then, 10 now"):
        instances.label_volume(tmp_path / "mask.npy", tmp_path / "l.zarr", block, min_size=10,
                               table=tmp_path / "l.csv", voxel_size=(50, 4.6, 4.6), resume=True, progress=False)
    monkeypatch.setattr(instances, "label_blockwise", lambda *a, **k: pytest.fail("labelled again"))
    assert io.attributes(io.open_volume(tmp_path / "l.zarr"))["objects"] == n  # no pass over the labels to count
    assert instances.label_volume(tmp_path / "mask.npy", tmp_path / "l.zarr", block, table=tmp_path / "l.csv",
                                  voxel_size=(50, 4.6, 4.6), resume=True, progress=False) == n > 5
    assert (tmp_path / "l.csv").read_text() == (tmp_path / "ref.csv").read_text()
    np.testing.assert_array_equal(io.open_volume(tmp_path / "l.zarr")[:], io.open_volume(tmp_path / "ref.zarr")[:])
    # labels finished before 2026-12-07 record the input checksum of then (64-pixel centre crops) and no object
    # count: still kept, their table written (before this was mended: "other settings (source ...)")
    import zlib

    import zarr

    old = zlib.crc32(repr(mask.shape).encode())
    y0, x0 = mask.shape[1] // 2 - 32, mask.shape[2] // 2 - 32
    for k in sorted({0, mask.shape[0] // 2, mask.shape[0] - 1}):
        old = zlib.crc32(np.ascontiguousarray(mask[k:k + 1, y0:y0 + 64, x0:x0 + 64]).tobytes(), old)
    earlier = zarr.open_array(str(tmp_path / "l.zarr"), mode="r+")
    earlier.attrs["settings"] = {**earlier.attrs["settings"], "source": f"{old:08x}"}
    del earlier.attrs["objects"]
    (tmp_path / "l.csv").unlink()
    assert instances.label_volume(tmp_path / "mask.npy", tmp_path / "l.zarr", block, table=tmp_path / "l.csv",
                                  voxel_size=(50, 4.6, 4.6), resume=True, progress=False) == n
    assert (tmp_path / "l.csv").read_text() == (tmp_path / "ref.csv").read_text()


def test_label_resume_onto_another_input_is_refused(tmp_path, droso, monkeypatch):
    """Interrupted midway, then the input replaced by another of the same shape: --resume is refused naming it
    (before: the finished blocks of the old input were kept beside the new one's); the same input resumes."""
    mask = droso[1][:, :200, :260]
    np.save(tmp_path / "mask.npy", mask)
    block = (7, 100, 130)
    real = instances.relabel_block
    monkeypatch.setattr(instances, "relabel_block", dies_on_call(real, 5))
    with pytest.raises(KeyboardInterrupt):
        instances.label_volume(tmp_path / "mask.npy", tmp_path / "l.zarr", block, progress=False)
    monkeypatch.setattr(instances, "relabel_block", real)
    with pytest.raises(MitosegError, match="l.zarr.partial: left by an earlier run"):  # before: deleted silently
        instances.label_volume(tmp_path / "mask.npy", tmp_path / "l.zarr", block, progress=False)
    np.save(tmp_path / "mask.npy", mask[:, ::-1])
    with pytest.raises(MitosegError, match="was written with other settings \\(source "):
        instances.label_volume(tmp_path / "mask.npy", tmp_path / "l.zarr", block, resume=True, progress=False)
    np.save(tmp_path / "mask.npy", mask)
    assert instances.label_volume(tmp_path / "mask.npy", tmp_path / "l.zarr", block, resume=True, progress=False) > 5


def test_morphology_of_a_ball_a_rod_and_real_mitochondria(droso):
    z, y, x = np.mgrid[:60, :60, :90]
    shapes = np.zeros((60, 60, 90), np.uint32)
    shapes[(z - 30) ** 2 + (y - 30) ** 2 + (x - 30) ** 2 <= 20**2] = 1  # a ball, 200 nm across at 5 nm
    shapes[((z - 30) ** 2 + (y - 30) ** 2 <= 8**2) & (x >= 50)] = 2  # a rod 80 nm wide to the volume's face
    shapes[5, 5, 5], shapes[10:12, 10:12, 10:12] = 3, 4  # specks: a voxel, a 2 x 2 x 2 cube
    m = instances.morphology(shapes, instances.measure(shapes, (5, 5, 5)), (5, 5, 5))
    assert m["surface_um2"][0] == pytest.approx(4 * np.pi * 0.1**2, rel=0.1)  # the mesh, a little staircase
    assert 0.85 < m["sphericity"][0] <= 1.0 and m["sphericity"][1] < 0.8
    assert np.all(m["sphericity"] <= 1.0)  # the mesh's own volume: a voxel's mesh, an octahedron, scores 0.85
    assert m["equivalent_diameter_um"][0] == pytest.approx(0.2, rel=0.01)
    assert m["length_um"][0] == pytest.approx(0.2, rel=0.01) and m["width_um"][0] == pytest.approx(0.2, rel=0.01)
    assert m["elongation"][0] == pytest.approx(1.0, abs=0.01) and m["elongation"][1] > 2.5
    assert m["touches_border"].tolist() == [False, True, False, False]
    mask = droso[1][:, 256:768, :512]  # 17 objects; one touches no face of the crop
    labels = label(mask, 26, min_size=100)
    table = instances.morphology(labels, instances.measure(labels, (50, 4.6, 4.6)), (50, 4.6, 4.6))
    assert set(instances.MORPHOLOGY) <= set(table) and len(table["id"]) == labels.max() > 5
    assert np.all((table["sphericity"] > 0) & (table["sphericity"] <= 1.0))
    props = skimage.measure.regionprops(labels, spacing=(0.05, 0.0046, 0.0046))  # the same axes as skimage's
    np.testing.assert_allclose(table["length_um"], [p.axis_major_length for p in props], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(table["width_um"], [p.axis_minor_length for p in props], rtol=1e-6, atol=1e-7)
    edge = (table["bbox_y0"] == 0) | (table["bbox_x0"] == 0) | (table["bbox_y1"] == 512) | (table["bbox_x1"] == 512)
    edge |= (table["bbox_z0"] == 0) | (table["bbox_z1"] == 20)
    assert np.array_equal(table["touches_border"], edge) and edge.any() and not edge.all()
    with pytest.raises(MitosegError, match="measured with voxels of 1058 nm³ and voxel_size"):  # before: surfaces
        instances.morphology(labels, instances.measure(labels, (50, 4.6, 4.6)))  # at 1 nm beside volumes at 50


def test_undefined_shape_values_are_empty_cells_in_the_table(tmp_path, droso_crop):
    """A real mitochondrion cut to one section has no width across sections: its elongation is infinite in
    the table and an empty cell in the CSV (a spreadsheet reads "inf" as text); the other cells are numbers."""
    labels = label(droso_crop[1][:3], 26, min_size=100)
    labels[1:] = 0
    labels = label(labels > 0, 26)
    table = instances.morphology(labels, instances.measure(labels, (50, 4.6, 4.6)), (50, 4.6, 4.6))
    assert np.isinf(table["elongation"]).all() and len(table["id"]) >= 2
    write_table(table, tmp_path / "t.csv")
    rows = list(csv.DictReader(open(tmp_path / "t.csv", newline="")))
    assert {r["elongation"] for r in rows} == {""} and "inf" not in (tmp_path / "t.csv").read_text()
    assert all(float(r["width_um"]) == 0 and float(r["volume_um3"]) > 0 for r in rows)


def test_a_table_stopped_while_written_leaves_no_file(tmp_path, droso_crop, monkeypatch):
    labels = label(droso_crop[1][:3], 26)
    table = instances.measure(labels, (50, 4.6, 4.6))
    monkeypatch.setattr(instances, "_cells", dies_on_call(instances._cells, 4))  # Ctrl-C (or a full disk) midway
    with pytest.raises(KeyboardInterrupt):
        write_table(table, tmp_path / "t.csv")
    assert list(tmp_path.iterdir()) == []  # before: t.csv.partial, with its first rows, was left


def test_morphology_reads_a_chunked_array_once_per_block_of_boxes(droso):
    """From a chunked Zarr array the objects are read in groups (one box per chunk where their boxes
    start), not one read each, and measured exactly as from the whole array in memory."""
    labels = label(droso[1][:, :512, :512], 26, min_size=100)
    table = measure(labels, (50, 4.6, 4.6))
    whole = instances.morphology(labels, table, (50, 4.6, 4.6))
    chunked = _zarr(labels, (10, 256, 256))
    reads = []

    class Counting:
        shape, chunks = chunked.shape, chunked.chunks

        def __getitem__(self, key):
            reads.append(key)
            return chunked[key]

    got = instances.morphology(Counting(), table, (50, 4.6, 4.6))
    for k in whole:
        np.testing.assert_array_equal(got[k], whole[k], err_msg=k)
    lo = np.stack([table["bbox_z0"], table["bbox_y0"], table["bbox_x0"]], axis=1) // (10, 256, 256)
    starts = {tuple(row) for row in lo}
    assert len(reads) == len(starts) <= 8 < len(table["id"])


def test_an_object_with_a_huge_box_is_read_slab_by_slab_with_the_same_shape(droso, monkeypatch):
    """An object whose box passes `LARGE_BOX` voxels (a network of mitochondria across the volume) is read alone in
    slabs of Z planes of at most `SLAB` voxels (before: its whole box, about 54 bytes per voxel of it), and measured
    as from its whole box: the real mitochondria of the stack, all read slab by slab (slabs of one plane and the
    next one), give the table of boxes read whole."""
    labels = label(droso[1][:, :256, :256], 26, min_size=100)
    table = measure(labels, (50, 4.6, 4.6))
    whole = instances.morphology(labels, table, (50, 4.6, 4.6))
    reads = []

    class Counting:
        shape, chunks = labels.shape, (20, 256, 256)

        def __getitem__(self, key):
            reads.append(np.asarray(labels[key]).size)
            return labels[key]

    monkeypatch.setattr(instances, "LARGE_BOX", 0)
    monkeypatch.setattr(instances, "SLAB", 1)  # one plane a slab
    slabs = instances.morphology(Counting(), table, (50, 4.6, 4.6))
    for k in whole:
        np.testing.assert_allclose(slabs[k], whole[k], rtol=1e-9, err_msg=k)
    assert len(reads) == (table["bbox_z1"] - table["bbox_z0"]).sum() > 2 * len(table["id"]) >= 10
    assert max(reads) <= 2 * 256 * 256


def test_label_applies_the_runs_choice_kept_with_probabilities(tmp_path, lucchi_crop):
    """`label_volume` of stored probabilities that carry the run's post-processing (as `predict` writes them),
    in blocks 3 slices deep: the objects of the whole volume blurred along Z, thresholded and cleaned of small
    objects as chosen (hole filling left out); --threshold alone gives the plain threshold. Real CA1 truth."""
    probs = jittered_probabilities(lucchi_crop[1])
    chosen = postprocess.PostProcessing(0.6, 500, True, 2.0)
    z = zarr.create_array(str(tmp_path / "p.zarr"), data=probs, chunks=(4, 128, 128))
    z.attrs.update(kind="probability", postprocessing=chosen.as_dict())
    n = instances.label_volume(tmp_path / "p.zarr", tmp_path / "l.zarr", (3, 100, 130), progress=False)
    expected = label(postprocess.apply(probs, postprocess.PostProcessing(0.6, 500, False, 2.0)), connectivity=26)
    plain = label(probs >= 153, connectivity=26)
    assert not same_partition(expected, plain) and n == expected.max() >= 3
    labels = io.open_volume(tmp_path / "l.zarr")
    assert same_partition(labels[:], expected)
    assert labels.attrs["applied"] == {"threshold": 0.6, "z_sigma": 2.0, "min_size": 500,
                                       "from_run": ["threshold", "z_sigma", "min_size"]}
    assert instances.label_volume(tmp_path / "p.zarr", tmp_path / "t.zarr", (3, 100, 130), threshold=0.6,
                                  progress=False) == plain.max()
    assert same_partition(io.open_volume(tmp_path / "t.zarr")[:], plain)


def test_the_runs_minimum_size_is_scaled_on_a_volume_thinner_than_its_objects(tmp_path, lucchi_crop, capsys):
    """A run's minimum object size, chosen on a thick volume, on 2 slices of real CA1 probabilities: a ball of 4,000
    voxels is 98 nm wide and the volume 10 nm deep, so the minimum is scaled by 10 / 98 (before: every mitochondrion
    under 4,000 voxels in its 2 sections was deleted without a word); said in a note and in label's line."""
    from mitoseg import cli

    probs = jittered_probabilities(lucchi_crop[1])[10:12]
    z = zarr.create_array(str(tmp_path / "p.zarr"), data=probs, chunks=(1, 256, 256))
    z.attrs.update(kind="probability", voxel_size=[5.0, 5.0, 5.0],
                   postprocessing=postprocess.PostProcessing(0.5, 4000).as_dict())
    assert cli.main(["--quiet", "label", str(tmp_path / "p.zarr"), "--out", str(tmp_path / "l.zarr")]) == 0
    said = capsys.readouterr()
    scaled = round(4000 * 10 / (6 * 4000 * 125 / np.pi) ** (1 / 3))
    assert "this volume is 2 slices (10 nm) deep, thinner than a ball of the run's minimum object size (4,000 voxels)" \
        f" is wide (98 nm): objects of {scaled:,} voxels or more are kept" in said.err
    assert f"objects under {scaled:,} voxels removed (its 4,000 scaled to this depth)" in said.out
    sizes = np.bincount(label(probs >= 128, connectivity=26).ravel())[1:]
    labels = io.open_volume(tmp_path / "l.zarr")
    assert labels.attrs["objects"] == (sizes >= scaled).sum() > (sizes >= 4000).sum()
    assert labels.attrs["applied"]["min_size_chosen"] == 4000


@pytest.mark.parametrize("voxel, surface, sphericity", [((5, 5, 5), 1.23, 0.92), ((50, 4.6, 4.6), 1.44, 0.79)])
def test_a_ball_on_cubic_and_on_flat_voxels(voxel, surface, sphericity):
    """A 600 nm ball (4 pi 0.3^2 = 1.13 µm²): the README's numbers. Its axes and equivalent diameter are 0.6 µm
    (within 1 %) on both; the steps between 50 nm sections add surface, so its sphericity falls from 0.92 to 0.79."""
    n = [int(np.ceil(600 / s)) + 6 for s in voxel]
    grid = np.meshgrid(*[(np.arange(k) - k / 2 + 0.5) * s for k, s in zip(n, voxel, strict=True)], indexing="ij")
    ball = (sum(g**2 for g in grid) <= 300.0**2).astype(np.uint32)
    m = instances.morphology(ball, instances.measure(ball, voxel), voxel)
    assert m["surface_um2"][0] == pytest.approx(surface, abs=0.005)
    assert m["sphericity"][0] == pytest.approx(sphericity, abs=0.005)
    for k in ("length_um", "width_um", "equivalent_diameter_um"):
        assert m[k][0] == pytest.approx(0.6, rel=0.01), k
