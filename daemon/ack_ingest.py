"""Acknowledged ingest (``[ingest] mode = "ack"``, ``serve --ingest-mode ack``): at-least-once
delivery with deduplication.

The ingest socket is a ZeroMQ ROUTER (same endpoint, bind or connect as configured); a sender
uses a DEALER (``fringelive send --ack``, ``stream/ack_send.py``; client snippet in
``docs/protocol.md``). Frames are the usual two parts ``[header, pixels]``. For each frame whose
header names ``series`` and ``frame`` the daemon answers the sender with ``[b"ack", msgpack map]``:

* ``{"state": "queued", "series", "frame", "credit"}`` once it is in the daemon's queue
  (``credit``: free queue slots, frames);
* ``{"state": "done", "series", "frame", "seq", "topic"}`` once its result (``topic`` "result")
  or error ("error") was published and journalled; the sender may forget it then;
* ``{"state": "dropped", "series", "frame", "reason": "shutdown"}`` when it was dropped at shutdown:
  the sender keeps it and sends it again (to the next daemon);
* ``"duplicate": true`` on either ack when the (series, frame) was already queued or done within
  the dedupe window (:data:`DEDUPE_WINDOW` keys, seeded from the results journal at start, so a
  frame resent after a SIGKILL is recognised when the first daemon had journalled it). Duplicates
  are counted (``fringelive_frames_duplicate_total``), not processed and not counted as received.

Credit-based flow control (zguide): a sender keeps at most *window* frames without a ``queued``
ack; the daemon reads a frame only when its queue has room (block policy), so the credit it
returns is what it can take. Threads: the receiver owns the ROUTER socket and sends the acks the
other threads queue here; at shutdown it stops reading and hands the socket to the publisher,
which sends the last ``done`` acks and closes it.
"""

from __future__ import annotations

import collections
import queue as _queue
import threading
from typing import Any, Iterable, Sequence

import msgpack
import zmq

__all__ = ["ACK_TOPIC", "DEDUPE_WINDOW", "AckIngest", "frame_key"]

ACK_TOPIC = b"ack"
#: (series, frame) keys remembered for deduplication.
DEDUPE_WINDOW = 65536
_MAX_PEEK_BYTES = 1 << 20


def frame_key(header_part: Any) -> tuple[str, int] | None:
    """``(series, frame)`` of a frame's packed header, or None when it does not name both."""
    try:
        raw = bytes(header_part)
        if len(raw) > _MAX_PEEK_BYTES:
            return None
        h = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - the decoder reports malformed headers
        return None
    if not isinstance(h, dict):
        return None
    series, frame = h.get("series"), h.get("frame")
    if isinstance(series, str) and isinstance(frame, int) and not isinstance(frame, bool):
        return series, frame
    return None


class AckIngest:
    """Ack bookkeeping of one daemon: who sent each frame in flight, which keys are done, and the
    acks waiting to be sent on the ROUTER socket."""

    def __init__(self, metrics: Any, window: int = DEDUPE_WINDOW) -> None:
        self.metrics = metrics
        self.window = window
        self._lock = threading.Lock()
        self._owners: dict[tuple[str, int], bytes] = {}      # in flight: key → sender identity
        self._done: collections.OrderedDict[tuple[str, int], None] = collections.OrderedDict()
        self._out: _queue.SimpleQueue[tuple[bytes, bytes]] = _queue.SimpleQueue()
        self._current: tuple[bytes, tuple[str, int]] | None = None
        self._sock: Any = None        # set by adopt(): the publisher sends from then on
        self.duplicates = 0

    def seed(self, keys: Iterable[tuple[str, int]]) -> None:
        """Remember ``keys`` as done (from the results journal at start)."""
        with self._lock:
            for key in keys:
                self._remember(key)

    def _remember(self, key: tuple[str, int]) -> None:
        self._done[key] = None
        self._done.move_to_end(key)
        while len(self._done) > self.window:
            self._done.popitem(last=False)

    def _ack(self, identity: bytes, body: dict[str, Any]) -> None:
        self._out.put((identity, msgpack.packb(body, use_bin_type=True)))

    # -- receiver thread ------------------------------------------------------------------------
    def incoming(self, parts: Sequence[Any]) -> list[Any] | None:
        """``[identity, header, pixels]`` from the ROUTER → the frame parts to accept, or None
        when it was a duplicate (acked and counted here)."""
        identity, frame_parts = bytes(parts[0]), list(parts[1:])
        self._current = None
        key = frame_key(frame_parts[0]) if frame_parts else None
        if key is None:
            return frame_parts
        with self._lock:
            state = "done" if key in self._done else "queued" if key in self._owners else None
            if state is None:
                self._owners[key] = identity
                self._current = (identity, key)
                return frame_parts
            if state == "queued":
                self._owners[key] = identity  # the latest connection gets the done ack
        self.duplicates += 1
        self.metrics.duplicates.inc()
        self._ack(identity, {"state": state, "series": key[0], "frame": key[1], "duplicate": True})
        return None

    def queued(self, credit: int) -> None:
        """The frame last returned by :meth:`incoming` is in the queue (or was rejected: its
        error's ``done`` follows)."""
        if self._current is not None:
            identity, key = self._current
            self._current = None
            self._ack(identity, {"state": "queued", "series": key[0], "frame": key[1], "credit": int(credit)})

    def flush(self, sock: Any) -> None:
        """Send the queued acks (owner thread only)."""
        while True:
            try:
                identity, body = self._out.get_nowait()
            except _queue.Empty:
                return
            try:
                sock.send_multipart([identity, ACK_TOPIC, body], flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the sender is gone (or its queue is full): it resends, dedupe answers then

    def adopt(self, sock: Any) -> None:
        """The receiver stops: the publisher sends the remaining acks on ``sock`` and closes it."""
        with self._lock:
            self._sock = sock
        self.flush(sock)

    # -- publisher thread ----------------------------------------------------------------------
    def published(self, parts: Sequence[Any], seq: int) -> None:
        """A result or error went out: ``done`` (or ``dropped`` for a shutdown drop) to its sender."""
        try:
            header = msgpack.unpackb(bytes(parts[1]), raw=False, strict_map_key=False)
        except Exception:  # noqa: BLE001
            return
        series, frame = header.get("series"), header.get("frame")
        if not isinstance(series, str) or not isinstance(frame, int):
            return
        key = (series, frame)
        topic = bytes(parts[0]).decode("ascii", "replace")
        reason = header.get("reason")
        with self._lock:
            identity = self._owners.pop(key, None)
            if reason != "shutdown":
                self._remember(key)
            sock = self._sock
        if identity is not None:
            body = ({"state": "dropped", "series": series, "frame": frame, "reason": reason} if reason == "shutdown"
                    else {"state": "done", "series": series, "frame": frame, "seq": int(seq), "topic": topic})
            self._ack(identity, body)
        if sock is not None:
            self.flush(sock)

    def close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            self.flush(sock)
            sock.close(linger=1000)
