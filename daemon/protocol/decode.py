"""Decoding: ``[header, pixels]`` → :class:`~fringelive.daemon.protocol.header.Frame` (zero-copy
when the byte order is native) and ``[b"result", header, mask (, probabilities)]`` → arrays."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fringelive.daemon.protocol.errors import ProtocolError, _as_bytes_view, _unpack_map
from fringelive.daemon.protocol.header import Frame, FrameLimits, parse_header
from fringelive.daemon.protocol.wire import BYTEORDERS, RESULT_TOPIC, _is_int, _short

__all__ = ["decode_frame", "decode_result"]


def decode_frame(parts: Sequence[Any], limits: FrameLimits | None = None) -> Frame:
    """Decode ``[header, pixels]`` (bytes, memoryview or ``zmq.Frame`` from
    ``recv_multipart(copy=False)``) into a :class:`Frame`.

    Order of checks: part count/types, total and header size (``too_large``), msgpack, header
    keys and types, shape against ``limits`` (before touching the pixels), byte count, finite
    float pixels, then ``limits.min_side`` (``frame_too_small``). Nothing is allocated from
    header values; native-order pixels are a zero-copy view of the pixel part. Raises only :class:`ProtocolError`.
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
    h, w = header.shape
    if min(h, w) < limits.min_side:  # last: a well-formed frame the served pipeline cannot process
        raise ProtocolError("frame_too_small", f"shape [{h}, {w}] has a side below the minimum {limits.min_side} px "
                                               "the pipeline needs (flat-field fit on binned blocks)",
                            header.series, header.frame)
    return Frame(header=header, pixels=pixels)


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
