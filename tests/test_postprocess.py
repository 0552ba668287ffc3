"""Probabilities -> masks: threshold, small-object removal, hole filling, and the choice on validation."""

import numpy as np
import pytest
from scipy import ndimage

from mitoseg import metrics, postprocess
from mitoseg.errors import MitosegError
from mitoseg.postprocess import PostProcessing


@pytest.fixture(scope="module")
def damaged(lucchi_crop):
    """Real CA1 truth (32, 256, 256) and a 'prediction' with the usual faults: soft edges, specks of false
    positives and holes inside objects, as float probabilities in [0, 1]."""
    _, mask = lucchi_crop
    rng = np.random.default_rng(0)
    probs = ndimage.gaussian_filter(mask.astype(np.float32), 1.5)
    specks = np.zeros_like(probs)
    specks[tuple(rng.integers(0, s, 60) for s in mask.shape)] = 1
    probs = np.maximum(probs, ndimage.binary_dilation(specks, iterations=2) * 0.9)
    holes = ndimage.binary_erosion(mask, iterations=6) & (rng.random(mask.shape) < 0.002)
    probs[ndimage.binary_dilation(holes, iterations=2)] = 0.05
    return probs, mask


def _iou(mask, truth):
    return metrics.scores(metrics.confusion(mask, truth))["jaccard"]


def test_apply_thresholds_floats_and_stored_uint8_alike(damaged):
    probs, _ = damaged
    stored = np.rint(probs * 255).astype(np.uint8)
    for t in (0.3, 0.5, 0.7):
        a = postprocess.apply(probs, PostProcessing(t))
        b = postprocess.apply(stored, PostProcessing(t))
        assert a.dtype == np.uint8 and set(np.unique(a)) <= {0, 1}
        assert np.mean(a != b) < 0.002  # uint8 storage rounds probabilities to 1/255


def test_each_step_mends_its_fault(damaged):
    probs, truth = damaged
    plain = postprocess.apply(probs, PostProcessing())
    no_specks = postprocess.apply(probs, PostProcessing(min_size=1000))
    filled = postprocess.apply(probs, PostProcessing(min_size=1000, fill_holes=True))
    assert _iou(plain, truth) < _iou(no_specks, truth) < _iou(filled, truth)
    assert np.all(filled >= no_specks)  # filling only adds voxels


def test_choose_finds_the_setting_that_mends_them(damaged, monkeypatch):
    probs, truth = damaged
    pp, rows = postprocess.choose(probs, truth)
    monkeypatch.setattr(postprocess, "MAX_THREADS", 1)  # candidates scored one after another: the same answer
    assert postprocess.choose(probs, truth) == (pp, rows)
    assert pp.min_size > 0 and pp.fill_holes
    n = len(postprocess.CHOICE_THRESHOLDS)
    assert len(rows) == n * len(postprocess.Z_SIGMAS) + n * len(postprocess.MIN_SIZES) * 2
    best = max(r["jaccard"] for r in rows)
    assert _iou(postprocess.apply(probs, pp), truth) == pytest.approx(best)
    default = next(r for r in rows if r["threshold"] == 0.5 and r["min_size"] == 0 and not r["fill_holes"]
                   and r["z_sigma"] == 0)
    assert best > default["jaccard"]


def test_every_candidate_scores_the_mask_apply_makes(damaged):
    probs, truth = damaged
    stored = np.rint(probs * 255).astype(np.uint8)
    _, rows = postprocess.choose(stored, truth)
    for row in rows:
        pp = PostProcessing(**{k: v for k, v in row.items() if k != "jaccard"})
        assert row["jaccard"] == _iou(postprocess.apply(stored, pp), truth), row


