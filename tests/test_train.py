import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mitoseg import data, io, metrics, postprocess, predict
from mitoseg import train as tr
from mitoseg.config import Config
from mitoseg.errors import MitosegError


def tiny(dims: int, **kw) -> Config:
    base = dict(dims=dims, patch_xy=64, patch_z=8, batch=1, epochs=2, iterations_per_epoch=3, warmup_iterations=2,
                tile_xy=64, tile_z=8, overlap=0.25, val_fraction=0.25)
    base.update(kw)
    return Config(**base)


@pytest.fixture(scope="module")
def small(droso_crop):
    raw, mask = droso_crop
    return raw[:8, :128, :128].copy(), mask[:8, :128, :128].copy()


@pytest.mark.parametrize("dims", [2, 3])
def test_run_folder_holds_everything(tmp_path, small, dims):
    summary = tr.train(tiny(dims), *small, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("config.json", "versions.json", "log.csv", "summary.json", "last.pt", "best.pt"):
        assert (run / name).exists(), name
    rows = tr.read_log(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["iterations"] == 3 and r["epoch_seconds"] > 0 and 0 <= r["val_dice"] <= 1 for r in rows)
    assert summary["epochs"] == 2 and summary["iterations"] == 6
    assert Config.load(run / "config.json") == tiny(dims)
    assert {"torch", "mitoseg"} <= set(json.loads((run / "versions.json").read_text()))
    model, cfg = tr.load_model(run)
    assert cfg.dims == dims and not model.training
    # the training volume's window and histogram travel with the model (for predict --match-training)
    assert model.intensity == {"window": io.intensity_range(small[0]), "reference": io.reference_levels(small[0])}


@pytest.mark.parametrize("dims", [2, 3])
def test_loader_workers_give_batches_like_the_inline_path_and_repeat(tmp_path, small, dims):
    """Batches made by worker processes (as beside a GPU) have the inline batches' shapes, layout and
    value ranges, and a run with the same number of workers repeats exactly."""
    cfg = tiny(dims, loader_workers=2)
    vol = data.Volume(*small, io.intensity_range(small[0]))
    sampler = data.PatchSampler(vol, cfg.patch, cfg.fg_fraction, np.random.default_rng(0))
    stream = tr.batch_stream(sampler, cfg, torch.device("cpu"), 0, 2)
    x, y = next(stream)
    del stream
    ref_x, ref_y = tr._batch(sampler, data.augmenter(0, dims), cfg, torch.device("cpu"))
    assert x.shape == ref_x.shape and y.shape == ref_y.shape and x.dtype == ref_x.dtype
    assert x.is_contiguous(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0} and float(x.std()) > 0
    if dims == 2:  # bf16 3D convolution's backward on CPU is not repeatable from run to run: 2D only
        tr.train(cfg, *small, tmp_path / "a", progress=False)
        tr.train(cfg, *small, tmp_path / "b", progress=False)
        assert [r["loss"] for r in tr.read_log(tmp_path / "a")] == [r["loss"] for r in tr.read_log(tmp_path / "b")]
    assert tr.loader_workers(tiny(dims), torch.device("cpu")) == 0


def test_helpers_beside_a_gpu_follow_the_cores_this_process_may_use(monkeypatch):
    """Batch-preparing processes (training) and blocks in flight (prediction) beside a GPU are sized by the
    cores of this process's share (a batch job's), not the machine's; beside a CPU there are none / one."""
    for cores, workers, depth in ((16, 12, 4), (6, 4, 1), (2, 0, 1)):
        monkeypatch.setattr(metrics, "cores", lambda n=cores: n)
        assert tr.loader_workers(tiny(2), torch.device("cuda")) == workers
        assert predict.pipeline_depth(torch.device("cuda")) == depth
        assert tr.loader_workers(tiny(2), torch.device("cpu")) == 0 and predict.pipeline_depth(torch.device("cpu")) == 1


def test_a_checkpoint_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    """torch.save on a full disk raises RuntimeError ("unexpected pos ..."), which was a traceback: now one line naming
    the checkpoint, and nothing half-written is left under its name."""
    def full(obj, path):
        Path(path).write_bytes(b"PK")  # the first bytes made it
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 948160 vs 948056")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(MitosegError, match=r"best.pt could not be written \(\[enforce fail .*\): a full disk\?"):
        tr._save({}, tmp_path / "best.pt")
    assert list(tmp_path.iterdir()) == []


def _killed_after_first_checkpoint(cfg: Config, small, out, monkeypatch) -> None:
    """Train until the first last.pt is written, then stop there as if killed."""
    real = tr._save

    def save_then_die(obj, path):
        real(obj, path)
        if path.name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(tr, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        tr.train(cfg, *small, out, progress=False)
    monkeypatch.setattr(tr, "_save", real)


def test_resume_continues_exactly(tmp_path, small, monkeypatch):
    """Killed after epoch 1 and resumed, a run ends with the same weights as an uninterrupted one; resumed with
    a config that leaves out its annotated slices, it trains on with the saved ones (not every slice's labels)."""
    cfg = tiny(2, annotated_slices="0,3-4")
    tr.train(cfg, *small, tmp_path / "a", progress=False)
    _killed_after_first_checkpoint(cfg, small, tmp_path / "b", monkeypatch)
    assert len(tr.read_log(tmp_path / "b")) == 1
    tr.train(tiny(2), *small, tmp_path / "b", resume=True, progress=False)
    assert Config.load(tmp_path / "b" / "config.json") == cfg
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    assert len(tr.read_log(tmp_path / "b")) == 2
    tr.check_resume(tmp_path / "b", {"annotated_slices": "0,3,4"})  # the same slices, written otherwise
    with pytest.raises(MitosegError, match=r"annotated-slices \(saved 0,3-4, given 0,3\)"):
        tr.check_resume(tmp_path / "b", {"annotated_slices": "0,3"})
    # resumed with another image or other labels of the same shape: refused (before: its epochs mixed two data sets)
    raw, mask = small
    with pytest.raises(MitosegError, match="was trained on another image"):
        tr.train(tiny(2), raw[:, ::-1].copy(), mask, tmp_path / "b", resume=True, progress=False)
    with pytest.raises(MitosegError, match="was trained on other labels"):
        tr.train(tiny(2), raw, mask[:, ::-1].copy(), tmp_path / "b", resume=True, progress=False)
    edited = mask.copy()
    edited[3] = 1 - edited[3]  # an annotated slice but the first, middle and last (before: not looked at)
    with pytest.raises(MitosegError, match="was trained on other labels"):
        tr.train(tiny(2), raw, edited, tmp_path / "b", resume=True, progress=False)


def test_a_run_interrupted_while_choosing_its_post_processing_chooses_it_when_resumed(tmp_path, small, capsys):
    """Stopped after its training, in the post-processing choice (no postprocessing.json: `predict --mask` would
    have fallen back to 0.5), a run resumed makes the same choice and trains no further."""
    tr.train(tiny(2), *small, tmp_path / "a", progress=False)
    chosen, weights = (tmp_path / "a" / postprocess.FILE).read_text(), (tmp_path / "a" / "last.pt").read_bytes()
    (tmp_path / "a" / postprocess.FILE).unlink()
    tr.train(tiny(2), *small, tmp_path / "a", resume=True, progress=False)
    assert (tmp_path / "a" / postprocess.FILE).read_text() == chosen
    tr.train(tiny(2), *small, tmp_path / "a", resume=True, progress=False)  # said (before: nothing said)
    assert "a finished training earlier: nothing to resume" in capsys.readouterr().err
    assert (tmp_path / "a" / "last.pt").read_bytes() == weights


def test_adamw_is_fused_and_resumes_a_checkpoint_of_the_unfused_one(tmp_path, small, monkeypatch):
    """Training updates with the fused AdamW; a run killed with a checkpoint of torch's default AdamW (as
    saved before 2026-12-05) resumes fused and ends with the uninterrupted run's weights, to float32 rounding."""
    model = tr.build_model(tiny(2))
    assert tr.adamw(model, tiny(2), torch.device("cpu")).defaults["fused"] is True
    tr.train(tiny(2), *small, tmp_path / "a", progress=False)
    _killed_after_first_checkpoint(tiny(2), small, tmp_path / "b", monkeypatch)
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert all(g["fused"] is True for g in ckpt["optimizer"]["param_groups"])
    for group in ckpt["optimizer"]["param_groups"]:
        group["fused"] = None  # what the default AdamW saved
    torch.save(ckpt, tmp_path / "b" / "last.pt")
    real, made = tr.adamw, []
    monkeypatch.setattr(tr, "adamw", lambda *args: made.append(real(*args)) or made[-1])
    tr.train(tiny(2), *small, tmp_path / "b", resume=True, progress=False)
    assert [g["fused"] for g in made[0].param_groups] == [True]
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_resume_after_the_batchnorm_freeze_keeps_the_frozen_statistics(tmp_path, small, monkeypatch):
    """Frozen in epoch 1 (bn_freeze), killed after it and resumed, a run ends with the weights and the
    statistics of an uninterrupted one: the resumed run neither re-estimates nor updates them."""
    monkeypatch.setattr(tr, "FREEZE_BATCHES", 2)
    cfg = tiny(2, bn_freeze=1)
    tr.train(cfg, *small, tmp_path / "a", progress=False)
    _killed_after_first_checkpoint(cfg, small, tmp_path / "b", monkeypatch)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["state"]["bn_frozen"]
    tr.train(cfg, *small, tmp_path / "b", resume=True, progress=False)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    assert {int(v) for k, v in b.items() if k.endswith("num_batches_tracked")} == {2}
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_ema_weights_are_the_average_kept_and_resumed(tmp_path, small, monkeypatch):
    """With `ema` the delivered weights (best.pt, the finished last.pt) are the exponential moving average
    of every step's weights; their BatchNorm statistics are re-estimated for the averaged weights (not the
    average of statistics taken under other weights); a run killed after epoch 1 and resumed ends with the
    same model as an uninterrupted one."""
    cfg, decay, steps, recalibrated = tiny(2, ema=0.6, epochs=2), 0.6, [], []
    real_averaged, real_recalibrate = tr.averaged, tr.recalibrate_batchnorm

    def recording(model, d):
        ema = real_averaged(model, d)
        update = ema.update_parameters
        ema.update_parameters = lambda m: (steps.append(_copy_state(m)), update(m))
        return ema

    def recalibrate(model, *args, **kw):
        real_recalibrate(model, *args, **kw)
        recalibrated.append((args[4], _copy_state(model)))

    monkeypatch.setattr(tr, "averaged", recording)
    monkeypatch.setattr(tr, "recalibrate_batchnorm", recalibrate)
    tr.train(cfg, *small, tmp_path / "a", progress=False)
    assert len(steps) == 6
    stats = [k for k in steps[0] if "running_" in k]
    expected = dict(steps[0])
    for state in steps[1:]:
        expected = {k: decay * v + (1 - decay) * state[k] if v.is_floating_point() else v for k, v in expected.items()}
    delivered = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    raw_last = steps[-1]
    for k, v in expected.items():
        if v.is_floating_point() and k not in stats:
            torch.testing.assert_close(delivered[k], v, msg=k)
    assert any(not torch.equal(delivered[k], raw_last[k]) for k in expected if k.endswith("weight"))
    batches, last = recalibrated[-1]
    assert batches == tr.EMA_BN_BATCHES and all(torch.equal(last[k], delivered[k]) for k in delivered)
    assert not any(torch.allclose(delivered[k], expected[k]) for k in stats if "running_mean" in k)
    best = torch.load(tmp_path / "a" / "best.pt", weights_only=False)
    if best["state"]["epoch"] == 2:
        assert all(torch.equal(best["model"][k], delivered[k]) for k in delivered)

    monkeypatch.setattr(tr, "averaged", real_averaged)
    monkeypatch.setattr(tr, "recalibrate_batchnorm", real_recalibrate)
    _killed_after_first_checkpoint(cfg, small, tmp_path / "b", monkeypatch)
    assert "ema" in torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    tr.train(cfg, *small, tmp_path / "b", resume=True, progress=False)
    resumed = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    for k in delivered:
        torch.testing.assert_close(resumed[k], delivered[k], msg=k)


def _copy_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_learns_on_real_data(tmp_path, droso_crop):
    """A few dozen iterations on real EM already separate mitochondria better than chance."""
    raw, mask = droso_crop
    cfg = tiny(2, patch_z=4, epochs=3, iterations_per_epoch=12, lr=2e-3, tile_xy=128, val_fraction=0.3,
               voxel_size=(50.0, 4.6, 4.6))
    tr.train(cfg, raw[:6], mask[:6], tmp_path / "run", progress=False)
    rows = tr.read_log(tmp_path / "run")
    assert rows[-1]["loss"] < rows[0]["loss"]
    # post-processing chosen along XY only: 50 nm sections are not sliced along three planes
    assert postprocess.read(tmp_path / "run") is not None and postprocess.read(tmp_path / "run", 3) is None
    assert max(r["val_dice"] for r in rows) > 2 * mask.mean()  # better than predicting everything foreground
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=False)["state"]
    assert best["best_iou"] == max(r["val_iou_best"] for r in rows)  # best.pt: best validation IoU at any threshold
    assert all(r["val_iou_best"] >= r["val_iou"] for r in rows)  # 0.5 is one of the thresholds tried


def test_learns_on_a_ca1_crop(tmp_path, lucchi_crop):
    raw, mask = lucchi_crop
    cfg = tiny(2, patch_z=4, epochs=3, iterations_per_epoch=12, lr=2e-3, tile_xy=128, val_fraction=0.3,
               voxel_size=(5, 5, 5))
    tr.train(cfg, raw[:8], mask[:8], tmp_path / "run", progress=False)
    rows = tr.read_log(tmp_path / "run")
    assert max(r["val_iou"] for r in rows) > 2 * mask[:8].mean()
    # the post-processing `predict` applies: chosen on the validation split, predicted by the delivered model
    chosen = json.loads((tmp_path / "run" / "postprocessing.json").read_text())
    model, _ = tr.load_model(tmp_path / "run")
    _, val = data.split(raw[:8], mask[:8], cfg.val_fraction, io.intensity_range(raw[:8]))
    probs = val.scored(predict.predict_array(model, val.image, 2, predict.default_tile(2, val.image.shape, cfg.tile),
                                             cfg.overlap, val.window, amp=cfg.amp))
    pp, candidates = postprocess.choose(predict.to_storage(probs, "uint8"), val.mask)
    assert (chosen["chosen"], chosen["probabilities"]) == (pp.as_dict(), "raw") and chosen["candidates"] == candidates
    # and for predicting along three planes (5 nm voxels), on the split predicted so, kept apart
    three = json.loads((tmp_path / "run" / "postprocessing_planes3.json").read_text())
    model, _ = tr.load_model(tmp_path / "run", planes=3)
    tile3 = predict.default_tile(2, val.image.shape, cfg.tile, 3)
    probs3 = val.scored(predict.predict_array(model, val.image, 2, tile3, cfg.overlap, val.window, amp=cfg.amp))
    assert np.abs(probs3 - probs).max() > 0.01  # another prediction
    pp3, candidates3 = postprocess.choose(predict.to_storage(probs3, "uint8"), val.mask)
    assert three["chosen"] == pp3.as_dict() and three["candidates"] == candidates3 != candidates
    assert postprocess.read(tmp_path / "run", 3) == pp3 and postprocess.read(tmp_path / "run", 1) == pp


def test_a_2d_model_learns_from_each_slice_between_its_neighbours(tmp_path, lucchi_crop):
    """`context_slices` 1: batches hold each slice's neighbours as channels and the middle slice's labels; the
    run saves and reloads a model that takes them, and it learns on a CA1 crop."""
    raw, mask = lucchi_crop
    cfg = tiny(2, patch_z=4, epochs=4, iterations_per_epoch=16, lr=2e-3, tile_xy=128, val_fraction=0.3,
               voxel_size=(5, 5, 5), context_slices=1)  # 0.48-0.57 in four seeds; 36 iterations were not enough
    sampler = data.PatchSampler(data.Volume(raw, mask, io.intensity_range(raw)), cfg.patch, 1.0,
                                np.random.default_rng(0), context=1)
    patches = sampler.sample(4)
    x, y = tr._as_input(cfg, *patches)
    assert x.shape == (4, 3, 64, 64) and y.shape == (4, 1, 64, 64)
    assert np.array_equal(x, patches[0][:, 0]) and np.array_equal(y, patches[1][:, :, 0])
    tr.train(cfg, raw[:8], mask[:8], tmp_path / "run", progress=False)
    model, saved = tr.load_model(tmp_path / "run")
    assert saved.context_slices == model.context == 1 and model.net.encoder.conv1.in_channels == 3
    assert max(r["val_iou"] for r in tr.read_log(tmp_path / "run")) > 2 * mask[:8].mean()


def test_3d_model_learns_on_a_thin_anisotropic_stack(tmp_path, droso_crop):
    """50 nm sections, 4.6 nm pixels: the encoder halves Z twice, not five times, and the model learns."""
    raw, mask = droso_crop
    # float32: bf16 3D does not repeat. lr 2e-3: at 3e-3 a Xeon (AVX512 kernels) reached 0.078 against the 0.080
    # asked, at 2e-3 0.138
    cfg = tiny(3, patch_z=8, tile_z=8, epochs=4, iterations_per_epoch=25, lr=2e-3, tile_xy=128, val_fraction=0.3,
               voxel_size=(50, 4.6, 4.6), warmup_iterations=5, amp=False)
    tr.train(cfg, raw[:8], mask[:8], tmp_path / "run", progress=False)
    rows = tr.read_log(tmp_path / "run")
    assert max(r["val_iou"] for r in rows) > 2 * mask[:8].mean(), [r["val_iou"] for r in rows]


def _nan_loss_on(monkeypatch, bad_calls):
    """Make the training loss NaN on the calls for which `bad_calls(call_number)` is true."""
    real, calls = tr.masked_loss, [0]

    def sometimes_nan(logits, labels, boundary=0.0):
        calls[0] += 1
        loss = real(logits, labels, boundary)
        return loss * float("nan") if bad_calls(calls[0]) else loss

    monkeypatch.setattr(tr, "masked_loss", sometimes_nan)


def test_checkpoints_written_seconds_apart_resume_the_unsaved_epochs(tmp_path, small, monkeypatch):
    """With checkpoints further apart than epochs (as on a GPU), best.pt still holds the best epoch, and a
    run killed two epochs after its last checkpoint resumes from it, trains those epochs again (the log
    keeps one row each) and ends with the uninterrupted run's weights."""
    monkeypatch.setattr(tr, "CHECKPOINT_SECONDS", 1e9)  # after epoch 1 and at the end only
    cfg = tiny(2, epochs=3)
    tr.train(cfg, *small, tmp_path / "a", progress=False)
    best_epoch, best_iou = 0, -1.0
    for row in tr.read_log(tmp_path / "a"):  # train's rule: a higher IoU, or the latest while it is 0
        if row["val_iou_best"] > best_iou or best_iou <= 0:
            best_epoch, best_iou = row["epoch"], row["val_iou_best"]
    assert torch.load(tmp_path / "a" / "best.pt", weights_only=False)["state"]["epoch"] == best_epoch

    real, calls = tr.validate, []

    def killed_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # validation and monitor per epoch: the 5th call is epoch 3's validation
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tr, "validate", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        tr.train(cfg, *small, tmp_path / "b", progress=False)
    monkeypatch.setattr(tr, "validate", real)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["state"]["epoch"] == 1
    assert len(tr.read_log(tmp_path / "b")) == 2
    tr.train(cfg, *small, tmp_path / "b", resume=True, progress=False)
    assert [r["epoch"] for r in tr.read_log(tmp_path / "b")] == [1, 2, 3]
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_a_resume_says_from_where_and_refuses_another_image_and_damaged_files(tmp_path, small, monkeypatch, capsys):
    """Ctrl-C's line names the epoch of the last checkpoint (before: "the last finished epoch", which resume trains
    again); an image edited in one slice but its first, middle and last is refused (before: trained on silently);
    a damaged last.pt, config.json or annotation.json is one line (before: tracebacks), a log row cut by a kill is
    left out (before: a TypeError), and the resumed run says from where it goes on."""
    monkeypatch.setattr(tr, "CHECKPOINT_SECONDS", 1e9)  # after epoch 1 and at the end only
    raw, mask = small
    real = tr.validate
    calls = []

    def killed_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tr, "validate", killed_in_epoch_3)
    run = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        tr.train(tiny(2, epochs=3), raw, mask, run, progress=False)
    monkeypatch.setattr(tr, "validate", real)
    assert tr.going_on_from(run) == "to go on from its last checkpoint, epoch 1 of 3 (epochs after it are trained " \
                                    "again)"
    import argparse

    from mitoseg.cli import _after_interrupt

    assert _after_interrupt(argparse.Namespace(command="train", out=run)) == \
        f"run the same command with --resume {tr.going_on_from(run)}"
    edited = raw.copy()
    edited[2] = 255 - edited[2]  # not the first, middle or last slice of 8
    with pytest.raises(MitosegError, match="was trained on another image"):
        tr.train(tiny(2, epochs=3), edited, mask, run, resume=True, progress=False)
    for name, cut in (("last.pt", 1000), ("config.json", 100), ("annotation.json", 50)):
        shutil.copytree(run, tmp_path / name)
        whole = (run / name).read_bytes()
        (tmp_path / name / name).write_bytes(whole[:cut])
        with pytest.raises(MitosegError, match=f"{name} is damaged"):
            tr.train(tiny(2, epochs=3), raw, mask, tmp_path / name, resume=True, progress=False)
    with open(run / "log.csv", "a") as f:
        f.write("3,3,1.1")  # a row a kill cut while it was appended
    assert [r["epoch"] for r in tr.read_log(run)] == [1, 2]
    capsys.readouterr()
    tr.train(tiny(2, epochs=3), raw, mask, run, resume=True)
    assert f"{run}: going on from epoch 1 of 3 (last.pt)" in capsys.readouterr().out
    assert [r["epoch"] for r in tr.read_log(run)] == [1, 2, 3]
    assert tr.going_on_from(run) == "to choose the post-processing (training had finished)"
    (run / "postprocessing.json").write_text('{"chosen": {"thresh')
    with pytest.raises(MitosegError, match="postprocessing.json is damaged"):
        postprocess.read(run)


def test_3d_training_keeps_bf16_to_the_patches_measured_on_a_cpu(capsys):
    """oneDNN's bf16 backward stalls for minutes a step on the full preset's 3D patch, on voxels finer along Z and on
    2 to 4 ssTEM sections (benchmarks/bench_bf16_3d.py): those train in float32 on a CPU of native bf16, said in a
    note; the presets' patches keep bf16; a 2D model and --fp32 are as they were."""
    from mitoseg.config import PRESETS
    from mitoseg.models import bf16_native

    cpu = torch.device("cpu")
    native = bf16_native(cpu)
    for cfg in (PRESETS["cpu"](3), PRESETS["quick"](3, voxel_size=(50.0, 4.6, 4.6)), PRESETS["full"](2)):
        assert tr.training_amp(cfg, cpu) is True
    assert capsys.readouterr().err == ""
    # a patch of 2 to 4 ssTEM sections (padded to 4 slices) stalled in bf16; 2 slices on 5 nm voxels (padded to 32) not
    assert tr.training_amp(PRESETS["quick"](3, voxel_size=(5.0, 5.0, 5.0), patch_z=2), cpu) is True
    assert tr.training_amp(PRESETS["quick"](3, voxel_size=(50.0, 4.6, 4.6), patch_z=8), cpu) is True
    assert capsys.readouterr().err == ""
    for cfg in (PRESETS["full"](3), PRESETS["cpu"](3, voxel_size=(2.0, 10.0, 10.0)),
                PRESETS["quick"](3, voxel_size=(50.0, 4.6, 4.6), patch_z=3)):
        assert tr.training_amp(cfg, cpu) is (not native)  # where bf16 is not native, autocast is off anyway
        assert ("note: the 3D model trains in float32 on this CPU" in capsys.readouterr().err) is native
    assert tr.training_amp(PRESETS["full"](3, amp=False), cpu) is False


def test_a_non_finite_step_is_skipped_and_logged(tmp_path, small, monkeypatch):
    _nan_loss_on(monkeypatch, lambda call: call == 2)
    summary = tr.train(tiny(2), *small, tmp_path / "run", progress=False)
    rows = tr.read_log(tmp_path / "run")
    assert [r["skipped_steps"] for r in rows] == [1, 0] and summary["skipped_steps"] == 1
    assert all(np.isfinite(r["loss"]) for r in rows)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_finite_loss_with_a_non_finite_gradient_is_not_a_step():
    """sqrt at 0: the loss is 0, its gradient infinite; the step is refused and its gradients dropped."""
    model = torch.nn.Linear(2, 1)
    assert not tr._finite_step(model, torch.sqrt(model.weight * 0).sum())
    assert all(p.grad is None for p in model.parameters())
    assert tr._finite_step(model, (model.weight ** 2).sum())
    assert model.weight.grad is not None
    assert tr._finite_step(model, (model.weight * 1e30).sum())  # large, finite gradients are a step


def test_divergence_stops_with_a_clear_error(tmp_path, small, monkeypatch):
    """Ten non-finite steps in a row end training with MitosegError; the last saved epoch's checkpoint stays."""
    _nan_loss_on(monkeypatch, lambda call: call > 12)
    with pytest.raises(MitosegError, match="diverged .* epoch 2"):
        tr.train(tiny(2, iterations_per_epoch=12), *small, tmp_path / "run", progress=False)
    assert [r["epoch"] for r in tr.read_log(tmp_path / "run")] == [1]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_monitor_volume_is_scored_every_epoch(tmp_path, small, droso_crop):
    raw, mask = droso_crop
    monitor = data.Volume(raw[8:16, 128:, 128:], mask[8:16, 128:, 128:], io.intensity_range(raw))
    tr.train(tiny(2), *small, tmp_path / "run", progress=False, monitor=monitor, postprocessing=False)  # as compare
    rows = tr.read_log(tmp_path / "run")
    assert all(0 <= r["monitor_iou"] <= 1 for r in rows)
    tr.train(tiny(2), *small, tmp_path / "plain", progress=False)
    assert all(np.isnan(r["monitor_iou"]) for r in tr.read_log(tmp_path / "plain"))
    # the post-processing is chosen at the end unless the caller chooses its own
    assert (tmp_path / "plain" / postprocess.FILE).is_file() and not (tmp_path / "run" / postprocess.FILE).exists()


def test_validation_every_nth_epoch_and_always_the_last(tmp_path, small, droso_crop):
    raw, mask = droso_crop
    monitor = data.Volume(raw[:8, -64:, -64:], mask[:8, -64:, -64:], io.intensity_range(raw))
    summary = tr.train(tiny(2, epochs=3, validate_every=2), *small, tmp_path / "run", progress=False,
                       monitor=monitor)
    rows = tr.read_log(tmp_path / "run")
    checked = [np.isfinite(r["val_iou"]) and np.isfinite(r["monitor_iou"]) for r in rows]
    assert checked == [False, True, True]  # epoch 2, and epoch 3 as the last
    assert np.isnan(rows[0]["val_iou_best"]) and np.isfinite(rows[0]["loss"])
    assert summary["best_val_iou"] == max(r["val_iou"] for r in rows[1:])
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=False)["state"]["epoch"]
    assert best in (2, 3)


