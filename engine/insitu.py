"""In situ series state: stage-drift registration + particle tracking per series (pure, stateful).

One :class:`SeriesTracking` serves every series a daemon sees: it keeps a
:class:`~fringelive.engine.registration.DriftTracker` and a
:class:`~fringelive.engine.tracking.ParticleTracker` per series (the ``max_series`` most recently
used), so several interleaved series keep their own ids and drift. Frames of one series must
arrive in order (one finisher thread does that in the daemon). Tracks reset on a new series,
a magnification, pixel-size or frame-shape change (both trackers decide that themselves); a
bundle reload does not reset them (same specimen).

Per frame it needs the raw pixels (H, W) (registration), the published mask (H, W) bool and the
pipeline's particle dicts (``label`` 1..n in raster order, ``area_px``, ``centroid_px``,
``bbox_px``): the label image for mask overlap is rebuilt from the mask with the smallest
particle area as the minimum, so it is numbered exactly like the particles. It also measures each
particle's circularity (``4π·area / perimeter²``, :func:`~fringelive.engine.timeseries.perimeter_px`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from fringelive.engine.registration import DriftTracker, Registration, RegistrationSettings
from fringelive.engine.timeseries import perimeter_px
from fringelive.engine.tracking import FrameObservation, ParticleTracker, TrackingResult, TrackingSettings, label_kept

__all__ = ["SeriesTracking", "InSituUpdate", "labels_of", "circularities"]


@dataclass(frozen=True)
class InSituUpdate:
    """One frame's registration, tracking result and per-particle circularity (aligned with the
    particles; NaN where unknown), and the label image used (None when it did not match)."""

    registration: Registration
    tracking: TrackingResult
    circularity: list[float]
    labels: np.ndarray | None


def labels_of(mask: np.ndarray, particles: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
    """Label image (H, W) int32 numbered like ``particles`` (``label`` 1..n), or None when the
    mask's components do not match them (then tracking links by distance only)."""
    if not particles:
        return np.zeros(np.shape(mask), dtype=np.int32)
    min_area = min(int(p["area_px"]) for p in particles)
    labels = label_kept(np.asarray(mask, dtype=bool), min_area_px=min_area)
    if int(labels.max()) != len(particles):
        return None
    return labels


def circularities(labels: np.ndarray | None, particles: Sequence[Mapping[str, Any]]) -> list[float]:
    """``4π·area / perimeter²`` in [0, 1] per particle (NaN without a label image)."""
    out = []
    for p in particles:
        a = float(p["area_px"])
        if labels is None or a <= 0 or "bbox_px" not in p:
            out.append(math.nan)
            continue
        per = perimeter_px(labels, int(p["label"]), p["bbox_px"])
        out.append(min(1.0, 4.0 * math.pi * a / (per * per)) if per > 0 else math.nan)
    return out


class _Series:
    def __init__(self, tracking: TrackingSettings, registration: RegistrationSettings) -> None:
        self.drift = DriftTracker(registration)
        self.tracker = ParticleTracker(tracking)


class SeriesTracking:
    """Registration and tracking of every series (see the module docstring).

    settings: the ``[tracking]`` section. registration: phase-correlation settings (engine
    defaults). max_series: series whose state is kept (least recently used dropped first).
    """

    def __init__(self, settings: TrackingSettings | None = None, registration: RegistrationSettings | None = None,
                 max_series: int = 8) -> None:
        if isinstance(max_series, bool) or not isinstance(max_series, int) or max_series < 1:
            raise ValueError(f"max_series must be an integer >= 1, got {max_series!r}")
        self.settings = settings or TrackingSettings()
        self.registration = registration or RegistrationSettings()
        self.max_series = max_series
        self._series: OrderedDict[str, _Series] = OrderedDict()

    def _state(self, series: str) -> _Series:
        st = self._series.pop(series, None)
        if st is None:
            st = _Series(self.settings, self.registration)
        self._series[series] = st
        while len(self._series) > self.max_series:
            self._series.popitem(last=False)
        return st

    def update(self, pixels: np.ndarray, mask: np.ndarray, particles: Sequence[Mapping[str, Any]], *,
               series: str, frame: int, magnification: float | None = None,
               pixel_size_nm: float | None = None, labels: np.ndarray | None = None) -> InSituUpdate:
        """Register ``pixels`` (H, W) against the series' previous frame, then track
        ``particles`` (of ``mask`` (H, W) bool) in the drift-corrected frame. ``labels`` (H, W)
        int32, numbered like ``particles`` (the pipeline's), saves labelling ``mask`` again."""
        st = self._state(series)
        reg = st.drift.update(pixels, series=series, magnification=magnification, pixel_size_nm=pixel_size_nm)
        if labels is None or labels.shape != np.shape(mask):
            labels = labels_of(mask, particles)
        trk = st.tracker.update(FrameObservation(series, int(frame), particles, labels, pixel_size_nm,
                                                 reg.cumulative_px, magnification))
        return InSituUpdate(reg, trk, circularities(labels, particles), labels)
