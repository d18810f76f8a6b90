"""Flat-field correction: a smooth Bernstein-polynomial illumination surface fitted to block means
(iteratively reweighted), divided out."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fringelive.engine.arrays import Array, TorchNamespace, is_tensor, namespace_for, namespace_of
from fringelive.engine.preprocess import settings
from fringelive.engine.preprocess.frames import _check_shape, _to_float32, as_float32_frame

__all__ = ["bernstein_basis", "fit_flatfield_coefficients", "evaluate_flatfield", "fit_flatfield", "flatfield_correct"]


def bernstein_basis(u: Array, degree: int) -> Array:
    """Bernstein polynomials ``C(n,k) u^k (1-u)^(n-k)``, k = 0..n, at ``u`` (N,) in [0, 1]:
    (N, n+1) in ``u``'s dtype. Non-negative and summing to 1 on [0, 1]."""
    if not isinstance(degree, int) or degree < 0:
        raise ValueError(f"degree must be an integer >= 0, got {degree!r}")
    cols = [math.comb(degree, k) * u ** k * (1 - u) ** (degree - k) for k in range(degree + 1)]
    return namespace_of(u).stack(cols, axis=1)


def _pixel_coords(n: int, xp: Any, dtype: Any) -> Array:
    """Pixel-centre coordinates ``(i + 0.5) / n``, i = 0..n-1."""
    return xp.astype((xp.arange(n, xp.float64) + 0.5) / n, dtype)


def _block_coords(nb: int, factor: int, n: int, xp: Any) -> Array:
    """Centres of the first ``nb`` blocks of ``factor`` pixels, in the full frame's [0, 1] (float64)."""
    return (xp.arange(nb, xp.float64) * factor + factor / 2.0) / n


def _check_flatfield_args(degree: Any, downsample: Any, iterations: Any, weight_scale: Any) -> tuple[int, int]:
    if (not isinstance(degree, (tuple, list)) or len(degree) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in degree)):
        raise ValueError(f"degree must be two integers >= 0 (rows, columns), got {degree!r}")
    if not isinstance(downsample, int) or downsample < 1:
        raise ValueError(f"downsample must be an integer >= 1 (px), got {downsample!r}")
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    if not (isinstance(weight_scale, (int, float)) and math.isfinite(weight_scale) and weight_scale >= 0):
        raise ValueError(f"weight_scale must be a finite number >= 0, got {weight_scale!r}")
    return int(degree[0]), int(degree[1])


def _block_mean(x: Array, d: int) -> Array:
    """Mean of each full d×d block of (H, W) ``x``: (H // d, W // d) float32. Rows of blocks are
    reduced first (contiguous), then the column groups of the 4× smaller result by strided adds
    (4× faster than ``avg_pool2d`` on CPU)."""
    h, w = x.shape
    hb, wb = h // d, w // d
    if d == 1:
        return x.clone() if is_tensor(x) else x.copy()
    rows = x[: hb * d].reshape(hb, d, w).sum(1)[:, : wb * d].reshape(hb, wb, d)
    out = rows[:, :, 0] + rows[:, :, 1]
    for j in range(2, d):
        out += rows[:, :, j]
    out *= 1.0 / (d * d)
    return out