def test_time_budget_stops(tmp_path, small):
    summary = tr.train(tiny(2, epochs=1000, minutes=0.05), *small, tmp_path / "run", progress=False)
    assert summary["epochs"] < 1000
    assert summary["train_seconds"] < 0.05 * 60 + 10


def test_bad_inputs(tmp_path, small):
    raw, mask = small
    with pytest.raises(MitosegError, match="no foreground"):
        tr.train(tiny(2), raw, np.zeros_like(mask), tmp_path / "r1", progress=False)
    with pytest.raises(MitosegError, match="foreground everywhere"):
        tr.train(tiny(2), raw, np.ones_like(mask), tmp_path / "r1", progress=False)
    with pytest.raises(MitosegError, match="smaller than the patch"):
        tr.train(tiny(3, patch_z=16), raw, mask, tmp_path / "r1", progress=False)
    with pytest.raises(MitosegError, match=r"the training part \(x < 96; the rest validates\) \(8, 128, 96\) is sm"):
        tr.train(tiny(2, patch_xy=128), raw, mask, tmp_path / "r1", progress=False)  # before: later, a shape not given
    with pytest.raises(MitosegError, match="differ in shape"):
        tr.train(tiny(2), raw, mask[:, :64], tmp_path / "r1", progress=False)
    with pytest.raises(MitosegError, match="no checkpoint"):
        tr.train(tiny(2), raw, mask, tmp_path / "r2", resume=True, progress=False)
    (tmp_path / "r3").mkdir()
    (tmp_path / "r3" / "x").write_text("x")
    # a run killed in its first epoch (no checkpoint): neither message sends to the other (before: "or --resume to
    # continue", then "no checkpoint" and nothing more)
    with pytest.raises(MitosegError, match=r"already exists; pass --overwrite to replace it \(it holds no checkpoint"):
        tr.train(tiny(2), raw, mask, tmp_path / "r3", progress=False)
    with pytest.raises(MitosegError, match="r3 holds no checkpoint .* to resume from; --overwrite starts it again"):
        tr.train(tiny(2), raw, mask, tmp_path / "r3", resume=True, progress=False)
    with pytest.raises(MitosegError, match="no trained model"):
        tr.load_model(tmp_path / "r3")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MitosegError, match="not a mitoseg checkpoint"):
        tr.load_model(tmp_path / "bad.pt")


