"""Issue #14: the finisher's cheaper paths give the results of the straightforward ones.

* particles: the areas summed over foreground runs (``label_kept_runs``) and the statistics from
  those runs equal ``label_particles`` + ``keep_labels`` + a fresh run scan, bit for bit;
* pixel size from fringes: the radial power profile's float64 transform equals the float32
  transform within float32 rounding, and the estimate (pixel size, spacing, confidence) is the
  same; the vectorised peak/reflection matching equals the scalar loops.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fringelive.engine import image_estimates as ie
from fringelive.engine.materials import D_SPACINGS_NM, reflection_spacings_for
from fringelive.engine.particle_measure import ParticleSettings, measure_particles, min_area_px_for, size_summary
from fringelive.engine.particles import (fill_holes, foreground_runs, keep_labels, label_kept_runs, label_particles,
                                         particle_stats, stats_of_labels)


def _blobs(rng: np.random.Generator, shape: tuple[int, int], n: int, speckle: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for _ in range(n):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(2, 30)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return mask ^ (rng.random(shape) < speckle)  # specks and holes


@pytest.mark.parametrize("connectivity", [1, 2])
def test_label_kept_runs_equals_label_then_keep(connectivity: int) -> None:
    rng = np.random.default_rng(11)
    for trial in range(60):
        shape = (int(rng.integers(1, 90)), int(rng.integers(1, 90)))
        mask = _blobs(rng, shape, int(rng.integers(0, 8)), float(rng.choice([0.0, 0.01, 0.2])))
        minimum = int(rng.choice([1, 3, 20, 60]))
        labels, count = label_particles(mask, connectivity=connectivity)
        ref_labels, ref_kept = keep_labels(labels, count, minimum)
        got_labels, got_count, got_kept, runs = label_kept_runs(mask, minimum, connectivity=connectivity)
        assert (got_count, got_kept) == (count, ref_kept), trial
        np.testing.assert_array_equal(got_labels, ref_labels)
        assert got_labels.dtype == np.int32
        assert stats_of_labels(got_labels, got_kept, 0.03, runs=runs) == stats_of_labels(ref_labels, ref_kept, 0.03)
        row, c0, c1 = foreground_runs(ref_labels > 0)
        for a, b in zip(runs, (row, c0, c1, ref_labels[row, c0])):
            np.testing.assert_array_equal(a, b)


def _measure_reference(mask: np.ndarray, px: float | None, settings: ParticleSettings, min_area_px: int = 20):
    """``measure_particles`` as it was before the runs: fill, label, keep, scan."""
    minimum = min_area_px_for(px, settings, min_area_px)
    if settings.fill_holes:
        mask = fill_holes(mask)
    labels, count = label_particles(mask, connectivity=2)
    labels, kept = keep_labels(labels, count, minimum)
    if count - kept and settings.remove_specks:
        mask = labels > 0
    particles = stats_of_labels(labels, kept, px)
    return mask, labels, particles, count - kept, size_summary(particles, count - kept, settings)


@pytest.mark.parametrize("settings", [ParticleSettings(), ParticleSettings(remove_specks=False),
                                      ParticleSettings(fill_holes=False), ParticleSettings(min_diameter_nm=0.0)])
def test_measure_particles_unchanged(settings: ParticleSettings) -> None:
    rng = np.random.default_rng(5)
    for px in (0.02, None):
        mask = _blobs(rng, (300, 260), 25, 0.02)
        got = measure_particles(mask, px, settings)
        ref_mask, ref_labels, ref_particles, ref_specks, ref_summary = _measure_reference(mask, px, settings)
        np.testing.assert_array_equal(got.mask, ref_mask)
        np.testing.assert_array_equal(got.labels, ref_labels)
        assert got.particles == ref_particles and got.specks == ref_specks and got.summary == ref_summary
        assert got.particles == particle_stats(fill_holes(mask) if settings.fill_holes else mask, px,
                                               min_area_px=min_area_px_for(px, settings, 20))


def _profile_float32(pixels: np.ndarray, centres, size: int, radius_px: float) -> np.ndarray:
    """The radial power profile with the float32 transform (the code before issue #14's change)."""
    h, w = pixels.shape
    rbin, weight = ie._radial_bins(size)
    taper = ie._disc_taper(size, float(radius_px))
    n = size // 2
    total, used = np.zeros(n), 0
    counts = np.bincount(rbin, weight, minlength=n + 1)[:n]
    for cy, cx in centres:
        y0, x0 = ie._window_origin(cy, size, h), ie._window_origin(cx, size, w)
        win = pixels[y0:y0 + size, x0:x0 + size].astype(np.float32)
        dy, dx = int(round(cy)) - (y0 + size // 2), int(round(cx)) - (x0 + size // 2)
        t = np.roll(taper, (dy, dx), axis=(0, 1)) if (dy or dx) else taper
        inside = win[t > 0.5]
        med = float(np.median(inside))
        mad = float(np.median(np.abs(inside - med)))
        np.minimum(win, med + 10.0 * 1.4826 * max(mad, math.sqrt(med)), out=win)
        win /= np.float32(med)
        win -= np.float32(float((win * t).sum() / t.sum()))
        win *= t
        power = np.abs(np.fft.rfft2(win)) ** 2
        total += np.bincount(rbin, power.ravel() * weight, minlength=n + 1)[:n]
        used += 1
    return total / np.maximum(counts, 1.0) / used


def _fringe_frame(px: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    side = 768
    yy, xx = np.mgrid[:side, :side].astype(np.float64)
    scene, mask = np.ones((side, side)), np.zeros((side, side), bool)
    for cy, cx in ((190, 190), (190, 560), (560, 380), (600, 120)):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 70 ** 2
        theta = rng.uniform(0, np.pi)
        for d, amp in ((0.2355, 0.12), (0.2039, 0.06)):
            k = 2 * np.pi * px / d
            scene[disc] *= 1.0 + amp * np.cos(k * (np.cos(theta) * xx[disc] + np.sin(theta) * yy[disc]))
            theta += 0.9
        mask |= disc
    return rng.poisson(scene * 423.0 * (10 * px) ** 2 * 4).astype(np.float64), mask


@pytest.mark.parametrize("px", [0.02, 0.033])
def test_fringe_profile_and_estimate_within_float32_rounding(px: float) -> None:
    counts, mask = _fringe_frame(px)
    parts = particle_stats(mask, None)
    centres = ie.particle_window_centres(parts, 6)
    radius = 0.5 * float(np.median([p["diameter_px"] for p in parts]))
    window = max(128, min(512, 1 << int(math.ceil(math.log2(4 * radius)))))
    got = ie.radial_power_profile(counts, centres, window, radius_px=radius)
    ref = _profile_float32(counts, centres, window, radius)
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-6 * float(ref.max()))
    est = ie.estimate_pixel_size(counts, centres, reflection_spacings_for(["Au"]), primary_nm=D_SPACINGS_NM["Au"],
                                 pixel_size_range=(0.008, 0.05), particle_radius_px=radius, hint_nm=px)
    assert est is not None and est.pixel_size_nm == pytest.approx(px, rel=0.025)


def test_vectorised_matching_equals_scalar_loops() -> None:
    """``estimate_pixel_size``'s reading of peaks: the array comparison is the scalar one."""
    rng = np.random.default_rng(2)
    spacings = reflection_spacings_for(["Au", "Pt", "ZnO"])
    for _ in range(200):
        k = int(rng.integers(1, 7))
        top = [(float(rng.uniform(0.02, 0.45)), float(rng.uniform(6, 80)), 0.0) for _ in range(k)]
        tols = [float(rng.uniform(0.01, 0.03)) for _ in range(k)]
        px = float(rng.uniform(0.008, 0.05))
        floor = float(rng.choice([0.0, 0.03]))
        scalar = [i for i, (f, _, _) in enumerate(top)
                  if any(abs(f * d / px - 1.0) <= max(tols[i], floor) for d in spacings)]
        f_d = np.array([f for f, _, _ in top])[:, None] * np.asarray(spacings)
        assert np.flatnonzero(ie._explained_by(f_d, tols, np.array([px]), floor)[0]).tolist() == scalar
        # every candidate f·d at once, as the best-reading search uses it
        cands = f_d.ravel()
        rows = ie._explained_by(f_d, tols, cands)
        for c, row in zip(cands, rows):
            assert np.flatnonzero(row).tolist() == [i for i, (f, _, _) in enumerate(top)
                                                    if any(abs(f * d / c - 1.0) <= tols[i] for d in spacings)]


def test_binary_entropy_in_place_equals_the_expression() -> None:
    from fringelive.engine.confidence import binary_entropy_bits

    rng = np.random.default_rng(4)
    p = np.concatenate([rng.random(10_000).astype(np.float32), np.array([0.0, 1.0, 0.5, 1e-9], np.float32)])
    c = np.clip(p, 1e-7, 1.0 - 1e-7)
    q = 1.0 - c
    np.testing.assert_array_equal(binary_entropy_bits(p), -(c * np.log2(c) + q * np.log2(q)))
    assert binary_entropy_bits(np.float32(0.5)) == pytest.approx(1.0)
    assert binary_entropy_bits(p.reshape(2, -1)).shape == (2, p.size // 2)
