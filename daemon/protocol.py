"""The fringelive wire protocol (version 1): frames in, results and errors out.

Spec and examples: ``docs/protocol.md``. Everything here is pure (bytes ↔ arrays, no sockets,
no threads) except :func:`configure_curve_client`, which sets options on a socket it is given.

Messages (ZeroMQ multipart):

* frame  ``[header, pixels]`` — msgpack map + raw C-ordered pixel buffer (H × W × itemsize bytes)
* result ``[b"result", header, mask (, probabilities)]`` — ``np.packbits`` of the (H, W) bool mask
  (C order, bit order "big"); optional float16 little-endian class-1 probabilities (H, W)
* error  ``[b"error", header]`` — ``reason`` (stable code), ``detail`` (human text), series/frame
  (and ``worker``, the reporting daemon's name; decoders accept headers without it)

:func:`decode_frame` never allocates from header values before they passed the limits in
:class:`FrameLimits`, and raises only :class:`ProtocolError` (reason in :data:`REJECT_REASONS`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from fringelive.engine.frame import ALLOWED_DTYPES, METADATA_KEYS

PROTOCOL_VERSION = 1

DEFAULT_INGEST_ENDPOINT = "tcp://127.0.0.1:5555"    # daemon PULL binds, senders PUSH connect
DEFAULT_RESULTS_ENDPOINT = "tcp://127.0.0.1:5556"   # daemon PUB binds, subscribers SUB connect
DEFAULT_CONTROL_ENDPOINT = "tcp://127.0.0.1:5557"   # daemon REP binds, clients REQ connect
DEFAULT_METRICS_ADDRESS = ("127.0.0.1", 9108)       # Prometheus text format at /metrics

RESULT_TOPIC = b"result"
ERROR_TOPIC = b"error"

DEFAULT_DTYPE = "uint16"
BYTEORDERS: tuple[str, ...] = ("little", "big")

#: Stable reason codes for rejected input; the only reasons :func:`decode_frame` raises.
REJECT_REASONS: tuple[str, ...] = (
    "bad_parts",      # not exactly [header, pixels], or a part that is not a byte buffer
    "too_large",      # message or header larger than FrameLimits allows
    "bad_msgpack",    # header part is not one valid msgpack object
    "bad_header",     # header is not a map, or has non-string keys
    "bad_version",    # version is not 1
    "missing_key",    # a required key is absent
    "bad_type",       # a key has the wrong type (e.g. frame is a string)
    "bad_value",      # right type, impossible value (negative frame, byteorder "middle", ...)
    "bad_dtype",      # dtype not in ALLOWED_DTYPES
    "bad_shape",      # shape is not [height, width] with two integers > 0
    "shape_limit",    # shape exceeds FrameLimits.max_side / max_pixels
    "size_mismatch",  # pixel byte count != height × width × itemsize
    "non_finite",     # float32 pixels contain NaN or ±Inf
)

#: Reasons the daemon may publish for input that decoded fine but could not be processed.
#: ``encode_error`` accepts these and :data:`REJECT_REASONS`.
PROCESSING_REASONS: tuple[str, ...] = (
    "pipeline_error",  # the segmentation pipeline raised for this frame; detail has the exception
    "internal_error",  # a daemon bug (e.g. the decoder raised something unexpected)
    "overloaded",      # dropped: queue full under the drop-oldest policy, a newer frame won
    "shutdown",        # dropped: still queued when the drain timeout ran out at shutdown
)
ERROR_REASONS: tuple[str, ...] = REJECT_REASONS + PROCESSING_REASONS

REQUIRED_KEYS: tuple[str, ...] = ("version", "series", "frame", "shape")
_KNOWN_KEYS = frozenset(REQUIRED_KEYS + ("dtype", "byteorder") + METADATA_KEYS)
MAX_SERIES_LENGTH = 256
MAX_FRAME_INDEX = 2**63 - 1
_REASON_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class ProtocolError(ValueError):
    """A message violates the protocol.

    ``reason`` is a stable code (one of :data:`ERROR_REASONS`), ``detail`` human text naming the
    bad value; ``series``/``frame`` are filled when the header got far enough to tell them.
    """

    def __init__(self, reason: str, detail: str, series: str | None = None,
                 frame: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.series = series
        self.frame = frame

    def to_parts(self) -> list[bytes]:
        """The ``[b"error", header]`` message reporting this error."""
        return encode_error(self.reason, self.detail, series=self.series, frame=self.frame)


@dataclass(frozen=True)
class FrameLimits:
    """Refuse input before allocating for it.

    ``max_side`` (px) bounds height and width, ``max_pixels`` (px) their product,
    ``max_message_bytes`` the sum of all parts (bytes; the daemon also sets ZMQ_MAXMSGSIZE to it,
    which ZeroMQ applies per part), ``max_header_bytes`` the msgpack header part (bytes).
    """

    max_pixels: int = 4096 * 4096
    max_side: int = 8192
    max_message_bytes: int = 4 * 4096 * 4096 + 2**20
    max_header_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_side", "max_message_bytes", "max_header_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class FrameHeader:
    """A validated frame header. ``shape`` is (height, width) px; ``dtype`` a numpy name from
    :data:`ALLOWED_DTYPES`; ``byteorder`` the wire byte order ("little" | "big").

    Metadata (``None`` when absent): ``pixel_size_nm`` (nm/px), ``dose_e_per_A2`` (e/Å² per frame;
    derived as ``dose_rate_e_per_A2_s × exposure_s`` when only those were sent),
    ``dose_rate_e_per_A2_s`` (e/Å²/s), ``exposure_s`` (s), ``magnification`` (×), ``voltage_kv``
    (kV), ``defocus_nm`` (nm, negative = underfocus), ``timestamp`` (Unix s), ``camera`` (name),
    ``tags`` (free map). Unknown header keys are kept verbatim in ``extra``.
    """

    series: str
    frame: int
    shape: tuple[int, int]
    dtype: str = DEFAULT_DTYPE
    byteorder: str = "little"
    version: int = PROTOCOL_VERSION
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
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Expected size of the pixels part (bytes)."""
        return self.shape[0] * self.shape[1] * np.dtype(self.dtype).itemsize

    def metadata(self) -> dict[str, Any]:
        """The metadata keys that are set (e.g. for drift checks and result headers)."""
        out: dict[str, Any] = {}
        for key in METADATA_KEYS:
            value = getattr(self, key)
            if value is not None and not (key == "tags" and not value):
                out[key] = dict(value) if key == "tags" else value
        return out

    def to_dict(self) -> dict[str, Any]:
        """The header as a wire map: required keys, dtype/byteorder, set metadata, extra keys."""
        out: dict[str, Any] = dict(self.extra)
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


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (details must stay one short line)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ cannot come off msgpack, but be safe
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    return {dict: "map", list: "array", str: "string", bytes: "binary", bool: "bool", int: "int",
            float: "float", type(None): "nil"}.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_bytes_view(part: Any, index: int) -> memoryview:
    """A flat unsigned-byte view of a message part (bytes, bytearray, memoryview, zmq.Frame)."""
    buffer = getattr(part, "buffer", None)  # zmq.Frame / zmq.Message: view of the message data
    source = buffer if buffer is not None else part
    if isinstance(source, (str, int, float)) or source is None:
        raise ProtocolError("bad_parts", f"part {index} is a {type(part).__name__}, "
                                         "expected a byte buffer")
    try:
        view = memoryview(source)
        if not view.c_contiguous:
            raise ValueError("memory is not C-contiguous")
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
    except (TypeError, ValueError) as e:
        raise ProtocolError("bad_parts", f"part {index} ({type(part).__name__}) is not a "
                                         f"contiguous byte buffer: {e}") from None
    return view


