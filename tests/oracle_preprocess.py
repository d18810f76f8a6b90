"""Plain numpy/scipy reference of the preprocessing steps (the oracle for ``test_preprocess``).

Written for clarity, not speed: float64 throughout, dense 3×3 correlations for the x-ray fill,
an explicit (blocks × coefficients) design matrix solved with ``np.linalg.lstsq`` for the
flat-field, ``np.median``/``np.percentile`` for the statistics. Same semantics as
``fringelive.engine.preprocess`` (see its module docstring); different algorithms.
"""

from __future__ import annotations

from math import ceil, comb

import numpy as np
from scipy import ndimage

MAX_FILL_SWEEPS = 16
SURFACE_FLOOR_REL = 1e-3


def remove_xrays(img: np.ndarray, threshold_counts: float = 1500.0, passes: int = 2,
                 max_sweeps: int = MAX_FILL_SWEEPS) -> np.ndarray:
    """Negatives → 0; per pass, pixels > median + threshold := mean of in-frame non-outlier
    8 neighbours (Jacobi sweeps from outside in; leftovers := median). (H, W) float64."""
    x = np.array(img, dtype=np.float64)
    x[x < 0] = 0
    ring = np.ones((3, 3))
    ring[1, 1] = 0
    for _ in range(passes):
        med = np.median(x)
        bad = x > med + threshold_counts
        if not bad.any():
            break
        for _ in range(max_sweeps):
            valid = (~bad).astype(np.float64)
            sums = ndimage.correlate(x * valid, ring, mode="constant", cval=0.0)
            counts = ndimage.correlate(valid, ring, mode="constant", cval=0.0)
            fill = bad & (counts > 0)
            x[fill] = sums[fill] / counts[fill]
            bad = bad & ~fill
            if not bad.any():
                break
        x[bad] = med
    return x


def bernstein(u: np.ndarray, degree: int) -> np.ndarray:
    """(N, degree+1) Bernstein basis at u (N,)."""
    return np.stack([comb(degree, k) * u**k * (1 - u) ** (degree - k) for k in range(degree + 1)], axis=1)


def flatfield_coefficients(img: np.ndarray, degree: tuple[int, int] = (2, 2), downsample: int = 4,
                           iterations: int = 2, weight_scale: float = 1.5) -> np.ndarray:
    """(dy+1, dx+1) control points fitted by IRLS to the block-mean image."""
    x = np.asarray(img, dtype=np.float64)
    h, w = x.shape
    d = downsample
    hb, wb = h // d, w // d
    z = x[: hb * d, : wb * d].reshape(hb, d, wb, d).mean(axis=(1, 3))
    u = (np.arange(hb) * d + d / 2) / h
    v = (np.arange(wb) * d + d / 2) / w
    by, bx = bernstein(u, degree[0]), bernstein(v, degree[1])
    # design matrix: row (i, j), column (k, l) = By[i, k] * Bx[j, l]
    a = np.einsum("ik,jl->ijkl", by, bx).reshape(hb * wb, -1)
    zf = z.reshape(-1)
    weights = np.ones_like(zf)
    for it in range(iterations + 1):
        sw = np.sqrt(weights)
        coef = np.linalg.lstsq(a * sw[:, None], zf * sw, rcond=None)[0]
        if it == iterations:
            break
        e = (zf - a @ coef) ** 2
        if e.mean() == 0:
            break
        weights = np.exp(-weight_scale * e / e.mean())
    return coef.reshape(degree[0] + 1, degree[1] + 1)


def flatfield_surface(coef: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    by = bernstein((np.arange(h) + 0.5) / h, coef.shape[0] - 1)
    bx = bernstein((np.arange(w) + 0.5) / w, coef.shape[1] - 1)
    return by @ coef @ bx.T


def flatfield_correct(img: np.ndarray, degree: tuple[int, int] = (2, 2), downsample: int = 4,
                      iterations: int = 2, weight_scale: float = 1.5) -> np.ndarray:
    x = np.asarray(img, dtype=np.float64)
    coef = flatfield_coefficients(x, degree, downsample, iterations, weight_scale)
    surface = flatfield_surface(coef, x.shape)
    return x / surface


def rescale(img: np.ndarray, mode: str = "standardize", percentiles: tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    x = np.asarray(img, dtype=np.float64)
    if mode == "standardize":
        std = x.std()
        return np.zeros_like(x) if std == 0 else (x - x.mean()) / std
    if mode == "histogram":
        lo, hi = np.percentile(x, percentiles)
        x = np.clip(x, lo, hi)
    lo, hi = x.min(), x.max()
    return np.zeros_like(x) if hi == lo else (x - lo) / (hi - lo)


def lowpass(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter`` of σ px, edges replicated, truncated at ceil(3σ) px
    (at least 1; σ = 0: unchanged). (H, W) float64."""
    x = np.asarray(img, dtype=np.float64)
    if sigma_px == 0:
        return x.copy()
    return ndimage.gaussian_filter(x, sigma_px, mode="nearest", truncate=max(1, ceil(3 * sigma_px)) / sigma_px)


def preprocess(frame: np.ndarray, params) -> np.ndarray:
    """The oracle pipeline for a ``Preprocessing`` card section."""
    x = np.asarray(frame, dtype=np.float64)
    if params.xray_removal:
        x = remove_xrays(x, params.xray_threshold_counts, params.xray_passes)
    if params.flatfield:
        x = flatfield_correct(x, tuple(params.flatfield_degree), params.flatfield_downsample,
                              params.flatfield_iterations, params.flatfield_weight_scale)
    return lowpass(rescale(x, params.rescale, tuple(params.histogram_percentiles)), params.lowpass_sigma_px)
