"""Every command end to end on a small crop of real data, and every user mistake as one line, exit 2."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import tifffile
import zarr
from conftest import dies_on_call

from mitoseg import io, metrics, postprocess, predict
from mitoseg.cli import main, parser
from mitoseg.config import Config
from mitoseg.errors import MitosegError


@pytest.fixture(scope="module")
def files(tmp_path_factory, droso):
    raw, mask = droso
    d = tmp_path_factory.mktemp("cli")
    tifffile.imwrite(d / "train.tif", raw[:8, 32:224, :192])  # mitochondria on both sides of the validation cut
    tifffile.imwrite(d / "train_gt.tif", mask[:8, 32:224, :192] * 255)
    tifffile.imwrite(d / "test.tif", raw[:8, 704:832, 384:512])
    tifffile.imwrite(d / "test_gt.tif", mask[:8, 704:832, 384:512] * 255)
    return d


TRAIN = ["--patch-xy", "64", "--patch-z", "8", "--batch", "1", "--epochs", "1", "--iterations-per-epoch", "2"]


@pytest.fixture(scope="module")
def runs(files):
    for dims in (2, 3):
        assert main(["--quiet", "train", str(files / "train.tif"), str(files / "train_gt.tif"), "--dims", str(dims),
                     "--out", str(files / f"run{dims}"), "--voxel-size", "5", "5", "5", *TRAIN]) == 0
    return files


@pytest.fixture(scope="module")
def probs2(runs):
    """The 2D run's probabilities of the test crop, for the tests that only read them."""
    out = runs / "probs2.zarr"
    assert main(["--quiet", "predict", str(runs / "test.tif"), "--model", str(runs / "run2"), "--out", str(out),
                 "--tile-xy", "64", "--tile-z", "8"]) == 0
    return out


