"""The block engine: the grid, the output lifecycle (partial, markers, settings-checked resume, finish)."""

import os

import numpy as np
import pytest
import zarr

from mitoseg import blocks, io
from mitoseg.errors import MitosegError

SETTINGS = {"tile": [1, 64, 64], "overlap": 0.25, "model": "abc"}


@pytest.fixture(scope="module")
def crop(droso_crop) -> np.ndarray:
    """Raw uint8 (20, 256, 256) from the real stack."""
    return droso_crop[0]


def test_grid_tiles_the_volume_once():
    grid = blocks.grid((5, 7, 9), (2, 7, 4))
    covered = np.zeros((5, 7, 9), int)
    for b in grid:
        covered[b] += 1
    assert (covered == 1).all() and len(grid) == 3 * 1 * 3
    assert blocks.positions((5, 7, 9), (2, 7, 4))[4] == (1, 0, 1)
    with pytest.raises(MitosegError, match="block must be an integer >= 1, not 0"):
        blocks.grid((5, 7, 9), (0, 7, 4))
    with pytest.raises(MitosegError, match="needs 3 sizes"):
        blocks.grid((5, 7, 9), (2, 7))


def test_output_is_partial_until_finished(tmp_path, crop):
    target = tmp_path / "probs.zarr"
    out = blocks.open_output(target, crop.shape, "uint8", (4, 64, 64), SETTINGS, {"window": np.array([0.0, 255.0])})
    out.write(np.s_[0:4, 0:64, 0:64], crop[:4, :64, :64])
    assert sorted(os.listdir(tmp_path)) == [".probs.zarr.lock", "probs.zarr.partial", "probs.zarr.partial.done"]
    assert out.todo(blocks.grid(crop.shape, (4, 64, 64)))[0] == np.s_[0:4, 0:64, 64:128]  # the first is done
    blocks.finish(out)
    assert sorted(os.listdir(tmp_path)) == ["probs.zarr"]
    back = io.open_volume(target)
    assert np.array_equal(back[:4, :64, :64], crop[:4, :64, :64]) and not back[4:].any()
    attrs = dict(back.attrs)
    assert attrs["window"] == [0.0, 255.0] and attrs["settings"]["overlap"] == 0.25
    assert attrs["settings"]["shape"] == list(crop.shape) and attrs["settings"]["dtype"] == "uint8"


def test_finish_refuses_existing_unless_overwrite(tmp_path, crop):
    target = tmp_path / "probs.zarr"
    first = blocks.open_output(target, crop.shape, "uint8", (4, 64, 64), SETTINGS)
    first.array[:] = crop
    blocks.finish(first)
    with pytest.raises(MitosegError, match="already exists; pass --overwrite"):
        blocks.open_output(target, crop.shape, "uint8", (4, 64, 64), SETTINGS)
    second = blocks.open_output(target, crop.shape, "uint8", (4, 64, 64), SETTINGS, overwrite=True)
    second.array[:] = 255 - crop
    assert np.array_equal(io.open_volume(target)[:], crop)  # the old result is untouched until the finish
    blocks.finish(second, overwrite=True)
    assert np.array_equal(io.open_volume(target)[:], 255 - crop)
    with pytest.raises(MitosegError, match="partial does not exist"):
        io.finish_output(target, overwrite=True)  # nothing to finish: the result stays
    assert np.array_equal(io.open_volume(target)[:], 255 - crop)


