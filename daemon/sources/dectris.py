"""The ``dectris`` source: a client of a DECTRIS detector's stream (Stream V1 or V2), passive by default.

It connects a ZeroMQ PULL socket to the detector's (or a simulator's) PUSH endpoint and decodes
each message (``dectris_decode.py``). By default (``control = false``) it never talks to the
SIMPLON REST API: arming, triggering and configuring stay with the detector's own control
software. With ``control = true`` a second thread drives the detector through SIMPLON
(``simplon.py``: configure once, then arm / trigger / disarm per series); the API must answer at
start-up, and a failing call fails the source. Note that a PUSH socket deals messages
round-robin: another PULL client on the same endpoint gets every other message, so fringelive
should be the only stream client (or use the detector's stream forwarding).

Per series: the ``start`` (V2) / ``dheader`` (V1) fields are kept until its ``end`` /
``dseries_end`` and give each image its metadata (``dectris_decode.frame_meta``); ``series`` is the
series' unique id (V2) or number (V1), ``frame`` the image number. The specimen pixel size and
the beam energy are not in the stream (the detector's ``pixel_size_x`` is its sensor pitch):
they come from the source's ``pixel_size_nm``/``voltage_kv`` (or ``meta``). A message that
cannot be decoded is counted ``rejected{reason="unreadable"}`` and the stream goes on.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import zmq

from fringelive.daemon.sources.base import SourceFrame, ThreadedSource
from fringelive.daemon.sources.dectris_config import DectrisSourceConfig
from fringelive.daemon.sources.dectris_decode import StreamDecodeError, decode_message, frame_meta
from fringelive.daemon.sources.simplon import SimplonControl

__all__ = ["DectrisSource"]

log = logging.getLogger("fringelive.daemon.sources")

_POLL_MS = 50


class DectrisSource(ThreadedSource):
    """See the module docstring. ``series_seen``: (series, kind) boundaries in order (start/end),
    for status and tests; ``control``: the :class:`SimplonControl` (``control = true``) or None."""

    kind = "dectris"

    def __init__(self, config: DectrisSourceConfig) -> None:
        super().__init__(config.label, maxsize=2)
        self.config = config
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PULL)
        self._sock.rcvhwm = config.rcvhwm
        self._sock.linger = 0
        self._sock.connect(config.endpoint)
        self._starts: dict[str, dict[str, Any]] = {}
        self.series_seen: list[tuple[str, str]] = []
        self._ends = self._images = 0
        self.control: SimplonControl | None = None
        self._control_thread: threading.Thread | None = None
        if config.control:
            self.control = SimplonControl(config, self.stopped, lambda: self._ends, lambda: self._images)
            try:
                self.control.check(self.name)
            except BaseException:
                self.on_close()
                raise

    def start(self) -> "DectrisSource":
        super().start()
        if self.control is not None and self._control_thread is None:
            self._control_thread = threading.Thread(target=self._run_control, name=f"fringelive-simplon-{self.name}",
                                                    daemon=True)
            self._control_thread.start()
        return self

    def _run_control(self) -> None:
        assert self.control is not None
        try:
            self.control.run()
        except BaseException as e:  # noqa: BLE001 - re-raised by get() in the consumer: fails the source
            self._error = e
            self.stopped.set()

    def run(self) -> None:
        while not self.stopped.is_set():
            if not self._sock.poll(_POLL_MS, zmq.POLLIN):
                continue
            parts = self._sock.recv_multipart(copy=True)
            item = self._handle(parts)
            if item is not None and not self.emit(item):
                return

    def _handle(self, parts: list[bytes]) -> SourceFrame | None:
        try:
            msg = decode_message(parts, self.config.version)
        except StreamDecodeError as e:
            return SourceFrame({"series": self.name}, reject=("unreadable", f"DECTRIS stream message: {e}"))
        if msg.kind == "start":
            self._starts[msg.series] = msg.fields
            self.series_seen.append((msg.series, "start"))
            log.info("%s: series %s started (%s)", self.name, msg.series, msg.fields.get("detector_description", ""))
            return None
        if msg.kind == "end":
            self._ends += 1
            self._starts.pop(msg.series, None)
            self.series_seen.append((msg.series, "end"))
            log.info("%s: series %s ended", self.name, msg.series)
            return None
        self._images += 1
        header: dict[str, Any] = {"series": msg.series or self.name, "frame": msg.image_id}
        try:
            channel, pixels = msg.pixels(self.config.channel)
        except StreamDecodeError as e:
            return SourceFrame(header, reject=("unreadable", f"DECTRIS image {msg.series}/{msg.image_id}: {e}"))
        header.update(frame_meta(self._starts.get(msg.series), msg, channel))
        if self.config.pixel_size_nm is not None:
            header["pixel_size_nm"] = float(self.config.pixel_size_nm)
        if self.config.voltage_kv is not None:
            header["voltage_kv"] = float(self.config.voltage_kv)
        header.update(self.config.meta)
        return SourceFrame(header, pixels)

    def close(self) -> None:
        self.stopped.set()
        if self._control_thread is not None:
            self._control_thread.join(60.0)   # an ongoing REST call ends; a detector left armed is disarmed
        super().close()

    def on_close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()
