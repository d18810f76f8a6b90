"""Segmentation networks (torch modules), built by name from the registry of ``fringelive.bundle.netspec``.

The reference network is the residual UNet of Sytwu, Rangel DaCosta & Scott: encoder residual
blocks 1→4→8→16→32, each followed by a 2×2 max-pool, a 32→64 bottleneck, a decoder of nearest ×2
upsampling, concat ``[skip, x]`` and residual blocks, and a 1×1 convolution to two class logits.
Module attribute names (``downs``, ``pools``, ``bottleneck``, ``upsamples``, ``ups``,
``final_conv``; ``conv1/bn1/relu1/conv2/bn2/relu2/conv_add`` in a block) match the published
checkpoints so their state dicts load without renaming.

Shapes: input ``(N, in_channels, H, W)`` float32 with H and W multiples of
:attr:`ResUNet.downsampling_factor`; output ``(N, num_classes, H, W)`` logits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fringelive.bundle.netspec import (MODEL_REGISTRY, UNetSpec, model_names, receptive_field, register_model,
                                       spec_for)

__all__ = [
    "UNetSpec",
    "ResidualBlock",
    "ResUNet",
    "MODEL_REGISTRY",
    "register_model",
    "build_model",
    "model_names",
    "receptive_field",
    "count_parameters",
]


class ResidualBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + conv_add(x))`` with ``conv_add`` a 1×1 projection."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        pad = (kernel_size - 1) // 2
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size, padding=pad)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.conv_add = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.conv_add(x))


class ResUNet(nn.Module):
    """Residual UNet; see the module docstring for the layout and shapes."""

    def __init__(self, spec: UNetSpec | None = None) -> None:
        super().__init__()
        self.spec = spec or UNetSpec()
        s = self.spec
        k = s.kernel_size
        self.downs = nn.ModuleList()
        self.pools = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        ch = s.in_channels
        for w in s.widths:
            self.downs.append(ResidualBlock(ch, w, k))
            self.pools.append(nn.MaxPool2d(kernel_size=s.pool, stride=s.pool))
            ch = w
        self.bottleneck = ResidualBlock(ch, s.bottleneck, k)
        deeper = list(s.widths[1:]) + [s.bottleneck]
        for w, below in reversed(list(zip(s.widths, deeper))):
            self.ups.append(ResidualBlock(w + below, w, k))
            self.upsamples.append(nn.Upsample(scale_factor=s.pool, mode="nearest"))
        self.final_conv = nn.Conv2d(s.widths[0], s.num_classes, kernel_size=1)
        self.num_blocks = len(s.widths)

    @property
    def downsampling_factor(self) -> int:
        return self.spec.downsampling_factor

    @property
    def receptive_field_radius(self) -> int:
        """Pixels on each side of an output pixel that can influence it (see :func:`receptive_field`)."""
        return receptive_field(self.spec)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for down, pool in zip(self.downs, self.pools):
            x = down(x)
            skips.append(x)
            x = pool(x)
        x = self.bottleneck(x)
        for up, upsample, skip in zip(self.ups, self.upsamples, reversed(skips)):
            x = up(torch.cat((skip, upsample(x)), dim=1))
        return self.final_conv(x)


def build_model(name: str = "resunet-seed", **overrides: Any) -> ResUNet:
    """Build a network by registry name, e.g. ``build_model("resunet", widths=(8, 16))``."""
    return ResUNet(spec_for(name, **overrides))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
