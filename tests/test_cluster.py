"""Dask cluster execution: a LocalCluster of two worker processes gives the single-process outputs exactly."""

import json
import logging
import re
import signal

import cc3d
import numpy as np
import pytest
import tifffile
import torch
import zarr
from conftest import dies_on_call, jittered_probabilities, same_partition
from distributed import get_task_stream

from mitoseg import blocks, cluster, instances, io, postprocess, predict
from mitoseg.config import Config
from mitoseg.errors import MitosegError
from mitoseg.instances import label_blockwise
from mitoseg.train import load_model, train


@pytest.fixture(scope="module")
def dask_client():
    with cluster.client(workers=2, threads_per_worker=1, memory_limit="3GiB") as c:
        yield c


@pytest.fixture(scope="module")
def runs(tmp_path_factory, droso_crop):
    """Tiny seeded run folders (one iteration of training), 2D and 3D, as `mitoseg train` writes them."""
    raw, mask = droso_crop
    root = tmp_path_factory.mktemp("runs")
    for dims in (2, 3):
        cfg = Config(dims=dims, patch_xy=64, patch_z=8, batch=1, epochs=1, iterations_per_epoch=1,
                     warmup_iterations=1, tile_xy=64, tile_z=8, overlap=0.25, val_fraction=0.25, seed=dims)
        train(cfg, raw[:8, :128, :128].copy(), mask[:8, :128, :128].copy(), root / f"run{dims}", progress=False)
    return root


def _reference(run, image, out, mask_out, block, threads: int = 1):
    """predict_volume in this process with as many torch threads as a worker has (the Nanny sets 1)."""
    model, cfg = load_model(run, "cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return predict.predict_volume(model, image, out, cfg.dims, cfg.tile, cfg.overlap, block, mask_out=mask_out,
                                      progress=False)
    finally:
        torch.set_num_threads(before)


def test_predict_2d_equals_single_process_and_resumes_its_run(dask_client, runs, droso_crop, tmp_path, monkeypatch):
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, droso_crop[0][:6, 100:196, 60:188])  # a file: workers open it themselves
    block = (2, 64, 48)  # 3 x 2 x 3 blocks, cutting tiles
    ref = _reference(runs / "run2", image, tmp_path / "ref.zarr", tmp_path / "ref_mask.zarr", block)
    out = cluster.predict_volume_dask(dask_client, runs / "run2", str(image), tmp_path / "p.zarr", block=block,
                                      mask_out=tmp_path / "m.zarr", progress=False)
    got = zarr.open_array(str(out), mode="r")
    assert got.dtype == np.uint8 and got.shards == block  # a task writes whole shards
    np.testing.assert_array_equal(got[:], io.open_volume(ref)[:])
    np.testing.assert_array_equal(io.open_volume(tmp_path / "m.zarr")[:], io.open_volume(tmp_path / "ref_mask.zarr")[:])
    assert 0 < got[:].std() and dict(got.attrs)["kind"] == "probability"
    assert not io.partial_path(out).exists() and not (tmp_path / "p.zarr.partial.done").exists()

    # a single-process run killed after two blocks is finished by the cluster, which skips those blocks
    real = predict.blend_block
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(predict, "blend_block", dying)
    model, cfg = load_model(runs / "run2", "cpu")
    resumed = tmp_path / "resumed.zarr"
    with pytest.raises(KeyboardInterrupt):
        predict.predict_volume(model, image, resumed, 2, cfg.tile, cfg.overlap, block, progress=False)
    monkeypatch.undo()
    zarr.open_array(str(io.partial_path(resumed)), mode="r+")[:2, :64, :48] = 7  # marks the first finished block
    with pytest.raises(MitosegError, match=r"other settings \(tile \[1, 64, 64\] then, \[1, 96, 128\] now\)"):
        cluster.predict_volume_dask(dask_client, runs / "run2", image, resumed, block=block, resume=True,
                                    progress=False)  # the default tile (whole slices) is not the killed run's
    cluster.predict_volume_dask(dask_client, runs / "run2", image, resumed, tile=cfg.tile, block=block, resume=True,
                                progress=False)
    expect = io.open_volume(ref)[:]
    expect[:2, :64, :48] = 7
    np.testing.assert_array_equal(io.open_volume(resumed)[:], expect)
    # an interrupted run is resumed only with its own settings and model, on either path
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(predict, "blend_block", dying)
        calls["n"] = 0
        predict.predict_volume(model, image, tmp_path / "other.zarr", 2, cfg.tile, cfg.overlap, block, progress=False)
    monkeypatch.undo()
    for change, named in [(dict(block=(3, 64, 48)), "block"), (dict(overlap=0.5), "overlap"), (dict(tta=True), "tta"),
                          (dict(match_training=True), "window"),  # grey levels matched: another window
                          (dict(planes=3), "planes")]:
        with pytest.raises(MitosegError, match=f"other settings .*{named}"):
            cluster.predict_volume_dask(dask_client, runs / "run2", image, tmp_path / "other.zarr",
                                        **dict(dict(block=block, tile=cfg.tile), **change), resume=True,
                                        progress=False)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # another model
    with pytest.raises(MitosegError, match="other settings .*model"):
        predict.predict_volume(model, image, tmp_path / "other.zarr", 2, cfg.tile, cfg.overlap, block, resume=True,
                               progress=False)