def _msgpack_default(obj: Any) -> Any:
    """Let headers carry numpy scalars/arrays, tuples-as-arrays and paths."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} in a msgpack header")


def packb(obj: Any) -> bytes:
    """msgpack-encode a header (numpy scalars/arrays become plain numbers/lists)."""
    return msgpack.packb(obj, use_bin_type=True, default=_msgpack_default)


def _unpack_map(data: memoryview, what: str, series: str | None = None,
                frame: int | None = None) -> dict:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as e:  # noqa: BLE001 - msgpack raises many types for corrupt input
        why = f"{type(e).__name__}: {_short(str(e), 80)}" if str(e) else type(e).__name__
        raise ProtocolError("bad_msgpack", f"{what} is not one valid msgpack object ({why})",
                            series, frame) from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_header", f"{what} must be a msgpack map, got {_type_name(obj)} "
                                          f"{_short(obj)}", series, frame)
    bad_keys = [k for k in obj if not isinstance(k, str)]
    if bad_keys:
        raise ProtocolError("bad_header", f"{what} keys must be strings, got "
                                          f"{_short(bad_keys[0])}", series, frame)
    return obj


# --------------------------------------------------------------------------------------------
# frames
# --------------------------------------------------------------------------------------------

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

    Raises :class:`ProtocolError`; checks ``shape`` against ``limits`` when given.
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
                       byteorder=byteorder, version=version, camera=camera, tags=tags,
                       extra=extra, **kw)


def decode_frame(parts: Sequence[Any], limits: FrameLimits | None = None) -> Frame:
    """Decode ``[header, pixels]`` (bytes, memoryview or ``zmq.Frame`` from
    ``recv_multipart(copy=False)``) into a :class:`Frame`.

    Order of checks: part count/types, total and header size (``too_large``), msgpack, header
    keys and types, shape against ``limits`` (before touching the pixels), byte count, finite
    float pixels. Nothing is allocated from header values; native-order pixels are a zero-copy
    view of the pixel part. Raises only :class:`ProtocolError`.
    """
    limits = limits if limits is not None else FrameLimits()
    try:
        n_parts = len(parts)
    except TypeError:
        raise ProtocolError("bad_parts", f"message must be a sequence of parts, got "
                                         f"{type(parts).__name__}") from None
    if n_parts != 2:
        raise ProtocolError("bad_parts", f"a frame has 2 parts [header, pixels], got {n_parts}")
    header_view = _as_bytes_view(parts[0], 0)
    pixel_view = _as_bytes_view(parts[1], 1)
    total = header_view.nbytes + pixel_view.nbytes
    if total > limits.max_message_bytes:
        raise ProtocolError("too_large", f"message has {total} bytes, above max_message_bytes "
                                         f"{limits.max_message_bytes}")
    if header_view.nbytes > limits.max_header_bytes:
        raise ProtocolError("too_large", f"header has {header_view.nbytes} bytes, above "
                                         f"max_header_bytes {limits.max_header_bytes}")
    header = parse_header(_unpack_map(header_view, "header"), limits)

    expected = header.nbytes
    if pixel_view.nbytes != expected:
        h, w = header.shape
        raise ProtocolError("size_mismatch", f"pixels part has {pixel_view.nbytes} bytes, shape "
                                             f"[{h}, {w}] × {header.dtype} needs {expected}",
                            header.series, header.frame)
    wire = np.dtype(header.dtype).newbyteorder("<" if header.byteorder == "little" else ">")
    pixels = np.frombuffer(pixel_view, dtype=wire).reshape(header.shape)
    if not wire.isnative:
        pixels = pixels.astype(wire.newbyteorder("="))
    if pixels.dtype.kind == "f":
        # float64 accumulation cannot overflow for finite float32 input; no (H, W) temporary.
        with np.errstate(invalid="ignore", over="ignore"):
            total = float(np.sum(pixels, dtype=np.float64))
        if not math.isfinite(total):
            bad = int(np.count_nonzero(~np.isfinite(pixels)))
            raise ProtocolError("non_finite", f"{bad} of {pixels.size} float32 pixels are NaN "
                                              "or infinite", header.series, header.frame)
    return Frame(header=header, pixels=pixels)


def encode_frame(pixels: np.ndarray, *, series: str, frame: int, **meta: Any) -> list[bytes]:
    """Encode a (H, W) array as ``[header, pixels]``.

    ``meta``: any metadata keys (``pixel_size_nm``, ``dose_e_per_A2``, ``tags``, ...) and extra
    keys to pass through. The dtype must be in :data:`ALLOWED_DTYPES`; the byte order is taken
    from the array. Raises ``ValueError`` naming the bad value (the header is validated with the
    decoder's rules; pixel values are not checked, so NaN test frames can be made).
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2:
        raise ValueError(f"pixels must be a 2-D (H, W) array, got shape {arr.shape}")
    if arr.dtype.name not in ALLOWED_DTYPES:
        raise ValueError(f"pixels dtype must be one of {', '.join(ALLOWED_DTYPES)}, "
                         f"got {arr.dtype.name}")
    for key in ("version", "shape", "dtype", "byteorder"):
        if key in meta:
            raise ValueError(f"{key!r} is set by encode_frame from the array, do not pass it")
    order = arr.dtype.byteorder
    big = order == ">" or (order == "=" and np.little_endian is False)
    header = {"version": PROTOCOL_VERSION, "series": series, "frame": frame,
              "shape": [int(arr.shape[0]), int(arr.shape[1])], "dtype": arr.dtype.name,
              "byteorder": "big" if big else "little"}
    header.update({k: v for k, v in meta.items() if v is not None})
    try:
        encoded = packb(header)
        parse_header(msgpack.unpackb(encoded, raw=False, strict_map_key=False))
    except ProtocolError as e:
        raise ValueError(f"invalid frame header ({e.reason}): {e.detail}") from None
    except TypeError as e:
        raise ValueError(f"invalid frame header: {e}") from None
    return [encoded, np.ascontiguousarray(arr).tobytes()]


# --------------------------------------------------------------------------------------------
# results and errors
# --------------------------------------------------------------------------------------------

def encode_result(header: Mapping[str, Any], mask: np.ndarray,
                  probabilities: np.ndarray | None = None) -> list[bytes]:
    """Encode ``[b"result", header, packbits(mask) (, float16 probabilities)]``.

    ``header``: series, frame, worker, model, particle_count, particles, area_fraction, drift,
    timings_ms, queue_depth, ... (numpy scalars allowed). ``mask`` (H, W) bool; ``probabilities``
    (H, W) class-1 probability, sent as float16 little-endian. Adds ``version``, ``mask``
    ({shape, encoding: "packbits", bitorder: "big"}) and ``probabilities`` descriptors.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D (H, W) array, got shape {mask.shape}")
    if not isinstance(header, Mapping):
        raise ValueError(f"header must be a mapping, got {type(header).__name__}")
    h, w = (int(mask.shape[0]), int(mask.shape[1]))
    out = dict(header)
    out.setdefault("version", PROTOCOL_VERSION)
    out["mask"] = {"shape": [h, w], "encoding": "packbits", "bitorder": "big"}
    parts = [RESULT_TOPIC, b"", np.packbits(mask.astype(bool, copy=False), axis=None).tobytes()]
    if probabilities is not None:
        probs = np.asarray(probabilities)
        if probs.shape != mask.shape:
            raise ValueError(f"probabilities shape {probs.shape} differs from mask shape "
                             f"{mask.shape}")
        out["probabilities"] = {"shape": [h, w], "dtype": "float16", "byteorder": "little"}
        parts.append(np.ascontiguousarray(probs, dtype="<f2").tobytes())
    else:
        out.pop("probabilities", None)
    parts[1] = packb(out)
    return parts


def _descriptor_shape(header: dict, key: str) -> tuple[int, int]:
    desc = header.get(key)
    if not isinstance(desc, dict):
        raise ProtocolError("missing_key" if desc is None else "bad_type",
                            f"result header needs a {key!r} map, got {_short(desc)}")
    shape = desc.get("shape")
    if (not isinstance(shape, list) or len(shape) != 2 or not all(_is_int(s) for s in shape)
            or min(shape) <= 0):
        raise ProtocolError("bad_shape", f"{key}.shape must be 2 integers > 0, got "
                                         f"{_short(shape)}")
    return int(shape[0]), int(shape[1])


def decode_result(parts: Sequence[Any]) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """Decode ``[b"result", header, mask (, probabilities)]`` into ``(header, mask (H, W) bool,
    probabilities (H, W) float16 or None)``. Raises :class:`ProtocolError`."""
    if len(parts) not in (3, 4):
        raise ProtocolError("bad_parts", f"a result has 3 or 4 parts, got {len(parts)}")
    topic = bytes(_as_bytes_view(parts[0], 0))
    if topic != RESULT_TOPIC:
        raise ProtocolError("bad_parts", f"topic must be b'result', got {_short(topic)}")
    header = _unpack_map(_as_bytes_view(parts[1], 1), "result header")
    series = header.get("series") if isinstance(header.get("series"), str) else None
    frame = header.get("frame") if _is_int(header.get("frame")) else None
    h, w = _descriptor_shape(header, "mask")
    encoding = header["mask"].get("encoding")
    if encoding != "packbits":
        raise ProtocolError("bad_value", f"mask.encoding must be 'packbits', got "
                                         f"{_short(encoding)}", series, frame)
    mask_view = _as_bytes_view(parts[2], 2)
    n_bytes = (h * w + 7) // 8
    if mask_view.nbytes != n_bytes:
        raise ProtocolError("size_mismatch", f"mask part has {mask_view.nbytes} bytes, shape "
                                             f"[{h}, {w}] packs into {n_bytes}", series, frame)
    bits = np.frombuffer(mask_view, dtype=np.uint8)
    mask = np.unpackbits(bits, count=h * w).reshape(h, w).astype(bool)
    probs = None
    if len(parts) == 4:
        ph, pw = _descriptor_shape(header, "probabilities")
        desc = header["probabilities"]
        if desc.get("dtype", "float16") != "float16":
            raise ProtocolError("bad_dtype", f"probabilities.dtype must be 'float16', got "
                                             f"{_short(desc.get('dtype'))}", series, frame)
        order = desc.get("byteorder", "little")
        if order not in BYTEORDERS:
            raise ProtocolError("bad_value", f"probabilities.byteorder must be 'little' or "
                                             f"'big', got {_short(order)}", series, frame)
        view = _as_bytes_view(parts[3], 3)
        if view.nbytes != ph * pw * 2:
            raise ProtocolError("size_mismatch", f"probabilities part has {view.nbytes} bytes, "
                                                 f"[{ph}, {pw}] float16 needs {ph * pw * 2}",
                                series, frame)
        wire = np.dtype("<f2" if order == "little" else ">f2")
        probs = np.frombuffer(view, dtype=wire).reshape(ph, pw).astype(np.float16)
    return header, mask, probs


def encode_error(reason: str, detail: str, series: str | None = None,
                 frame: int | None = None, worker: str | None = None) -> list[bytes]:
    """Encode ``[b"error", {version, reason, detail (, series, frame, worker)}]``.

    ``reason`` should be one of :data:`ERROR_REASONS`; any lower-case snake_case code is
    accepted so the daemon can add codes without breaking old subscribers. ``worker``: the name
    of the daemon that reports it (``[results] worker``); optional on the wire.
    """
    if not isinstance(reason, str) or not _REASON_PATTERN.match(reason):
        raise ValueError(f"reason must be a lower-case snake_case code, got {reason!r}")
    header: dict[str, Any] = {"version": PROTOCOL_VERSION, "reason": reason, "detail": str(detail)}
    if series is not None:
        header["series"] = series
    if frame is not None:
        header["frame"] = frame
    if worker is not None:
        header["worker"] = worker
    return [ERROR_TOPIC, packb(header)]


def decode_error(parts: Sequence[Any]) -> dict[str, Any]:
    """Decode ``[b"error", header]`` into its header map (``reason``, ``detail``, and
    ``series``/``frame`` when known). Raises :class:`ProtocolError`."""
    if len(parts) != 2:
        raise ProtocolError("bad_parts", f"an error message has 2 parts, got {len(parts)}")
    topic = bytes(_as_bytes_view(parts[0], 0))
    if topic != ERROR_TOPIC:
        raise ProtocolError("bad_parts", f"topic must be b'error', got {_short(topic)}")
    header = _unpack_map(_as_bytes_view(parts[1], 1), "error header")
    for key in ("reason", "detail"):
        if not isinstance(header.get(key), str):
            raise ProtocolError("missing_key" if key not in header else "bad_type",
                                f"error header needs a string {key!r}, got "
                                f"{_short(header.get(key))}")
    return header


# --------------------------------------------------------------------------------------------
# CURVE (client side; the daemon's server side lives in server.py)
# --------------------------------------------------------------------------------------------

def configure_curve_client(socket: Any, server_public_key_file: str | Path,
                           client_secret_key_file: str | Path) -> None:
    """Make ``socket`` a CURVE client of a daemon.

    ``server_public_key_file``: the daemon's public certificate (``server.key`` from
    ``zmq.auth.create_certificates``); ``client_secret_key_file``: this client's secret
    certificate (``client.key_secret``), whose public half must be in the daemon's authorised
    keys directory. Call before ``connect``. Raises ``ValueError`` naming the bad file.
    """
    import zmq.auth

    server_public_key_file = Path(server_public_key_file)
    client_secret_key_file = Path(client_secret_key_file)
    for path in (server_public_key_file, client_secret_key_file):
        if not path.is_file():
            raise ValueError(f"CURVE key file not found: {path}")
    try:
        server_public, _ = zmq.auth.load_certificate(server_public_key_file)
        client_public, client_secret = zmq.auth.load_certificate(client_secret_key_file)
    except (ValueError, OSError) as e:
        raise ValueError(f"cannot read CURVE certificate: {e}") from None
    if client_secret is None:
        raise ValueError(f"{client_secret_key_file} holds no secret key; pass the "
                         "'.key_secret' file made by zmq.auth.create_certificates")
    socket.curve_serverkey = server_public
    socket.curve_publickey = client_public
    socket.curve_secretkey = client_secret
