"""Pure decoders of the DECTRIS detector stream (no sockets): Stream V1 (multipart JSON + binary,
``dheader-1.0`` / ``dimage-1.0`` + ``dimage_d-1.0`` / ``dseries_end-1.0``) and Stream V2 (one
CBOR map per message: ``start`` / ``image`` / ``end``), with the two DECTRIS compressions in
HDF5 framing (``bslz4``: bitshuffle + LZ4; ``lz4``), decoded with ``lz4.block`` and numpy.

Framing (both): 8-byte big-endian uncompressed size, 4-byte big-endian block size (bytes), then
per block a 4-byte big-endian compressed size and the LZ4 block (``lz4``: a block whose
compressed size equals its size is stored raw). ``bslz4`` blocks are bitshuffled within the
block (elements × bits transposed); the trailing ``n % 8`` elements are stored raw after the
last block, as the bitshuffle HDF5 filter writes them. Stream V1 ``lz4<`` is one bare LZ4 block.

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
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["StreamDecodeError", "StreamMessage", "decode_message", "decode_v1", "decode_v2", "frame_meta",
           "bslz4_decompress", "LazyArray", "lz4_hdf5_decompress", "bslz4_compress", "lz4_hdf5_compress", "CBOR_TYPED_ARRAY_TAGS"]

#: RFC 8746 typed-array tags → numpy dtypes (the ones a detector sends, and more).
CBOR_TYPED_ARRAY_TAGS: dict[int, str] = {
    64: "u1", 65: ">u2", 66: ">u4", 67: ">u8", 68: "u1", 69: "<u2", 70: "<u4", 71: "<u8",
    72: "i1", 73: ">i2", 74: ">i4", 75: ">i8", 77: "<i2", 78: "<i4", 79: "<i8",
    80: ">f2", 81: ">f4", 82: ">f8", 84: "<f2", 85: "<f4", 86: "<f8",
}
_MDA_ROW_MAJOR, _MDA_COLUMN_MAJOR, _DECTRIS_COMPRESSION, _SELF_DESCRIBE = 40, 1040, 56500, 55799
_MAX_BYTES = 1 << 30   # refuse a declared uncompressed size above 1 GiB before allocating


class StreamDecodeError(ValueError):
    """A stream message cannot be decoded; the message names the part and the bad value."""


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


# --- compression ------------------------------------------------------------------------------

def _lz4() -> Any:
    try:
        import lz4.block
    except ImportError:
        raise StreamDecodeError("LZ4-compressed DECTRIS data needs the 'lz4' package: pip install 'fringelive[acquisition]'") from None
    return lz4.block


def _header(buf: bytes, what: str) -> tuple[int, int]:
    if len(buf) < 12:
        raise StreamDecodeError(f"{what} data has {len(buf)} bytes, shorter than its 12-byte header")
    total, block = struct.unpack(">QI", buf[:12])
    if total > _MAX_BYTES:
        raise StreamDecodeError(f"{what} data declares {total} uncompressed bytes, above the {_MAX_BYTES}-byte limit")
    return total, block


def _blocks(buf: bytes, pos: int, what: str) -> tuple[bytes, int]:
    if pos + 4 > len(buf):
        raise StreamDecodeError(f"{what} data is truncated at byte {pos} (block size expected)")
    (n,) = struct.unpack(">I", buf[pos:pos + 4])
    if pos + 4 + n > len(buf):
        raise StreamDecodeError(f"{what} data is truncated: a block of {n} bytes at byte {pos + 4}, {len(buf)} in all")
    return buf[pos + 4:pos + 4 + n], pos + 4 + n


def lz4_hdf5_decompress(buf: bytes) -> bytes:
    """DECTRIS ``lz4`` (LZ4 in the HDF5 LZ4 filter's framing) → the uncompressed bytes."""
    lz4 = _lz4()
    total, block = _header(buf, "lz4")
    if block <= 0 and total:
        raise StreamDecodeError(f"lz4 data declares block size {block}")
    out, pos = [], 12
    left = total
    while left > 0:
        size = min(block, left)
        chunk, pos = _blocks(buf, pos, "lz4")
        try:
            out.append(chunk if len(chunk) == size else lz4.decompress(chunk, uncompressed_size=size))
        except Exception as e:  # noqa: BLE001 - lz4 raises LZ4BlockError
            raise StreamDecodeError(f"lz4 block at byte {pos - len(chunk)} does not decompress: {e}") from None
        left -= size
    return b"".join(out)


def _unshuffle(block: bytes, elem_size: int) -> np.ndarray:
    """Bitshuffled block (n elements, n % 8 == 0) → its n × elem_size bytes."""
    n = len(block) // elem_size
    bits = np.unpackbits(np.frombuffer(block, np.uint8).reshape(elem_size, 8, n // 8), axis=-1, bitorder="little")
    return np.packbits(bits.transpose(2, 0, 1), axis=-1, bitorder="little").reshape(-1)


def _shuffle(data: np.ndarray, elem_size: int) -> bytes:
    n = data.size // elem_size
    bits = np.unpackbits(data.reshape(n, elem_size, 1), axis=-1, bitorder="little")   # (n, elem, 8)
    return np.packbits(bits.transpose(1, 2, 0), axis=-1, bitorder="little").tobytes()


def _default_block(elem_size: int) -> int:
    """bitshuffle's default block size in elements (``bshuf_default_block_size``)."""
    return max(8192 // elem_size // 8 * 8, 128)


def bslz4_decompress(buf: bytes, elem_size: int, nbytes: int | None = None) -> bytes:
    """DECTRIS ``bslz4`` (bitshuffle + LZ4, the bitshuffle HDF5 filter's framing) → bytes.
    With ``nbytes`` (the expected size) a buffer that does not start with that size is taken
    as bare ``bitshuffle.compress_lz4`` output (no 12-byte header, default block size), which
    some Stream V1 senders emit."""
    if elem_size not in (1, 2, 4, 8):
        raise StreamDecodeError(f"bslz4 element size must be 1, 2, 4 or 8 bytes, got {elem_size!r}")
    lz4 = _lz4()
    if nbytes is not None and (len(buf) < 8 or struct.unpack(">Q", buf[:8])[0] != nbytes):
        buf = struct.pack(">QI", nbytes, _default_block(elem_size) * elem_size) + bytes(buf)
    total, block_bytes = _header(buf, "bslz4")
    if total % elem_size:
        raise StreamDecodeError(f"bslz4 size {total} is not a multiple of the element size {elem_size}")
    block = block_bytes // elem_size
    if total and (block <= 0 or block % 8):
        raise StreamDecodeError(f"bslz4 block size {block_bytes} bytes is not a positive multiple of 8 elements")
    n = total // elem_size
    out = np.empty(total, np.uint8)
    pos, done = 12, 0
    full: list[bytes] = []          # full blocks: unshuffled together (one numpy pass)
    while n - done >= 8:
        size = min(block, (n - done) - (n - done) % 8)
        chunk, pos = _blocks(buf, pos, "bslz4")
        try:
            raw = lz4.decompress(chunk, uncompressed_size=size * elem_size)
        except Exception as e:  # noqa: BLE001
            raise StreamDecodeError(f"bslz4 block at byte {pos - len(chunk)} does not decompress: {e}") from None
        if len(raw) != size * elem_size:
            raise StreamDecodeError(f"bslz4 block decompressed to {len(raw)} bytes, expected {size * elem_size}")
        if size == block:
            full.append(raw)
        else:
            out[done * elem_size:(done + size) * elem_size] = _unshuffle(raw, elem_size)
        done += size
    if full:
        k = len(full)
        bits = np.unpackbits(np.frombuffer(b"".join(full), np.uint8).reshape(k, elem_size, 8, block // 8), axis=-1,
                             bitorder="little")                       # (k, elem, 8 bits, block elements)
        out[:k * block * elem_size] = np.packbits(bits.transpose(0, 3, 1, 2), axis=-1, bitorder="little").reshape(-1)
    rest = (n - done) * elem_size
    if len(buf) - pos != rest:
        raise StreamDecodeError(f"bslz4 data has {len(buf) - pos} trailing bytes, expected {rest}")
    out[done * elem_size:] = np.frombuffer(buf[pos:], np.uint8)
    return out.tobytes()


def lz4_hdf5_compress(data: bytes, block: int = 8192) -> bytes:
    """The inverse of :func:`lz4_hdf5_decompress` (for simulators and tests)."""
    lz4 = _lz4()
    parts = [struct.pack(">QI", len(data), block)]
    for i in range(0, len(data), block):
        c = lz4.compress(data[i:i + block], store_size=False)
        parts.append(struct.pack(">I", len(c)) + c)
    return b"".join(parts)


def bslz4_compress(data: bytes, elem_size: int, block_bytes: int = 8192) -> bytes:
    """The inverse of :func:`bslz4_decompress` (for simulators and tests)."""
    lz4 = _lz4()
    arr = np.frombuffer(data, np.uint8)
    n = arr.size // elem_size
    block = block_bytes // elem_size
    parts = [struct.pack(">QI", arr.size, block_bytes)]
    done = 0
    while n - done >= 8:
        size = min(block, (n - done) - (n - done) % 8)
        c = lz4.compress(_shuffle(arr[done * elem_size:(done + size) * elem_size], elem_size), store_size=False)
        parts.append(struct.pack(">I", len(c)) + c)
        done += size
    parts.append(arr[done * elem_size:].tobytes())
    return b"".join(parts)


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
