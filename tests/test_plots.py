"""Tests of mitoseg.plots on the real Drosophila VNC crop: overlay colours, 3D meshes, curves, saving."""

import time
from pathlib import Path

import cc3d
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d import art3d
from PIL import Image
from scipy import ndimage

from mitoseg import plots

VOXEL = (50.0, 4.6, 4.6)  # (z, y, x) nm of the Drosophila VNC stack
Z = 17  # a crop slice with two mitochondria


@pytest.fixture(scope="module")
def crop(droso_crop):
    raw, mask = droso_crop
    labels = cc3d.connected_components(mask, connectivity=26).astype(np.uint32)
    return raw, mask, labels


@pytest.fixture(scope="module")
def fake_pred(crop):
    """A prediction of slice Z with every error kind: truth dilated in the top half, eroded in the
    bottom half, plus a spurious square."""
    _, mask, _ = crop
    truth = mask[Z].astype(bool)
    pred = np.where(np.arange(truth.shape[0])[:, None] < 128, ndimage.binary_dilation(truth, iterations=4),
                    ndimage.binary_erosion(truth, iterations=4))
    pred[200:230, 20:60] = True
    return pred, truth


def axes() -> plots.Axes:
    return Figure().add_subplot()


# ------------------------------------------------------------------------------------------- colours


def test_instance_colors_stable_and_distinct():
    ids = np.arange(1, 51)
    colors = plots.instance_colors(ids)
    assert colors.shape == (50, 3) and colors.min() >= 0 and colors.max() <= 1
    np.testing.assert_array_equal(colors, plots.instance_colors(ids))  # deterministic
    np.testing.assert_array_equal(colors[[4, 9]], plots.instance_colors([5, 10]))  # a function of the id
    distance = np.linalg.norm(colors[:, None] - colors[None], axis=-1)
    assert distance[np.triu_indices(50, 1)].min() > 0.05
    np.testing.assert_array_equal(plots.instance_colors([0]), [[0, 0, 0]])
    big = plots.instance_colors(np.array([2**32 - 1, 4_000_000_000], dtype=np.uint32))
    assert np.isfinite(big).all() and not np.allclose(big[0], big[1])


def test_instance_rgba_colours_each_id_everywhere(crop):
    _, _, labels = crop
    rgbas = {z: plots.instance_rgba(labels[z], alpha=0.5) for z in range(labels.shape[0])}
    for z, rgba in rgbas.items():
        assert rgba.shape == (*labels.shape[1:], 4)
        np.testing.assert_array_equal(rgba[labels[z] == 0], 0)  # background fully transparent
        assert np.all(rgba[labels[z] > 0, 3] == 0.5)
    # an object spanning slices 8..17 has one colour in all of them, its own
    obj = int(np.bincount(labels[labels > 0]).argmax())
    zs = [z for z in range(labels.shape[0]) if (labels[z] == obj).any()]
    assert len(zs) > 1
    for z in zs:
        np.testing.assert_array_equal(np.unique(rgbas[z][labels[z] == obj][:, :3], axis=0),
                                      plots.instance_colors([obj]))


def test_error_rgba_colours_each_kind(fake_pred):
    pred, truth = fake_pred
    rgba = plots.error_rgba(pred, truth, alpha=0.7)
    kinds = {"tp": (pred & truth, plots.TP_COLOR), "fp": (pred & ~truth, plots.FP_COLOR),
             "fn": (~pred & truth, plots.FN_COLOR)}
    for where, color in kinds.values():
        assert where.sum() > 50  # the fake prediction really has every kind of pixel
        np.testing.assert_array_equal(rgba[where], np.broadcast_to((*color, 0.7), (int(where.sum()), 4)))
    np.testing.assert_array_equal(rgba[~pred & ~truth], 0)
    assert rgba[200, 20].tolist() == [*plots.FP_COLOR, 0.7]  # inside the spurious square
    assert len({plots.TP_COLOR, plots.FP_COLOR, plots.FN_COLOR, plots.TRUTH_COLOR}) == 4


def test_shape_mismatch_refused(fake_pred):
    pred, truth = fake_pred
    with pytest.raises(ValueError, match="shape"):
        plots.error_rgba(pred, truth[:100])
    with pytest.raises(ValueError, match="2D"):
        plots.instance_rgba(np.zeros((2, 3, 4), np.uint32))


# -------------------------------------------------------------------------------------- 2D panels