def test_learning_rate_schedule():
    cfg = tiny(2, lr=1.0, warmup_iterations=4)
    assert tr.learning_rate(cfg, 0, 0.0) == pytest.approx(0.25)
    assert tr.learning_rate(cfg, 3, 0.0) == pytest.approx(1.0)
    assert tr.learning_rate(cfg, 10, 0.5) == pytest.approx(0.5)
    assert tr.learning_rate(cfg, 10, 1.0) == pytest.approx(0.0)


def test_epoch_definition():
    cfg = tiny(2, iterations_per_epoch=None, patch_xy=64, patch_z=8, batch=2)
    # 2D: 2 * 8 slices of 64 x 64 per iteration = 65536 voxels; volume 16 x 128 x 256 = 524288 -> 8 iterations
    assert tr.iterations_per_epoch(cfg, (16, 128, 256)) == 8
    cfg3 = tiny(3, iterations_per_epoch=None, patch_xy=64, patch_z=8, batch=2)
    assert tr.iterations_per_epoch(cfg3, (16, 128, 256)) == 8  # same voxels per iteration as 2D


def test_masked_loss_is_dice_ce_where_annotated():
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 32, 32)
    labels = (torch.rand(2, 1, 8, 32, 32) > 0.7).float()
    assert tr.masked_loss(logits, labels).item() == pytest.approx(DiceCELoss(sigmoid=True)(logits, labels).item(),
                                                                  rel=1e-6)
    partial = labels.clone()
    partial[:, :, 4:] = data.IGNORE  # slices 4.. not annotated
    sub = DiceCELoss(sigmoid=True)(logits[:, :, :4], labels[:, :, :4]).item()
    assert tr.masked_loss(logits, partial).item() == pytest.approx(sub, rel=1e-5)
    logits.requires_grad_(True)
    tr.masked_loss(logits, partial).backward()
    assert logits.grad[:, :, 4:].abs().max() == 0 and logits.grad[:, :, :4].abs().max() > 0


