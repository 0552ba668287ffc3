"""The 2D and 3D ResNet18 U-Nets, the padding wrapper, device choice and the run configuration."""

import contextlib
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mitoseg.config import PRESETS, Config, cpu, quick
from mitoseg.errors import MitosegError
from mitoseg.models import (
    DIVISOR,
    Conv3d,
    FullResolutionUNet,
    PadToMultiple,
    autocast,
    bf16_native,
    build_model,
    encoder_strides,
    pick_device,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these inputs are tiny, and on a busy 2-core machine two spinning threads are ~30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(one_thread) -> dict[int, nn.Module]:
    torch.manual_seed(0)
    return {d: build_model(Config(dims=d)).eval() for d in (2, 3)}


def _conv_shapes(module: nn.Module) -> list[tuple[str, int, int]]:
    return [(name, m.in_channels, m.out_channels) for name, m in module.named_modules()
            if isinstance(m, nn.Conv2d | nn.Conv3d)]


@pytest.mark.parametrize("dims, shape", [(2, (2, 1, 50, 70)), (3, (1, 1, 20, 40, 70))])
def test_output_shape_matches_input_for_odd_sizes(models, dims, shape):
    x = torch.rand(shape)
    with torch.no_grad():
        y = models[dims](x)
    assert y.shape == x.shape
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert y.std() > 0  # logits vary over the image


def test_encoder_is_monai_resnet18(models):
    for dims, model in models.items():
        assert isinstance(model, PadToMultiple)
        assert type(model.net).__name__ == "FlexibleUNet"
        enc = model.net.encoder
        assert type(enc).__name__ == "ResNetEncoder" and type(enc).__module__.startswith("monai.")
        layers = [getattr(enc, f"layer{i}") for i in range(1, 5)]
        assert [len(layer) for layer in layers] == [2, 2, 2, 2]
        # basic blocks (two 3x3 convs), not bottlenecks
        assert all(type(block).__name__ == "ResNetBlock" for layer in layers for block in layer)
        assert [layer[-1].conv2.out_channels for layer in layers] == [64, 128, 256, 512]
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        assert isinstance(enc.conv1, conv) and enc.conv1.in_channels == 1


def test_2d_and_3d_share_the_architecture(models):
    two, three = _conv_shapes(models[2]), _conv_shapes(models[3])
    assert two == three  # same layers, same channels; only the kernel dimensionality differs
    assert len(two) > 20
    decoder = _conv_shapes(models[2].net.decoder)
    assert [c for _, c, _ in decoder][0] == 512 and decoder[-1][2] == 16
    assert models[2].net.segmentation_head[0].out_channels == 1
    assert all(isinstance(m, nn.Conv3d) for m in models[3].modules() if isinstance(m, nn.Conv2d | nn.Conv3d))


@pytest.mark.parametrize("dims, shape", [(2, (1, 1, 32, 64)), (3, (1, 1, 32, 32, 64))])
def test_wrapper_is_transparent_for_multiples_of_32(models, dims, shape):
    model = models[dims]
    x = torch.rand(shape)
    with torch.no_grad():
        assert torch.equal(model(x), model.net(x))


def test_wrapper_pads_at_the_far_end_and_crops_back(models):
    ident = PadToMultiple(nn.Identity())
    x = torch.rand(1, 1, 5, 33, 70)
    assert torch.equal(ident(x), x)  # output aligned with the input, not shifted by the padding
    seen = []

    class Spy(nn.Module):
        def forward(self, t):
            seen.append(t.shape)
            return t

    PadToMultiple(Spy())(x)
    assert seen == [torch.Size([1, 1, 32, 64, 96])]
    assert DIVISOR == 32
    # the real net on an odd size: the wrapper equals the net on the replicate-padded input, cropped
    x2 = torch.rand(1, 1, 20, 40)
    with torch.no_grad():
        want = models[2].net(F.pad(x2, (0, 24, 0, 12), mode="replicate"))[:, :, :20, :40]
        assert torch.allclose(models[2](x2), want)


@pytest.mark.parametrize("dims, voxel_size, shape", [(2, (5, 5, 5), (2, 1, 50, 70)),
                                                     (3, (50, 4.6, 4.6), (1, 1, 20, 40, 70))])
def test_full_resolution_features_reach_the_decoders_last_block(dims, voxel_size, shape):
    """`full_resolution` 8: the decoder's last block takes 8 channels made from the input beside its 32, the
    output keeps the input's shape (also where the encoder halves Z less often) and depends on them."""
    torch.manual_seed(0)
    model = build_model(Config(dims=dims, voxel_size=voxel_size, full_resolution=8)).train()
    plain = build_model(Config(dims=dims, voxel_size=voxel_size))
    assert isinstance(model.net, FullResolutionUNet) and not isinstance(plain.net, FullResolutionUNet)
    assert model.net.net.decoder.blocks[-1].convs.conv_0.conv.in_channels == 32 + 8
    added = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    assert added == sum(p.numel() for p in model.net.stage.parameters()) + 8 * 16 * 3 ** dims
    x = torch.rand(shape)
    y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert model.net.stage.conv_0.conv.weight.grad.abs().sum() > 0


def test_gradients_reach_the_first_conv(models):
    torch.manual_seed(0)
    model = copy.deepcopy(models[2]).train()
    x = torch.rand(2, 1, 30, 20)  # padded to 32 x 32: the padding is differentiated too
    target = (torch.rand(2, 1, 30, 20) > 0.5).float()
    loss = F.binary_cross_entropy_with_logits(model(x), target)
    loss.backward()
    grad = model.net.encoder.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    head = model.net.segmentation_head[0].weight.grad
    assert head is not None and head.abs().sum() > 0


@pytest.mark.parametrize("dims", [2, 3])
def test_instance_norm_replaces_every_batchnorm_and_ignores_the_batch(models, dims):
    """With norm 'instance' no BatchNorm is left, the parameter count is unchanged, and in training mode
    each sample's output is independent of the others in its batch (BatchNorm's is not)."""
    torch.manual_seed(0)
    net = build_model(Config(dims=dims, norm="instance")).train()
    kinds = {type(m).__name__ for m in net.modules()}
    assert not any(k.startswith("BatchNorm") for k in kinds) and f"InstanceNorm{dims}d" in kinds
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in models[dims].parameters())
    shape = (2, 1, 64, 64) if dims == 2 else (2, 1, 32, 64, 64)
    x = torch.rand(shape)
    other = torch.cat([x[:1], torch.rand(shape[:1][0] - 1, *shape[1:]) * 3])
    with torch.no_grad():
        torch.testing.assert_close(net(x)[:1], net(other)[:1])
        batch = build_model(Config(dims=dims)).train()
        assert not torch.allclose(batch(x)[:1], batch(other)[:1])


