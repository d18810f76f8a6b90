"""The drift reference stored in a bundle's ``card.drift_reference`` (schema documented in
``docs/drift.md``), its strict parsing, and standardization of signals against it.

Every key is optional. ``fringelive calibrate`` writes schema 2::

    {
      "schema": 2,
      "created": "2025-01-01T00:00:00+00:00", "frames": 200, "sources": ["run1/", ...],
      "calibration_camera": {               # the camera of the reference frames ([camera] keys)
        "gain_counts_per_e": 1.0,           # counts per electron (null = unknown)
        "offset_counts": 0.0,               # counts added to every pixel
        "read_noise_counts": 0.0,           # rms, counts
        "noise_factor": 1.0                 # shot-noise electrons: true / apparent
      },
      "signals": {"entropy_foreground": {"centre": 0.41, "scale": 0.02, "direction": "up",
                                         "n": 200, "values": [...]}, ...},
      "cusum": {"k": 0.5, "h": 9.7, "target_arl": 10000, "arl_simulated": 10240.0, ...},
      "checks": {...}                       # calibration diagnostics, free-form
    }

Schema 1 (cards calibrated before issue #12, bundles from ``import-seed``) kept the same four
constants at the top level as ``camera_gain_counts_per_e``, ``camera_offset_counts``,
``read_noise_counts``, ``dose_noise_factor``; it is still read (``schema`` absent means 1, or 2
when ``calibration_camera`` is present, so a hand-written ``{"camera_gain_counts_per_e": 2.1}``
stays valid). A schema this code does not know fails with :class:`DriftReferenceError` naming it.
The calibration camera is what the reference's ``log_dose_estimate`` values were measured with;
the daemon uses it as the camera only as the last-resort fallback (``docs/drift.md``).

``centre``/``scale`` are the median and 1.4826·MAD of the signal over in-distribution frames
(``scale`` floored per signal, :data:`SCALE_FLOORS`); ``values`` the reference values themselves
(for re-simulating the CUSUM threshold at another target ARL).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from fringelive.engine.cusum import DIRECTIONS
from fringelive.engine.dose_estimate import CameraCalibration

__all__ = [
    "SCHEMA",
    "SUPPORTED_SCHEMAS",
    "SIGNAL_DIRECTIONS",
    "SCALE_FLOORS",
    "SCHEMA1_CAMERA_KEYS",
    "DriftReferenceError",
    "SignalReference",
    "CusumReference",
    "DriftReference",
    "parse_drift_reference",
    "robust_centre_scale",
    "tail_p_value",
]

#: The schema :func:`fringelive.engine.calibration.build_reference` writes.
SCHEMA = 2
#: The schemas :func:`parse_drift_reference` reads (1: camera constants at the top level).
SUPPORTED_SCHEMAS = (1, 2)
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
_COMMON_KEYS = ("schema", "created", "frames", "sources", "signals", "cusum", "checks")
#: Schema 1's top-level camera constants → the ``calibration_camera`` keys of schema 2.
SCHEMA1_CAMERA_KEYS = {"camera_gain_counts_per_e": "gain_counts_per_e", "camera_offset_counts": "offset_counts",
                        "read_noise_counts": "read_noise_counts", "dose_noise_factor": "noise_factor"}
_TOP_KEYS = {1: _COMMON_KEYS + tuple(SCHEMA1_CAMERA_KEYS), 2: _COMMON_KEYS + ("calibration_camera",)}
_CAMERA_KEYS = tuple(SCHEMA1_CAMERA_KEYS.values())
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
    """Parsed ``card.drift_reference`` (see the module docstring). camera: the calibration
    camera (``calibration_camera``; the constants the reference frames' dose was measured
    with), None when the reference states none; schema: the schema it was written in."""

    camera: CameraCalibration | None = None
    signals: dict[str, SignalReference] = field(default_factory=dict)
    cusum: CusumReference | None = None
    schema: int = SCHEMA
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def has_camera(self) -> bool:
        """The reference states its camera: the daemon's last-resort fallback (docs/drift.md)."""
        return self.camera is not None

    @property
    def measurement_camera(self) -> CameraCalibration:
        """The camera to measure frames with as the reference did (defaults where it states none)."""
        return self.camera or CameraCalibration()

    @property
    def calibrated(self) -> bool:
        """True when signal statistics and a CUSUM threshold are present."""
        return bool(self.signals) and self.cusum is not None

    def with_noise_factor(self, noise_factor: float) -> "DriftReference":
        """This reference measuring with another noise factor (calibration measures raw, 1)."""
        return replace(self, camera=replace(self.measurement_camera, noise_factor=float(noise_factor)))