@pytest.mark.parametrize("shape", [(2, 1, 24, 20), (1, 1, 3, 24, 20)])
def test_boundary_weight_weighs_the_cross_entropy_near_outlines(shape, lucchi_crop):
    """The band is every pixel whose 5 x 5 in-plane square holds both classes (as binary dilation minus erosion,
    slice by slice), and the loss adds `boundary` times the band's cross-entropy over the annotated voxels."""
    from scipy import ndimage

    torch.manual_seed(0)
    mask = lucchi_crop[1]
    n = int(np.prod(shape[:-2]))
    labels = torch.from_numpy((mask[:n, 48:72, 80:100] > 0).astype(np.float32)).reshape(shape)
    assert 0 < labels.mean() < 1
    band = tr.outline_band(labels).numpy()
    square = np.ones((5, 5), bool)
    for index in np.ndindex(shape[:-2]):
        t = labels.numpy()[index] > 0
        want = ndimage.binary_dilation(t, square) & ~ndimage.binary_erosion(t, square, border_value=1)
        np.testing.assert_array_equal(band[index], want)
    labels[..., :4] = data.IGNORE  # columns 0-3 not annotated
    logits = torch.randn(shape)
    annotated, target = (labels != data.IGNORE).float(), (labels == 1).float()
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    added = 3 * (ce * torch.from_numpy(band) * annotated).sum() / annotated.sum()
    assert added > 0
    assert tr.masked_loss(logits, labels, 3.0).item() == pytest.approx((tr.masked_loss(logits, labels) + added).item(),
                                                                        rel=1e-5)


