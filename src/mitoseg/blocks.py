"""The block engine under predict, label and evaluate: one block grid, one output lifecycle, and block
tasks run in this process or on a Dask client.

An output volume is written as ``<name>.partial`` (a Zarr array whose shards, or chunks in Zarr v2, are the
blocks, so no two tasks ever write the same file), with one marker file per finished block in ``<name>.partial.done/``
and the settings that decide its values in its attributes (``settings``). `open_output` with `resume`
reopens such a partial output only when the settings are the same, and otherwise refuses, naming each
difference (so a resumed run never mixes blocks of two runs); `finish` renames it to its final name.
An output named ``*.ome.zarr`` is an OME-Zarr image group instead (level "0" written block by block, the
pyramid and NGFF metadata added by `finish`, see `mitoseg.omezarr`); one named
``<image>.ome.zarr/labels/<name>`` is also an image-label of that image.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mitoseg import checks, io, omezarr
from mitoseg.errors import MitosegError

Block = tuple[slice, ...]
# Every chunk is written, all-zero ones too: zarr 3 (3.1.6) first asks whether a chunk is all fill value with a
# comparison that costs ~10x the write itself (a 64 x 512 x 512 uint8 chunk: 61 ms against 5.5 ms by hand;
# zarr-python PR #4382), and an all-zero chunk compresses to 0.5-2 KB (uint8, uint32). An array opened again takes it
# through `with_config` (zarr 3.1.6's open_array passes `config` only to an array it creates).
WRITE = {"write_empty_chunks": True}


def storage(block: Sequence[int], zarr_format: int = 3, lead: int = 0) -> dict:
    """How an output array of blocks `block` (Z, Y, X) is stored, as zarr's create_array takes it: Zarr v3 holds
    each block as one shard of one-slice chunks (a task writes whole shards, so no two write the same file, and a
    viewer reads one slice, not a block's depth: benchmarks/bench_slices.py); v2 has no shards, a block is a chunk.
    `lead` axes of size 1 (time, channel of an image-label) come first."""
    block, ones = tuple(int(b) for b in block), (1,) * lead
    if zarr_format == 2:
        return {"chunks": ones + block}
    return {"shards": ones + block, "chunks": ones + (1, *block[1:])}


READ_BLOCK = (64, 512, 512)  # label's and evaluate's block (Z, Y, X voxels) where the input's chunks call for no other


def reading_block(array: Any) -> tuple[int, ...]:
    """The block (Z, Y, X voxels) label and evaluate read a volume `array` in when none is given: `READ_BLOCK`, each
    axis widened to whole stored chunks (``array.chunks``: a block across a chunk decompresses it once per block it
    touches, as 512-wide blocks do predict's one-slice whole-plane chunks and TIFF pages), then made shallower, in
    whole chunks, to about `READ_BLOCK`'s voxels again; capped at the shape. Arrays without chunks, and chunks that
    would make it more than twice as large, keep `READ_BLOCK` (benchmarks/bench_read_block.py)."""
    shape = tuple(int(n) for n in array.shape)
    plain = tuple(min(b, n) for b, n in zip(READ_BLOCK, shape, strict=True))
    chunks = getattr(array, "chunks", None)
    if not (isinstance(chunks, tuple) and len(chunks) == len(shape) and all(isinstance(c, int) for c in chunks)):
        return plain  # no chunks, or a Dask array's per-axis chunk lists
    chunks = [max(1, min(c, n)) for c, n in zip(chunks, shape, strict=True)]
    block = [min(-(-b // c) * c, n) for b, c, n in zip(plain, chunks, shape, strict=True)]
    budget = math.prod(plain)
    block[0] = min(block[0], max(chunks[0], budget // (block[1] * block[2]) // chunks[0] * chunks[0]))
    return tuple(block) if math.prod(block) <= 2 * budget else plain


def block_of(array: Any) -> tuple[int, ...] | None:
    """The block a stored array was written in: its shards (see `storage`), else its chunks, else None."""
    found = getattr(array, "shards", None) or getattr(array, "chunks", None)
    return tuple(int(n) for n in found) if isinstance(found, tuple) and found else None


def grid(shape: Sequence[int], block: Sequence[int]) -> list[Block]:
    """C-order slices of the blocks of size `block` (voxels per axis) covering `shape`; the last block
    along an axis may be smaller."""
    if len(block) != len(shape):
        raise MitosegError(f"block {tuple(block)} needs {len(shape)} sizes for shape {tuple(shape)}")
    checks.check(block=tuple(block))
    starts = [range(0, int(n), int(b)) for n, b in zip(shape, block, strict=True)]
    return [tuple(slice(s, min(s + int(b), int(n))) for s, b, n in zip(corner, block, shape, strict=True))
            for corner in itertools.product(*starts)]


def positions(shape: Sequence[int], block: Sequence[int]) -> list[tuple[int, ...]]:
    """Grid position (i, j, k) of each block of `grid(shape, block)`, in the same (C) order."""
    return list(itertools.product(*(range(-(-int(n) // int(b))) for n, b in zip(shape, block, strict=True))))


@dataclass(frozen=True)
class Output:
    """An output volume being written: its final path, the Zarr array under ``<path>.partial`` and the
    folder of its block markers."""

    path: Path
    array: Any
    done: Path
    pyramid: tuple | None = None  # OME-Zarr: (voxel size, nearest, name, origin) of the pyramid `finish` builds
    run: str = ""  # which run writes it (attribute "run"): a stopped run's late block is not written (`write`)

    def todo(self, blocks: Iterable[Block]) -> list[Block]:
        """The blocks not yet marked as written."""
        return [b for b in blocks if not io.block_marker(self.done, b).exists()]

    def mark(self, block: Block) -> None:
        """Mark `block` as written (after its data is in the array)."""
        io.block_marker(self.done, block).touch()

    def write(self, block: Block, data: Any) -> None:
        """Write one block's data, then mark it; nothing when the output is another run's now (a block a Dask worker
        went on computing after its run was stopped, and the output was started or resumed since)."""
        if self.array.attrs.get("run") != self.run:
            return
        self.array[block] = data
        self.mark(block)

    @classmethod
    def reopen(cls, path: str | Path, run: str) -> Output:
        """The output being written at `path` by the run `run` (`open_output`), opened again, e.g. in a Dask
        worker (its attributes read now, as `write` checks them)."""
        import zarr

        tmp = io.partial_path(path)
        array = zarr.open_array(str(tmp / "0" if omezarr.is_ome_output(path) else tmp), mode="r+").with_config(WRITE)
        return cls(Path(path), omezarr.space_view(array), Path(str(tmp) + ".done"), run=run)


def open_output(path: str | Path, shape: Sequence[int], dtype: Any, block: Sequence[int], settings: dict,
                attrs: dict | None = None, resume: bool = False, overwrite: bool = False,
                zarr_format: int = 3) -> Output:
    """Create ``<path>.partial`` (blocks `block`: `storage`; Zarr `zarr_format`: 3, or 2 for tools that read only
    Zarr v2, an OME-Zarr then NGFF 0.4; an image-label takes its image's) with `attrs` and `settings` in its attributes,
    or, with `resume`, reopen the one an interrupted run left when its shape, dtype, block, format and settings
    equal these (else MitosegError naming the differences). Refuses an existing `path` unless `overwrite`."""
    import zarr

    path = io.check_output(path, overwrite, "zarr")
    shape, block = tuple(int(s) for s in shape), tuple(int(b) for b in block)
    settings = _record(settings, shape, dtype, block)
    tmp = io.partial_path(path)
    attrs = dict(attrs or {})
    pyramid, image = None, None
    run = uuid.uuid4().hex
    if omezarr.is_ome_output(path):  # an NGFF image group: level 0 here, the pyramid when finished
        voxel = tuple(float(v) for v in attrs["voxel_size"]) if attrs.get("voxel_size") else None  # None: voxels
        name = attrs.get("kind", "image")
        if omezarr.label_of(path):  # an image-label: its image's layout and voxel size, its own name
            if attrs.get("kind") not in ("mask", "labels"):
                what = {"probability": "probabilities"}.get(attrs.get("kind"), attrs.get("kind", "volume"))
                raise MitosegError(f"{path}: an image's labels/ holds masks and labels (NGFF image-labels); write "
                                   f"the {what} as its own NAME.ome.zarr")
            image = omezarr.label_layout(path, shape)
            voxel, name = image.voxel or (1.0, 1.0, 1.0), Path(path).name
            attrs["voxel_size"] = voxel
            attrs.pop("origin", None)  # its place is its image's (the image's transformations)
        pyramid = (voxel, attrs.get("kind") in ("mask", "labels"), name, attrs.get("origin"))
    if resume and tmp.exists():
        array = zarr.open_array(str(tmp / "0" if pyramid else tmp), mode="r+").with_config(WRITE)
        array = omezarr.space_view(array)
        diff = _differences(dict(array.attrs.get("settings", {})), settings)
        if image is None and array.metadata.zarr_format != zarr_format:
            diff.append(f"Zarr format {array.metadata.zarr_format} then, {zarr_format} now")
        if diff:
            raise MitosegError(f"{tmp} was written with other settings ({'; '.join(diff)}): resume with the "
                               "same settings, or start again with --overwrite")
        array.attrs["run"] = run
        for key in ("voxel_size", "origin"):  # where the voxels lie, not their values: as the resuming run says
            array.attrs.pop(key, None)
        array.attrs.update(io.jsonable({k: attrs[k] for k in ("voxel_size", "origin") if attrs.get(k)}))
        return Output(path, array, io.done_dir(path, resume=True), pyramid, run)
    io.remove(tmp)
    if pyramid:
        array = omezarr.create_level0(tmp, shape, dtype, block, image, zarr_format)
    else:
        array = zarr.create_array(str(tmp), shape=shape, dtype=dtype, fill_value=0, config=WRITE,
                                  zarr_format=zarr_format, **storage(block, zarr_format))
    array.attrs.update(io.jsonable(dict(attrs, settings=settings, run=run)))
    return Output(path, array, io.done_dir(path, resume=False), pyramid, run)


def _record(settings: dict, shape: Sequence[int], dtype: Any, block: Sequence[int]) -> dict:
    """The settings an output records (JSON values), its shape, dtype and block among them."""
    return io.jsonable(dict(settings, shape=[int(n) for n in shape], dtype=str(np.dtype(dtype)),
                            block=[int(b) for b in block]))


def _differences(old: dict, new: dict) -> list[str]:
    """Each setting of `new` that `old` (an output's record) holds otherwise, in words."""
    return [f"{k} {old.get(k)!r} then, {v!r} now" for k, v in new.items()
            if old.get(k) != v and not (k == "source" and io.same_source(old.get(k), v))]


def keep_finished(path: str | Path, kind: str, shape: Sequence[int], dtype: Any, block: Sequence[int],
                  settings: dict, stated: dict | None = None) -> bool:
    """For a resume: whether a finished output of `kind` is at `path` written with these settings and the
    attributes `stated` (e.g. its voxel size), so it is kept as it is; False when there is no such output there
    (nothing, or something else: `io.check_output` then says so); MitosegError naming the differences when one
    was written otherwise."""
    if not Path(path).exists():
        return False
    try:
        attrs = io.attributes(io.open_volume(path))
    except MitosegError:
        return False
    if attrs.get("kind") != kind or "settings" not in attrs:
        return False
    diff = _differences(attrs["settings"], _record(settings, shape, dtype, block))
    diff += _differences(attrs, io.jsonable(dict(stated or {})))
    if diff:
        raise MitosegError(f"{path} was written with other settings ({'; '.join(diff)}): resume with the same "
                           "settings, or start again with --overwrite")
    return True


def finish(*outputs: Output, overwrite: bool = False, progress: bool = False) -> None:
    """Rename every finished output to its final name (see `io.finish_output`), once all are complete: an OME-Zarr
    output gets its pyramid and NGFF metadata first (`omezarr.write_pyramid`; an image-label the levels of its
    image, `omezarr.write_label_levels`; with a progress bar where `progress`), and the outputs an earlier run left
    under the final names (`overwrite`) are deleted before the first rename. An interruption leaves all unfinished
    (resumed together), not one finished beside another's ``.partial`` (which `--resume` could not take), but for
    the instant between two renames."""
    for out in outputs:
        if omezarr.label_of(out.path):  # an image-label: the levels and axes of its image
            omezarr.write_label_levels(io.partial_path(out.path), out.path, progress)
        elif out.pyramid:
            omezarr.write_pyramid(io.partial_path(out.path), *out.pyramid, progress=progress)
    if overwrite:
        for out in outputs:
            io.remove(out.path)
    for out in outputs:
        io.finish_output(out.path, overwrite)
        if omezarr.label_of(out.path):
            omezarr.register_label(out.path)


@contextlib.contextmanager
def ticking(bar: Any, every: float = 1.0) -> Iterator[None]:
    """A progress bar redrawn every `every` seconds while the block runs, so its elapsed time moves during a long
    block (a gigavoxel volume's first block takes minutes on a CPU: a bar standing still looks hung)."""
    stop = threading.Event()
    if bar.disable:  # no bar (--quiet)
        yield
        return

    def tick() -> None:
        while not stop.wait(every):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run(task: Callable, items: Sequence, job: dict | None = None, client: Any = None, desc: str = "",
        progress: bool = False) -> list:
    """``task(item, job=job)`` for every item, results in item order: in this process, or as one Dask task
    each on `client` (`task` and `job` must then pickle). On any error (or Ctrl-C) the remaining Dask
    tasks are cancelled and the error is raised here."""
    from tqdm.auto import tqdm

    if client is None:
        bar = tqdm(items, desc=desc, unit="block", disable=not progress)
        with ticking(bar):
            return [task(item, job=job) for item in bar]
    return wait(client.map(task, items, job=job, pure=False), desc, progress)  # job=: map() has a batch_size


def wait(futures: list, desc: str = "", progress: bool = False) -> list:
    """Results of Dask `futures`, in their order, with a progress bar as they complete; on any error (or
    Ctrl-C) the remaining tasks are cancelled and the error is raised here."""
    from concurrent.futures import CancelledError

    from distributed import as_completed
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker
    from tqdm.auto import tqdm

    index = {f.key: i for i, f in enumerate(futures)}
    results: list = [None] * len(futures)
    try:
        with tqdm(total=len(futures), desc=desc, unit="block", disable=not progress) as bar, ticking(bar):
            for future in as_completed(futures):
                results[index[future.key]] = future.result()
                bar.update(1)
    except BaseException as e:
        if futures:
            futures[0].client.cancel(futures)
        if isinstance(e, KilledWorker):
            said = str(e).split(". ")[0]  # not Dask's advice to read the worker logs: a local cluster mutes them
            raise MitosegError(f"Dask workers died running a block ({said}); often out of memory: give the workers "
                               "more memory or use a smaller --block") from None
        if isinstance(e, CancelledError | CommClosedError):  # the scheduler gone: its job's time limit, a crash
            said = " ".join(str(e).split())  # Dask's reason runs over several lines
            raise MitosegError(f"the Dask scheduler stopped answering ({type(e).__name__}: {said})") from None
        if isinstance(e, MitosegError | OSError):  # a task's: where the worker looked may not be where you did
            said = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror and e.filename else str(e)
            raise MitosegError(f"{said} (on a Dask worker, which must see the same files at the same paths: "
                               "docs/cluster.md)") from None
        raise
    return results
