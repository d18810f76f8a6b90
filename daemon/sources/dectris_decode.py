"""Pure decoders of the DECTRIS detector stream (no sockets): Stream V1 (multipart JSON + binary,
``dheader-1.0`` / ``dimage-1.0`` + ``dimage_d-1.0`` / ``dseries_end-1.0``) and Stream V2 (one
CBOR map per message: ``start`` / ``image`` / ``end``), with the two DECTRIS compressions in
HDF5 framing (``bslz4``: bitshuffle + LZ4; ``lz4``; ``dectris_compression.py``).

:func:`decode_message` returns a :class:`StreamMessage`; :func:`frame_meta` maps a series' start
(or ``dheader`` config) and an image onto wire metadata (``docs/acquisition.md``):
``exposure_s`` (image ``real_time`` or start ``count_time``, s), ``timestamp`` (``series_date`` +
image ``start_time``, Unix s), ``camera`` (``detector_description``), ``tags`` (detector serial,
series unique id, channel, detector pixel pitch in m: the sensor's, NOT the specimen pixel size).
Every malformed message raises :class:`StreamDecodeError` (reason ``bad_value``-like text).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import numpy as np

from fringelive.daemon.sources.dectris_compression import (StreamDecodeError, _lz4, bslz4_compress, bslz4_decompress,
                                                           lz4_hdf5_compress, lz4_hdf5_decompress)

__all__ = ["StreamDecodeError", "StreamMessage", "decode_message", "decode_v1", "decode_v2", "frame_meta",
           "bslz4_decompress", "LazyArray", "lz4_hdf5_decompress", "bslz4_compress", "lz4_hdf5_compress", "CBOR_TYPED_ARRAY_TAGS"]

#: RFC 8746 typed-array tags → numpy dtypes (the ones a detector sends, and more).
CBOR_TYPED_ARRAY_TAGS: dict[int, str] = {
    64: "u1", 65: ">u2", 66: ">u4", 67: ">u8", 68: "u1", 69: "<u2", 70: "<u4", 71: "<u8",
    72: "i1", 73: ">i2", 74: ">i4", 75: ">i8", 77: "<i2", 78: "<i4", 79: "<i8",
    80: ">f2", 81: ">f4", 82: ">f8", 84: "<f2", 85: "<f4", 86: "<f8",
}
_MDA_ROW_MAJOR, _MDA_COLUMN_MAJOR, _DECTRIS_COMPRESSION, _SELF_DESCRIBE = 40, 1040, 56500, 55799


@dataclass
class StreamMessage:
    """One decoded message. ``kind``: "start" | "image" | "end"; ``version``: 1 or 2; ``series``:
    the series id as text (V2 ``series_unique_id`` else ``series_id``; V1 ``series``);
    ``image_id``: the image number (images); ``channels``: channel name → (H, W) array, V2
    decoded lazily (:meth:`pixels`; V1: one channel, "image"); ``fields``: the message's other fields (start: the series
    configuration; image: ``real_time``, ``start_time``, ``series_date``, ...)."""

    kind: str
    version: int
    series: str
    image_id: int | None = None
    channels: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)

    def pixels(self, channel: str | None = None) -> tuple[str, np.ndarray]:
        """(channel name, (H, W) pixels) of ``channel`` (None: the first); decompresses it."""
        if not self.channels:
            raise StreamDecodeError(f"a {self.kind} message has no image data")
        name = channel if channel is not None else next(iter(self.channels))
        if name not in self.channels:
            raise StreamDecodeError(f"channel {name!r} not in the image (channels: {list(self.channels)})")
        arr = self.channels[name]
        return name, arr.array() if isinstance(arr, LazyArray) else arr


# --- Stream V2 (CBOR) -------------------------------------------------------------------------

class _Compressed:
    """Tag 56500 content, decompressed only when its channel is used."""

    def __init__(self, algorithm: Any, modifier: Any, data: bytes) -> None:
        self.algorithm, self.modifier, self.data = algorithm, modifier, data

    def bytes(self) -> bytes:
        if self.algorithm == "bslz4":
            return bslz4_decompress(self.data, int(self.modifier))
        if self.algorithm == "lz4":
            return lz4_hdf5_decompress(self.data)
        raise StreamDecodeError(f"unknown DECTRIS compression {self.algorithm!r} (known: bslz4, lz4)")


class _Typed:
    def __init__(self, dtype: str, data: Any) -> None:
        self.dtype, self.data = dtype, data


class LazyArray:
    """A tag-40 multi-dimensional array whose (compressed) bytes are decoded on :meth:`array`."""

    def __init__(self, dims: tuple[int, ...], typed: _Typed, order: str) -> None:
        self.shape, self._typed, self._order = dims, typed, order
        self.dtype = np.dtype(typed.dtype).newbyteorder("=")
        self.ndim = len(dims)

    def array(self) -> np.ndarray:
        data = self._typed.data.bytes() if isinstance(self._typed.data, _Compressed) else self._typed.data
        dtype = np.dtype(self._typed.dtype)
        need = math.prod(self.shape) * dtype.itemsize
        if len(data) != need:
            raise StreamDecodeError(f"array of shape {list(self.shape)} × {dtype} needs {need} bytes, got {len(data)}")
        arr = np.frombuffer(data, dtype).reshape(self.shape, order=self._order)
        return arr.astype(dtype.newbyteorder("="), copy=False)


def _tag_hook(*args: Any) -> Any:
    # cbor2 < 5.5 calls hook(decoder, tag), later versions hook(tag, immutable)
    tag = args[1] if len(args) == 2 and hasattr(args[1], "tag") else args[0]
    value = tag.value
    if tag.tag == _DECTRIS_COMPRESSION:
        if not (isinstance(value, (list, tuple)) and len(value) == 3 and isinstance(value[2], bytes)):
            raise StreamDecodeError(f"tag 56500 must hold [algorithm, modifier, bytes], got {type(value).__name__}")
        return _Compressed(*value)
    if tag.tag in CBOR_TYPED_ARRAY_TAGS:
        if not isinstance(value, (bytes, _Compressed)):
            raise StreamDecodeError(f"typed array tag {tag.tag} must hold a byte string, got {type(value).__name__}")
        return _Typed(CBOR_TYPED_ARRAY_TAGS[tag.tag], value)
    if tag.tag in (_MDA_ROW_MAJOR, _MDA_COLUMN_MAJOR):
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[1], _Typed)
                and isinstance(value[0], (list, tuple)) and all(isinstance(d, int) and d >= 0 for d in value[0])):
            raise StreamDecodeError(f"tag {tag.tag} must hold [dimensions, typed array]")
        return LazyArray(tuple(value[0]), value[1], "F" if tag.tag == _MDA_COLUMN_MAJOR else "C")
    if isinstance(value, _Compressed):
        return value.bytes()
    return value


def decode_v2(raw: bytes) -> StreamMessage:
    """One Stream V2 CBOR message → :class:`StreamMessage`."""
    try:
        import cbor2
    except ImportError:
        raise StreamDecodeError("DECTRIS Stream V2 needs the 'cbor2' package: pip install 'fringelive[acquisition]'") from None
    try:
        msg = cbor2.loads(raw, tag_hook=_tag_hook)
    except StreamDecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - cbor2 wraps hook errors in CBORDecodeError
        cause = e.__cause__ if isinstance(e.__cause__, StreamDecodeError) else None
        raise StreamDecodeError(str(cause) if cause else f"not a CBOR message: {type(e).__name__}: {e}") from None
    if not isinstance(msg, Mapping) or msg.get("type") not in ("start", "image", "end"):
        raise StreamDecodeError(f"a Stream V2 message is a map with type start|image|end, got "
                                f"{msg.get('type') if isinstance(msg, Mapping) else type(msg).__name__!r}")
    msg = dict(msg)
    series = str(msg.get("series_unique_id") or msg.get("series_id", ""))
    fields = {k: v for k, v in msg.items() if k not in ("type", "data")}
    out = StreamMessage(msg["type"], 2, series, fields=fields)
    if msg["type"] == "image":
        image_id = msg.get("image_id")
        if not isinstance(image_id, int) or isinstance(image_id, bool) or image_id < 0:
            raise StreamDecodeError(f"image message needs image_id >= 0, got {image_id!r}")
        out.image_id = image_id
        data = msg.get("data")
        if not isinstance(data, Mapping) or not data:
            raise StreamDecodeError("image message needs a non-empty data map of channels")
        for name, arr in data.items():
            if not isinstance(arr, LazyArray) or arr.ndim != 2:
                raise StreamDecodeError(f"channel {name!r} is not a 2-D array (tag 40 + typed array)")
            out.channels[str(name)] = arr
    return out


# --- Stream V1 (multipart JSON) ---------------------------------------------------------------

_V1_ENCODINGS = {"bs32-lz4<": 4, "bs16-lz4<": 2, "bs8-lz4<": 1}
_V1_DTYPES = {"uint8": "<u1", "uint16": "<u2", "uint32": "<u4", "int32": "<i4", "float32": "<f4"}


def _json(part: Any, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(bytes(part))
    except (ValueError, UnicodeDecodeError) as e:
        raise StreamDecodeError(f"{what} is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise StreamDecodeError(f"{what} is not a JSON object")
    return obj


def decode_v1(parts: Sequence[Any]) -> StreamMessage:
    """One Stream V1 multipart message → :class:`StreamMessage` (``dheader-1.0`` → start with
    the detector config of part 1 in ``fields``; ``dimage-1.0`` → image; ``dseries_end-1.0`` →
    end)."""
    if not parts:
        raise StreamDecodeError("empty message")
    head = _json(parts[0], "part 0")
    htype = str(head.get("htype", ""))
    series = str(head.get("series", ""))
    if htype.startswith("dheader-"):
        fields: dict[str, Any] = {"header_detail": head.get("header_detail")}
        if len(parts) > 1 and head.get("header_detail") in ("basic", "all"):
            fields.update(_json(parts[1], "dheader config (part 1)"))
        return StreamMessage("start", 1, series, fields=fields)
    if htype.startswith("dseries_end-"):
        return StreamMessage("end", 1, series)
    if not htype.startswith("dimage-"):
        raise StreamDecodeError(f"unknown htype {htype!r} (expected dheader-1.0, dimage-1.0, dseries_end-1.0)")
    if len(parts) < 3:
        raise StreamDecodeError(f"dimage message has {len(parts)} parts, needs >= 3 (dimage, dimage_d, data)")
    frame = head.get("frame")
    if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
        raise StreamDecodeError(f"dimage frame must be an integer >= 0, got {frame!r}")
    desc = _json(parts[1], "dimage_d (part 1)")
    shape, dtype_name, encoding = desc.get("shape"), desc.get("type"), str(desc.get("encoding", "<"))
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and s > 0 for s in shape)):
        raise StreamDecodeError(f"dimage_d shape must be [x, y] (2 integers > 0), got {shape!r}")
    if dtype_name not in _V1_DTYPES:
        raise StreamDecodeError(f"dimage_d type must be one of {list(_V1_DTYPES)}, got {dtype_name!r}")
    dtype = np.dtype(_V1_DTYPES[dtype_name])
    width, height = shape
    nbytes = width * height * dtype.itemsize
    data = bytes(parts[2])
    if encoding in _V1_ENCODINGS:
        raw = bslz4_decompress(data, dtype.itemsize, nbytes)
    elif encoding == "lz4<":
        try:
            raw = _lz4().decompress(data, uncompressed_size=nbytes)
        except Exception as e:  # noqa: BLE001
            raise StreamDecodeError(f"lz4 image data does not decompress: {e}") from None
    elif encoding in ("<", ""):
        raw = data
    else:
        raise StreamDecodeError(f"dimage_d encoding must be one of {[*_V1_ENCODINGS, 'lz4<', '<']}, got {encoding!r}")
    if len(raw) != nbytes:
        raise StreamDecodeError(f"image data has {len(raw)} bytes, shape [x={width}, y={height}] × {dtype_name} "
                                f"needs {nbytes}")
    pixels = np.frombuffer(raw, dtype).reshape(height, width).astype(dtype.newbyteorder("="), copy=False)
    fields = {}
    if len(parts) > 3:
        fields.update(_json(parts[3], "dconfig (part 3)"))
    return StreamMessage("image", 1, series, image_id=frame, channels={"image": pixels}, fields=fields)


def decode_message(parts: Sequence[Any], version: str = "auto") -> StreamMessage:
    """One ZeroMQ message (its parts as bytes) → :class:`StreamMessage`; ``version`` "auto"
    tells V1 (first part a JSON object) from V2 (one CBOR part)."""
    if version == "v1":
        return decode_v1(parts)
    if version == "v2":
        if len(parts) != 1:
            raise StreamDecodeError(f"a Stream V2 message has 1 part, got {len(parts)}")
        return decode_v2(bytes(parts[0]))
    first = bytes(parts[0][:1]) if parts else b""
    if first == b"{":
        return decode_v1(parts)
    if len(parts) == 1:
        return decode_v2(bytes(parts[0]))
    raise StreamDecodeError(f"neither Stream V1 (JSON first part) nor V2 (one CBOR part): {len(parts)} parts")


# --- metadata ---------------------------------------------------------------------------------

def _ratio(value: Any) -> float | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value) and value[1] > 0:
        return value[0] / value[1]
    return None


def _positive(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def frame_meta(start: dict[str, Any] | None, image: StreamMessage, channel: str) -> dict[str, Any]:
    """Wire metadata of one image from its series' start fields (V2 ``start`` / V1 ``dheader``
    config; None when the start was missed) and the image's own fields."""
    start = start or {}
    meta: dict[str, Any] = {}
    f = image.fields
    exposure = _ratio(f.get("real_time")) if image.version == 2 else (
        f["real_time"] * 1e-9 if _positive(f.get("real_time")) else None)
    exposure = exposure if exposure and exposure > 0 else _positive(start.get("count_time"))
    if exposure:
        meta["exposure_s"] = exposure
    series_date = f.get("series_date") or start.get("arm_date")
    if isinstance(series_date, datetime):
        stamp = series_date if series_date.tzinfo else series_date.replace(tzinfo=timezone.utc)
        meta["timestamp"] = stamp.timestamp() + (_ratio(f.get("start_time")) or 0.0)
    camera = start.get("detector_description") or start.get("description")
    if isinstance(camera, str) and camera:
        meta["camera"] = camera
    tags: dict[str, Any] = {"channel": channel, "stream_version": image.version, "image_id": image.image_id}
    for key in ("detector_serial_number", "detector_number", "series_unique_id", "series_id"):
        value = start.get(key, f.get(key))
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            tags[key] = value
    pitch = _positive(start.get("pixel_size_x", start.get("x_pixel_size")))
    if pitch:
        tags["detector_pixel_size_m"] = pitch   # the sensor pitch, not the specimen pixel size
    meta["tags"] = tags
    return meta
