"""Prometheus gauges of the daemon's camera (issue #12; ``docs/drift.md`` § Prometheus)::

    fringelive_camera_gain_counts_per_e{source}   gauge  gain in force on the last frame (source: header|config|learned|card|default)
    fringelive_camera_offset_counts{source}       gauge  offset in force on the last frame
    fringelive_camera_fit_gain_counts_per_e       gauge  learned gain (NaN before a fit)
    fringelive_camera_fit_gain_se                 gauge  its 1-sigma uncertainty, counts/e
    fringelive_camera_fit_offset_counts           gauge  learned offset
    fringelive_camera_fit_offset_se_counts        gauge  its 1-sigma uncertainty, counts
    fringelive_camera_fit_confident               gauge  1 once the learned fit is confident, else 0
    fringelive_camera_fit_levels                  gauge  dose levels seen by the fit
    fringelive_camera_fit_frames                  gauge  frames in the fit (frame pairs when fitted on pairs)
    fringelive_camera_fit_temporal                gauge  1 when the fit in force is from frame pairs, 0 single frames
    fringelive_camera_config_disagrees{constant}  gauge  1 when the configured constant disagrees with the confident
                                                         fit, 0 when it agrees, NaN without a confident fit
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from prometheus_client import CollectorRegistry, Gauge

__all__ = ["CameraMetrics"]


class CameraMetrics:
    """The camera gauges on ``registry``; :meth:`observe` takes a result header's ``drift.camera``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.gain = Gauge("fringelive_camera_gain_counts_per_e", "Camera gain in force on the last frame (counts/e), "
                          "by source.", ["source"], registry=r)
        self.offset = Gauge("fringelive_camera_offset_counts", "Camera offset in force on the last frame (counts), "
                            "by source.", ["source"], registry=r)
        self.fit_gain = Gauge("fringelive_camera_fit_gain_counts_per_e", "Gain learned from the stream (counts/e).",
                              registry=r)
        self.fit_gain_se = Gauge("fringelive_camera_fit_gain_se", "1-sigma uncertainty of the learned gain (counts/e).",
                                 registry=r)
        self.fit_offset = Gauge("fringelive_camera_fit_offset_counts", "Offset learned from the stream (counts).",
                                registry=r)
        self.fit_offset_se = Gauge("fringelive_camera_fit_offset_se_counts",
                                   "1-sigma uncertainty of the learned offset (counts).", registry=r)
        self.fit_confident = Gauge("fringelive_camera_fit_confident", "1 once the learned camera fit is confident.",
                                   registry=r)
        self.fit_levels = Gauge("fringelive_camera_fit_levels", "Dose levels seen by the camera fit.", registry=r)
        self.fit_frames = Gauge("fringelive_camera_fit_frames", "Frames (or frame pairs) in the camera fit.",
                                registry=r)
        self.fit_temporal = Gauge("fringelive_camera_fit_temporal", "1 when the camera fit is from frame pairs of "
                                  "one scene and dose (temporal), 0 from single frames.", registry=r)
        self.disagrees = Gauge("fringelive_camera_config_disagrees", "1 when the configured camera constant disagrees "
                               "with the confident learned fit beyond its tolerance, 0 agrees, NaN no confident fit.",
                               ["constant"], registry=r)
        for g in (self.fit_gain, self.fit_gain_se, self.fit_offset, self.fit_offset_se):
            g.set(math.nan)
        for key in ("gain_counts_per_e", "offset_counts"):
            self.disagrees.labels(constant=key).set(math.nan)
        self._sources: dict[str, str] = {}

    def observe(self, camera: Mapping[str, Any] | None) -> None:
        if not isinstance(camera, Mapping):
            return
        sources = camera.get("sources") or {}
        for gauge, key in ((self.gain, "gain_counts_per_e"), (self.offset, "offset_counts")):
            src = str(sources.get(key, "default"))
            old = self._sources.get(key)
            if old is not None and old != src:
                gauge.remove(old)
            self._sources[key] = src
            v = camera.get(key)
            gauge.labels(source=src).set(math.nan if v is None else float(v))
        fit = camera.get("learned")
        if isinstance(fit, Mapping):
            for gauge, key in ((self.fit_gain, "gain_counts_per_e"), (self.fit_gain_se, "gain_se"),
                               (self.fit_offset, "offset_counts"), (self.fit_offset_se, "offset_se"),
                               (self.fit_levels, "levels"), (self.fit_frames, "frames")):
                v = fit.get(key)
                if v is not None:
                    gauge.set(float(v))
            self.fit_confident.set(1.0 if fit.get("confident") else 0.0)
            self.fit_temporal.set(1.0 if fit.get("method") == "temporal" else 0.0)
        bad = camera.get("config_disagrees")
        for key in ("gain_counts_per_e", "offset_counts"):
            v = bad.get(key) if isinstance(bad, Mapping) else None
            self.disagrees.labels(constant=key).set(math.nan if v is None else float(bool(v)))