def test_predict_3d_equals_single_process(dask_client, runs, droso_crop, tmp_path):
    image = tmp_path / "image.zarr"
    zarr.create_array(str(image), data=droso_crop[0][:10, 40:104, 100:212], chunks=(4, 64, 64))
    block = (4, 64, 40)  # 3 x 1 x 3 blocks cutting the 2 x 1 x 2 tiles (8, 64, 64) in z and x
    ref = _reference(runs / "run3", image, tmp_path / "ref.zarr", None, block)

    def loads():
        return sum(dask_client.run(lambda: cluster._STATS["model_loads"]).values())

    before = loads()
    out = cluster.predict_volume_dask(dask_client, runs / "run3", image, tmp_path / "p.zarr", block=block,
                                      progress=False)
    assert loads() - before <= 2  # 9 blocks, 2 workers: each worker loads the model at most once
    got = io.open_volume(out)[:]
    np.testing.assert_array_equal(got, io.open_volume(ref)[:])
    assert got.shape == (10, 64, 112) and 0 < got.std()


def test_predict_along_three_planes_equals_single_process(dask_client, runs, droso_crop, tmp_path):
    """An XY run asked for three planes (`planes=3`): every worker loads the model along three planes, and the
    blocks (each reading whole slices along all three axes) equal this process's prediction."""
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, droso_crop[0][:12, 100:164, 60:124])
    block = (6, 32, 32)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as many threads as a worker has
    try:
        ref = predict.predict(runs / "run2", image, tmp_path / "ref.zarr", block=block, planes=3, progress=False)
    finally:
        torch.set_num_threads(before)
    out = cluster.predict_volume_dask(dask_client, runs / "run2", str(image), tmp_path / "p.zarr", block=block,
                                      planes=3, progress=False)
    assert io.open_volume(out).attrs["settings"]["planes"] == 3
    np.testing.assert_array_equal(io.open_volume(out)[:], io.open_volume(ref)[:])
    # voxels given as anisotropic (the image states none): refused on the cluster as in this process
    with pytest.raises(MitosegError, match="near-isotropic voxels .* 50 x 4.6 x 4.6 nm"):
        predict.predict(runs / "run2", str(image), tmp_path / "a.zarr", planes=3, voxel_size=(50, 4.6, 4.6),
                        client=dask_client, progress=False)
    assert not (tmp_path / "a.zarr").exists() and not io.partial_path(tmp_path / "a.zarr").exists()