def test_overlay_truth_draws_image_and_mask(crop):
    raw, mask, _ = crop
    ax = plots.overlay_truth(axes(), raw[Z], mask[Z], title="truth")
    assert ax.get_title() == "truth" and len(ax.images) == 2
    np.testing.assert_array_equal(ax.images[0].get_array(), raw[Z])
    assert ax.images[0].get_clim() == (0, 255)
    over = np.asarray(ax.images[-1].get_array())
    np.testing.assert_allclose(over[mask[Z] > 0], np.broadcast_to((*plots.TRUTH_COLOR, 0.45), (int(mask[Z].sum()), 4)))
    assert np.all(over[mask[Z] == 0, 3] == 0)


def test_overlay_truth_float_image(crop):
    raw, mask, _ = crop
    ax = plots.overlay_truth(axes(), raw[Z].astype(np.float32) / 255, mask[Z])
    lo, hi = ax.images[0].get_clim()
    assert 0 <= lo < hi <= 1


def test_overlay_errors_overlay_and_legend(crop, fake_pred):
    raw, _, _ = crop
    pred, truth = fake_pred
    ax = plots.overlay_errors(axes(), raw[Z], pred, truth, title="2D U-Net")
    np.testing.assert_array_equal(np.asarray(ax.images[-1].get_array()), plots.error_rgba(pred, truth, 0.55))
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["true positive", "false positive", "false negative"]
    assert ax.get_title() == "2D U-Net"
    assert plots.overlay_errors(axes(), raw[Z], pred, truth, legend=False).get_legend() is None


def test_overlay_instances_overlay(crop):
    raw, _, labels = crop
    ax = plots.overlay_instances(axes(), raw[Z], labels[Z], alpha=0.4)
    np.testing.assert_array_equal(np.asarray(ax.images[-1].get_array()), plots.instance_rgba(labels[Z], 0.4))
    with pytest.raises(ValueError, match="shape"):
        plots.overlay_instances(axes(), raw[Z], labels[Z, :10])


def test_max_projection(crop):
    _, _, labels = crop
    ax = plots.max_projection(axes(), labels, axis=0, title="max")
    np.testing.assert_array_equal(np.asarray(ax.images[-1].get_array()), plots.instance_rgba(labels.max(0), 1.0))
    side = plots.max_projection(axes(), labels, axis=1)
    assert side.images[-1].get_array().shape == (labels.shape[0], labels.shape[2], 4)


# ---------------------------------------------------------------------------------------------- 3D


def test_render_empty_and_full_volumes():
    for labels in (np.zeros((4, 8, 8), np.uint32), np.full((4, 8, 8), 7, np.uint32)):
        ax = plots.render_instances_3d(Figure().add_subplot(projection="3d"), labels, (10, 10, 10))
        assert len(ax.collections) == int(labels.any())
    assert plots.instance_meshes(np.full((4, 8, 8), 7, np.uint32))[0][0] == 7


def test_instance_meshes_lie_on_their_objects(crop):
    _, _, labels = crop
    meshes = plots.instance_meshes(labels, VOXEL, step=1, smooth=0)
    sizes = np.bincount(labels.ravel())
    assert [m[0] for m in meshes] == sorted(range(1, labels.max() + 1), key=lambda i: -sizes[i])
    boxes = ndimage.find_objects(labels)
    um = np.array(VOXEL) / 1000
    for obj, verts, faces in meshes:
        assert faces.shape[1] == 3 and faces.max() < len(verts)
        box = boxes[obj - 1]
        lo = np.array([s.start for s in box]) * um
        hi = np.array([s.stop for s in box]) * um
        # binary surface at level 0.5: exactly on the outer voxel faces, verts are (x, y, z)
        np.testing.assert_allclose(verts.min(0), lo[::-1], atol=1e-9)
        np.testing.assert_allclose(verts.max(0), hi[::-1], atol=1e-9)


def test_render_instances_3d_one_collection_per_object(crop):
    _, _, labels = crop
    n = int(labels.max())
    fig = Figure()
    ax = fig.add_subplot(projection="3d")
    t0 = time.perf_counter()
    out = plots.render_instances_3d(ax, labels, VOXEL)
    assert time.perf_counter() - t0 < 5
    assert out is ax
    polys = [c for c in ax.collections if isinstance(c, art3d.Poly3DCollection)]
    assert len(polys) == n
    assert "µm" in ax.get_xlabel() and "µm" in ax.get_zlabel()
    assert ax.get_zlim() == pytest.approx((0, 20 * 0.05))
    ax5 = Figure().add_subplot(projection="3d")
    plots.render_instances_3d(ax5, labels, VOXEL, max_objects=5)
    assert len(ax5.collections) == 5


