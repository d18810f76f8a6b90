"""A synthetic in situ HRTEM series with ground truth, for the registration and tracking tests.

The specimen: an amorphous-carbon support (``training/fastsim.py``'s band-limited speckle plus
thickness variation) carrying
crystalline discs with lattice fringes (Au{111}, 0.2355 nm) and mass-thickness contrast. Over
the series the discs random-walk (Brownian, ~1.5 px per frame per axis), grow slowly, one new
particle nucleates, two particles approach and coalesce into one (a new truth id), and the
stage drifts rigidly by up to ±30 px per frame per axis, integer and sub-pixel steps.

The support is rendered once on a world canvas larger than the frame and each frame's view is
the world shifted exactly (Fourier shift: a sub-pixel drift is exact, not interpolated). Then
the discs are painted at their specimen position + drift and the camera applies Poisson noise
at 423 e/Å² (0.02 nm/px → 16.9 e/px), illumination non-uniformity and x-ray hits.

Ground truth per frame: the cumulative drift (px) and a label image of truth ids.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from fringelive.training import fastsim

PIXEL_NM = 0.02
DOSE = 423.0  # e/Å² per frame
D_111 = 0.2355  # nm


def _support(rng: np.random.Generator, size: int) -> np.ndarray:
    cfg = fastsim.FastSimConfig(shape=(size, size), pixel_size_nm=PIXEL_NM, particles_per_100nm2=0.0)
    img, _, _ = fastsim.simulate_intensity(cfg, rng)
    return img.astype(np.float32)


def _camera(rng: np.random.Generator, intensity: np.ndarray) -> np.ndarray:
    return fastsim.apply_camera(intensity, DOSE, PIXEL_NM, fastsim.CameraModel(), rng)


@dataclass
class Disc:
    id: int
    y: float  # specimen coordinates (px, drift-free)
    x: float
    r: float  # px
    theta: float = 0.0
    phase: float = 0.0


@dataclass
class Series:
    frames: list[np.ndarray] = field(default_factory=list)  # raw counts (H, W) uint16
    drift: list[tuple[float, float]] = field(default_factory=list)  # true cumulative (dy, dx) px
    truth: list[np.ndarray] = field(default_factory=list)  # (H, W) int32 truth ids, 0 background
    merges: list[tuple[int, tuple[int, int], int]] = field(default_factory=list)  # (frame, parents, child)
    births: list[tuple[int, int]] = field(default_factory=list)  # (frame, truth id)


def _paint(img: np.ndarray, lab: np.ndarray, d: Disc, dy: float, dx: float) -> None:
    h, w = img.shape
    cy, cx, r = d.y + dy, d.x + dx, d.r
    y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, h)
    x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, w)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    rr2 = (yy - cy) ** 2 + (xx - cx) ** 2
    inside = rr2 <= r * r
    t = np.sqrt(np.clip(1.0 - rr2 / (r * r), 0.0, 1.0))
    g = PIXEL_NM / D_111
    fr = np.cos(2 * np.pi * g * (np.cos(d.theta) * (yy - cy) + np.sin(d.theta) * (xx - cx)) + d.phase)
    patch = img[y0:y1, x0:x1]
    patch[inside] = (1.0 - 0.15 * t + 0.25 * t * fr + 0.3 * (patch - 1.0))[inside]
    lab[y0:y1, x0:x1][inside] = d.id


@functools.lru_cache(maxsize=2)
def make_series(n_frames: int = 12, shape: tuple[int, int] = (2048, 2048), seed: int = 15,
                merge_frame: int = 7, birth_frame: int = 4, max_step_px: float = 30.0,
                approach_px: float = 3.0) -> Series:
    """The series described in the module docstring (cached: the tests share it); the merging
    pair approaches by ``approach_px`` per frame each."""
    rng = np.random.default_rng(seed)
    h, w = shape
    margin = 30 * 6
    size = sfft.next_fast_len(max(h, w) + 2 * margin, real=True)
    world = _support(rng, size)
    spec = sfft.rfft2(world, workers=2)
    fy = np.fft.fftfreq(size)[:, None].astype(np.float32)
    fx = np.fft.rfftfreq(size)[None, :].astype(np.float32)
    o = (size - h) // 2, (size - w) // 2

    # Drift: steps up to ±max_step per axis, a few exactly ±max_step or integer, bounded by margin.
    steps = rng.uniform(-max_step_px, max_step_px, size=(n_frames, 2))
    steps[0] = 0.0
    steps[1] = (max_step_px, -max_step_px)
    steps[2] = np.round(steps[2])
    steps[5] = (-max_step_px, max_step_px - 0.5)
    cum = np.zeros(2)
    drift = []
    for k in range(n_frames):
        for a in range(2):
            if abs(cum[a] + steps[k, a]) > margin - 40:
                steps[k, a] = -steps[k, a]
        cum = cum + steps[k]
        drift.append((float(cum[0]), float(cum[1])))

    # Particles: non-overlapping discs; a pair (ids 1, 2) set to coalesce at merge_frame.
    discs: list[Disc] = []
    v = approach_px  # px per frame each, toward each other
    r1, r2 = 90.0, 75.0
    gap0 = 4.0 + 2 * v * merge_frame
    cy, cx = 0.45 * h, 0.5 * w
    discs.append(Disc(1, cy, cx - (r1 + gap0 / 2), r1, rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)))
    discs.append(Disc(2, cy, cx + (r2 + gap0 / 2), r2, rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)))
    next_id = 3
    tries = 0
    while len(discs) < 12 and tries < 2000:
        tries += 1
        r = rng.uniform(55, 120)
        y, x = rng.uniform(r + 60, h - r - 60), rng.uniform(r + 60, w - r - 60)
        in_corridor = abs(y - cy) < r + 150 and abs(x - cx) < r + 400
        if not in_corridor and all(math.hypot(y - d.y, x - d.x) > r + d.r + 60 for d in discs):
            discs.append(Disc(next_id, y, x, r, rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)))
            next_id += 1
    series = Series()
    for k in range(n_frames):
        if k == birth_frame:  # nucleation in an empty spot
            for _ in range(500):
                y, x = rng.uniform(200, h - 200), rng.uniform(200, w - 200)
                if all(math.hypot(y - d.y, x - d.x) > 40 + d.r + 80 for d in discs):
                    discs.append(Disc(next_id, y, x, 35.0, rng.uniform(0, np.pi), 0.0))
                    series.births.append((k, next_id))
                    next_id += 1
                    break
        if k == merge_frame:
            a, b = (d for d in discs if d.id in (1, 2))
            area = a.r ** 2 + b.r ** 2
            child = Disc(next_id, (a.y * a.r ** 2 + b.y * b.r ** 2) / area, (a.x * a.r ** 2 + b.x * b.r ** 2) / area,
                         math.sqrt(area), a.theta, a.phase)
            discs = [d for d in discs if d.id not in (1, 2)] + [child]
            series.merges.append((k, (1, 2), next_id))
            next_id += 1
        if k > 0:  # motion and growth (not for the frame right after a merge: the child is fresh)
            for d in discs:
                if d.id in (1, 2):
                    d.x += v if d.id == 1 else -v
                    d.y += rng.normal(0, 0.5)
                    continue
                ny, nx = d.y + rng.normal(0, 1.5), d.x + rng.normal(0, 1.5)
                if all(math.hypot(ny - e.y, nx - e.x) > d.r + e.r + 8 for e in discs if e is not d):
                    d.y, d.x = ny, nx
                d.r *= 1.004
        dy, dx = drift[k]
        shifted = spec * np.exp(-2j * np.pi * fy * dy).astype(np.complex64)
        shifted *= np.exp(-2j * np.pi * fx * dx).astype(np.complex64)
        view = sfft.irfft2(shifted, s=(size, size), workers=2)[o[0]:o[0] + h, o[1]:o[1] + w]
        img = np.ascontiguousarray(view, dtype=np.float32)
        lab = np.zeros(shape, np.int32)
        for d in discs:
            _paint(img, lab, d, dy, dx)
        series.frames.append(_camera(rng, img))
        series.drift.append((dy, dx))
        series.truth.append(lab)
    return series


def stats_of(labels: np.ndarray) -> list[dict]:
    """``particle_stats``-like dicts of a label image numbered 1..n (label, area_px,
    centroid_px [y, x], bbox_px [y0, x0, y1, x1), touches_border); per-box work only."""
    h, w = labels.shape
    out = []
    for i, sl in enumerate(ndimage.find_objects(labels)):
        if sl is None:
            continue
        ys, xs = np.nonzero(labels[sl] == i + 1)
        box = [sl[0].start, sl[1].start, sl[0].stop, sl[1].stop]
        out.append({"label": i + 1, "area_px": int(ys.size),
                    "centroid_px": [float(ys.mean() + box[0]), float(xs.mean() + box[1])],
                    "bbox_px": box, "touches_border": box[0] == 0 or box[1] == 0 or box[2] == h or box[3] == w})
    return out


@functools.lru_cache(maxsize=2)
def registered(n_frames: int = 12):
    """The cached series' frames registered by a default ``DriftTracker`` (shared by tests)."""
    from fringelive.engine.registration import DriftTracker

    s = make_series(n_frames)
    tracker = DriftTracker()
    return [tracker.update(f, series="run", magnification=8.0e5, pixel_size_nm=PIXEL_NM) for f in s.frames]