def _fit_coefficients(x: Array, dy: int, dx: int, downsample: int, iterations: int,
                      weight_scale: float) -> tuple[Array, Array]:
    """Coefficients (dy+1, dx+1) float64 of the IRLS Bernstein fit to the block-mean image, and
    the block-mean image itself (Hb, Wb) float32.

    The normal equations are accumulated and solved in float64; residuals and weights on the
    block grid are float32 (torch's float64 elementwise kernels, exp above all, are several
    times slower on CPU; the residual of counts ~1e3 keeps ~1e-4 counts, far below the noise).
    """
    xp = namespace_of(x)
    h, w = x.shape
    hb, wb = h // downsample, w // downsample
    if hb < dy + 1 or wb < dx + 1:
        raise ValueError(
            f"frame {h}x{w} px binned by {downsample} gives {hb}x{wb} blocks, too few to fit a "
            f"degree ({dy}, {dx}) surface (needs at least {dy + 1}x{dx + 1})"
        )
    z = _block_mean(x, downsample)
    z64 = xp.astype(z, xp.float64)
    by = bernstein_basis(_block_coords(hb, downsample, h, xp), dy)   # (Hb, p) float64
    bx = bernstein_basis(_block_coords(wb, downsample, w, xp), dx)   # (Wb, q)
    by32, bx32 = xp.astype(by, xp.float32), xp.astype(bx, xp.float32)
    p, q = dy + 1, dx + 1
    pyy = (by[:, :, None] * by[:, None, :]).reshape(hb, p * p)
    pxx = (bx[:, :, None] * bx[:, None, :]).reshape(wb, q * q)
    wts: Array | None = None  # None: all ones
    coef = xp.zeros((p, q), xp.float64)
    for it in range(iterations + 1):
        # normal equations of sum_ij w_ij (z_ij - sum_kl By_ik C_kl Bx_jl)^2, separable form
        if wts is None:
            g = xp.outer(pyy.sum(0), pxx.sum(0))
            rhs = by.T @ z64 @ bx
        else:
            g = pyy.T @ wts @ pxx
            rhs = by.T @ (wts * z64) @ bx
        g = xp.permute(g.reshape(p, p, q, q), (0, 2, 1, 3)).reshape(p * q, p * q)
        solved = xp.solve(g, rhs.reshape(p * q))
        if solved is None:
            raise ValueError(
                f"flat-field fit is singular (degree ({dy}, {dx}) on {hb}x{wb} blocks); "
                "the image has too little usable area"
            )
        coef = solved.reshape(p, q)
        if it == iterations:
            break
        e = xp.outer_sum(by32, xp.astype(coef, xp.float32) @ bx32.T)  # (Hb, Wb) fitted surface
        e -= z
        xp.square_(e)                                    # squared residual (Hb, Wb)
        e_mean = float(e.mean().item())
        if not e_mean > 0:  # exact fit: reweighting changes nothing
            break
        e *= -weight_scale / e_mean
        wts = xp.astype(xp.exp_(e), xp.float64)
    return coef, z


def fit_flatfield_coefficients(img: Any, degree: tuple[int, int] = (2, 2),
                               downsample: int = 4, iterations: int = 2,
                               weight_scale: float = 1.5) -> Array:
    """Control points (dy+1, dx+1) float64 of the flat-field surface of an (H, W) image
    (iteratively reweighted least squares on the ``downsample``× block-mean image, px)."""
    dy, dx = _check_flatfield_args(degree, downsample, iterations, weight_scale)
    x = as_float32_frame(img)
    return _fit_coefficients(x, dy, dx, downsample, iterations, float(weight_scale))[0]


def evaluate_flatfield(coefficients: Any, shape: tuple[int, int], device: Any = None) -> Array:
    """The surface ``B(u) C B(v)ᵀ`` of control points ``coefficients`` (p, q) at the pixel centres
    of an (H, W) frame: (H, W) float32 of the coefficients' kind, or on ``device`` (a torch
    device; "cpu" keeps numpy coefficients numpy)."""
    c = coefficients if is_tensor(coefficients) else np.asarray(coefficients, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"coefficients must be 2-D (dy+1, dx+1), got shape {tuple(c.shape)}")
    _check_shape(tuple(shape))
    xp = namespace_for(device, namespace_of(c))
    if isinstance(xp, TorchNamespace):
        c = xp.torch.as_tensor(c).to(xp.device)
    h, w = int(shape[0]), int(shape[1])
    by = bernstein_basis(_pixel_coords(h, xp, xp.float64), c.shape[0] - 1)
    bx = bernstein_basis(_pixel_coords(w, xp, xp.float64), c.shape[1] - 1)
    return xp.astype(by, xp.float32) @ xp.astype(c @ bx.T, xp.float32)


def _surface_floor(coef: Array, z: Array) -> float:
    mean = float(z.mean().item())
    if not mean > 0:
        raise ValueError(
            f"flat-field needs positive intensities (counts), but the mean block intensity is {mean:.6g}"
        )
    return settings.SURFACE_FLOOR_REL * mean


class SurfaceNotPositive(ValueError):
    """The fitted flat-field surface falls to or below the floor somewhere in the frame."""


