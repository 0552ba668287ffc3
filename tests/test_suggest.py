"""`mitoseg suggest`: slices ranked by the model's uncertainty, spread out, never the annotated ones."""

import csv

import numpy as np
import pytest
import tifffile

from mitoseg import cli, predict, suggest
from mitoseg import train as tr
from mitoseg.config import Config


def test_entropy_is_one_bit_at_half_and_zero_when_certain():
    e = suggest.entropy(np.array([0.5, 0.0, 1.0, 0.1]))
    np.testing.assert_allclose(e, [1.0, 0.0, 0.0, 0.469], atol=1e-3)
    np.testing.assert_allclose(suggest.entropy(np.array([128, 0], np.uint8)), [1.0, 0.0], atol=1e-3)


def test_pick_spreads_and_skips_annotated():
    scores = np.array([0.1, 0.9, 0.8, 0.7, 0.2, 0.6, 0.05, 0.5])
    assert suggest.pick(scores, 3, 0) == [1, 2, 3]
    assert suggest.pick(scores, 3, 1) == [1, 3, 5]  # 2 is next to 1, 4 next to 3
    assert suggest.pick(scores, 3, 1, annotated=[2]) == [5, 7, 0]  # 1 and 3 neighbour the annotated 2
    assert suggest.pick(scores, 8, 10) == [1]


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


def test_suggest_mistakes_are_one_line(tmp_path, ca1, capsys):
    run, image = ca1
    for args, message in [(["--count", "0"], "--count"), (["--annotated-slices", "0-11", "--gap", "1"],
                                                            "no slice left to suggest")]:
        assert cli.main(["--quiet", "suggest", str(run), str(image), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