def test_smoothing_along_z_mends_slice_to_slice_jitter(damaged):
    """Each slice of the real CA1 truth's soft edges moved by up to 3 pixels on its own (what a 2D model that
    sees one slice at a time does): blurring along Z takes much of it out, `choose` finds that on its own,
    but not where the slices do not jitter; the smoothing is scipy's 1D Gaussian along Z, whatever the rows
    per step, and for stored uint8 too."""
    probs, truth = damaged
    rng = np.random.default_rng(1)
    jittered = np.stack([np.roll(s, tuple(rng.integers(-3, 4, 2)), axis=(0, 1)) for s in probs])
    smoothed = postprocess.apply(jittered, PostProcessing(z_sigma=2.0))
    assert _iou(smoothed, truth) > _iou(postprocess.apply(jittered, PostProcessing()), truth) + 0.02
    pp, _ = postprocess.choose(jittered, truth, min_sizes=(0,))
    assert pp.z_sigma > 0
    soft_edges_only = ndimage.gaussian_filter(truth.astype(np.float32), 1.5)  # no jitter: no smoothing chosen
    assert postprocess.choose(soft_edges_only, truth, min_sizes=(0,))[0].z_sigma == 0
    single = jittered.astype(np.float32)
    assert np.array_equal(postprocess.smooth_z(single, 1.5, rows=7), ndimage.gaussian_filter1d(single, 1.5, axis=0))
    stored = np.rint(jittered * 255).astype(np.uint8)
    assert postprocess.smooth_z(stored, 0) is stored and postprocess.smooth_z(stored, 2).dtype == np.uint8
    assert np.abs(postprocess.smooth_z(stored, 2).astype(float) - postprocess.smooth_z(jittered, 2) * 255).max() <= 1


def test_fill_holes_matches_scipy_slice_by_slice(damaged):
    probs, _ = damaged
    mask = probs >= 0.5
    mask[:, 0, :40] = True  # foreground along the slice's edge, background beside it
    mask[:, 1:4, 10:20] = False
    ours = postprocess.fill_holes(mask)
    assert np.array_equal(ours, np.stack([ndimage.binary_fill_holes(s) for s in mask]))
    assert ours.sum() > mask.sum()  # there were holes to fill
    assert np.array_equal(postprocess.fill_holes(mask, slices=3), ours)  # 3 slices labelled at a time, the last 2
    assert np.array_equal(postprocess.fill_holes(mask[:1]), ours[:1])


def test_bad_settings_refused():
    with pytest.raises(MitosegError, match="threshold"):
        PostProcessing(threshold=1.5)
    with pytest.raises(MitosegError, match="min_size must be an integer >= 0, not -5"):
        PostProcessing(min_size=-5)
    with pytest.raises(MitosegError, match="z_sigma must be a number >= 0"):
        PostProcessing(z_sigma=-1.0)
    with pytest.raises(MitosegError, match="fill_holes must be True or False, not 'no'"):
        PostProcessing(fill_holes="no")  # before: a true string, so holes were filled


def test_arrays_of_another_kind_are_refused(damaged, tmp_path):
    """Probabilities given to `fill_holes` (before: every voxel foreground), a dict for the settings and a path
    for the probabilities (before: an AttributeError, "an array of shape ()")."""
    probs, truth = damaged
    stored = np.round(probs * 255).astype(np.uint8)
    with pytest.raises(MitosegError, match="the mask holds more than two values .* threshold it first"):
        postprocess.fill_holes(stored)
    assert postprocess.fill_holes(stored >= 128).mean() < 0.5
    with pytest.raises(MitosegError, match="apply takes a postprocess.PostProcessing, not a dict"):
        postprocess.apply(stored, {"threshold": 0.5})
    with pytest.raises(MitosegError, match="the probabilities must be an array, not the path"):
        postprocess.apply(str(tmp_path / "probs.zarr"), PostProcessing())


