"""Prediction and labelling block by block on a dask.distributed cluster, with the single-process result.

No scheduler of our own: `client` connects to any Dask scheduler (started by hand with `dask scheduler`
and `dask worker`, or by dask-jobqueue on SLURM/PBS, see docs/cluster.md) or starts a LocalCluster.
Tasks receive paths and block slices, never arrays: each opens the input and writes its block into the
output Zarr store itself (so the stores must lie on a filesystem every worker sees at the same path),
output blocks are Zarr shards (chunks in v2) so no two tasks write the same file, and each worker process loads the
model once (cached per process, reloaded only when the checkpoint file changes).

The per-block work is the single-process code: `predict.blend_block` and `predict.encode_block` for
prediction, `instances.summarize_block`, `block_pairs`, `merge_blocks`, `relabel_block` for labelling,
and `instances.block_statistics`, `group_shapes` for its object table, so the outputs equal
`predict.predict_volume`, `instances.label_blockwise` and the single-process table byte for byte (on CPU,
with the same number of torch threads; see docs/cluster.md).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.forkserver
import signal
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mitoseg import instances, io, postprocess
from mitoseg.errors import MitosegError

Block = tuple[slice, slice, slice]

# per worker process: the loaded model and the opened input files, so that each is loaded once
_LOCK = threading.Lock()
_MODELS: dict[tuple, tuple[Any, Any]] = {}
_INPUTS: dict[tuple, Any] = {}
_STATS = {"model_loads": 0}


def client(address: str | None = None, workers: int = 2, threads_per_worker: int = 1,
           memory_limit: str | float | None = "auto", scheduler_file: str | Path | None = None):
    """A `distributed.Client`: connected to the scheduler at `address` (``tcp://host:8786``) or described
    by `scheduler_file` (the JSON file ``dask scheduler --scheduler-file`` writes; an `address` naming an
    existing file is taken as one), or else to a new LocalCluster of `workers` processes with
    `threads_per_worker` threads each, its HTTP server on a free port (the default 8787 may be another cluster's), its
    workers deaf to Ctrl-C (a terminal sends it to them too: each printed a traceback; closing the client stops
    them) and its logs muted (after Ctrl-C the workers logged their cancelled tasks and heartbeats to the closing
    scheduler, with tracebacks; a block that fails, or kills its workers, still reaches the caller as an error).
    Use it as a context manager: closing the client also stops a LocalCluster it started."""
    from distributed import Client

    if address and "://" not in address and (Path(address).is_file() or address.endswith(".json")):
        address, scheduler_file = None, address
    if scheduler_file and not Path(scheduler_file).is_file():
        raise MitosegError(f"{scheduler_file}: no such scheduler file; give tcp://HOST:PORT or the file that "
                           "`dask scheduler --scheduler-file` wrote")
    if address or scheduler_file:
        where = address or f"the scheduler file {scheduler_file}"
        try:
            if address:
                connected = Client(address, timeout="30s")
            else:
                connected = Client(scheduler_file=str(scheduler_file), timeout="30s")
        except (KeyError, AssertionError, ValueError) as e:  # a file of something else, or a broken address
            if scheduler_file:
                raise MitosegError(f"{scheduler_file} is not a Dask scheduler file (the JSON that `dask scheduler "
                                   "--scheduler-file` writes)") from None
            raise MitosegError(f"cannot reach the Dask scheduler at {where} ({type(e).__name__}: {e})") from None
        except (OSError, TimeoutError, TypeError) as e:  # TypeError: tls:// without Dask's TLS settings
            raise MitosegError(f"cannot reach the Dask scheduler at {where} ({type(e).__name__}: {e})") from None
        try:
            check_workers(connected)
        except BaseException:
            connected.close()
            raise
        return connected
    import dask

    main = threading.current_thread() is threading.main_thread()
    forkserver = main and "forkserver" in multiprocessing.get_all_start_methods()
    stopped: list[int] = []
    if main:  # the workers start deaf to Ctrl-C: SIG_IGN is inherited (forked from a server started so)
        before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    if forkserver:  # and this process notes one that comes meanwhile (before: ignored, the run went on to its end)
        multiprocessing.forkserver.ensure_running()
        signal.signal(signal.SIGINT, lambda number, frame: stopped.append(number))
    try:
        with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}) if forkserver else \
                contextlib.nullcontext():
            started = Client(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                             dashboard_address=":0", memory_limit=memory_limit, silence_logs=logging.CRITICAL)
    finally:
        if main:
            signal.signal(signal.SIGINT, before)
    if stopped:  # stopped with the cluster closed, not half made (one closed at exit hung for 60 s, then a traceback)
        with closing(started):
            raise KeyboardInterrupt
    return started


@contextlib.contextmanager
def closing(client: Any) -> Iterator[Any]:
    """`client`, closed at the end with Ctrl-C ignored meanwhile: a close it interrupted left a LocalCluster half
    closed, and the client's own close at exit hung for 60 s, then printed a traceback."""
    try:
        yield client
    finally:
        main = threading.current_thread() is threading.main_thread()
        before = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            client.close()
        finally:
            if main:
                signal.signal(signal.SIGINT, before)


def check_workers(client) -> None:
    """Refuse a cluster whose workers cannot run mitoseg's tasks, or run another mitoseg version (a worker that
    cannot unpickle a task leaves the run waiting for ever); say so when it has no workers yet."""
    import sys

    from mitoseg import __version__

    try:
        found = client.run(_version)
    except Exception as e:  # noqa: BLE001 - whatever a worker's import raised
        raise MitosegError(f"the Dask workers cannot run mitoseg ({type(e).__name__}: {e}); install mitoseg "
                           f"{__version__} in the workers' environment") from None
    other = sorted({v for v in found.values() if v != __version__})
    if other:
        raise MitosegError(f"the Dask workers run mitoseg {', '.join(other)}, this client {__version__}: install "
                           "the same version in both")
    if not found:
        print("the Dask scheduler has no workers yet: the blocks wait until one joins", file=sys.stderr)


def _version() -> str:
    from mitoseg import __version__

    return __version__


# ---------------------------------------------------------------- helpers that run on the workers


def _stamp(path: Path) -> tuple:
    """What tells a changed file: (path, mtime, size) of it, or of every checkpoint in a run folder."""
    files = sorted(path.glob("*.pt")) if path.is_dir() else [path]
    return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.exists())


def _worker_device(device: str | None):
    from mitoseg.models import pick_device

    return pick_device(device or "auto")


def _worker_model(model: str, stamp: tuple, device: Any, planes: int):
    """(model, config) of a run folder or checkpoint predicting along `planes`, loaded once per worker
    process, device and planes."""
    from mitoseg.train import load_model

    key = (model, stamp, str(device), planes)
    with _LOCK:
        if key not in _MODELS:
            _MODELS.clear()  # one model at a time: a new checkpoint replaces the old one
            _MODELS[key] = load_model(model, device, planes)
            _STATS["model_loads"] += 1
        return _MODELS[key]


def _open_input(spec: str) -> Any:
    """`io.open_volume(spec)`; single files (TIFF, HDF5, .npy), whose index is slow to parse, are opened
    once per worker thread and kept while they are unchanged. Folders (Zarr, slices) are opened per task."""
    path, _ = io.split_path(spec)
    if not path.is_file():
        return io.open_volume(spec)
    key = (spec, _stamp(path), threading.get_ident())
    with _LOCK:
        if key not in _INPUTS:
            for old in [k for k in _INPUTS if k[0] == spec and k[2] == key[2]]:
                del _INPUTS[old]
            _INPUTS[key] = io.open_volume(spec)
        return _INPUTS[key]


def _predict_task(block: Block, job: dict) -> None:
    """Predict one block and write it (and its mask) into the partial outputs; `job` holds what is the same
    for every block (see `predict_volume_dask`)."""
    import torch

    from mitoseg import blocks, predict

    if job["torch_threads"]:
        torch.set_num_threads(job["torch_threads"])
    device = _worker_device(job["device"])
    s = job["settings"]
    net, config = _worker_model(job["model"], job["stamp"], device, s.planes)
    p = predict.blend_block(net, _open_input(job["image"]), block, s.tile, s.overlap, s.window, device, config.dims,
                            s.batch_size, s.tta, s.amp)  # encoded where it lies: a GPU copies back uint8
    outputs = [blocks.Output.reopen(path, run) for path, run in job["outputs"]]
    predict.write_block(outputs, block, predict.encode_block(p, s, mask=len(outputs) > 1))


def _confusion_task(block: Block, job: dict):
    from mitoseg import metrics

    return metrics.block_confusion(block, dict(job, prediction=_open_input(job["prediction"]),
                                               truth=_open_input(job["truth"])))


def _summary_task(spec: str, block: Block, index: int, connectivity: int, threshold: float | None, z_sigma: float):
    return instances.summarize_block(_blurred(spec, z_sigma)[block], index, connectivity, threshold)


def _blurred(spec: str, z_sigma: float) -> Any:
    """The input, seen blurred along Z by `z_sigma` slices when it is not 0 (`postprocess.ZSmoothed`)."""
    volume = _open_input(spec)
    return postprocess.ZSmoothed(volume, z_sigma) if z_sigma else volume


def _pairs_task(own: instances.BlockSummary, before: list, connectivity: int) -> tuple:
    pairs = instances.block_pairs(own, dict(zip(instances.PREDECESSORS, before, strict=True)), connectivity)
    return own.index, own.n, own.sizes, pairs  # the faces stay on the cluster


def _relabel_task(item: tuple[Block, np.ndarray], job: dict) -> None:
    from mitoseg import blocks

    block, table = item
    labels = instances.relabel_block(_blurred(job["spec"], job["z_sigma"])[block], table, job["connectivity"],
                                     job["threshold"])
    blocks.Output.reopen(job["output"], job["run"]).write(block, labels)


def _statistics_task(block: Block, job: dict) -> tuple:
    return instances.block_statistics(np.asarray(_open_input(job["spec"])[block]), block, job["n"])


def _shapes_task(rows: dict, job: dict) -> dict:
    return instances.group_shapes(_open_input(job["spec"]), rows, job["voxel_size"])


# ---------------------------------------------------------------- drivers, on the client


def _spec(spec: Any, what: str) -> str:
    """An absolute path spec (``/abs/file.h5:inner``), the same on every worker of a shared filesystem."""
    if not isinstance(spec, str | Path):
        raise MitosegError(f"give the {what} as a path: the Dask workers open it themselves")
    path, inner = io.split_path(spec)
    return str(path.absolute()) + (f":{inner}" if inner else "")


def table_dask(client, labels_spec: str | Path, n: int, voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
               block: Sequence[int] = (64, 512, 512), progress: bool = True) -> dict[str, np.ndarray]:
    """`instances.measure_blockwise` then `instances.morphology` of a label volume on a Dask cluster: the same
    table. `labels_spec`: a path every worker can read, ids 1..n; one task per `block`, then one per group
    of objects whose boxes start in one chunk of the labels."""
    from mitoseg import blocks

    spec = _spec(labels_spec, "labels")
    labels = io.open_volume(spec)
    job = dict(spec=spec, n=int(n), voxel_size=tuple(float(v) for v in voxel_size))
    parts = blocks.run(_statistics_task, blocks.grid(labels.shape, block), job, client, "measure", progress)
    table = instances.merge_statistics(n, parts, voxel_size)
    groups = instances.shape_groups(table, blocks.block_of(labels) or block)
    items = [{k: v[rows] for k, v in table.items()} for rows in groups]
    return instances.join_shapes(table, groups, blocks.run(_shapes_task, items, job, client, "shape", progress))


@io.releasing
def predict_volume_dask(client: Any, model_path: str | Path, image_spec: str | Path, out: str | Path, *,
                        tile: tuple[int, int, int] | None = None, tile_xy: int | None = None,
                        tile_z: int | None = None, overlap: float | None = None,
                        block: tuple[int, int, int] | None = None, dtype: str = "uint8",
                        mask_out: str | Path | None = None, threshold: float = 0.5, batch_size: int | None = None,
                        tta: bool = False, amp: bool = True, overwrite: bool = False, resume: bool = False,
                        progress: bool = True, attrs: dict | None = None, device: str | None = None,
                        torch_threads: int | None = None, match_training: bool = False,
                        planes: int | None = None) -> Path:
    """`predict.predict_volume` on a Dask cluster: one task per block, the same Zarr output.

    `model_path` is a run folder or checkpoint and `image_spec` a path as `io.open_volume` takes it, both
    readable by every worker. `tile` defaults to the run's, with `tile_xy` / `tile_z` when given (a 2D
    model without `tile_xy`: whole slices up to 2048 x 2048, see `predict.default_tile`), and `overlap`
    to the run's; `batch_size` None lets `predict_block` choose by the worker's device; `planes` (a 2D model's
    1 or 3) to the run's (`predict.model_for`).
    Each worker loads the model once on `device` (default: the worker's GPU, CUDA or MPS, else cpu);
    `torch_threads`, when given, sets torch's CPU threads per worker (the Nanny starts workers with
    OMP_NUM_THREADS=1). The outputs go through the same block engine (`predict.open_outputs`), so either
    path can resume the other's run, and a resume with other settings or another model is refused.
    Returns `out`.
    """
    from mitoseg import blocks, predict

    image = _spec(image_spec, "image")
    model = str(Path(model_path).absolute())
    # fails here, once, on a bad checkpoint or three planes of anisotropic voxels (given, else the image's)
    net, config = predict.model_for(model, image, "cpu", planes, (attrs or {}).get("voxel_size"))
    volume = io.open_volume(image)
    shape = tuple(volume.shape)
    settings = predict.plan(volume, config.dims, tile or predict.run_tile(config, shape, tile_xy, tile_z),
                            config.overlap if overlap is None else overlap, block, planes=config.slice_planes,
                            dtype=dtype, threshold=threshold,
                            window=predict.input_window(net, volume, match_training), tta=tta, amp=amp,
                            batch_size=batch_size)
    attrs = {**predict.recorded_voxel(config), **(attrs or {})}
    if predict.kept(out, mask_out, shape, settings, predict.fingerprint(net), attrs, resume, overwrite):
        return Path(out)
    io.check_output(out, overwrite, "zarr", (image,))
    if mask_out is not None:
        io.check_output(mask_out, overwrite, "zarr", (image,))
    outputs = predict.open_outputs(shape, out, mask_out, settings, predict.fingerprint(net), attrs, resume, overwrite)
    del net
    todo = outputs[0].todo(blocks.grid(shape, settings.block))
    job = dict(model=model, stamp=_stamp(Path(model)), device=device, image=image, settings=settings,
               outputs=[(str(o.path.absolute()), o.run) for o in outputs], torch_threads=torch_threads)
    blocks.run(_predict_task, todo, job, client, f"predict {Path(out).name}", progress)
    blocks.finish(*outputs, overwrite=overwrite, progress=progress)
    if warning := predict.unlearned(model):
        print(warning, file=sys.stderr)
    return Path(out)


@io.releasing
def label_dask(client: Any, mask_spec: str | Path, out: str | Path, *, block: Sequence[int] | None = None,
               connectivity: int = 26, min_size: int = 0, threshold: float | None = None, progress: bool = True,
               attrs: dict | None = None, overwrite: bool = False, resume: bool = False, z_sigma: float = 0.0,
               stored: bool = False, source: str | None = None) -> int:
    """`instances.label_blockwise` on a Dask cluster: the same labels, id for id, in a new Zarr at `out`.

    `mask_spec`: a path (`io.open_volume`) every worker can read; foreground is `>= threshold` on the stored
    values (128 for 0.5 of uint8 probabilities: `instances.label_volume(..., client=client)` converts a probability
    and applies the run's choice), or `> 0` when threshold is None (refused for mitoseg probabilities unless
    `stored` says the threshold is already on the stored scale, as `label_volume` passes it), after a blur along Z
    of `z_sigma` slices (`postprocess.ZSmoothed`: each task reads its block's neighbouring slices too). `block`
    defaults to `blocks.reading_block` of the input and is also the output's shard shape. `source`: the input's
    `io.content_id` when the caller has it (a resume must match it).
    Pass 1 labels every block alone and keeps its faces on the cluster; one task per block finds the ids
    touching the blocks before it, from their faces; the client solves the equivalences (a few bytes per
    object); pass 2 relabels every block into ``<out>.partial`` (with `resume`, skipping the blocks an
    interrupted run with the same settings wrote: pass 1 is deterministic), renamed to `out` at the end.
    Returns the number of objects.
    """
    from dask import delayed

    from mitoseg import blocks

    spec = _spec(mask_spec, "mask")
    volume = io.open_volume(spec)
    shape = tuple(volume.shape)
    if not stored and io.stated_kind(volume) == "probability" and (
            threshold is None or threshold < 1 and volume.dtype == np.uint8):
        raise MitosegError(f"{mask_spec} holds mitoseg probabilities stored as {volume.dtype}: give label_dask a "
                           "threshold on that scale (e.g. 128 for 0.5 of uint8), or label with "
                           "instances.label_volume(..., client=client), which converts it")
    block = tuple(int(b) for b in (block or blocks.reading_block(volume)))
    output = instances.open_labels(out, shape, block, connectivity, min_size, threshold, attrs, resume, overwrite,
                                   z_sigma, source or io.content_id(volume))
    grid = blocks.grid(shape, block)

    run = uuid.uuid4().hex[:8]
    summaries: dict[tuple[int, ...], Any] = {}
    pairs = []
    for index, (sl, pos) in enumerate(zip(grid, blocks.positions(shape, block), strict=True)):
        summaries[pos] = delayed(_summary_task, pure=False)(
            spec, sl, index, connectivity, threshold, z_sigma, dask_key_name=f"mitoseg-label-block-{run}-{index}")
        before = [summaries.get((pos[0] - d[0], pos[1] - d[1], pos[2] - d[2])) for d in instances.PREDECESSORS]
        pairs.append(delayed(_pairs_task, pure=False)(
            summaries[pos], before, connectivity, dask_key_name=f"mitoseg-label-pairs-{run}-{index}"))
    futures = client.compute(pairs)  # one graph: dask orders it so faces are dropped once used
    del summaries, pairs
    results = blocks.wait(futures, "label pass 1/2", progress)  # in block order
    counts = [r[1] for r in results]
    offsets, lookup, n_objects = instances.merge_blocks(counts, [r[2] for r in results], [r[3] for r in results],
                                                        min_size)
    del results
    todo = {tuple(s.start for s in sl) for sl in output.todo(grid)}  # slices are unhashable before Python 3.12
    items = [(sl, instances.block_table(lookup, o, n)) for sl, o, n in zip(grid, offsets, counts, strict=True)
             if tuple(s.start for s in sl) in todo]  # each task gets its own block's table
    job = dict(spec=spec, connectivity=connectivity, threshold=threshold, z_sigma=z_sigma,
               output=str(output.path.absolute()), run=output.run)
    blocks.run(_relabel_task, items, job, client, "label pass 2/2", progress)
    output.array.attrs["objects"] = int(n_objects)
    blocks.finish(output, overwrite=overwrite, progress=progress)
    return n_objects


def scheduler_info(client) -> str:
    """One line about the cluster the client is connected to: address, workers, threads."""
    info = client.scheduler_info()
    workers = info.get("workers", {})
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    return f"Dask scheduler {info.get('address', '?')}: {len(workers)} workers, {threads} threads"