def test_train_on_a_few_annotated_slices(tmp_path, small, capsys):
    raw, mask = small
    cfg = tiny(3, annotated_slices="0,2-3", epochs=1)  # this crop has mitochondria in slices 0 to 2 only
    summary = tr.train(cfg, raw, mask, tmp_path / "run", progress=False)
    saved = Config.load(tmp_path / "run" / "config.json")
    assert saved.annotated_slices == "0,2-3"
    # slice 1's foreground, not named, is left out and said so (before: silently); what it learned from is recorded
    said = capsys.readouterr().err
    assert "the labels hold foreground in 1 slice outside the annotated slices (1), left out" in said
    assert "Fiji" not in said  # slice 2, named, holds foreground: no sign of numbers from 1
    parts = summary["annotation"]
    assert parts == json.loads((tmp_path / "run" / "annotation.json").read_text())
    assert parts["training"]["annotated_voxels"] + parts["validation"]["annotated_voxels"] == 3 * 128 * 128
    assert parts["training"]["foreground_voxels"] + parts["validation"]["foreground_voxels"] == mask[[0, 2, 3]].sum()
    painted = np.zeros_like(mask)
    painted[0] = mask[0]  # one slice painted, without --annotated-slices: the rest is background (before: in silence)
    tr.train(tiny(2, epochs=1, iterations_per_epoch=1), raw, painted, tmp_path / "few", progress=False)
    assert "note: foreground lies in only 1 of the 8 slices (0); every other voxel is trained on as background: if " \
           "only some slices are annotated, name them in --annotated-slices" in capsys.readouterr().err
    # background and foreground swapped (a box of background alone, 99 outside it, read as 0/99): said before training
    tr.train(tiny(2, epochs=1, iterations_per_epoch=1), raw, 1 - mask, tmp_path / "inverted", progress=False)
    share = 1 - mask.mean()
    said = capsys.readouterr().err
    assert f"note: {share:.1%} of the annotated voxels are foreground (mitochondria seldom" in said
    # and how to mend inverted labels (before: only options that cannot invert them)
    assert "Or are they inverted (the background the higher value)? Then invert them first" in said
    assert parts["validation"]["annotated_voxels"] == 3 * 128 * round(128 * cfg.val_fraction)
    model, cfg = tr.load_model(tmp_path / "run")
    partial = data.annotate_slices(mask, [0, 2, 3])
    _, val = data.split(raw, partial, cfg.val_fraction, io.intensity_range(raw))
    probs = val.scored(tr.predict_array(model, val.image, 3, cfg.tile, cfg.overlap, val.window))
    on_annotated = tr.metrics.scores(tr.metrics.confusion(probs[[0, 2, 3]] >= 0.5, val.mask[[0, 2, 3]]))
    assert tr.read_log(tmp_path / "run")[0]["val_iou"] == pytest.approx(on_annotated["jaccard"], abs=1e-6)
    with pytest.raises(MitosegError, match="no foreground voxels where annotated"):
        tr.train(tiny(2, annotated_slices="4"), raw, mask, tmp_path / "empty", progress=False)
    fiji = np.zeros_like(mask)
    fiji[[0, 2]] = mask[[0, 2]]  # painted at the slices Fiji numbers 1 and 3, which were given
    with pytest.raises(MitosegError, match="no foreground voxels where annotated"):
        tr.train(tiny(2, annotated_slices="1,3"), raw, fiji, tmp_path / "fiji", progress=False)
    assert "(0, 2), left out: name them in --annotated-slices if they are annotated; each lies just below a named " \
           "one that holds none: slices count from 0 here (Fiji's slice 1 is 0)" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()
    with pytest.raises(MitosegError, match="name no slice"):  # an empty list (a script's empty variable): before,
        tr.train(tiny(2, annotated_slices=""), raw, mask, tmp_path / "none", progress=False)  # all slices silently
    assert not (tmp_path / "none").exists()


