"""Operator-facing text about drift reasons and the camera (issue #12): the ``drift=`` field of
``fringelive watch`` lines and the camera part of ``fringelive health``."""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["drift_text", "camera_text"]


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def drift_text(drift: Any) -> str:
    """``ok``, or for a flagged frame the status with its reasons and the values behind them, e.g.
    ``ood(dose_metadata_mismatch: image 1270 vs header 423 e/Å², dose_above_envelope)``.
    ``dose_unverified`` alone leaves the status ``ok`` and prints nothing more."""
    if not isinstance(drift, Mapping):
        return "?"
    status = str(drift.get("status", "?"))
    reasons = [r for r in drift.get("reasons") or [] if isinstance(r, str)]
    if status == "ok" or not reasons:
        return status
    est, cond = drift.get("estimates") or {}, drift.get("conditions") or {}

    def detail(reason: str) -> str:
        if reason == "dose_metadata_mismatch" and _num(est.get("dose_e_per_A2")) and _num(cond.get("dose_e_per_A2")):
            return f"{reason}: image {est['dose_e_per_A2']:.0f} vs header {cond['dose_e_per_A2']:.0f} e/Å²"
        if reason == "pixel_size_metadata_mismatch" and _num(est.get("pixel_size_nm")) and _num(cond.get("pixel_size_nm")):
            return f"{reason}: image {est['pixel_size_nm']:.3f} vs header {cond['pixel_size_nm']:.3f} nm/px"
        return reason

    return f"{status}({', '.join(detail(r) for r in reasons)})"


def _fit_text(fit: Mapping[str, Any]) -> str:
    """``gain 7.98 ± 0.12 counts/e, offset 100.3 ± 0.6 counts (learned from 50 frame pairs, confident, mtf)``."""
    n = fit.get("frames")
    src = f"{n} frame pairs" if fit.get("method") == "temporal" else f"{n} frames"
    state = "confident" if fit.get("confident") else "not confident"
    return (f"gain {fit['gain_counts_per_e']:.3g} ± {fit['gain_se']:.2g} counts/e, offset {fit['offset_counts']:.4g} "
            f"± {fit['offset_se']:.2g} counts (learned from {src}, {state}, {fit.get('offset_method')})")


def camera_text(camera: Any) -> str:
    """The control ``status`` ``camera`` map in one phrase, e.g. ``camera: gain 8 counts/e,
    offset 100 counts (config)`` (``; gain DISAGREE with the stream: <fit>`` when the confident
    check fit says otherwise) or ``camera: gain 7.98 ± 0.12 counts/e, offset 100.3 ± 0.6 counts
    (learned from 50 frame pairs, confident, mtf)`` or ``camera: unknown, learning (1 level, 40
    frames): dose unverified``."""
    if not isinstance(camera, Mapping):
        return "camera: ?"
    cfg = camera.get("config") or {}
    g, o = cfg.get("gain_counts_per_e"), cfg.get("offset_counts")
    fit = camera.get("fit")
    if _num(g) and _num(o):
        text = f"camera: gain {g:g} counts/e, offset {o:g} counts (config)"
        bad = camera.get("config_disagrees")
        if isinstance(bad, Mapping) and any(bad.values()) and isinstance(fit, Mapping):
            what = " and ".join(k.split("_")[0] for k, v in bad.items() if v)
            text += (f"; {what} DISAGREE with the stream: {_fit_text(fit)}; re-run `fringelive calibrate camera`")
        elif isinstance(bad, Mapping):
            text += f"; agrees with the stream ({_fit_text(fit)})" if isinstance(fit, Mapping) else ""
        return text
    if isinstance(fit, Mapping) and fit.get("confident"):
        return f"camera: {_fit_text(fit)}"
    if not camera.get("learning"):
        return "camera: unknown, not learning: dose unverified"
    if isinstance(fit, Mapping):
        return (f"camera: unknown, learning ({fit.get('levels')} level(s), {fit.get('frames')} frames; "
                f"{'; '.join(fit.get('reasons') or [])}): dose unverified")
    return f"camera: unknown, learning ({camera.get('frames_fed', 0)} frames fed, no fit yet): dose unverified"
