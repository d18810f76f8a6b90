"""Acknowledged sending (``fringelive send --ack``) to a daemon with ``[ingest] mode = "ack"``
(``daemon/ack_ingest.py``): a DEALER socket with a fixed routing id, at most ``window`` frames
without a ``queued`` ack (credit), every frame kept until its ``done`` ack and sent again after a
reconnect (the daemon restarted, or the network blinked) or when no ack came for ``resend_s``
seconds. The daemon drops and counts duplicates, so a frame is processed at least once and,
within its dedupe window, once."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq
from zmq.utils.monitor import recv_monitor_message

from fringelive.stream.send import DEFAULT_SNDBUF_BYTES, SendError

__all__ = ["AckSender", "DEFAULT_ACK_WINDOW", "DEFAULT_RESEND_S"]

#: Frames in flight without a ``queued`` ack.
DEFAULT_ACK_WINDOW = 4
#: Send a frame again when it got no ack at all for this long, s.
DEFAULT_RESEND_S = 5.0


@dataclass
class _Pending:
    parts: list[bytes]
    t_sent: float
    state: str = "sent"   # sent | queued


@dataclass
class AckSender:
    """``AckSender(endpoint)``; :meth:`send` each frame, then :meth:`finish`. Counts: ``sent``
    (first sends), ``resent``, ``done``, ``duplicates`` (acks flagged duplicate)."""

    endpoint: str
    window: int = DEFAULT_ACK_WINDOW
    resend_s: float = DEFAULT_RESEND_S
    context: Any = None
    configure: Any = None   # called with the socket before connect (e.g. CURVE keys)
    pending: dict[tuple[str, int], _Pending] = field(default_factory=dict)
    sent: int = 0
    resent: int = 0
    done: int = 0
    duplicates: int = 0
    reconnects: int = 0

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1 frame, got {self.window!r}")
        ctx = self.context or zmq.Context.instance()
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.routing_id = uuid.uuid4().bytes       # the same id after a reconnect: acks follow
        self.sock.sndhwm = self.window
        self.sock.sndbuf = DEFAULT_SNDBUF_BYTES
        self.sock.immediate = 1                          # nothing queued for a dead connection: resent instead
        self.sock.linger = 0
        self.sock.reconnect_ivl = 100
        self._monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._connected_once = False
        if self.configure is not None:
            self.configure(self.sock)
        self.sock.connect(self.endpoint)

    # -- sending ----------------------------------------------------------------------------------
    def send(self, key: tuple[str, int], parts: list[bytes], timeout_s: float) -> None:
        """Send one frame once fewer than ``window`` frames wait for ``queued``; raises
        :class:`SendError` when the daemon takes nothing for ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        while sum(p.state == "sent" for p in self.pending.values()) >= self.window:
            if not self._pump(deadline):
                raise SendError(f"no ack from {self.endpoint} within {timeout_s:g} s "
                                f"({len(self.pending)} frame(s) unacknowledged)")
        self.pending[key] = _Pending([bytes(p) for p in parts], 0.0)
        self._transmit(key, deadline)
        self.sent += 1

    def _transmit(self, key: tuple[str, int], deadline: float) -> None:
        p = self.pending[key]
        while True:
            try:
                self.sock.send_multipart(p.parts, flags=zmq.NOBLOCK)
                p.t_sent, p.state = time.monotonic(), "sent"
                return
            except zmq.Again:  # no connection (the daemon restarts): wait for it
                if not self._pump(deadline):
                    raise SendError(f"no daemon took a frame at {self.endpoint} within the timeout") from None
                if key not in self.pending:
                    return

    def finish(self, timeout_s: float) -> None:
        """Wait until every frame got its ``done`` ack; :class:`SendError` after ``timeout_s``
        seconds without progress."""
        deadline = time.monotonic() + timeout_s
        while self.pending:
            before = (len(self.pending), self.done)
            if not self._pump(deadline):
                raise SendError(f"{len(self.pending)} frame(s) still unacknowledged by {self.endpoint} "
                                f"after {timeout_s:g} s without progress")
            if (len(self.pending), self.done) != before:
                deadline = time.monotonic() + timeout_s

    def close(self) -> None:
        self.sock.disable_monitor()
        self._monitor.close(linger=0)
        self.sock.close(linger=0)

    # -- acks ---------------------------------------------------------------------------------
    def _pump(self, deadline: float) -> bool:
        """Handle acks and connection events for up to 100 ms; False once ``deadline`` passed."""
        now = time.monotonic()
        if now >= deadline:
            return False
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        events = dict(poller.poll(int(min(0.1, deadline - now) * 1000) + 1))
        if self._monitor in events:
            while self._monitor.poll(0):
                event = recv_monitor_message(self._monitor)["event"]
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    if self._connected_once:
                        self.reconnects += 1
                        self._resend(lambda p: True, deadline)  # a new (or restarted) daemon
                    self._connected_once = True
        if self.sock in events:
            while self.sock.poll(0):
                parts = self.sock.recv_multipart()
                if len(parts) == 2 and parts[0] == b"ack":
                    self._on_ack(msgpack.unpackb(parts[1], raw=False))
        self._resend(lambda p: p.state == "sent" and time.monotonic() - p.t_sent > self.resend_s, deadline)
        return True

    def _on_ack(self, ack: dict[str, Any]) -> None:
        key = (ack.get("series"), ack.get("frame"))
        if ack.get("duplicate"):
            self.duplicates += 1
        p = self.pending.get(key)  # type: ignore[arg-type]
        if p is None:
            return
        state = ack.get("state")
        if state == "done":
            del self.pending[key]  # type: ignore[arg-type]
            self.done += 1
        elif state == "queued":
            p.state = "queued"
        elif state == "dropped":  # dropped at shutdown: the next daemon gets it
            p.state, p.t_sent = "sent", 0.0

    def _resend(self, which: Any, deadline: float) -> None:
        keys = [k for k, p in self.pending.items() if which(p)]
        for i, key in enumerate(keys):
            try:
                self.sock.send_multipart(self.pending[key].parts, flags=zmq.NOBLOCK)
                self.resent += 1
                self.pending[key].t_sent, self.pending[key].state = time.monotonic(), "sent"
            except zmq.Again:  # queue full or not connected: these go again shortly (or at the reconnect)
                for k in keys[i:]:
                    self.pending[k].state, self.pending[k].t_sent = "sent", time.monotonic() - self.resend_s + 0.2
                return