def test_init_starts_from_another_runs_weights(tmp_path, small, capsys, monkeypatch):
    tr.train(tiny(2, epochs=1), *small, tmp_path / "a", progress=False)
    capsys.readouterr()
    tr.train(tiny(2, epochs=1, iterations_per_epoch=1, lr=1e-12, warmup_iterations=1, init=str(tmp_path / "a")),
             *small, tmp_path / "b", progress=False)  # one step at a negligible learning rate
    assert "note: --init" not in capsys.readouterr().err  # the same voxels
    monkeypatch.chdir(tmp_path)  # --resume names the --init run as its path resolves, however it is written
    tr.check_resume(tmp_path / "b", {"init": "./a/"})
    a, _ = tr.load_model(tmp_path / "a")
    b, cfg = tr.load_model(tmp_path / "b" / "last.pt")
    assert cfg.init == str(tmp_path / "a")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if pa.is_floating_point() and "running" not in name:
            torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    with pytest.raises(MitosegError, match="is a 2D resnet18 run; this run is 3D"):
        tr.train(tiny(3, init=str(tmp_path / "a")), *small, tmp_path / "c", progress=False)
    with pytest.raises(MitosegError, match="trained with --normalize percentile; give the same"):
        tr.train(tiny(2, init=str(tmp_path / "a"), normalize="equalize"), *small, tmp_path / "d", progress=False)
    with pytest.raises(MitosegError, match="takes 0 neighbouring slices on each side; give the same --context-slices"):
        tr.train(tiny(2, init=str(tmp_path / "a"), context_slices=1), *small, tmp_path / "e", progress=False)
    with pytest.raises(MitosegError, match="has 0 full-resolution channels; give the same --full-resolution"):
        tr.train(tiny(2, init=str(tmp_path / "a"), full_resolution=4), *small, tmp_path / "f", progress=False)
    with pytest.raises(MitosegError, match="trained with --norm batch; give the same --norm"):
        tr.train(tiny(2, init=str(tmp_path / "a"), norm="instance"), *small, tmp_path / "g", progress=False)
    with pytest.raises(MitosegError, match="give the same --context-slices"):  # with --overwrite of a run: refused
        tr.train(tiny(2, init=str(tmp_path / "a"), context_slices=1), *small, tmp_path / "b", overwrite=True,
                 progress=False)
    assert (tmp_path / "b" / "last.pt").exists()  # before the fix the old run was deleted first, then refused
    tr.train(tiny(3, epochs=1, iterations_per_epoch=1), *small, tmp_path / "a3", progress=False)
    capsys.readouterr()
    tr.train(tiny(3, epochs=1, iterations_per_epoch=1, init=str(tmp_path / "a3"), voxel_size=(50, 5, 5)), *small,
             tmp_path / "h", progress=False)
    assert "note: --init a3 was trained on 5 x 5 x 5 nm voxels, this run's are 50 x 5 x 5 nm: it starts from " \
           "features of another scale and other encoder strides" in capsys.readouterr().err
    # an image that states no voxel size, from a run that stated its own (before: nothing said)
    tr.train(tiny(3, epochs=1, iterations_per_epoch=1, init=str(tmp_path / "h"), voxel_size_stated=False), *small,
             tmp_path / "h2", progress=False)
    assert "note: --init h was trained on 50 x 5 x 5 nm voxels; this image states none, so this run takes the " \
           "default 5 x 5 x 5 nm (and its encoder strides): give --voxel-size 50 5 5 if" in capsys.readouterr().err
    # a 2D model along XY slices sees the pixels alone: thicker sections are no other scale to it (before: noted, as
    # for the README's CA1 -> Drosophila fine-tuning, whose pixels are alike)
    tr.train(tiny(2, epochs=1, iterations_per_epoch=1, voxel_size=(5, 5, 5)), *small, tmp_path / "a2", progress=False)
    capsys.readouterr()
    tr.train(tiny(2, epochs=1, iterations_per_epoch=1, init=str(tmp_path / "a2"), voxel_size=(50, 5, 5)), *small,
             tmp_path / "i", progress=False)
    assert "another scale" not in capsys.readouterr().err
    tr.train(tiny(2, epochs=1, iterations_per_epoch=1, init=str(tmp_path / "a2"), voxel_size=(50, 10, 10)), *small,
             tmp_path / "j", progress=False)
    assert "it starts from features of another scale\n" in capsys.readouterr().err


