"""The README's napari screenshot (docs/napari-ca1.png): central slices of the EPFL CA1 test volume,
predicted and labelled by a trained run with mitoseg's own code (`predict.predict`,
`instances.label_volume`, into OME-Zarr under --out), opened by mitoseg's napari reader, with the
"Segment mitochondria" widget docked.

Needs a display with OpenGL (napari draws with it); on a Linux machine without a screen, Xvfb and the
X libraries Qt's xcb platform loads (Debian: apt-get install xvfb libxcb-icccm4 libxcb-keysyms1
libxcb-cursor0), then:
    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python docs/make_screenshot.py runs/ca1-2d-10min
Qt's offscreen platform does not do: its canvas grabs come out black or stale.
"""

import argparse
from pathlib import Path

from PIL import Image

from mitoseg import blocks, datasets, instances, io, predict
from mitoseg.viewer import add_layers, scale_bar

VOXEL = (5.0, 5.0, 5.0)  # CA1: 5 nm isotropic


def write_image(volume, path: Path) -> None:
    """An image (Z, Y, X) as an OME-Zarr image with its pyramid, through the block engine."""
    out = blocks.open_output(path, volume.shape, volume.dtype, volume.shape, {}, {"kind": "image", "voxel_size": VOXEL},
                             overwrite=True)
    out.write(tuple(slice(0, s) for s in volume.shape), volume)
    blocks.finish(out, overwrite=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="trained run folder (or checkpoint)")
    p.add_argument("--out", default="runs/napari-ca1", help="folder for the crop and its outputs (OME-Zarr)")
    p.add_argument("--png", default="docs/napari-ca1.png", help="the screenshot")
    p.add_argument("--slices", type=int, default=32, help="central slices of the test volume")
    p.add_argument("--min-size", type=int, default=1000, help="drop objects with fewer voxels")
    a = p.parse_args()

    found = datasets.lucchi_dir()
    if found is None:
        raise SystemExit("the CA1 data was not found (mitoseg data fetch lucchi)")
    volume = io.open_volume(found[0] / "testing.tif")
    z0 = (volume.shape[0] - a.slices) // 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    image, probs, labels = out / "image.ome.zarr", out / "probs.ome.zarr", out / "labels.ome.zarr"
    write_image(volume[z0:z0 + a.slices], image)
    predict.predict(a.model, image, probs, overwrite=True)
    n = instances.label_volume(probs, labels, min_size=a.min_size, overwrite=True)
    print(f"slices {z0}..{z0 + a.slices - 1} of {found[0].name}/testing.tif: {n} objects")

    import napari
    import napari.qt

    viewer = napari.Viewer()
    viewer.window.resize(1600, 1000)
    _, widget = viewer.window.add_plugin_dock_widget("mitoseg", "Segment mitochondria")
    widget.min_size.value = a.min_size
    add_layers(viewer, [image, probs, labels])
    viewer.layers["probs"].visible = False
    viewer.layers.selection.active = viewer.layers["image"]
    scale_bar(viewer).visible = True
    viewer.dims.set_point(0, (a.slices // 2) * VOXEL[0])
    napari.qt.get_qapp().processEvents()  # lay the window out at its size before fitting the view
    viewer.reset_view()
    napari.qt.get_qapp().processEvents()
    rgba = viewer.screenshot(canvas_only=False)
    Image.fromarray(rgba[..., :3]).save(a.png, optimize=True)  # opaque: RGB is a fifth smaller
    print(f"wrote {a.png}")
    viewer.close()


if __name__ == "__main__":
    main()