def _schema_of(data: Mapping[str, Any], where: str) -> int:
    schema = data.get("schema", 2 if "calibration_camera" in data else 1)
    if isinstance(schema, bool) or schema not in SUPPORTED_SCHEMAS:
        raise DriftReferenceError(
            f"{where}.schema {schema!r} is not supported by this fringelive (supported: "
            f"{', '.join(map(str, SUPPORTED_SCHEMAS))}); upgrade fringelive, or re-run fringelive calibrate on the "
            "bundle to write the current schema")
    return int(schema)


def _parse_camera(data: Mapping[str, Any], schema: int, where: str) -> CameraCalibration | None:
    """The calibration camera: schema 2's ``calibration_camera`` map, or schema 1's top-level keys."""
    if schema == 1:
        if not any(k in data for k in SCHEMA1_CAMERA_KEYS):
            return None
        cam, w, names = data, where, dict(SCHEMA1_CAMERA_KEYS)
    else:
        cam = data.get("calibration_camera")
        if cam is None:
            return None
        w = f"{where}.calibration_camera"
        if not isinstance(cam, Mapping):
            raise DriftReferenceError(f"{w} must be an object or null, got {cam!r}")
        extra = sorted(set(cam) - set(_CAMERA_KEYS))
        if extra:
            raise DriftReferenceError(f"{w}: unknown key(s) {extra}; known: {list(_CAMERA_KEYS)}")
        names = {k: k for k in _CAMERA_KEYS}
    key = {v: k for k, v in names.items()}  # field → key in this schema
    gain = _number(cam, key["gain_counts_per_e"], w, minimum=0.0, strict=True, allow_none=True)
    offset = _number(cam, key["offset_counts"], w, default=0.0)
    read = _number(cam, key["read_noise_counts"], w, minimum=0.0, default=0.0)
    factor = _number(cam, key["noise_factor"], w, minimum=0.0, strict=True, default=1.0)
    assert offset is not None and read is not None and factor is not None
    return CameraCalibration(gain_counts_per_e=gain, offset_counts=offset, read_noise_counts=read, noise_factor=factor)


def parse_drift_reference(data: Mapping[str, Any] | None) -> DriftReference:
    """Strictly parse ``card.drift_reference`` (None → an empty reference). Raises
    :class:`DriftReferenceError` naming the bad key, e.g.
    ``drift_reference.signals.entropy_foreground.scale must be > 0, got 0.0``."""
    if data is None:
        return DriftReference()
    where = "drift_reference"
    if not isinstance(data, Mapping):
        raise DriftReferenceError(f"{where} must be an object or null, got {data!r}")
    schema = _schema_of(data, where)
    unknown = sorted(set(data) - set(_TOP_KEYS[schema]))
    if unknown:
        moved = [k for k in unknown if schema == 2 and k in SCHEMA1_CAMERA_KEYS]
        hint = (f" (schema 2 keeps them in calibration_camera: "
                f"{', '.join(f'{k} -> calibration_camera.{SCHEMA1_CAMERA_KEYS[k]}' for k in moved)})" if moved else "")
        raise DriftReferenceError(f"{where}: unknown key(s) {unknown} in schema {schema}{hint}; "
                                  f"known: {list(_TOP_KEYS[schema])}")
    camera = _parse_camera(data, schema, where)
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
    return DriftReference(camera=camera, signals=signals, cusum=cusum, schema=schema, raw=dict(data))


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
