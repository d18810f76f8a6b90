"""Shutdown drain of the ingest socket (plain PUSH mode): stop taking new data, then read every
message ZeroMQ already holds, so nothing that reached the daemon's process is lost silently.

At :meth:`~fringelive.daemon.server.Daemon.stop` the receiver thread calls :func:`detach_ingest`
(unbind, or disconnect with ``[ingest] bind = false``): the peers' connections close, ZeroMQ's
receive pipe keeps the messages it had already assembled (at most ``[ingest] rcvhwm``), and
:func:`drain_one` reads them until the pipe stays empty for :data:`DRAIN_QUIET_MS`. Each drained
frame is processed within the drain timeout or counted ``dropped{reason="shutdown"}``.

What is lost, uncounted, in plain PUSH mode (at-most-once): the bytes still in the kernel's TCP
buffers when the connection closes, the daemon's receive buffer (``[ingest] rcvbuf_bytes``,
``ZMQ_RCVBUF``) and the sender's send buffer (``ZMQ_SNDBUF``; ``fringelive send`` sets
:data:`~fringelive.stream.send.DEFAULT_SNDBUF_BYTES`), plus a partly transferred message. Bounded
buffers keep that to about ``(rcvbuf + sndbuf) / frame_bytes + 1`` frames; see "Delivery
guarantees" in ``docs/protocol.md`` for measured numbers, and ``[ingest] mode = "ack"`` for
at-least-once delivery."""

from __future__ import annotations

import logging
from typing import Any

import zmq

__all__ = ["DRAIN_QUIET_MS", "detach_ingest", "drain_one"]

log = logging.getLogger("fringelive.daemon")

#: The drain ends after the receive pipe stayed empty this long (ms): ZeroMQ's I/O thread may
#: still be handing over the last assembled message when the endpoint is detached.
DRAIN_QUIET_MS = 100


def detach_ingest(sock: Any, endpoint: str, bind: bool) -> None:
    """Unbind (or disconnect) ``endpoint`` so no new message arrives; messages already in the
    socket's receive pipe stay readable. A failure is logged, never raised (the drain goes on)."""
    try:
        (sock.unbind if bind else sock.disconnect)(endpoint)
    except zmq.ZMQError as e:
        log.warning("drain: cannot %s ingest %s: %s", "unbind" if bind else "disconnect", endpoint, e)


def drain_one(sock: Any) -> list[Any] | None:
    """The next message already held by ZeroMQ, or None once none came for :data:`DRAIN_QUIET_MS`."""
    if not sock.poll(DRAIN_QUIET_MS, zmq.POLLIN):
        return None
    try:
        return sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return None
