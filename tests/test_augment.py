"""Training augmentations: the dihedral group, random rotation (background-median corners,
nearest-neighbour labels) and the variance-preserving Gaussian noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fringelive.training.augment import dihedral, gaussian_noise, random_dihedral, random_rotation


def test_dihedral_is_the_group_of_eight() -> None:
    x = torch.arange(12.0).reshape(3, 4)
    images = [dihedral(x, k) for k in range(8)]
    keys = {tuple(im.flatten().tolist()) + (im.shape,) for im in images}
    assert len(keys) == 8
    assert torch.equal(dihedral(x, 0), x)
    sq = torch.arange(16.0).reshape(4, 4)
    for k in range(8):  # every element has an inverse in the set
        assert any(torch.equal(dihedral(dihedral(sq, k), j), sq) for j in range(8))
    with pytest.raises(ValueError, match="dihedral index must be in 0..7, got 8"):
        dihedral(x, 8)


def test_random_dihedral_moves_image_and_label_together() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(16, 1, 8, 8)
    lab = (img[:, 0] > 0.5).long()
    out_img, out_lab = random_dihedral(img, lab, g)
    assert torch.equal((out_img[:, 0] > 0.5).long(), out_lab)
    assert not torch.equal(out_img, img)


def test_random_rotation_fills_corners_with_background_median_and_keeps_labels_binary() -> None:
    g = torch.Generator().manual_seed(1)
    img = torch.full((4, 1, 32, 32), 2.0)
    lab = torch.zeros(4, 32, 32, dtype=torch.long)
    lab[:, 12:20, 12:20] = 1
    img[lab.unsqueeze(1) == 1] = 5.0
    out_img, out_lab = random_rotation(img, lab, g, p=1.0)
    assert set(out_lab.unique().tolist()) <= {0, 1} and out_lab.dtype == torch.long
    # corners that rotated in carry the background median (2.0); nothing but 2 and 5 appears
    # outside the interpolated particle rim
    assert torch.allclose(out_img[:, 0, 0, 0], torch.full((4,), 2.0))
    assert out_lab.sum(dim=(1, 2)).float().sub(64).abs().max() <= 16  # area kept up to the rim
    same_img, same_lab = random_rotation(img, lab, g, p=0.0)
    assert same_img is img and same_lab is lab
    with pytest.raises(ValueError, match=r"rotation probability must be in \[0, 1\], got 1.5"):
        random_rotation(img, lab, g, p=1.5)


def test_gaussian_noise_keeps_unit_variance() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 1, 64, 64, generator=g)
    y = gaussian_noise(x, g, rho=1.0)
    assert float(y.std()) == pytest.approx(1.0, abs=0.02)
    corr = float(((x - x.mean()) * (y - y.mean())).mean() / (x.std() * y.std()))
    assert corr == pytest.approx(1 / math.sqrt(2), abs=0.02)  # (x + n)/√2 with ρ = 1
    z = gaussian_noise(x, g, rho_max=2.0)
    assert float(z.std()) == pytest.approx(1.0, abs=0.03)
    assert torch.equal(gaussian_noise(x, g, rho=0.0), x)
    with pytest.raises(ValueError, match="exactly one of rho"):
        gaussian_noise(x, g)
    with pytest.raises(ValueError, match="rho must be >= 0, got -1"):
        gaussian_noise(x, g, rho=-1)


def test_gaussian_noise_is_low_passed_like_the_frames() -> None:
    """With the card's low-pass the added noise is that low-pass of white noise (the engine's
    weights and edges): x' = (x + ρ L(n)) / √(1 + ρ²), the low-pass of a noisier frame."""
    from fringelive.engine.preprocess import lowpass

    x = torch.zeros(3, 1, 40, 52)
    g = torch.Generator().manual_seed(7)
    y = gaussian_noise(x, g, rho=1.0, lowpass_sigma_px=1.0)
    white = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    for i in range(3):
        expected = lowpass(white[i, 0].numpy(), 1.0) / math.sqrt(2.0)
        np.testing.assert_allclose(y[i, 0].numpy(), expected, atol=1e-6)
    big = gaussian_noise(torch.zeros(8, 1, 128, 128), torch.Generator().manual_seed(1), rho=1.0, lowpass_sigma_px=1.0)
    assert float(big[..., 8:-8, 8:-8].var() * 2) == pytest.approx(0.08, abs=0.01)  # ~8 % of white noise's variance
