"""A simulated camera for the demo and for load tests: streams raw frames with exact masks.

Scenes are simulated once (``fringelive.training.fastsim``: particles with lattice fringes on an
amorphous support, point spread) and every frame re-exposes one of them through the camera
model (Poisson electrons at the current dose, gain, offset, illumination, x-ray hits), so a
4096² frame costs a fraction of a second. A *schedule* changes dose and pixel size mid-run
(pixel size by resampling the scene), so drift flags can be seen to appear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from scipy import ndimage

from fringelive.training.fastsim import CameraModel, FastSimConfig, apply_camera, simulate_intensity

__all__ = ["Condition", "SimulatedCamera", "default_sweep"]


@dataclass(frozen=True)
class Condition:
    """Acquisition condition from ``start_fraction`` of the run on. Units: nm/pixel, e/Å²."""

    start_fraction: float
    pixel_size_nm: float
    dose_e_per_A2: float
    label: str = ""


def default_sweep(pixel_size_nm: float, dose_e_per_A2: float) -> tuple[Condition, ...]:
    """In-envelope first, then a low-dose stretch, then a magnification change, then back."""
    return (
        Condition(0.0, pixel_size_nm, dose_e_per_A2, "nominal"),
        Condition(0.4, pixel_size_nm, dose_e_per_A2 / 5.0, "low dose"),
        Condition(0.6, pixel_size_nm * 1.65, dose_e_per_A2, "lower magnification"),
        Condition(0.8, pixel_size_nm, dose_e_per_A2, "nominal"),
    )


class SimulatedCamera:
    """Frames ``(H, W)`` uint16 with their masks and metadata.

    shape: frame (H, W) px; scenes: distinct simulated scenes cycled through; schedule: the
    conditions over the run (fractions of ``n_frames``).
    """

    def __init__(self, shape: tuple[int, int], *, pixel_size_nm: float = 0.02, dose_e_per_A2: float = 423.0,
                 material: str = "Au", diameter_nm: float = 5.0, scenes: int = 2,
                 schedule: tuple[Condition, ...] | None = None, camera: CameraModel | None = None,
                 seed: int = 0) -> None:
        if scenes < 1:
            raise ValueError(f"scenes must be >= 1, got {scenes!r}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.camera = camera or CameraModel()
        self.schedule = schedule or (Condition(0.0, pixel_size_nm, dose_e_per_A2, "nominal"),)
        if self.schedule[0].start_fraction != 0.0:
            raise ValueError(f"the first condition must start at 0.0, got {self.schedule[0].start_fraction!r}")
        self.base_pixel_size_nm = pixel_size_nm
        self._rng = np.random.default_rng(seed)
        cfg = FastSimConfig(shape=self.shape, pixel_size_nm=pixel_size_nm, material=material,
                            diameter_nm=diameter_nm)
        self._scenes = [simulate_intensity(cfg, self._rng)[:2] for _ in range(scenes)]
        self._resampled: dict[tuple[int, float], tuple[np.ndarray, np.ndarray]] = {}

    def condition_at(self, fraction: float) -> Condition:
        current = self.schedule[0]
        for c in self.schedule:
            if fraction >= c.start_fraction:
                current = c
        return current

    def _scene(self, index: int, pixel_size_nm: float) -> tuple[np.ndarray, np.ndarray]:
        intensity, mask = self._scenes[index % len(self._scenes)]
        zoom = self.base_pixel_size_nm / pixel_size_nm
        if abs(zoom - 1.0) < 1e-6:
            return intensity, mask
        key = (index % len(self._scenes), pixel_size_nm)
        if key not in self._resampled:
            small = ndimage.zoom(intensity, zoom, order=1, mode="reflect")
            small_mask = ndimage.zoom(mask.astype(np.uint8), zoom, order=0) > 0
            reps = (-(-self.shape[0] // small.shape[0]), -(-self.shape[1] // small.shape[1]))
            self._resampled[key] = (
                np.ascontiguousarray(np.tile(small, reps)[: self.shape[0], : self.shape[1]]),
                np.ascontiguousarray(np.tile(small_mask, reps)[: self.shape[0], : self.shape[1]]),
            )
        return self._resampled[key]

    def frame(self, index: int, fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray, dict]:
        """Frame ``index`` at run fraction ``fraction`` in [0, 1]: (counts, mask, metadata)."""
        c = self.condition_at(fraction)
        intensity, mask = self._scene(index, c.pixel_size_nm)
        counts = apply_camera(intensity, c.dose_e_per_A2, c.pixel_size_nm, self.camera, self._rng)
        meta = {"pixel_size_nm": c.pixel_size_nm, "dose_e_per_A2": c.dose_e_per_A2, "voltage_kv": 300.0,
                "camera": "fringelive-simulated", "tags": {"condition": c.label}}
        return counts, mask, meta

    def frames(self, n_frames: int) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
        for i in range(n_frames):
            yield self.frame(i, i / max(n_frames, 1))
