"""The daemon's bounded frame queue (receiver → worker, with in-progress tracking for exact
accounting and draining) and a rate-limited warning log."""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable

__all__ = ["FrameQueue", "RateLimitedLog"]


class FrameQueue:
    """Bounded FIFO between receiver and worker that also tracks the item being worked on, so
    :meth:`idle` tells when everything queued has been finished. Thread-safe; one lock, three
    conditions (not empty / not full / idle) so a put wakes only a getter (``queue.Queue``
    style)."""

    def __init__(self, size: int, on_depth: Callable[[int], None] | None = None) -> None:
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size!r}")
        self.size = size
        self._items: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._in_progress = 0
        self._on_depth = on_depth or (lambda n: None)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any, timeout: float | None = None) -> bool:
        """Append, waiting up to ``timeout`` s (None: for ever) for room; False when still full."""
        with self._not_full:
            if len(self._items) >= self.size:
                if timeout is not None and timeout <= 0:
                    return False
                if not self._not_full.wait_for(lambda: len(self._items) < self.size, timeout):
                    return False
            self._items.append(item)
            self._on_depth(len(self._items))
            self._not_empty.notify()
            return True

    def put_evict(self, item: Any) -> list[Any]:
        """Append now; return the oldest items removed to make room (drop-oldest policy)."""
        with self._lock:
            evicted = []
            while len(self._items) >= self.size:
                evicted.append(self._items.popleft())
            self._items.append(item)
            self._on_depth(len(self._items))
            self._not_empty.notify()
            return evicted

    def get(self, timeout: float | None = None) -> Any | None:
        """The oldest item (now *in progress* until :meth:`task_done`), or None after ``timeout`` s."""
        with self._not_empty:
            if not self._items and not self._not_empty.wait_for(lambda: len(self._items) > 0, timeout):
                return None
            item = self._items.popleft()
            self._in_progress += 1
            self._on_depth(len(self._items))
            self._not_full.notify()
            return item

    def task_done(self) -> None:
        with self._lock:
            self._in_progress -= 1
            if not self._items and self._in_progress == 0:
                self._idle.notify_all()

    def idle(self) -> bool:
        with self._lock:
            return not self._items and self._in_progress == 0

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` s until nothing is queued or in progress."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._items and self._in_progress == 0, timeout)

    def take_all(self) -> list[Any]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._on_depth(0)
            self._not_full.notify_all()
            if self._in_progress == 0:
                self._idle.notify_all()
            return items


class RateLimitedLog:
    """At most ``burst`` lines per ``interval_s`` seconds per key; the next line after a quiet
    period reports how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, burst: int = 5) -> None:
        self.logger, self.interval_s, self.burst = logger, interval_s, burst
        self._lock = threading.Lock()
        self._state: dict[str, list[float | int]] = {}

    def warning(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            start, count, suppressed = self._state.get(key, [now, 0, 0])
            if now - start >= self.interval_s:
                start, count = now, 0
            if count >= self.burst:
                self._state[key] = [start, count, suppressed + 1]
                return
            self._state[key] = [start, count + 1, 0]
        if suppressed:
            msg = msg + " (%d similar lines suppressed)"
            args = (*args, suppressed)
        self.logger.warning(msg, *args)
