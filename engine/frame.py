"""What a frame is to the engine: the pixel dtypes it accepts and the metadata keys with a fixed
meaning (units in the key names). The wire protocol (``fringelive.daemon.protocol``) validates
these on receipt; the file readers (``fringelive.engine.readers``) produce them."""

from __future__ import annotations

__all__ = ["ALLOWED_DTYPES", "METADATA_KEYS", "STIMULUS_KEYS", "STIMULUS_NAMESPACE", "is_stimulus_key"]

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
