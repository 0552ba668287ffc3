"""Which slices (or boxes within slices) to annotate next: a trained model's uncertainty, ranked and
spread out.

Uncertainty is the mean binary entropy (bits, 0..1) of the model's foreground probability over a
slice, or over a box x box square of one (`box`), with test-time augmentation (the mean over 4 in-plane
flips, so flips that disagree raise it). Boxes lie on a grid, the last row and column shifted inwards so
that every box is whole. Picks are greedy, most uncertain first; a pick blocks its own grid cell in the
`gap` slices on either side (neighbouring slices look alike: annotating both teaches little more), and
the slices already annotated block every cell around them.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

from mitoseg import checks, io
from mitoseg.config import Config
from mitoseg.errors import MitosegError

SLAB = 16  # slices read at a time from the probabilities


def entropy(probs: np.ndarray) -> np.ndarray:
    """Binary entropy in bits (0 where certain, 1 at p = 0.5) of probabilities, any shape, float [0, 1]
    or uint8 0..255 as mitoseg stores them."""
    probs = np.asarray(probs)
    p = probs.astype(np.float32) / np.float32(io.probability_scale(probs))
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def boxes(shape: tuple[int, int], box: int | None) -> list[tuple[int, int, int, int]]:
    """The grid of `box` x `box` squares covering a slice of `shape` (Y, X) pixels, as (y, x, height,
    width), row by row; the last row and column are shifted inwards so every square is whole (a side
    longer than the slice is cut to it). `box` None: the whole slice."""
    height, width = (shape if box is None else (min(box, shape[0]), min(box, shape[1])))

    def starts(length: int, side: int) -> list[int]:
        return sorted({min(i, length - side) for i in range(0, length, side)})

    return [(y, x, height, width) for y in starts(shape[0], height) for x in starts(shape[1], width)]


def slice_scores(probs, cells: list[tuple[int, int, int, int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per slice of probabilities (Z, Y, X; array-like, read `SLAB` slices at a time) and per cell
    (y, x, height, width; default: the whole slice): the mean entropy (bits) and the predicted foreground
    fraction (probability >= 0.5), each float64 (Z, cells)."""
    io.refuse_path(probs, "the probabilities")
    if len(probs.shape) != 3:
        raise MitosegError(f"the probabilities must be a volume (Z, Y, X), not an array of shape {probs.shape}")
    depth = probs.shape[0]
    cells = cells or boxes(tuple(probs.shape[1:]), None)
    uncertainty, foreground = np.zeros((depth, len(cells))), np.zeros((depth, len(cells)))
    half = 128 if np.dtype(probs.dtype) == np.uint8 else 0.5
    for z in range(0, depth, SLAB):
        p = np.asarray(probs[z:z + SLAB])
        e = entropy(p)
        for c, (y, x, h, w) in enumerate(cells):
            uncertainty[z:z + len(p), c] = e[:, y:y + h, x:x + w].mean(axis=(1, 2))
            foreground[z:z + len(p), c] = (p[:, y:y + h, x:x + w] >= half).mean(axis=(1, 2))
    return uncertainty, foreground


