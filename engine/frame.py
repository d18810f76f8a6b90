"""What a frame is to the engine: the pixel dtypes it accepts and the metadata keys with a fixed
meaning (units in the key names). The wire protocol (``fringelive.daemon.protocol``) validates
these on receipt; the file readers (``fringelive.engine.readers``) produce them."""

from __future__ import annotations

__all__ = ["ALLOWED_DTYPES", "METADATA_KEYS"]

#: Pixel dtypes accepted on the wire (numpy names).
ALLOWED_DTYPES: tuple[str, ...] = ("uint8", "uint16", "uint32", "int16", "float32")

#: Optional metadata keys with a fixed meaning (units in the key names).
METADATA_KEYS: tuple[str, ...] = (
    "pixel_size_nm", "dose_e_per_A2", "dose_rate_e_per_A2_s", "exposure_s", "magnification",
    "voltage_kv", "defocus_nm", "timestamp", "camera", "tags",
)
