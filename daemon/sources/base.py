"""The frame-source contract: anything that yields camera frames besides the daemon's own ZeroMQ
ingest (a folder the microscope writes into, a DECTRIS stream, a DE-Server).

A source is a context manager with ``close()`` (LiberTEM-live style). :meth:`FrameSource.get`
waits up to ``timeout`` seconds and returns one :class:`SourceFrame` or ``None``; errors of the
source's own thread are re-raised there (in the daemon's feeding thread, which fails the daemon
as any thread failure does). The daemon turns every :class:`SourceFrame` into a protocol frame
with :func:`to_frame` (the same header validation as the wire: pixel size, dose, voltage,
timestamps, ... with units of ``docs/protocol.md``) and accounts for it exactly like a ZeroMQ
message, labelled with the source's name. A :class:`SourceFrame` may instead carry a
``reject`` (reason, detail) for input the source could not turn into pixels (an unreadable
file): it is counted received and rejected with that reason.
"""

from __future__ import annotations

import math
import queue as _queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from fringelive.daemon.protocol import Frame, FrameLimits, ProtocolError, parse_header
from fringelive.daemon.protocol.wire import PROTOCOL_VERSION
from fringelive.engine.frame import ALLOWED_DTYPES

__all__ = ["SourceFrame", "FrameSource", "SourceError", "ThreadedSource", "to_frame"]


class SourceError(RuntimeError):
    """A source cannot go on (its thread failed, its endpoint is gone); names the source."""


@dataclass
class SourceFrame:
    """One frame from a source. ``header``: wire header keys (``series``, ``frame`` and metadata
    such as ``pixel_size_nm`` nm/px, ``exposure_s`` s, ``voltage_kv`` kV, ``timestamp`` Unix s,
    ``camera``, ``tags``); ``shape``/``dtype`` come from ``pixels`` (H, W). ``reject``:
    (reason, detail) instead of pixels for input that could not be read. ``on_done``: called
    once the daemon has accounted for the frame (queued, dropped or rejected), e.g. to record a
    file as done."""

    header: dict[str, Any]
    pixels: np.ndarray | None = None
    reject: tuple[str, str] | None = None
    on_done: Callable[[], None] | None = field(default=None, repr=False)

    def done(self) -> None:
        if self.on_done is not None:
            callback, self.on_done = self.on_done, None
            callback()


class FrameSource:
    """Base class of the sources: ``name`` labels its metrics; subclasses implement
    :meth:`get` and :meth:`close`."""

    kind = "source"

    def __init__(self, name: str) -> None:
        self.name = name

    def get(self, timeout: float) -> SourceFrame | None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ThreadedSource(FrameSource):
    """A source whose producer runs in its own thread: :meth:`run` (implemented by subclasses)
    puts :class:`SourceFrame` items with :meth:`emit` and polls :attr:`stopped`; an exception it
    raises is re-raised by :meth:`get` in the consumer's thread as :class:`SourceError`.
    ``maxsize``: frames buffered between the producer and the daemon (back-pressure beyond)."""

    def __init__(self, name: str, maxsize: int = 2) -> None:
        super().__init__(name)
        self._items: _queue.Queue[SourceFrame] = _queue.Queue(maxsize=maxsize)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "ThreadedSource":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"fringelive-source-{self.name}", daemon=True)
            self._thread.start()
        return self

    def __enter__(self) -> "ThreadedSource":
        return self.start()

    @property
    def stopped(self) -> threading.Event:
        return self._stop

    def run(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _run(self) -> None:
        try:
            self.run()
        except BaseException as e:  # noqa: BLE001 - re-raised by get() in the consumer
            self._error = e

    def emit(self, item: SourceFrame) -> bool:
        """Hand ``item`` to the consumer, waiting while the buffer is full; False when stopped."""
        while not self._stop.is_set():
            try:
                self._items.put(item, timeout=0.05)
                return True
            except _queue.Full:
                continue
        return False

    def get(self, timeout: float) -> SourceFrame | None:
        try:
            return self._items.get(timeout=timeout)
        except _queue.Empty:
            pass
        if self._error is not None:
            err = self._error
            raise SourceError(f"source {self.name!r} failed: {type(err).__name__}: {err}") from err
        return None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
        self.on_close()

    def on_close(self) -> None:
        """Release what :meth:`run` opened (after its thread stopped)."""


def to_frame(item: SourceFrame, limits: FrameLimits | None = None) -> Frame:
    """Validate a source's header and pixels into a protocol :class:`Frame` (the same checks as
    :func:`~fringelive.daemon.protocol.decode_frame`). Raises :class:`ProtocolError`."""
    header: Mapping[str, Any] = item.header
    series = header.get("series") if isinstance(header.get("series"), str) else None
    frame = header.get("frame") if isinstance(header.get("frame"), int) else None
    if item.reject is not None:
        raise ProtocolError(item.reject[0], item.reject[1], series, frame)
    pixels = item.pixels
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 2:
        raise ProtocolError("bad_shape", f"a source frame must be a 2-D array, got "
                                         f"{getattr(pixels, 'shape', type(pixels).__name__)}", series, frame)
    if pixels.dtype.name not in ALLOWED_DTYPES:
        raise ProtocolError("bad_dtype", f"dtype {pixels.dtype.name!r} is not one of {', '.join(ALLOWED_DTYPES)}",
                            series, frame)
    full = dict(header)
    full.update(version=PROTOCOL_VERSION, shape=[int(pixels.shape[0]), int(pixels.shape[1])],
                dtype=pixels.dtype.name, byteorder="little")
    parsed = parse_header(full, limits)
    if not pixels.dtype.isnative:
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    if pixels.dtype.kind == "f":
        with np.errstate(invalid="ignore", over="ignore"):
            total = float(np.sum(pixels, dtype=np.float64))
        if not math.isfinite(total):
            bad = int(np.count_nonzero(~np.isfinite(pixels)))
            raise ProtocolError("non_finite", f"{bad} of {pixels.size} float32 pixels are NaN or infinite",
                                parsed.series, parsed.frame)
    return Frame(header=parsed, pixels=np.ascontiguousarray(pixels))