def test_pick_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    from mitoseg import models

    for cuda, mps, expect in [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(models, "_mps_available", lambda mps=mps: mps)
        assert pick_device("auto") == pick_device() == torch.device(expect)
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(MitosegError, match="device 'cuda' is not available here"):
        pick_device("cuda")  # never silently replaced by the CPU
    with pytest.raises(MitosegError, match="device 'mps' is not available"):
        pick_device("mps")
    with pytest.raises(MitosegError, match="unknown device 'gpu0'"):
        pick_device("gpu0")
    assert models.accelerator(torch.device("mps")) and not models.accelerator(torch.device("cpu"))


def test_autocast_is_bf16_exactly_where_the_cpu_has_it():
    cpu = torch.device("cpu")
    flags = set(open("/proc/cpuinfo").read().split())
    assert bf16_native(cpu) == bool(flags & {"avx512_bf16", "amx_tile"})
    with autocast(cpu):
        y = nn.Linear(4, 2)(torch.rand(3, 4))
    assert y.dtype == (torch.bfloat16 if bf16_native(cpu) else torch.float32)
    with autocast(cpu, enabled=False):
        y = nn.Linear(4, 2)(torch.rand(3, 4))
    assert y.dtype == torch.float32


# ---------------------------------------------------------------- config


def test_config_roundtrip(tmp_path):
    cfg = Config(dims=3, patch_xy=128, patch_z=16, minutes=2.5, voxel_size=(45, 4.6, 4.6), extra={"note": "x"})
    path = tmp_path / "config.json"
    cfg.save(path)
    saved = json.loads(path.read_text())
    assert saved["dims"] == 3 and saved["voxel_size"] == [45.0, 4.6, 4.6]
    back = Config.load(path)
    assert back == cfg
    assert back.voxel_size == (45.0, 4.6, 4.6) and isinstance(back.voxel_size, tuple)


def test_config_load_ignores_unknown_keys(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"dims": 3, "lr": 0.01, "from_a_newer_version": True}))
    cfg = Config.load(path)
    assert cfg.dims == 3 and cfg.lr == 0.01 and cfg.patch_xy == Config().patch_xy


