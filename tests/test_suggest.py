"""`mitoseg suggest`: slices ranked by the model's uncertainty, spread out, never the annotated ones."""

import csv
import re

import numpy as np
import pytest
import tifffile

from mitoseg import cli, io, predict, suggest
from mitoseg import train as tr
from mitoseg.config import Config
from mitoseg.errors import MitosegError


def test_entropy_is_one_bit_at_half_and_zero_when_certain():
    e = suggest.entropy(np.array([0.5, 0.0, 1.0, 0.1]))
    np.testing.assert_allclose(e, [1.0, 0.0, 0.0, 0.469], atol=1e-3)
    np.testing.assert_allclose(suggest.entropy(np.array([128, 0], np.uint8)), [1.0, 0.0], atol=1e-3)
    with pytest.raises(MitosegError, match="floats from 0 to 128, not probabilities"):  # before: 2e-5 bits
        suggest.entropy(np.array([128.0, 0.0]))


def test_pick_spreads_and_skips_annotated():
    scores = np.array([0.1, 0.9, 0.8, 0.7, 0.2, 0.6, 0.05, 0.5])[:, None]  # one cell: whole slices

    def slices(*args, **kwargs):
        return [z for z, _ in suggest.pick(scores, *args, **kwargs)]

    assert slices(3, 0) == [1, 2, 3]
    assert slices(3, 1) == [1, 3, 5]  # 2 is next to 1, 4 next to 3
    assert slices(3, 1, annotated=[2]) == [5, 7, 0]  # 1 and 3 neighbour the annotated 2
    assert slices(8, 10) == [1]


def test_pick_blocks_boxes_only_in_their_own_cell():
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.2, 0.3]])  # 3 slices, 2 cells
    assert suggest.pick(scores, 3, 1) == [(0, 0), (1, 1), (2, 0)]  # (1, 0) neighbours (0, 0) in its cell
    assert suggest.pick(scores, 3, 0, annotated=[1]) == [(0, 0), (2, 1), (2, 0)]
    # the last column of `boxes` is shifted inwards: overlapping squares are blocked together (before: both
    # picked in one slice, the overlap annotated twice); squares apart are not
    cells = suggest.boxes((64, 100), 64)  # x 0..63 and 36..99
    assert suggest.pick(np.array([[0.9, 0.8]]), 2, 0, cells=cells) == [(0, 0)]
    cells = suggest.boxes((64, 128), 64)  # x 0..63 and 64..127
    assert suggest.pick(np.array([[0.9, 0.8]]), 2, 0, cells=cells) == [(0, 0), (0, 1)]


def test_boxes_cover_the_slice_with_whole_squares():
    cells = suggest.boxes((100, 250), 64)
    assert {(h, w) for _, _, h, w in cells} == {(64, 64)}
    assert sorted({y for y, _, _, _ in cells}) == [0, 36] and sorted({x for _, x, _, _ in cells}) == [0, 64, 128, 186]
    covered = np.zeros((100, 250), int)
    for y, x, h, w in cells:
        covered[y:y + h, x:x + w] += 1
    assert covered.min() == 1
    assert suggest.boxes((100, 250), None) == [(0, 0, 100, 250)]
    assert suggest.boxes((40, 250), 64) == [(0, x, 40, 64) for x in (0, 64, 128, 186)]  # cut to the slice


@pytest.fixture(scope="module")
def ca1(tmp_path_factory, lucchi_crop):
    """A 2D run trained a few iterations on CA1 slices, and 12 slices of CA1 as a TIFF."""
    raw, mask = lucchi_crop
    tmp = tmp_path_factory.mktemp("suggest")
    cfg = Config(dims=2, patch_xy=64, patch_z=8, batch=1, epochs=2, iterations_per_epoch=3, warmup_iterations=1,
                 tile_xy=128, tile_z=8, overlap=0.25, val_fraction=0.25)
    tr.train(cfg, raw[:8], mask[:8], tmp / "run", progress=False)
    tifffile.imwrite(tmp / "image.tif", raw[8:20, :128, :128])
    return tmp / "run", tmp / "image.tif"


