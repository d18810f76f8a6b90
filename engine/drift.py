"""Drift checks of one frame and of the stream: envelope, image estimates, confidence, CUSUM.

Per frame (:func:`measure_frame`, pure):

* the metadata's conditions (``envelope.conditions_from_meta``),
* image estimates that do not trust the metadata (``image_estimates``): dose from shot noise
  on background blocks, pixel size from the lattice fringes of the largest particles,
* model-confidence signals (``confidence``): predictive entropy on foreground and boundary
  pixels, mean pairwise Dice between ensemble members.

Then :func:`evaluate` compares them with the card's envelope (``envelope.check_envelope``) and
flags metadata that disagrees with the image (``pixel_size_metadata_mismatch``,
``dose_metadata_mismatch``; the image's value is then the one checked against the envelope).

Over the stream, :class:`DriftMonitor` (one per bundle in the daemon, reset on reload)
standardizes the signals with the card's ``drift_reference`` and runs the CUSUM alarm
(``cusum``). Its :meth:`DriftMonitor.assess` returns the result header's ``drift`` map::

    {"status": "ok"|"warn"|"ood"|"unknown", "reasons": [...], "signals": {name: value},
     "p_values": {name: p}, "estimates": {...}, "conditions": {...},
     "cusum": {"statistics": {...}, "h": h, "k": k, "alarm_signals": [...]}, "alarm": bool,
     "calibrated": bool}

Everything here is arrays + card → numbers: no sockets, no threads.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import replace
from typing import Any, Mapping

import numpy as np

from fringelive.bundle.card import Card
from fringelive.engine import envelope
from fringelive.engine.camera import (CameraSettings, FrameBlocks, PhotonTransferResult, background_stats,
                                      config_disagreement, resolve_camera)
from fringelive.engine.camera import estimate_dose as camera_dose
from fringelive.engine.cusum import CusumState, calibrate_threshold
from fringelive.engine.drift_measure import disagree, dose_tolerance, evaluate, measure_frame
from fringelive.engine.drift_reference import (DriftReference, SCALE_FLOORS, SIGNAL_DIRECTIONS,
                                               parse_drift_reference, tail_p_value)
from fringelive.engine.drift_result import DriftResult
from fringelive.engine.frame import FrameMetadata
from fringelive.engine.drift_settings import DriftSettings

__all__ = ["DriftMonitor", "card_camera", "signal_directions"]


def card_camera(reference: DriftReference) -> CameraSettings | None:
    """The camera the card's drift reference was calibrated with (``calibration_camera``; a
    schema-1 reference's top-level constants), as the last-resort fallback of
    :func:`fringelive.engine.camera.resolve_camera`; None when the reference states none."""
    cam = reference.camera
    if cam is None:
        return None
    return CameraSettings(name="card", gain_counts_per_e=cam.gain_counts_per_e, offset_counts=cam.offset_counts,
                          read_noise_counts=cam.read_noise_counts, noise_factor=min(cam.noise_factor, 1.5))


_log = logging.getLogger(__name__)
_CAMERA_FIELDS = ("gain_counts_per_e", "offset_counts")
#: The card's gain is contradicted when the zero-frequency implied gain differs by more than this (relative).
_CARD_LF_BAND = 2.5


def _finite(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


class DriftMonitor:
    """Drift of one bundle's stream: the card's envelope and reference, the settings, and the
    CUSUM state (frames in the order they were assessed). Not thread-safe: one thread assesses."""

    def __init__(self, card: Card, settings: DriftSettings | None = None) -> None:
        self.card = card
        self.settings = settings or DriftSettings()
        self.reference = parse_drift_reference(card.drift_reference)
        ref = self.reference
        self.card_camera = card_camera(ref)
        self.card_camera_contradicted = False
        self._card_checks: deque[bool] = deque(maxlen=20)
        self._card_used_logged = False
        if self.card_camera is not None and self.card_camera.gain_counts_per_e is not None:
            _log.info("bundle %s: camera constants from its drift_reference (gain %.3g counts/e, offset %.3g) are used "
                      "only where [camera], the frame header and the learned fit say nothing; set [camera] for this "
                      "microscope", card.name, self.card_camera.gain_counts_per_e, self.card_camera.offset_counts or 0.0)
        self.directions = {name: s.direction for name, s in ref.signals.items()}
        self.cusum: CusumState | None = None
        self.cusum_record: dict[str, Any] = {}
        if ref.cusum is not None and self.directions:
            k = self.settings.cusum_k if self.settings.cusum_k is not None else ref.cusum.k
            h = ref.cusum.h
            record: dict[str, Any] = {"source": "card", "target_arl": ref.cusum.target_arl}
            target = self.settings.target_arl
            resimulate = (target is not None and target != ref.cusum.target_arl) or k != ref.cusum.k
            if resimulate:
                h, record = self._resimulate(k, target or ref.cusum.target_arl or 10_000)
            self.cusum = CusumState(self.directions, k=k, h=h)
            self.cusum_record = record

    def _resimulate(self, k: float, target: float) -> tuple[float, dict[str, Any]]:
        names = list(self.directions)
        refs = [self.reference.signals[n] for n in names]
        n = max(len(r.values) for r in refs)
        if n < 2 or any(r.values and len(r.values) != n for r in refs):
            raise ValueError(f"drift_reference: cannot re-calibrate the CUSUM for target_arl {target:g}: the card "
                             "holds no reference values (run fringelive calibrate)")
        z = np.full((n, len(names)), np.nan)
        for j, r in enumerate(refs):
            if r.values:
                z[:, j] = [(v - r.centre) / r.scale for v in r.values]

        floors = [SCALE_FLOORS.get(x, 0.0) / r.scale for x, r in zip(names, refs)]
        result = calibrate_threshold(z, [self.directions[x] for x in names], k=k, target_arl=target, scale_floors=floors)
        return result.h, {"source": "config", **result.to_dict()}

    def reset(self) -> None:
        if self.cusum is not None:
            self.cusum.reset()

    def _frame_camera(self, pixels: np.ndarray, blocks: FrameBlocks, meta: FrameMetadata,
                      config: CameraSettings | None, learned: PhotonTransferResult | None
                      ) -> tuple[CameraSettings, dict[str, str]]:
        """Resolve the frame's camera; the card's constants only while the frames agree with
        them (the frame's implied gain within the dose tolerance of the card's)."""
        card = None if self.card_camera_contradicted else self.card_camera
        cam, sources = resolve_camera(config, meta, card, learned)
        if not any(sources[f] == "card" for f in _CAMERA_FIELDS) or not self.settings.image_estimates:
            return cam, sources
        contradicts, implied = self._contradicts(pixels, blocks, cam)
        if contradicts is not None:
            self._card_checks.append(contradicts)
            if len(self._card_checks) >= 3 and 2 * sum(self._card_checks) > len(self._card_checks):
                self.card_camera_contradicted = True
                _log.warning("camera constants of bundle %s contradicted by the frames: implied gain %.3g vs %.3g "
                             "counts/e; dose unverified until [camera] is set or the fit is confident",
                             self.card.name, implied or math.nan, cam.gain_counts_per_e or math.nan)
        if self.card_camera_contradicted or contradicts:
            drop = {f: (None if f in _CAMERA_FIELDS and sources[f] == "card" else getattr(cam, f)) for f in _CAMERA_FIELDS}
            sources = {f: ("default" if f in _CAMERA_FIELDS and sources[f] == "card" else s) for f, s in sources.items()}
            return replace(cam, **drop), sources
        if not self._card_used_logged:
            self._card_used_logged = True
            _log.warning("bundle %s: dose checked with the camera constants of its drift_reference; set [camera]",
                         self.card.name)
        return cam, sources

    def _contradicts(self, pixels: np.ndarray, blocks: FrameBlocks, cam: CameraSettings
                     ) -> tuple[bool | None, float | None]:
        """Does this frame contradict ``cam``'s gain and offset? Two implied gains of the flat
        background blocks: from the high-pass variance (``(v_hp − r²)/(f·(m − o))``, within the
        dose tolerance) and from the zero-frequency noise power (``(v_lf − r²)/(m − o)``, which a
        detector MTF does not hide; within a factor 3.5). None: too little background to tell
        (the card is then used)."""
        g, o, r2 = cam.gain_counts_per_e, cam.offset_counts, cam.read_noise_counts ** 2
        if g is None or o is None:
            return None, None
        # the dose estimate's blocks (shared): with (almost) no background, every block
        stats = background_stats(blocks, max_blocks=self.settings.max_background_blocks)
        est = camera_dose(pixels, cam, None, stats=stats)
        implied = None if est is None else est.implied_gain_counts_per_e
        if implied is None:
            return None, None
        # every block: support texture inflates v_lf (up to ~4× the shot noise at 2000 e/Å²), a
        # wrong gain by more; hence the wide band
        sig = stats.mean - o
        good = sig > 0
        lf_gain = float(np.median((stats.v_lf[good] - r2) / sig[good])) if good.sum() >= 6 else None
        bad = disagree(implied, g, dose_tolerance(self.card, self.settings))
        if lf_gain is not None and lf_gain > 0 and disagree(lf_gain, g, _CARD_LF_BAND):
            bad, implied = True, lf_gain
        return bad, implied

    def assess(self, pixels: np.ndarray, meta: FrameMetadata | Mapping[str, Any] | None, result: Any, *,
               threshold: float = 0.5, camera: CameraSettings | None = None, learned: PhotonTransferResult | None = None,
               blocks: FrameBlocks | None = None) -> DriftResult:
        """The drift assessment of one frame (the result header's ``drift`` map is its
        :meth:`~fringelive.engine.drift_result.DriftResult.to_dict`); updates the CUSUM. ``result``: a
        :class:`fringelive.engine.pipeline.PipelineResult`. camera: the daemon's ``[camera]``
        (None = nothing configured); learned: the daemon's photon-transfer fit (used when
        confident); blocks: the frame's background block statistics, shared with the camera
        learner (None: computed here). Precedence: header > ``[camera]`` > learned > the card's
        constants."""
        if not self.settings.enabled:
            return DriftResult.unknown("drift_disabled")
        meta = FrameMetadata.of(meta)
        blocks = blocks if blocks is not None else FrameBlocks(pixels, result.mask)
        cam, sources = self._frame_camera(pixels, blocks, meta, camera, learned)
        m = measure_frame(pixels, meta, probabilities=result.probabilities, mask=result.mask,
                          member_masks=result.member_masks, particles=result.particles, card=self.card,
                          reference=self.reference, settings=self.settings, threshold=threshold, camera=cam,
                          signal_from_card=sources.get("gain_counts_per_e") == "card", blocks=blocks)
        status, reasons, _ = evaluate(m, self.card, self.settings)
        signals = {k: _finite(v) for k, v in m.signals.items()}
        z: dict[str, float | None] = {}
        p_values: dict[str, float] = {}
        for name, ref in self.reference.signals.items():
            v = signals.get(name)
            if v is None:
                z[name] = None
                continue
            z[name] = ref.z(v)
            p_values[name] = tail_p_value(z[name], ref.direction)  # type: ignore[arg-type]
        cusum: dict[str, Any] = {}
        alarm = False
        if self.cusum is not None:
            snap = self.cusum.update(z)
            alarm = snap["alarm"]
            cusum = {"statistics": snap["statistics"], "h": self.cusum.h, "k": self.cusum.k,
                     "alarm_signals": snap["alarm_signals"], "frames": self.cusum.frames}
            if alarm:
                reasons.append("stream_alarm")
                status = envelope.worst_status([status, "warn"])
        c = m.conditions
        return DriftResult(
            status=status,
            reasons=tuple(reasons),
            signals=signals,
            p_values=p_values,
            estimates=dict(m.estimates),
            conditions={"pixel_size_nm": c.pixel_size_nm, "dose_e_per_A2": c.dose_e_per_A2,
                        "voltage_kv": c.voltage_kv, "material": c.material},
            cusum=cusum,
            alarm=alarm,
            calibrated=self.reference.calibrated,
            camera={"gain_counts_per_e": cam.gain_counts_per_e, "offset_counts": cam.offset_counts,
                    "read_noise_counts": cam.read_noise_counts, "noise_factor": cam.noise_factor,
                    "sources": sources, "learned": _learned_summary(learned),
                    "config_disagrees": None if camera is None else config_disagreement(
                        camera.gain_counts_per_e, camera.offset_counts, learned)},
        )

    def describe(self) -> dict[str, Any]:
        """For control ``status``: calibration state and CUSUM parameters."""
        ref = self.reference
        return {
            "calibrated": ref.calibrated,
            "signals": sorted(ref.signals),
            "reference_schema": ref.schema,
            "calibration_camera": None if ref.camera is None else ref.camera.to_dict(),
            "camera_gain_counts_per_e": ref.measurement_camera.gain_counts_per_e,
            "dose_noise_factor": ref.measurement_camera.noise_factor,
            "card_camera": None if self.card_camera is None else self.card_camera.to_dict(),
            "card_camera_contradicted": self.card_camera_contradicted,
            "cusum": None if self.cusum is None else {"k": self.cusum.k, "h": self.cusum.h, "frames": self.cusum.frames,
                                                      **{k: v for k, v in self.cusum_record.items() if k != "channels"}},
        }


def _learned_summary(learned: PhotonTransferResult | None) -> dict[str, Any] | None:
    """The learned fit in every result header (the full fit is in control ``status``)."""
    if learned is None:
        return None
    d = learned.to_dict()
    return {k: d[k] for k in ("gain_counts_per_e", "gain_se", "offset_counts", "offset_se", "offset_method", "levels",
                              "frames", "confident", "method")}


def signal_directions() -> dict[str, str]:
    """Every signal the monitor can standardize and its alarm direction."""
    return dict(SIGNAL_DIRECTIONS)
