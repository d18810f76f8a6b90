"""Dose of one frame from its background, given the camera."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .blocks import BACKGROUND_BLOCKS, BlockStats, FrameBlocks, flat_blocks
from .settings import CameraSettings

__all__ = ["DoseEstimate", "background_stats", "estimate_dose", "shot_noise_electrons", "gain_electrons"]

def shot_noise_electrons(signal: np.ndarray | float, variance_hp: np.ndarray | float, noise_factor: float = 1.0
                         ) -> np.ndarray | float:
    """Electrons per pixel from shot noise, per block: ``n = f·(m − o)² / (v_hp − r²)``
    (``signal`` = m − o counts, ``variance_hp`` = v_hp − r² counts², ``noise_factor`` = f).
    The one definition: the daemon's dose (:func:`estimate_dose`) and bundle calibration's
    measurement (``engine/dose_estimate.py``) both use it."""
    return noise_factor * signal ** 2 / variance_hp


def gain_electrons(signal: np.ndarray | float, gain_counts_per_e: float) -> np.ndarray | float:
    """Electrons per pixel from the gain: ``n = (m − o) / g`` (``signal`` = m − o counts)."""
    return signal / gain_counts_per_e


@dataclass(frozen=True)
class DoseEstimate:
    """Dose of one frame from its background. electrons_per_px: the estimate used (``method``
    ``gain`` when gain and offset are known, ``shot_noise`` when only the offset is, None when
    the offset is unknown); verified: the camera constants it rests on are known (else the dose
    must be reported as unverified, never as a mismatch); dose_e_per_A2: with a pixel size;
    implied_gain_counts_per_e / implied_noise_factor: what this frame says about the camera
    (cross-checks); blocks: flat background blocks used; spread: MAD/median of the per-block
    shot-noise electrons."""

    electrons_per_px: float | None
    method: str | None
    verified: bool
    electrons_per_px_from_gain: float | None
    electrons_per_px_shot_noise: float | None
    dose_e_per_A2: float | None
    implied_gain_counts_per_e: float | None
    implied_noise_factor: float | None
    mean_counts: float
    variance_hp_counts2: float
    blocks: int
    spread: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def background_stats(blocks: FrameBlocks, *, block: int | None = None, max_blocks: int = BACKGROUND_BLOCKS,
                     min_blocks: int = 6) -> BlockStats:
    """The frame's background block statistics for a dose: ``block`` px (default 32, 16 under
    512 px) away from the mask, or every block when fewer than ``min_blocks`` are clear."""
    if block is None:
        block = 32 if min(blocks.frame.shape) >= 512 else 16
    lags = min(3, block // 4 - 1)
    stats = blocks.stats(block=block, max_blocks=max_blocks, nps_lags=lags)
    if len(stats) < min_blocks and blocks.mask is not None:
        stats = blocks.stats(block=block, max_blocks=max_blocks, nps_lags=lags, masked=False)
    return stats


def estimate_dose(frame: np.ndarray, camera: CameraSettings, pixel_size_nm: float | None = None, *,
                  mask: np.ndarray | None = None, block: int | None = None, max_blocks: int = BACKGROUND_BLOCKS,
                  min_blocks: int = 6, stats: BlockStats | None = None, blocks: FrameBlocks | None = None
                  ) -> DoseEstimate | None:
    """Dose of ``frame`` (raw counts) from its flat background blocks (equations in the module
    docstring). None with fewer than ``min_blocks`` usable blocks (with ``mask`` given and too
    little background, every block is tried). ``stats``: blocks measured already; ``blocks``:
    the frame's shared :class:`FrameBlocks` (its mask is the one used)."""
    stats = stats if stats is not None else background_stats(
        blocks if blocks is not None else FrameBlocks(frame, mask), block=block, max_blocks=max_blocks,
        min_blocks=min_blocks)
    keep = flat_blocks(stats)
    if int(keep.sum()) < min_blocks:
        if not (camera.known and len(stats) >= min_blocks):
            return None
        # texture everywhere (e.g. a high dose over amorphous support): the noise says nothing,
        # but with gain and offset known the blocks' mean still gives the dose
        keep = np.ones(len(stats), dtype=bool)
    s = stats.take(keep)
    m = float(np.median(s.mean))
    v = float(np.median(s.v_hp))
    g, o, r2, f = camera.gain_counts_per_e, camera.offset_counts, camera.read_noise_counts ** 2, camera.noise_factor
    n_gain = n_shot = spread = None
    if o is not None:
        sig = s.mean - o
        var = s.v_hp - r2
        good = (sig > 0) & (var > 0)
        if good.sum() >= min_blocks:
            per = shot_noise_electrons(sig[good], var[good], f)
            n_shot = float(np.median(per))
            spread = float(np.median(np.abs(per - n_shot)) / n_shot) if n_shot > 0 else None
        if g is not None:
            n_gain = gain_electrons(m - o, g)
    if n_gain is not None and n_gain > 0:
        n, method = n_gain, "gain"
    elif n_shot is not None:
        n, method = n_shot, "shot_noise"
    else:
        n, method = None, None
    implied_g = (m - o) / n_shot if (n_shot and o is not None and m > o) else None
    implied_f = (f * n_gain / n_shot) if (n_gain and n_shot and n_gain > 0) else None
    area = None if pixel_size_nm is None else (10.0 * float(pixel_size_nm)) ** 2
    return DoseEstimate(
        electrons_per_px=n, method=method, verified=camera.known and method == "gain",
        electrons_per_px_from_gain=n_gain, electrons_per_px_shot_noise=n_shot,
        dose_e_per_A2=None if (n is None or area is None) else n / area,
        implied_gain_counts_per_e=implied_g, implied_noise_factor=implied_f, mean_counts=m, variance_hp_counts2=v,
        blocks=int(keep.sum()), spread=spread)