def test_suggest_ranks_by_the_models_own_uncertainty(tmp_path, ca1, capsys):
    run, image = ca1
    assert cli.main(["--quiet", "suggest", str(run), str(image), "--count", "3", "--gap", "2",
                     "--annotated-slices", "0", "--table", str(tmp_path / "slices.csv")]) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "slices.csv")))
    assert [int(r["slice"]) for r in rows] == list(range(12))
    picked = sorted((int(r["rank"]), int(r["slice"])) for r in rows if r["rank"])
    slices = [z for _, z in picked]
    assert len(slices) == 3 and 0 not in slices and all(z > 2 for z in slices)  # slice 0 and its neighbours
    assert all(abs(a - b) > 2 for i, a in enumerate(slices) for b in slices[i + 1:])
    assert f"--annotated-slices 0,{','.join(map(str, sorted(slices)))}" in out

    # the scores are the entropy of what `mitoseg predict` gives with TTA, slice by slice
    probs = predict.predict(run, image, tmp_path / "p.zarr", tta=True, progress=False)
    from mitoseg import io
    expect = suggest.entropy(io.open_volume(probs)[:]).mean(axis=(1, 2))
    np.testing.assert_allclose([float(r["uncertainty_bits"]) for r in rows], expect, rtol=1e-5)
    assert slices[0] == max((z for z in range(3, 12)), key=lambda z: expect[z])  # the most uncertain first

    # more than fit the gap: the ones that fit, and a line that says why not more
    assert cli.main(["--quiet", "suggest", str(run), str(image), "--count", "12", "--gap", "2"]) == 0
    out = capsys.readouterr().out
    n = len(re.findall(r"^\s+\d+\s+\d+\s+[\d.]+\s+[\d.]+%$", out, re.M))
    assert 1 < n < 12 and f"{n} of the 12 asked: no more lie apart" in out


def test_suggest_boxes_rank_squares_by_uncertainty(tmp_path, ca1, capsys):
    run, image = ca1
    assert cli.main(["--quiet", "suggest", str(run), str(image), "--count", "5", "--box", "64", "--gap", "1",
                     "--table", str(tmp_path / "boxes.csv")]) == 0
    out = capsys.readouterr().out
    assert "--unlabeled" in out
    rows = list(csv.DictReader(open(tmp_path / "boxes.csv")))
    assert len(rows) == 12 * 4  # 12 slices, 4 squares of 64 in 128 x 128
    probs = predict.predict(run, image, tmp_path / "p.zarr", tta=True, progress=False)
    from mitoseg import io
    e = suggest.entropy(io.open_volume(probs)[:])
    for r in rows:
        z, y, x = int(r["slice"]), int(r["y"]), int(r["x"])
        assert (int(r["height"]), int(r["width"])) == (64, 64)
        np.testing.assert_allclose(float(r["uncertainty_bits"]), e[z, y:y + 64, x:x + 64].mean(), rtol=1e-5)
    picked = sorted((int(r["rank"]), int(r["slice"]), int(r["y"]), int(r["x"]), float(r["uncertainty_bits"]))
                    for r in rows if r["rank"])
    assert len(picked) == 5
    assert picked[0][4] == max(float(r["uncertainty_bits"]) for r in rows)  # the most uncertain box first
    for i, a in enumerate(picked):  # two picks at one place lie more than 1 slice apart
        assert all(abs(a[1] - b[1]) > 1 for b in picked[i + 1:] if b[2:4] == a[2:4])


