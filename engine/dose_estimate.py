"""Bundle calibration's dose measurement: the shot noise of *every* background block (away from
predicted particles) against the calibration camera, in e/Å² per frame.

The estimator is the daemon's (``fringelive.engine.camera``: the Laplacian high-pass variance
:func:`~fringelive.engine.camera.blocks.laplacian_variance`, electrons
:func:`~fringelive.engine.camera.dose.shot_noise_electrons` and
:func:`~fringelive.engine.camera.dose.gain_electrons`); what differs is the choice of blocks and
what is reported. Here every background block counts (no flatness test, no x-ray cleaning: the
median over blocks outvotes them), every block of the frame when the model sees too little
background, and the raw shot-noise electrons are kept, so ``fringelive calibrate`` gets a value
on any frame, textured support included, to fit the noise factor and the reference's
``log_dose_estimate`` on. The daemon's :func:`fringelive.engine.camera.estimate_dose` uses only
flat blocks and the gain first (a *verified* dose). ``docs/drift.md`` § 2 compares them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fringelive.engine.camera.blocks import laplacian_variance, pick_evenly
from fringelive.engine.camera.dose import gain_electrons, shot_noise_electrons

__all__ = ["CameraCalibration", "DoseMeasurement", "background_block_grid", "background_window_centres", "estimate_dose", "measure_background_noise"]


@dataclass(frozen=True)
class CameraCalibration:
    """Camera constants of a bundle calibration: what :func:`measure_background_noise` measures
    with and what a drift reference stores as its ``calibration_camera`` (same keys as the
    daemon's ``[camera]``, :class:`fringelive.engine.camera.CameraSettings`, but with the
    calibration's defaults: offset 0, no upper bound on the noise factor). gain_counts_per_e:
    counts per electron (None = unknown); offset_counts: counts added to every pixel;
    read_noise_counts: rms read noise, counts; noise_factor: true/apparent electrons of the
    shot-noise estimate (1 for white noise, < 1 when the MTF correlates neighbouring pixels)."""

    gain_counts_per_e: float | None = None
    offset_counts: float = 0.0
    read_noise_counts: float = 0.0
    noise_factor: float = 1.0

    def __post_init__(self) -> None:
        g = self.gain_counts_per_e
        if g is not None and not (math.isfinite(g) and g > 0):
            raise ValueError(f"gain_counts_per_e must be > 0 (counts/e) or None, got {g!r}")
        if not math.isfinite(self.offset_counts):
            raise ValueError(f"offset_counts must be finite (counts), got {self.offset_counts!r}")
        if not (math.isfinite(self.read_noise_counts) and self.read_noise_counts >= 0):
            raise ValueError(f"read_noise_counts must be >= 0 (counts), got {self.read_noise_counts!r}")
        if not (math.isfinite(self.noise_factor) and self.noise_factor > 0):
            raise ValueError(f"noise_factor must be > 0, got {self.noise_factor!r}")

    def to_dict(self) -> dict[str, float | None]:
        """The drift reference's ``calibration_camera`` map (``engine/drift_reference.py``)."""
        return {"gain_counts_per_e": self.gain_counts_per_e, "offset_counts": self.offset_counts,
                "read_noise_counts": self.read_noise_counts, "noise_factor": self.noise_factor}


@dataclass(frozen=True)
class DoseMeasurement:
    """Background statistics of one frame (before any calibration).

    mean_counts: median block mean minus the offset (counts); variance_counts2: median
    shot-noise variance (Laplacian variance / 20) minus the read noise² (counts²); raw_electrons_per_px: median
    over blocks of mean²/variance; blocks: blocks used; block_px: block side (px); spread:
    robust relative spread of the per-block values (MAD/median), a precision hint; basis:
    ``background`` (predicted background only) or ``all_blocks`` (too little background was
    predicted, so every block was used).
    """

    mean_counts: float
    variance_counts2: float
    raw_electrons_per_px: float
    blocks: int
    block_px: int
    spread: float
    basis: str = "background"

    def electrons_per_px(self, camera: CameraCalibration) -> float:
        """Shot-noise estimate of electrons per pixel (calibrated by ``camera.noise_factor``)."""
        return camera.noise_factor * self.raw_electrons_per_px

    def electrons_per_px_from_gain(self, camera: CameraCalibration) -> float | None:
        """``mean / gain`` electrons per pixel, None without a gain."""
        g = camera.gain_counts_per_e
        return None if g is None else float(gain_electrons(self.mean_counts, g))

    def gain_counts_per_e(self, camera: CameraCalibration) -> float | None:
        """The gain this frame implies: mean / shot-noise electrons (counts/e)."""
        n = self.electrons_per_px(camera)
        return self.mean_counts / n if n > 0 else None


def background_block_grid(mask: np.ndarray | None, shape: tuple[int, int], block: int,
                          margin_blocks: int = 1) -> np.ndarray:
    """Boolean (H // block, W // block) map of blocks that hold no predicted particle pixel and
    have none within ``margin_blocks`` blocks. ``mask`` None: every block."""
    from scipy import ndimage

    hb, wb = shape[0] // block, shape[1] // block
    if mask is None:
        return np.ones((hb, wb), dtype=bool)
    if mask.shape != tuple(shape):
        raise ValueError(f"mask shape {mask.shape} does not match the frame {shape}")
    step = max(1, block // 8)  # a particle of a few px is still seen on this subsample
    sub = mask[: hb * block: step, : wb * block: step]
    per = block // step
    occupied = sub[: hb * per, : wb * per].reshape(hb, per, wb, per).any(axis=(1, 3))
    if margin_blocks > 0 and occupied.any():
        occupied = ndimage.binary_dilation(occupied, iterations=margin_blocks)
    return ~occupied


def measure_background_noise(pixels: np.ndarray, mask: np.ndarray | None, *, camera: CameraCalibration | None = None,
                             block: int | None = None, max_blocks: int = 400, min_blocks: int = 6
                             ) -> DoseMeasurement | None:
    """Mean and shot-noise variance of the background of ``pixels (H, W)`` (raw counts, x-ray
    hits are outvoted by the median over blocks). ``mask (H, W)`` bool: predicted particles.
    block: side in px (default 32, 16 for frames under 512 px). With fewer than ``min_blocks``
    background blocks every block is used (``basis="all_blocks"``); None when even that is too
    few."""
    camera = camera or CameraCalibration()
    if pixels.ndim != 2:
        raise ValueError(f"pixels must have shape (H, W), got {pixels.shape}")
    h, w = pixels.shape
    if block is None:
        block = 32 if min(h, w) >= 512 else 16
    if block < 4:
        raise ValueError(f"block must be >= 4 px, got {block!r}")
    grid = background_block_grid(mask, (h, w), block)
    basis = "background"
    if int(grid.sum()) < min_blocks and mask is not None:
        # The model sees (almost) no background, e.g. out of distribution: every block, the
        # median over them still follows the background where particles cover under half.
        grid = background_block_grid(None, (h, w), block)
        basis = "all_blocks"
    by, bx = np.nonzero(grid)
    if by.size < min_blocks:
        return None
    sel = pick_evenly(by.size, max_blocks)
    ys, xs = by[sel] * block, bx[sel] * block
    ar = np.arange(block)
    blocks = pixels[ys[:, None, None] + ar[None, :, None], xs[:, None, None] + ar[None, None, :]]
    blocks = blocks.astype(np.float64) - camera.offset_counts
    means = blocks.mean(axis=(1, 2))
    var = laplacian_variance(blocks) - camera.read_noise_counts ** 2
    good = (means > 0) & (var > 0)
    if int(good.sum()) < min_blocks:
        return None
    ratio = shot_noise_electrons(means[good], var[good])
    med = float(np.median(ratio))
    spread = float(np.median(np.abs(ratio - med)) / med) if med > 0 else math.inf
    return DoseMeasurement(mean_counts=float(np.median(means[good])), variance_counts2=float(np.median(var[good])),
                           raw_electrons_per_px=med, blocks=int(good.sum()), block_px=int(block), spread=spread,
                           basis=basis)


def estimate_dose(measurement: DoseMeasurement | None, camera: CameraCalibration, pixel_size_nm: float | None
                  ) -> dict[str, float | None]:
    """``{electrons_per_px, dose_e_per_A2, dose_e_per_A2_from_gain, camera_gain_counts_per_e}``
    from a background measurement; doses need the pixel size (nm/px; 1 nm = 10 Å)."""
    if measurement is None:
        return {"electrons_per_px": None, "dose_e_per_A2": None, "dose_e_per_A2_from_gain": None,
                "camera_gain_counts_per_e": None}
    n = measurement.electrons_per_px(camera)
    n_gain = measurement.electrons_per_px_from_gain(camera)
    area = None if pixel_size_nm is None else (10.0 * pixel_size_nm) ** 2
    return {
        "electrons_per_px": n,
        "dose_e_per_A2": None if area is None else n / area,
        "dose_e_per_A2_from_gain": None if area is None or n_gain is None else n_gain / area,
        "camera_gain_counts_per_e": measurement.gain_counts_per_e(camera),
    }


def background_window_centres(grid: np.ndarray, block: int, size: int, limit: int) -> list[tuple[float, float]]:
    """Centres of up to ``limit`` windows of side ``size`` px lying on background blocks
    (``grid`` from :func:`background_block_grid`), spread over the frame."""
    from scipy import ndimage

    need = max(1, math.ceil(size / block))
    if grid.shape[0] < need or grid.shape[1] < need:
        return []
    # A window fits where a need×need square of blocks is all background.
    clear = ndimage.minimum_filter(grid.astype(np.uint8), size=need, mode="constant", cval=0) > 0
    ys, xs = np.nonzero(clear)
    if not ys.size:
        return []
    sel = pick_evenly(ys.size, limit)
    return [((ys[i] + 0.5) * block, (xs[i] + 0.5) * block) for i in sel]