@pytest.fixture(scope="module")
def real_mask(droso, tmp_path_factory):
    """The real mitochondria mask (20, 256, 512) as a Zarr store the workers read."""
    mask = droso[1][:, :256, :512].copy()
    path = tmp_path_factory.mktemp("mask") / "mask.zarr"
    zarr.create_array(str(path), data=mask, chunks=(5, 128, 128))
    return mask, path


@pytest.mark.parametrize("connectivity", [6, 26])
def test_label_equals_blockwise_and_whole_volume(dask_client, real_mask, tmp_path, connectivity):
    mask, path = real_mask
    block = (7, 100, 130)  # 3 x 3 x 4 blocks that cut objects across faces, edges and corners
    ref = cc3d.connected_components(mask, connectivity=connectivity)
    cut = {int(i) for i in np.unique(ref[:, 99:101]) if i} | {int(i) for i in np.unique(ref[6:8]) if i}
    assert len(cut) >= 5  # of the 9 objects
    single = np.zeros(mask.shape, np.uint32)
    n_single = label_blockwise(mask, single, block, connectivity)
    n = cluster.label_dask(dask_client, path, tmp_path / "labels.zarr", block=block, connectivity=connectivity,
                           progress=False, attrs={"kind": "labels"})
    got = zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")
    assert got.dtype == np.uint32 and got.shards == block and dict(got.attrs)["kind"] == "labels"
    labels = got[:]
    assert n == n_single == ref.max()
    np.testing.assert_array_equal(labels, single)  # the same ids, not only the same partition
    assert same_partition(labels, ref)


def test_label_threshold_min_size_and_connecting_to_a_scheduler(dask_client, real_mask, tmp_path):
    mask, _ = real_mask
    prob = np.where(mask > 0, 0.75, 0.25).astype(np.float32)
    prob[:, 300:310] = 0.5  # exactly at the threshold: foreground
    path = tmp_path / "prob.zarr"
    zarr.create_array(str(path), data=prob, chunks=(10, 128, 128))
    single = np.zeros(mask.shape, np.uint32)
    n_single = label_blockwise(prob, single, (8, 90, 200), 26, min_size=500, threshold=0.5)
    # a second client connected by address, as `--dask-address tcp://...` does
    with cluster.client(dask_client.scheduler.address) as remote:
        assert "2 workers" in cluster.scheduler_info(remote)
        n = cluster.label_dask(remote, f"{path}", tmp_path / "l.zarr", block=(8, 90, 200), min_size=500, threshold=0.5,
                               progress=False)
    assert n == n_single > 0
    np.testing.assert_array_equal(io.open_volume(tmp_path / "l.zarr")[:], single)
    with pytest.raises(MitosegError, match="already exists"):
        cluster.label_dask(dask_client, path, tmp_path / "l.zarr", block=(8, 90, 200), progress=False)
    # the file `dask scheduler --scheduler-file` writes (Client.write_scheduler_file fails on worker metrics)
    address = dask_client.scheduler.address
    (tmp_path / "scheduler.json").write_text(json.dumps({"type": "Scheduler", "address": address}))
    with cluster.client(str(tmp_path / "scheduler.json")) as remote:  # --dask-address may name the file
        n = cluster.label_dask(remote, path, tmp_path / "l6.zarr", block=(8, 90, 200), connectivity=6, min_size=500,
                               threshold=0.5, progress=False)
    single6 = np.zeros(mask.shape, np.uint32)
    assert n == label_blockwise(prob, single6, (8, 90, 200), 6, min_size=500, threshold=0.5)
    np.testing.assert_array_equal(io.open_volume(tmp_path / "l6.zarr")[:], single6)


