"""Encoding: a frame ``[header, pixels]`` (validated with the decoder's rules) and a result
``[b"result", header, packbits(mask) (, float16 probabilities)]``, its header packed once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from fringelive.daemon.protocol.errors import ProtocolError
from fringelive.daemon.protocol.header import parse_header
from fringelive.daemon.protocol.wire import PROTOCOL_VERSION, RESULT_TOPIC, packb
from fringelive.engine.frame import ALLOWED_DTYPES

__all__ = ["encode_frame", "encode_result", "encode_result_payload", "pack_result", "ResultPayload"]


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


@dataclass(frozen=True)
class ResultPayload:
    """The array parts of a result: the header descriptors (``mask``, ``probabilities``) and the
    packed bytes (``packbits`` mask (, float16 little-endian probabilities))."""

    descriptors: dict[str, Any]
    parts: list[bytes]


def encode_result_payload(mask: np.ndarray, probabilities: np.ndarray | None = None) -> ResultPayload:
    """Pack ``mask`` (H, W) bool and the optional ``probabilities`` (H, W) class-1 probability."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D (H, W) array, got shape {mask.shape}")
    h, w = (int(mask.shape[0]), int(mask.shape[1]))
    descriptors: dict[str, Any] = {"mask": {"shape": [h, w], "encoding": "packbits", "bitorder": "big"}}
    parts = [np.packbits(mask.astype(bool, copy=False), axis=None).tobytes()]
    if probabilities is not None:
        probs = np.asarray(probabilities)
        if probs.shape != mask.shape:
            raise ValueError(f"probabilities shape {probs.shape} differs from mask shape "
                             f"{mask.shape}")
        descriptors["probabilities"] = {"shape": [h, w], "dtype": "float16", "byteorder": "little"}
        parts.append(np.ascontiguousarray(probs, dtype="<f2").tobytes())
    return ResultPayload(descriptors, parts)


def pack_result(header: Mapping[str, Any], payload: ResultPayload) -> list[bytes]:
    """``[b"result", header, *payload.parts]``: the header (plus ``version`` and the payload's
    descriptors) packed once."""
    if not isinstance(header, Mapping):
        raise ValueError(f"header must be a mapping, got {type(header).__name__}")
    out = dict(header)
    out.setdefault("version", PROTOCOL_VERSION)
    out.pop("probabilities", None)
    out.update(payload.descriptors)
    return [RESULT_TOPIC, packb(out), *payload.parts]


def encode_result(header: Mapping[str, Any], mask: np.ndarray,
                  probabilities: np.ndarray | None = None) -> list[bytes]:
    """Encode ``[b"result", header, packbits(mask) (, float16 probabilities)]``.

    ``header``: series, frame, worker, model, particle_count, particles, area_fraction, drift,
    timings_ms, queue_depth, ... (numpy scalars allowed). ``mask`` (H, W) bool; ``probabilities``
    (H, W) class-1 probability, sent as float16 little-endian. Adds ``version``, ``mask``
    ({shape, encoding: "packbits", bitorder: "big"}) and ``probabilities`` descriptors.
    """
    return pack_result(header, encode_result_payload(mask, probabilities))
