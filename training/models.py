"""Segmentation networks, built by name from a small registry (timm style).

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

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

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


@dataclass(frozen=True)
class UNetSpec:
    """Architecture of a residual UNet.

    widths: channels of the encoder levels, shallow to deep (one 2×2 pool per level).
    bottleneck: channels of the bottleneck block.
    """

    widths: tuple[int, ...] = (4, 8, 16, 32)
    bottleneck: int = 64
    in_channels: int = 1
    num_classes: int = 2
    kernel_size: int = 3
    pool: int = 2

    def __post_init__(self) -> None:
        if len(self.widths) < 1:
            raise ValueError(f"UNetSpec.widths must name at least one level, got {self.widths!r}")
        for name, v in [("bottleneck", self.bottleneck), ("in_channels", self.in_channels),
                        ("num_classes", self.num_classes), *[(f"widths[{i}]", w) for i, w in enumerate(self.widths)]]:
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"UNetSpec.{name} must be a positive int, got {v!r}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"UNetSpec.kernel_size must be odd and positive, got {self.kernel_size!r}")
        if self.pool < 2:
            raise ValueError(f"UNetSpec.pool must be >= 2, got {self.pool!r}")

    @property
    def downsampling_factor(self) -> int:
        """Input H and W must be multiples of this (pool ** depth)."""
        return self.pool ** len(self.widths)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown UNetSpec keys {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        if "widths" in d:
            d["widths"] = tuple(int(w) for w in d["widths"])
        return cls(**d)


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


def receptive_field(spec: UNetSpec) -> tuple[int, int]:
    """Receptive field (size, radius) in input pixels of one output pixel of a :class:`ResUNet`.

    Walks the layers tracking the stride ``jump`` (input pixels per feature pixel) and the
    support half-width ``r``. A k×k conv adds ``(k-1)/2 * jump``; a p×p max-pool, whose window
    may sit anywhere relative to the output pixel, adds ``(p-1) * jump`` before the jump grows;
    nearest upsampling by p widens the support by up to ``(p-1) * jump_after`` because the
    output pixel's source cell is not centred on it. The bound is conservative (an upper bound
    on the true dependence, which tests check with gradients); halos use ``radius`` rounded up
    to the downsampling factor.
    """
    half = (spec.kernel_size - 1) // 2
    r, jump = 0, 1
    for _ in spec.widths:
        r += 2 * half * jump  # two k×k convs (the 1×1 projection adds nothing)
        r += (spec.pool - 1) * jump
        jump *= spec.pool
    r += 2 * half * jump  # bottleneck
    for _ in spec.widths:
        jump //= spec.pool
        r += (spec.pool - 1) * jump  # nearest upsample cell offset
        r += 2 * half * jump
    return 2 * r + 1, r


# --- registry ---------------------------------------------------------------------------

MODEL_REGISTRY: dict[str, Callable[..., UNetSpec]] = {}


def register_model(name: str) -> Callable[[Callable[..., UNetSpec]], Callable[..., UNetSpec]]:
    """Decorator: register a function returning a :class:`UNetSpec` under ``name``."""

    def deco(fn: Callable[..., UNetSpec]) -> Callable[..., UNetSpec]:
        if name in MODEL_REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        MODEL_REGISTRY[name] = fn
        return fn

    return deco


@register_model("resunet-seed")
def _resunet_seed(**overrides: Any) -> UNetSpec:
    """The published network: widths 4-8-16-32, bottleneck 64, 130,682 parameters."""
    return dataclasses.replace(UNetSpec(), **overrides)


@register_model("resunet")
def _resunet(**overrides: Any) -> UNetSpec:
    """A residual UNet of any depth and widths (``widths=(...)``, ``bottleneck=...``)."""
    return UNetSpec(**overrides)


def model_names() -> list[str]:
    return sorted(MODEL_REGISTRY)


def build_model(name: str = "resunet-seed", **overrides: Any) -> ResUNet:
    """Build a network by registry name, e.g. ``build_model("resunet", widths=(8, 16))``."""
    try:
        factory = MODEL_REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {model_names()}") from None
    if "widths" in overrides:
        overrides["widths"] = tuple(overrides["widths"])
    return ResUNet(factory(**overrides))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