def test_schedulers_and_workers_that_cannot_serve_are_one_line(dask_client, tmp_path, capsys):
    """A missing or broken scheduler file, workers that cannot import mitoseg or run another version (before:
    the run waited for ever), workers that keep dying on a block (before: a KilledWorker traceback), and a file a
    worker cannot find (said as the worker's)."""
    (tmp_path / "broken.json").write_text(json.dumps({"garbage": 1}))
    (tmp_path / "image.tif").write_bytes(b"II*\x00")
    for where, words in [(tmp_path / "nosuch.json", "no such scheduler file"),
                         (tmp_path / "broken.json", "broken.json is not a Dask scheduler file"),
                         (tmp_path / "image.tif", "image.tif is not a Dask scheduler file"),  # was "(AssertionError: )"
                         ("tls://127.0.0.1:1", "cannot reach the Dask scheduler at tls://127.0.0.1:1 (")]:
        with pytest.raises(MitosegError, match=re.escape(words)):  # tls://: a traceback before (distributed raises a
            # TypeError, or an AssertionError after another test's client: in the line either way)
            cluster.client(str(where))

    class Workers:  # what `client.run` of the version check gives back
        def __init__(self, answer):
            self.answer = answer

        def run(self, function):
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer

    cluster.check_workers(dask_client)  # the test cluster's workers run this mitoseg
    # Ctrl-C in a terminal reaches the LocalCluster's processes too: each printed a traceback; they ignore it
    ignored = dask_client.run(lambda: int(next(line for line in open("/proc/self/status")
                                               if line.startswith("SigIgn:")).split()[1], 16))
    assert ignored and all(mask & (1 << (signal.SIGINT - 1)) for mask in ignored.values())
    # and they log nothing to the terminal: after Ctrl-C they logged cancelled tasks and failed heartbeats to the
    # closing scheduler, with tracebacks, before mitoseg's one line (2 of 4 interrupts in an audit)
    levels = dask_client.run(lambda: sorted({h.level for h in logging.getLogger("distributed").handlers}))
    assert levels and all(found == [logging.CRITICAL] for found in levels.values()), levels
    for answer, words in [(ModuleNotFoundError("No module named 'mitoseg'"), "workers cannot run mitoseg"),
                          ({"tcp://w1": "0.0.1"}, "workers run mitoseg 0.0.1, this client")]:
        with pytest.raises(MitosegError, match=words):
            cluster.check_workers(Workers(answer))
    cluster.check_workers(Workers({}))
    assert "no workers yet" in capsys.readouterr().err

    with pytest.raises(MitosegError, match="Dask workers died running a block .*smaller --block"):
        blocks.run(_dies, [1, 2], {}, dask_client)
    # the scheduler gone midway (its job's time limit) cancels every task: one line (before: a traceback, status 1)
    import threading

    futures = dask_client.map(_sleeps, [1, 2], pure=False)
    threading.Timer(0.5, dask_client.cancel, [futures]).start()
    with pytest.raises(MitosegError, match="the Dask scheduler stopped answering"):
        blocks.wait(futures)
    with pytest.raises(MitosegError, match=r"No such file or directory: .*nowhere.tif \(on a Dask worker, which must"):
        blocks.run(_reads, [1], {"path": str(tmp_path / "nowhere.tif")}, dask_client)


def _reads(item, job):
    open(job["path"], "rb")


def _sleeps(item):
    import time

    time.sleep(4)
    return item


def _dies(item, job):
    from types import SimpleNamespace

    from distributed.scheduler import KilledWorker

    raise KilledWorker(f"task {item}", SimpleNamespace(address="tcp://worker"), 3)


def test_label_table_on_the_cluster_equals_this_process(dask_client, real_mask, tmp_path):
    """`mitoseg label --table` on the cluster (measurements per block, shapes per group of objects) writes
    the single-process table, byte for byte."""
    _, path = real_mask
    block = (7, 100, 130)
    n = instances.label_volume(path, tmp_path / "one.zarr", block, voxel_size=(50, 4.6, 4.6),
                               table=tmp_path / "one.csv", progress=False)
    assert instances.label_volume(path, tmp_path / "many.zarr", block, voxel_size=(50, 4.6, 4.6),
                                  table=tmp_path / "many.csv", client=dask_client, progress=False) == n > 5
    one = (tmp_path / "one.csv").read_text()
    assert (tmp_path / "many.csv").read_text() == one and len(one.splitlines()) == n + 1