@pytest.mark.parametrize("changes, message", [
    (dict(dims=1), "dims must be 2 or 3"),
    (dict(dims=4), "dims must be 2 or 3"),
    (dict(overlap=1.0), r"overlap must be a number in \[0, 1\), not 1.0"),
    (dict(overlap=-0.1), r"overlap must be a number in \[0, 1\), not -0.1"),
    (dict(epochs=0), "epochs must be an integer >= 1, not 0"),
    (dict(epochs=0, minutes=1.0), "epochs must be an integer >= 1"),  # a time budget needs epochs to run too
    (dict(minutes=0.0), "minutes must be a number > 0"),
    (dict(norm="layer"), "norm must be batch or instance, not 'layer'"),
])
def test_config_refuses_invalid(changes, message):
    with pytest.raises(MitosegError, match=message):
        Config(**changes)


def test_patch_batch_and_tile_definitions():
    two = Config(dims=2, patch_xy=128, patch_z=16, batch=3, tile_xy=256, tile_z=24)
    three = Config(dims=3, patch_xy=128, patch_z=16, batch=3, tile_xy=256, tile_z=24)
    assert two.patch == (1, 128, 128) and three.patch == (16, 128, 128)
    assert two.samples_per_batch == 48 and three.samples_per_batch == 3
    # the same number of voxels per iteration for both models
    assert two.samples_per_batch * two.patch[0] * 128 * 128 == three.samples_per_batch * 16 * 128 * 128
    assert two.tile == (1, 256, 256) and three.tile == (24, 256, 256)


def test_presets():
    cfg = quick(3, lr=0.005)
    assert cfg.dims == 3 and cfg.lr == 0.005 and cfg.minutes == 3.0 and cfg.patch == (32, 128, 128)
    assert quick(2).samples_per_batch == 32
    for name, preset in PRESETS.items():
        two, three = preset(2), preset(3)
        a, b = dict(two.__dict__), dict(three.__dict__)
        assert a.pop("dims") == 2 and b.pop("dims") == 3 and a == b, name  # identical but for dims
    assert cpu(2).minutes <= 40  # the CPU preset's promise: at most 40 minutes per model


# ---------------------------------------------------------------- anisotropic strides


def test_encoder_strides_follow_the_voxel_size():
    assert encoder_strides((5, 5, 5), 3) == [(2, 2, 2)] * 5
    assert encoder_strides((50, 4.6, 4.6), 2) == [(2, 2)] * 5  # a 2D model sees Y, X only
    # nnU-Net's rule: Z is halved only once it is at most twice as coarse as Y and X
    assert encoder_strides((50, 4.6, 4.6), 3) == [(1, 2, 2)] * 3 + [(2, 2, 2)] * 2
    assert encoder_strides((10, 5, 5), 3) == [(2, 2, 2)] * 5
    assert encoder_strides((12, 5, 5), 3) == [(1, 2, 2)] + [(2, 2, 2)] * 4


