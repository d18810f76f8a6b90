"""A simulated in situ camera for the demo: particles that move, grow slowly and coalesce once,
on a stage that drifts, with a heating ramp in the frame metadata.

The amorphous support is simulated once (``fringelive.training.fastsim``) on a canvas larger than
the frame; each frame crops it at the stage position (integer + sub-pixel shift), paints the
particles (discs with Au{111} lattice fringes and mass-thickness contrast) at their specimen
position + the stage drift, and exposes it through the camera model (Poisson electrons at the
dose, gain, offset, x-ray hits). Over ``n_frames``: every particle random-walks (~1 px per frame)
and grows by ``growth_per_frame``; particles 1 and 2 approach each other and coalesce into one
new particle at ``merge_frame``; the stage drifts up to ``max_drift_px`` per frame per axis.
Frames after ``n_frames`` repeat the last state (no further motion).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from fringelive.training.fastsim import CameraModel, FastSimConfig, apply_camera, simulate_intensity

__all__ = ["InSituCamera", "Particle"]

D_111_NM = 0.2355


@dataclass
class Particle:
    id: int
    y: float  # specimen position, px
    x: float
    r: float  # radius, px
    theta: float  # lattice orientation, rad
    phase: float


class InSituCamera:
    """Frames (H, W) uint16 of a growing, coalescing particle population on a drifting stage.

    shape: frame (H, W) px; pixel_size_nm: nm/px; dose_e_per_A2: e/Å² per frame; n_frames: the
    length of the story; merge_frame: frame of the coalescence (default: the middle);
    max_drift_px: stage step per frame and axis (px); temperature_C: (start, end) of the ramp.
    """

    def __init__(self, shape: tuple[int, int], *, pixel_size_nm: float = 0.02, dose_e_per_A2: float = 423.0,
                 n_frames: int = 40, merge_frame: int | None = None, max_drift_px: float = 15.0,
                 growth_per_frame: float = 0.004, temperature_C: tuple[float, float] = (300.0, 500.0),
                 camera: CameraModel | None = None, seed: int = 0) -> None:
        if n_frames < 4:
            raise ValueError(f"n_frames must be >= 4, got {n_frames!r}")
        h, w = int(shape[0]), int(shape[1])
        if min(h, w) < 128:
            raise ValueError(f"shape must be at least 128 px per side, got {shape!r}")
        self.shape = (h, w)
        self.pixel_size_nm = pixel_size_nm
        self.dose = dose_e_per_A2
        self.n_frames = n_frames
        self.merge_frame = n_frames // 2 if merge_frame is None else int(merge_frame)
        self.camera = camera or CameraModel()
        self.temperature_C = temperature_C
        rng = np.random.default_rng(seed)
        self._rng = rng
        self.margin = int(max(40, 0.1 * max(h, w)))
        world_shape = (h + 2 * self.margin, w + 2 * self.margin)
        cfg = FastSimConfig(shape=world_shape, pixel_size_nm=pixel_size_nm, particles_per_100nm2=0.0)
        self._world = simulate_intensity(cfg, rng)[0].astype(np.float32)
        # stage drift: cumulative (dy, dx) px per frame, bounded by the margin
        steps = rng.uniform(-max_drift_px, max_drift_px, size=(n_frames, 2))
        steps[0] = 0.0
        cum, drift = np.zeros(2), []
        for k in range(n_frames):
            for a in range(2):
                if abs(cum[a] + steps[k, a]) > self.margin - 2:
                    steps[k, a] = -steps[k, a]
            cum = cum + steps[k]
            drift.append((float(cum[0]), float(cum[1])))
        self.drift = drift
        # particles: a pair that coalesces, and others away from the pair's corridor
        side = min(h, w)
        r1, r2 = 0.07 * side, 0.06 * side
        v = max(1.0, 0.006 * side)
        gap0 = 0.02 * side + 2 * v * self.merge_frame
        cy, cx = 0.5 * h, 0.5 * w
        self._pair_v = v
        self.particles = [Particle(1, cy, cx - r1 - gap0 / 2, r1, rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)),
                          Particle(2, cy, cx + r2 + gap0 / 2, r2, rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi))]
        self._next_id = 3
        for _ in range(3000):
            if len(self.particles) >= 8:
                break
            r = rng.uniform(0.04, 0.065) * side
            y, x = rng.uniform(r + 0.05 * h, h - r - 0.05 * h), rng.uniform(r + 0.05 * w, w - r - 0.05 * w)
            if abs(y - cy) < r + 0.1 * side + r1 and abs(x - cx) < r + gap0 / 2 + 2 * (r1 + r2):
                continue
            if all(math.hypot(y - p.y, x - p.x) > r + p.r + 0.04 * side for p in self.particles):
                self.particles.append(Particle(self._next_id, y, x, r, rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)))
                self._next_id += 1
        self.growth = growth_per_frame
        self._k = 0
        self.merges: list[tuple[int, tuple[int, int], int]] = []  # (frame, parents, child)

    def _step(self) -> None:
        """Advance the population by one frame."""
        self._k += 1
        k, rng = self._k, self._rng
        if k == self.merge_frame:
            a, b = (p for p in self.particles if p.id in (1, 2))
            area = a.r ** 2 + b.r ** 2
            child = Particle(self._next_id, (a.y * a.r ** 2 + b.y * b.r ** 2) / area,
                             (a.x * a.r ** 2 + b.x * b.r ** 2) / area, math.sqrt(area), a.theta, a.phase)
            self.particles = [p for p in self.particles if p.id not in (1, 2)] + [child]
            self.merges.append((k, (1, 2), self._next_id))
            self._next_id += 1
            return
        for p in self.particles:
            if p.id in (1, 2):
                p.x += self._pair_v if p.id == 1 else -self._pair_v
                continue
            ny, nx = p.y + rng.normal(0, 1.0), p.x + rng.normal(0, 1.0)
            if all(math.hypot(ny - q.y, nx - q.x) > p.r + q.r + 6 for q in self.particles if q is not p):
                p.y, p.x = ny, nx
            p.r *= 1.0 + self.growth

    def frame(self, index: int, fraction: float = 0.0, dose_e_per_A2: float | None = None,
              label: str = "in situ") -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Frame ``index`` (call with increasing indices): (counts (H, W) uint16, truth mask
        (H, W) bool, metadata incl. ``timestamp`` (1 s per frame), ``temperature_C``)."""
        k = min(int(index), self.n_frames - 1)
        while self._k < k:
            self._step()
        h, w = self.shape
        dy, dx = self.drift[k]
        iy, ix = int(math.floor(dy)), int(math.floor(dx))
        y0, x0 = self.margin - iy - 1, self.margin - ix - 1
        crop = self._world[y0:y0 + h + 2, x0:x0 + w + 2]
        img = ndimage.shift(crop, (dy - iy, dx - ix), order=1, mode="nearest")[1:h + 1, 1:w + 1].copy()
        mask = np.zeros((h, w), bool)
        for p in self.particles:
            self._paint(img, mask, p, dy, dx)
        dose = self.dose if dose_e_per_A2 is None else dose_e_per_A2
        counts = apply_camera(img, dose, self.pixel_size_nm, self.camera, self._rng)
        t0, t1 = self.temperature_C
        meta = {"pixel_size_nm": self.pixel_size_nm, "dose_e_per_A2": dose, "voltage_kv": 300.0,
                "magnification": 8.0e5, "timestamp": 1.0e9 + float(index),
                "temperature_C": round(t0 + (t1 - t0) * min(index / max(self.n_frames - 1, 1), 1.0), 2),
                "camera": "fringelive-simulated", "tags": {"condition": label}}
        return counts, mask, meta

    def _paint(self, img: np.ndarray, mask: np.ndarray, p: Particle, dy: float, dx: float) -> None:
        h, w = img.shape
        cy, cx, r = p.y + dy, p.x + dx, p.r
        y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, h)
        x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, w)
        if y0 >= y1 or x0 >= x1:
            return
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        rr2 = (yy - cy) ** 2 + (xx - cx) ** 2
        inside = rr2 <= r * r
        t = np.sqrt(np.clip(1.0 - rr2 / (r * r), 0.0, 1.0))
        g = self.pixel_size_nm / D_111_NM
        fr = np.cos(2 * np.pi * g * (np.cos(p.theta) * (yy - cy) + np.sin(p.theta) * (xx - cx)) + p.phase)
        patch = img[y0:y1, x0:x1]
        patch[inside] = (1.0 - 0.15 * t + 0.25 * t * fr + 0.3 * (patch - 1.0))[inside]
        mask[y0:y1, x0:x1] |= inside