def test_best_checkpoint_never_comes_from_a_flat_zero_line(tmp_path, small, monkeypatch):
    monkeypatch.setattr(tr, "validate", lambda *a, **k: {"f1": 0.0, "jaccard": 0.0, "best_jaccard": 0.0,
                                                          "best_threshold": 0.5})
    tr.train(tiny(2, epochs=3, iterations_per_epoch=1), *small, tmp_path / "run", progress=False)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=False)["state"]
    assert best["epoch"] == 3  # not epoch 1 of three equal zeros: the latest while nothing has been learned


def test_validation_sees_a_model_calibrated_below_half(monkeypatch, lucchi_crop):
    """A model whose mitochondria get probability 0.45 scores 0 at 0.5; validation still reports what it
    has learned (and best.pt is chosen by that), at the best of the thresholds 0.3..0.7."""
    raw, mask = lucchi_crop
    vol = data.Volume(raw[:4], mask[:4].astype(np.uint8), io.intensity_range(raw[:4]))
    monkeypatch.setattr(tr, "predict_array", lambda *a, **k: np.where(vol.mask == 1, 0.45, 0.05).astype(np.float32))
    val = tr.validate(None, vol, tiny(2), torch.device("cpu"))
    assert val["jaccard"] == 0.0 and val["best_jaccard"] == 1.0 and val["best_threshold"] == 0.4


def test_batchnorm_statistics_are_re_estimated_as_a_plain_average(lucchi_crop):
    """Precise BN: the running statistics become the average over the given batches, whatever they were
    before; weights, momentum, mode and the sampler's generator are left as they were."""
    from mitoseg.models import build_model

    cfg = tiny(3, amp=False)
    image, mask = lucchi_crop
    vol = data.Volume(image, mask, io.intensity_range(image))
    sampler = data.PatchSampler(vol, cfg.patch, cfg.fg_fraction, np.random.default_rng(0))
    tf = data.augmenter(cfg.seed, cfg.dims)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    bn = model.net.encoder.bn1
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    rng = sampler.rng

    def estimate(garbage: float) -> torch.Tensor:
        bn.running_mean.fill_(garbage)
        tr.recalibrate_batchnorm(model, sampler, tf, cfg, torch.device("cpu"), 3, (7,))
        return bn.running_mean.clone()

    first = estimate(100.0)
    assert torch.equal(first, estimate(-5.0))  # the old statistics leave no trace; the same batches each time
    assert bn.num_batches_tracked.item() == 3 and bn.momentum == 0.1 and not model.training
    assert sampler.rng is rng
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    # the first layer's running mean is the mean over the 3 batches of each batch's channel means
    seen = []
    hook = model.net.encoder.conv1.register_forward_hook(lambda m, i, o: seen.append(o.mean(dim=(0, 2, 3, 4))))
    try:
        tr.recalibrate_batchnorm(model, sampler, tf, cfg, torch.device("cpu"), 3, (7,))
    finally:
        hook.remove()
    torch.testing.assert_close(bn.running_mean, torch.stack(seen).mean(0), atol=1e-5, rtol=1e-4)


def test_frozen_batchnorm_statistics_stay_fixed_from_the_freeze_on(tmp_path, small, monkeypatch):
    """bn_freeze: at that iteration the statistics are re-estimated once (FREEZE_BATCHES batches), then
    neither training steps nor the re-estimates before validation (bn_batches) change them; the checkpoint
    records the freeze (a resumed run keeps its statistics frozen)."""
    monkeypatch.setattr(tr, "FREEZE_BATCHES", 2)
    cfg = tiny(3, bn_freeze=3, bn_batches=4, amp=False)  # epoch 1 ends with a 4-batch re-estimate
    tr.train(cfg, *small, tmp_path / "run", progress=False)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ckpt["state"]["bn_frozen"]
    tracked = {k: int(v) for k, v in ckpt["model"].items() if k.endswith("num_batches_tracked")}
    assert tracked and set(tracked.values()) == {2}
    model, _ = tr.load_model(tmp_path / "run")
    tr.train_mode(model, True)
    assert model.training and not any(m.training for m in tr._batchnorms(model))
    unfrozen = tr.train(tiny(3, bn_batches=4, amp=False), *small, tmp_path / "plain", progress=False)
    assert unfrozen["iterations"] == 6
    plain = torch.load(tmp_path / "plain" / "last.pt", weights_only=False)["model"]
    assert {int(v) for k, v in plain.items() if k.endswith("num_batches_tracked")} == {4}


def test_ema_with_frozen_batchnorm_delivers_the_frozen_statistics(tmp_path, small, monkeypatch):
    """ema with bn_freeze: before the freeze the averaged weights get statistics of their own (EMA_BN_BATCHES);
    from the freeze on they are validated and delivered with the frozen statistics every step trained
    under, never re-estimated for the averaged weights."""
    monkeypatch.setattr(tr, "FREEZE_BATCHES", 2)
    monkeypatch.setattr(tr, "EMA_BN_BATCHES", 3)
    calls, real = [], tr.recalibrate_batchnorm

    def recalibrate(model, *args, **kw):
        real(model, *args, **kw)
        calls.append((args[4], {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}))

    monkeypatch.setattr(tr, "recalibrate_batchnorm", recalibrate)
    tr.train(tiny(3, bn_freeze=3, ema=0.6, amp=False), *small, tmp_path / "run", progress=False)
    assert [batches for batches, _ in calls] == [3, 2]  # epoch 1's end, then the freeze
    delivered = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    frozen = calls[-1][1]
    assert frozen and all(torch.equal(delivered[k], v) for k, v in frozen.items())
    assert not all(torch.equal(delivered[k], v) for k, v in calls[0][1].items())