def test_resume_needs_the_same_settings(tmp_path, crop):
    target = tmp_path / "probs.zarr"
    out = blocks.open_output(target, crop.shape, "uint8", (4, 64, 64), SETTINGS)
    out.write(np.s_[0:4, 0:64, 0:64], crop[:4, :64, :64])
    again = blocks.open_output(target, crop.shape, "uint8", (4, 64, 64), SETTINGS, resume=True)
    assert np.array_equal(again.array[:4, :64, :64], crop[:4, :64, :64])
    assert len(again.todo(blocks.grid(crop.shape, (4, 64, 64)))) == 5 * 4 * 4 - 1
    changes = [(dict(SETTINGS, overlap=0.5), crop.shape, "uint8", (4, 64, 64), "overlap 0.25 then, 0.5 now"),
               (dict(SETTINGS, model="xyz"), crop.shape, "uint8", (4, 64, 64), "model 'abc' then, 'xyz' now"),
               (SETTINGS, (20, 256, 128), "uint8", (4, 64, 64), "shape"),
               (SETTINGS, crop.shape, "float16", (4, 64, 64), "dtype 'uint8' then, 'float16' now"),
               (SETTINGS, crop.shape, "uint8", (2, 64, 64), "block")]
    for settings, shape, dtype, block, named in changes:
        with pytest.raises(MitosegError, match=f"other settings .*{named}.*resume with the same settings"):
            blocks.open_output(target, shape, dtype, block, settings, resume=True)
    kept = zarr.open_array(str(io.partial_path(target)), mode="r")  # not a volume to read as finished: zarr's
    assert np.array_equal(kept[:4, :64, :64], crop[:4, :64, :64])
    fresh = blocks.open_output(target, crop.shape, "uint8", (4, 64, 64), dict(SETTINGS, overlap=0.5))
    assert not fresh.array[:].any()  # without resume: started afresh, markers gone
    assert len(fresh.todo(blocks.grid(crop.shape, (4, 64, 64)))) == 5 * 4 * 4
    # another voxel size (or none, or another place): the resuming run's, which its table measures (before: the
    # first run's was kept, the labels said 5 nm and the table measured 10)
    blocks.open_output(tmp_path / "v.zarr", crop.shape, "uint8", (4, 64, 64), SETTINGS,
                       {"voxel_size": (5, 5, 5), "origin": (0, 10, 10)})
    for given in ({"voxel_size": (10, 5, 5)}, {}):
        again = blocks.open_output(tmp_path / "v.zarr", crop.shape, "uint8", (4, 64, 64), SETTINGS, given, resume=True)
        assert {k: again.array.attrs.get(k) for k in ("voxel_size", "origin")} == {
            "voxel_size": io.jsonable(given.get("voxel_size")), "origin": None}
    other = blocks.open_output(tmp_path / "other.zarr", (2, 3, 4), "float32", (1, 3, 4), {}, resume=True)
    assert not other.array[:].any()  # resume with nothing to resume starts one


def test_run_in_process_keeps_item_order():
    assert blocks.run(lambda item, job: item * job["k"], [3, 1, 2], {"k": 10}) == [30, 10, 20]


def test_a_block_is_one_shard_of_one_slice_chunks(tmp_path, crop):
    """Zarr v3 outputs (plain and OME-Zarr, every pyramid level, its block cut to the level) store a block as one
    shard of one-slice chunks, so a viewer reads one slice and no two tasks write the same file; Zarr v2 ones a block
    as a chunk; `block_of` gives the block back for the engine's later passes."""
    import zarr

    from mitoseg import omezarr

    block = (8, 128, 96)
    for name, zarr_format in [("p.zarr", 3), ("p.ome.zarr", 3), ("p2.zarr", 2), ("p2.ome.zarr", 2)]:
        out = blocks.open_output(tmp_path / name, crop.shape, "uint8", block, {}, {"voxel_size": [50, 4.6, 4.6]},
                                 zarr_format=zarr_format)
        for b in blocks.grid(crop.shape, block):
            out.write(b, crop[b])
        blocks.finish(out)
        levels = ([zarr.open_group(str(tmp_path / name), mode="r")[str(k)] for k in range(3)]
                  if omezarr.is_ome_path(name) else [zarr.open_array(str(tmp_path / name), mode="r")])
        for level in levels:  # a level smaller than the block: its blocks fit it
            fits = tuple(min(b, n) for b, n in zip(block, level.shape, strict=True))
            chunks = (1, *fits[1:]) if zarr_format == 3 else fits
            assert blocks.block_of(level) == fits and level.chunks == chunks, name
        np.testing.assert_array_equal(io.open_volume(tmp_path / name)[:], crop)
        assert blocks.block_of(io.open_volume(tmp_path / name)) == block


def test_reopened_outputs_store_empty_blocks_as_new_ones_do(tmp_path, crop):
    """A block written by a Dask worker (`Output.reopen`) or after a resume is stored byte for byte as in a fresh
    output, all-zero slices too (zarr skips empty chunks of an array it opens unless told otherwise)."""
    block, b = (4, 64, 64), np.s_[0:4, 0:64, 0:64]
    data = crop[b].copy()
    data[1:3] = 0  # two empty one-slice chunks in the block's shard
    for name in ["p.zarr", "p.ome.zarr"]:
        fresh = blocks.open_output(tmp_path / "fresh" / name, crop.shape, "uint8", block, {})
        fresh.write(b, data)
        run = blocks.open_output(tmp_path / "worker" / name, crop.shape, "uint8", block, {}).run
        blocks.Output.reopen(tmp_path / "worker" / name, run).write(b, data)
        blocks.open_output(tmp_path / "resumed" / name, crop.shape, "uint8", block, {})
        blocks.open_output(tmp_path / "resumed" / name, crop.shape, "uint8", block, {}, resume=True).write(b, data)
        shard = ("0/" if name.endswith(".ome.zarr") else "") + "c/0/0/0"
        stored = {way: (io.partial_path(tmp_path / way / name) / shard).read_bytes()
                  for way in ("fresh", "worker", "resumed")}
        assert stored["worker"] == stored["fresh"] and stored["resumed"] == stored["fresh"], name


