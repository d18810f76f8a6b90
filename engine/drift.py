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
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from fringelive.bundle.card import Card, Tolerances
from fringelive.engine import confidence, envelope, image_estimates
from fringelive.engine.camera import CameraSettings, PhotonTransferResult, block_statistics, resolve_camera
from fringelive.engine.camera import estimate_dose as camera_dose
from fringelive.engine.cusum import CusumState, calibrate_threshold
from fringelive.engine.drift_reference import (DriftReference, SCALE_FLOORS, SIGNAL_DIRECTIONS,
                                               parse_drift_reference, tail_p_value)
from fringelive.engine.drift_result import DriftResult
from fringelive.engine.materials import reflection_spacings_for, spacings_for

__all__ = [
    "DriftResult",
    "DriftSettings",
    "FrameMeasurement",
    "camera_of",
    "card_camera",
    "measure_frame",
    "evaluate",
    "DriftMonitor",
]


@dataclass(frozen=True)
class DriftSettings:
    """How drift is checked (the daemon's ``[drift]`` config section).

    enabled: compute drift at all (else the header says ``unknown``, reason ``drift_disabled``).
    image_estimates: estimate dose and pixel size from the image. member_agreement: mean
    pairwise Dice between members (needs a bundle with several members, all run).
    tolerances: overrides of the card's envelope tolerances. pixel_size_mismatch_rel /
    dose_mismatch_rel: how far (relative) metadata and image may disagree (None: the envelope
    tolerances). target_arl / cusum_k: override the card's CUSUM calibration (frames between
    false alarms; allowance in standard deviations); with a new target the threshold is
    re-simulated from the reference values at load. fringe_windows: particle windows for the
    pixel-size estimate; min_fringe_snr: peak significance (robust sigmas);
    max_background_blocks: blocks for the dose estimate; pixel_size_search: the pixel-size
    search band reaches this factor beyond the envelope and the metadata.
    """

    enabled: bool = True
    image_estimates: bool = True
    member_agreement: bool = True
    tolerances: envelope.ToleranceOverrides = field(default_factory=envelope.ToleranceOverrides)
    pixel_size_mismatch_rel: float | None = None
    dose_mismatch_rel: float | None = None
    target_arl: float | None = None
    cusum_k: float | None = None
    fringe_windows: int = 6
    min_fringe_snr: float = 6.0
    max_background_blocks: int = 400
    pixel_size_search: float = 2.5

    def __post_init__(self) -> None:
        for name in ("pixel_size_mismatch_rel", "dose_mismatch_rel", "cusum_k"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be >= 0, got {v!r}")
        if self.target_arl is not None and not (math.isfinite(self.target_arl) and self.target_arl >= 10):
            raise ValueError(f"target_arl must be >= 10 frames, got {self.target_arl!r}")
        if isinstance(self.fringe_windows, bool) or not isinstance(self.fringe_windows, int) or self.fringe_windows < 1:
            raise ValueError(f"fringe_windows must be a positive integer, got {self.fringe_windows!r}")
        if not self.min_fringe_snr > 0:
            raise ValueError(f"min_fringe_snr must be > 0, got {self.min_fringe_snr!r}")
        if self.max_background_blocks < 6:
            raise ValueError(f"max_background_blocks must be >= 6, got {self.max_background_blocks!r}")
        if not self.pixel_size_search > 1:
            raise ValueError(f"pixel_size_search must be > 1, got {self.pixel_size_search!r}")

    def settings(self) -> "DriftSettings":
        """These settings (the daemon config's ``[drift]`` section is a :class:`DriftSettings`)."""
        return self


def camera_of(reference: DriftReference) -> image_estimates.CameraCalibration:
    return image_estimates.CameraCalibration(
        gain_counts_per_e=reference.camera_gain_counts_per_e, offset_counts=reference.camera_offset_counts,
        read_noise_counts=reference.read_noise_counts, noise_factor=reference.dose_noise_factor)


def card_camera(reference: DriftReference) -> CameraSettings | None:
    """The camera constants a (schema-1) card's ``drift_reference`` carries, as the last-resort
    fallback of :func:`fringelive.engine.camera.resolve_camera`; None when it has none."""
    if not reference.has_camera:
        return None
    return CameraSettings(name="card", gain_counts_per_e=reference.camera_gain_counts_per_e,
                          offset_counts=reference.camera_offset_counts, read_noise_counts=reference.read_noise_counts,
                          noise_factor=min(reference.dose_noise_factor, 1.5))


_log = logging.getLogger(__name__)
_CAMERA_FIELDS = ("gain_counts_per_e", "offset_counts")
#: The card's gain is contradicted when the zero-frequency implied gain differs by more than this (relative).
_CARD_LF_BAND = 2.5


@dataclass(frozen=True)
class FrameMeasurement:
    """What one frame shows, before any judgement. conditions: from the metadata; estimates:
    from the image (None where not measurable); signals: drift signals by name (None = not
    available for this frame); dose_measurement: the raw background statistics (calibration
    uses them)."""

    conditions: envelope.Conditions
    estimates: dict[str, Any]
    signals: dict[str, float | None]
    dose_measurement: image_estimates.DoseMeasurement | None = None


def _search_range(card: Card, px_meta: float | None, factor: float) -> tuple[float, float] | None:
    bounds = []
    rng = card.envelope.pixel_size_nm
    if rng is not None and rng.min > 0:
        bounds += [rng.min / factor, rng.max * factor]
    if px_meta is not None:
        bounds += [px_meta / factor, px_meta * factor]
    return (min(bounds), max(bounds)) if bounds else None


def measure_frame(pixels: np.ndarray, meta: Mapping[str, Any] | None, *, probabilities: np.ndarray,
                  mask: np.ndarray, member_masks: Sequence[np.ndarray], particles: Sequence[Mapping[str, Any]],
                  card: Card, reference: DriftReference | None = None, settings: DriftSettings | None = None,
                  threshold: float = 0.5, camera: CameraSettings | None = None,
                  signal_from_card: bool = False) -> FrameMeasurement:
    """Measure one frame: ``pixels (H, W)`` raw counts, the pipeline's ``probabilities``
    (H, W) float32, ``mask`` (H, W) bool, ``member_masks`` and ``particles``.

    camera: the frame's resolved camera (:func:`fringelive.engine.camera.resolve_camera`): the
    dose is ``(m − o)/g`` when gain and offset are known (``estimates.dose_verified``), else the
    shot-noise estimate or None, *unverified*. None: the card's constants and the raw shot-noise
    measurement (``dose_measurement``), as bundle calibration (``engine/calibration.py``) needs.
    signal_from_card: the camera is the card's (schema-1 fallback): the ``log_dose_estimate``
    signal is then the shot-noise estimate the card's reference was calibrated with."""
    settings = settings or DriftSettings()
    reference = reference or DriftReference()
    cond = envelope.conditions_from_meta(meta)
    signals: dict[str, float | None] = dict(confidence.entropy_signals(probabilities, threshold))
    if settings.member_agreement and len(member_masks) >= 2:
        signals["member_dice"] = confidence.mean_pairwise_dice(member_masks)
    estimates: dict[str, Any] = {}
    measurement = None
    if settings.image_estimates:
        # pixel size from fringes
        # The stated material's spacings and the envelope's: the fringes tell which one is there.
        materials = ((cond.material,) if cond.material else ()) + tuple(card.envelope.material)
        spacings = reflection_spacings_for(materials)
        search = _search_range(card, cond.pixel_size_nm, settings.pixel_size_search)
        px_est = None
        # A model that calls most of the frame particle is lost: its "particles" are no windows on fringes.
        if spacings and search is not None and particles and float(mask.mean()) <= 0.6:
            ranked = sorted(particles, key=lambda p: -float(p.get("area_px") or 0.0))[: settings.fringe_windows]
            radius = 0.5 * float(np.median([float(p.get("diameter_px") or 0.0) for p in ranked]))
            hint = cond.pixel_size_nm  # the metadata decides only between equally good readings
            px_est = image_estimates.estimate_pixel_size(
                pixels, image_estimates.particle_window_centres(ranked, settings.fringe_windows), spacings,
                pixel_size_range=search, particle_radius_px=radius, hint_nm=hint, windows=settings.fringe_windows,
                min_snr=settings.min_fringe_snr, primary_nm=spacings_for(materials))
        estimates["pixel_size_nm"] = None if px_est is None else float(px_est.pixel_size_nm)
        estimates["pixel_size_confidence"] = None if px_est is None else px_est.confidence
        estimates["pixel_size_snr"] = None if px_est is None else round(float(px_est.snr), 2)
        estimates["pixel_size_spacing_nm"] = None if px_est is None else px_est.spacing_nm
        # dose; the pixel size the image supports when the metadata's is absent or wrong
        px_for_dose = cond.pixel_size_nm
        if px_est is not None and (px_for_dose is None or _disagree(px_est.pixel_size_nm, px_for_dose,
                                                                    _px_tol(card, settings))):
            px_for_dose = float(px_est.pixel_size_nm)
        signal_dose = None
        if camera is not None:
            estimates.update(_camera_dose_estimates(pixels, mask, camera, px_for_dose, settings))
            signal_dose = estimates.get("dose_e_per_A2")
            if signal_from_card and estimates.get("dose_verified"):
                legacy = image_estimates.CameraCalibration(
                    gain_counts_per_e=camera.gain_counts_per_e, offset_counts=camera.offset_counts or 0.0,
                    read_noise_counts=camera.read_noise_counts, noise_factor=camera.noise_factor)
                measurement = image_estimates.measure_background_noise(pixels, mask, camera=legacy,
                                                                       max_blocks=settings.max_background_blocks)
                signal_dose = image_estimates.estimate_dose(measurement, legacy, px_for_dose)["dose_e_per_A2"]
        else:
            legacy = camera_of(reference)
            measurement = image_estimates.measure_background_noise(pixels, mask, camera=legacy,
                                                                   max_blocks=settings.max_background_blocks)
            dose = image_estimates.estimate_dose(measurement, legacy, px_for_dose)
            estimates.update({k: (None if v is None else float(v)) for k, v in dose.items()})
            estimates["background_blocks"] = 0 if measurement is None else measurement.blocks
            estimates["dose_basis"] = None if measurement is None else measurement.basis
            signal_dose = estimates.get("dose_e_per_A2")
        # an unverified dose must not drive the CUSUM into a stream alarm
        d = signal_dose
        signals["log_dose_estimate"] = math.log(d) if d and estimates.get("dose_verified", True) else None
        signals["log_pixel_size_estimate"] = (math.log(estimates["pixel_size_nm"])
                                              if estimates.get("pixel_size_nm") else None)
    return FrameMeasurement(cond, estimates, signals, measurement)


def _camera_dose_estimates(pixels: np.ndarray, mask: np.ndarray, camera: CameraSettings, px_nm: float | None,
                           settings: DriftSettings) -> dict[str, Any]:
    est = camera_dose(pixels, camera, px_nm, mask=mask, max_blocks=settings.max_background_blocks)
    if est is None:
        return {"electrons_per_px": None, "dose_e_per_A2": None, "dose_e_per_A2_from_gain": None,
                "dose_e_per_A2_shot_noise": None, "camera_gain_counts_per_e": None, "camera_noise_factor_implied": None,
                "background_blocks": 0, "dose_basis": None, "dose_method": None, "dose_verified": False}
    area = None if px_nm is None else (10.0 * float(px_nm)) ** 2

    def per_area(n: float | None) -> float | None:
        return None if n is None or area is None else float(n) / area

    return {"electrons_per_px": est.electrons_per_px, "dose_e_per_A2": est.dose_e_per_A2,
            "dose_e_per_A2_from_gain": per_area(est.electrons_per_px_from_gain),
            "dose_e_per_A2_shot_noise": per_area(est.electrons_per_px_shot_noise),
            "camera_gain_counts_per_e": est.implied_gain_counts_per_e,
            "camera_noise_factor_implied": est.implied_noise_factor,
            "background_blocks": est.blocks, "dose_basis": "background", "dose_method": est.method,
            "dose_verified": bool(est.verified)}


def _px_tol(card: Card, settings: DriftSettings) -> float:
    if settings.pixel_size_mismatch_rel is not None:
        return settings.pixel_size_mismatch_rel
    return envelope.effective_tolerances(card.envelope.tolerances, settings.tolerances).pixel_size_rel


def _dose_tol(card: Card, settings: DriftSettings) -> float:
    if settings.dose_mismatch_rel is not None:
        return settings.dose_mismatch_rel
    return envelope.effective_tolerances(card.envelope.tolerances, settings.tolerances).dose_rel


def _disagree(a: float, b: float, rel: float) -> bool:
    """``a`` and ``b`` differ by more than the factor ``1 + rel`` (either way)."""
    return abs(math.log(a / b)) > math.log1p(rel)


def evaluate(m: FrameMeasurement, card: Card, settings: DriftSettings | None = None
             ) -> tuple[str, list[str], list[envelope.Finding]]:
    """``(status, reasons, findings)`` of one measured frame against the card's envelope."""
    settings = settings or DriftSettings()
    tol: Tolerances = envelope.effective_tolerances(card.envelope.tolerances, settings.tolerances)
    c = m.conditions
    reasons: list[str] = []
    statuses: list[str] = []
    px, dose = c.pixel_size_nm, c.dose_e_per_A2
    px_src = dose_src = "metadata"
    px_img, dose_img = m.estimates.get("pixel_size_nm"), m.estimates.get("dose_e_per_A2")
    if px_img is not None:
        if px is None:
            # without metadata a lone fringe peak that several reflections fit says nothing
            if m.estimates.get("pixel_size_confidence") != "low":
                px, px_src = px_img, "image"
        elif _disagree(px_img, px, _px_tol(card, settings)):
            reasons.append("pixel_size_metadata_mismatch")
            statuses.append("warn")
            px, px_src = px_img, "image"
    if not m.estimates.get("dose_verified", True):
        # the camera is not known: the image's dose is no evidence either way (issue #12);
        # a reason of its own that adds no status (never warn/ood)
        reasons.append("dose_unverified")
        dose_img = None
    if dose_img is not None:
        if dose is None:
            dose, dose_src = dose_img, "image"
        elif _disagree(dose_img, dose, _dose_tol(card, settings)):
            reasons.append("dose_metadata_mismatch")
            statuses.append("warn")
            dose, dose_src = dose_img, "image"
    findings = envelope.check_envelope(replace(c, pixel_size_nm=px, dose_e_per_A2=dose), card.envelope, tol)
    findings = [replace(f, source={"pixel_size": px_src, "dose": dose_src}.get(f.quantity, "metadata"))
                for f in findings]
    for f in findings:
        statuses.append(f.status)
        if f.reason is not None and f.reason not in reasons:
            reasons.append(f.reason)
    return envelope.worst_status(statuses), reasons, findings


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

    def _frame_camera(self, pixels: np.ndarray, mask: np.ndarray, meta: Mapping[str, Any] | None,
                      config: CameraSettings | None, learned: PhotonTransferResult | None
                      ) -> tuple[CameraSettings, dict[str, str]]:
        """Resolve the frame's camera; the card's constants only while the frames agree with
        them (the frame's implied gain within the dose tolerance of the card's)."""
        card = None if self.card_camera_contradicted else self.card_camera
        cam, sources = resolve_camera(config, meta, card, learned)
        if not any(sources[f] == "card" for f in _CAMERA_FIELDS) or not self.settings.image_estimates:
            return cam, sources
        contradicts, implied = self._contradicts(pixels, mask, cam)
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

    def _contradicts(self, pixels: np.ndarray, mask: np.ndarray, cam: CameraSettings
                     ) -> tuple[bool | None, float | None]:
        """Does this frame contradict ``cam``'s gain and offset? Two implied gains of the flat
        background blocks: from the high-pass variance (``(v_hp − r²)/(f·(m − o))``, within the
        dose tolerance) and from the zero-frequency noise power (``(v_lf − r²)/(m − o)``, which a
        detector MTF does not hide; within a factor 3.5). None: too little background to tell
        (the card is then used)."""
        g, o, r2 = cam.gain_counts_per_e, cam.offset_counts, cam.read_noise_counts ** 2
        if g is None or o is None:
            return None, None
        block = 32 if min(pixels.shape) >= 512 else 16
        stats = block_statistics(pixels, block=block, mask=mask, max_blocks=100, nps_lags=min(3, block // 4 - 1))
        if len(stats) < 6:  # the model sees (almost) no background: every block
            stats = block_statistics(pixels, block=block, mask=None, max_blocks=100, nps_lags=min(3, block // 4 - 1))
        est = camera_dose(pixels, cam, None, stats=stats)
        implied = None if est is None else est.implied_gain_counts_per_e
        if implied is None:
            return None, None
        # every block: support texture inflates v_lf (up to ~4× the shot noise at 2000 e/Å²), a
        # wrong gain by more; hence the wide band
        sig = stats.mean - o
        good = sig > 0
        lf_gain = float(np.median((stats.v_lf[good] - r2) / sig[good])) if good.sum() >= 6 else None
        bad = _disagree(implied, g, _dose_tol(self.card, self.settings))
        if lf_gain is not None and lf_gain > 0 and _disagree(lf_gain, g, _CARD_LF_BAND):
            bad, implied = True, lf_gain
        return bad, implied

    def assess(self, pixels: np.ndarray, meta: Mapping[str, Any] | None, result: Any, *, threshold: float = 0.5,
               camera: CameraSettings | None = None, learned: PhotonTransferResult | None = None) -> DriftResult:
        """The drift assessment of one frame (the result header's ``drift`` map is its
        :meth:`~fringelive.engine.drift_result.DriftResult.to_dict`); updates the CUSUM. ``result``: a
        :class:`fringelive.engine.pipeline.PipelineResult`. camera: the daemon's ``[camera]``
        (None = nothing configured); learned: the daemon's photon-transfer fit (used when
        confident). Precedence: header > ``[camera]`` > learned > the card's constants."""
        if not self.settings.enabled:
            return DriftResult.unknown("drift_disabled")
        cam, sources = self._frame_camera(pixels, result.mask, meta, camera, learned)
        m = measure_frame(pixels, meta, probabilities=result.probabilities, mask=result.mask,
                          member_masks=result.member_masks, particles=result.particles, card=self.card,
                          reference=self.reference, settings=self.settings, threshold=threshold, camera=cam,
                          signal_from_card=sources.get("gain_counts_per_e") == "card")
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
                    "sources": sources, "learned": _learned_summary(learned)},
        )

    def describe(self) -> dict[str, Any]:
        """For control ``status``: calibration state and CUSUM parameters."""
        ref = self.reference
        return {
            "calibrated": ref.calibrated,
            "signals": sorted(ref.signals),
            "camera_gain_counts_per_e": ref.camera_gain_counts_per_e,
            "dose_noise_factor": ref.dose_noise_factor,
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
                              "frames", "confident")}


def signal_directions() -> dict[str, str]:
    """Every signal the monitor can standardize and its alarm direction."""
    return dict(SIGNAL_DIRECTIONS)
