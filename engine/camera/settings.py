"""Camera constants: :class:`CameraSettings`, their precedence (:func:`resolve_camera`) and
counts ↔ electrons. The physics is in the package docstring (``fringelive.engine.camera``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from fringelive.engine.frame import FrameMetadata

if TYPE_CHECKING:
    from .transfer import PhotonTransferResult

__all__ = ["HEADER_KEYS", "CameraError", "CameraSettings", "header_camera", "resolve_camera", "counts_to_electrons",
           "electrons_to_counts"]

#: Frame-header keys (docs/protocol.md) → CameraSettings fields; they override ``[camera]`` per frame.
HEADER_KEYS: dict[str, str] = {
    "camera_gain_counts_per_e": "gain_counts_per_e",
    "camera_offset_counts": "offset_counts",
    "camera_read_noise_counts": "read_noise_counts",
}


class CameraError(ValueError):
    """Bad camera constants; the message names the key and the value."""


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CameraError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise CameraError(f"{name} must be finite, got {value!r}")
    return v


@dataclass(frozen=True)
class CameraSettings:
    """The camera the frames come from (the daemon's ``[camera]`` section).

    name: free text (e.g. ``"K3 counting"``); gain_counts_per_e: counts per electron, > 0
    (None = unknown); offset_counts: dark level added to every pixel, counts (None = unknown);
    read_noise_counts: rms read noise, counts, ≥ 0; noise_factor: true ÷ apparent shot-noise
    electrons of the Laplacian variance (1 = white noise, < 1 with a detector MTF), in (0, 1.5].
    """

    name: str = ""
    gain_counts_per_e: float | None = None
    offset_counts: float | None = None
    read_noise_counts: float = 0.0
    noise_factor: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise CameraError(f"name must be a string, got {self.name!r}")
        if self.gain_counts_per_e is not None:
            g = _finite("gain_counts_per_e", self.gain_counts_per_e)
            if not g > 0:
                raise CameraError(f"gain_counts_per_e must be > 0 counts/e (or absent = unknown), got {g!r}")
            object.__setattr__(self, "gain_counts_per_e", g)
        if self.offset_counts is not None:
            object.__setattr__(self, "offset_counts", _finite("offset_counts", self.offset_counts))
        r = _finite("read_noise_counts", self.read_noise_counts)
        if r < 0:
            raise CameraError(f"read_noise_counts must be >= 0 counts rms, got {r!r}")
        object.__setattr__(self, "read_noise_counts", r)
        f = _finite("noise_factor", self.noise_factor)
        if not 0 < f <= 1.5:
            raise CameraError(f"noise_factor must be in (0, 1.5] (true / apparent electrons), got {f!r}")
        object.__setattr__(self, "noise_factor", f)

    @property
    def known(self) -> bool:
        """Gain and offset both known: counts can be turned into electrons."""
        return self.gain_counts_per_e is not None and self.offset_counts is not None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, where: str = "camera") -> "CameraSettings":
        """Strictly from a TOML section / JSON object (unknown keys fail, naming them)."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise CameraError(f"{where} must be a table, got {data!r}")
        names = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CameraError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        return cls(**dict(data))

    def with_header(self, meta: FrameMetadata | Mapping[str, Any] | None) -> "CameraSettings":
        """These settings overridden by a frame's ``camera_*`` metadata (:data:`HEADER_KEYS`)."""
        changes = header_camera(meta)
        if not changes:
            return self
        try:
            return replace(self, **changes)
        except CameraError as e:  # name the header key, not the config key
            raise CameraError(f"frame header camera_{e}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def header_camera(meta: FrameMetadata | Mapping[str, Any] | None) -> dict[str, float]:
    """The camera constants a frame's metadata sets: ``{CameraSettings field: value}``."""
    m = FrameMetadata.of(meta)
    return {field_: getattr(m, key) for key, field_ in HEADER_KEYS.items() if getattr(m, key) is not None}


def resolve_camera(config: CameraSettings | None, meta: FrameMetadata | Mapping[str, Any] | None = None,
                   card_fallback: CameraSettings | None = None, learned: "PhotonTransferResult | None" = None
                   ) -> tuple[CameraSettings, dict[str, str]]:
    """The camera for one frame and where each constant came from.

    Precedence per constant: frame header > ``[camera]`` config > a *confident* learned fit >
    the bundle card's ``drift_reference`` (legacy fallback) > unknown. Returns ``(settings,
    sources)`` with ``sources[field] in {"header", "config", "learned", "card", "default"}``.
    """
    config = config or CameraSettings()
    out: dict[str, Any] = {}
    sources: dict[str, str] = {}
    learned_vals: dict[str, Any] = {}
    if learned is not None and learned.confident:
        learned_vals = {"gain_counts_per_e": learned.gain_counts_per_e, "offset_counts": learned.offset_counts,
                        "read_noise_counts": learned.read_noise_counts, "noise_factor": learned.noise_factor}
    header_vals = header_camera(meta)
    defaults = CameraSettings()
    for f in ("gain_counts_per_e", "offset_counts", "read_noise_counts", "noise_factor"):
        cfg_v = getattr(config, f)
        cfg_set = cfg_v is not None and (f in ("gain_counts_per_e", "offset_counts") or cfg_v != getattr(defaults, f))
        card_v = None if card_fallback is None else getattr(card_fallback, f)
        if f in header_vals:
            out[f], sources[f] = header_vals[f], "header"
        elif cfg_set:
            out[f], sources[f] = cfg_v, "config"
        elif learned_vals.get(f) is not None:
            out[f], sources[f] = learned_vals[f], "learned"
        elif card_v is not None and (f in ("gain_counts_per_e", "offset_counts") or card_v != getattr(defaults, f)):
            out[f], sources[f] = card_v, "card"
        else:
            out[f], sources[f] = getattr(defaults, f), "default"
    try:
        return CameraSettings(name=config.name, **out), sources
    except CameraError as e:
        bad = [f for f in out if f in str(e)]
        where = sources.get(bad[0], "?") if bad else "?"
        raise CameraError(f"{e} (from {where})") from None


def counts_to_electrons(counts: np.ndarray | float, camera: CameraSettings) -> np.ndarray | float:
    """``(counts − offset) / gain`` electrons; :class:`CameraError` when either is unknown."""
    if not camera.known:
        raise CameraError("counts → electrons needs camera.gain_counts_per_e and camera.offset_counts "
                          f"(got gain {camera.gain_counts_per_e!r}, offset {camera.offset_counts!r})")
    return (np.asarray(counts, dtype=np.float64) - camera.offset_counts) / camera.gain_counts_per_e


def electrons_to_counts(electrons: np.ndarray | float, camera: CameraSettings) -> np.ndarray | float:
    """``offset + gain · electrons`` counts (the mean; no noise)."""
    if not camera.known:
        raise CameraError("electrons → counts needs camera.gain_counts_per_e and camera.offset_counts")
    return camera.offset_counts + camera.gain_counts_per_e * np.asarray(electrons, dtype=np.float64)
