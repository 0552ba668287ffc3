"""bioimage.io export: packages of models trained on real crops pass bioimageio.core's own model test."""

import dataclasses
import json
import warnings
import zipfile

import bioimageio.core
import bioimageio.spec
import imageio
import numpy as np
import pytest
import tifffile
import torch
import yaml
import zarr

from mitoseg import cli, datasets, export
from mitoseg import train as tr
from mitoseg.config import Config
from mitoseg.predict import predict_array


def _run(tmp_path, raw, mask, dims, voxel_size, **changes):
    cfg = Config(dims=dims, patch_xy=64, patch_z=8, batch=1, epochs=1, iterations_per_epoch=2, warmup_iterations=1,
                 tile_xy=128, tile_z=8, overlap=0.25, val_fraction=0.25, voxel_size=voxel_size, **changes)
    tr.train(cfg, raw, mask, tmp_path / "run", progress=False)
    tifffile.imwrite(tmp_path / "sample.tif", raw)
    return tmp_path / "run", tmp_path / "sample.tif"


@pytest.fixture(scope="module")
def ca1_run(tmp_path_factory, lucchi_crop):
    """A 2D run trained two iterations on 8 CA1 slices, and those slices as a TIFF."""
    raw, mask = lucchi_crop
    return _run(tmp_path_factory.mktemp("ca1"), raw[:8], mask[:8], 2, (5, 5, 5), data=datasets.DERIVED)


def _rdf(package) -> dict:
    with zipfile.ZipFile(package) as z:
        return yaml.safe_load(z.read("rdf.yaml"))


def _tensor(package, name: str) -> np.ndarray:
    import io as pyio

    with zipfile.ZipFile(package) as z:
        return np.load(pyio.BytesIO(z.read(name)))


def test_2d_package_passes_bioimageio_test_and_matches_mitoseg(tmp_path, ca1_run, lucchi_crop):
    raw = lucchi_crop[0]
    run, sample = ca1_run
    package = tmp_path / "ca1_2d.zip"
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert cli.main(["export", str(run), "--bioimageio", str(package), "--sample", str(sample), "--license",
                         "CC-BY-4.0", "--author", "A. Person", "--author", "B. Person"]) == 0
    assert not [w for w in said if issubclass(w.category, torch.jit.TracerWarning)]  # no noise for users
    summary = bioimageio.core.test_model(str(package))
    assert summary.status == "passed", [(d.name, [e.msg for e in d.errors]) for d in summary.details]

    rdf = _rdf(package)
    assert rdf["format_version"].startswith("0.5") and "torchscript" in rdf["weights"]
    assert rdf["license"] == "CC-BY-4.0" and [a["name"] for a in rdf["authors"]] == ["A. Person", "B. Person"]
    axes = {a["id"]: a for a in rdf["inputs"][0]["axes"] if a["type"] == "space"}
    assert {k: (a["scale"], a["unit"]) for k, a in axes.items()} == {"y": (5.0, "nanometer"), "x": (5.0, "nanometer")}
    assert [p["id"] for p in rdf["inputs"][0]["preprocessing"] if p["id"] != "ensure_dtype"] == ["scale_range", "clip"]
    # a consumer's blocks get a halo in whole encoder steps, as much as one tile (128 here) leaves valid
    assert [a.get("halo") for a in rdf["outputs"][0]["axes"] if a["type"] == "space"] == [32, 32]
    assert [a["size"] for a in axes.values()] == [{"min": 96, "step": 32}] * 2
    with zipfile.ZipFile(package) as z:  # the run it started from (--init) by name only
        z.extractall(tmp_path / "unpacked")
    # a cover for the model zoo's page, the test input and output split along the diagonal (before: none saved)
    assert [c["source"] for c in rdf["covers"]] == ["cover.png"]
    cover = imageio.v3.imread(tmp_path / "unpacked" / "cover.png")
    assert cover.shape[:2] == _tensor(package, "test_input.npy").shape[-2:] and cover.std() > 0
    for tensor, name in ((rdf["inputs"][0], "input"), (rdf["outputs"][0], "output")):  # for FAIR: viewers read TIFF
        assert tensor["sample_tensor"]["source"] == f"sample_{name}.tif"
        sample = tifffile.imread(tmp_path / "unpacked" / f"sample_{name}.tif")
        np.testing.assert_array_equal(sample, _tensor(package, f"test_{name}.npy")[0, 0])
    _, cfg = tr.load_model(run, "cpu")
    started = dataclasses.replace(cfg, init=str(tmp_path / "old_run"))
    descr = export._description(started, tmp_path / "unpacked", None, [32, 32])
    assert descr.model_dump(mode="json")["config"]["mitoseg"]["training"]["init"] == "old_run"
    with zipfile.ZipFile(package) as z, zipfile.ZipFile(z.open("weights.torchscript.pt")) as weights:
        names = weights.namelist()  # no debug records: they hold this machine's paths
        assert any(n.endswith("data.pkl") for n in names) and not any(n.endswith(".debug_pkl") for n in names)
        assert str(tmp_path.parents[1]).encode() not in z.read("rdf.yaml") + z.read("README.md")

    # the package computes what mitoseg computes: its test output is mitoseg's prediction of the test input
    x, y = _tensor(package, "test_input.npy"), _tensor(package, "test_output.npy")
    assert x.shape == (1, 1, 128, 128) and np.array_equal(x[0, 0], raw[3, 64:192, 64:192])
    model, cfg = tr.load_model(run, "cpu")
    low, high = np.percentile(x, [export.LOW, export.HIGH])
    window = (float(low), float(high) + export.EPS)
    ours = predict_array(model, x[0], 2, (1, 128, 128), 0.25, window, torch.device("cpu"), amp=False)
    np.testing.assert_allclose(y[0, 0], ours[0], atol=1e-4)

    # what it learned from, cited and tagged as such, and the post-processing its validation chose
    assert [c["doi"] for c in rdf["cite"]][0] == "10.1109/TMI.2011.2171705" and "fib-sem" in rdf["tags"]
    with zipfile.ZipFile(package) as z:
        readme = z.read("README.md").decode()
    assert "Training data: EPFL CA1 hippocampus FIB-SEM (Lucchi et al.), derived public copy" in readme
    chosen = json.loads((run / "postprocessing.json").read_text())["chosen"]
    assert rdf["config"]["mitoseg"]["postprocessing"] == chosen
    assert f"threshold it at {chosen['threshold']:g}" in readme
    assert f"threshold it at {chosen['threshold']:g}" in rdf["outputs"][0]["description"]


