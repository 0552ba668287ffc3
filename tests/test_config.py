import pytest

from mitoseg.config import Config, with_planes
from mitoseg.errors import MitosegError


def test_another_number_of_planes_only_for_a_2d_model_of_single_slices_on_near_isotropic_voxels():
    """`with_planes`: an XY run may predict along three planes and a three-plane run along XY only; a 3D
    model, a model of neighbouring slices and anisotropic voxels are refused with the reason."""
    xy = Config(dims=2)
    assert with_planes(xy, 3).slice_planes == 3 and with_planes(xy, 1) is xy
    assert with_planes(Config(dims=2, planes=3), 1).slice_planes == 1
    assert with_planes(Config(dims=3), 1).slice_planes == 1
    with pytest.raises(MitosegError, match="--planes is for a 2D model; this run is a 3D model"):
        with_planes(Config(dims=3), 3)
    with pytest.raises(MitosegError, match="neighbouring slices"):
        with_planes(Config(dims=2, context_slices=1), 3)
    # said of the run's training voxels (before: "these are 50 x 4.6 x 4.6 nm", read as the image's)
    with pytest.raises(MitosegError, match=r"this model was trained on 50 x 4.6 x 4.6 nm voxels \(Z, Y, X\), too "
                                           "anisotropic for slices along ZX and ZY: it predicts XY slices only"):
        with_planes(Config(dims=2, voxel_size=(50, 4.6, 4.6)), 3)
    with pytest.raises(MitosegError, match="planes must be 1 or 3, not 2"):
        with_planes(xy, 2)


def test_an_encoder_or_dims_it_cannot_build_is_refused_up_front():
    """Before any training: an encoder FlexibleUNet offers but mitoseg cannot re-stride, a name it does not
    know, and dims that are not 2 or 3; 2.0 is taken as 2 (MONAI needs an int)."""
    for encoder in ("resnet999", "resnet50"):
        with pytest.raises(MitosegError, match=f"encoder must be one of resnet18, resnet34, not '{encoder}'"):
            Config(encoder=encoder)
    with pytest.raises(MitosegError, match="dims must be 2 or 3, not '3'"):
        Config(dims="3")
    assert type(Config(dims=2.0).dims) is int
    for voxel in (5, None, (5, 5)):
        with pytest.raises(MitosegError, match=r"voxel_size must be three numbers \(z, y, x\)"):
            Config(voxel_size=voxel)
    for flag in ("amp", "voxel_size_stated"):  # before: "no" taken as true
        with pytest.raises(MitosegError, match=f"{flag} must be True or False, not 'no'"):
            Config(**{flag: "no"})
