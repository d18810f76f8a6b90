"""The frame header schema: required keys, metadata keys with units, limits that refuse input
before anything is allocated (:class:`FrameLimits`), and :func:`parse_header`, which validates a
header map into a :class:`FrameHeader`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from fringelive.daemon.protocol.errors import ProtocolError
from fringelive.daemon.protocol.wire import (BYTEORDERS, DEFAULT_DTYPE, PROTOCOL_VERSION, _is_int, _is_number, _short,
                                             _type_name)
from fringelive.engine.frame import ALLOWED_DTYPES, METADATA_KEYS, FrameMetadata

__all__ = ["REQUIRED_KEYS", "MAX_SERIES_LENGTH", "MAX_FRAME_INDEX", "FrameLimits", "FrameHeader", "Frame",
           "parse_header"]

REQUIRED_KEYS: tuple[str, ...] = ("version", "series", "frame", "shape")
_KNOWN_KEYS = frozenset(REQUIRED_KEYS + ("dtype", "byteorder") + METADATA_KEYS)
MAX_SERIES_LENGTH = 256
MAX_FRAME_INDEX = 2**63 - 1
_META_FIELDS = frozenset(f.name for f in fields(FrameMetadata))


@dataclass(frozen=True)
class FrameLimits:
    """Refuse input before allocating for it.

    ``max_side`` (px) bounds height and width, ``max_pixels`` (px) their product, ``min_side``
    (px) is the smallest height and width the served pipeline can process (the daemon sets it
    from its bundles' preprocessing, :func:`fringelive.engine.preprocess.min_frame_side`),
    ``max_message_bytes`` the sum of all parts (bytes; the daemon also sets ZMQ_MAXMSGSIZE to it,
    which ZeroMQ applies per part), ``max_header_bytes`` the msgpack header part (bytes).
    """

    max_pixels: int = 4096 * 4096
    max_side: int = 8192
    max_message_bytes: int = 4 * 4096 * 4096 + 2**20
    max_header_bytes: int = 256 * 1024
    min_side: int = 1

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_side", "max_message_bytes", "max_header_bytes", "min_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class FrameHeader:
    """A validated frame header. ``shape`` is (height, width) px; ``dtype`` a numpy name from
    :data:`ALLOWED_DTYPES`; ``byteorder`` the wire byte order ("little" | "big"); ``meta`` the
    frame's typed metadata (:class:`~fringelive.engine.frame.FrameMetadata`: ``pixel_size_nm``,
    ``dose_e_per_A2`` (derived as ``dose_rate_e_per_A2_s × exposure_s`` when only those were
    sent), ..., the camera's constants, and every unknown header key verbatim in ``extra``).
    Its fields read as attributes of the header too (``h.pixel_size_nm``, ``h.extra``).
    """

    series: str
    frame: int
    shape: tuple[int, int]
    dtype: str = DEFAULT_DTYPE
    byteorder: str = "little"
    version: int = PROTOCOL_VERSION
    meta: FrameMetadata = field(default_factory=FrameMetadata)

    def __getattr__(self, name: str) -> Any:  # the metadata's fields, e.g. h.pixel_size_nm
        if name in _META_FIELDS:
            return getattr(self.meta, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def nbytes(self) -> int:
        """Expected size of the pixels part (bytes)."""
        return self.shape[0] * self.shape[1] * np.dtype(self.dtype).itemsize

    def metadata(self) -> dict[str, Any]:
        """The metadata keys that are set, without the unknown ones (``extra``)."""
        out = self.meta.to_dict()
        return {k: out[k] for k in METADATA_KEYS if k in out}

    def to_dict(self) -> dict[str, Any]:
        """The header as a wire map: required keys, dtype/byteorder, set metadata, extra keys."""
        out: dict[str, Any] = dict(self.meta.extra)
        out.update(version=self.version, series=self.series, frame=self.frame,
                   shape=[self.shape[0], self.shape[1]], dtype=self.dtype,
                   byteorder=self.byteorder)
        out.update(self.metadata())
        return out


@dataclass(frozen=True, eq=False)
class Frame:
    """A decoded frame: ``pixels`` (H, W) of ``header.dtype`` in native byte order.

    When the wire order is native the array is a view of the received buffer (zero-copy; it is
    read-only when the buffer is, e.g. ``bytes``: copy before writing); otherwise it is a
    byte-swapped copy.
    """

    header: FrameHeader
    pixels: np.ndarray


def _check_number(header: dict, key: str, *, positive: bool = False, nonnegative: bool = False,
                  series: str | None, frame: int | None) -> float | None:
    value = header.get(key)
    if value is None:
        return None
    if not _is_number(value):
        raise ProtocolError("bad_type", f"{key} must be a number, got {_type_name(value)} "
                                        f"{_short(value)}", series, frame)
    value = float(value) if not isinstance(value, float) else value
    if not math.isfinite(value):
        raise ProtocolError("bad_value", f"{key} must be finite, got {value!r}", series, frame)
    if positive and value <= 0:
        raise ProtocolError("bad_value", f"{key} must be > 0, got {value!r}", series, frame)
    if nonnegative and value < 0:
        raise ProtocolError("bad_value", f"{key} must be >= 0, got {value!r}", series, frame)
    return value


def parse_header(header: Mapping[str, Any], limits: FrameLimits | None = None) -> FrameHeader:
    """Validate a header map (already msgpack-decoded) into a :class:`FrameHeader`.

    Raises :class:`ProtocolError`; checks ``shape`` against ``limits`` when given (except
    ``min_side``: :func:`~fringelive.daemon.protocol.decode.decode_frame` checks that last, so a
    small frame with a worse fault reports the worse one).
    """
    if not isinstance(header, Mapping):
        raise ProtocolError("bad_header", f"header must be a map, got {_type_name(header)}")
    # Best-effort identification first, so every later error can name the frame.
    series = header.get("series") if isinstance(header.get("series"), str) else None
    if series is not None and len(series) > MAX_SERIES_LENGTH:
        series = series[:MAX_SERIES_LENGTH]
    frame_value = header.get("frame")
    frame = frame_value if _is_int(frame_value) and 0 <= frame_value <= MAX_FRAME_INDEX else None

    if "version" not in header:
        raise ProtocolError("missing_key", "header has no 'version' key", series, frame)
    version = header["version"]
    if not _is_int(version):
        raise ProtocolError("bad_type", f"version must be an integer, got {_type_name(version)} "
                                        f"{_short(version)}", series, frame)
    if version != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"version {version} is not supported "
                                           f"(this daemon speaks {PROTOCOL_VERSION})", series, frame)
    for key in REQUIRED_KEYS:
        if key not in header:
            raise ProtocolError("missing_key", f"header has no {key!r} key", series, frame)

    raw_series = header["series"]
    if not isinstance(raw_series, str):
        raise ProtocolError("bad_type", f"series must be a string, got {_type_name(raw_series)} "
                                        f"{_short(raw_series)}", None, frame)
    if not raw_series or len(raw_series) > MAX_SERIES_LENGTH:
        raise ProtocolError("bad_value", f"series must have 1..{MAX_SERIES_LENGTH} characters, "
                                         f"got {len(raw_series)}", series, frame)
    if not _is_int(frame_value):
        raise ProtocolError("bad_type", f"frame must be an integer, got {_type_name(frame_value)} "
                                        f"{_short(frame_value)}", series, None)
    if not 0 <= frame_value <= MAX_FRAME_INDEX:
        raise ProtocolError("bad_value", f"frame must be in 0..2**63-1, got {frame_value}",
                            series, None)

    shape = header["shape"]
    if (not isinstance(shape, (list, tuple)) or len(shape) != 2
            or not all(_is_int(s) for s in shape)):
        raise ProtocolError("bad_shape", f"shape must be [height, width] (2 integers), got "
                                         f"{_short(shape)}", series, frame)
    height, width = int(shape[0]), int(shape[1])
    if height <= 0 or width <= 0:
        raise ProtocolError("bad_shape", f"shape must be 2 integers > 0, got [{height}, {width}]",
                            series, frame)
    if limits is not None:
        if max(height, width) > limits.max_side:
            raise ProtocolError("shape_limit", f"shape [{height}, {width}] has a side above "
                                               f"max_side {limits.max_side} px", series, frame)
        if height * width > limits.max_pixels:
            raise ProtocolError("shape_limit", f"shape [{height}, {width}] has {height * width} "
                                               f"pixels, above max_pixels {limits.max_pixels}",
                                series, frame)

    dtype = header.get("dtype", DEFAULT_DTYPE)
    if not isinstance(dtype, str):
        raise ProtocolError("bad_type", f"dtype must be a string, got {_type_name(dtype)} "
                                        f"{_short(dtype)}", series, frame)
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolError("bad_dtype", f"dtype {_short(dtype)} is not one of "
                                         f"{', '.join(ALLOWED_DTYPES)}", series, frame)
    byteorder = header.get("byteorder", "little")
    if not isinstance(byteorder, str):
        raise ProtocolError("bad_type", f"byteorder must be a string, got "
                                        f"{_type_name(byteorder)} {_short(byteorder)}",
                            series, frame)
    if byteorder not in BYTEORDERS:
        raise ProtocolError("bad_value", f"byteorder must be 'little' or 'big', got "
                                         f"{_short(byteorder)}", series, frame)

    kw: dict[str, Any] = {}
    for key in ("pixel_size_nm", "magnification", "voltage_kv", "exposure_s"):
        kw[key] = _check_number(header, key, positive=True, series=series, frame=frame)
    for key in ("dose_e_per_A2", "dose_rate_e_per_A2_s", "timestamp"):
        kw[key] = _check_number(header, key, nonnegative=True, series=series, frame=frame)
    kw["defocus_nm"] = _check_number(header, "defocus_nm", series=series, frame=frame)
    kw["camera_gain_counts_per_e"] = _check_number(header, "camera_gain_counts_per_e", positive=True, series=series,
                                                   frame=frame)
    kw["camera_offset_counts"] = _check_number(header, "camera_offset_counts", series=series, frame=frame)
    kw["camera_read_noise_counts"] = _check_number(header, "camera_read_noise_counts", nonnegative=True, series=series,
                                                   frame=frame)
    if kw["dose_e_per_A2"] is None and kw["dose_rate_e_per_A2_s"] is not None \
            and kw["exposure_s"] is not None:
        kw["dose_e_per_A2"] = kw["dose_rate_e_per_A2_s"] * kw["exposure_s"]
    camera = header.get("camera")
    if camera is not None and not isinstance(camera, str):
        raise ProtocolError("bad_type", f"camera must be a string, got {_type_name(camera)} "
                                        f"{_short(camera)}", series, frame)
    tags = header.get("tags")
    if tags is None:
        tags = {}
    if not isinstance(tags, dict):
        raise ProtocolError("bad_type", f"tags must be a map, got {_type_name(tags)} "
                                        f"{_short(tags)}", series, frame)
    if any(not isinstance(k, str) for k in tags):
        raise ProtocolError("bad_type", "tags keys must be strings, got "
                                        f"{_short(next(k for k in tags if not isinstance(k, str)))}",
                            series, frame)
    extra = {k: v for k, v in header.items() if k not in _KNOWN_KEYS}
    return FrameHeader(series=raw_series, frame=frame_value, shape=(height, width), dtype=dtype,
                       byteorder=byteorder, version=version,
                       meta=FrameMetadata(camera=camera, tags=tags, extra=extra, **kw))