def pick(scores: np.ndarray, count: int, gap: int, annotated: list[int] | None = None,
         cells: list[tuple[int, int, int, int]] | None = None, around: int | None = None,
         taken: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Up to `count` (slice, cell) pairs of `scores` (Z, cells), highest score first, each more than `gap`
    slices from every earlier pick in the same cell, or in a cell overlapping it (`cells`: their (y, x, height,
    width), as `boxes` gives them), and more than `around` (default `gap`) from every `annotated` slice (fewer when
    the volume has no room left); never a cell `taken` marks (bool (Z, cells): annotated already)."""
    if cells is not None:
        y, x, h, w = (np.array(v) for v in zip(*cells, strict=True))
    blocked = np.zeros(scores.shape, bool) if taken is None else np.array(taken, bool)
    around = gap if around is None else around
    for z in annotated or []:
        blocked[max(0, z - around):z + around + 1] = True
    chosen: list[tuple[int, int]] = []
    for flat in np.argsort(-scores, axis=None, kind="stable"):
        if len(chosen) == count:
            break
        z, c = (int(i) for i in np.unravel_index(flat, scores.shape))
        if not blocked[z, c]:
            chosen.append((z, c))
            near = c if cells is None else (y < y[c] + h[c]) & (y + h > y[c]) & (x < x[c] + w[c]) & (x + w > x[c])
            blocked[max(0, z - gap):z + gap + 1, near] = True
    return chosen


def annotated_cells(labels, unlabeled: float, cells: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Float64 (Z, cells): the share of each cell's voxels (y, x, height, width) of each slice of `labels` (Z, Y, X;
    array-like, read `SLAB` slices at a time) that someone annotated (a value other than `unlabeled`)."""
    depth = labels.shape[0]
    share = np.zeros((depth, len(cells)))
    for z in range(0, depth, SLAB):
        done = np.asarray(labels[z:z + SLAB]) != unlabeled
        for c, (y, x, h, w) in enumerate(cells):
            share[z:z + len(done), c] = done[:, y:y + h, x:x + w].mean(axis=(1, 2))
    return share


def run_folder(run: str | Path) -> Path:
    """The run folder of `run`: itself, or a checkpoint file's folder (RUN/best.pt: RUN)."""
    return Path(run) if Path(run).is_dir() else Path(run).parent


def run_annotation(run: str | Path, image: str | Path) -> str | None:
    """The slices a run was trained on as annotated (`Config.annotated_slices`) when `image` is its training
    image, else None: the same content (`io.content_id`, recorded in the run's annotation.json), or for runs
    that recorded none (before 2026-12-07) the same file name (`train` records "IMAGE with labels LABELS",
    `io.file_name`) and slices inside the image. A checkpoint file: its run folder's."""

    folder = run_folder(run)
    path = folder / "config.json"
    config = Config.load(path) if path.is_file() else None
    if config is None or not config.annotated_slices:
        return None
    record = folder / "annotation.json"
    source = io.read_json(record).get("image", {}).get("source") if record.is_file() else None
    volume = io.open_volume(image)
    if source is not None and io.content_id(volume) != source:
        return None
    if source is None and not (config.data or "").startswith(f"{io.file_name(image)} with labels "):
        return None
    return config.annotated_slices if _fits(config.annotated_slices, volume.shape[0]) else None  # else another image


def _fits(slices: str, depth: int) -> bool:
    """Whether `slices` ("0,40-43") name slices of a volume `depth` slices deep."""
    from mitoseg import data

    try:
        data.parse_slices(slices, depth)
    except MitosegError:
        return False
    return True


def _say(notes: list[str]) -> None:
    for line in notes:
        print(line, file=sys.stderr)


@io.releasing
def suggest(run: str | Path, image: str | Path, count: int = 8, gap: int | None = None,
            annotated: str | None = None, tta: bool = True, table: str | Path | None = None,
            device: str = "auto", overwrite: bool = False, progress: bool = True,
            box: int | None = None, labels: str | Path | None = None, unlabeled: float | None = None) -> list[dict]:
    """The `mitoseg suggest` command: the `count` slices of `image` (Z, Y, X) to annotate next for the
    model of `run` (or, with `box`, `count` box x box pixel squares within slices), as dicts (rank, slice,
    y, x, height, width in pixels, uncertainty in bits, foreground fraction), most useful first.
    Slices count from 0.

    The model predicts the whole volume block by block (`predict.predict`, with TTA unless `tta` is
    False) into a temporary Zarr; `gap` keeps picks in one cell apart and from the `annotated` slices ("0,40-43"),
    which are never suggested (default: the run's own, `run_annotation`, when `image` is its training image;
    "none": none). Its default: depth // (4 * picks per grid cell), at least 1, and around the annotated slices
    depth // (4 * count) (boxes: as many as slices would be), made smaller (to 0) while it leaves no slice.
    `table`: the score of every slice (or box) as CSV. `labels` (a volume of `image`'s shape) with `unlabeled` (the
    value of voxels nobody annotated; default: the run's `Config.unlabeled`): cells more than half annotated are
    never suggested, and slices more than half annotated count as `annotated` (boxes annotated for a run trained
    with `--unlabeled`, which only the labels know).
    """
    from mitoseg import data, predict
    from mitoseg.train import checkpoint_path

    checks.check(count=count, gap=gap, box=box, unlabeled=unlabeled)
    checkpoint_path(run)  # a folder without a model: refused before any note
    if table:
        io.check_output(table, overwrite, "file", (image, run))
    shape = io.open_volume(image).shape
    depth, cells = shape[0], boxes(tuple(shape[1:]), box)
    folder = run_folder(run)
    config = Config.load(folder / "config.json") if (folder / "config.json").is_file() else None
    notes = []  # said after the prediction's own refusals (of the image, say), or before "no slice left"
    own = run_annotation(run, image) if annotated is None else None
    if own:  # its training image: those slices are annotated
        annotated = own
        notes.append(f"the run's annotated slices {annotated} of its training image {io.file_name(image)} are taken "
                     "as annotated (give --annotated-slices to say otherwise, `none` for none)")
    elif annotated is None and config is not None and config.annotated_slices and _fits(config.annotated_slices, depth):
        notes.append(f"note: {folder.name} learned from the annotated slices {config.annotated_slices} of "
                     f"{config.data or 'its training image'}; if that is this image, give --annotated-slices "
                     f"{config.annotated_slices} so they are not suggested")
    taken = None
    if labels is not None:
        unlabeled = unlabeled if unlabeled is not None else config.unlabeled if config is not None else None
        if unlabeled is None:
            raise MitosegError("--labels needs --unlabeled VALUE, the value of voxels nobody annotated (the run "
                               "records none: it learned from wholly annotated slices)")
        found = io.open_volume(labels)
        if tuple(found.shape) != tuple(shape):
            raise MitosegError(f"the labels {tuple(found.shape)} and the image {tuple(shape)} differ in shape")
        share = annotated_cells(found, unlabeled, [*cells, (0, 0, *shape[1:])]) > 0.5  # the last: whole slices
        taken, whole = share[:, :-1], [int(z) for z in np.flatnonzero(share[:, -1])]
    elif config is not None and config.unlabeled is not None:  # boxes, say: their places are in the labels alone
        notes.append(f"note: {folder.name} learned from labels with voxels nobody annotated (--unlabeled "
                     f"{config.unlabeled:g}): which were annotated (boxes, say) is known from the labels alone: give "
                     "--labels LABELS so they are not suggested again")
    none = annotated is None or str(annotated).strip().lower() == "none"
    done = [] if none else data.parse_slices(annotated, depth)
    if taken is not None:
        done = sorted(set(done) | set(whole))
    around = gap
    if gap is None:  # apart, and from the annotated slices as far as a slice each would be (not a box's place)
        gap, around = max(1, depth // (4 * -(-count // len(cells)))), max(1, depth // (4 * count))
        while around > 0 and not pick(np.zeros((depth, 1)), 1, gap, done, around=around):
            around -= 1  # room left for some: e.g. 4 asked of 32 slices, 11 annotated
    room = np.zeros((depth, len(cells)))
    if not pick(room, 1, gap, done, cells, around, taken):  # said before the prediction, not after it
        _say(notes)
        raise MitosegError(f"no slice left to suggest: all {depth} are annotated or within {around} of one (--gap)")
    with tempfile.TemporaryDirectory(prefix="mitoseg-suggest-") as tmp:
        probs = predict.predict(run, image, Path(tmp) / "probabilities.zarr", tta=tta, device=device,
                                progress=progress)
        _say(notes)
        uncertainty, foreground = slice_scores(io.open_volume(probs), cells)
    chosen = pick(uncertainty, count, gap, done, cells, around, taken)

    def row(z: int, c: int) -> dict:
        y, x, h, w = cells[c]
        return {"slice": z, "y": y, "x": x, "height": h, "width": w, "uncertainty_bits": float(uncertainty[z, c]),
                "foreground_fraction": float(foreground[z, c])}

    if table:
        rank = {zc: i + 1 for i, zc in enumerate(chosen)}
        with io.writing(table) as partial, open(partial, "w", newline="") as f:  # never a half-written table
            writer = csv.DictWriter(f, [*row(0, 0), "rank"], lineterminator="\n")
            writer.writeheader()
            for z in range(depth):
                for c in range(len(cells)):
                    writer.writerow({**row(z, c), "rank": rank.get((z, c), "")})
        io.release(table)
    return [{"rank": i + 1, **row(z, c)} for i, (z, c) in enumerate(chosen)]