def test_3d_package_of_an_anisotropic_stack(tmp_path, droso_crop):
    """50 nm sections: the package's Z axis says 50 nm and accepts depths in steps of the Z stride (4)."""
    raw, mask = droso_crop
    run, sample = _run(tmp_path, raw[:12, :128, :128], mask[:12, :128, :128], 3, (50, 4.6, 4.6))
    package = export.export_bioimageio(run, str(sample), tmp_path / "droso_3d.zip")
    summary = bioimageio.core.test_model(str(package))
    assert summary.status == "passed", [(d.name, [e.msg for e in d.errors]) for d in summary.details]
    z = next(a for a in _rdf(package)["inputs"][0]["axes"] if a.get("id") == "z")
    assert z["scale"] == 50.0 and z["size"] == {"min": 4, "step": 4}
    assert _tensor(package, "test_input.npy").shape == (1, 1, 8, 128, 128)
    # a run that recorded no data (the Python API without `data`): no data set cited or tagged, and it says so
    rdf = _rdf(package)
    assert [c["doi"] for c in rdf["cite"]] == [doi for _, doi in export.CITATIONS]
    assert "fib-sem" not in rdf["tags"] and "sstem" not in rdf["tags"]
    with zipfile.ZipFile(package) as z:
        assert "Training data: not recorded by the run." in z.read("README.md").decode()
    assert rdf["license"] == "MIT" and [a["name"] for a in rdf["authors"]] == ["mitoseg developers"]  # defaults
    _, cfg = tr.load_model(run, "cpu")  # the Drosophila stack's licence, when a run learned from it
    with zipfile.ZipFile(package) as z:  # its budget and batch as they were (before: "or None minutes", "batch 1")
        readme = z.read("README.md").decode()
    assert "None" not in readme and f"{export._budget(cfg)}; patches" in readme and "1 a batch" in readme
    assert export._budget(dataclasses.replace(cfg, minutes=None, epochs=1)) == "1 epoch at most"
    assert export._start(dataclasses.replace(cfg, init="/x/old", annotated_slices="0,6")) == (
        " Started from the run `old` (fine-tuned). Annotated slices only: 0,6.")
    assert "Its licence: CC BY-NC-SA 3.0" in export._data_licence(dataclasses.replace(cfg, data="Drosophila VNC ssTEM"))
    # a run whose voxel size nobody stated: axes in voxels, not the default's nm (before: 5 nm, as if known)
    with zipfile.ZipFile(package) as z:
        z.extractall(tmp_path / "files")
    unstated = export._description(dataclasses.replace(cfg, voxel_size_stated=False), tmp_path / "files", None,
                                   [0, 0, 0])
    assert [(a.unit, a.scale) for a in unstated.inputs[0].axes[2:]] == [(None, 1.0)] * 3
    assert [(a.unit, a.scale) for a in unstated.outputs[0].axes[2:]] == [(None, 1.0)] * 3
    size = " x ".join(f"{v:g}" for v in cfg.voxel_size)
    assert f"(voxels of a size its training data did not state; encoder strides planned for {size} nm)" in \
        unstated.description  # a 3D run (before: brackets inside brackets, then a "(Z, Y, X)" of nothing)
    flat = dataclasses.replace(cfg, voxel_size_stated=False, dims=2)
    assert "2D, voxels of a size its training data did not state; every spatial size" in export._readme(
        run, flat, None, [0, 0]) and "strides" not in export.voxel_words(flat)