def test_the_default_gap_leaves_room_beside_annotated_slices(ca1, capsys, tmp_path):
    run, image = ca1  # 12 slices
    # 1 asked: 3 slices apart by default, which around 0,3,6,9 would leave none (before: refused); 1 leaves slice 11
    rows = suggest.suggest(run, image, count=1, annotated="0,3,6,9", tta=False, progress=False)
    assert [r["slice"] for r in rows] == [11]
    # boxes: one per place, 3 slices apart, but the annotated slices' neighbourhood as for 4 slices (1), not 3
    # (before: slices 0-11 all blocked, refused; at a larger depth all boxes in the few slices left)
    rows = suggest.suggest(run, image, count=4, box=64, annotated="0-2,9-11", tta=False, progress=False)
    assert len(rows) == 4 and {r["slice"] for r in rows} <= {4, 5, 6, 7}
    with pytest.raises(MitosegError, match=r"all 12 are annotated or within 2 of one \(--gap\)"):
        suggest.suggest(run, image, count=1, gap=2, annotated="0,3,6,9", tta=False, progress=False)
    import json
    import shutil

    boxed = tmp_path / "boxed"  # a run of box annotations: which boxes were annotated is in its labels alone
    shutil.copytree(run, boxed)
    (boxed / "config.json").write_text(json.dumps({**json.loads((run / "config.json").read_text()), "unlabeled": 7}))
    capsys.readouterr()
    suggest.suggest(boxed / "best.pt", image, count=2, box=64, tta=False, progress=False)
    assert "note: boxed learned from labels with voxels nobody annotated (--unlabeled 7): which were annotated " \
           "(boxes, say) is known from the labels alone: give --labels LABELS" in capsys.readouterr().err
    # given them, boxes and slices more than half annotated are not suggested (before: suggested again)
    labels = np.full((12, 128, 128), 7, np.uint8)
    labels[5] = 0  # a whole slice: neither it nor its neighbours
    labels[:, :64, :64] = 0  # one box in every slice
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    assert cli.main(["--quiet", "suggest", str(boxed), str(image), "--count", "40", "--box", "64", "--gap", "0",
                     "--labels", str(tmp_path / "labels.tif"), "--table", str(tmp_path / "b.csv")]) == 0
    out = capsys.readouterr().out
    picked = [r for r in csv.DictReader(open(tmp_path / "b.csv", newline="")) if r["rank"]]
    assert picked and not [r for r in picked if (r["y"], r["x"]) == ("0", "0") or r["slice"] == "5"]
    assert len(picked) == 11 * 3  # 12 slices but 5, each 3 boxes of 4 (slices 4 and 6 too, at --gap 0)
    assert b"\r" not in (tmp_path / "b.csv").read_bytes()  # before: csv's CRLF
    assert "slices count from 0: Fiji's slice 1 is 0" in out
    with pytest.raises(MitosegError, match="--labels needs --unlabeled VALUE"):
        suggest.suggest(run, image, count=2, labels=tmp_path / "labels.tif", tta=False, progress=False)