def test_a_stopped_runs_late_block_is_not_written(tmp_path, crop):
    """Ctrl-C cancels a run's Dask tasks, but a block already computing on a remote worker went on and wrote into
    the output after the next run had started it again (an --overwrite with float16: uint8 values of 255 in it)
    or resumed it: a run writes only into its own."""
    block, b = (4, 64, 64), np.s_[0:4, 0:64, 0:64]
    for name in ["p.zarr", "p.ome.zarr"]:
        out = tmp_path / name
        stopped = blocks.open_output(out, crop.shape, "uint8", block, {}).run
        for resume in (False, True):  # started again (--overwrite), or resumed
            again = blocks.open_output(out, crop.shape, "uint8", block, {}, resume=resume, overwrite=True)
            assert again.run != stopped
            blocks.Output.reopen(out, stopped).write(b, crop[b])  # the stopped run's late block: not written
            assert not again.array[b].any() and again.todo([b]) == [b], (name, resume)
            blocks.Output.reopen(out, again.run).write(b, crop[b])  # this run's own: written
            np.testing.assert_array_equal(again.array[b], crop[b])
            again.array[b] = 0
            io.remove(io.block_marker(again.done, b))


def test_a_long_block_shows_its_bar_moving():
    """`blocks.ticking` (predict's bar, and every block engine's): the elapsed time moves while a block computes
    (before: a gigavoxel volume's first block, minutes on a CPU, showed "0/N [00:00" until it was done)."""
    import time
    from io import StringIO

    from tqdm import tqdm

    said = StringIO()
    bar = tqdm(total=3, desc="predict p.zarr", unit="block", file=said)
    with blocks.ticking(bar, every=0.2):
        time.sleep(1.3)
    bar.close()
    assert "0/3 [00:01" in said.getvalue(), said.getvalue()
    with blocks.ticking(tqdm(total=3, disable=True), every=0.2):  # --quiet: nothing to redraw
        time.sleep(0.3)


def test_label_and_evaluate_read_predicts_outputs_in_whole_chunks(tmp_path, droso):
    """Without --block, label and evaluate read in `reading_block`: 64 x 512 x 512 widened to whole chunks of the
    input and made shallower to as many voxels (predict's one-slice whole-plane chunks are read once, not once per
    512-wide block), with the same objects and scores as 64 x 512 x 512 blocks."""
    from conftest import jittered_probabilities, same_partition

    from mitoseg import instances, metrics

    mask = droso[1][:, :, :768]  # (20, 1024, 768): planes wider than 512 along both axes
    probs = tmp_path / "probs.zarr"
    out = blocks.open_output(probs, mask.shape, "uint8", mask.shape, {}, {"kind": "probability"})
    out.write(tuple(slice(0, n) for n in mask.shape), jittered_probabilities(mask))
    blocks.finish(out)
    stored = io.open_volume(probs)
    assert stored.chunks == (1, 1024, 768)
    assert blocks.reading_block(stored) == (6, 1024, 768)  # 20 x 512 x 512 voxels: 6 whole planes
    assert blocks.reading_block(mask) == (20, 512, 512)  # numpy: no chunks
    for shape, chunks, block in [((100, 1000, 1000), (64, 64, 64), (64, 512, 512)),  # already whole chunks
                                 ((100, 300, 1000), (1, 300, 700), (46, 300, 700)),  # 64 x 300 x 512 voxels
                                 ((200, 1000, 1000), (128, 100, 100), (64, 512, 512))]:  # whole chunks: too large
        assert blocks.reading_block(zarr.create_array(store={}, shape=shape, chunks=chunks, dtype="u1")) == block
    n = instances.label_volume(probs, tmp_path / "labels.zarr", progress=False)
    assert blocks.block_of(io.open_volume(tmp_path / "labels.zarr")) == (6, 1024, 768)
    plain = instances.label_volume(probs, tmp_path / "plain.zarr", (64, 512, 512), progress=False)
    assert n == plain > 20
    assert same_partition(io.open_volume(tmp_path / "labels.zarr")[:], io.open_volume(tmp_path / "plain.zarr")[:])
    scores = metrics.evaluate(probs, mask, progress=False)
    assert scores == metrics.evaluate(probs, mask, block=(64, 512, 512), progress=False) and scores["f1"] > 0.8