def test_export_mistakes_are_one_line(tmp_path, ca1_run, lucchi_crop, capsys, monkeypatch):
    raw = lucchi_crop[0]
    run, sample = ca1_run
    (tmp_path / "taken.zip").write_bytes(b"")
    (tmp_path / "TAKEN.ZIP").write_bytes(b"")
    tifffile.imwrite(tmp_path / "tiny.tif", raw[:2, :16, :16])
    tifffile.imwrite(tmp_path / "flat.tif", np.full((8, 256, 256), 7, np.uint8))
    tifffile.imwrite(tmp_path / "mask.tif", lucchi_crop[1][:8] * np.uint8(255))  # before: packaged as the sample
    probs = zarr.create_array(str(tmp_path / "probs.zarr"), data=raw[:8])
    probs.attrs["kind"] = "probability"
    for args, message in [
        (["--bioimageio", str(tmp_path / "m.zip"), "--sample", str(tmp_path / "flat.tif")], "holds one grey level"),
        (["--bioimageio", str(tmp_path / "m.zip"), "--sample", str(tmp_path / "mask.tif")],
         "holds only the grey levels 0, 255 (sampled): a mask or labels"),
        (["--bioimageio", str(tmp_path / "m.zip"), "--sample", str(tmp_path / "probs.zarr")],
         "is a mitoseg probability output"),
        (["--bioimageio", str(tmp_path / "taken.zip")], "exists; pass --overwrite"),
        (["--bioimageio", str(tmp_path / "model.yaml")], "the package is a .zip file"),
        (["--bioimageio", str(tmp_path / "TAKEN.ZIP")], "exists; pass --overwrite"),  # a .ZIP too (was: "a .zip file")
        (["--bioimageio", str(tmp_path / "m.zip"), "--license", "FOO"], "--license FOO is not an SPDX licence id"),
        (["--bioimageio", str(tmp_path / "m.zip"), "--sample", str(tmp_path / "tiny.tif")], "smaller than one input"),
    ]:
        args = args if "--sample" in args else [*args, "--sample", str(sample)]
        assert cli.main(["export", str(run), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "m.zip").exists() and (tmp_path / "taken.zip").read_bytes() == b""
    (tmp_path / "folder.zip").mkdir()
    broken = raw[:4].astype(np.float32)
    broken[:, 100, 100] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", broken)
    for args, message in [
        (["--bioimageio", str(tmp_path / "folder.zip"), "--overwrite"], "is a folder; give the package's file name"),
        (["--bioimageio", str(tmp_path / "m.zip"), "--sample", str(tmp_path / "nan.tif")], "NaN or infinite"),
    ]:
        args = args if "--sample" in args else [*args, "--sample", str(sample)]
        assert cli.main(["export", str(run), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir() if "zip" in p.name) == ["folder.zip", "taken.zip"]

    def cut(descr, output_path):  # Ctrl-C while the package is being written
        output_path.write_bytes(b"half a package")
        raise KeyboardInterrupt

    monkeypatch.setattr(bioimageio.spec, "save_bioimageio_package", cut)
    with pytest.raises(KeyboardInterrupt):
        export.export_bioimageio(run, str(sample), tmp_path / "cut.zip")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("cut")]
    equalized, _ = _run(tmp_path / "eq", raw[:8], lucchi_crop[1][:8], 2, (5, 5, 5), normalize="equalize")
    capsys.readouterr()  # its training's own lines (this tiny run has not learned: said)
    assert cli.main(["export", str(equalized), "--bioimageio", str(tmp_path / "e.zip"), "--sample", str(sample)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--normalize equalize" in err and not (tmp_path / "e.zip").exists()
    context, _ = _run(tmp_path / "ctx", raw[:8], lucchi_crop[1][:8], 2, (5, 5, 5), context_slices=1)
    capsys.readouterr()
    assert cli.main(["export", str(context), "--bioimageio", str(tmp_path / "c.zip"), "--sample", str(sample)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--context-slices" in err and not (tmp_path / "c.zip").exists()
    planes, _ = _run(tmp_path / "planes", raw[:8], lucchi_crop[1][:8], 2, (5, 5, 5), planes=3)
    capsys.readouterr()
    assert cli.main(["export", str(planes), "--bioimageio", str(tmp_path / "p.zip"), "--sample", str(sample)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--planes 3" in err and not (tmp_path / "p.zip").exists()


def test_a_full_resolution_run_reloads_and_traces_for_every_size(tmp_path, lucchi_crop):
    """A run with `full_resolution` reloads as it was trained, and its network's trace (as the package holds it)
    runs on another size than the traced one, as the network itself does."""
    raw, mask = lucchi_crop
    run, _ = _run(tmp_path, raw[:8], mask[:8], 2, (5, 5, 5), full_resolution=4)
    model, cfg = tr.load_model(run)
    assert cfg.full_resolution == 4 and model.net.stage.conv_0.conv.out_channels == 4
    net = export.traceable(model.net).eval()
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.rand(1, 1, 64, 64), check_trace=False)
        x = torch.from_numpy(raw[:1, None, :96, :128].astype(np.float32) / 255)
        torch.testing.assert_close(traced(x), net(x))