def test_label_blurs_probabilities_along_z_on_the_cluster_as_in_this_process(dask_client, real_mask, tmp_path):
    """Probabilities carrying a run's choice with a Z blur: each labelling task reads its block's neighbouring
    slices, so the cluster writes this process's labels, id for id, and the blur changed them."""
    mask, _ = real_mask
    path = tmp_path / "p.zarr"
    z = zarr.create_array(str(path), data=jittered_probabilities(mask), chunks=(5, 128, 128))
    z.attrs.update(kind="probability", postprocessing=postprocess.PostProcessing(0.5, 200, False, 1.5).as_dict())
    block = (4, 100, 130)
    n = instances.label_volume(path, tmp_path / "one.zarr", block, progress=False)
    assert instances.label_volume(path, tmp_path / "many.zarr", block, client=dask_client, progress=False) == n > 5
    one = io.open_volume(tmp_path / "one.zarr")[:]
    np.testing.assert_array_equal(io.open_volume(tmp_path / "many.zarr")[:], one)
    assert [io.attributes(io.open_volume(tmp_path / f))["objects"] for f in ("one.zarr", "many.zarr")] == [n, n]
    assert not np.array_equal(one > 0, z[:] >= 128)
    for threshold in (None, 0.5):  # the engine alone takes stored values: before, every voxel > 0 or >= 0.5 of 255
        with pytest.raises(MitosegError, match="holds mitoseg probabilities stored as uint8: give label_dask a thr"):
            cluster.label_dask(dask_client, path, tmp_path / "raw.zarr", block=block, threshold=threshold,
                               progress=False)
    assert not (tmp_path / "raw.zarr").exists() and not io.partial_path(tmp_path / "raw.zarr").exists()
    # label_volume's own stored-scale threshold under 1 (a probability under 1/255) is no mistake: as in this process
    tiny = instances.label_volume(path, tmp_path / "tiny.zarr", block, threshold=0.002, progress=False)
    assert instances.label_volume(path, tmp_path / "tiny_d.zarr", block, threshold=0.002, client=dask_client,
                                  progress=False) == tiny


def test_a_mask_blurred_along_z_is_written_by_the_workers_as_by_this_process(dask_client, real_mask, tmp_path):
    """`predict --mask` of a run that blurs along Z makes the mask in a pass of its own (`write_mask`): on the
    cluster its tasks run on the workers, and every stored file, empty slices too, is this process's."""
    mask, _ = real_mask
    block = (4, 128, 256)
    probs = blocks.open_output(tmp_path / "p.zarr", mask.shape, "uint8", block, {}, {"kind": "probability"})
    probs.array[:] = jittered_probabilities(mask)
    blocks.finish(probs)
    pp = postprocess.PostProcessing(0.5, 0, False, 1.5)
    predict.write_mask(tmp_path / "p.zarr", tmp_path / "one.zarr", pp, progress=False)
    with get_task_stream(dask_client) as tasks:
        predict.write_mask(tmp_path / "p.zarr", tmp_path / "many.zarr", pp, progress=False, client=dask_client)
    assert len([t for t in tasks.data if t["key"].startswith("_mask_task")]) == len(blocks.grid(mask.shape, block))
    files = sorted(p.relative_to(tmp_path / "one.zarr") for p in (tmp_path / "one.zarr").rglob("*") if p.is_file())
    assert len(files) > 5 and files == sorted(p.relative_to(tmp_path / "many.zarr")
                                              for p in (tmp_path / "many.zarr").rglob("*") if p.is_file())
    for f in files:
        if f.name != "zarr.json":
            assert (tmp_path / "one.zarr" / f).read_bytes() == (tmp_path / "many.zarr" / f).read_bytes(), f
    one = io.open_volume(tmp_path / "one.zarr")[:]
    assert one.any() and not np.array_equal(one, io.open_volume(tmp_path / "p.zarr")[:] >= 128)  # blurred


