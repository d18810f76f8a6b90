"""Training augmentations of the published recipe, on torch batches.

Shapes: images ``(N, 1, H, W)`` float32 (already preprocessed), labels ``(N, H, W)`` int64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fringelive.engine.preprocess.lowpass import lowpass_batch

__all__ = ["dihedral", "random_dihedral", "random_rotation", "gaussian_noise"]


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 dihedral transforms (k in 0..7) on the last two axes."""
    if not 0 <= k < 8:
        raise ValueError(f"dihedral index must be in 0..7, got {k!r}")
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1))


def random_dihedral(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """One random dihedral transform per sample."""
    ks = torch.randint(0, 8, (images.shape[0],), generator=generator).tolist()
    return (torch.stack([dihedral(im, k) for im, k in zip(images, ks)]),
            torch.stack([dihedral(lb, k) for lb, k in zip(labels, ks)]))


def random_rotation(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                    p: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each sample by a uniform random angle with probability ``p``.

    Corners that rotate in are filled with the sample's background median (median of pixels
    labelled 0, or of all pixels when there are none); labels are resampled nearest-neighbour
    and their corners are background.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"rotation probability must be in [0, 1], got {p!r}")
    n = images.shape[0]
    do = torch.rand(n, generator=generator) < p
    if not bool(do.any()):
        return images, labels
    images, labels = images.clone(), labels.clone()
    idx = torch.nonzero(do).flatten()
    angles = torch.rand(len(idx), generator=generator) * 2 * math.pi
    cos, sin = torch.cos(angles), torch.sin(angles)
    theta = torch.zeros(len(idx), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(theta.to(images.device), list(images[idx].shape), align_corners=False)
    fills = []
    for i in idx.tolist():
        bg = images[i, 0][labels[i] == 0]
        fills.append((bg if bg.numel() else images[i, 0]).median())
    fill = torch.stack(fills).view(-1, 1, 1, 1)
    # rotate (x - fill) with zero padding, then add fill back: corners that rotate in are the
    # background median and the edge blends into it (no darkening by the zero padding)
    rot = F.grid_sample(images[idx] - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    lab = F.grid_sample(labels[idx].unsqueeze(1).float(), grid, mode="nearest", padding_mode="zeros",
                        align_corners=False).squeeze(1).round().long()
    images[idx] = rot
    labels[idx] = lab
    return images, labels


def gaussian_noise(images: torch.Tensor, generator: torch.Generator, rho: float | None = None,
                   rho_max: float | None = None, lowpass_sigma_px: float = 0.0) -> torch.Tensor:
    """``x' = (x + N(0, ρ²)) / sqrt(1 + ρ²)`` with a fixed ρ or ρ ~ U(0, ρmax) per sample.

    For standardized input this keeps unit variance while lowering the signal-to-noise ratio.
    ``lowpass_sigma_px`` > 0: the images end with that low-pass (card
    ``preprocessing.lowpass_sigma_px``), so the noise is low-passed alike (replicated edges):
    ``x'`` is then the low-pass of the noisier standardized frame, as served frames are, not
    pixel texture they never have.
    """
    if (rho is None) == (rho_max is None):
        raise ValueError("give exactly one of rho (fixed) or rho_max (uniform), "
                         f"got rho={rho!r}, rho_max={rho_max!r}")
    n = images.shape[0]
    if rho is not None:
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho!r}")
        r = torch.full((n,), float(rho))
    else:
        if rho_max < 0:  # type: ignore[operator]
            raise ValueError(f"rho_max must be >= 0, got {rho_max!r}")
        r = torch.rand(n, generator=generator) * float(rho_max)  # type: ignore[arg-type]
    r = r.to(images.device).view(n, 1, 1, 1)
    noise = torch.randn(images.shape, generator=generator)
    if lowpass_sigma_px > 0:
        noise = lowpass_batch(noise, lowpass_sigma_px)
    noise = noise.to(images.device)
    return (images + noise * r) / torch.sqrt(1.0 + r * r)

