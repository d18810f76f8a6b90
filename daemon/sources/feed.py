"""The daemon's thread per frame source: ``source.get`` → :func:`~fringelive.daemon.sources.base.to_frame`
→ the bounded frame queue, with the ZeroMQ receiver's policy and accounting (received, then
queued, dropped(reason) or rejected(reason)), labelled with the source's name."""

from __future__ import annotations

import time
from typing import Any

from fringelive.daemon.protocol import FrameLimits, ProtocolError
from fringelive.daemon.sources.base import FrameSource, SourceFrame, to_frame
from fringelive.daemon.threads import WAIT_S, _Work

__all__ = ["source_loop", "join_sources", "SOURCE_THREAD_PREFIX"]

SOURCE_THREAD_PREFIX = "source:"


def source_loop(daemon: Any, source: FrameSource) -> None:
    """Feed ``source`` into ``daemon``'s queue until ingest stops; closes the source. An error
    of the source (``SourceError``) propagates: the daemon's thread wrapper stores it and the
    daemon fails (re-raised by ``Daemon.wait``/``stop``)."""
    cfg = daemon.config
    limits = FrameLimits(max_pixels=cfg.ingest.max_frame_pixels, max_side=cfg.ingest.max_side,
                         max_message_bytes=cfg.ingest.max_message_bytes)
    block = cfg.queue.policy == "block"
    held: tuple[_Work, SourceFrame] | None = None
    try:
        while True:
            if held is not None:
                if daemon._abort.is_set():
                    daemon._drop(held[0], "shutdown")
                    held[1].done()
                    held = None
                elif daemon._queue.put(held[0], timeout=WAIT_S):
                    held[1].done()
                    held = None
                continue
            if daemon._stop_ingest.is_set():
                return
            item = source.get(WAIT_S)
            if item is None:
                continue
            held = _accept(daemon, source.name, item, limits, block)
    finally:
        source.close()


def _accept(daemon: Any, name: str, item: SourceFrame, limits: FrameLimits,
            block: bool) -> tuple[_Work, SourceFrame] | None:
    t = time.perf_counter()
    daemon.metrics.frame_received()
    daemon.metrics.sources.received(name)
    try:
        frame = to_frame(item, limits)
    except ProtocolError as e:
        daemon._reject(e.reason, e.detail, e.series, e.frame, source=name)
        item.done()
        return None
    except Exception as e:  # noqa: BLE001 - a conversion bug must not stop the source
        daemon._reject("internal_error", f"source frame conversion raised {type(e).__name__}: {e}", None, None,
                       source=name)
        item.done()
        return None
    work = _Work(frame, t, name)
    if block:
        if daemon._queue.put(work, timeout=0):
            item.done()
            return None
        return work, item
    for old in daemon._queue.put_evict(work):
        daemon._drop(old, "queue_full")
    item.done()
    return None


def join_sources(threads: dict[str, Any], timeout: float | None) -> None:
    """Join the source threads (``source:<name>``), each for up to ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for name, t in list(threads.items()):
        if name.startswith(SOURCE_THREAD_PREFIX):
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