def test_render_instances_3d_full_volume_is_fast(droso):
    _, mask = droso
    labels = cc3d.connected_components(mask, connectivity=26)  # (20, 1024, 1024), 47 objects
    t0 = time.perf_counter()
    fig = plots.figure_instances(np.zeros(mask.shape[1:], np.uint8), labels, 10, VOXEL, max_objects=30)
    FigureCanvasAgg(fig).draw()
    ax3d = fig.axes[1]
    assert len(ax3d.collections) == 30
    assert time.perf_counter() - t0 < 10


# ---------------------------------------------------------------------------------------- curves


def _log(epochs: int, seconds: float, as_strings: bool = False) -> list[dict]:
    rows = [{"epoch": e, "loss": 1 / e, "val_dice": 1 - 1 / (e + 1), "elapsed_seconds": e * seconds}
            for e in range(1, epochs + 1)]
    return [{k: str(v) for k, v in r.items()} for r in rows] if as_strings else rows


def test_training_curves_one_line_per_model():
    fig = Figure()
    ax_loss, ax_val = fig.subplots(1, 2)
    logs = {"2D U-Net": _log(10, 30), "3D U-Net": _log(5, 70, as_strings=True)}
    out = plots.training_curves(ax_loss, ax_val, logs)
    assert out == (ax_loss, ax_val)
    names = {ax_loss: ["2D U-Net", "3D U-Net"], ax_val: ["2D U-Net, validation", "3D U-Net, validation"]}
    for ax in out:
        assert [line.get_label() for line in ax.get_lines()] == names[ax]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == names[ax]
        assert ax.get_xlabel() == "training time (min)"  # 350 s > 2 min
    assert ax_val.get_ylabel() == "foreground Dice"  # these logs hold Dice only
    x, y = ax_val.get_lines()[1].get_data()
    np.testing.assert_allclose(x, np.arange(1, 6) * 70 / 60)
    np.testing.assert_allclose(y, [1 - 1 / (e + 1) for e in range(1, 6)])
    assert ax_loss.get_lines()[0].get_color() == ax_val.get_lines()[0].get_color()
    ax_s = Figure().subplots(1, 2)
    plots.training_curves(*ax_s, {"a": _log(3, 10)}, time_unit="s")
    np.testing.assert_allclose(ax_s[0].get_lines()[0].get_xdata(), [10, 20, 30])


def test_training_curves_show_validation_and_test_iou_on_one_axes():
    rows = [{"loss": 1 / e, "val_iou": 0.5 + e / 100, "monitor_iou": 0.6 + e / 100, "elapsed_seconds": 60 * e}
            for e in range(1, 6)]
    ax_loss, ax_val = Figure().subplots(1, 2)
    plots.training_curves(ax_loss, ax_val, {"2D U-Net": rows, "3D U-Net": rows[:3]})
    labels = [line.get_label() for line in ax_val.get_lines()]
    assert labels == ["2D U-Net, validation", "2D U-Net, test subset", "3D U-Net, validation", "3D U-Net, test subset"]
    assert [line.get_linestyle() for line in ax_val.get_lines()] == ["-", "--", "-", "--"]
    np.testing.assert_allclose(ax_val.get_lines()[1].get_ydata(), [0.6 + e / 100 for e in range(1, 6)])
    assert ax_val.get_ylabel() == "foreground IoU"


def test_training_curves_join_the_validated_epochs_only():
    """Epochs between validations log NaN scores: the IoU lines join the validated epochs, the loss all."""
    rows = [{"loss": 1 / e, "val_iou": 0.5 + e / 100 if e % 2 == 0 else "nan",
             "monitor_iou": 0.6 + e / 100 if e % 2 == 0 else "", "elapsed_seconds": 60 * e} for e in range(1, 7)]
    ax_loss, ax_val = Figure().subplots(1, 2)
    plots.training_curves(ax_loss, ax_val, {"3D U-Net": rows})
    assert len(ax_loss.get_lines()[0].get_xdata()) == 6
    val, test = ax_val.get_lines()
    np.testing.assert_allclose(val.get_xdata(), [2, 4, 6])
    np.testing.assert_allclose(test.get_ydata(), [0.62, 0.64, 0.66])


