"""The network registry: parameter count, downsampling, receptive field (checked with gradients)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fringelive.engine.models import (
    UNetSpec,
    build_model,
    count_parameters,
    model_names,
    receptive_field,
)


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN running statistics and affine parameters (eval mode uses them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.4 * torch.rand(n, generator=g) - 0.2)
    return model.eval()


def _linear_surrogate(model: nn.Module) -> nn.Module:
    """Same wiring with ReLU → identity and max-pool → average-pool: its gradient support is the
    structural dependence of an output pixel (no input-dependent zeros)."""
    m = copy.deepcopy(model)

    def swap(mod: nn.Module) -> None:
        for name, child in mod.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(mod, name, nn.AvgPool2d(child.kernel_size, child.stride))
            elif isinstance(child, nn.ReLU):
                setattr(mod, name, nn.Identity())
            else:
                swap(child)

    swap(m)
    return m.eval()


def measured_radius(model: nn.Module, size: int, center: int, phases: int, bound: int) -> int:
    """Largest row/column distance between output pixel ``(center+k, center+k)`` and an input
    pixel with a nonzero gradient, over ``k < phases`` (all positions relative to the pooling
    grid when ``phases`` is the downsampling factor). Asserts the gradient is exactly zero
    farther away than ``bound``. One batched backward pass: sample k only sees output k."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(phases, 1, size, size, generator=g).requires_grad_(True)
    k = torch.arange(phases)
    model(x)[k, :, center + k, center + k].sum().backward()
    grad = x.grad[:, 0]
    radius = 0
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(phases):
        p = center + i
        dist = torch.maximum((yy - p).abs(), (xx - p).abs())
        assert torch.all(grad[i][dist > bound] == 0), f"gradient beyond the analytic radius {bound} at phase {i}"
        nz = grad[i] != 0
        assert nz.any()
        radius = max(radius, int(dist[nz].max()))
    return radius


def test_seed_network_parameters_and_factor() -> None:
    m = build_model("resunet-seed")
    assert count_parameters(m) == 130_682
    assert m.downsampling_factor == 16
    assert m.spec == UNetSpec()
    assert receptive_field(m.spec) == (245, 122)
    assert m.receptive_field_radius == 122
    y = m.eval()(torch.zeros(2, 1, 32, 48))
    assert y.shape == (2, 2, 32, 48) and y.dtype == torch.float32


def test_seed_receptive_field_radius_by_gradient() -> None:
    """True radius of the seed net in eval mode (random weights and BN statistics) vs the analytic
    bound 122 px: measured 107 px (every pooling phase), zero gradient beyond 122 px."""
    torch.manual_seed(0)
    model = _randomise_bn(build_model("resunet-seed"))
    size, center = 272, 128  # center - 122 > 0 and center + 15 + 122 < size
    radius = measured_radius(model, size, center, phases=16, bound=122)
    assert radius == 107, f"true receptive-field radius {radius} px (analytic bound 122 px)"


@pytest.mark.parametrize("widths", [(4,), (4, 8), (2, 4, 8)])
def test_receptive_field_bound_other_depths(widths: tuple[int, ...]) -> None:
    """The analytic radius bounds the structural dependence (linear surrogate) and the real net's."""
    torch.manual_seed(0)
    model = _randomise_bn(build_model("resunet", widths=widths, bottleneck=8))
    _, bound = receptive_field(model.spec)
    f = model.downsampling_factor
    center = -(-(bound + 1) // f) * f
    size = center + -(-(f + bound + 1) // f) * f
    real = measured_radius(model, size, center, phases=f, bound=bound)
    structural = measured_radius(_linear_surrogate(model), size, center, phases=f, bound=bound)
    assert real <= structural <= bound
    assert structural >= bound - 2 * f  # the bound is not vacuous


def test_registry_errors_name_the_model() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'unet-nonexistent'.*resunet-seed"):
        build_model("unet-nonexistent")
    assert {"resunet", "resunet-seed"} <= set(model_names())
    with pytest.raises(ValueError, match="widths"):
        build_model("resunet", widths=())
    with pytest.raises(ValueError, match="kernel_size"):
        build_model("resunet-seed", kernel_size=4)


@pytest.mark.parametrize(
    "overrides, factor, shape",
    [
        ({"widths": (8, 16), "bottleneck": 32}, 4, (1, 1, 20, 12)),
        ({"widths": (4, 8, 16, 32, 64), "bottleneck": 64}, 32, (2, 1, 64, 32)),
        ({"widths": (4, 8, 16, 32), "num_classes": 3, "kernel_size": 5}, 16, (1, 1, 32, 32)),
        ({"widths": (4, 8), "in_channels": 2, "pool": 3}, 9, (1, 2, 18, 27)),
    ],
)
def test_other_depths_and_widths_build_and_run(overrides: dict, factor: int, shape: tuple) -> None:
    m = build_model("resunet", **overrides).eval()
    assert m.downsampling_factor == factor
    with torch.no_grad():
        y = m(torch.randn(*shape))
    assert y.shape == (shape[0], m.spec.num_classes, shape[2], shape[3])
    assert torch.isfinite(y).all()
    # the spec round-trips through its dict form (what the card stores)
    assert UNetSpec.from_dict(m.spec.to_dict()) == m.spec