def test_label_resumes_a_single_process_run_on_the_cluster(dask_client, real_mask, tmp_path, monkeypatch):
    mask, path = real_mask
    block = (7, 100, 130)
    ref = np.zeros(mask.shape, np.uint32)
    label_blockwise(mask, ref, block)
    monkeypatch.setattr(instances, "relabel_block", dies_on_call(instances.relabel_block, 5))
    with pytest.raises(KeyboardInterrupt):
        instances.label_volume(path, tmp_path / "l.zarr", block, progress=False)
    monkeypatch.undo()
    zarr.open_array(str(io.partial_path(tmp_path / "l.zarr")), mode="r+")[:7, :100, :130] = 99  # a finished block
    with pytest.raises(MitosegError, match="other settings .*connectivity 26 then, 6 now"):
        cluster.label_dask(dask_client, path, tmp_path / "l.zarr", block=block, connectivity=6, resume=True,
                           progress=False)
    n = cluster.label_dask(dask_client, path, tmp_path / "l.zarr", block=block, resume=True, progress=False)
    expect = ref.copy()
    expect[:7, :100, :130] = 99  # kept: the cluster skipped the blocks the killed run had written
    np.testing.assert_array_equal(io.open_volume(tmp_path / "l.zarr")[:], expect)
    assert n == ref.max()


def test_arrays_are_refused(dask_client, tmp_path):
    with pytest.raises(MitosegError, match="as a path"):
        cluster.label_dask(dask_client, np.zeros((2, 4, 4), np.uint8), tmp_path / "l.zarr", progress=False)


def test_evaluate_on_the_cluster_equals_this_process(dask_client, real_mask, tmp_path):
    from mitoseg import metrics

    mask, truth_path = real_mask
    pred = np.roll(mask, 3, axis=2)  # a prediction shifted by 3 pixels: every count non-zero
    pred_path = tmp_path / "pred.zarr"
    zarr.create_array(str(pred_path), data=pred, chunks=(5, 128, 128))
    here = metrics.evaluate(pred_path, truth_path, block=(7, 100, 130), progress=False)
    there = metrics.evaluate(pred_path, truth_path, block=(7, 100, 130), client=dask_client, progress=False)
    assert here == there == metrics.scores(metrics.confusion(pred, mask))
    assert 0 < here["fp"] and 0 < here["fn"]
    with pytest.raises(MitosegError, match="as a path"):
        metrics.evaluate(pred, mask, client=dask_client, progress=False)


def test_ctrl_c_while_a_local_cluster_starts_stops_with_it_closed(monkeypatch):
    """Ctrl-C while the LocalCluster starts (its first seconds) stops the command once the cluster stands, closed
    (before: ignored, so the run went on to its end and exited 0; a client left half made hung 60 s on exit). Its
    workers fork from a server started deaf to Ctrl-C, so they ignore it still (see the test above)."""
    import os

    import dask
    import distributed

    closed = []

    class Starting:  # a Client whose start meets Ctrl-C
        def __init__(self, **kwargs):
            assert dask.config.get("distributed.worker.multiprocessing-method") == "forkserver"
            os.kill(os.getpid(), signal.SIGINT)  # noted, not raised in the middle of the start

        def close(self):
            closed.append(True)

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(distributed, "Client", Starting)
    with pytest.raises(KeyboardInterrupt):
        cluster.client(workers=1)
    assert closed == [True] and signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_while_the_cluster_closes_is_ignored():
    """A second Ctrl-C while the command closes its cluster (the work done, or stopped) is ignored: before, it left
    a LocalCluster half closed, and the client's own close at exit hung 60 s, then printed a traceback."""
    import os

    closed = []

    class Closing:
        def close(self):
            os.kill(os.getpid(), signal.SIGINT)
            closed.append(True)

    before = signal.getsignal(signal.SIGINT)
    with cluster.closing(Closing()) as c:
        assert isinstance(c, Closing)
    assert closed == [True] and signal.getsignal(signal.SIGINT) is before
