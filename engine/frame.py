"""What a frame is to the engine: the pixel dtypes it accepts, the metadata keys with a fixed
meaning (units in the key names) and :class:`FrameMetadata`, the typed metadata every engine
stage takes. The wire protocol (``fringelive.daemon.protocol``) validates the keys on receipt and
builds a :class:`FrameMetadata`; the file readers (``fringelive.engine.readers``) produce the
same keys; results carry them back to the wire as a map (:meth:`FrameMetadata.to_dict`)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

__all__ = ["ALLOWED_DTYPES", "METADATA_KEYS", "STIMULUS_KEYS", "STIMULUS_NAMESPACE", "is_stimulus_key",
           "FrameMetadata", "positive_number"]

#: Pixel dtypes accepted on the wire (numpy names).
ALLOWED_DTYPES: tuple[str, ...] = ("uint8", "uint16", "uint32", "int16", "float32")

#: Optional metadata keys with a fixed meaning (units in the key names).
METADATA_KEYS: tuple[str, ...] = (
    "pixel_size_nm", "dose_e_per_A2", "dose_rate_e_per_A2_s", "exposure_s", "magnification",
    "voltage_kv", "defocus_nm", "timestamp", "camera", "tags",
    # the camera's constants for this frame (override the daemon's [camera]; docs/drift.md)
    "camera_gain_counts_per_e", "camera_offset_counts", "camera_read_noise_counts",
)

#: Named in situ stimulus keys of the frame header (units in the names), passed through to results
#: and time series (``engine/timeseries.py``); never reported as unknown header keys.
STIMULUS_KEYS: tuple[str, ...] = ("temperature_C", "pressure_Pa")

#: Namespace of free stimulus keys: a top-level ``stimulus`` map (``--meta stimulus.bias_V=2``) or
#: flat keys ``stimulus.<name>``.
STIMULUS_NAMESPACE = "stimulus"


def is_stimulus_key(key: str) -> bool:
    """True for :data:`STIMULUS_KEYS`, the ``stimulus`` map and ``stimulus.<name>`` keys."""
    return key in STIMULUS_KEYS or key == STIMULUS_NAMESPACE or key.startswith(STIMULUS_NAMESPACE + ".")


def positive_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number > 0, else None (absent)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    v = float(value)
    return v if math.isfinite(v) and v > 0 else None


@dataclass(frozen=True)
class FrameMetadata:
    """One frame's metadata at the engine boundary; None = not given. Units in the names:
    ``pixel_size_nm`` (nm/px), ``dose_e_per_A2`` (e/Å² per frame), ``dose_rate_e_per_A2_s``
    (e/Å²/s), ``exposure_s`` (s), ``magnification`` (×), ``voltage_kv`` (kV), ``defocus_nm``
    (nm, negative = underfocus), ``timestamp`` (Unix s), ``camera`` (name), ``tags`` (free map),
    the camera's constants ``camera_gain_counts_per_e`` (counts/e), ``camera_offset_counts``
    (counts), ``camera_read_noise_counts`` (rms counts). ``extra``: every other key of the
    frame's header (``material``, stimulus keys, a site's own keys), kept verbatim.

    Built validated by the wire protocol (``daemon/protocol/header.py``) or leniently from any
    map by :meth:`of` (file readers, tests, the Python API); ``to_dict`` is the wire map.
    """

    pixel_size_nm: float | None = None
    dose_e_per_A2: float | None = None
    dose_rate_e_per_A2_s: float | None = None
    exposure_s: float | None = None
    magnification: float | None = None
    voltage_kv: float | None = None
    defocus_nm: float | None = None
    timestamp: float | None = None
    camera: str | None = None
    tags: Mapping[str, Any] = field(default_factory=dict)
    camera_gain_counts_per_e: float | None = None
    camera_offset_counts: float | None = None
    camera_read_noise_counts: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:  # own copies: the record does not change with the caller's maps
        object.__setattr__(self, "tags", dict(self.tags or {}))
        object.__setattr__(self, "extra", dict(self.extra or {}))

    @classmethod
    def of(cls, meta: "FrameMetadata | Mapping[str, Any] | None") -> "FrameMetadata":
        """``meta`` as is, or a map of wire keys (:data:`METADATA_KEYS`; anything else goes to
        ``extra``). Values are taken as given: the protocol validates wire frames."""
        if isinstance(meta, FrameMetadata):
            return meta
        if meta is None:
            return cls()
        if not isinstance(meta, Mapping):
            raise TypeError(f"frame metadata must be a FrameMetadata or a map, got {type(meta).__name__}")
        known = {k: meta[k] for k in METADATA_KEYS if meta.get(k) is not None}
        tags = known.get("tags")
        if tags is not None and not isinstance(tags, Mapping):
            raise ValueError(f"metadata tags must be a map, got {tags!r}")
        return cls(**known, extra={k: v for k, v in meta.items() if k not in METADATA_KEYS})

    def to_dict(self) -> dict[str, Any]:
        """The wire map: ``extra`` first, then every metadata key that is set (tags when not empty)."""
        out: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name == "tags":
                if value:
                    out["tags"] = dict(value)
            elif value is not None:
                out[f.name] = value
        return out

    @property
    def dose(self) -> float | None:
        """Dose per frame (e/Å²): ``dose_e_per_A2``, else ``dose_rate_e_per_A2_s × exposure_s``;
        non-positive or non-finite values count as absent."""
        dose = positive_number(self.dose_e_per_A2)
        if dose is None:
            rate, exposure = positive_number(self.dose_rate_e_per_A2_s), positive_number(self.exposure_s)
            if rate is not None and exposure is not None:
                dose = rate * exposure
        return dose

    @property
    def material(self) -> str | None:
        """A ``material`` header key, else ``tags.material``; None when neither is a non-empty string."""
        material = self.extra.get("material")
        if not isinstance(material, str):
            material = self.tags.get("material")
        return material.strip() if isinstance(material, str) and material.strip() else None
