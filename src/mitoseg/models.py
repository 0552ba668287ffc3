"""The 2D and 3D U-Nets: MONAI FlexibleUNet with a ResNet18 encoder, identical but for spatial_dims
and, on anisotropic voxels, the 3D encoder's per-axis strides (`encoder_strides`)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mitoseg.config import Config

DIVISOR = 32  # the ResNet encoder halves each axis five times (on isotropic voxels)
STAGES = 5  # stride-2 stages of the ResNet18 encoder: stem conv, max-pool, layer2, layer3, layer4


def encoder_strides(voxel_size: Sequence[float], dims: int) -> list[tuple[int, ...]]:
    """Per-stage strides of the encoder, one tuple per stage ((Z,) Y, X), from the voxel size (nm).

    nnU-Net's planning rule: at each stage an axis is halved only while its current spacing is at most
    twice the finest current spacing; halving doubles that axis's spacing. Isotropic voxels (and every
    2D model) halve every axis five times; 50 nm sections with 4.6 nm pixels are halved in-plane only
    for the first three stages, then in Z too (Z shrinks 4x, Y and X 32x).
    """
    spacing = [float(v) for v in voxel_size][-dims:]
    if dims == 2 or len(set(spacing)) == 1:
        return [(2,) * dims] * STAGES
    out = []
    for _ in range(STAGES):
        finest = min(spacing)
        stride = tuple(2 if s <= 2 * finest else 1 for s in spacing)
        spacing = [s * k for s, k in zip(spacing, stride, strict=True)]
        out.append(stride)
    return out


def input_multiple(voxel_size: Sequence[float], dims: int) -> list[int]:
    """What each axis of the network's input must be a multiple of (`PadToMultiple` pads it so): the product of
    the encoder's strides along it (`encoder_strides`)."""
    return [int(np.prod([stride[axis] for stride in encoder_strides(voxel_size, dims)])) for axis in range(dims)]


def _set_strides(net: nn.Module, strides: list[tuple[int, ...]]) -> None:
    """Give a FlexibleUNet(resnet) per-axis stage strides, in place (weights are unchanged).

    Written here because FlexibleUNet hard-codes stride 2 on every axis of every stage; these are the
    five modules that stride in its ResNet encoder and the five upsamplings of its decoder.
    """
    enc = net.encoder
    enc.conv1.stride = strides[0]
    enc.maxpool.stride = strides[1]
    for layer, stride in zip((enc.layer2, enc.layer3, enc.layer4), strides[2:], strict=True):
        block = layer[0]
        block.conv1.stride = stride
        block.downsample = partial(enc._downsample_basic_block, planes=block.conv1.out_channels, stride=stride,
                                   spatial_dims=len(stride))
    for block, stride in zip(net.decoder.blocks, reversed(strides), strict=True):
        block.upsample.upsample_non_trainable.scale_factor = tuple(float(k) for k in stride)


class PadToMultiple(nn.Module):
    """Pads inputs to a multiple of the encoder's total stride per spatial axis and crops the output back.

    Hand-written because FlexibleUNet fails on other sizes, and thin anisotropic stacks
    (e.g. 20 sections) must still be segmentable by the 3D model.
    """

    def __init__(self, net: nn.Module, divisor: int | Sequence[int] = DIVISOR):
        super().__init__()
        self.net = net
        self.divisor = divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = x.shape[2:]
        divisors = [self.divisor] * len(sizes) if isinstance(self.divisor, int) else self.divisor
        pads = [(-s) % d for s, d in zip(sizes, divisors, strict=True)]
        if not any(pads):
            return self.net(x)
        flat = [p for pad in reversed(pads) for p in (0, pad)]
        y = self.net(F.pad(x, flat, mode="replicate"))
        return y[(slice(None), slice(None), *(slice(0, s) for s in sizes))]


def _instance_norm(net: nn.Module) -> None:
    """Replace every BatchNorm of `net` (in place) by InstanceNorm with affine weights, as nnU-Net uses.
    Hand-written: MONAI's ResNet encoder of FlexibleUNet takes no norm argument."""
    kinds = {nn.BatchNorm2d: nn.InstanceNorm2d, nn.BatchNorm3d: nn.InstanceNorm3d}
    for module in list(net.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) in kinds:
                setattr(module, child_name, kinds[type(child)](child.num_features, eps=child.eps, affine=True))