def test_anisotropic_model_keeps_thin_stacks_unpadded(droso_crop):
    raw, _ = droso_crop
    model = build_model(Config(dims=3, voxel_size=(50, 4.6, 4.6))).eval()
    assert model.divisor == [4, 32, 32]  # Z shrinks 4x, Y and X 32x
    x = torch.from_numpy(raw[None, None, :16, :64, :64].astype(np.float32) / 255)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    # the same weights fit the isotropic model: strides are not parameters
    iso = build_model(Config(dims=3))
    iso.load_state_dict(model.state_dict())
    assert iso.divisor == [32, 32, 32]


def _steps(model: nn.Module, x: torch.Tensor, n: int = 3) -> tuple[torch.Tensor, list[torch.Tensor], list[float], int]:
    """Output and parameter gradients of a first training forward + backward, the loss of `n` AdamW steps,
    and the number of im2col convolutions of the first step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for i in range(n):
        optimizer.zero_grad()
        with torch.profiler.profile() if i == 0 else contextlib.nullcontext() as prof:
            y = model(x)
            loss = y.square().mean()
            loss.backward()
        if i == 0:
            first = y.detach(), [p.grad.clone() for p in model.parameters()]
            im2col = sum(e.count for e in prof.key_averages() if e.key == "aten::slow_conv3d_forward")
        optimizer.step()
        losses.append(loss.item())
    return *first, losses, im2col


def test_3d_convolutions_take_onednn_at_batch_1_with_the_same_sums(droso_crop):
    """The thin-stack 3D model in training (batch 1, float32, 2 threads, CPU): PyTorch by itself runs most of
    its convolutions on its im2col kernel, mitoseg's all on oneDNN but the 1-channel head (two groups cannot
    split one channel), with the same output, gradients and losses over three AdamW steps; under bf16
    autocast and for batches, and for a single-threaded 1x1 convolution, it is nn.Conv3d itself."""
    raw, _ = droso_crop
    torch.manual_seed(0)
    model = build_model(Config(dims=3, voxel_size=(50, 4.6, 4.6))).train()
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if type(module) is Conv3d:
            module.__class__ = nn.Conv3d
    x = torch.from_numpy(raw[None, None, :8, :64, :64].astype(np.float32) / 255)
    torch.set_num_threads(2)  # the module's fixture runs one thread
    try:
        y, grads, losses, im2col = _steps(model, x)
        y_plain, grads_plain, losses_plain, im2col_plain = _steps(plain, x)
    finally:
        torch.set_num_threads(1)
    assert im2col == 1 and im2col_plain > 20, (im2col, im2col_plain)
    torch.testing.assert_close(y, y_plain, rtol=1e-4, atol=1e-5)
    # float32 gradients of this network hold about three digits with either kernel, up to 2e-2 of a gradient's
    # size where its terms cancel (against float64: benchmarks/bench_conv3d.py); a wrong rewrite is O(1) off
    for g, g_plain in zip(grads, grads_plain, strict=True):
        torch.testing.assert_close(g, g_plain, rtol=0, atol=3e-2 * float(g_plain.abs().max()))
    np.testing.assert_allclose(losses, losses_plain, rtol=3e-3)  # the loss falls by half: the same descent
    conv = model.net.encoder.layer4[0].conv2
    small = torch.zeros(1, conv.in_channels, 2, 2, 2)
    assert conv._im2col(small) and not conv._im2col(small.expand(2, -1, -1, -1, -1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not conv._im2col(small)
    preconv = model.net.decoder.blocks[0].upsample.preconv  # 1x1x1, stride 1
    assert not preconv._im2col(torch.zeros(1, preconv.in_channels, 2, 2, 2))  # one thread here
