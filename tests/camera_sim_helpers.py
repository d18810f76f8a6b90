"""A camera model the bundle never saw (gain, offset, read noise, Gaussian MTF, x-rays) and
scene helpers for the camera tests (tests/test_camera.py, tests/test_camera_daemon.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage



@dataclass(frozen=True)
class SimCamera:
    """Raw counts = offset + gain · (Gaussian MTF ⊛ Poisson electrons) + N(0, read²), rounded,
    plus x-ray hits. ``mtf_sigma_px`` 0 = white noise."""

    gain: float = 8.0
    offset: float = 100.0
    read_noise: float = 3.0
    mtf_sigma_px: float = 0.6
    xray_per_mpx: float = 50.0
    xray_counts: float = 4000.0
    dtype: str = "uint16"

    def expose(self, electrons_mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        e = rng.poisson(np.maximum(electrons_mean, 0.0)).astype(np.float64)
        if self.mtf_sigma_px > 0:
            e = ndimage.gaussian_filter(e, self.mtf_sigma_px, mode="reflect")
        c = self.offset + self.gain * e + rng.normal(0.0, self.read_noise, e.shape)
        n_hits = rng.poisson(self.xray_per_mpx * e.size / 1e6)
        if n_hits:
            ys, xs = rng.integers(0, e.shape[0], n_hits), rng.integers(0, e.shape[1], n_hits)
            c[ys, xs] += self.xray_counts
        return np.clip(np.rint(c), 0, np.iinfo(self.dtype).max).astype(self.dtype)


def electrons_per_px(dose_e_per_A2: float, pixel_size_nm: float) -> float:
    return dose_e_per_A2 * (10.0 * pixel_size_nm) ** 2


def illumination(shape: tuple[int, int]) -> np.ndarray:
    """A smooth beam non-uniformity: 8 % top to bottom, 5 % left to right."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return 1.0 + 0.08 * (yy / h - 0.5) + 0.05 * (xx / w - 0.5)


def hrtem_scene(shape: tuple[int, int], rng: np.random.Generator, *, particles: int = 4, radius_px: float = 28.0,
                period_px: float = 11.8, support: float = 0.0, gradient: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Relative intensity (vacuum 1) with a smooth illumination gradient, dark discs carrying
    lattice fringes, optional band-limited support texture; and the particle mask."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = illumination(shape) if gradient else np.ones(shape)
    mask = np.zeros(shape, dtype=bool)
    for _ in range(particles):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = radius_px * rng.uniform(0.7, 1.3)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        theta = rng.uniform(0, np.pi)
        fringes = 0.25 * np.cos(2 * np.pi * ((yy - cy) * np.cos(theta) + (xx - cx) * np.sin(theta)) / period_px)
        img = np.where(inside, img * (0.8 + fringes), img)
        mask |= inside
    if support > 0:
        noise = ndimage.gaussian_filter(rng.standard_normal(shape), 3.0)
        img *= 1.0 + support * noise / noise.std()
    return img, mask
