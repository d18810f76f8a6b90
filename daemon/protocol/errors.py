"""Reason codes (the stable ``reason`` of every rejected or dropped frame), :class:`ProtocolError`,
the error message ``[b"error", header]`` and the checks every decoder applies to raw parts.

A new reason code: add it to :data:`REJECT_REASONS` (the decoder refuses input) or
:data:`PROCESSING_REASONS` (the daemon drops or fails a frame) with a comment, and to
``docs/protocol.md``; the daemon's counters are labelled by these codes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgpack

from fringelive.daemon.protocol.wire import ERROR_TOPIC, PROTOCOL_VERSION, _short, _type_name, packb

__all__ = ["REJECT_REASONS", "PROCESSING_REASONS", "ERROR_REASONS", "ProtocolError", "encode_error", "decode_error"]

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
    "frame_too_small",  # a side below FrameLimits.min_side: too small for the served pipeline
    "size_mismatch",  # pixel byte count != height × width × itemsize
    "non_finite",     # float32 pixels contain NaN or ±Inf
    "unreadable",     # a frame source (daemon/sources: folder, dectris, deapi) could not turn its input into pixels
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