# ---------------------------------------------------------------------------------- figures, save


def test_figures_assemble(crop, fake_pred):
    raw, mask, labels = crop
    pred, truth = fake_pred
    study = plots.figure_study(raw[Z], mask[Z])
    assert isinstance(study, Figure) and len(study.axes) == 2
    errors = plots.figure_errors(raw[Z], {"2D U-Net": pred, "3D U-Net": truth}, truth, Z, VOXEL[-1])
    assert [ax.get_title().split("\n")[0] for ax in errors.axes] == [
        f"2D U-Net prediction vs truth, slice {Z}", f"3D U-Net prediction vs truth, slice {Z}"]
    assert "Dice 1.000" in errors.axes[1].get_title()
    bar = [a for a in errors.axes[0].artists if type(a).__name__ == "AnchoredSizeBar"]
    assert len(bar) == 1  # the scale bar: a round length of about a fifth of the width
    label = bar[0].txt_label.get_text()
    length_nm = float(label.split()[0]) * (1000 if "µm" in label else 1)
    assert 0.1 * raw.shape[2] * VOXEL[-1] <= length_nm <= 0.2 * raw.shape[2] * VOXEL[-1]
    assert len(errors.legends) == 1
    inst = plots.figure_instances(raw, labels, Z, VOXEL)
    assert inst.axes[1].name == "3d" and len(inst.axes[1].collections) == labels.max()
    np.testing.assert_array_equal(np.asarray(inst.axes[0].images[-1].get_array()),
                                  plots.instance_rgba(labels[Z], 0.5))
    from mitoseg import instances

    table = instances.morphology(labels, instances.measure(labels, VOXEL), VOXEL)
    morph = plots.figure_morphology({"2D U-Net": table, "ground truth": table})
    inside = int((~table["touches_border"]).sum())
    assert [t.get_text() for t in morph.axes[0].get_legend().get_texts()] == [f"2D U-Net ({inside})",
                                                                             f"ground truth ({inside})"]
    curves = plots.figure_curves({"2D U-Net": _log(4, 10)})
    assert len(curves.axes) == 2
    with pytest.raises(ValueError):
        plots.figure_errors(raw[Z], {}, truth)


def test_save_writes_png_atomically(tmp_path, crop):
    raw, mask, _ = crop
    fig = plots.figure_study(raw[Z], mask[Z])
    path = plots.save(fig, tmp_path / "out" / "figure1.png")
    assert path == tmp_path / "out" / "figure1.png"
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = fig.get_size_inches() * plots.DPI
        assert im.size == (round(w), round(h))
    assert [p.name for p in path.parent.iterdir()] == ["figure1.png"]  # no temporary file left
    plots.save(plots.figure_curves({"m": _log(3, 1)}), path)  # overwrite in place
    assert [p.name for p in path.parent.iterdir()] == ["figure1.png"]


def test_save_failure_leaves_nothing(tmp_path, monkeypatch):
    fig = Figure()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.save(fig, tmp_path / "f.png")
    assert list(Path(tmp_path).iterdir()) == []


def test_training_curves_mark_the_epoch_whose_checkpoint_was_kept():
    """The committed Drosophila quick run's 2D log: its IoU at 0.5 peaks at epoch 16, but `train` kept epoch 17's
    checkpoint (the best IoU at its best threshold); the mark is on 17 (before: 16), on the curve of the IoU at the
    best threshold, which is drawn (before: at 0.5, where a model calibrated lower drew 0 beside a kept 0.37)."""
    import csv

    path = Path(__file__).parents[1] / "results" / "drosophila-quick-epyc" / "model_2D" / "log.csv"
    rows = list(csv.DictReader(path.open()))
    assert int(np.argmax([float(r["val_iou"]) for r in rows])) + 1 == 16
    ax_loss, ax_val = Figure().subplots(1, 2)
    plots.training_curves(ax_loss, ax_val, {"2D U-Net": rows}, time_unit="s")
    (x, y), = ax_val.collections[0].get_offsets()
    assert (x, y) == (float(rows[16]["elapsed_seconds"]), float(rows[16]["val_iou_best"]))
    line, = ax_val.lines
    assert line.get_label() == "2D U-Net, validation (best threshold)"
    np.testing.assert_array_equal(line.get_ydata(), [float(r["val_iou_best"]) for r in rows])