# PyTorch (2.13) runs a float32 CPU convolution on its slow im2col kernel instead of oneDNN when it has batch 1,
# one group, a kernel at most 3 wide in Y or X and at most this many values in (N, C, Z, Y) together
# (`ConvParams::use_mkldnn` in ATen's Convolution.cpp).
_IM2COL_LIMIT = 20480


class Conv3d(nn.Conv3d):
    """`nn.Conv3d` that keeps batch-1 float32 CPU convolutions on oneDNN: the same convolution, a 1.33x faster
    3D training step at the `cpu` preset's 32 x 128 x 128 patch (benchmarks/bench_train.py) and 1.9x at
    the tests' 8 x 64 x 64 (benchmarks/bench_conv3d.py), on 2 Zen 3 cores.

    Hand-written because PyTorch picks its im2col kernel for the small deep layers of a batch-1 3D U-Net
    (`_IM2COL_LIMIT`), and only the convolution's own arguments choose the kernel: a two-group convolution of
    the input taken twice (each group makes half the output channels from all input channels) is the same
    convolution and takes oneDNN, forward and backward. Elsewhere (GPU, bf16 autocast, batches, tracing for
    export) it is `nn.Conv3d` itself."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self._im2col(x):
            return F.conv3d(torch.cat([x, x], 1), weight, bias, self.stride, self.padding, self.dilation, 2)
        return super()._conv_forward(x, weight, bias)

    def _im2col(self, x: torch.Tensor) -> bool:
        """Whether PyTorch would run this convolution of `x` on its im2col kernel (and the rewrite applies)."""
        return (x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[0] == 1 and self.groups == 1
                and self.out_channels % 2 == 0 and self.padding_mode == "zeros"
                and x.shape[1] * x.shape[2] * x.shape[3] <= _IM2COL_LIMIT
                and not (self.kernel_size[1] > 3 and self.kernel_size[2] > 3)
                and not (self.kernel_size[1:] == (1, 1) and set(self.stride) | set(self.dilation) == {1}
                         and torch.get_num_threads() == 1)  # single-threaded 1x1 stays on im2col even in groups
                and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
                and not torch.is_autocast_enabled("cpu") and not torch.jit.is_tracing())


class FullResolutionUNet(nn.Module):
    """A FlexibleUNet whose decoder's last block, at full resolution, also takes `channels` features of the input
    made there (MONAI's TwoConv: two 3x3 convolutions, each normalised and rectified) as its skip.

    Written here because FlexibleUNet cannot: its ResNet encoder starts at half resolution and its decoder's last
    block has no skip, so every surface is placed from features upsampled from half resolution."""

    def __init__(self, net: nn.Module, in_channels: int, channels: int, dims: int):
        super().__init__()
        from monai.networks.nets.basic_unet import TwoConv, UpCat

        act, norm = ("relu", {"inplace": True}), ("batch", {"eps": 1e-3, "momentum": 0.1})  # FlexibleUNet's own
        last = net.decoder.blocks[-1]
        block = UpCat(dims, in_chns=last.convs.conv_0.conv.in_channels, cat_chns=channels,
                      out_chns=last.convs.conv_1.conv.out_channels, act=act, norm=norm, bias=False,
                      upsample="nontrainable", interp_mode="nearest", align_corners=None, halves=False,
                      is_pad=False)  # PadToMultiple makes the sizes match: no pad copy at full resolution
        block.upsample.upsample_non_trainable.scale_factor = last.upsample.upsample_non_trainable.scale_factor
        net.decoder.blocks[-1] = block
        self.net = net
        self.stage = TwoConv(dims, in_channels, channels, act, norm, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stage(x), *self.net.encoder(x)]
        return self.net.segmentation_head(self.net.decoder(features, len(features) - 1))


def build_model(config: Config) -> nn.Module:
    """A U-Net mapping (B, 1, [Z,] Y, X) float32 in [0, 1] to (B, 1, [Z,] Y, X) foreground logits; a 2D model
    with `config.context` k > 0 takes (B, 1 + 2k, Y, X): a slice's k neighbours on each side in Z order,
    the slice itself in the middle channel.

    The encoder's strides follow `encoder_strides(config.voxel_size, config.dims)`; `config.norm` "instance"
    puts instance normalisation (with affine weights) where BatchNorm is, in the decoder and the encoder.
    The model's `normalize` attribute is `config.normalize`, the intensity rule its inputs need, and its
    `context` attribute is k, the neighbouring slices prediction reads (`predict.blend_block`), its `planes`
    attribute the planes it predicts along (`Config.slice_planes`).
    `config.full_resolution` c > 0 gives the decoder c full-resolution features (`FullResolutionUNet`)."""
    from monai.networks.nets import FlexibleUNet

    extra = {"norm": ("instance", {"affine": True})} if config.norm == "instance" else {}
    net = FlexibleUNet(in_channels=1 + 2 * config.context, out_channels=1, backbone=config.encoder,
                       spatial_dims=config.dims, pretrained=False, **extra)
    strides = encoder_strides(config.voxel_size, config.dims)
    if any(k != 2 for stride in strides for k in stride):
        _set_strides(net, strides)
    if config.full_resolution:
        net = FullResolutionUNet(net, 1 + 2 * config.context, config.full_resolution, config.dims)
    if config.norm == "instance":
        _instance_norm(net)
    for module in net.modules():
        if type(module) is nn.Conv3d:
            module.__class__ = Conv3d  # the same module and weights, only its forward differs (see Conv3d)
    model = PadToMultiple(net, input_multiple(config.voxel_size, config.dims))
    model.normalize = config.normalize  # the input rule it expects: prediction without a window reads it
    model.context = config.context
    model.planes = config.slice_planes
    return model


def pick_device(name: str = "auto") -> torch.device:
    """The torch device of a `--device` name; 'auto' picks CUDA, then Apple MPS, then the CPU. All device
    choices live here and in `accelerator`, `synchronize`: no other code assumes CUDA is the only one.
    A device this machine does not have is refused (MitosegError), not silently replaced."""
    from mitoseg.errors import MitosegError

    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed patch and tile shapes: cuDNN times its algorithms once
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise MitosegError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise MitosegError(f"device {name!r} is not available here ({torch.cuda.device_count()} CUDA devices); "
                           "use --device auto or cpu")
    if device.type == "mps" and not _mps_available():
        raise MitosegError("device 'mps' is not available here (Apple silicon with PyTorch's MPS build only)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise MitosegError(f"device {name!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return device


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def accelerator(device: torch.device) -> bool:
    """Whether `device` is a GPU (CUDA or MPS): bigger prediction batches, device memory reporting."""
    return device.type in ("cuda", "mps")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for honest timings); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def bf16_native(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively: a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX.
    Elsewhere bf16 is emulated and slower than float32, so autocast stays off."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast where the hardware has native bf16 (no loss scaling needed), else a no-op.

    On a CPU with AVX512-BF16 it makes inference ~2x faster than float32 (benchmarks/bench_backends.py),
    and with AMX training steps 1.5x (2D) to 2.9x (3D) faster (benchmarks/bench_train.py).
    `Config.amp = False` / `--fp32` turns it off. bf16 3D convolution backward on CPU (oneDNN, torch
    2.13) gave non-finite gradients now and then, so `train` skips any step whose gradients are not
    finite (as a GPU loss scaler does) and logs how many it skipped.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and bf16_native(device))


def model_dims(model: nn.Module) -> int | None:
    """2 or 3: the dimensions of a network's first convolution; None for a network without one."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Conv3d)), None)
    return None if first is None else 2 if isinstance(first, nn.Conv2d) else 3


def channels_last(model: nn.Module, dims: int) -> nn.Module:
    """The model with channels-last weights (in place): 1.3x faster inference on CPU for both models
    (benchmarks/bench_backends.py); inputs are converted to match in `predict`."""
    return model.to(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