def test_probabilities_on_another_scale_or_shape_are_refused(damaged):
    """Float probabilities of 0..255 (before: every threshold made 0.5 of 255 nearly all foreground), integers
    other than uint8, a single slice (before: its Y blurred as Z, or an unpacking error) and a negative blur."""
    probs, truth = damaged
    pp = PostProcessing(0.5, 0, False, 1.0)
    for bad, said in ((probs * 255, "floats from 0 to 255, not probabilities in"),
                      (probs.astype(np.uint16), "are uint16: probabilities are floats")):
        with pytest.raises(MitosegError, match=said):
            postprocess.apply(bad, pp)
        with pytest.raises(MitosegError, match=said):
            postprocess.choose(bad, truth)
    with pytest.raises(MitosegError, match=r"must be a volume \(Z, Y, X\), not an array of shape \(256, 256\)"):
        postprocess.apply(probs[0], pp)
    with pytest.raises(MitosegError, match=r"the mask must be a volume \(Z, Y, X\)"):
        postprocess.fill_holes(truth[0])
    with pytest.raises(MitosegError, match="z_sigma must be a number >= 0"):
        postprocess.smooth_z(probs, -1)


def test_z_smoothed_view_reads_each_block_with_its_neighbouring_slices(damaged):
    """`ZSmoothed`: blocks 3 slices deep, cut anywhere in Y and X, equal the whole volume blurred along Z (ends
    mirrored), stored uint8 and floats alike; sigma 0 is the volume as stored."""
    probs, _ = damaged
    for volume in (np.rint(probs * 255).astype(np.uint8), probs):
        for sigma in (1.0, 2.5):
            whole, view = postprocess.smooth_z(volume, sigma), postprocess.ZSmoothed(volume, sigma)
            assert view.shape == volume.shape and view.dtype == whole.dtype
            assert not np.array_equal(whole, volume)
            for z in range(0, len(volume), 3):
                np.testing.assert_array_equal(view[z:z + 3, 40:200, 7:100], whole[z:z + 3, 40:200, 7:100])
        plain = postprocess.ZSmoothed(volume, 0)
        assert plain.dtype == volume.dtype and np.array_equal(plain[4:9, :, 3:], volume[4:9, :, 3:])


def test_labelling_takes_what_the_input_has_not_applied_of_the_runs_choice():
    """`for_labels`: probabilities that carry the run's choice get all of it but the hole filling; a given
    threshold applies alone; a mask written with the choice gets its minimum size; anything else nothing."""
    chosen = PostProcessing(0.4, 1000, True, 2.0).as_dict()
    probs = {"kind": "probability", "postprocessing": chosen}
    assert postprocess.for_labels(probs) == {"threshold": 0.4, "z_sigma": 2.0, "min_size": 1000,
                                             "from_run": ["threshold", "z_sigma", "min_size"]}
    assert postprocess.for_labels(probs, min_size=5) == {"threshold": 0.4, "z_sigma": 2.0, "min_size": 5,
                                                         "from_run": ["threshold", "z_sigma"]}
    nothing = {"threshold": None, "z_sigma": 0.0, "min_size": 0, "from_run": []}
    assert postprocess.for_labels(probs, threshold=0.5) == {**nothing, "threshold": 0.5}
    mask = {"kind": "mask", "postprocessing": chosen, "threshold": 0.4, "z_sigma": 2.0}
    assert postprocess.for_labels(mask) == {**nothing, "min_size": 1000, "from_run": ["min_size"]}
    assert postprocess.for_labels({**mask, "threshold": 0.5}) == nothing  # `predict --threshold 0.5 --mask`
    assert postprocess.for_labels({**mask, "z_sigma": 0.0}) == nothing
    assert postprocess.for_labels({"kind": "probability"}) == postprocess.for_labels({}) == nothing


def test_a_choice_in_words():
    """What the reports say of a choice: no "objects under 0 voxels removed", no "1 slices"."""
    said = postprocess.words({"threshold": 0.5, "min_size": 0, "fill_holes": False, "z_sigma": 1})
    assert said == "probabilities blurred along Z (Gaussian, 1 slice), threshold 0.5, no objects removed, holes kept"
    said = postprocess.words({"threshold": 0.4, "min_size": 1200, "fill_holes": True})  # older records: no z_sigma
    assert said == "threshold 0.4, objects under 1,200 voxels removed, holes filled"
