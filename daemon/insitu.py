"""The daemon's in situ stage (finisher thread only): stage-drift registration and particle
tracking per series (:class:`fringelive.engine.insitu.SeriesTracking`) written into the result
header, and their Prometheus metrics on the injected registry.

Header keys added (``docs/protocol.md``): ``registration`` {shift_px [dy, dx], cumulative_px,
confidence, peak_height, status, reset, bin}, ``particles[i].track_id``,
``particles[i].circularity``, ``events`` (appeared, disappeared, merged, split, reset),
``tracks_active``, ``timings_ms.registration`` / ``timings_ms.tracking``.

Metrics (no series label: unbounded cardinality):

====================================================  =========  ==========================================
``fringelive_registration_frames_total{status}``      counter    reference, ok, bridged, disabled
``fringelive_registration_shift_px{axis}``            gauge      last per-frame stage shift, y / x (px)
``fringelive_registration_cumulative_px{axis}``       gauge      cumulative drift of the last frame (px)
``fringelive_registration_confidence``                gauge      last registration confidence (0..1)
``fringelive_track_events_total{type}``               counter    appeared, disappeared, merged, split, reset
``fringelive_tracks_active``                          gauge      live tracks of the last frame's series
====================================================  =========  ==========================================
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from fringelive.daemon.results import plain
from fringelive.engine.insitu import InSituUpdate, SeriesTracking
from fringelive.engine.tracking import TrackingSettings

__all__ = ["TrackingStage", "TrackingMetrics", "REGISTRATION_STATUSES", "EVENT_TYPES"]

REGISTRATION_STATUSES = ("reference", "ok", "bridged", "disabled")
EVENT_TYPES = ("appeared", "disappeared", "merged", "split", "reset")


class TrackingMetrics:
    """Registration and tracking collectors on ``registry`` (pre-created at 0)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.frames = Counter("fringelive_registration_frames", "Frames registered, by registration status.",
                              ["status"], registry=r)
        self.shift = Gauge("fringelive_registration_shift_px", "Last per-frame stage shift (px), by axis.",
                           ["axis"], registry=r)
        self.cumulative = Gauge("fringelive_registration_cumulative_px",
                                "Cumulative stage drift of the last frame's series (px), by axis.", ["axis"], registry=r)
        self.confidence = Gauge("fringelive_registration_confidence", "Last registration confidence (0..1).",
                                registry=r)
        self.events = Counter("fringelive_track_events", "Tracking events, by type.", ["type"], registry=r)
        self.active = Gauge("fringelive_tracks_active", "Live tracks of the last frame's series.", registry=r)
        for s in REGISTRATION_STATUSES:
            self.frames.labels(status=s)
        for t in EVENT_TYPES:
            self.events.labels(type=t)
        for axis in ("y", "x"):
            self.shift.labels(axis=axis)
            self.cumulative.labels(axis=axis)

    def observe(self, registration: Mapping[str, Any], events: list[Mapping[str, Any]], active: int) -> None:
        self.frames.labels(status=str(registration.get("status"))).inc()
        for axis, dy in zip(("y", "x"), registration.get("shift_px") or (0.0, 0.0)):
            self.shift.labels(axis=axis).set(float(dy))
        for axis, c in zip(("y", "x"), registration.get("cumulative_px") or (0.0, 0.0)):
            self.cumulative.labels(axis=axis).set(float(c))
        conf = registration.get("confidence")
        if conf is not None:
            self.confidence.set(float(conf))
        for e in events:
            self.events.labels(type=str(e.get("type", "unknown"))).inc()
        self.active.set(active)


class TrackingStage:
    """Registration + tracking for the finisher: :meth:`apply` adds the header keys in place.

    settings: the ``[tracking]`` section (``enabled`` false: :meth:`apply` does nothing).
    registry: the daemon's Prometheus registry.
    """

    def __init__(self, settings: TrackingSettings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.series = SeriesTracking(settings)
        self.metrics = TrackingMetrics(registry)

    def apply(self, header: dict[str, Any], pixels: np.ndarray, mask: np.ndarray,
              labels: np.ndarray | None = None) -> InSituUpdate | None:
        """Register and track the frame of result ``header`` (its ``series``, ``frame``,
        ``particles`` and ``meta``); ``pixels`` (H, W) raw, ``mask`` (H, W) bool as published,
        ``labels`` (H, W) int32 the pipeline's particle labels (None: labelled here)."""
        if not self.settings.enabled:
            return None
        meta = header.get("meta") or {}
        t0 = time.perf_counter()
        particles = header["particles"]
        up = self.series.update(pixels, mask, particles, series=str(header["series"]), frame=int(header["frame"]),
                                magnification=_number(meta.get("magnification")),
                                pixel_size_nm=_number(meta.get("pixel_size_nm")), labels=labels)
        for p, tid, circ in zip(particles, up.tracking.track_ids, up.circularity):
            p["track_id"] = int(tid)
            p["circularity"] = None if math.isnan(circ) else round(float(circ), 4)
        reg = up.registration.to_header()
        header["registration"] = reg
        header["events"] = plain(up.tracking.events)
        header["tracks_active"] = int(up.tracking.active)
        header.setdefault("timings_ms", {})["tracking"] = (time.perf_counter() - t0) * 1e3
        self.metrics.observe(reg, up.tracking.events, up.tracking.active)
        return up


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