def _surface_error(smin: float, floor: float) -> ValueError:
    return SurfaceNotPositive(
        f"flat-field surface falls to {smin:.6g}, below {settings.SURFACE_FLOOR_REL:g} x the mean intensity "
        f"({floor:.6g}); the frame is too dark or not in counts to be flat-field corrected"
    )


def _flatfield_divide(x: Array, coef: Array, floor: float, inplace: bool) -> Array:
    """``x / surface`` evaluated chunk by chunk of rows (no full-frame surface temporary)."""
    xp = namespace_of(x)
    h, w = x.shape
    by = xp.astype(bernstein_basis(_pixel_coords(h, xp, xp.float64), coef.shape[0] - 1), xp.float32)
    cbx = xp.astype(coef @ bernstein_basis(_pixel_coords(w, xp, xp.float64), coef.shape[1] - 1).T, xp.float32)
    rows = max(1, settings._CHUNK_PIXELS // w)
    # Bernstein convex hull: the surface lies within [min C, max C] on [0, 1]^2; only when a
    # control point is at or below the floor is the surface checked, before anything is divided
    if float(coef.min().item()) <= floor:
        smin = min(float(xp.outer_sum(by[r0:r0 + rows], cbx).min().item()) for r0 in range(0, h, rows))
        if not smin > floor:
            raise _surface_error(smin, floor)
    out = x if inplace else xp.empty_like(x)
    for r0 in range(0, h, rows):
        xp.divide(x[r0:r0 + rows], xp.outer_sum(by[r0:r0 + rows], cbx), out=out[r0:r0 + rows])
    return out


def fit_flatfield(img: Any, degree: tuple[int, int] = (2, 2), downsample: int = 4,
                  iterations: int = 2, weight_scale: float = 1.5) -> Array:
    """The fitted illumination surface of an (H, W) image of counts: (H, W) float32 of the
    image's kind (see the module docstring for the fit)."""
    dy, dx = _check_flatfield_args(degree, downsample, iterations, weight_scale)
    x = as_float32_frame(img)
    coef, z = _fit_coefficients(x, dy, dx, downsample, iterations, float(weight_scale))
    surface = evaluate_flatfield(coef, tuple(x.shape))
    floor = _surface_floor(coef, z)
    smin = float(surface.min().item())
    if not smin > floor:
        raise _surface_error(smin, floor)
    return surface


def flatfield_correct(img: Any, degree: tuple[int, int] = (2, 2), downsample: int = 4,
                      iterations: int = 2, weight_scale: float = 1.5) -> Array:
    """An (H, W) image divided by its fitted flat-field surface: new (H, W) float32 array
    (≈ 1 where the illumination is as fitted). A surface that is not positive over the frame
    (see :data:`settings.SURFACE_FLOOR_REL`) is refitted at lower degree (≤ 1, then 0); raises
    ValueError when the image's mean is not positive."""
    dy, dx = _check_flatfield_args(degree, downsample, iterations, weight_scale)
    x, owned = _to_float32(img, None)
    return _flatfield(x, dy, dx, downsample, iterations, float(weight_scale), inplace=owned)[0]


def _degrees_down(dy: int, dx: int) -> list[tuple[int, int]]:
    """The degrees tried in turn: the card's, then at most 1, then 0 (a constant surface)."""
    out: list[tuple[int, int]] = []
    for d in ((dy, dx), (min(dy, 1), min(dx, 1)), (0, 0)):
        if d not in out:
            out.append(d)
    return out


def _flatfield(x: Array, dy: int, dx: int, downsample: int, iterations: int, weight_scale: float,
               inplace: bool) -> tuple[Array, Array, Array]:
    """``(x / surface, coefficients, block means)``. A surface that is not positive over the
    whole frame (a large dark particle over a corner pulls a degree-2 fit below zero there) is
    refitted at degree ≤ 1, then 0 (a constant: no correction); the coefficients' shape tells
    the degree used. Nothing is divided by a surface that failed."""
    failed: SurfaceNotPositive | None = None
    for ddy, ddx in _degrees_down(dy, dx):
        coef, z = _fit_coefficients(x, ddy, ddx, downsample, iterations, weight_scale)
        floor = _surface_floor(coef, z)
        try:
            return _flatfield_divide(x, coef, floor, inplace), coef, z
        except SurfaceNotPositive as e:
            failed = e
    assert failed is not None
    raise failed
