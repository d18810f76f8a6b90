"""Offline camera calibration from dark and flat frames: :func:`calibrate_camera`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .blocks import BlockStats, block_statistics, flat_blocks
from .settings import CameraSettings
from .transfer import PhotonTransferFit, PhotonTransferResult, _count_levels

__all__ = ["CameraCalibrationError", "CameraCalibration", "calibrate_camera"]

class CameraCalibrationError(ValueError):
    """The data cannot determine the camera; the message says what to acquire."""


@dataclass(frozen=True)
class CameraCalibration:
    """Result of :func:`calibrate_camera`: ``camera`` (the ``[camera]`` values), ``fit``, the
    dark level and read noise measured, and per illumination level its ``residuals``:
    ``{level, frames, mean_counts, v_lf, v_lf_predicted, residual_rel}``."""

    camera: CameraSettings
    fit: PhotonTransferResult
    dark_offset_counts: float | None
    dark_read_noise_counts: float | None
    residuals: tuple[dict[str, float], ...] = field(default_factory=tuple)

    def to_toml(self) -> str:
        """The ``[camera]`` section to paste into the daemon config (with the fit as comments)."""
        c, f = self.camera, self.fit
        lines = ["[camera]"]
        if c.name:
            lines.append(f'name = "{c.name}"')
        lines += [f"gain_counts_per_e = {c.gain_counts_per_e:.5g}    # ± {f.gain_se:.2g} (1σ)",
                  f"offset_counts = {c.offset_counts:.5g}    # ± {f.offset_se:.2g} (1σ), from {f.offset_method}",
                  f"read_noise_counts = {c.read_noise_counts:.4g}",
                  f"noise_factor = {c.noise_factor:.4g}    # ± {f.noise_factor_se:.2g} (1σ)"]
        for r in self.residuals:
            lines.append(f"# level {r['level']}: mean {r['mean_counts']:.6g} counts, v_lf {r['v_lf']:.5g} vs "
                         f"{r['v_lf_predicted']:.5g} predicted ({r['residual_rel']:+.1%})")
        return "\n".join(lines) + "\n"


def _as_frames(frames: Iterable[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    arr = frames if isinstance(frames, list) else list(frames)
    out = []
    for a in arr:
        a = np.asarray(a)
        out.extend(list(a) if a.ndim == 3 else [a])
    return out


def calibrate_camera(dark_frames: Sequence[np.ndarray] | np.ndarray | None,
                     flat_frames_by_level: (Mapping[Any, Sequence[np.ndarray] | np.ndarray]
                                            | Sequence[Sequence[np.ndarray]]),
                     *, read_noise_counts: float | None = None, noise_factor: float | None = None, name: str = "",
                     block: int = 32, min_levels: int = 2, min_span: float = 0.3, max_gain_rse: float = 0.03
                     ) -> CameraCalibration:
    """Camera constants from dark frames and flat (specimen-free, or any static scene) frames at
    several illuminations: ``flat_frames_by_level`` maps a label (e.g. the screen current) to
    that level's frames (a list or an (N, H, W) stack). Two or more frames per level are used in
    pairs (temporal variance: no scene, illumination or fixed-pattern noise left); a single
    frame per level falls back to spatial statistics of its flat blocks.

    Raises :class:`CameraCalibrationError`, saying what to acquire, when: no dark frames and no
    ``read_noise_counts`` (offset and read noise are then inseparable); fewer than
    ``min_levels`` distinct illumination levels, or levels spanning less than ``min_span``; a
    gain uncertainty above ``max_gain_rse``.
    """
    darks = _as_frames(dark_frames) if dark_frames is not None else []
    if isinstance(flat_frames_by_level, Mapping):
        levels = [(str(k), _as_frames(v)) for k, v in flat_frames_by_level.items()]
    else:
        levels = [(str(i), _as_frames(v)) for i, v in enumerate(flat_frames_by_level)]
    levels = [(k, v) for k, v in levels if v]
    if not darks and read_noise_counts is None:
        raise CameraCalibrationError(
            "no dark frames: offset and read noise cannot be separated (the photon-transfer line gives only "
            "r² − gain·offset). Acquire >= 2 dark frames (beam blanked, same exposure and readout mode), or give "
            "read_noise_counts (--read-noise) from the camera's data sheet.")
    if len(levels) < min_levels:
        raise CameraCalibrationError(
            f"{len(levels)} illumination level(s): the gain needs the noise at >= {min_levels} levels. Acquire flat "
            "frames (no specimen, or a static area) at >= 3 illuminations spanning at least a factor 2 in counts "
            "(change the spot size/condenser or the exposure), >= 2 frames per level, below saturation.")
    fit = PhotonTransferFit(block=block, max_blocks_per_frame=4096, max_pairs=200_000, min_levels=min_levels,
                            min_span=min_span, max_gain_rse=max_gain_rse, min_frames=2, noise_factor=noise_factor,
                            read_noise_counts=read_noise_counts)
    dark_off = dark_r = None
    if darks:
        if len(darks) >= 2:
            st = [block_statistics(a, block=block, max_blocks=4096, pair=b) for a, b in zip(darks[0::2], darks[1::2])]
        else:
            st = [block_statistics(darks[0], block=block, max_blocks=4096)]
        mean = float(np.mean(np.concatenate([s.mean for s in st])))
        v = float(np.median(np.concatenate([s.v_lf for s in st])))
        fit.set_dark(mean, v, len(darks))
        dark_off, dark_r = mean, math.sqrt(max(v, 0.0))
    per_level: list[tuple[str, int, BlockStats]] = []
    for label, frames in levels:
        if len(frames) >= 2:
            stats = [block_statistics(a, block=block, max_blocks=4096, pair=b)
                     for a, b in zip(frames[0::2], frames[1::2])]
        else:
            stats = [block_statistics(frames[0], block=block, max_blocks=4096)]
        for s in stats:
            # temporal pairs carry no scene: only the per-block checks, no neighbourhood rules
            keep = flat_blocks(s, mean_z_max=None, margin=False) if len(frames) >= 2 else flat_blocks(s)
            s = s.take(keep)
            if fit.add_block_stats(s, independent_blocks=len(frames) >= 2):
                per_level.append((label, len(frames), s))
    if len(fit.points()[0]) < 20 or fit.frames < 2:
        raise CameraCalibrationError("no usable flat blocks: acquire flat frames (no specimen) of at least 64² px "
                                     "below saturation")
    ref = dark_off if dark_off is not None else min(fit.frame_medians()) - 1.0
    fit.min_level_frames = 1  # the levels are labelled: one pair per level is a level
    pre_levels = _count_levels(np.asarray(fit.frame_medians()) - ref, min_members=1)
    res = fit.result() if pre_levels >= min_levels else None
    if res is None:
        res_levels, res_span = pre_levels, 0.0
    else:
        res_levels, res_span = res.levels, res.span
    if res is None or res_levels < min_levels or res_span < min_span:
        res_levels = min(res_levels, pre_levels)
        raise CameraCalibrationError(
            f"the frames show {res_levels} distinct illumination level(s) spanning {res_span:.0%} of the signal: "
            f"need >= {min_levels} spanning >= {min_span:.0%}. Acquire flat frames at >= 3 clearly different "
            "illuminations (e.g. 25 %, 50 %, 100 % of the working dose rate).")
    if not res.gain_se < max_gain_rse * res.gain_counts_per_e:
        raise CameraCalibrationError(
            f"gain uncertainty {res.gain_se / res.gain_counts_per_e:.1%} > {max_gain_rse:.0%}: acquire more frames "
            "per level (>= 10) or larger frames")
    res = replace(res, confident=True, reasons=())
    residuals = []
    for label in dict.fromkeys(lbl for lbl, _, _ in per_level):
        blocks = [s for lbl, _, s in per_level if lbl == label]
        m = float(np.mean(np.concatenate([s.mean for s in blocks])))
        v = float(np.mean(np.concatenate([s.v_lf for s in blocks])))
        pred = res.slope_lf * m + res.intercept_lf
        residuals.append({"level": label, "frames": sum(n for lbl, n, _ in per_level if lbl == label) // len(blocks),
                          "mean_counts": m, "v_lf": v, "v_lf_predicted": pred, "residual_rel": v / pred - 1.0})
    return CameraCalibration(camera=res.camera(name), fit=res, dark_offset_counts=dark_off,
                             dark_read_noise_counts=dark_r, residuals=tuple(residuals))