def test_labels_other_than_0_1_2_and_a_folder_of_other_files_are_refused_before_training(tmp_path, small):
    """Object ids, a 0/255 mask and the image passed as the labels (arguments swapped) are refused with the
    values found, a slice for a volume by its shape; --overwrite of a folder that is not a run (the user's data)
    deletes nothing."""
    raw, mask = small
    ids = mask.astype(np.uint16)
    ids[:, :, 64:] *= 3
    for labels, found in ((ids, "3"), (mask * 255, "255"), (raw, "")):
        with pytest.raises(MitosegError, match=f"labels hold values other than 0, 1 .* and 2 .*: {found}"):
            tr.train(tiny(2), raw, labels, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(MitosegError, match=r"must be a volume \(Z, Y, X\), not an array of shape \(128, 128\)"):
        tr.train(tiny(2), raw[0], mask[0], tmp_path / "run", progress=False)
    with pytest.raises(MitosegError, match="the image must be an array, not the path 'raw.tif': read it first"):
        tr.train(tiny(2), "raw.tif", "mask.tif", tmp_path / "run", progress=False)  # before: "shape ()"
    with pytest.raises(MitosegError, match="train takes a config.Config, not a dict"):
        tr.train({"dims": 2}, raw, mask, tmp_path / "run", progress=False)  # before: an AttributeError
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("my annotations")
    with pytest.raises(MitosegError, match="is a folder of other files"):
        tr.train(tiny(2), raw, mask, data, overwrite=True, progress=False)
    assert [p.name for p in data.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("iou, said", [(0.09, "note: the 2D model has barely learned (best validation IoU 0.090)"),
                                       (0.06, "warning: the 2D model has not learned (best validation IoU 0.060; "
                                              "calling every voxel mitochondria scores 0.037, a model that learned "
                                              "0.075 or more)"),
                                       (0.5, None)])
def test_a_run_that_learned_little_is_told_so(tmp_path, small, capsys, monkeypatch, iou, said):
    """After training, a best validation IoU under twice what calling every voxel foreground scores is a warning
    (before: only at or under it, so a crop of 15 % mitochondria at 0.157 got no word, and its masks were 99 %
    foreground), under `BARELY` (0.1) a note, above it nothing. The run records it, and predicting with it says it
    again (before: said once, at the end of a long training log)."""
    monkeypatch.setattr(tr, "validate", lambda *a, **k: {"f1": iou, "jaccard": iou, "best_jaccard": iou,
                                                         "best_threshold": 0.5})
    tr.train(tiny(2, epochs=1), *small, tmp_path / "run", progress=False, postprocessing=False)
    err = capsys.readouterr().err
    assert (said in err) if said else ("learned" not in err), err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["learned"] == (iou > 0.074) and summary["all_foreground_iou"] == pytest.approx(0.037, abs=5e-4)
    assert predict.unlearned(tmp_path / "run") == (None if summary["learned"] else (
        "mitoseg: warning: run has not learned (best validation IoU 0.060; calling every voxel mitochondria scores "
        "0.037): its masks will be mostly wrong"))
    (tmp_path / "run" / "summary.json").write_text('{"learned": fal')  # damaged: no warning, no traceback
    assert predict.unlearned(tmp_path / "run") is None


def test_the_bar_of_having_learned_stays_below_a_perfect_model():
    """Twice the all-foreground IoU, or halfway from it to 1 where that is less: a partial annotation of
    mitochondria and a ring of background (share 0.536) needs 0.768 (before: 1.072, so even a perfect model had
    "not learned" and every prediction said so)."""
    assert tr.learned(0.075, 0.037) and not tr.learned(0.073, 0.037)
    assert tr.learned(0.77, 0.536) and tr.learned(1.0, 0.536) and not tr.learned(0.76, 0.536)
    assert not tr.learned(0.009, 0.0) and tr.learned(0.011, 0.0)


def test_a_run_without_validation_says_so_and_writes_strict_json(tmp_path, small, capsys):
    """--val-fraction 0: a note (before: none), and summary.json without NaN, which strict JSON readers refuse
    (before: "best_val_iou": NaN)."""
    tr.train(tiny(2, epochs=1, val_fraction=0.0), *small, tmp_path / "run", progress=False)
    assert "note: no validation split (--val-fraction 0)" in capsys.readouterr().err

    def refuse(constant):
        raise ValueError(constant)

    summary = json.loads((tmp_path / "run" / "summary.json").read_text(), parse_constant=refuse)
    assert summary["best_val_iou"] is None and summary["epochs"] == 1


def test_seconds_per_epoch_leave_out_the_epoch_the_time_limit_cut(tmp_path):
    """The committed CA1 CPU run's log: 8 epochs of 250 iterations, then 80 before its 30 minutes ran out; the time
    per epoch (the study's Table 1 column) is the whole epochs' (before: the cut one pulled it down, 200 s)."""
    shutil.copy(Path(__file__).parents[1] / "results" / "ca1-cpu" / "model_2D" / "log.csv", tmp_path / "log.csv")
    rows = tr.read_log(tmp_path)
    assert [r["iterations"] for r in rows] == [250] * 8 + [80]
    summary = tr.summarize(tmp_path)
    assert summary["epochs"] == 9 and summary["iterations"] == 2080
    assert summary["seconds_per_epoch"] == pytest.approx(np.mean([r["epoch_seconds"] for r in rows[:8]]))
    assert summary["seconds_per_epoch"] > 210


def test_a_long_run_on_a_cpu_without_a_time_limit_is_noted(tmp_path, small, capsys, monkeypatch):
    """The GPU preset (the default) on a CPU trains for hours: said before its first iteration (before: nothing)."""
    def stop(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(tr, "loader_workers", stop)  # just before the first epoch
        tr.train(tiny(2, epochs=tr.LONG_ON_CPU, iterations_per_epoch=1, device="cpu"), *small, tmp_path / "run",
                 progress=False)
    assert f"note: {tr.LONG_ON_CPU:,} iterations on a CPU without a time limit" in capsys.readouterr().err
    tr.train(tiny(2, epochs=1, device="cpu"), *small, tmp_path / "short", progress=False)
    assert "without a time limit" not in capsys.readouterr().err


def test_a_model_no_better_than_all_foreground_has_not_learned(tmp_path, small, capsys, monkeypatch):
    """Its best IoU (at its best threshold) is exactly the foreground's share, what calling every voxel foreground
    scores: a warning (before: "barely learned", the comparison being strict)."""
    raw, mask = small
    _, val = data.split(raw, mask, 0.25)
    share = data.counts(val)["foreground_voxels"] / data.counts(val)["annotated_voxels"]
    monkeypatch.setattr(tr, "validate", lambda *a, **k: {"f1": 0.0, "jaccard": 0.0, "best_jaccard": share,
                                                         "best_threshold": 0.3})
    tr.train(tiny(2, epochs=1), raw, mask, tmp_path / "run", progress=False, postprocessing=False)
    assert "warning: the 2D model has not learned" in capsys.readouterr().err
