import csv
import dataclasses
import json

import numpy as np
import pytest
import zarr
from conftest import dies_on_call

from mitoseg import compare as cmp
from mitoseg import datasets, io, metrics, postprocess, predict
from mitoseg.data import split
from mitoseg.errors import MitosegError
from mitoseg.train import load_model, read_log, train

TINY = dict(patch_xy=64, patch_z=8, iterations_per_epoch=2, tile_xy=64, tile_z=8, warmup_iterations=1)


@pytest.fixture
def tiny_bench(monkeypatch, droso):
    raw, mask = droso
    bench = cmp.Benchmark("drosophila-crop", "real Drosophila crop", raw[:8, 704:832, 256:384],
                          mask[:8, 704:832, 256:384], raw[:8, 704:832, 384:512], mask[:8, 704:832, 384:512],
                          (50.0, 4.6, 4.6))
    monkeypatch.setattr(cmp, "load_benchmark", lambda *a, **k: bench)
    return bench


def test_compare_writes_report(tmp_path, tiny_bench):
    out = tmp_path / "report"
    results = cmp.compare(out, preset="quick", epochs=1, changes=TINY, progress=False, command="test", tta=True,
                          monitor=True)
    for name in ("report.md", "report.json", "compare.json", "figure_data.png", "figure_errors.png",
                 "figure_instances.png", "figure_curves.png", "figure_morphology.png", "objects_truth.csv",
                 "objects_predicted.csv", "model_2D/test_labels.zarr", "model_2D/config.json", "model_3D/log.csv",
                 "model_3D/test_probs.zarr"):
        assert (out / name).exists(), name
    saved = json.loads((out / "report.json").read_text())
    assert set(saved["models"]) == {"2D", "3D"}
    for row in saved["models"].values():
        assert row["epochs"] == 1 and row["iterations"] == 2
        assert 0 <= row["precision"] <= 1 and 0 <= row["jaccard"] <= row["f1"] <= 1
        assert row["objects_true"] > 0 and row["inference_seconds"] > 0
        assert set(row["variants"]) == {"raw", "tta", "tta_post"}
        assert row["jaccard"] == row["variants"]["tta_post"]["jaccard"]
        assert row["object_min_size"] == row["postprocessing"]["min_size"]
        final, errors = row["variants"]["tta_post"], row["errors"]  # where the final mask's errors lie
        counted = metrics.scores(metrics.Counts(errors["tp"], errors["fp"], errors["fn"], 0))  # 0/0 safe: an empty mask
        assert (counted["precision"], counted["recall"]) == (final["precision"], final["recall"])
        assert errors["jaccard"] == final["jaccard"]
        assert errors["fp_whole"] + errors["fp_near_4"] <= errors["fp"]
    for d in ("2D", "3D"):
        assert all(0 <= r["monitor_iou"] <= 1 for r in read_log(out / f"model_{d}"))  # the test curve
        chosen = json.loads((out / f"model_{d}" / "postprocessing.json").read_text())
        assert chosen["chosen_on"] == "validation split" and chosen["chosen"] == saved["models"][d]["postprocessing"]
        assert chosen["probabilities"] == "tta"  # compare's own choice, on TTA probabilities
    assert not (out / "model_2D" / "postprocessing_planes3.json").exists()  # 50 nm sections: XY slices only
    ensemble = out / "model_2D+3D"  # the mean of the two models' probabilities, scored as a third row
    scored = {**saved["models"], cmp.ENSEMBLE: saved["ensemble"]}
    for name in cmp.PROBABILITIES:
        two, three = (cmp.io.open_volume(out / f"model_{d}" / name)[:].astype(int) for d in ("2D", "3D"))
        assert np.array_equal(cmp.io.open_volume(ensemble / name)[:], (two + three + 1) // 2), name
    mean = cmp.io.open_volume(ensemble / "test_probs.zarr")[:] >= 128
    for d in ("2D", "3D", cmp.ENSEMBLE):  # each output opened alone is at its voxel size (before: in pixels)
        for name in (*cmp.PROBABILITIES, "test_labels.zarr"):
            assert cmp.io.voxel_size(out / f"model_{d}" / name) == tiny_bench.voxel_size, (d, name)
    assert cmp.io.kind(cmp.io.open_volume(ensemble / "test_labels.zarr")) == "labels"
    assert saved["ensemble"]["variants"]["raw"] == cmp._scores(mean, tiny_bench.test_mask, 0)
    assert set(saved["ensemble"]["variants"]) == {"raw", "tta", "tta_post"}
    chosen = json.loads((ensemble / "postprocessing.json").read_text())
    assert chosen["chosen_on"] == "validation split" and chosen["chosen"] == saved["ensemble"]["postprocessing"]
    md = (out / "report.md").read_text()
    assert "| mitoseg 2D + 3D (mean) |" in md and f"| {cmp.ENSEMBLE} | + TTA + post-processing |" in md
    for d, row in scored.items():  # the validation IoU of the chosen post-processing ranks the three rows
        assert row["validation_jaccard"] == max(c["jaccard"] for c in json.loads(
            (out / f"model_{d}" / "postprocessing.json").read_text())["candidates"])
    assert f"they rank {max(scored, key=lambda d: scored[d]['validation_jaccard'])} " in md
    assert "0.6660" in md and "0.9481" in md  # the study's numbers beside ours
    assert f"{results['models']['2D']['f1']:.4f}" in md
    assert "+ TTA + post-processing" in md and "epochs per model" in md and "## Where the errors are" in md
    assert str(tmp_path) not in md and str(tmp_path) not in (out / "report.json").read_text()
    assert not cmp.io.partial_path(out).exists()
    best = max(scored, key=lambda d: scored[d]["jaccard"])
    truth = cmp.instances.label(tiny_bench.test_mask, 26, min_size=scored[best]["postprocessing"]["min_size"])
    rows = list(csv.DictReader(open(out / "objects_truth.csv")))
    assert len(rows) == truth.max() and {"sphericity", "length_um", "touches_border"} <= set(rows[0])
    with pytest.raises(MitosegError, match="already exists"):
        cmp.compare(out, preset="quick", epochs=1, changes=TINY, progress=False)
    again = cmp.evaluate_model(out / "model_3D", tiny_bench, progress=False)  # a saved run, evaluated alike
    assert again["variants"] == saved["models"]["3D"]["variants"] and again["errors"] == saved["models"]["3D"]["errors"]


def test_a_2d_run_evaluated_on_ca1_is_also_given_a_choice_for_three_planes(tmp_path, lucchi_crop):
    """On 5 nm voxels `evaluate_model` chooses the 2D model's post-processing for three planes too, on the
    validation split predicted along them with TTA, beside its own choice (`train.choose_postprocessing`)."""
    raw, mask = lucchi_crop
    bench = cmp.Benchmark("ca1-crop", "a CA1 crop", raw[:16, :128], mask[:16, :128], raw[16:, :128], mask[16:, :128],
                          (5.0, 5.0, 5.0))
    cfg = cmp.configs("quick", 3, None, bench.voxel_size, changes={**TINY, "iterations_per_epoch": 12, "lr": 2e-3})[0]
    run = tmp_path / "run"  # trained enough that the planes' predictions, and so their candidates' IoU, differ
    train(cfg, bench.train_image, bench.train_mask, run, progress=False, postprocessing=False)
    cmp.evaluate_model(run, bench, progress=False)
    own, three = (json.loads((run / f).read_text()) for f in (postprocess.FILE, "postprocessing_planes3.json"))
    assert own["probabilities"] == three["probabilities"] == "tta"
    model, config = load_model(run, planes=3)
    _, val = split(bench.train_image, bench.train_mask, cfg.val_fraction, io.intensity_range(bench.train_image))
    probs = val.scored(predict.predict_array(model, val.image, 2, predict.default_tile(2, val.image.shape, config.tile,
                                                                                       3),
                                             config.overlap, val.window, tta=True, amp=config.amp))
    pp, candidates = postprocess.choose(predict.to_storage(probs, "uint8"), val.mask)
    assert three["chosen"] == pp.as_dict() and three["candidates"] == candidates != own["candidates"]


def test_compare_resumes_an_interrupted_run(tmp_path, tiny_bench, monkeypatch, capsys):
    """Ctrl-C in the 3D model's second epoch, after the 2D model was finished: `compare --resume` keeps the 2D
    row, continues the 3D training from its epoch-1 checkpoint (not from the start) and finishes the report;
    other settings than the interrupted run's are refused, naming them."""
    from mitoseg import train as training

    out = tmp_path / "report"
    real = training.validate
    three_d = dies_on_call(real, 3)  # 3D epoch 1: validation, monitor; epoch 2: dies validating

    def validate(model, val, config, device):
        return (three_d if config.dims == 3 else real)(model, val, config, device)

    monkeypatch.setattr(training, "validate", validate)
    with pytest.raises(KeyboardInterrupt):
        cmp.compare(out, preset="quick", epochs=2, changes=TINY, progress=False, monitor=True)
    monkeypatch.setattr(training, "validate", real)
    tmp = cmp.io.partial_path(out)
    left = json.loads((tmp / "compare.json").read_text())
    assert list(left["models"]) == ["2D"] and (tmp / "model_3D" / "last.pt").exists()
    assert [c["data"] for c in left["configs"]] == ["real Drosophila crop"] * 2  # each run records what it learned
    epoch1 = read_log(tmp / "model_3D")
    assert [r["epoch"] for r in epoch1] == [1]
    with pytest.raises(MitosegError, match="holds an interrupted compare: add --resume to go on with it"):
        cmp.compare(out, preset="quick", epochs=2, changes=TINY, progress=False, monitor=True)  # before: deleted it
    with pytest.raises(MitosegError, match="other settings .*epochs 2 then, 3 now.*start again with --overwrite"):
        cmp.compare(out, preset="quick", epochs=3, changes=TINY, progress=False, monitor=True, resume=True)
    other = dict(TINY, patch_xy=32, tile_xy=32, lr=2e-3, weight_decay=0.5)  # 4 fields x 2 configs
    with pytest.raises(MitosegError, match=r"other settings \(2D .*; and 5 more\)") as e:
        cmp.compare(out, preset="quick", epochs=2, changes=other, progress=False, monitor=True, resume=True)
    assert len(str(e.value)) < 400  # the first differences, not every one
    other_data = dataclasses.replace(tiny_bench, name="other-crop")
    monkeypatch.setattr(cmp, "load_benchmark", lambda *a, **k: other_data)
    with pytest.raises(MitosegError, match=r"other settings \(data name 'drosophila-crop' then, 'other-crop' now\)"):
        cmp.compare(out, preset="quick", epochs=2, changes=TINY, progress=False, monitor=True, resume=True)
    monkeypatch.setattr(cmp, "load_benchmark", lambda *a, **k: tiny_bench)  # before: both data records in full

    trained = []

    def train(cfg, *a, **k):
        trained.append((cfg.dims, k["resume"]))
        return training.train(cfg, *a, **k)

    monkeypatch.setattr(cmp, "train", train)
    capsys.readouterr()
    results = cmp.compare(out, preset="quick", epochs=2, changes=TINY, progress=False, monitor=True, resume=True)
    assert trained == [(3, True)]  # the 2D model kept, the 3D model's training continued
    said = capsys.readouterr().out
    assert "2D finished, kept, 3D from its last checkpoint, epoch 1 of 2 (epochs after it are trained again)" in said
    assert said.rstrip().endswith(f"report: {out / 'report.md'} (its figures, tables and models beside it)")
    assert results["models"]["2D"] == left["models"]["2D"]
    assert results["models"]["3D"]["epochs"] == 2 and results["models"]["3D"]["iterations"] == 4
    log = read_log(out / "model_3D")
    assert [r["epoch"] for r in log] == [1, 2] and log[0] == epoch1[0]
    assert set(results["ensemble"]["variants"]) == {"raw", "post"} and not tmp.exists()
    md = (out / "report.md").read_text()
    assert len(results["resumed"]) == 1 and "Interrupted and resumed on" in md
    assert "Train (8, 128, 128), test (8, 128, 128) voxels" in md and "(50.0, 4.6, 4.6) nm" in md  # not as lists
    with pytest.raises(MitosegError, match="report is finished: nothing to resume"):  # before: "pass --overwrite",
        cmp.compare(out, preset="quick", epochs=2, changes=TINY, progress=False, resume=True)  # which ran it all again
    (tmp_path / "empty").mkdir()  # a folder that holds no report is not "finished"
    with pytest.raises(MitosegError, match="empty already exists"):
        cmp.compare(tmp_path / "empty", preset="quick", epochs=2, changes=TINY, progress=False, resume=True)


def test_compare_resume_keeps_what_an_interrupted_evaluation_predicted(tmp_path, tiny_bench, monkeypatch, capsys):
    """Ctrl-C in the 3D model's evaluation, as its third prediction (the test volume with TTA) starts:
    `compare --resume` trains nothing again, keeps the validation and raw test probabilities (and the seconds
    they took) and predicts the TTA ones alone; its scores are those of the probabilities it saved."""
    from pathlib import Path

    from mitoseg import train as training

    out = tmp_path / "report"
    real = cmp.predict_volume
    monkeypatch.setattr(cmp, "predict_volume", dies_on_call(real, 6))  # 2D: calls 1-3, 3D: 4-6
    with pytest.raises(KeyboardInterrupt):
        cmp.compare(out, preset="quick", epochs=1, changes=TINY, progress=False, tta=True, monitor=False)
    three = cmp.io.partial_path(out) / "model_3D"
    assert (three / "test_probs.zarr").exists() and not (three / "test_probs_tta.zarr").exists()
    kept = {name: (three / name / "zarr.json").stat().st_mtime_ns for name in ("val_probs.zarr", "test_probs.zarr")}
    seconds = cmp.io.open_volume(three / "test_probs.zarr").attrs["seconds"]["wall"]
    log = [(r["epoch"], r["loss"]) for r in read_log(three)]
    predicted, trained = [], []
    monkeypatch.setattr(cmp, "predict_volume", lambda m, i, path, *a, **k: predicted.append(Path(path).name)
                        or real(m, i, path, *a, **k))
    monkeypatch.setattr(cmp, "train", lambda cfg, *a, **k: trained.append(cfg.dims) or training.train(cfg, *a, **k))
    capsys.readouterr()
    results = cmp.compare(out, preset="quick", epochs=1, changes=TINY, progress=False, tta=True, monitor=False,
                          resume=True)
    assert predicted == ["test_probs_tta.zarr"] and trained == [3]
    assert "2D finished, kept, 3D trained, evaluated now" in capsys.readouterr().out  # not "from its last checkpoint"
    assert [(r["epoch"], r["loss"]) for r in read_log(out / "model_3D")] == log  # nothing trained again
    assert {name: (out / "model_3D" / name / "zarr.json").stat().st_mtime_ns for name in kept} == kept
    assert results["models"]["3D"]["inference_seconds"] == seconds
    again = cmp.evaluate_probabilities(out / "model_3D", tiny_bench)  # the kept and the new probabilities, scored
    assert again["variants"] == results["models"]["3D"]["variants"]


def test_configs_differ_only_in_dims():
    for preset in ("quick", "cpu", "full"):
        c2, c3 = cmp.configs(preset, epochs=5, minutes=None, voxel_size=(5, 5, 5))
        a, b = dict(c2.__dict__), dict(c3.__dict__)
        assert a.pop("dims") == 2 and b.pop("dims") == 3
        assert a == b
    c2, _ = cmp.configs("quick", epochs=None, minutes=2.5, voxel_size=(5, 5, 5))
    assert c2.minutes == 2.5
    with pytest.raises(MitosegError):
        cmp.configs("huge", None, None, (5, 5, 5))


def test_patch_depth_needs_no_padding():
    assert cmp.patch_depth(165, (5, 5, 5)) == 32  # CA1: 32 slices, the isotropic encoder's stride
    assert cmp.patch_depth(20, (50, 4.6, 4.6)) == 20  # 20 ssTEM sections: a multiple of the Z stride 4
    assert cmp.patch_depth(18, (50, 4.6, 4.6)) == 16
    c2, c3 = cmp.configs("cpu", None, None, (50, 4.6, 4.6), slices=20)
    assert c2.patch_z == c3.patch_z == 20


def test_ca1_is_found_and_named_by_provenance(lucchi_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("MITOSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MITOSEG_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    found = datasets.lucchi_dir(None)
    assert found is not None and found[1] == datasets.DERIVED
    assert "per-slice stretched" in datasets.DERIVED and "polygon-filled" in datasets.DERIVED
    assert "/" not in datasets.DERIVED
    # a folder of the user's own: named as given, not as "the EPFL files" (before: any folder was)
    (tmp_path / "mycopy").mkdir()
    for name in ("training.tif", "training_groundtruth.tif", "testing.tif", "testing_groundtruth.tif"):
        (tmp_path / "mycopy" / name).symlink_to(found[0] / name)
    mine = datasets.lucchi_dir(tmp_path / "mycopy")
    assert mine is not None and mine[1].endswith("the files of the folder mycopy (their source not checked)")
    assert "EPFL files" not in mine[1] and "/" not in mine[1]


def test_benchmark_falls_back_to_drosophila(droso_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("MITOSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cmp.download, "data_dir", lambda *a, **k: None)
    bench = cmp.load_benchmark("auto")
    assert bench.name == "drosophila"
    assert bench.train_image.shape == bench.test_image.shape == (20, 1024, 512)
    assert 0.02 < bench.test_mask.mean() < 0.1
    with pytest.raises(MitosegError, match="mitoseg data fetch"):
        cmp.load_benchmark("lucchi")


def test_object_f1_scores_every_post_processing_against_the_same_true_objects(lucchi_crop):
    """A mask without the truth's small objects (as a minimum size removes them) is scored against every true
    object: it misses those, whatever minimum size it was made with (the truth was filtered with it before)."""
    from mitoseg import instances

    truth = lucchi_crop[1]
    sizes = np.bincount(instances.label(truth, 26).ravel())[1:]
    cut = int(np.sort(sizes)[1]) + 1  # the two smallest true objects go
    mask = (instances.label(truth, 26, min_size=cut) > 0).astype(np.uint8)
    every, cut_row = cmp._scores(mask, truth, 0), cmp._scores(mask, truth, cut)
    assert every["objects_true"] == cut_row["objects_true"] == len(sizes) > 2
    assert cut_row["objects_predicted"] == len(sizes) - 2
    assert cut_row["object_f1_iou50"] == pytest.approx(2 * (len(sizes) - 2) / (2 * len(sizes) - 2))


def test_a_compare_begun_before_the_validation_margin_is_evaluated_again(tmp_path, tiny_bench):
    """A model folder whose validation probabilities were predicted without the 64 columns of context (a compare
    begun before 2026-12-07): scoring them is refused in one line (before: a shape error, or a traceback where a kept
    model met a new one), `stale_validation` tells it, so `compare --resume` evaluates such a model again; and such a
    compare on a user's CA1 folder, then called "the EPFL files", resumes under today's wording."""
    _, val = split(tiny_bench.train_image, tiny_bench.train_mask, 0.15)
    folder = tmp_path / "model_2D"
    zarr.create_array(str(folder / "val_probs.zarr"), data=np.zeros(val.mask.shape, np.uint8))  # the strip alone
    assert cmp.stale_validation(folder, val) and not cmp.stale_validation(tmp_path / "none", val)
    with pytest.raises(MitosegError, match="val_probs.zarr was predicted before validation took 64 columns"):
        cmp.evaluate_probabilities(folder, tiny_bench, False, 0.15)
    new = f"{datasets.CA1}, the files of the folder myca1 (their source not checked)"
    job = {"data": {"name": "lucchi", "description": datasets.ORIGINAL}, "preset": "quick",
           "configs": [{"dims": 2, "data": datasets.ORIGINAL}], "tta": True, "monitor": False, "models": {}}
    (tmp_path / "compare.json").write_text(json.dumps(job))
    fresh = json.loads(json.dumps(job).replace(datasets.ORIGINAL, new))
    assert cmp.resumed(tmp_path, {**fresh, "machine": "here"})["data"]["description"] == new


def test_a_prediction_of_nothing_is_said_beside_its_precision():
    """A 3D model whose probabilities never reach 0.5 (a 1-minute Drosophila run): its raw row's precision, 0 / 0
    taken as 1, says "nothing predicted" (before: 1.0000 alone, read as a perfect prediction); one minute is
    singular."""
    empty = {**metrics.scores(metrics.Counts(0, 0, 500, 9500)), "object_f1_iou50": 0.0}
    some = {**metrics.scores(metrics.Counts(400, 100, 100, 9400)), "object_f1_iou50": 0.5}
    table = cmp.variants_markdown({"models": {"3D": {"variants": {"raw": empty, "tta_post": some}}}})
    raw, post = table.splitlines()[2:]
    assert "| 3D | raw (threshold 0.5) | 0.0000 | 0.0000 | 1.0000 (nothing predicted) | 0.0000 |" in raw
    assert "nothing predicted" not in post
    assert cmp._budget_words({"budget": {"minutes_per_model": 1.0, "epochs": 1000}}) == (
        "1000 epochs or 1 minute per model, whichever comes first")