def test_predict_with_two_models_writes_the_mean_of_their_probabilities(runs, tmp_path, monkeypatch, capsys):
    """`--model` twice (a 2D and a 3D run): the rounded mean of the two models' own predictions, the mask
    where it is >= 0.5, the members' scratch folder removed, the voxel size kept; a stopped run resumes."""
    d, opts = runs, ["--tile-xy", "64", "--tile-z", "8", "--block", "4", "64", "64"]
    test, runs2, runs3 = str(d / "test.tif"), str(d / "run2"), str(d / "run3")
    for dims, run in ((2, runs2), (3, runs3)):
        assert main(["--quiet", "predict", test, "--model", run, "--out", str(tmp_path / f"{dims}.zarr"), *opts]) == 0
    out, mask = tmp_path / "mean.zarr", tmp_path / "mean_mask.zarr"
    assert main(["--quiet", "predict", test, "--model", runs2, "--model", runs3, "--out", str(out), "--mask", str(mask),
                 *opts]) == 0
    two, three = (io.open_volume(tmp_path / f"{dims}.zarr")[:].astype(int) for dims in (2, 3))
    mean = io.open_volume(out)
    np.testing.assert_array_equal(mean[:], (two + three + 1) // 2)
    np.testing.assert_array_equal(io.open_volume(mask)[:], (mean[:] >= 128).astype(np.uint8))
    assert mean.attrs["model"] == ["run2", "run3"] and mean.attrs["kind"] == "probability"
    assert mean.attrs["voxel_size"] == io.open_volume(tmp_path / "2.zarr").attrs["voxel_size"]  # for label, OME-Zarr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2.zarr", "3.zarr", "mean.zarr", "mean_mask.zarr"]

    # stopped after the 2D model's prediction: --resume predicts only the 3D model, to the same mean
    members = tmp_path / "again.zarr.partial.members"
    members.mkdir()
    shutil.copytree(tmp_path / "2.zarr", members / "0.zarr")
    real, called = predict.open_outputs, []
    monkeypatch.setattr(predict, "open_outputs", lambda shape, out, *a, **k: called.append(Path(out).name) or real(
        shape, out, *a, **k))
    capsys.readouterr()
    assert main(["predict", test, "--model", runs2, "--model", runs3, "--out", str(tmp_path / "again.zarr"),
                 "--resume", *opts]) == 0
    assert called == ["1.zarr"] and not members.exists()  # the 3D model's prediction only
    err = capsys.readouterr().err  # each member's bar under the model it predicts with
    assert f"model 1 of 2: {runs2}\n" in err and f"model 2 of 2: {runs3}\n" in err, err
    np.testing.assert_array_equal(io.open_volume(tmp_path / "again.zarr")[:], mean[:])
    # a finished member of another model is refused (before: kept, the mean labelled with the models asked for)
    other = tmp_path / "again2.zarr.partial.members"
    other.mkdir()
    shutil.copytree(tmp_path / "3.zarr", other / "0.zarr")
    capsys.readouterr()
    assert main(["--quiet", "predict", test, "--model", runs2, "--model", runs3, "--out", str(tmp_path / "again2.zarr"),
                 "--resume", *opts]) == 2
    err = capsys.readouterr().err
    assert "0.zarr was written with other settings (" in err, err

    # --planes 3 goes to the 2D member only (the 3D model sees every axis)
    monkeypatch.undo()
    assert main(["--quiet", "predict", test, "--model", runs2, "--model", runs3, "--out", str(tmp_path / "p.zarr"),
                 "--planes", "3", *opts]) == 0
    settings = io.open_volume(tmp_path / "p.zarr").attrs["settings"]["members"]
    assert [m["planes"] for m in settings] == [3, 1]

    # the image states no voxel size: the mean records the one a run stated, whichever comes first (before: only
    # the first's, so none where a 2D run that stated none came first); runs that state two are refused
    def restated(run: str, name: str, **changes) -> str:
        import torch

        shutil.copytree(run, tmp_path / name)
        for ckpt in (tmp_path / name).glob("*.pt"):
            state = torch.load(ckpt, weights_only=False)
            state["config"].update(changes)
            torch.save(state, ckpt)
        return str(tmp_path / name)

    unstated = restated(runs2, "run2u", voxel_size_stated=False)
    coarser = restated(runs3, "run3c", voxel_size=[10.0] * 3)
    assert main(["predict", test, "--model", unstated, "--model", runs3, "--out", str(tmp_path / "u.zarr"), *opts]) == 0
    assert io.open_volume(tmp_path / "u.zarr").attrs["voxel_size"] == [5.0, 5.0, 5.0]
    assert "voxel size 5 x 5 x 5 nm, the run's" in capsys.readouterr().out
    assert main(["--quiet", "predict", test, "--model", runs2, "--model", coarser, "--out", str(tmp_path / "c.zarr"),
                 *opts]) == 2
    assert "the models were trained on voxels of 5 x 5 x 5 nm and 10 x 10 x 10 nm and test.tif states none: give " \
        "--voxel-size" in capsys.readouterr().err and not (tmp_path / "c.zarr.partial.members").exists()


@pytest.mark.parametrize("dims", [2, 3])
def test_train_predict_label_evaluate(runs, dims, capsys):
    d = runs
    assert (d / f"run{dims}" / "best.pt").exists()
    probs, mask = d / f"p{dims}.zarr", d / f"m{dims}.zarr"
    assert main(["--quiet", "predict", str(d / "test.tif"), "--model", str(d / f"run{dims}"), "--out", str(probs),
                 "--mask", str(mask), "--tile-xy", "64", "--tile-z", "8", "--block", "4", "64", "64",
                 *(["--tta"] if dims == 2 else [])]) == 0
    p = io.open_volume(probs)
    assert p.shape == (8, 128, 128) and p.dtype == np.uint8
    chosen = postprocess.read(d / f"run{dims}")  # `train` chose it on the validation split
    applied = postprocess.PostProcessing(chosen.threshold, z_sigma=chosen.z_sigma)
    np.testing.assert_array_equal(io.open_volume(mask)[:], postprocess.apply(p[:], applied))
    assert p.attrs["postprocessing"] == io.open_volume(mask).attrs["postprocessing"] == chosen.as_dict()
    assert p.attrs["kind"] == "probability" and p.attrs["tta"] is (dims == 2)
    assert p.attrs.get("tta_set") == (predict.TTA_SET if dims == 2 else None)  # which transforms were averaged

    table = d / f"objects{dims}.csv"
    assert "the run's post-processing chosen on validation" in capsys.readouterr().out
    assert main(["--quiet", "label", str(mask), "--out", str(d / f"l{dims}.zarr")]) == 0
    np.testing.assert_array_equal(io.open_volume(d / f"l{dims}.zarr")[:] > 0, io.open_volume(mask)[:] > 0)
    assert main(["--quiet", "label", str(d / "test_gt.tif"), "--out", str(d / f"gt{dims}.zarr"), "--table", str(table),
                 "--min-size", "10", "--voxel-size", "50", "4.6", "4.6", "--block", "3", "50", "70"]) == 0
    labels = io.open_volume(d / f"gt{dims}.zarr")[:]
    objects, _ = ndi.label(tifffile.imread(d / "test_gt.tif") > 0, np.ones((3, 3, 3)))
    assert labels.max() == (np.bincount(objects.ravel())[1:] >= 10).sum() >= 3  # 26-connected, >= 10 voxels
    rows = list(csv.DictReader(open(table)))
    assert len(rows) == labels.max()
    sizes = np.bincount(labels.ravel())[1:]
    assert [int(r["voxels"]) for r in rows] == sizes.tolist() and (sizes >= 10).all()
    assert float(rows[0]["volume_um3"]) == pytest.approx(sizes[0] * 50 * 4.6 * 4.6 / 1e9, rel=1e-4)

    capsys.readouterr()
    out_json = d / f"scores{dims}.json"
    assert main(["--quiet", "evaluate", str(probs), str(d / "test_gt.tif"), "--json", str(out_json)]) == 0
    got = json.loads(out_json.read_text())
    truth = tifffile.imread(d / "test_gt.tif") > 0
    expect = metrics.scores(metrics.confusion(p[:] >= 128, truth))
    assert got == pytest.approx(expect)
    assert "jaccard" in capsys.readouterr().out

    # --places: where the errors lie, at the voxel size the probabilities state (the training run's)
    places_json = d / f"places{dims}.json"
    assert main(["--quiet", "evaluate", str(probs), str(d / "test_gt.tif"), "--places",
                 "--json", str(places_json)]) == 0
    voxel = io.voxel_size(probs)
    assert voxel == pytest.approx(Config.load(d / f"run{dims}" / "config.json").voxel_size)
    where = metrics.error_places(p[:] >= 128, truth, voxel)
    assert json.loads(places_json.read_text())["places"] == {**where, "voxel_size": list(voxel)}
    wrong = where["fp"] + where["fn"]
    said = capsys.readouterr().out
    assert f"\nwhere the {wrong:,} wrong voxels lie: {where['fp_whole'] + where['fn_whole']:,} (" in said
    assert f"within {voxel[-1]:g} nm, " in said  # in-plane pixels, in nm (before: "within 1 voxel" of any axis)
    assert main(["--quiet", "evaluate", str(d / "test_gt.tif"), str(d / "test_gt.tif"), "--places"]) == 0
    said = capsys.readouterr().out.splitlines()[-1]
    assert said.startswith("where the 0 wrong voxels lie: 0 (0%) in whole objects") and "taken as cubes" in said


def test_predict_mask_applies_the_runs_z_smoothing_across_blocks(runs, capsys, tmp_path):
    """A run whose chosen post-processing blurs along Z: the mask, predicted in blocks 2 slices deep (the
    blur reaches 8), equals the chosen smoothing and threshold applied to the whole stored volume; the user
    is told what is left to `label`. --threshold overrides it: the plain threshold."""
    run = tmp_path / "run"
    shutil.copytree(runs / "run2", run)
    opts = [str(runs / "test.tif"), "--model", str(run), "--tile-xy", "64", "--block", "2", "64", "64"]
    assert main(["--quiet", "predict", *opts, "--out", str(tmp_path / "first.zarr")]) == 0
    t = round((float(np.median(io.open_volume(tmp_path / "first.zarr")[:])) + 0.5) / 255, 4)  # half the voxels
    pp = postprocess.PostProcessing(t, 50, True, 2.0)
    postprocess.save(run, pp, [], "raw")
    capsys.readouterr()
    assert main(["predict", *opts, "--out", str(tmp_path / "p.zarr"), "--mask", str(tmp_path / "m.zarr")]) == 0
    probs, mask = io.open_volume(tmp_path / "p.zarr"), io.open_volume(tmp_path / "m.zarr")
    expect = postprocess.apply(probs[:], postprocess.PostProcessing(t, z_sigma=2.0))
    assert expect.any() and not (expect == (probs[:] >= t * 255)).all()  # the smoothing changed the mask
    np.testing.assert_array_equal(mask[:], expect)
    assert (mask.attrs["threshold"], mask.attrs["z_sigma"], mask.attrs["postprocessing"]) == (t, 2.0, pp.as_dict())
    said = capsys.readouterr().out
    assert f"blurred along Z (2 slices), then probability >= {t:g}, the run's post-processing" in said
    assert f"`mitoseg label {tmp_path / 'm.zarr'}` then removes objects under 50 voxels" in said
    assert "hole filling is not applied" in said

    # `label` takes the rest of the choice from the mask, and all of it but the hole filling from the probabilities
    expect = postprocess.apply(probs[:], postprocess.PostProcessing(t, 50, False, 2.0))
    assert expect.sum() < mask[:].sum()  # the minimum size removed objects
    for name, source in (("lm", "m.zarr"), ("lp", "p.zarr")):
        assert main(["label", str(tmp_path / source), "--out", str(tmp_path / f"{name}.zarr")]) == 0
        np.testing.assert_array_equal(io.open_volume(tmp_path / f"{name}.zarr")[:] > 0, expect > 0)
    said = capsys.readouterr().out.splitlines()
    assert said[1] == ("the run's post-processing chosen on validation: objects under 50 voxels removed (its hole "
                       "filling is not applied); --threshold / --min-size override it")
    assert said[3].startswith(f"the run's post-processing chosen on validation: probabilities blurred along Z (2 "
                              f"slices), probability >= {t:g}, objects under 50 voxels removed (its hole filling")

    assert main(["predict", *opts, "--out", str(tmp_path / "q.zarr"), "--mask", str(tmp_path / "n.zarr"),
                 "--threshold", "0.5"]) == 0
    np.testing.assert_array_equal(io.open_volume(tmp_path / "n.zarr")[:], probs[:] >= 128)
    assert "mask: probability >= 0.5 (--threshold, applied alone: not the run's post-processing chosen" in \
        capsys.readouterr().out  # before: its choice listed as if applied

    # interrupted while the mask was written: --resume keeps the finished probabilities when they were predicted
    # alike, and refuses them when not (they were kept whatever their image, model or TTA)
    created = io.open_volume(tmp_path / "p.zarr").attrs["created"]
    mask_opts = [*opts, "--out", str(tmp_path / "p.zarr"), "--resume", "--mask"]
    assert main(["--quiet", "predict", *mask_opts, str(tmp_path / "m2.zarr")]) == 0
    assert io.open_volume(tmp_path / "p.zarr").attrs["created"] == created
    np.testing.assert_array_equal(io.open_volume(tmp_path / "m2.zarr")[:], mask[:])
    capsys.readouterr()
    assert main(["--quiet", "predict", *mask_opts, str(tmp_path / "m3.zarr"), "--tta"]) == 2
    assert "p.zarr was written with other settings (tta False then, True now" in capsys.readouterr().err
    assert not (tmp_path / "m3.zarr").exists()

    # `evaluate` scores probabilities at 0.5 and says what the run chose instead; not when told a threshold
    truth = str(runs / "test_gt.tif")
    assert main(["evaluate", str(tmp_path / "p.zarr"), truth]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"scored at probability 0.5; the run chose Z blur 2 slices, threshold {t:g} on validation: score the mask "
        "of `mitoseg predict --mask` or `mitoseg label`'s output for its choice")
    for args in ([str(tmp_path / "p.zarr"), truth, "--threshold", "0.5"], [str(tmp_path / "m.zarr"), truth],
                 [truth, truth]):  # a TIFF, no run's choice
        assert main(["evaluate", *args]) == 0
        assert "scored at probability 0.5" not in capsys.readouterr().out


def test_label_probabilities_without_a_runs_choice_use_half_threshold(runs):
    """A checkpoint file carries no post-processing chosen on validation: its probabilities are labelled at 0.5."""
    d = runs
    probs = d / "pp.zarr"
    main(["--quiet", "predict", str(d / "test.tif"), "--model", str(d / "run2" / "best.pt"), "--out", str(probs)])
    assert "postprocessing" not in io.open_volume(probs).attrs
    assert list(io.open_volume(probs).attrs["tile"]) == [1, 128, 128]  # 2D default: whole slices
    main(["--quiet", "label", str(probs), "--out", str(d / "lp.zarr"), "--connectivity", "6"])
    labels = io.open_volume(d / "lp.zarr")[:]
    np.testing.assert_array_equal(labels > 0, io.open_volume(probs)[:] >= 128)


def test_outputs_that_would_replace_an_input_or_land_in_a_file_are_refused_before_the_work(runs, probs2, capsys,
                                                                                           tmp_path):
    """Outputs named like an input, like another format, inside a file or where a folder is, and a model that is
    an image: one line each, before any work, and nothing is written (the image is left as it was)."""
    d = runs
    t, g, test, probs = str(d / "train.tif"), str(d / "train_gt.tif"), str(d / "test.tif"), str(probs2)
    before = tifffile.imread(test)
    predict = ["predict", test, "--model", str(d / "run2")]
    bad([*predict, "--out", test, "--overwrite"], capsys, "is an input of this command")
    bad([*predict, "--out", str(tmp_path / "p.tif")], capsys, "mitoseg writes Zarr; name the output *.zarr")
    bad([*predict, "--out", str(tmp_path / "s.zarr"), "--mask", str(tmp_path / "s.zarr")], capsys,
        "the probabilities and the mask are both")
    bad([*predict, "--out", str(d / "test.tif" / "p.zarr")], capsys, "is a file, not a folder")
    bad(["predict", test, "--model", t, "--out", str(tmp_path / "p.zarr")], capsys, "is not a mitoseg checkpoint")
    bad(["train", t, g, "--out", test, "--overwrite", *TRAIN], capsys, "is a file; --out names the run's folder")
    bad(["label", probs, "--out", probs, "--overwrite"], capsys, "is an input of this command")
    (tmp_path / "folder").mkdir()
    bad(["label", probs, "--out", str(tmp_path / "l.zarr"), "--table", str(tmp_path / "folder"), "--overwrite"],
        capsys, "is a folder; give a file name")
    bad(["label", probs, "--out", str(tmp_path / "l.zarr"), "--table", str(tmp_path / "t.xlsx")], capsys,
        "t.xlsx: the table is CSV (comma-separated text, which Excel opens): name it t.csv")  # before: CSV as .xlsx
    assert not (tmp_path / "l.zarr").exists() and not list(tmp_path.glob(".*.lock"))
    bad(["evaluate", probs, str(d / "test_gt.tif"), "--json", str(tmp_path / "folder"), "--overwrite"], capsys,
        "is a folder; give a file name")
    bad(["compare", "--out", str(tmp_path / "c"), "--data", str(tmp_path / "nope"), "--quick"], capsys,
        "no such folder")
    bad(["compare", "--out", str(tmp_path / "c"), "--data", str(tmp_path / "folder"), "--quick"], capsys,
        "holds neither the CA1 volumes")
    bad(["train", t, g, "--out", str(d / "run2"), "--resume", *TRAIN[:-1], "3"], capsys,
        "--resume continues")  # its saved run: 2 iterations per epoch
    run = sorted(p.name for p in (d / "run2").iterdir())  # a model is an input: --overwrite never deletes it
    bad([*predict, "--out", str(d / "run2"), "--overwrite"], capsys, "run2 is an input of this command")
    bad(["predict", test, "--model", str(d / "run2" / "best.pt"), "--out", str(tmp_path / "p.zarr"), "--mask",
         str(d / "run2"), "--overwrite"], capsys, "run2 holds best.pt, an input of this command")
    bad(["train", t, g, "--init", str(d / "run2"), "--out", str(d / "run2"), "--overwrite", *TRAIN], capsys,
        "run2 is an input of this command")
    bad(["train", str(d / "run2" / "config.json"), g, "--out", str(d / "run2"), "--overwrite", *TRAIN], capsys,
        "run2 holds config.json, an input of this command")  # the image: not deleted with an old run
    bad(["suggest", str(d / "run2"), test, "--table", str(d / "run2"), "--overwrite"], capsys,
        "run2 is an input of this command")
    bad(["suggest", str(d / "run2"), test, "--table", str(d / "run2" / "best.pt"), "--overwrite"], capsys,
        "best.pt is a file of the run run2, an input of this command")
    bad([*predict, "--out", str(d / "run2" / "config.json"), "--overwrite"], capsys, "is a file of the run run2")
    assert sorted(p.name for p in (d / "run2").iterdir()) == run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"] and not any((tmp_path / "folder").iterdir())
    np.testing.assert_array_equal(tifffile.imread(test), before)
    # tables and scores in folders that do not exist yet
    assert main(["--quiet", "label", probs, "--out", str(tmp_path / "l.zarr"), "--table",
                 str(tmp_path / "new" / "t.csv")]) == 0
    assert main(["--quiet", "evaluate", probs, str(d / "test_gt.tif"), "--json", str(tmp_path / "new" / "s.json")]) == 0
    assert (tmp_path / "new" / "t.csv").is_file() and "jaccard" in json.loads((tmp_path / "new" / "s.json").read_text())


def test_volumes_of_more_than_two_values_need_a_threshold_to_be_labelled_or_scored(runs, capsys, tmp_path):
    """Another tool's probabilities, an anti-aliased mask or the image itself given as the prediction or the
    volume to label: refused without --threshold (read as > 0 they were all foreground), a raw value with it."""
    d = runs
    truth = (tifffile.imread(d / "test_gt.tif") > 0).astype(np.float32)
    soft = ndi.gaussian_filter(truth, (0, 2, 2))
    tifffile.imwrite(tmp_path / "soft.tif", soft)  # float probabilities in [0, 1]
    tifffile.imwrite(tmp_path / "soft8.tif", np.rint(soft * 255).astype(np.uint8))  # an anti-aliased 0..255 mask
    for name in ("soft.tif", "soft8.tif"):
        bad(["evaluate", str(tmp_path / name), str(d / "test_gt.tif")], capsys,
            "more than two values (0, ")
        bad(["label", str(tmp_path / name), "--out", str(tmp_path / "l.zarr")], capsys, "no mitoseg probability map")
    bad(["evaluate", str(d / "test.tif"), str(d / "test_gt.tif")], capsys, "give --threshold")
    assert not list(tmp_path.glob("*.zarr*"))
    for name, threshold in (("soft.tif", 0.5), ("soft8.tif", 128)):
        capsys.readouterr()
        assert main(["evaluate", str(tmp_path / name), str(d / "test_gt.tif"), "--threshold", str(threshold)]) == 0
        jaccard = float(re.search(r"jaccard: ([\d.]+)", capsys.readouterr().out).group(1))
        expected = metrics.scores(metrics.confusion(soft >= 0.5 if name == "soft.tif" else
                                                    np.rint(soft * 255) >= 128, truth > 0))["jaccard"]
        assert jaccard == pytest.approx(expected, abs=1e-4) and 0.5 < jaccard < 1
        assert main(["--quiet", "label", str(tmp_path / name), "--out", str(tmp_path / f"{name}.zarr"),
                     "--threshold", str(threshold)]) == 0
        assert io.open_volume(tmp_path / f"{name}.zarr")[:].max() >= 1


def test_train_resume_and_help(runs, capsys, tmp_path):
    d = runs
    assert main(["--quiet", "train", str(d / "train.tif"), str(d / "train_gt.tif"), "--out", str(d / "run2"),
                 "--resume", *TRAIN]) == 0  # already at its 1 epoch: nothing to do, still succeeds
    # a 3D run resumes without --dims again, and --fp32 (where it trains) applies
    shutil.copytree(d / "run3", tmp_path / "run3")
    assert main(["--quiet", "train", str(d / "train.tif"), str(d / "train_gt.tif"), "--out", str(tmp_path / "run3"),
                 "--resume", "--fp32"]) == 0
    assert Config.load(tmp_path / "run3" / "config.json").amp is False
    assert Config.load(tmp_path / "run3" / "config.json").preset == "full"  # the run's folder says how it was made
    bad(["train", str(d / "train.tif"), str(d / "train_gt.tif"), "--out", str(tmp_path / "run3"), "--resume",
         "--quick"], capsys, "these differ: preset (saved full, given quick)")  # before: accepted, not applied
    # --epochs N with a preset of minutes: N epochs (as compare --epochs; before: cut at the quick preset's 3 minutes,
    # silently); the summary printed as summary.json holds it
    capsys.readouterr()
    assert main(["--quiet", "train", str(d / "train.tif"), str(d / "train_gt.tif"), "--out", str(tmp_path / "q"),
                 "--quick", *TRAIN]) == 0
    assert Config.load(tmp_path / "q" / "config.json").minutes is None
    printed = capsys.readouterr().out.split("\n", 1)[1]  # after the voxel size line
    assert json.loads(printed) == json.loads((tmp_path / "q" / "summary.json").read_text())
    # a 3D run on a stack thinner than the preset's patch: the deepest patch that fits, as compare picks it (before:
    # refused with every preset)
    thin = [a for a in TRAIN if a not in ("--patch-z", "8")]
    assert main(["--quiet", "train", str(d / "train.tif"), str(d / "train_gt.tif"), "--out", str(tmp_path / "t"),
                 "--dims", "3", "--quick", *thin]) == 0
    assert Config.load(tmp_path / "t" / "config.json").patch_z == 8
    assert "patch depth 8 slices: the image holds 8 (the preset's 32 would not fit)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "compare" in capsys.readouterr().out


def test_an_interrupted_predict_or_label_names_what_resume_goes_on_from(tmp_path, capsys, monkeypatch):
    """After Ctrl-C: the mask's unfinished blocks (its probabilities finished), a mean's finished members, labels
    whose table was not written; before, "nothing was written under the output's name" for each of them."""
    import argparse

    from mitoseg.cli import _after_interrupt

    def said(command, **given):
        return _after_interrupt(argparse.Namespace(command=command, **{"overwrite": False, **given}))

    p, m, table = tmp_path / "p.zarr", tmp_path / "m.zarr", tmp_path / "t.csv"
    assert said("predict", out=p, mask=m) == "nothing was left half-written (no --resume needed)"
    p.mkdir()
    io.partial_path(m).mkdir()
    assert said("predict", out=p, mask=m) == "run the same command with --resume to go on from what is finished " \
                                            "(m.zarr.partial)"
    (tmp_path / "p.zarr.partial.members").mkdir()
    assert "(m.zarr.partial, p.zarr.partial.members)" in said("predict", out=p, mask=m)
    labels, labelled, other = tmp_path / "labels.zarr", tmp_path / "labelled.npy", tmp_path / "other.npy"
    np.save(labelled, np.eye(4, dtype=np.uint8)[None].repeat(2, axis=0))
    np.save(other, np.zeros((2, 4, 4), np.uint8))
    zarr.create_array(str(labels), shape=(2, 4, 4), dtype="uint32").attrs.update(
        kind="labels", settings={"source": io.content_id(io.open_volume(labelled))})
    assert said("label", input=str(labelled), out=labels, table=table).endswith("(labels.zarr)")  # no table yet
    assert said("label", input=str(labelled), out=labels, table=table, overwrite=True).startswith("nothing was left")
    # the labels of another input: an output already there, not this run's to go on from (before: "left by an
    # earlier run of this command; add --resume", which then refused the other source)
    assert said("label", input=str(other), out=labels, table=table).startswith("nothing was left")
    # neither is what label writes: the input named as the output, a folder of something else (before: "left by an
    # earlier run of this command")
    assert said("label", input=str(labels), out=labels, table=table).startswith("nothing was left")
    assert said("label", input="m.zarr", out=p, table=table).startswith("nothing was left")
    table.write_text("id\n")
    assert said("label", input="m.zarr", out=labels, table=table) == "nothing was left half-written (no --resume " \
                                                                    "needed)"
    # run again without --resume: refused in one line, as train and compare do (before: the finished blocks of the
    # mask and the members were deleted silently)
    capsys.readouterr()
    assert main(["predict", "image.tif", "--model", "run", "--out", str(p), "--mask", str(m)]) == 2
    assert capsys.readouterr().err == (f"mitoseg: error: {io.partial_path(m)}, {tmp_path / 'p.zarr.partial.members'}: "
                                       "left by an earlier run of this command; add --resume to go on from it, or "
                                       "--overwrite to start again\n")
    # a run writing the output now is said first (before: "left by an earlier run", --resume advised)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mitoseg import io; "
                               f"io.claim({str(p)!r}); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["predict", "image.tif", "--model", "run", "--out", str(p), "--mask", str(m)]) == 2
        assert f"p.zarr is being written by another mitoseg process (pid {holder.pid})" in capsys.readouterr().err
        np.save(tmp_path / "mask.npy", np.eye(8, dtype=np.uint8)[None].repeat(4, axis=0))
        io.partial_path(p).mkdir()  # the other process's: not said to be this one's to --resume from
        assert main(["label", str(tmp_path / "mask.npy"), "--out", str(p), "--overwrite"]) == 2
        assert capsys.readouterr().err == (f"mitoseg: error: {p} is being written by another mitoseg process (pid "
                                           f"{holder.pid}): wait for it to end, or stop it first\n")
        io.partial_path(p).rmdir()
    finally:
        holder.kill()
        holder.wait()
    # an error of a --resume names no finished part to --resume from (before: advised right after refusing it)
    from mitoseg import instances

    def other_settings(*a, **k):
        raise MitosegError("l.zarr.partial was written with other settings (min_size 0 then, 10 now)")

    monkeypatch.setattr(instances, "label_volume", other_settings)
    io.partial_path(tmp_path / "l.zarr").mkdir()
    assert main(["label", str(p), "--out", str(tmp_path / "l.zarr"), "--resume"]) == 2
    assert capsys.readouterr().err == ("mitoseg: error: l.zarr.partial was written with other settings (min_size 0 "
                                       "then, 10 now)\n")
    # and the one line stays one: zarr's event loop, stopped inside a read, logged up to 500 lines of pending
    # tasks at exit through asyncio's logger (seen on `convert` and predict's mask pass)
    import logging

    assert main(["evaluate", str(tmp_path / "none.tif"), str(tmp_path / "none.tif")]) == 2  # any command's run
    assert logging.getLogger("asyncio").level == logging.CRITICAL


def test_sigterm_is_a_ctrl_c(files, tmp_path):
    """`kill` or a batch system's time limit (SIGTERM) stops a run as Ctrl-C does: one line, status 130, and the
    same cleanup (here: the run folder of a training stopped before its first checkpoint); before, no line and
    what was unfinished left behind (an export's temporary folder and .partial package)."""
    import signal

    run = subprocess.Popen([sys.executable, "-m", "mitoseg.cli", "--quiet", "train", str(files / "train.tif"),
                            str(files / "train_gt.tif"), "--out", str(tmp_path / "r"), "--patch-xy", "64",
                            "--patch-z", "8", "--minutes", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    assert "voxel size" in run.stdout.readline()  # training starts now
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130 and err.strip().splitlines() == ["mitoseg: interrupted; nothing was left "
                                                                   "half-written (no --resume needed)"], err
    assert not (tmp_path / "r").exists()


def test_compare_interrupted_is_told_how_to_resume(tmp_path, monkeypatch, capsys):
    """`compare --resume` reaches the API; a Ctrl-C that leaves an unfinished compare advises --resume."""
    from mitoseg import compare as cmp

    seen = {}

    def interrupted(out, *a, **k):
        seen.update(k)
        io.partial_path(out).mkdir(exist_ok=True)
        (io.partial_path(out) / "compare.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(cmp, "compare", interrupted)
    assert main(["--quiet", "compare", "--out", str(tmp_path / "r"), "--resume"]) == 130
    assert seen["resume"] is True
    assert "with --resume to keep the finished models" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # the recorded command holds no path of this machine (before: as typed)
    monkeypatch.setattr(sys, "argv", ["mitoseg", "compare", "--out", str(tmp_path / "r"), f"--data={tmp_path.parent}"])
    main(sys.argv[1:])
    assert seen["command"] == f"mitoseg compare --out r --data=.../{tmp_path.parent.name}"


def test_compare_planes_reach_the_2d_model_and_anisotropic_data_is_refused(droso_dir, tmp_path, capsys):
    """`compare --planes 3` gives both configs the field (the 3D model ignores it); on the Drosophila stack (50 nm
    sections, 4.6 nm pixels) the 2D model cannot slice along Z: one line, before anything is written."""
    from mitoseg import compare as cmp

    two, three = cmp.configs("quick", None, None, (5.0, 5.0, 5.0), changes={"planes": 3})
    assert (two.slice_planes, three.slice_planes) == (3, 1)
    bad(["compare", "--dataset", "drosophila", "--data", str(droso_dir), "--planes", "3", "--out",
         str(tmp_path / "report")], capsys, "--planes 3 needs near-isotropic voxels")
    assert not list(tmp_path.iterdir())


def test_train_options_reach_the_saved_config(runs):
    d = runs
    argv = [*TRAIN[:-3], "2", *TRAIN[-2:], "--norm", "instance", "--validate-every", "2", "--loader-workers", "0",
            "--bn-freeze", "3", "--normalize", "equalize", "--ema", "0.9", "--elastic", "0.5",
            "--gamma-field", "0.25"]
    assert main(["--quiet", "train", str(d / "train.tif"), str(d / "train_gt.tif"), "--dims", "3",
                 "--out", str(d / "run_options"), *argv]) == 0
    cfg = Config.load(d / "run_options" / "config.json")
    got = (cfg.norm, cfg.validate_every, cfg.loader_workers, cfg.epochs, cfg.bn_freeze, cfg.normalize, cfg.ema,
           cfg.elastic, cfg.gamma_field)
    assert got == ("instance", 2, 0, 2, 3, "equalize", 0.9, 0.5, 0.25)
    rows = list(csv.DictReader(open(d / "run_options" / "log.csv")))
    assert [r["val_iou"] == "nan" for r in rows] == [True, False]  # validated at epoch 2 only


def test_predict_planes_3_reaches_the_prediction(runs, tmp_path, capsys):
    """`mitoseg predict --planes 3` with a run trained on XY slices predicts along three planes (recorded in the
    output's settings), not the XY prediction, and its mask follows the run's choice for three planes, as it and
    `mitoseg label` of it say."""
    d = runs
    for planes in ("1", "3"):
        capsys.readouterr()
        assert main(["--quiet", "predict", str(d / "test.tif"), "--model", str(d / "run2"), "--planes", planes,
                     "--out", str(tmp_path / f"p{planes}.zarr"), "--mask", str(tmp_path / f"m{planes}.zarr")]) == 0
        chosen = postprocess.read(d / "run2", int(planes))
        mask = io.open_volume(tmp_path / f"m{planes}.zarr").attrs
        assert mask["postprocessing"] == chosen.as_dict() and mask["threshold"] == chosen.threshold
        assert mask["postprocessing_planes"] == int(planes)
        said = capsys.readouterr().out
        assert f"probability >= {chosen.threshold:g}, the run's post-processing chosen on validation" in said
        assert ("chosen on validation for three planes" in said) == (planes == "3")
        assert main(["--quiet", "label", str(tmp_path / f"m{planes}.zarr"), "--out",
                     str(tmp_path / f"l{planes}.zarr")]) == 0
        said = capsys.readouterr().out
        assert "the run's post-processing chosen on validation" in said
        assert ("chosen on validation for three planes:" in said) == (planes == "3")
    one, three = (io.open_volume(tmp_path / f"p{n}.zarr") for n in (1, 3))
    assert (one.attrs["settings"]["planes"], three.attrs["settings"]["planes"]) == (1, 3)
    assert (one[:] != three[:]).any()  # a barely trained model: its planes differ by a level or so (test_predict)


def bad(argv, capsys, match):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.match(r"mitoseg( \w+)?: error: ", err) and len(err.strip().splitlines()) == 1, err
    assert match in err and "Traceback" not in err, err


def test_an_empty_path_is_one_line(capsys, monkeypatch):
    """An unset shell variable as a path (`--table "$TABLE"`): before, the table was skipped in silence (exit 0),
    `train --out ""` called the current folder a stopped run, `predict --out ""` raised a ValueError."""
    for argv, name in [(["label", "m.zarr", "--out", "l.zarr", "--table", ""], "--table is empty: give a path"),
                       (["evaluate", "p.zarr", "t.tif", "--json", ""], "--json is empty: give a path"),
                       (["train", "a.tif", "b.tif", "--out", ""], "--out is empty: give a path"),
                       (["predict", "a.tif", "--model", "run", "--model", "", "--out", "p.zarr"], "--model is empty"),
                       (["evaluate", "", "t.tif"], "prediction is empty: give a path")]:
        bad(argv, capsys, name)
    # a user id without a passwd entry and no $USER (a container's --user): MONAI's import asked for the name
    import getpass

    def nameless():
        raise KeyError("getpwuid(): uid not found: 4242")

    monkeypatch.delenv("USER", raising=False)
    monkeypatch.setattr(getpass, "getuser", nameless)
    bad(["label", "missing.zarr", "--out", "l.zarr"], capsys, "missing.zarr: no such file or folder")
    assert os.environ["USER"] == str(os.getuid())


def test_a_mitoseg_output_where_the_image_or_the_truth_goes_is_one_line(runs, probs2, capsys, tmp_path):
    """Probabilities given as the image to segment, or as the truth (evaluate's or train's arguments swapped:
    before, the hint about --label-threshold let it run with precision and recall exchanged), and a mask
    written inside the probabilities' own folder (replacing them later would delete it): refused, nothing
    written. A blank image is refused too (before: 2 % of its voxels were "mitochondria")."""
    d = runs
    test, gt, probs = str(d / "test.tif"), str(d / "test_gt.tif"), str(probs2)
    swapped = "is a mitoseg probability output, not {}: are two arguments swapped?"
    bad(["predict", probs, "--model", str(d / "run2"), "--out", str(tmp_path / "p.zarr")], capsys,
        swapped.format("the EM image"))
    bad(["evaluate", gt, probs], capsys, swapped.format("the true labels"))
    assert main(["--quiet", "evaluate", gt, probs, "--label-threshold", "127"]) == 0  # meant: another model's
    bad(["train", test, probs, "--out", str(tmp_path / "r"), *TRAIN], capsys, swapped.format("the true labels"))
    bad(["predict", test, "--model", str(d / "run2"), "--out", str(tmp_path / "p.zarr"), "--mask",
         str(tmp_path / "p.zarr" / "m.zarr")], capsys, "lie one inside the other")
    tifffile.imwrite(tmp_path / "blank.tif", np.zeros((4, 96, 96), np.uint8))
    bad(["predict", str(tmp_path / "blank.tif"), "--model", str(d / "run2"), "--out", str(tmp_path / "p.zarr")],
        capsys, "the image holds one grey level (0) in 99 % of its voxels or more: nothing to segment")
    mask = "the image holds only the grey levels 0, 255 (sampled): a mask or labels"
    bad(["predict", gt, "--model", str(d / "run2"), "--out", str(tmp_path / "p.zarr")], capsys, mask)
    bad(["predict", gt, "--model", str(d / "run2"), "--out", str(tmp_path / "p.zarr"), "--match-training"], capsys,
        mask)
    bad(["train", gt, gt, "--out", str(tmp_path / "r"), *TRAIN], capsys, mask)  # before: learned the identity
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.tif"]


def test_user_mistakes_are_one_line(runs, capsys, tmp_path, monkeypatch):
    d = runs
    t, g = str(d / "train.tif"), str(d / "train_gt.tif")
    bad(["train", str(tmp_path / "nope.tif"), g, "--out", str(tmp_path / "r")], capsys, "no such file")
    # a word too many, in the command's name as its other mistakes (before: "mitoseg: error: ... (see mitoseg --help)")
    bad(["label", t, "--out", str(tmp_path / "l.zarr"), "--voxel-size", "5", "5", "5", "5"], capsys,
        "mitoseg label: error: unrecognized arguments: 5 (see mitoseg label --help)")
    assert parser().parse_args(["label", t, "--out", "x", "--quiet"]).quiet  # after the command too (before: refused)
    assert not parser().parse_args(["label", t, "--out", "x"]).quiet
    assert parser().parse_args(["--quiet", "view", t]).quiet
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00" + b"\x07" * 100)
    bad(["train", str(tmp_path / "corrupt.tif"), g, "--out", str(tmp_path / "r")], capsys, "cannot be read")
    whole = (d / "train.tif").read_bytes()
    (tmp_path / "truncated.tif").write_bytes(whole[:len(whole) // 2])
    # tifffile logs its own error on it, which only a process of its own shows (pytest captures logging)
    said = subprocess.run([sys.executable, "-m", "mitoseg.cli", "train", str(tmp_path / "truncated.tif"), g, "--out",
                           str(tmp_path / "r")], capture_output=True, text=True)
    assert said.returncode == 2 and said.stderr.splitlines() == [said.stderr.strip()], said.stderr
    assert said.stderr.startswith("mitoseg: error: ") and "cannot be read" in said.stderr
    tifffile.imwrite(tmp_path / "small_gt.tif", np.zeros((8, 64, 64), np.uint8))
    bad(["train", t, str(tmp_path / "small_gt.tif"), "--out", str(tmp_path / "r")], capsys, "differ in shape")
    tifffile.imwrite(tmp_path / "one_level.tif", np.full((8, 192, 192), 7, np.uint8))
    bad(["train", str(tmp_path / "one_level.tif"), g, "--out", str(tmp_path / "r"), *TRAIN], capsys,
        "holds one grey level (7) everywhere: nothing to learn from")
    bad(["train", g, g, "--out", str(tmp_path / "r")], capsys, "(image and labels swapped?)")  # not the patch's size
    tifffile.imwrite(tmp_path / "empty_gt.tif", np.zeros((8, 192, 192), np.uint8))
    bad(["train", t, str(tmp_path / "empty_gt.tif"), "--out", str(tmp_path / "r"), *TRAIN], capsys, "no foreground")
    bad(["train", t, g, "--out", str(tmp_path / "r"), "--dims", "3", "--patch-z", "32"], capsys,
        "smaller than the patch")
    # options that named two things at once (before: one of them silently ignored)
    bad(["train", t, g, "--out", str(tmp_path / "r"), "--quick", "--preset", "cpu"], capsys,
        "--quick is --preset quick: give it or --preset cpu, not both")
    bad(["compare", "--out", str(tmp_path / "c"), "--quick", "--preset", "full"], capsys, "not both")
    bad(["train", t, g, "--out", str(tmp_path / "r"), "--dims", "3", "--planes", "3"], capsys,
        "--planes is the 2D model's")
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((4, 32, 32, 3), np.uint8))
    bad(["predict", str(tmp_path / "rgb.tif"), "--model", str(d / "run2"), "--out", str(tmp_path / "p.zarr")],
        capsys, "colour channels")
    nan = np.zeros((4, 64, 64), np.float32)
    nan[1, 2, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan, photometric="minisblack")
    bad(["predict", str(tmp_path / "nan.tif"), "--model", str(d / "run2"), "--out", str(tmp_path / "p.zarr")],
        capsys, "NaN")
    # NaN where the grey-level sample does not look (odd places of a volume sampled every second voxel): found
    # in its block, after earlier blocks were written; the progress bar stopped there ends its line, and the
    # error's line after it names the part kept
    tiled = np.tile(tifffile.imread(d / "test.tif").astype(np.float32), (2, 3, 3))  # (16, 384, 384): > 2e6 voxels
    tiled[13, 301, 301] = np.nan
    tifffile.imwrite(tmp_path / "late_nan.tif", tiled, photometric="minisblack")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "late_nan.tif"), "--model", str(d / "run2"), "--out",
                 str(tmp_path / "p.zarr"), "--block", "4", "384", "384"]) == 2
    bar, line = capsys.readouterr().err.rstrip("\n").rsplit("\n", 1)
    assert "3/4" in bar.split("\r")[-1], bar  # the bar's last state: three of the four blocks done
    assert line == ("mitoseg: error: the image holds NaN or infinite values; replace them before segmenting; what "
                    f"was finished is kept ({tmp_path / 'p.zarr.partial'}): after fixing the cause, the same command "
                    "with --resume goes on from it")
    assert not (tmp_path / "p.zarr").exists() and len(list((tmp_path / "p.zarr.partial.done").iterdir())) == 3
    shutil.rmtree(tmp_path / "p.zarr.partial")
    shutil.rmtree(tmp_path / "p.zarr.partial.done")
    np.save(tmp_path / "flat.npy", np.zeros((64, 64), np.uint8))
    bad(["predict", str(tmp_path / "flat.npy"), "--model", str(d / "run2"), "--out", str(tmp_path / "p.zarr")],
        capsys, "2D image")
    bad(["predict", t, "--model", str(tmp_path), "--out", str(tmp_path / "p.zarr")], capsys, "no trained model")
    bad(["predict", str(tmp_path / "x.h5:raw"), "--model", str(d / "run2"), "--out", str(tmp_path / "p.zarr")],
        capsys, "no such file")
    bad(["train", t, g, "--out", str(d / "run2"), *TRAIN], capsys, "already exists")
    bad(["evaluate", str(d / "test.tif"), t], capsys, "differs from ground-truth shape")
    monkeypatch.setattr(metrics, "MAX_PLACES_VOXELS", 1000)
    bad(["evaluate", t, t, "--places"], capsys, "reads both volumes and their labelled objects into memory")
    bad(["evaluate", t, t, "--places", "--voxel-size", "5", "0", "5"], capsys, "voxel")
    assert not list(tmp_path.glob("*.zarr*"))  # no half-written output anywhere


def test_wrong_numbers_and_ambiguous_labels_are_refused(runs, probs2, capsys, tmp_path, monkeypatch):
    """The bad-input table of issue 9: each is one line and exit 2, and nothing appears under the output name."""
    d = runs
    t, g, test, probs = str(d / "train.tif"), str(d / "train_gt.tif"), str(d / "test.tif"), str(probs2)
    out = str(tmp_path / "o.zarr")
    predict = ["predict", test, "--model", str(d / "run2"), "--out", out]
    bad([*predict, "--overlap", "-0.5"], capsys, "--overlap: must be a number in [0, 1), not -0.5")
    bad([*predict, "--overlap", "1.5"], capsys, "--overlap: must be a number in [0, 1), not 1.5")
    bad([*predict, "--tile-xy", "0"], capsys, "--tile-xy: must be an integer >= 16, not 0")
    bad(["label", probs, "--out", out, "--min-size", "-5"], capsys, "--min-size: must be an integer >= 0")
    bad(["label", probs, "--out", out, "--threshold", "128"], capsys,
        "threshold must be a probability in (0, 1) for mitoseg probabilities, not 128")
    bad(["label", probs, "--out", out, "--voxel-size", "-5", "5", "5"], capsys, "--voxel-size: must be a number >= 0.1")
    bad(["train", t, g, "--out", str(tmp_path / "r"), "--epochs", "0"], capsys, "--epochs: must be an integer >= 1")
    bad(["train", t, g, "--out", str(tmp_path / "r"), "--lr", "nan"], capsys, "--lr: must be a number > 0")
    bad(["train", t, g, "--out", str(tmp_path / "r"), "--planes", "2"], capsys, "planes must be 1 or 3, not 2")
    bad([*predict, "--planes", "2"], capsys, "planes must be 1 or 3, not 2")
    (tmp_path / "notarun").mkdir()
    bad([*predict, "--model", str(tmp_path / "notarun")], capsys, "no trained model")  # found before run2 predicts
    assert not list(tmp_path.glob("o.zarr*"))
    (tmp_path / "notarun" / "mine.txt").write_text("my notes")
    bad(["train", t, g, "--out", str(tmp_path / "notarun"), "--overwrite", *TRAIN], capsys,
        "is a folder of other files (not a mitoseg run, report or Zarr volume)")
    assert (tmp_path / "notarun" / "mine.txt").read_text() == "my notes"
    bad(["predict", test, "--model", str(d / "run3"), "--out", out, "--planes", "3"], capsys,
        "--planes is for a 2D model; this run is a 3D model")
    bad(["train", t, g, "--out", str(tmp_path / "r"), "--planes", "3", "--voxel-size", "50", "4.6", "4.6"], capsys,
        "--planes 3 needs near-isotropic voxels (no axis over twice another's); these are 50 x 4.6 x 4.6 nm")
    bad(["train", t, g, "--out", str(tmp_path / "r"), "--planes", "3", "--context-slices", "1"], capsys,
        "give --planes 3 or --context-slices, not both")
    # anti-aliased 0..255 truth: refused without --label-threshold, scored with it
    soft = ndi.gaussian_filter(tifffile.imread(d / "test_gt.tif").astype(np.float32), (0, 1.5, 1.5))
    tifffile.imwrite(tmp_path / "soft.tif", np.rint(soft).astype(np.uint8))
    bad(["evaluate", probs, str(tmp_path / "soft.tif")], capsys, "more than two values (0, 1, 2, 3, ...): give "
        "--label-threshold")
    assert main(["--quiet", "evaluate", probs, str(tmp_path / "soft.tif"), "--label-threshold", "127"]) == 0
    tifffile.imwrite(tmp_path / "zero.tif", np.zeros((8, 128, 128), np.uint8))
    bad(["--quiet", "evaluate", probs, str(tmp_path / "zero.tif")], capsys, "the truth holds no foreground voxels")
    (tmp_path / "s.json").write_text("{}")
    bad(["evaluate", probs, str(d / "test_gt.tif"), "--json", str(tmp_path / "s.json")], capsys, "already exists")
    assert (tmp_path / "s.json").read_text() == "{}"
    # a resume with other settings than the interrupted run's
    assert main(["--quiet", *predict[:-1], str(tmp_path / "i.zarr"), "--overlap", "0.25"]) == 0
    shutil.copytree(tmp_path / "i.zarr", tmp_path / "o.zarr.partial")  # as if interrupted before its rename
    bad([*predict, "--overlap", "0.5", "--resume"], capsys, "other settings (overlap 0.25 then, 0.5 now)")
    tifffile.imwrite(tmp_path / "flipped.tif", tifffile.imread(test)[:, ::-1])  # the same grey levels and window
    bad(["predict", str(tmp_path / "flipped.tif"), *predict[2:], "--overlap", "0.25", "--resume"], capsys,
        "other settings (source ")
    assert not (tmp_path / "o.zarr").exists()
    # Ctrl-C in the first epoch: no folder left behind, and no advice to --resume what cannot be resumed
    from mitoseg import data

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "augment", interrupt)
    capsys.readouterr()
    assert main(["--quiet", "train", t, g, "--out", str(tmp_path / "r"), *TRAIN]) == 130
    assert "nothing was left half-written" in capsys.readouterr().err and not (tmp_path / "r").exists()
    # the same Ctrl-C of a training that --overwrite's an old run: the old run is as it was (before: deleted)
    shutil.copytree(d / "run2", tmp_path / "old")
    before = sorted(p.name for p in (tmp_path / "old").iterdir())
    assert main(["--quiet", "train", t, g, "--out", str(tmp_path / "old"), "--overwrite", *TRAIN]) == 130
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == before
    assert not (tmp_path / "old.replaced").exists()
    assert capsys.readouterr().err == f"mitoseg: interrupted; the run that was at {tmp_path / 'old'} is as it was\n"
    # killed (-9) before its first checkpoint: the beginning of the new run in old/, the old run in old.replaced;
    # an --overwrite again keeps the old run aside (before: deleted it), and puts it back when stopped early
    (tmp_path / "old").rename(tmp_path / "old.replaced")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text("{}")
    aside = f"{tmp_path / 'old.replaced'} holds the run a stopped `train --overwrite` was replacing"
    bad(["predict", test, "--model", str(tmp_path / "old"), "--out", str(tmp_path / "x.zarr")], capsys, aside)
    # before: "move it back to old", which `mv` does into the unfinished old/, hiding it there
    bad(["train", t, g, "--out", str(tmp_path / "old"), *TRAIN], capsys, f"{aside}, and {tmp_path / 'old'} the new "
        f"run's unfinished beginning: delete {tmp_path / 'old'} and rename old.replaced to old to keep the old run")
    bad(["train", t, g, "--out", str(tmp_path / "old"), "--resume", "--overwrite"], capsys,
        "give --resume (go on with the run) or --overwrite (start it again), not both")
    shutil.rmtree(tmp_path / "old")  # the new run's beginning removed by hand: a plain train there deleted old.replaced
    bad(["train", t, g, "--out", str(tmp_path / "old"), *TRAIN], capsys, f"{aside}: move it back to ")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text("{}")
    assert main(["--quiet", "train", t, g, "--out", str(tmp_path / "old"), "--overwrite", *TRAIN]) == 130
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == before
    monkeypatch.undo()
    assert main(["--quiet", "train", t, g, "--out", str(tmp_path / "old"), "--overwrite", *TRAIN]) == 0
    assert not (tmp_path / "old.replaced").exists()  # gone with the new run's first checkpoint


def test_an_output_that_is_a_link_is_replaced_and_its_target_kept(runs, capsys, tmp_path, monkeypatch):
    """`--overwrite` of an output that is a symbolic link ended in "OSError" alone (shutil's "Cannot call rmtree on a
    symbolic link" dropped): the link is replaced, what it links to is kept; a system error's own words are said."""
    (tmp_path / "real").mkdir()
    label = ["--quiet", "label", str(runs / "test_gt.tif"), "--block", "3", "50", "70", "--overwrite", "--out"]
    assert main([*label, str(tmp_path / "real" / "l.zarr")]) == 0
    (tmp_path / "link.zarr").symlink_to(tmp_path / "real" / "l.zarr")
    assert main([*label, str(tmp_path / "link.zarr")]) == 0
    assert not (tmp_path / "link.zarr").is_symlink() and (tmp_path / "real" / "l.zarr" / "zarr.json").is_file()
    from mitoseg import instances

    def refused(*a, **k):
        raise OSError("a library's own words")

    monkeypatch.setattr(instances, "label_volume", refused)
    bad(label[1:] + [str(tmp_path / "x.zarr")], capsys, "mitoseg: error: a library's own words")


def test_a_tilde_after_an_equals_sign_is_the_home_folder(runs, tmp_path, monkeypatch):
    """`--out=~/l.zarr`: the shell leaves that ~ as it is, and a folder named "~" was made in the current one."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    assert main(["--quiet", "label", str(runs / "test_gt.tif"), "--out=~/l.zarr", "--table=~/t.csv"]) == 0
    assert (tmp_path / "home" / "l.zarr").is_dir() and (tmp_path / "home" / "t.csv").is_file()
    assert not (tmp_path / "~").exists()


def test_workers_without_a_local_cluster_are_refused(runs, capsys, tmp_path):
    """`--workers 8` without `--scheduler local` was ignored in silence (one process ran, or the cluster's own)."""
    label = ["label", str(runs / "test_gt.tif"), "--out", str(tmp_path / "l.zarr"), "--workers", "8"]
    bad(label, capsys, "--workers sets the processes of --scheduler local; without it everything runs in this")
    bad([*label, "--dask-address", "tcp://127.0.0.1:1"], capsys, "a running cluster (--dask-address) has its own")
    assert not (tmp_path / "l.zarr").exists()
    # an existing output is refused before the cluster is reached (before: after its 30 s timeout, which was said)
    (tmp_path / "l.zarr").mkdir()
    bad([*label[:-2], "--dask-address", "tcp://127.0.0.1:1"], capsys, "l.zarr already exists; pass --overwrite")
    bad(["label", label[1], "--out", label[1], "--dask-address", "tcp://127.0.0.1:1"], capsys,
        "is an input of this command; give another output")  # not "pass --overwrite", which would replace it


def test_label_on_a_local_dask_cluster_equals_single_process(runs, capsys):
    d = runs
    common = ["--quiet", "label", str(d / "test_gt.tif"), "--block", "3", "50", "70"]
    assert main([*common, "--out", str(d / "single.zarr")]) == 0
    assert main([*common, "--out", str(d / "dask.zarr"), "--scheduler", "local", "--workers", "2"]) == 0
    np.testing.assert_array_equal(io.open_volume(d / "dask.zarr")[:], io.open_volume(d / "single.zarr")[:])
    bad([*common[1:], "--out", str(d / "both.zarr"), "--scheduler", "local", "--dask-address", "tcp://h:1"],
        capsys, "give one of them")
    capsys.readouterr()
    assert main([*common[1:], "--out", str(d / "said.zarr"), "--scheduler", "local", "--workers", "1"]) == 0
    assert re.search(r"Dask scheduler tcp://\S+: 1 workers, 1 threads", capsys.readouterr().out)  # where it ran


def test_predict_matched_to_the_training_histogram_undoes_a_gamma_change(runs, capsys, tmp_path):
    """`predict --match-training`: the test crop under gamma 1.4 reaches the network as (about) the unchanged
    crop does, through the window recorded with the output (the training crop's window and histogram kept with
    the model), which the crop's own percentile window does not give; a checkpoint without the training
    histogram (trained before it was kept) is refused in one line, with no output left."""
    import torch

    from mitoseg.train import load_model

    d = runs
    images = {"same": tifffile.imread(d / "test.tif")}
    images["gamma"] = np.rint(255 * (images["same"] / 255) ** 1.4).astype(np.uint8)
    tifffile.imwrite(tmp_path / "gamma.tif", images["gamma"])
    windows = {}
    for name, path in {"same": d / "test.tif", "gamma": tmp_path / "gamma.tif"}.items():
        out = tmp_path / f"{name}.zarr"
        assert main(["--quiet", "predict", str(path), "--model", str(d / "run2"), "--out", str(out),
                     "--match-training"]) == 0
        windows[name] = tuple(io.open_volume(out).attrs["window"])
    model, _ = load_model(d / "run2")
    kept = model.intensity
    assert windows["gamma"] == io.matched_window(images["gamma"], kept["reference"], kept["window"])
    matched = np.abs(io.normalize(images["gamma"], windows["gamma"]) - io.normalize(images["same"], windows["same"]))
    own = np.abs(io.normalize(images["gamma"], io.intensity_range(images["gamma"]))
                 - io.normalize(images["same"], io.intensity_range(images["same"])))
    assert matched.mean() < 0.006 and own.mean() > 0.03, (matched.mean(), own.mean())
    old = torch.load(d / "run2" / "best.pt", weights_only=False)
    del old["intensity"]
    torch.save(old, tmp_path / "old.pt")
    bad(["predict", str(d / "test.tif"), "--model", str(tmp_path / "old.pt"), "--out", str(tmp_path / "o.zarr"),
         "--match-training"], capsys, "train it again")
    assert not list(tmp_path.glob("o.zarr*"))


def test_predict_and_label_write_ome_zarr_at_the_runs_voxel_size(runs):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    d = runs
    probs, labels = d / "p.ome.zarr", d / "l.ome.zarr"
    assert main(["--quiet", "predict", str(d / "test.tif"), "--model", str(d / "run2"), "--out", str(probs),
                 "--block", "4", "64", "64"]) == 0
    node = next(iter(Reader(parse_url(str(probs)))()))
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == [5.0, 5.0, 5.0]  # the run's voxel size
    assert node.metadata["axes"][0]["unit"] == "nanometer" and len(node.data) == 2  # 128 -> 64 pixels
    assert main(["--quiet", "label", str(probs), "--out", str(labels), "--threshold", "0.5"]) == 0
    np.testing.assert_array_equal(io.open_volume(labels)[:] > 0, io.open_volume(probs)[:] >= 128)
    assert io.voxel_size(labels) == (5.0, 5.0, 5.0)  # taken from the OME-Zarr input


def test_train_from_a_few_slices_and_fine_tune(runs, capsys, tmp_path):
    d = runs
    t, g = str(d / "train.tif"), str(d / "train_gt.tif")
    labels = tifffile.imread(g)
    partial = labels.copy()
    partial[4:] = 99  # slices 4.. not annotated
    tifffile.imwrite(tmp_path / "partial.tif", partial)
    out = tmp_path / "fine"
    assert main(["--quiet", "train", t, str(tmp_path / "partial.tif"), "--unlabeled", "99", "--annotated-slices",
                 "0-2", "--init", str(d / "run2"), "--out", str(out), *TRAIN]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["init"], saved["annotated_slices"], saved["unlabeled"]) == (str(d / "run2"), "0-2", 99)
    # an ilastik export (0 nobody, 1 background, 2 mitochondria) resumes: before, the saved label threshold 0 (the
    # default, none given) read 1 and 2 as foreground on --resume, refused ("foreground wherever annotated")
    ilastik = np.where(np.arange(8)[:, None, None] < 3, (labels > 0) + 1, 0).astype(np.uint8)
    tifffile.imwrite(tmp_path / "ilastik.tif", ilastik)
    args = ["--quiet", "train", t, str(tmp_path / "ilastik.tif"), "--unlabeled", "0", "--out", str(tmp_path / "il")]
    assert main([*args, *TRAIN]) == 0 and json.loads((tmp_path / "il" / "config.json").read_text())["label_threshold"] \
        is None
    assert main([*args, "--resume"]) == 0
    old = json.loads((tmp_path / "il" / "config.json").read_text())
    (tmp_path / "il" / "config.json").write_text(json.dumps({**old, "label_threshold": 0.0}))  # as recorded before
    assert main([*args, "--resume"]) == 0
    assert not (out / "postprocessing.json").exists()  # chosen only on a wholly annotated validation split
    bad(["train", t, g, "--annotated-slices", "5-9", "--out", str(tmp_path / "r"), *TRAIN], capsys,
        "annotated slices '5-9' outside the volume's slices 0..7")
    bad(["train", t, g, "--init", str(d / "run3"), "--out", str(tmp_path / "r"), *TRAIN], capsys,
        "is a 3D resnet18 run; this run is 2D")
    assert not (tmp_path / "r").exists()


def test_predict_records_the_voxel_size_the_image_states_or_is_given_and_says_which(runs, tmp_path, capsys):
    """An ImageJ TIFF calibrated at 50 x 4.6 x 4.6 nm (as Fiji saves the Drosophila sections): the outputs
    record it, not the run's, so `label` measures objects in it; --voxel-size overrides; an image that states
    none gets the run's, and the line says so."""
    d = runs
    tifffile.imwrite(tmp_path / "ij.tif", tifffile.imread(d / "test.tif"), imagej=True,
                     resolution=(1 / 0.0046, 1 / 0.0046), metadata={"spacing": 0.05, "unit": "micron", "axes": "ZYX"})
    run_voxel = Config.load(d / "run2" / "config.json").voxel_size
    for image, given, voxel, said in ((tmp_path / "ij.tif", [], (50.0, 4.6, 4.6), "as the image states"),
                                      (tmp_path / "ij.tif", ["--voxel-size", "40", "4", "4"], (40.0, 4.0, 4.0),
                                       "(--voxel-size)"),
                                      (d / "test.tif", [], run_voxel, "the run's: the image states none")):
        out = tmp_path / f"p{len(given)}{image.name}.ome.zarr"
        capsys.readouterr()
        assert main(["--quiet", "predict", str(image), "--model", str(d / "run2"), "--out", str(out), *given]) == 0
        assert io.voxel_size(out) == pytest.approx(voxel)
        told = capsys.readouterr()
        assert said in told.out
        assert "note: the model was trained on" not in told.err  # a 2D model sees the pixels: Z does not count
    # pixels twice the model's: one line says its accuracy there is unmeasured (before: nothing)
    capsys.readouterr()
    assert main(["--quiet", "predict", str(d / "test.tif"), "--model", str(d / "run2"), "--out",
                 str(tmp_path / "px.zarr"), "--voxel-size", "5", "10", "10"]) == 0
    trained = " x ".join(f"{v:g}" for v in run_voxel[1:])
    told = capsys.readouterr().err
    assert f"note: the model was trained on {trained} nm voxels and the image's are 10 x 10 nm" in told, told
    # a crop of a larger OME-Zarr volume (translated 1 micrometre in Y): its probabilities and labels start there
    from ome_zarr.writer import write_multiscales_metadata

    group = zarr.open_group(str(tmp_path / "crop.ome.zarr"), mode="w")
    group.create_array("0", data=tifffile.imread(d / "test.tif"), dimension_names=("z", "y", "x"))
    write_multiscales_metadata(group, [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [5.0, 5.0, 5.0]}, {"type": "translation", "translation": [0.0, 1000.0, 0.0]}]}],
        axes=[{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"])
    assert main(["--quiet", "predict", str(tmp_path / "crop.ome.zarr"), "--model", str(d / "run2"), "--out",
                 str(tmp_path / "c.zarr")]) == 0
    assert main(["--quiet", "label", str(tmp_path / "c.zarr"), "--out", str(tmp_path / "cl.ome.zarr")]) == 0
    assert io.origin(tmp_path / "c.zarr") == io.origin(tmp_path / "cl.ome.zarr") == (0.0, 1000.0, 0.0)
    # its mask as an image-label of it, through the run's post-processing (the mask written from the probabilities)
    assert main(["--quiet", "predict", str(tmp_path / "crop.ome.zarr"), "--model", str(d / "run2"), "--out",
                 str(tmp_path / "c2.zarr"), "--mask", str(tmp_path / "crop.ome.zarr" / "labels" / "mito")]) == 0
    assert zarr.open_group(str(tmp_path / "crop.ome.zarr" / "labels")).attrs["ome"]["labels"] == ["mito"]
    # the mask as an image-label of the probabilities image this very command writes, at a given voxel size
    # (before: refused, "p.ome.zarr is not an OME-Zarr image", the image not yet written)
    assert main(["--quiet", "predict", str(d / "test.tif"), "--model", str(d / "run2"), "--out",
                 str(tmp_path / "p.ome.zarr"), "--mask", str(tmp_path / "p.ome.zarr" / "labels" / "mask"),
                 "--voxel-size", "5", "5", "5"]) == 0
    assert io.voxel_size(tmp_path / "p.ome.zarr" / "labels" / "mask") == (5.0, 5.0, 5.0)


def test_predicting_with_an_unfinished_training_is_noted(runs, tmp_path, capsys):
    """A run whose training stopped before its end (no summary.json) predicts with the checkpoint it reached, and
    one line says so (before: nothing)."""
    shutil.copytree(runs / "run2", tmp_path / "stopped")
    (tmp_path / "stopped" / "summary.json").unlink()
    assert main(["--quiet", "predict", str(runs / "test.tif"), "--model", str(tmp_path / "stopped"), "--out",
                 str(tmp_path / "p.zarr"), "--tile-xy", "64"]) == 0
    assert "note: the training of stopped did not finish" in capsys.readouterr().err


def test_train_takes_the_voxel_size_the_image_states_and_says_which(runs, tmp_path, capsys):
    """An ImageJ TIFF calibrated at 50 x 4.6 x 4.6 nm trains a 3D model with in-plane-only first strides
    and records that voxel size (the default 5 nm cubes before: a 3D model that halved 8 sections in Z);
    an image stating none gets the default, and the line says to give --voxel-size."""
    from mitoseg.models import encoder_strides

    d = runs
    tifffile.imwrite(tmp_path / "ij.tif", tifffile.imread(d / "train.tif"), imagej=True,
                     resolution=(1 / 0.0046, 1 / 0.0046), metadata={"spacing": 0.05, "unit": "micron", "axes": "ZYX"})
    capsys.readouterr()
    assert main(["--quiet", "train", str(tmp_path / "ij.tif"), str(d / "train_gt.tif"), "--dims", "3",
                 "--out", str(tmp_path / "ij_run"), *TRAIN]) == 0
    assert "voxel size 50 x 4.6 x 4.6 nm, as the image states" in capsys.readouterr().out
    cfg = Config.load(tmp_path / "ij_run" / "config.json")
    assert cfg.voxel_size == pytest.approx((50.0, 4.6, 4.6)) and encoder_strides(cfg.voxel_size, 3)[0][0] == 1
    assert cfg.data == "ij.tif with labels train_gt.tif"  # file names, no folders of this machine
    assert main(["--quiet", "train", str(d / "train.tif"), str(d / "train_gt.tif"), "--out", str(tmp_path / "plain"),
                 *TRAIN]) == 0
    assert "voxel size 5 x 5 x 5 nm, the default: the image states none; give --voxel-size" in capsys.readouterr().out
    assert not Config.load(tmp_path / "plain" / "config.json").voxel_size_stated
    # its predictions record no voxel size (before: the default 5 nm, as if known) and note no other one
    assert main(["--quiet", "predict", str(d / "test.tif"), "--model", str(tmp_path / "plain"), "--out",
                 str(tmp_path / "p.zarr"), "--tile-xy", "64", "--tile-z", "8"]) == 0
    told = capsys.readouterr()
    assert io.voxel_size(tmp_path / "p.zarr") is None and "voxel size: none recorded" in told.out
    assert main(["--quiet", "predict", str(d / "test.tif"), "--model", str(tmp_path / "plain"), "--out",
                 str(tmp_path / "p10.zarr"), "--tile-xy", "64", "--tile-z", "8", "--voxel-size", "50", "10", "10"]) == 0
    told = capsys.readouterr()
    assert io.voxel_size(tmp_path / "p10.zarr") == (50.0, 10.0, 10.0) and "note:" not in told.err


def test_label_says_when_its_table_measures_voxels_of_1_nm(droso_crop, tmp_path, capsys):
    """A table of a mask that states no voxel size (.npy), without --voxel-size, is in 1 nm voxels: said in one
    line; with --voxel-size, or from an ImageJ TIFF that states it, nothing is said."""
    mask = droso_crop[1][:, :128, :128]
    np.save(tmp_path / "mask.npy", mask)
    tifffile.imwrite(tmp_path / "ij.tif", mask, imagej=True, resolution=(1 / 4.6, 1 / 4.6),
                     metadata={"spacing": 50, "unit": "nm", "axes": "ZYX"})
    for name, extra, said in [("mask.npy", [], True), ("mask.npy", ["--voxel-size", "50", "4.6", "4.6"], False),
                              ("ij.tif", [], False)]:
        out = tmp_path / f"{name}{len(extra)}"
        assert main(["--quiet", "label", str(tmp_path / name), "--out", f"{out}.zarr", "--table", f"{out}.csv",
                     *extra]) == 0
        assert ("states no voxel size: the table measures voxels of 1 x 1 x 1 nm" in capsys.readouterr().out) == said
        assert (io.voxel_size(f"{out}.zarr") is None) == said  # before: 1 x 1 x 1 nm recorded, as if stated
    # an OME-Zarr output of a volume of no known voxel size: axes without a unit (before: 1 nm, "as stated")
    assert main(["--quiet", "label", str(tmp_path / "mask.npy"), "--out", str(tmp_path / "l.ome.zarr")]) == 0
    assert io.voxel_size(tmp_path / "l.ome.zarr") is None
    assert "unit" not in zarr.open_group(str(tmp_path / "l.ome.zarr")).attrs["ome"]["multiscales"][0]["axes"][0]
    assert main(["--quiet", "label", str(tmp_path / "l.ome.zarr"), "--out", str(tmp_path / "again.zarr"), "--table",
                 str(tmp_path / "again.csv"), "--threshold", "1"]) == 0
    assert "states no voxel size" in capsys.readouterr().out  # still said for the output labelled again


def test_predict_resume_keeps_only_its_own_finished_prediction(runs, tmp_path, capsys, monkeypatch):
    """--resume onto a finished prediction: kept when predicted alike; refused when the voxel size to record
    differs; with --overwrite predicted again (and an interrupted --overwrite run resumes); a volume that is no
    prediction is "already exists", as without --resume."""
    opts = [str(runs / "test.tif"), "--model", str(runs / "run2"), "--tile-xy", "64", "--block", "2", "64", "64"]
    out = tmp_path / "p.zarr"
    assert main(["--quiet", "predict", *opts, "--out", str(out)]) == 0
    created = io.open_volume(out).attrs["created"]
    capsys.readouterr()
    assert main(["--quiet", "predict", *opts, "--out", str(out), "--resume"]) == 0
    assert io.open_volume(out).attrs["created"] == created
    # said so (before: "wrote p.zarr")
    assert capsys.readouterr().out.startswith(f"kept {out}, finished earlier with these settings")
    assert main(["--quiet", "predict", *opts, "--out", str(out), "--resume", "--voxel-size", "10", "10", "10"]) == 2
    assert "p.zarr was written with other settings (voxel_size [5.0, 5.0, 5.0] then, [10.0, 10.0, 10.0] now)" \
        in capsys.readouterr().err
    assert main(["--quiet", "predict", *opts, "--out", str(out), "--resume", "--overwrite", "--dtype", "float16"]) == 0
    assert io.open_volume(out).dtype == np.float16
    with monkeypatch.context() as m:  # replaced by a uint8 prediction again, interrupted: resumed, not refused
        m.setattr(predict, "write_block", dies_on_call(predict.write_block, 3))
        assert main(["--quiet", "predict", *opts, "--out", str(out), "--overwrite"]) == 130
    # the finished prediction and the unfinished one replacing it (before: --resume alone was advised, and then
    # refused with "already exists; pass --overwrite", which discards the finished blocks)
    bad(["predict", *opts, "--out", str(out)], capsys, "add --resume --overwrite to go on from it (p.zarr already "
        "there), or --overwrite to start again")
    bad(["predict", *opts, "--out", str(out), "--resume"], capsys, "p.zarr already exists, and p.zarr.partial, left "
        "by a run replacing it: go on with --resume --overwrite")
    assert main(["--quiet", "predict", *opts, "--out", str(out), "--overwrite", "--resume"]) == 0
    assert io.open_volume(out).dtype == np.uint8 and io.open_volume(out).attrs["created"] != created
    assert main(["--quiet", "convert", str(runs / "test.tif"), "--out", str(tmp_path / "c.zarr")]) == 0
    capsys.readouterr()
    assert main(["--quiet", "predict", *opts, "--out", str(tmp_path / "c.zarr"), "--resume"]) == 2
    assert "c.zarr already exists; pass --overwrite" in capsys.readouterr().err
    # probabilities and mask, and labels and table, finished: nothing to resume (before: "already exists; pass
    # --overwrite", which predicts everything again)
    both = [*opts, "--out", str(tmp_path / "q.zarr"), "--mask", str(tmp_path / "m.zarr"), "--threshold", "0.5"]
    assert main(["--quiet", "predict", *both]) == 0
    assert main(["--quiet", "label", str(tmp_path / "m.zarr"), "--out", str(tmp_path / "l.zarr"), "--table",
                 str(tmp_path / "t.csv")]) == 0
    bad(["predict", *both, "--resume"], capsys, "m.zarr are finished: nothing to resume")
    bad(["label", str(tmp_path / "m.zarr"), "--out", str(tmp_path / "l.zarr"), "--table", str(tmp_path / "t.csv"),
         "--resume"], capsys, "t.csv are finished: nothing to resume")
    bad(["label", str(tmp_path / "m.zarr"), "--out", str(tmp_path / "l.zarr"), "--resume"], capsys,
        "l.zarr is finished: nothing to resume")  # no table asked (before: "already exists; pass --overwrite")


def test_what_an_interrupt_left_is_found_without_importing_torch(tmp_path):
    """Ctrl-C in the first seconds of `predict` lands in torch's import; the line said after it looked for an
    unfinished mean of models by importing mitoseg.predict, hence torch, half-imported: a 50-line traceback of
    torch's (exit 1). It finds it by its path alone, which the unfinished outputs include."""
    (tmp_path / "o.zarr.partial.members").mkdir()
    said = subprocess.run([sys.executable, "-c", "import sys; from mitoseg import cli; a = cli.parser().parse_args("
                           "['predict', 'x.tif', '--model', 'm', '--out', 'o.zarr']); print(cli._after_interrupt(a)); "
                           "print('torch' in sys.modules)"], capture_output=True, text=True, cwd=tmp_path)
    assert said.stdout.splitlines() == ["run the same command with --resume to go on from what is finished "
                                        "(o.zarr.partial.members)", "False"], said.stderr


def test_a_3d_model_on_a_stack_thinner_than_its_patches_is_noted(runs, tmp_path, capsys):
    """A 3D model of 8-slice patches on 3 real sections: its tiles are padded by repeating end slices, said in a note
    (before: nothing); the 2D model predicts them without it, and the outputs keep the 3-slice shape."""
    tifffile.imwrite(tmp_path / "thin.tif", tifffile.imread(runs / "test.tif")[:3])
    for dims in (3, 2):
        assert main(["predict", str(tmp_path / "thin.tif"), "--model", str(runs / f"run{dims}"), "--out",
                     str(tmp_path / f"p{dims}.zarr"), "--tile-xy", "64"]) == 0
        noted = "note: the 3D model learned from patches of 8 slices and this volume has 3" in capsys.readouterr().err
        assert noted is (dims == 3) and io.open_volume(tmp_path / f"p{dims}.zarr").shape == (3, 128, 128)
