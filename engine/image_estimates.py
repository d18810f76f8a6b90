"""Acquisition conditions estimated from the image itself, without trusting the metadata.

Dose from shot noise
    A counting camera with gain g (counts/e) records ``mean = g·N`` and ``var = g²·N`` (+ read
    noise) in a region of constant intensity, so ``N = mean² / var`` electrons per pixel whatever
    the gain. The estimate uses background blocks (predicted background, one block away from any
    predicted particle) of the raw frame; the variance is that of the 4-neighbour Laplacian
    divided by 20 (its gain for white noise), which the slow illumination gradient and most of
    the support's structure do not reach. ``N`` is the median over blocks; the dose is
    ``N / (pixel size in Å)²`` (e/Å²). Correlated noise (the detector MTF) lowers the
    neighbour-difference variance: ``noise_factor`` (calibrated from frames of known dose by
    ``fringelive calibrate``) corrects for it, ``N = noise_factor · mean² / var``. With a known gain
    the mean alone gives a second, more precise estimate ``N = (mean - offset) / gain``.

Pixel size from lattice fringes
    Windows (Hann-tapered, x-ray hits clipped) centred on the largest predicted particles are
    Fourier transformed and their power spectra averaged and radially binned. Divided by the same
    profile of background windows (which removes the support's spectrum, Thon rings included) and
    by its running median, the profile shows the lattice reflections as narrow peaks. A peak more
    than ``min_snr`` robust standard deviations high, in the band where the material's spacings
    can lie for plausible pixel sizes, gives ``pixel size = d_hkl × f_peak`` (nm/px with f in
    cycles/px). The strongest peaks are indexed together against every allowed reflection of the
    material ({111}, {200}, {220}, {311}, {222}, {331}, ... — near Gaussian focus the higher
    orders can outshine {111}): the pixel size that explains the most peaks wins (confidence
    ``high``). When other readings explain them as well (a lone peak; or {111}+{200} at p versus
    {222}+{400} at p/2), a reading that agrees with the metadata wins (the image cannot
    contradict it), else the lowest orders (confidence ``medium``/``low``). No peak: no estimate
    (never a guess).

Pure numpy on (H, W) arrays; the cost is bounded by ``max_blocks`` and ``windows`` × ``window``²
(a few FFTs), independent of the frame size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import scipy.fft as sfft

from fringelive.engine.dose_estimate import (CameraCalibration, DoseMeasurement, background_block_grid,
                                             background_window_centres, estimate_dose, measure_background_noise)

__all__ = [
    "CameraCalibration",
    "DoseMeasurement",
    "PixelSizeEstimate",
    "measure_background_noise",
    "estimate_dose",
    "radial_power_profile",
    "find_profile_peaks",
    "estimate_pixel_size",
    "background_block_grid",
    "particle_window_centres",
    "background_window_centres",
]


# --- pixel size from lattice fringes -----------------------------------------------------------

@lru_cache(maxsize=8)
def _radial_bins(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer radius (cycles per window) of every rfft2 coefficient of a size² window, and the
    half-plane weights (coefficients standing for two)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    r = np.rint(np.sqrt(fy * fy + fx * fx) * size).astype(np.int64)
    weight = np.full(r.shape, 2.0)
    weight[:, 0] = 1.0
    if size % 2 == 0:
        weight[:, -1] = 1.0
    return r.ravel(), weight.ravel()


@lru_cache(maxsize=8)
def _hann2(size: int) -> np.ndarray:
    w = np.hanning(size).astype(np.float32)
    return np.outer(w, w)


def _window_origin(c: float, size: int, length: int) -> int:
    return int(min(max(round(c) - size // 2, 0), length - size))


def radial_power_profile(pixels: np.ndarray, centres: Sequence[tuple[float, float]], size: int,
                         radius_px: float | None = None) -> np.ndarray:
    """Mean radially binned power spectrum ``(size // 2,)`` of regions of ``pixels`` centred on
    ``centres`` ((row, column) px). Each region is divided by its median (contrast), x-ray hits
    are clipped at median + 10 robust sigma, and it is tapered: with ``radius_px`` by a disc of
    that radius with a cos² edge (the inside of a particle, without the particle's outline, whose
    ring-shaped spectrum would look like peaks), else by a Hann window over the whole ``size``²
    window. Bin r holds frequencies r/size cycles/px."""
    h, w = pixels.shape
    rbin, weight = _radial_bins(size)
    taper = _hann2(size) if radius_px is None else _disc_taper(size, float(radius_px))
    n = size // 2
    total = np.zeros(n)
    counts = np.bincount(rbin, weight, minlength=n + 1)[:n]
    used = 0
    for cy, cx in centres:
        y0, x0 = _window_origin(cy, size, h), _window_origin(cx, size, w)
        win = pixels[y0:y0 + size, x0:x0 + size].astype(np.float32)
        if radius_px is not None:  # keep the disc on the particle when the window was shifted
            dy, dx = int(round(cy)) - (y0 + size // 2), int(round(cx)) - (x0 + size // 2)
            t = np.roll(taper, (dy, dx), axis=(0, 1)) if (dy or dx) else taper
        else:
            t = taper
        inside = win[t > 0.5]
        if inside.size < 16:
            continue
        med = float(np.median(inside))
        if not med > 0:
            continue
        mad = float(np.median(np.abs(inside - med)))
        np.minimum(win, med + 10.0 * 1.4826 * max(mad, math.sqrt(med)), out=win)
        win /= np.float32(med)
        win -= np.float32(float((win * t).sum() / t.sum()))  # zero weighted mean: no DC leakage
        win *= t
        # scipy's single-precision FFT: 7x faster than numpy's float64 one at 512² (numpy's
        # complex64 path is slower still); the power differs by ~3e-7 of its maximum
        spec = sfft.rfft2(win, workers=1)
        power = spec.real * spec.real + spec.imag * spec.imag
        total += np.bincount(rbin, power.ravel() * weight, minlength=n + 1)[:n]
        used += 1
    if not used:
        raise ValueError("no usable window (all windows empty or non-positive)")
    return total / np.maximum(counts, 1.0) / used


@lru_cache(maxsize=16)
def _disc_taper(size: int, radius: float) -> np.ndarray:
    """1 inside 0.6·radius, cos² down to 0 at radius, centred in a size² window."""
    c = size // 2
    yy, xx = np.ogrid[-c: size - c, -c: size - c]
    rho = np.sqrt(yy * yy + xx * xx) / max(radius, 1.0)
    t = np.where(rho <= 0.6, 1.0, np.cos(0.5 * np.pi * np.clip((rho - 0.6) / 0.4, 0.0, 1.0)) ** 2)
    return t.astype(np.float32)


def _running_median(x: np.ndarray, lo: int, hi: int, extra: int = 0) -> np.ndarray:
    """Median of ``x`` over a window whose half-width grows with the index (max(3, 15 %) + extra);
    windows are cut at the ends of ``x``. One gather and one sort for all indices lo..hi-1."""
    x = np.asarray(x, dtype=np.float64)
    idx = np.arange(lo, hi)
    if idx.size == 0:
        return np.empty(0)
    halves = np.maximum(3, (0.15 * idx).astype(np.int64)) + extra
    offsets = np.arange(-int(halves.max()), int(halves.max()) + 1)
    pos = idx[:, None] + offsets[None, :]
    inside = (np.abs(offsets)[None, :] <= halves[:, None]) & (pos >= 0) & (pos < x.size)
    windows = np.sort(np.where(inside, x[np.clip(pos, 0, x.size - 1)], np.nan), axis=1)  # NaN sorts last
    k = inside.sum(axis=1)
    rows = np.arange(idx.size)
    return 0.5 * (windows[rows, (k - 1) // 2] + windows[rows, k // 2])


def find_profile_peaks(profile: np.ndarray, lo: int, hi: int, *, min_snr: float = 6.0,
                       half_width: float = 2.0) -> list[tuple[float, float, float]]:
    """Significant narrow peaks of ``profile`` between bins ``lo`` and ``hi`` (exclusive):
    ``[(position in bins, sub-bin by a parabola through the top three), snr, strict snr]``,
    strongest first.

    The profile is divided by its running median (window ±max(3, 15 %) + ``half_width``). The
    relative excess of a radial bin r fluctuates ∝ 1/sqrt(r) (a ring of r coefficients), so it is
    scaled by sqrt(r) before the robust standard deviation (1.4826·MAD over the band) is taken.
    A peak is a local maximum whose prominence over its flanks (the mean of the medians of the
    bins ``half_width + 1`` to ``2·half_width + 4`` away on each side) is at least ``min_snr``
    of those sigmas; snr is that prominence. The strict snr is the prominence over the *higher*
    flank: a step in the profile (e.g. where the support's texture ends) has one high flank and
    little strict prominence, but so has a peak next to another peak."""
    lo, hi = max(2, int(lo)), min(len(profile) - 1, int(hi))
    if hi - lo < 5:
        return []
    x = profile.astype(np.float64)
    near = max(2, int(math.ceil(half_width)) + 1)
    far = near + max(3, int(math.ceil(half_width)) + 3)
    pad = max(3, int(0.15 * hi), far) + 1
    a, b = max(1, lo - pad), min(len(x) - 1, hi + pad)
    base = _running_median(x, a, b, extra=int(math.ceil(half_width)))
    rel = (x[a:b] / np.maximum(base, 1e-30) - 1.0) * np.sqrt(np.arange(a, b) / float(hi))
    band = rel[lo - a: hi - a]
    sigma = 1.4826 * float(np.median(np.abs(band - np.median(band))))
    if not sigma > 0:
        return []
    peaks = []
    for i in range(lo, hi):
        j = i - a
        v = rel[j]
        if v / sigma < min_snr or v < rel[j - 1] or v < rel[j + 1]:
            continue
        left = rel[max(0, j - far): max(0, j - near + 1)]
        right = rel[j + near: j + far + 1]
        flanks = [float(np.median(f)) for f in (left, right) if f.size]
        prominence = v - (sum(flanks) / len(flanks) if flanks else 0.0)
        if prominence / sigma < min_snr:
            continue
        strict = v - (max(flanks) if flanks else 0.0)
        y0, y1, y2 = rel[j - 1], v, rel[j + 1]
        denom = y0 - 2 * y1 + y2
        offset = 0.5 * (y0 - y2) / denom if denom < 0 else 0.0
        peaks.append((i + max(-0.5, min(0.5, offset)), prominence / sigma, strict / sigma))
    peaks.sort(key=lambda p: -p[1])
    return peaks


@dataclass(frozen=True)
class PixelSizeEstimate:
    """pixel_size_nm: nm/px; spacing_nm: the d-spacing the main peak was assigned to;
    frequency: its position (cycles/px); snr: its height (robust sigma); confidence: ``high``
    (several peaks indexed consistently), ``medium`` (several peaks but another pixel size
    explains them as well, or one peak with one plausible assignment), ``low`` (one peak,
    several plausible assignments: the one nearest the hint was taken); windows: particle
    windows used."""

    pixel_size_nm: float
    spacing_nm: float
    frequency: float
    snr: float
    confidence: str
    windows: int


def estimate_pixel_size(pixels: np.ndarray, particle_centres: Sequence[tuple[float, float]], spacings_nm: Sequence[float],
                        *, pixel_size_range: tuple[float, float], particle_radius_px: float,
                        hint_nm: float | None = None, window: int | None = None, windows: int = 6,
                        min_snr: float = 6.0, single_peak_snr: float | None = None, min_window: int = 256,
                        ratio_tolerance: float = 0.01, agree_tolerance: float = 0.03, tie_margin: float = 0.1,
                        pair_tolerance: float = 0.02, max_peaks: int = 6,
                        primary_nm: Sequence[float] | None = None) -> PixelSizeEstimate | None:
    """Pixel size (nm/px) from the lattice fringes inside the particles at ``particle_centres``
    ((row, column) px, most important first; at most ``windows`` are used).

    spacings_nm: the material's d-spacings (all reflections that may show, e.g.
    :func:`~fringelive.engine.materials.reflection_spacings_for`); pixel_size_range: (lo, hi) nm/px
    that are plausible at all (the search band); particle_radius_px: typical particle radius
    (px), the radius of the tapered disc each window keeps; hint_nm: the metadata's pixel size
    (nm/px) or None, which decides between equally good readings; window: FFT side (px, default the
    power of two >= 4 × radius, 128 to 512, and <= the frame side; below ``min_window`` there
    is no estimate: the few coefficients per radial bin make noise peaks too likely).

    Reading the ``max_peaks`` strongest peaks (each ``min_snr``; maxima closer than a spot's
    width count as one): a pixel size *explains* a peak when some reflection of ``spacings_nm``
    puts it within ``ratio_tolerance`` (more for weak peaks); a reading scores the summed snr of
    the peaks it explains.

    1. ``hint_nm`` (the metadata) is kept when it explains the peaks (each within
       ``agree_tolerance``) within ``tie_margin`` of the best reading by any reflections: the
       image does not contradict it, so no false alarm even when a high order ({331} near
       Gaussian focus) dominates. Confidence ``high`` (several peaks) or ``medium``.
    2. Otherwise the low-order reading (``primary_nm``, e.g. {111}/{200}; default
       ``spacings_nm``): two peaks in a ratio of two spacings (within ``pair_tolerance``) fix
       it (``high``); a lone peak needs ``single_peak_snr`` (default ``min_snr + 4``) over its
       higher flank and takes the spacing nearest the hint (``medium``, ``low`` when several
       fit, or when a higher order would fit too). A reading that leaves peaks unexplained
       which another reading explains (score below the best by more than ``tie_margin``) is
       ``low``.

    None when no significant peak is found.
    """
    if not spacings_nm or not particle_centres:
        return None
    lo_px, hi_px = pixel_size_range
    if not 0 < lo_px < hi_px:
        raise ValueError(f"pixel_size_range must be (lo, hi) with 0 < lo < hi nm/px, got {pixel_size_range!r}")
    if not particle_radius_px >= 4:
        return None  # too small to hold a few fringes
    h, w = pixels.shape
    radius = float(particle_radius_px)
    if window is None:
        window = max(128, min(512, 1 << int(math.ceil(math.log2(4 * radius)))))
        while window > min(h, w) and window > 32:
            window //= 2
    if window < max(32, min_window) or window > min(h, w):
        return None
    radius = min(radius, window / 2.0)
    centres = list(particle_centres)[:windows]
    try:
        profile = radial_power_profile(pixels, centres, window, radius_px=radius)
    except ValueError:
        return None
    d_max, d_min = max(spacings_nm), min(spacings_nm)
    r_lo = math.floor(lo_px / d_max * window)
    r_hi = math.ceil(min(hi_px / d_min, 0.45) * window) + 1
    # a spot's width in bins: the disc's transform (~window / diameter), at least 2
    half_width = max(2.0, window / (2 * radius))
    peaks = find_profile_peaks(profile, r_lo, r_hi, min_snr=min_snr, half_width=half_width)
    # Maxima closer than a spot's width are one reflection split by noise (or by neighbouring
    # particles' slightly different spacings): keep the stronger, so that no pair of high-order
    # reflections with a ratio near 1 ({331}/{420}: 1.026) "explains" them as two.
    merged: list[tuple[float, float, float]] = []
    for pk in peaks:  # strongest first
        if all(abs(pk[0] - q[0]) > 2.0 * half_width for q in merged):
            merged.append(pk)
    peaks = merged
    if not peaks:
        return None

    def plausible(px: float) -> bool:
        return lo_px <= px <= hi_px

    primary = tuple(primary_nm) if primary_nm else tuple(spacings_nm)
    top = [(r / window, snr, strict) for r, snr, strict in peaks[:max_peaks]]
    # a peak's position is known to about its half width / sqrt(snr) bins: weak peaks get more room
    tols = [min(3.0 * ratio_tolerance, max(ratio_tolerance, half_width / (f * window * math.sqrt(snr))))
            for f, snr, _ in top]

    # (peak, reflection) products f·d, float64 as the scalar expressions give them
    f_d = np.array([f for f, _, _ in top], dtype=np.float64)[:, None] * np.asarray(spacings_nm, dtype=np.float64)

    def explained(px: float, tol_floor: float = 0.0) -> list[int]:
        """Indices of the peaks that some reflection puts within their tolerance at ``px``."""
        return np.flatnonzero(_explained_by(f_d, tols, np.array([px], dtype=np.float64), tol_floor)[0]).tolist()

    def score(idx: list[int]) -> float:
        return sum(top[i][1] for i in idx)

    def nearest(f: float, px: float) -> float:
        return min(spacings_nm, key=lambda dd: abs(f * dd / px - 1.0))

    # The best any reading by all reflections achieves: what the image supports at all
    # (every plausible f·d at once; the same comparisons as ``explained``, one array).
    best_full = 0.0
    cands = f_d.ravel()
    cands = cands[(cands >= lo_px) & (cands <= hi_px)]
    if cands.size:
        best_full = max(0.0, max(score(np.flatnonzero(row).tolist()) for row in _explained_by(f_d, tols, cands)))

    # 1. The metadata's pixel size, when it explains the peaks as well as any reading (within
    #    tie_margin, each peak within agree_tolerance of some reflection): the image does not
    #    contradict it. Higher orders count here, so a {331} fringe is not read as {200}.
    if hint_nm is not None and best_full > 0:
        idx = explained(hint_nm, agree_tolerance)
        if idx and score(idx) >= (1.0 - tie_margin) * best_full:
            fits = [top[i][0] * nearest(top[i][0], hint_nm) for i in idx]
            px = float(np.exp(np.mean(np.log(fits))))
            main = max(idx, key=lambda i: top[i][1])
            if len(idx) == 1 and top[main][2] < (min_snr + 4.0 if single_peak_snr is None else single_peak_snr):
                return None
            return PixelSizeEstimate(px, nearest(top[main][0], hint_nm), top[main][0], top[main][1],
                                     "high" if len(idx) >= 2 else "medium", len(centres))

    # 2. Otherwise the low-order reading (``primary_nm``: {111}/{200} for fcc), as kinematics
    #    rank fringes. It is "low" confidence when it leaves significant peaks unexplained that
    #    another reading explains (score below the best by more than tie_margin).
    reading = _primary_reading(top, primary, plausible, hint_nm or math.sqrt(lo_px * hi_px), min_snr,
                               single_peak_snr, pair_tolerance)
    if reading is None:
        return None
    px, d, f, snr, confidence = reading
    if score(explained(px)) < (1.0 - tie_margin) * best_full:
        confidence = "low"
    elif confidence != "high" and any(plausible(f * dd) for dd in spacings_nm if dd not in primary):
        confidence = "low"  # a lone peak that a higher order would put in the band as well
    return PixelSizeEstimate(px, d, f, snr, confidence, len(centres))


def _explained_by(f_d: np.ndarray, tols: Sequence[float], pxs: np.ndarray, tol_floor: float = 0.0) -> np.ndarray:
    """``(len(pxs), peaks)`` bool: at pixel size ``pxs[j]`` (nm/px) some reflection puts peak i
    within ``max(tols[i], tol_floor)``: ``|f_i·d / px − 1|`` over ``f_d`` ``(peaks, reflections)``
    = frequency × d-spacing, float64, the same IEEE operations as the scalar expression."""
    tol = np.maximum(np.asarray(tols, dtype=np.float64), tol_floor)[None, :, None]
    return (np.abs(f_d[None] / pxs[:, None, None] - 1.0) <= tol).any(axis=2)


def _primary_reading(top: list[tuple[float, float, float]], spacings: Sequence[float], plausible: Any,
                     hint: float, min_snr: float, single_peak_snr: float | None, tolerance: float
                     ) -> tuple[float, float, float, float, str] | None:
    """Peaks ``(cycles/px, snr, strict snr)`` read with the low-order ``spacings`` only:
    ``(px, d, f, snr, confidence)`` or None. Two peaks in a ratio of two spacings fix the
    assignment (``high``); a lone peak must stand clear of both flanks (a step is no peak) by
    ``single_peak_snr`` and is assigned to the spacing that puts the pixel size nearest
    ``hint`` (``medium``, or ``low`` when several spacings give a plausible pixel size)."""
    best_pair = None
    for i, (fi, si, _) in enumerate(top[:4]):
        for fj, sj, _ in top[i + 1:4]:
            f_low, f_high = min(fi, fj), max(fi, fj)
            for da in spacings:
                for db in spacings:
                    if da <= db:
                        continue
                    if abs((f_high / f_low) / (da / db) - 1.0) <= tolerance:
                        px = 0.5 * (f_low * da + f_high * db)
                        if plausible(px) and (best_pair is None or si + sj > best_pair[0]):
                            main_f, main_d = (fi, da) if fi == f_low else (fi, db)
                            best_pair = (si + sj, px, main_d, main_f, max(si, sj))
    if best_pair is not None:
        _, px, d, f, snr = best_pair
        return px, d, f, snr, "high"
    snr, f = max((strict, f) for f, _, strict in top)
    if snr < (min_snr + 4.0 if single_peak_snr is None else single_peak_snr):
        return None
    options = sorted((abs(math.log(f * d / hint)), f * d, d) for d in spacings if plausible(f * d))
    if not options:
        return None
    _, px, d = options[0]
    return px, d, f, snr, "medium" if len(options) == 1 else "low"


def particle_window_centres(particles: Sequence[dict[str, Any]], limit: int) -> list[tuple[float, float]]:
    """Centroids ((row, column) px) of the largest particles, largest first."""
    ranked = sorted((p for p in particles if p.get("centroid_px") is not None),
                    key=lambda p: -float(p.get("area_px") or 0.0))
    return [(float(p["centroid_px"][0]), float(p["centroid_px"][1])) for p in ranked[:limit]]


