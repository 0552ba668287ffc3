"""Voxel metrics against independent numpy counts, blockwise == in-memory, and object matching."""

import cc3d
import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr

from mitoseg import metrics
from mitoseg.errors import MitosegError
from mitoseg.metrics import Counts, confusion, confusion_blockwise, error_places, jaccard, match_instances, scores


def _numpy_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) from a bincount of 2 * truth + pred: an independent way to count."""
    c = np.bincount((2 * (truth > 0) + (pred > 0)).ravel(), minlength=4)
    return int(c[3]), int(c[1]), int(c[2]), int(c[0])


def _perturbed(mask: np.ndarray) -> np.ndarray:
    """A plausible imperfect prediction: the mask dilated by 2 voxels in-plane, with one quarter erased."""
    pred = ndi.binary_dilation(mask > 0, structure=np.ones((1, 5, 5), bool))
    pred[:, :128, :128] = False
    return pred.astype(np.uint8) * 255


def _zarr(data: np.ndarray, chunks: tuple[int, ...]) -> zarr.Array:
    z = zarr.create_array(store=zarr.storage.MemoryStore(), shape=data.shape, chunks=chunks, dtype=data.dtype)
    z[:] = data
    return z


def test_confusion_matches_numpy_on_real_crop(droso_crop):
    _, mask = droso_crop
    pred = _perturbed(mask)
    counts = confusion(pred, mask)
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == _numpy_counts(pred, mask)
    assert counts.total == mask.size
    assert counts.fp > 0 and counts.fn > 0 and counts.tp > 0
    s = scores(counts)
    t, p = mask > 0, pred > 0
    assert s["jaccard"] == pytest.approx((t & p).sum() / (t | p).sum())
    assert s["f1"] == pytest.approx(2 * (t & p).sum() / (t.sum() + p.sum()))
    assert s["accuracy"] == pytest.approx((t == p).mean())


def test_dilated_prediction_has_full_recall(droso_crop):
    _, mask = droso_crop
    pred = ndi.binary_dilation(mask > 0, iterations=1)
    s = scores(confusion(pred, mask))
    assert s["recall"] == 1.0 and s["fn"] == 0
    assert 0.0 < s["precision"] < 1.0


def test_jaccard_of_a_dilated_mask_by_hand(droso_crop):
    """`jaccard`: the truth's voxels over the dilated mask's (every true voxel is inside it), whatever non-zero
    value marks foreground."""
    truth = droso_crop[1]
    grown = ndi.binary_dilation(truth, iterations=2)
    assert jaccard(grown, truth) == pytest.approx(truth.sum() / grown.sum()) and 0 < jaccard(grown, truth) < 1
    assert jaccard(grown.astype(np.uint8) * 255, truth) == jaccard(grown, truth > 0)
    assert jaccard(truth, truth) == 1.0


def test_blockwise_equals_in_memory_on_zarr(droso_crop):
    _, mask = droso_crop
    pred = _perturbed(mask)
    expected = confusion(pred, mask)
    got = confusion_blockwise(_zarr(pred, (5, 64, 64)), _zarr(mask, (20, 128, 128)), block=(7, 100, 130))
    assert got == expected
    assert confusion_blockwise(pred, mask, block=(3, 300, 37), progress=True) == expected


def test_scores_tiny_example_by_hand():
    pred = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0])
    truth = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    counts = confusion(pred, truth)
    assert counts == Counts(tp=1, fp=2, fn=1, tn=6)
    s = scores(counts)
    assert s["precision"] == pytest.approx(1 / 3)
    assert s["recall"] == pytest.approx(1 / 2)
    assert s["f1"] == pytest.approx(2 / 5)
    assert s["jaccard"] == pytest.approx(1 / 4)
    assert s["accuracy"] == pytest.approx(7 / 10)
    assert s["mean_iou"] == pytest.approx((1 / 4 + 6 / 9) / 2)
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (1, 2, 1, 6)


def test_scores_zero_denominators():
    empty = scores(confusion(np.zeros(5), np.zeros(5)))
    assert all(empty[k] == 1.0 for k in ("precision", "recall", "f1", "jaccard", "accuracy", "mean_iou"))
    missed = scores(confusion(np.zeros(4), np.array([0, 1, 1, 0])))
    assert missed["precision"] == 1.0
    assert missed["recall"] == missed["f1"] == missed["jaccard"] == 0.0
    assert missed["mean_iou"] == pytest.approx((0.0 + 2 / 4) / 2)


def test_counts_add():
    assert Counts(1, 2, 3, 4) + Counts(10, 20, 30, 40) == Counts(11, 22, 33, 44)


def test_mismatched_shapes_raise():
    a, b = np.zeros((2, 3, 4)), np.zeros((2, 3, 5))
    with pytest.raises(MitosegError, match="shape"):
        confusion(a, b)
    with pytest.raises(MitosegError, match="shape"):
        confusion_blockwise(a, b, block=(1, 1, 1))
    with pytest.raises(MitosegError, match="shape"):
        match_instances(a.astype(int), b.astype(int))
    with pytest.raises(MitosegError, match=r"pred_labels must be object ids, not a bool mask: label it first"):
        match_instances(a > 0, a.astype(int))  # before: the mask scored as one object
    with pytest.raises(MitosegError, match="the prediction must be a path or an array .*not a list"):
        metrics.evaluate(a.tolist(), a)  # before: an AttributeError
    with pytest.raises(MitosegError, match="block"):
        confusion_blockwise(a, a, block=(1, 0, 1))


def test_match_instances_self_and_one_removed(droso_crop):
    _, mask = droso_crop
    labels, n = ndi.label(mask, structure=np.ones((3, 3, 3)))
    assert n > 5
    same = match_instances(labels, labels)
    assert (same["tp"], same["fp"], same["fn"], same["f1"]) == (n, 0, 0, 1.0)
    pred = labels.copy()
    pred[pred == 3] = 0
    one_missing = match_instances(pred, labels)
    assert (one_missing["tp"], one_missing["fp"], one_missing["fn"]) == (n - 1, 0, 1)
    assert one_missing["recall"] == pytest.approx((n - 1) / n)
    assert one_missing["precision"] == 1.0


def test_slabs_cutting_objects_change_nothing(droso_crop, monkeypatch):
    """Counting slab by slab (a few slices each, cutting objects) gives the whole volume's counts and matches."""
    from mitoseg import metrics

    _, mask = droso_crop
    truth, _ = ndi.label(mask, structure=np.ones((3, 3, 3)))
    pred, _ = ndi.label(_perturbed(mask), structure=np.ones((3, 3, 3)))
    whole = confusion(pred > 0, truth > 0), match_instances(pred, truth)
    monkeypatch.setattr(metrics, "SLAB_VOXELS", 3 * mask.shape[1] * mask.shape[2] + 7)  # 3 slices per slab
    assert len(list(metrics._slabs(pred, truth))) == -(-mask.shape[0] // 3)
    assert (confusion(pred > 0, truth > 0), match_instances(pred, truth)) == whole
    assert whole[1]["tp"] > 0 and whole[1]["fp"] + whole[1]["fn"] > 0


def test_dense_and_sparse_pair_counts_agree(droso_crop, monkeypatch):
    """`_overlaps` counts the (true, pred) pairs in one dense bincount when there are few ids, else sparsely
    (sorting the overlapping voxels): the same matrix, sizes and matches on a real crop, cut into slabs."""
    from mitoseg import metrics

    _, mask = droso_crop
    truth, _ = ndi.label(mask, structure=np.ones((3, 3, 3)))
    pred, _ = ndi.label(_perturbed(mask), structure=np.ones((3, 3, 3)))
    monkeypatch.setattr(metrics, "SLAB_VOXELS", 3 * mask.shape[1] * mask.shape[2] + 7)
    dense = metrics._overlaps(truth, pred), match_instances(pred, truth)
    monkeypatch.setattr(metrics, "DENSE_PAIRS", 0)
    sparse = metrics._overlaps(truth, pred), match_instances(pred, truth)
    assert dense[1] == sparse[1] and dense[1]["tp"] > 0 and dense[1]["fp"] + dense[1]["fn"] > 0
    np.testing.assert_array_equal(dense[0][0].toarray(), sparse[0][0].toarray())
    for a, b in zip(dense[0][1:], sparse[0][1:], strict=True):
        np.testing.assert_array_equal(a, b)
    assert dense[0][0].nnz == sparse[0][0].nnz > 0


def test_match_instances_tiny_example():
    truth = np.zeros((4, 6), int)
    truth[0, 0:4] = 1  # 4 voxels, predicted exactly
    truth[1, 0:4] = 2  # 4 voxels, half predicted: IoU 0.5
    truth[3, 0:2] = 3  # 2 voxels, missed
    pred = np.zeros_like(truth)
    pred[0, 0:4] = 50
    pred[1, 0:2] = 70
    pred[2, 4:6] = 90  # false positive in background
    at_half = match_instances(pred, truth, iou_threshold=0.5)
    assert (at_half["tp"], at_half["fp"], at_half["fn"]) == (2, 1, 1)
    assert (at_half["n_pred"], at_half["n_true"]) == (3, 3)
    assert at_half["precision"] == at_half["recall"] == at_half["f1"] == pytest.approx(2 / 3)
    strict = match_instances(pred, truth, iou_threshold=0.6)
    assert (strict["tp"], strict["fp"], strict["fn"]) == (1, 2, 2)


def test_match_instances_maximises_number_of_matches():
    # IoU: A-P 8/12, A-Q 2/10, B-P 2/18. Greedy or IoU-sum matching takes A-P only; best count is 2.
    truth = np.zeros(20, int)
    truth[0:10], truth[10:20] = 1, 2  # A, B
    pred = np.zeros(20, int)
    pred[2:12], pred[0:2] = 7, 9  # P, Q
    result = match_instances(pred, truth, iou_threshold=0.1)
    assert (result["tp"], result["fp"], result["fn"]) == (2, 0, 0)
    assert match_instances(pred, truth, iou_threshold=0.5)["tp"] == 1


def test_match_instances_rejects_bad_input():
    with pytest.raises(MitosegError, match="integer"):
        match_instances(np.zeros(3), np.zeros(3))
    with pytest.raises(MitosegError, match="iou_threshold"):
        match_instances(np.zeros(3, int), np.zeros(3, int), iou_threshold=0.0)


def _near_by_scipy(mask: np.ndarray, truth: np.ndarray, spacing, widths_nm) -> list[tuple[int, int]]:
    """(fp, fn) voxels within each width (nm) of the true surface, by scipy's exact distance transform of
    the whole crop (an independent way to measure; no whole objects in the masks it is used on)."""
    inside = ndi.distance_transform_edt(truth, sampling=spacing)[truth & ~mask]
    outside = ndi.distance_transform_edt(~truth, sampling=spacing)[mask & ~truth]
    return [(int(np.count_nonzero(outside <= w)), int(np.count_nonzero(inside <= w))) for w in widths_nm]


def test_error_places_counts_distances_as_scipy_does_whatever_the_slab(lucchi_crop):
    truth = lucchi_crop[1][:12] > 0
    # a prediction shifted by 3 voxels in X and 1 in Z: every error lies near the true surface, at 1 to ~4 voxels
    mask = np.zeros_like(truth)
    mask[1:, :, 3:] = truth[:-1, :, :-3]
    mask &= ndi.binary_dilation(truth, iterations=4)  # no part of an object may end up apart from its truth
    for spacing in ((5.0, 5.0, 5.0), (50.0, 5.0, 5.0)):  # isotropic, and thin sections (a halo of 1 slice)
        e = error_places(mask, truth, spacing, widths=(1, 2, 4), slab=32)
        assert e["fp_whole"] == e["fn_whole"] == 0 and e["fp"] > 0 and e["fn"] > 0
        expected = _near_by_scipy(mask, truth, spacing, [w * 5.0 for w in (1, 2, 4)])
        assert [(e[f"fp_near_{w}"], e[f"fn_near_{w}"]) for w in (1, 2, 4)] == expected
        assert error_places(mask, truth, spacing, widths=(1, 2, 4), slab=3) == e  # slabs and halos change nothing
    assert 0 < e["fp_near_1"] < e["fp_near_2"] < e["fp_near_4"]


def test_error_places_counts_missed_and_false_objects_whole(lucchi_crop):
    from mitoseg import instances

    truth = lucchi_crop[1] > 0
    labels = instances.label(truth, 26)
    sizes = np.bincount(labels.ravel())
    gone = int(np.argmax(sizes[1:])) + 1  # the largest true object, missed entirely
    mask = truth & (labels != gone)
    blob = np.zeros_like(truth)
    blob[4:8, 10:20, 10:20] = True
    blob &= ~ndi.binary_dilation(truth, iterations=2)  # a false object touching no true voxel
    mask |= blob
    e = error_places(mask, truth, (5.0, 5.0, 5.0))
    assert (e["fn"], e["fn_whole"]) == (sizes[gone], sizes[gone])
    assert (e["fp"], e["fp_whole"]) == (int(blob.sum()), int(blob.sum())) and blob.sum() > 0
    assert e["jaccard"] < 1.0 and e["jaccard_whole_right"] == 1.0
    assert all(e[f"fp_near_{w}"] == e[f"fn_near_{w}"] == 0 for w in (1, 2, 4))  # whole objects are not near
    assert e["jaccard_near_2_right"] == e["jaccard"]


def test_error_places_refuses_other_shapes():
    with pytest.raises(MitosegError, match="differs"):
        error_places(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(MitosegError, match="Z, Y, X"):
        error_places(np.zeros((4, 4)), np.zeros((4, 4)))


def test_notebook_slips_are_one_line(droso_crop):
    """A path where an array is needed (before: a numpy UFuncTypeError), a dict where Counts are (an
    AttributeError), a threshold as text (a TypeError) and a voxel size of two numbers (an IndexError in edt)."""
    mask = droso_crop[1][:4]
    with pytest.raises(MitosegError, match="the prediction must be an array, not the path 'a.tif': read it first"):
        confusion("a.tif", mask)
    with pytest.raises(MitosegError, match="scores takes the Counts of metrics.confusion, not a dict"):
        scores({"tp": 1, "fp": 0, "fn": 0, "tn": 1})
    labels = cc3d.connected_components(mask)
    with pytest.raises(MitosegError, match=r"iou_threshold must be a number in \(0, 1\], not '0.5'"):
        match_instances(labels, labels, iou_threshold="0.5")
    with pytest.raises(MitosegError, match=r"voxel_size must be three numbers \(z, y, x\), not \(5, 5\)"):
        error_places(mask, mask, voxel_size=(5, 5))
    assert match_instances(labels, labels)["f1"] == scores(confusion(mask, mask))["f1"] == 1.0


def test_confusion_refuses_probabilities_and_soft_masks(droso_crop):
    """Voxel scores need two binary arrays: uint8 probabilities or an anti-aliased truth read as > 0 would
    score a blob; the message says to threshold first. 0/255 and 0/1 masks score alike."""
    mask = droso_crop[1][:4]
    soft = np.rint(ndi.gaussian_filter(mask.astype(np.float32) * 255, (0, 1.5, 1.5))).astype(np.uint8)
    with pytest.raises(MitosegError, match="the prediction holds more than two values .* threshold it first"):
        confusion(soft, mask)
    with pytest.raises(MitosegError, match="the truth holds more than two values"):
        confusion(mask, soft)
    assert confusion(mask * 255, mask) == confusion(mask.astype(bool), mask)
    probs = soft.astype(np.float32) / 255  # as a notebook holds them: before, scored as "> 0", a blob
    with pytest.raises(MitosegError, match="the prediction holds more than two values"):
        jaccard(probs, mask)
    with pytest.raises(MitosegError, match="the mask holds more than two values"):
        error_places(probs, mask)
    assert error_places(mask * 255, mask)["jaccard"] == jaccard(mask, mask.astype(bool)) == 1.0


def test_evaluate_scores_every_input_format_and_writes_its_json(droso_crop, tmp_path, capsys):
    """`mitoseg evaluate` of a prediction saved as .npy or as a folder of slices (formats without attributes)
    prints its scores and writes --json, exit 0, as for a TIFF; the Jaccard is numpy's."""
    import json

    import tifffile

    from mitoseg.cli import main

    _, mask = droso_crop
    pred = _perturbed(mask)
    tifffile.imwrite(tmp_path / "truth.tif", mask)
    np.save(tmp_path / "pred.npy", pred)
    (tmp_path / "slices").mkdir()
    for z, plane in enumerate(pred):
        tifffile.imwrite(tmp_path / "slices" / f"{z:02d}.tif", plane)
    t, p = mask > 0, pred > 0
    for name in ("pred.npy", "slices"):
        assert main(["--quiet", "evaluate", str(tmp_path / name), str(tmp_path / "truth.tif"),
                     "--json", str(tmp_path / f"{name}.json")]) == 0, capsys.readouterr().err
        got = json.loads((tmp_path / f"{name}.json").read_text())
        assert got["jaccard"] == pytest.approx((t & p).sum() / (t | p).sum())


def test_evaluate_scores_a_partial_annotation_on_its_annotated_voxels(droso_crop, tmp_path, capsys):
    """A truth annotated in 4 of its sections, 99 elsewhere (as `train --unlabeled 99` takes it): `evaluate
    --unlabeled 99` scores the annotated voxels only, as numpy does on them (before: no way; its refusal pointed
    to --label-threshold, which scored the unannotated sections as background, precision 0.18 for 0.83)."""
    import json

    import tifffile

    from mitoseg.cli import main

    _, mask = droso_crop
    pred = _perturbed(mask)
    partial = np.full(mask.shape, 99, np.uint8)
    partial[[0, 3, 6, 9]] = mask[[0, 3, 6, 9]] * 255
    tifffile.imwrite(tmp_path / "partial.tif", partial)
    np.save(tmp_path / "pred.npy", pred)
    argv = ["--quiet", "evaluate", str(tmp_path / "pred.npy"), str(tmp_path / "partial.tif")]
    assert main(argv) == 2
    assert "or, if one value marks voxels nobody annotated, --unlabeled VALUE" in capsys.readouterr().err
    assert main([*argv, "--unlabeled", "99", "--json", str(tmp_path / "e.json")]) == 0
    t, p = mask[[0, 3, 6, 9]] > 0, pred[[0, 3, 6, 9]] > 0
    got = json.loads((tmp_path / "e.json").read_text())
    assert got["jaccard"] == pytest.approx((t & p).sum() / (t | p).sum()) and got["tp"] == (t & p).sum()
    assert f"scored on the {t.size:,} annotated voxels of the truth" in capsys.readouterr().out
    with pytest.raises(MitosegError, match="--places and --objects need a whole truth"):
        metrics.evaluate(tmp_path / "pred.npy", tmp_path / "partial.tif", unlabeled=99, places=True)
    whole = metrics.evaluate(tmp_path / "pred.npy", tmp_path / "partial.tif", unlabeled=99, label_threshold=0,
                             progress=False)
    assert whole["tp"] == got["tp"]  # an explicit label threshold: the same


def test_a_truth_annotated_on_slices_the_subsample_skips_finds_its_two_values(droso_crop):
    """`evaluate --unlabeled` looked for the two classes in a strided subsample (every 3rd slice here): a truth
    annotated on slices 1 and 5 alone was refused ("one value besides --unlabeled", having seen none)."""
    _, mask = droso_crop
    truth = np.full((20, 1024, 1024), 128, np.uint8)  # 21 M voxels: the subsample takes every 3rd slice
    truth[[1, 5], :mask.shape[1], :mask.shape[2]] = mask[:2] * 255
    assert set(np.unique(truth[::3, ::3, ::3])) == {128}
    assert metrics._annotated_threshold(truth, 128, None) == 0.0
    truth[[1, 5]] = 128
    with pytest.raises(MitosegError, match="hold no value besides the --unlabeled 128"):
        metrics._annotated_threshold(truth, 128, None)


def test_evaluate_objects_counts_missed_and_false_objects(droso_crop, tmp_path, capsys):
    """`evaluate --objects`: a mask without the truth's two smallest objects and with one false speck has two
    missed objects and one false one (counted with scipy's 26-connected labelling), said in one line and in
    the JSON; the voxel scores are unchanged by the option."""
    import json

    import tifffile

    from mitoseg.cli import main

    truth = droso_crop[1]
    labels, n = ndi.label(truth > 0, structure=np.ones((3, 3, 3)))
    small = np.argsort(np.bincount(labels.ravel())[1:])[:2] + 1
    pred = ((labels > 0) & ~np.isin(labels, small)).astype(np.uint8)
    far = tuple(np.argwhere(ndi.distance_transform_cdt(truth == 0) > 3)[0])
    pred[far] = 1
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    tifffile.imwrite(tmp_path / "pred.tif", pred)
    argv = ["--quiet", "evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "truth.tif")]
    assert main([*argv, "--objects", "--json", str(tmp_path / "o.json")]) == 0
    assert f"{n:,} true, {n - 1:,} predicted, {n - 2:,} matched" in capsys.readouterr().out
    got = json.loads((tmp_path / "o.json").read_text())
    assert (got["objects"]["fn"], got["objects"]["fp"]) == (2, 1)
    assert main([*argv, "--json", str(tmp_path / "v.json")]) == 0
    plain = json.loads((tmp_path / "v.json").read_text())
    assert plain == {k: v for k, v in got.items() if k != "objects"}


def test_evaluate_objects_keeps_object_ids(droso_crop, tmp_path, capsys):
    """Object ids given as ids (--threshold 1, --label-threshold 0): two touching true objects stay two, so a
    prediction that merges them misses one (before: both sides relabelled by connectivity, the two true ids
    became one object and the merge scored F1 1.0). A mask's objects are still its connected components."""
    import json

    import tifffile

    from mitoseg.cli import main

    ids = cc3d.connected_components(droso_crop[1] > 0, connectivity=26).astype(np.uint16)
    n = int(ids.max())
    big = np.argmax(np.bincount(ids.ravel())[1:]) + 1
    x = np.nonzero(ids == big)[2]
    split = ids.copy()
    split[(ids == big) & (np.arange(ids.shape[2]) < np.quantile(x, 0.3))] = n + 1  # touching its other part
    tifffile.imwrite(tmp_path / "truth.tif", split)
    tifffile.imwrite(tmp_path / "pred.tif", ids)
    argv = ["--quiet", "evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "truth.tif"), "--threshold", "1",
            "--label-threshold", "0", "--objects", "--json"]
    assert main([*argv, str(tmp_path / "ids.json")]) == 0
    assert (f"objects (object ids, matched one to one at IoU >= 0.5): {n + 1:,} true, {n:,} predicted, {n:,} matched"
            in capsys.readouterr().out)
    got = json.loads((tmp_path / "ids.json").read_text())["objects"]
    assert (got["fn"], got["fp"], got["truth_objects"], got["prediction_objects"]) == (1, 0, "ids", "ids")
    tifffile.imwrite(tmp_path / "mask.tif", (ids > 0).astype(np.uint8))  # a mask: its 26-connected objects
    assert main([*argv[:2], str(tmp_path / "mask.tif"), *argv[3:], str(tmp_path / "mask.json")]) == 0
    assert "objects (predicted 26-connected, true object ids, matched" in capsys.readouterr().out


def test_evaluate_notes_swapped_arguments_and_unlike_voxel_sizes(droso_crop, tmp_path, capsys):
    """A mitoseg mask given as the truth of a plain prediction (arguments swapped: precision and recall exchanged)
    and two volumes stating other voxel sizes are each said in one line (before: scored without a word)."""
    import tifffile

    _, mask = droso_crop
    z = zarr.create_array(str(tmp_path / "mask.zarr"), data=mask)
    z.attrs.update(kind="mask", voxel_size=[50.0, 4.6, 4.6])
    tifffile.imwrite(tmp_path / "truth.tif", mask, imagej=True, resolution=(1 / 5, 1 / 5),
                     metadata={"spacing": 5, "unit": "nm", "axes": "ZYX"})
    metrics.evaluate(tmp_path / "truth.tif", tmp_path / "mask.zarr", progress=False)
    err = capsys.readouterr().err
    assert "note: the truth is a mitoseg mask output and the prediction is not" in err
    assert "note: the prediction states 5 x 5 x 5 nm voxels and the truth 50 x 4.6 x 4.6 nm" in err
    metrics.evaluate(tmp_path / "mask.zarr", tmp_path / "mask.zarr", progress=False)
    assert "note" not in capsys.readouterr().err
