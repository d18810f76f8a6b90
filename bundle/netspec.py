"""The network contract, torch-free: the residual-UNet architecture spec (:class:`UNetSpec`), the
registry of architecture names (timm style: a name → a function returning a spec), and the maths a
bundle, the tiler and the pipeline need without building a network: receptive field (→ tile
halo), downsampling factor (→ tile multiple) and activation bytes per pixel (→ tile size from a
memory budget). ``fringelive.engine.models`` builds the torch modules from these specs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

__all__ = [
    "UNetSpec",
    "MODEL_REGISTRY",
    "register_model",
    "model_names",
    "spec_for",
    "receptive_field",
    "activation_bytes_per_pixel",
    "bytes_per_pixel_of",
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


def activation_bytes_per_pixel(spec: Any, *, bytes_per_value: int = 4, safety: float = 2.0) -> int:
    """Estimated peak activation memory of one inference pass of a ``ResUNet``, in bytes per
    input pixel (multiply by the network input area in px², and by the batch size).

    Walks the forward pass counting the float channels alive at once, each weighted by its
    level's area (1/pool² per level): the network input, the stored skip connections, and at
    each residual block its input (the concatenation ``[skip, upsampled]`` in the decoder, plus
    the lower-level tensor being upsampled) and three output-width tensors (conv/BN result,
    projection, sum); the peak over the blocks, times ``bytes_per_value`` (4 for float32) and
    ``safety``. For the seed net (widths 4-8-16-32, bottleneck 64) the peak is the last decoder
    block: 34.5 channels → 138 B/px before the safety factor; measured peaks (Linux RSS, 1024² and
    2048² inputs, output included) are 212 B/px for torch CPU and 200 B/px for ONNX Runtime CPU,
    whose blocked layouts pad 4-channel tensors. ``safety=2.0`` (276 B/px) covers those with
    ~30% left for allocator slack and GPU convolution workspaces (widths 8-16-32-64: estimate
    544 B/px, measured 432 torch / 302 ONNX Runtime).
    """
    if not safety > 0:
        raise ValueError(f"safety must be > 0, got {safety!r}")
    if isinstance(bytes_per_value, bool) or not isinstance(bytes_per_value, int) or bytes_per_value < 1:
        raise ValueError(f"bytes_per_value must be a positive int, got {bytes_per_value!r}")
    widths = list(spec.widths)
    shrink = float(spec.pool) ** 2
    inp = float(spec.in_channels)

    def block(c_in: float, c_out: float, area: float) -> float:
        return (c_in + 3 * c_out) * area

    peak = block(inp, widths[0], 1.0)  # first block: its input is the network input
    skips, ch, area = 0.0, float(widths[0]), 1.0
    for w_prev, w in zip(widths, widths[1:]):  # deeper encoder blocks take the pooled skip
        skips += w_prev * area
        area /= shrink
        peak = max(peak, inp + skips + block(w_prev, w, area))
    skips += widths[-1] * area
    ch, area = float(widths[-1]), area / shrink
    peak = max(peak, inp + skips + block(ch, spec.bottleneck, area))
    below = float(spec.bottleneck)
    for w in reversed(widths):
        lower = below * area  # tensor being upsampled, alive during the block
        area *= shrink
        peak = max(peak, inp + skips + lower + block(w + below, w, area))
        below = float(w)
    peak = max(peak, inp + skips + (widths[0] + spec.num_classes) * area)  # final 1×1 conv
    return int(math.ceil(peak * bytes_per_value * safety))


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


def spec_for(name: str = "resunet-seed", **overrides: Any) -> UNetSpec:
    """The spec registered as ``name`` with ``overrides``, e.g. ``spec_for("resunet", widths=(8, 16))``."""
    try:
        factory = MODEL_REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {model_names()}") from None
    if "widths" in overrides:
        overrides["widths"] = tuple(overrides["widths"])
    return factory(**overrides)


def bytes_per_pixel_of(spec: Mapping[str, Any], arch_name: str) -> float:
    """Activation bytes per input pixel of one network pass of a card's architecture (for tile
    sizing); an unknown architecture gets the seed net's conservative figure."""
    try:
        return float(activation_bytes_per_pixel(spec_for(arch_name, **dict(spec))))
    except (ValueError, TypeError):
        return float(activation_bytes_per_pixel(UNetSpec()))
