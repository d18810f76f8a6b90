"""Calibration of a bundle's drift reference from in-distribution frames (``fringelive calibrate``).

1. Every frame runs through the bundle's pipeline and :func:`fringelive.engine.drift_measure.measure_frame`
   (:func:`measure_frames`).
2. Frames whose metadata give dose and pixel size calibrate the dose estimate
   (:func:`calibrate_camera`): ``dose_noise_factor = median(N_true / N_shot-noise)`` (the MTF
   correction, 1 for white noise) and ``camera_gain_counts_per_e = median(mean counts / N_true)``
   on background blocks, where ``N_true = dose · (10 · pixel size)²`` electrons per pixel; they
   are stored as the reference's ``calibration_camera`` (``noise_factor``, ``gain_counts_per_e``).
3. Per signal, robust reference statistics (median, 1.4826·MAD floored by
   ``drift_reference.SCALE_FLOORS``) and the values themselves.
4. The CUSUM threshold ``h`` for the target ARL0, simulated on the standardized reference
   frames (:func:`fringelive.engine.cusum.calibrate_threshold`).

:func:`build_reference` returns the ``drift_reference`` map the card stores and a report.
Pure apart from :func:`measure_frames`, which runs the pipeline.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from fringelive.bundle.bundle_io import load_bundle
from fringelive.bundle.card import Card, utc_now_iso
from fringelive.engine.cusum import calibrate_threshold
from fringelive.engine.drift_measure import FrameMeasurement, evaluate, measure_frame
from fringelive.engine.drift_settings import DriftSettings
from fringelive.engine.dose_estimate import CameraCalibration
from fringelive.engine.drift_reference import (DriftReference, SCALE_FLOORS, SCHEMA, SCHEMA1_CAMERA_KEYS,
                                               SIGNAL_DIRECTIONS, parse_drift_reference, robust_centre_scale)
from fringelive.engine.pipeline import PipelineConfig, SegmentationPipeline
from fringelive.engine.particle_confidence import (DEFAULT_MAX_DICE_LOSS, METRICS_KEYS, STATISTICS,
                                                  ConfidenceTally)
from fringelive.engine.threshold_choice import (DEFAULT_GRID, DEFAULT_MAX_CALLED_EMPTY,
                                               DEFAULT_MAX_CALLED_EMPTY_FRAME, ThresholdTally)

__all__ = ["measure_frames", "calibrate_camera", "build_reference", "calibrate_bundle",
           "calibrate_decision_threshold", "calibrate_particle_confidence", "MIN_SIGNAL_FRAMES"]

#: A signal enters the reference only when this many frames (and half of them) gave a value.
MIN_SIGNAL_FRAMES = 10


def measure_frames(pipeline: Any, frames: Iterable[tuple[np.ndarray, Mapping[str, Any]]], *,
                   reference: DriftReference | None = None, settings: DriftSettings | None = None
                   ) -> Iterator[FrameMeasurement]:
    """Run each ``(pixels (H, W), metadata)`` through ``pipeline``
    (:class:`~fringelive.engine.pipeline.SegmentationPipeline`) and measure it. The camera
    calibration is taken from ``reference`` (the card's current one by default) with the
    noise factor reset to 1, so the dose measurements are raw."""
    card: Card = pipeline.bundle.card

    reference = reference if reference is not None else parse_drift_reference(card.drift_reference)
    raw = reference.with_noise_factor(1.0)
    for pixels, meta in frames:
        result = pipeline.run(pixels, meta)
        yield measure_frame(pixels, meta, probabilities=result.probabilities, mask=result.mask,
                            member_masks=result.member_masks, particles=result.particles, card=card, reference=raw,
                            settings=settings, threshold=pipeline.threshold)


def calibrate_camera(measurements: Sequence[FrameMeasurement]) -> dict[str, Any]:
    """Noise factor and gain from the frames whose metadata give dose and pixel size:
    ``{frames, dose_noise_factor, camera_gain_counts_per_e, spread_noise_factor}`` (None when no
    frame qualifies). Assumes the raw measurements used noise factor 1."""
    factors, gains = [], []
    for m in measurements:
        c, d = m.conditions, m.dose_measurement
        if d is None or c.dose_e_per_A2 is None or c.pixel_size_nm is None:
            continue
        n_true = c.dose_e_per_A2 * (10.0 * c.pixel_size_nm) ** 2
        if n_true > 0 and d.raw_electrons_per_px > 0:
            factors.append(n_true / d.raw_electrons_per_px)
            gains.append(d.mean_counts / n_true)
    if not factors:
        return {"frames": 0, "dose_noise_factor": None, "camera_gain_counts_per_e": None, "spread_noise_factor": None}
    f = float(np.median(factors))
    return {"frames": len(factors), "dose_noise_factor": f, "camera_gain_counts_per_e": float(np.median(gains)),
            "spread_noise_factor": float(1.4826 * np.median(np.abs(np.asarray(factors) - f)) / f)}


def build_reference(measurements: Sequence[FrameMeasurement], card: Card, *, base: DriftReference | None = None,
                    settings: DriftSettings | None = None, target_arl: float = 10_000, k: float = 0.5,
                    method: str = "bootstrap", calibrate_dose: bool = True, gain: float | None = None,
                    offset: float | None = None, read_noise: float | None = None, sources: Sequence[str] = (),
                    min_frames: int = MIN_SIGNAL_FRAMES, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``drift_reference`` map (schema 2) for ``card`` from measured in-distribution frames,
    and a report ``{frames, camera, signals, cusum, statuses, estimate_checks}`` (``camera``: the
    ``calibration_camera`` written, under its schema-1 names ``camera_gain_counts_per_e``, ...).

    base: the card's current reference (camera constants kept unless overridden or
    calibrated). gain / offset / read_noise: camera constants to set (counts/e, counts,
    counts); an explicit gain is not re-calibrated. calibrate_dose: derive the noise factor
    (and gain) from frames of known dose. Raises ``ValueError`` with fewer than
    ``min_frames`` frames or when no signal has enough values.
    """
    if len(measurements) < max(2, min_frames):
        raise ValueError(f"calibration needs at least {max(2, min_frames)} frames, got {len(measurements)}")
    base = base or DriftReference()
    settings = settings or DriftSettings()
    old = base.measurement_camera
    camera = CameraCalibration(gain_counts_per_e=old.gain_counts_per_e if gain is None else float(gain),
                               offset_counts=old.offset_counts if offset is None else float(offset),
                               read_noise_counts=old.read_noise_counts if read_noise is None else float(read_noise),
                               noise_factor=old.noise_factor)
    cam_report = calibrate_camera(measurements) if calibrate_dose else {"frames": 0}
    if calibrate_dose and cam_report.get("dose_noise_factor"):
        camera = replace(camera, noise_factor=cam_report["dose_noise_factor"])
        if gain is None:
            camera = replace(camera, gain_counts_per_e=cam_report["camera_gain_counts_per_e"])
    # The measurements are raw (noise factor 1): scale the dose estimates by the factor in force.
    log_factor = math.log(camera.noise_factor)
    rows: list[dict[str, float | None]] = []
    for m in measurements:
        row = dict(m.signals)
        if row.get("log_dose_estimate") is not None:
            row["log_dose_estimate"] = float(row["log_dose_estimate"]) + log_factor
        rows.append(row)
    signals: dict[str, Any] = {}
    skipped: dict[str, int] = {}
    for name, direction in SIGNAL_DIRECTIONS.items():
        values = [r.get(name) for r in rows]
        finite = [float(v) for v in values if v is not None and math.isfinite(v)]
        if len(finite) < max(min_frames, len(rows) // 2):
            if finite or any(name in r for r in rows):
                skipped[name] = len(finite)
            continue
        centre, scale = robust_centre_scale(finite, SCALE_FLOORS.get(name, 0.0))
        signals[name] = {"centre": centre, "scale": scale, "direction": direction, "n": len(finite),
                         "values": [round(v, 6) for v in finite]}
    if not signals:
        raise ValueError(f"no drift signal had values on enough frames (need {max(min_frames, len(rows) // 2)}; "
                         f"got {skipped})")
    names = list(signals)
    z = np.full((len(rows), len(names)), np.nan)
    for j, name in enumerate(names):
        ref = signals[name]
        for i, r in enumerate(rows):
            v = r.get(name)
            if v is not None and math.isfinite(v):
                z[i, j] = (float(v) - ref["centre"]) / ref["scale"]
    floors = [SCALE_FLOORS.get(n, 0.0) / signals[n]["scale"] for n in names]
    cal = calibrate_threshold(z, [signals[n]["direction"] for n in names], k=k, target_arl=target_arl, method=method,
                              seed=seed, scale_floors=floors)
    cusum = cal.to_dict()
    cusum["signals"] = names
    cusum["channels"] = [f"{names[int(c.split(':')[0])]}:{c.split(':')[1]}" for c in cal.channels]
    # diagnostics: how the frames look to the checks (with the new camera calibration)
    statuses: dict[str, int] = {}
    dose_ratios, px_ratios = [], []
    for m in measurements:
        est = dict(m.estimates)
        if est.get("dose_e_per_A2") is not None:
            est["dose_e_per_A2"] = est["dose_e_per_A2"] * camera.noise_factor
        status, _, _ = evaluate(replace(m, estimates=est), card, settings)
        statuses[status] = statuses.get(status, 0) + 1
        c = m.conditions
        if est.get("dose_e_per_A2") and c.dose_e_per_A2:
            dose_ratios.append(est["dose_e_per_A2"] / c.dose_e_per_A2)
        if est.get("pixel_size_nm") and c.pixel_size_nm:
            px_ratios.append(est["pixel_size_nm"] / c.pixel_size_nm)

    def summary(r: list[float]) -> dict[str, Any] | None:
        if not r:
            return None
        a = np.asarray(r)
        return {"frames": len(r), "median_ratio": round(float(np.median(a)), 4),
                "p05": round(float(np.percentile(a, 5)), 4), "p95": round(float(np.percentile(a, 95)), 4)}

    checks = {"dose_estimate_vs_metadata": summary(dose_ratios), "pixel_size_estimate_vs_metadata": summary(px_ratios),
              "statuses": statuses, "dose_calibration": cam_report}
    reference = {
        "schema": SCHEMA,
        "created": utc_now_iso(),
        "frames": len(measurements),
        "sources": list(sources),
        "calibration_camera": camera.to_dict(),
        "signals": signals,
        "cusum": cusum,
        "checks": checks,
    }
    # the report keeps the schema-1 names (``calibrate --json`` output is an interface)
    report_camera = {old_key: camera.to_dict()[key] for old_key, key in SCHEMA1_CAMERA_KEYS.items()}
    report = {"frames": len(measurements), "camera": report_camera, "dose_calibration": cam_report,
              "signals": {n: {k2: v for k2, v in s.items() if k2 != "values"} for n, s in signals.items()},
              "skipped_signals": skipped, "cusum": cusum, "checks": checks}
    return reference, report


def calibrate_bundle(bundle_path: str | Path, frames: Iterable[Any], metadata: Iterable[Mapping[str, Any]] | None = None,
                     *, target_arl: float = 10_000.0, k: float = 0.5, method: str = "bootstrap",
                     calibrate_dose: bool = True, gain: float | None = None, offset: float | None = None,
                     read_noise: float | None = None, sources: Sequence[str] = (), min_frames: int | None = None,
                     seed: int = 0, threads: int | None = None, dry_run: bool = False,
                     progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Measure the drift signals of ``bundle_path``'s model on in-distribution ``frames`` (each
    ``(H, W)`` raw counts, or ``(pixels, metadata)`` pairs when ``metadata`` is None) and write
    the resulting ``drift_reference`` into its card (unless ``dry_run``).

    metadata: one map per frame (``pixel_size_nm`` nm/px, ``dose_e_per_A2`` e/Å², ...); frames
    with dose and pixel size also calibrate the dose estimate. target_arl: in-distribution frames
    between false stream alarms; k: CUSUM allowance (reference standard deviations).
    Returns the report of :func:`build_reference` plus
    ``written`` (the card path or None). Raises ``BundleError``/``DriftReferenceError`` for a bad
    bundle and ``ValueError`` when too few frames or signals were measured. Training
    (``fringelive.training.run``) calls this on its validation frames.
    """
    if not target_arl >= 10:
        raise ValueError(f"target_arl must be >= 10 frames, got {target_arl!r}")
    if not k >= 0:
        raise ValueError(f"k must be >= 0 standard deviations, got {k!r}")
    if gain is not None and not gain > 0:
        raise ValueError(f"gain must be > 0 counts per electron, got {gain!r}")
    pairs: Iterable[tuple[Any, Mapping[str, Any]]]
    if metadata is None:
        pairs = frames
    else:
        pairs = zip(frames, metadata, strict=True)
    bundle = load_bundle(bundle_path)
    base = parse_drift_reference(bundle.card.drift_reference)
    settings = DriftSettings()
    measurements = []
    with SegmentationPipeline.from_bundle(bundle, PipelineConfig(), intra_op_threads=threads) as pipe:
        for m in measure_frames(pipe, ((f, dict(meta)) for f, meta in pairs), reference=base, settings=settings):
            measurements.append(m)
            if progress is not None:
                progress(len(measurements))
    reference, report = build_reference(
        measurements, bundle.card, base=base, settings=settings, target_arl=target_arl, k=k, method=method,
        calibrate_dose=calibrate_dose, gain=gain, offset=offset, read_noise=read_noise, sources=list(sources),
        min_frames=min_frames if min_frames is not None else MIN_SIGNAL_FRAMES, seed=seed)
    written = None
    if not dry_run:
        written = bundle.write_card(bundle.card.replace(drift_reference=reference)).path / "card.json"
    report["written"] = None if written is None else str(written)
    report.setdefault("bundle", bundle.name)
    return report


def calibrate_decision_threshold(bundle_path: str | Path,
                                 frames: Iterable[tuple[np.ndarray, np.ndarray, Mapping[str, Any]]],
                                 *, grid: Sequence[float] = DEFAULT_GRID,
                                 max_called_empty: float = DEFAULT_MAX_CALLED_EMPTY,
                                 max_called_empty_frame: float = DEFAULT_MAX_CALLED_EMPTY_FRAME,
                                 threads: int | None = None,
                                 dry_run: bool = False, sources: Sequence[str] = ()) -> dict[str, Any]:
    """Choose the bundle's threshold (``card.threshold``) on labelled ``frames`` = (raw counts
    (H, W), label (H, W) {0, 1}, metadata) through its pipeline (:mod:`fringelive.engine.threshold_choice`)
    and write it, with the per-candidate scores in ``card.metrics["threshold_calibration"]``,
    unless ``dry_run``. Frames must not be those the drift reference or any reported metric is
    measured on. Returns the choice's report plus ``written``."""
    return _choose_on_labelled(
        bundle_path, frames, lambda pipe: ThresholdTally(tuple(grid), pipe.config.particles,
                                                         pipe.config.min_particle_area_px, max_called_empty,
                                                         max_called_empty_frame),
        card_field="threshold", chosen="threshold", metrics_key="threshold_calibration", threads=threads,
        dry_run=dry_run, sources=sources)


def calibrate_particle_confidence(bundle_path: str | Path,
                                  frames: Iterable[tuple[np.ndarray, np.ndarray, Mapping[str, Any]]],
                                  *, grid: Sequence[float] | None = None,
                                  max_dice_loss: float = DEFAULT_MAX_DICE_LOSS, threads: int | None = None,
                                  dry_run: bool = False, sources: Sequence[str] = (),
                                  statistic: str = "mean_probability") -> dict[str, Any]:
    """Choose the bundle's particle confidence on labelled ``frames`` = (raw counts (H, W), label
    (H, W) {0, 1}, metadata) through its pipeline at the card's threshold
    (:mod:`fringelive.engine.particle_confidence`) and write it, with the per-candidate scores in
    the card's metrics, unless ``dry_run``: ``statistic`` "mean_probability" chooses
    ``card.particle_min_mean_probability`` (``metrics["particle_confidence_calibration"]``),
    "core_nm" ``card.particle_min_core_nm`` at the card's ``particle_core_probability``
    (``metrics["particle_core_calibration"]``), "core_fraction" ``card.particle_min_core_fraction``
    (``metrics["particle_core_fraction_calibration"]``), "edge_core_fraction"
    ``card.particle_min_edge_core_fraction`` (``metrics["particle_edge_core_fraction_calibration"]``);
    the card's other particle rules hold meanwhile. Use frames no reported metric is measured on.
    Returns the choice's report plus ``written``."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {sorted(STATISTICS)}, got {statistic!r}")
    key = STATISTICS[statistic]
    return _choose_on_labelled(
        bundle_path, frames, lambda pipe: _confidence_tally(pipe, grid, max_dice_loss, statistic),
        card_field="particle_" + key, chosen=key,
        metrics_key=METRICS_KEYS[statistic], threads=threads, dry_run=dry_run, sources=sources)


def _confidence_tally(pipe: SegmentationPipeline, grid: Sequence[float] | None, max_dice_loss: float,
                      statistic: str) -> ConfidenceTally:
    """The tally of ``statistic`` with the pipeline's resolved particle rules; its core
    probability is theirs (the card's unless configured), so the statistic and the held rules use one."""
    ps = pipe.particle_settings
    return ConfidenceTally(pipe.threshold, None if grid is None else tuple(grid), ps, pipe.config.min_particle_area_px,
                           max_dice_loss, statistic, float(ps.core_probability))


def _choose_on_labelled(bundle_path: str | Path, frames: Iterable[tuple[np.ndarray, np.ndarray, Mapping[str, Any]]],
                        make_tally: Callable[[SegmentationPipeline], Any], *, card_field: str, chosen: str,
                        metrics_key: str, threads: int | None, dry_run: bool, sources: Sequence[str]) -> dict[str, Any]:
    """Run the bundle's pipeline over labelled ``frames`` into the tally ``make_tally(pipeline)``
    builds (``add(probabilities, label, pixel size)``, ``result().to_dict()``), then write the
    report's ``chosen`` value to ``card.<card_field>`` with the report in
    ``card.metrics[metrics_key]``, unless ``dry_run``. Returns the report plus ``bundle`` and
    ``written``."""
    bundle = load_bundle(bundle_path)
    with SegmentationPipeline.from_bundle(bundle, PipelineConfig(), intra_op_threads=threads) as pipe:
        tally = make_tally(pipe)
        for pixels, label, meta in frames:
            inference = pipe.infer(pixels, meta)
            tally.add(inference.probabilities, label, inference.pixel_size_nm)
    report = {**tally.result().to_dict(), "previous": getattr(bundle.card, card_field), "sources": list(sources),
              "created": utc_now_iso()}
    written = None
    if not dry_run:
        card = bundle.card.replace(**{card_field: report[chosen]},
                                   metrics={**bundle.card.metrics, metrics_key: report})
        written = bundle.write_card(card).path / "card.json"
    return {**report, "bundle": bundle.name, "written": None if written is None else str(written)}
