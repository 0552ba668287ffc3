"""The 2D and 3D U-Nets: MONAI FlexibleUNet with a ResNet18 encoder, identical but for spatial_dims."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mitoseg.config import Config

DIVISOR = 32  # the ResNet encoder halves each axis five times


class PadToMultiple(nn.Module):
    """Pads inputs to a multiple of 32 per spatial axis and crops the output back.

    Hand-written because FlexibleUNet fails on other sizes, and thin anisotropic stacks
    (e.g. 20 sections) must still be segmentable by the 3D model.
    """

    def __init__(self, net: nn.Module, divisor: int = DIVISOR):
        super().__init__()
        self.net = net
        self.divisor = divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = x.shape[2:]
        pads = [(-s) % self.divisor for s in sizes]
        if not any(pads):
            return self.net(x)
        flat = [p for pad in reversed(pads) for p in (0, pad)]
        y = self.net(F.pad(x, flat, mode="replicate"))
        return y[(slice(None), slice(None), *(slice(0, s) for s in sizes))]


def build_model(config: Config) -> nn.Module:
    """A U-Net mapping (B, 1, [Z,] Y, X) float32 in [0, 1] to (B, 1, [Z,] Y, X) foreground logits."""
    from monai.networks.nets import FlexibleUNet

    net = FlexibleUNet(in_channels=1, out_channels=1, backbone=config.encoder,
                       spatial_dims=config.dims, pretrained=False)
    return PadToMultiple(net)


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def bf16_native(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively: a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX.
    Elsewhere bf16 is emulated and slower than float32, so autocast stays off."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def autocast(device: torch.device, enabled: bool = True, training: bool = False):
    """bf16 autocast where the hardware has native bf16 (no loss scaling needed), else a no-op.

    On a CPU with AVX512-BF16 it makes inference ~2x faster than float32 (benchmarks/bench_backends.py);
    `Config.amp = False` / `--fp32` turns it off. Training uses it on GPUs only: on CPU, bf16 3D
    convolution backward (oneDNN, torch 2.13) gave non-finite gradients now and then in our runs.
    """
    native = bf16_native(device) and (device.type == "cuda" or not training)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and native)


def channels_last(model: nn.Module, dims: int) -> nn.Module:
    """The model with channels-last weights (in place): 1.3x faster inference on CPU for both models
    (benchmarks/bench_backends.py); inputs are converted to match in `predict`."""
    return model.to(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
