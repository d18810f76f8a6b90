"""One frame's drift measurement and its verdict against the card (pure: arrays + card → numbers).

:func:`measure_frame` gathers what the frame shows (the metadata's conditions, image estimates
of dose and pixel size, model-confidence signals); :func:`evaluate` compares it with the card's
envelope and flags metadata that the image contradicts. :class:`fringelive.engine.drift.DriftMonitor`
runs both per frame and adds the stream's CUSUM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from fringelive.bundle.card import Card, Tolerances
from fringelive.engine import confidence, envelope, image_estimates
from fringelive.engine.camera import CameraSettings, FrameBlocks
from fringelive.engine.camera import estimate_dose as camera_dose
from fringelive.engine.drift_reference import DriftReference
from fringelive.engine.drift_settings import DriftSettings
from fringelive.engine.frame import FrameMetadata
from fringelive.engine.materials import reflection_spacings_for, spacings_for

__all__ = ["FrameMeasurement", "camera_of", "measure_frame", "evaluate", "disagree", "dose_tolerance"]


def camera_of(reference: DriftReference) -> image_estimates.CameraCalibration:
    """The camera the reference's frames were measured with (its ``calibration_camera``;
    defaults where it states none): a frame measured with it compares with the reference."""
    return reference.measurement_camera


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


def measure_frame(pixels: np.ndarray, meta: FrameMetadata | Mapping[str, Any] | None, *, probabilities: np.ndarray,
                  mask: np.ndarray, member_masks: Sequence[np.ndarray], particles: Sequence[Mapping[str, Any]],
                  card: Card, reference: DriftReference | None = None, settings: DriftSettings | None = None,
                  threshold: float = 0.5, camera: CameraSettings | None = None,
                  signal_from_card: bool = False, blocks: FrameBlocks | None = None) -> FrameMeasurement:
    """Measure one frame: ``pixels (H, W)`` raw counts, the pipeline's ``probabilities``
    (H, W) float32, ``mask`` (H, W) bool, ``member_masks`` and ``particles``.

    camera: the frame's resolved camera (:func:`fringelive.engine.camera.resolve_camera`): the
    dose is ``(m − o)/g`` when gain and offset are known (``estimates.dose_verified``), else the
    shot-noise estimate or None, *unverified*. None: the card's constants and the raw shot-noise
    measurement (``dose_measurement``), as bundle calibration (``engine/calibration.py``) needs.
    signal_from_card: the camera is the card's (schema-1 fallback): the ``log_dose_estimate``
    signal is then the shot-noise estimate the card's reference was calibrated with. blocks: the
    frame's background block statistics when shared with others (None: computed here)."""
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
        if px_est is not None and (px_for_dose is None or disagree(px_est.pixel_size_nm, px_for_dose,
                                                                    _px_tol(card, settings))):
            px_for_dose = float(px_est.pixel_size_nm)
        signal_dose = None
        if camera is not None:
            estimates.update(_camera_dose_estimates(pixels, mask, blocks, camera, px_for_dose, settings))
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


def _camera_dose_estimates(pixels: np.ndarray, mask: np.ndarray, blocks: FrameBlocks | None, camera: CameraSettings,
                           px_nm: float | None, settings: DriftSettings) -> dict[str, Any]:
    est = camera_dose(pixels, camera, px_nm, mask=mask, blocks=blocks, max_blocks=settings.max_background_blocks)
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


def dose_tolerance(card: Card, settings: DriftSettings) -> float:
    if settings.dose_mismatch_rel is not None:
        return settings.dose_mismatch_rel
    return envelope.effective_tolerances(card.envelope.tolerances, settings.tolerances).dose_rel


def disagree(a: float, b: float, rel: float) -> bool:
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
        elif disagree(px_img, px, _px_tol(card, settings)):
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
        elif disagree(dose_img, dose, dose_tolerance(card, settings)):
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
