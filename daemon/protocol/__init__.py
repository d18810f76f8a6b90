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

from fringelive.daemon.protocol.curve import configure_curve_client
from fringelive.daemon.protocol.decode import decode_frame, decode_result
from fringelive.daemon.protocol.encode import encode_frame, encode_result
from fringelive.daemon.protocol.errors import (ERROR_REASONS, PROCESSING_REASONS, REJECT_REASONS, ProtocolError,
                                               decode_error, encode_error)
from fringelive.daemon.protocol.header import (MAX_FRAME_INDEX, MAX_SERIES_LENGTH, REQUIRED_KEYS, Frame, FrameHeader,
                                               FrameLimits, parse_header)
from fringelive.daemon.protocol.wire import (BYTEORDERS, DEFAULT_CONTROL_ENDPOINT, DEFAULT_DTYPE, DEFAULT_INGEST_ENDPOINT,
                                             DEFAULT_METRICS_ADDRESS, DEFAULT_RESULTS_ENDPOINT, ERROR_TOPIC,
                                             PROTOCOL_VERSION, RESULT_TOPIC, packb)
from fringelive.engine.frame import ALLOWED_DTYPES, METADATA_KEYS

__all__ = [
    "PROTOCOL_VERSION", "DEFAULT_INGEST_ENDPOINT", "DEFAULT_RESULTS_ENDPOINT", "DEFAULT_CONTROL_ENDPOINT",
    "DEFAULT_METRICS_ADDRESS", "RESULT_TOPIC", "ERROR_TOPIC", "ALLOWED_DTYPES", "DEFAULT_DTYPE", "BYTEORDERS",
    "REJECT_REASONS", "PROCESSING_REASONS", "ERROR_REASONS", "REQUIRED_KEYS", "METADATA_KEYS", "MAX_SERIES_LENGTH",
    "MAX_FRAME_INDEX", "ProtocolError", "FrameLimits", "FrameHeader", "Frame", "packb", "parse_header",
    "decode_frame", "encode_frame", "encode_result", "decode_result", "encode_error", "decode_error",
    "configure_curve_client",
]
