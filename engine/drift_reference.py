"""The drift reference stored in a bundle's ``card.drift_reference`` (schema documented in
``docs/drift.md``), its strict parsing, and standardization of signals against it.

Every key is optional, so a hand-written ``{"camera_gain_counts_per_e": 2.1}`` is a valid
reference; ``fringelive calibrate`` writes the full form::

    {
      "schema": 1,
      "created": "2025-01-01T00:00:00+00:00", "frames": 200, "sources": ["run1/", ...],
      "camera_gain_counts_per_e": 1.0,      # counts per electron (null = unknown)
      "camera_offset_counts": 0.0,          # counts added to every pixel
      "read_noise_counts": 0.0,             # rms, counts
      "dose_noise_factor": 1.0,             # shot-noise electrons: true / apparent
      "signals": {"entropy_foreground": {"centre": 0.41, "scale": 0.02, "direction": "up",
                                         "n": 200, "values": [...]}, ...},
      "cusum": {"k": 0.5, "h": 9.7, "target_arl": 10000, "arl_simulated": 10240.0, ...},
      "checks": {...}                       # calibration diagnostics, free-form
    }

``centre``/``scale`` are the median and 1.4826·MAD of the signal over in-distribution frames
(``scale`` floored per signal, :data:`SCALE_FLOORS`); ``values`` the reference values themselves
(for re-simulating the CUSUM threshold at another target ARL).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

from fringelive.engine.cusum import DIRECTIONS

__all__ = [
    "SCHEMA",
    "SIGNAL_DIRECTIONS",
    "SCALE_FLOORS",
    "DriftReferenceError",
    "SignalReference",
    "CusumReference",
    "DriftReference",
    "parse_drift_reference",
    "robust_centre_scale",
    "tail_p_value",
]

SCHEMA = 1
#: Which way each signal moves when frames leave the training distribution.
SIGNAL_DIRECTIONS: dict[str, str] = {
    "entropy_foreground": "up",
    "entropy_boundary": "up",
    "member_dice": "down",
    "log_dose_estimate": "both",
    "log_pixel_size_estimate": "both",
}
#: Smallest standard deviation used to standardize a signal (bits, Dice, natural log units):
#: a signal that hardly varies on the reference frames must not turn noise into alarms.
SCALE_FLOORS: dict[str, float] = {
    "entropy_foreground": 0.005,
    "entropy_boundary": 0.005,
    "member_dice": 0.002,
    "log_dose_estimate": 0.01,
    "log_pixel_size_estimate": 0.005,
}
_TOP_KEYS = ("schema", "created", "frames", "sources", "camera_gain_counts_per_e", "camera_offset_counts",
             "read_noise_counts", "dose_noise_factor", "signals", "cusum", "checks")
#: Camera constants of schema 1; they belong to the daemon's ``[camera]`` since schema 2.
_CAMERA_KEYS = ("camera_gain_counts_per_e", "camera_offset_counts", "read_noise_counts")
_CUSUM_KEYS = ("k", "h", "target_arl", "arl_simulated", "method", "chains", "steps", "alarms", "h_siegmund",
               "channels", "signals")


class DriftReferenceError(ValueError):
    """A ``drift_reference`` that cannot be used; the message names the key and the value."""


def _number(d: Mapping[str, Any], key: str, where: str, *, minimum: float | None = None, strict: bool = False,
            default: float | None = None, allow_none: bool = False) -> float | None:
    if key not in d:
        return default
    v = d[key]
    if v is None:
        if not allow_none:
            raise DriftReferenceError(f"{where}.{key} must be a number, got null")
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise DriftReferenceError(f"{where}.{key} must be a finite number, got {v!r}")
    v = float(v)
    if minimum is not None and (v <= minimum if strict else v < minimum):
        raise DriftReferenceError(f"{where}.{key} must be {'>' if strict else '>='} {minimum:g}, got {v!r}")
    return v


@dataclass(frozen=True)
class SignalReference:
    """Reference statistics of one signal: ``centre`` (median), ``scale`` (robust std, > 0),
    ``direction`` (``up`` | ``down`` | ``both``), ``n`` frames, ``values`` (may be empty)."""

    centre: float
    scale: float
    direction: str
    n: int = 0
    values: tuple[float, ...] = ()

    def z(self, value: float) -> float:
        return (value - self.centre) / self.scale

    def to_dict(self) -> dict[str, Any]:
        return {"centre": self.centre, "scale": self.scale, "direction": self.direction, "n": self.n,
                "values": [round(v, 6) for v in self.values]}


@dataclass(frozen=True)
class CusumReference:
    """``k`` and ``h`` in standard deviations, the ARL0 target they were calibrated for (frames),
    and the calibration record (free-form, kept verbatim)."""

    k: float
    h: float
    target_arl: float | None = None
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DriftReference:
    """Parsed ``card.drift_reference`` (see the module docstring)."""

    camera_gain_counts_per_e: float | None = None
    camera_offset_counts: float = 0.0
    read_noise_counts: float = 0.0
    dose_noise_factor: float = 1.0
    signals: dict[str, SignalReference] = field(default_factory=dict)
    cusum: CusumReference | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def has_camera(self) -> bool:
        """The card carries camera constants (schema 1): a fallback only (docs/drift.md)."""
        return any(k in self.raw for k in _CAMERA_KEYS)

    @property
    def calibrated(self) -> bool:
        """True when signal statistics and a CUSUM threshold are present."""
        return bool(self.signals) and self.cusum is not None


def parse_drift_reference(data: Mapping[str, Any] | None) -> DriftReference:
    """Strictly parse ``card.drift_reference`` (None → an empty reference). Raises
    :class:`DriftReferenceError` naming the bad key, e.g.
    ``drift_reference.signals.entropy_foreground.scale must be > 0, got 0.0``."""
    if data is None:
        return DriftReference()
    where = "drift_reference"
    if not isinstance(data, Mapping):
        raise DriftReferenceError(f"{where} must be an object or null, got {data!r}")
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise DriftReferenceError(f"{where}: unknown key(s) {unknown}; known: {list(_TOP_KEYS)}")
    schema = data.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise DriftReferenceError(f"{where}.schema {schema!r} is not supported (supported: {SCHEMA})")
    gain = _number(data, "camera_gain_counts_per_e", where, minimum=0.0, strict=True, allow_none=True)
    offset = _number(data, "camera_offset_counts", where, default=0.0)
    read = _number(data, "read_noise_counts", where, minimum=0.0, default=0.0)
    factor = _number(data, "dose_noise_factor", where, minimum=0.0, strict=True, default=1.0)
    signals: dict[str, SignalReference] = {}
    raw_signals = data.get("signals") or {}
    if not isinstance(raw_signals, Mapping):
        raise DriftReferenceError(f"{where}.signals must be an object, got {raw_signals!r}")
    for name, s in raw_signals.items():
        w = f"{where}.signals.{name}"
        if name not in SIGNAL_DIRECTIONS:
            raise DriftReferenceError(f"{w}: unknown signal; known: {list(SIGNAL_DIRECTIONS)}")
        if not isinstance(s, Mapping):
            raise DriftReferenceError(f"{w} must be an object, got {s!r}")
        extra = sorted(set(s) - {"centre", "scale", "direction", "n", "values"})
        if extra:
            raise DriftReferenceError(f"{w}: unknown key(s) {extra}; known: ['centre', 'direction', 'n', 'scale', 'values']")
        if "centre" not in s or "scale" not in s:
            raise DriftReferenceError(f"{w} needs 'centre' and 'scale'")
        centre = _number(s, "centre", w)
        scale = _number(s, "scale", w, minimum=0.0, strict=True)
        direction = s.get("direction", SIGNAL_DIRECTIONS[name])
        if direction not in DIRECTIONS:
            raise DriftReferenceError(f"{w}.direction must be one of {list(DIRECTIONS)}, got {direction!r}")
        n = s.get("n", 0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise DriftReferenceError(f"{w}.n must be an integer >= 0, got {n!r}")
        values = s.get("values", [])
        if not isinstance(values, list) or not all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise DriftReferenceError(f"{w}.values must be a list of finite numbers")
        assert centre is not None and scale is not None
        signals[name] = SignalReference(centre, scale, direction, n, tuple(float(v) for v in values))
    cusum = None
    raw_cusum = data.get("cusum")
    if raw_cusum is not None:
        w = f"{where}.cusum"
        if not isinstance(raw_cusum, Mapping):
            raise DriftReferenceError(f"{w} must be an object, got {raw_cusum!r}")
        extra = sorted(set(raw_cusum) - set(_CUSUM_KEYS))
        if extra:
            raise DriftReferenceError(f"{w}: unknown key(s) {extra}; known: {list(_CUSUM_KEYS)}")
        if "k" not in raw_cusum or "h" not in raw_cusum:
            raise DriftReferenceError(f"{w} needs 'k' and 'h'")
        k = _number(raw_cusum, "k", w, minimum=0.0)
        h = _number(raw_cusum, "h", w, minimum=0.0, strict=True)
        target = _number(raw_cusum, "target_arl", w, minimum=1.0, allow_none=True)
        assert k is not None and h is not None
        cusum = CusumReference(k, h, target, dict(raw_cusum))
    return DriftReference(camera_gain_counts_per_e=gain, camera_offset_counts=offset or 0.0,
                          read_noise_counts=read or 0.0, dose_noise_factor=factor or 1.0, signals=signals, cusum=cusum,
                          raw=dict(data))


def robust_centre_scale(values: list[float], floor: float = 0.0) -> tuple[float, float]:
    """Median and 1.4826·MAD of ``values`` (the sample std when the MAD is 0), at least
    ``floor``. Raises ``ValueError`` for fewer than two values."""
    import numpy as np

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size < 2:
        raise ValueError(f"need at least two finite values, got {v.size}")
    centre = float(np.median(v))
    scale = 1.4826 * float(np.median(np.abs(v - centre)))
    if not scale > 0:
        scale = float(v.std(ddof=1))
    return centre, max(scale, floor, 1e-12)


def tail_p_value(z: float, direction: str) -> float:
    """Gaussian tail probability of a standardized value in the signal's bad direction:
    ``up`` P(Z >= z), ``down`` P(Z <= z), ``both`` P(|Z| >= |z|)."""
    if direction == "up":
        return 0.5 * math.erfc(z / math.sqrt(2.0))
    if direction == "down":
        return 0.5 * math.erfc(-z / math.sqrt(2.0))
    return math.erfc(abs(z) / math.sqrt(2.0))