def test_suggest_mistakes_are_one_line(tmp_path, ca1, capsys):
    run, image = ca1
    for args, message in [(["--count", "0"], "--count"), (["--box", "8"], "--box"),
                          (["--annotated-slices", "0-11", "--gap", "1"], "no slice left to suggest")]:
        assert cli.main(["--quiet", "suggest", str(run), str(image), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    import json

    bare = tmp_path / "bare"  # a run's settings without its model: one line (before: a note on its slices first)
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({**json.loads((run / "config.json").read_text()),
                                                  "annotated_slices": "0,5", "data": "image.tif with labels l.tif"}))
    assert cli.main(["--quiet", "suggest", str(bare), str(image)]) == 2
    assert capsys.readouterr().err == f"mitoseg: error: {bare} holds no trained model (best.pt or last.pt)\n"
    probs = predict.predict(run, image, tmp_path / "probs.zarr", progress=False)
    with pytest.raises(MitosegError, match="the probabilities must be an array, not the path"):
        suggest.slice_scores(str(probs))  # before: an AttributeError
    with pytest.raises(MitosegError, match=r"must be a volume \(Z, Y, X\), not an array of shape"):
        suggest.slice_scores(io.open_volume(probs)[0])  # before: a ValueError of unpacking
    assert suggest.slice_scores(io.open_volume(probs))[0].shape == (io.open_volume(probs).shape[0], 1)


def test_suggest_takes_the_runs_own_annotated_slices_on_its_training_image(tmp_path, ca1, lucchi_crop, capsys):
    """A run trained on a few annotated slices of this image (by content): they are taken as annotated, never
    suggested nor neighboured, and the advice keeps them (before: a note, then advice that dropped them); of
    another image, even of that name, one note names them; given, nothing is said."""
    import json
    import shutil

    from mitoseg import io

    run, image = ca1
    few = tmp_path / "few"
    shutil.copytree(run, few)
    saved = json.loads((few / "config.json").read_text())
    (few / "config.json").write_text(json.dumps({**saved, "annotated_slices": "0,5",
                                                 "data": "image.tif with labels image_gt.tif"}))
    record = json.loads((few / "annotation.json").read_text())
    trained = lucchi_crop[0][:8]  # the `ca1` run's training image
    assert record["image"]["source"] == io.content_id(trained) and record["image"]["shape"] == list(trained.shape)
    record["image"] = {"shape": [12, 128, 128], "source": io.content_id(io.open_volume(image))}  # trained on it
    (few / "annotation.json").write_text(json.dumps(record))
    assert cli.main(["--quiet", "suggest", str(few), str(image), "--count", "2", "--gap", "1", "--no-tta"]) == 0
    told = capsys.readouterr()
    assert "the run's annotated slices 0,5 of its training image image.tif are taken as annotated" in told.err
    picked = [int(z) for z in re.search(r"--annotated-slices 0,5,([\d,]+)", told.out).group(1).split(",")]
    assert len(picked) == 2 and not {4, 5, 6, 0, 1} & set(picked)
    assert suggest.run_annotation(few / "best.pt", image) == "0,5"  # a checkpoint: its run's (before: none)
    assert cli.main(["--quiet", "suggest", str(few), str(image), "--count", "2", "--gap", "1", "--no-tta",
                     "--annotated-slices", "none"]) == 0  # said to be none (before: "" was refused)
    told = capsys.readouterr()
    assert "taken as annotated" not in told.err and re.search(r"--annotated-slices \d+,\d+$", told.out.strip())
    other = tmp_path / "other" / "image.tif"  # another image of that name (before: its slices were taken)
    other.parent.mkdir()
    tifffile.imwrite(other, tifffile.imread(image)[:, ::-1])
    assert len(suggest.suggest(few, other, count=2, tta=False, progress=False)) == 2
    assert ("note: few learned from the annotated slices 0,5 of image.tif with labels image_gt.tif; if that is this "
            "image, give --annotated-slices 0,5") in capsys.readouterr().err
    suggest.suggest(few, other, count=2, tta=False, progress=False, annotated="0,5")
    assert "note:" not in capsys.readouterr().err


def test_a_run_without_a_recorded_image_matches_by_name_and_slices(tmp_path, ca1, capsys):
    """Runs trained before the image's content was recorded: the file name, and only slices inside the image
    (before: "annotated slices '12-15' outside the volume's slices", of an option nobody gave); slices outside
    it are not advised in a note either."""
    import json
    import shutil

    run, image = ca1
    old = tmp_path / "old"
    shutil.copytree(run, old)
    saved = json.loads((old / "config.json").read_text())
    record = json.loads((old / "annotation.json").read_text())
    del record["image"]
    (old / "annotation.json").write_text(json.dumps(record))
    for slices, taken in (("0,5", "0,5"), ("0-2,12-15", None)):
        (old / "config.json").write_text(json.dumps({**saved, "annotated_slices": slices,
                                                     "data": "image.tif with labels image_gt.tif"}))
        assert suggest.run_annotation(old, image) == taken
    assert len(suggest.suggest(old, image, count=2, tta=False, progress=False)) == 2
    assert "note:" not in capsys.readouterr().err  # slices it does not hold (before: advised as --annotated-slices)
