"""Rejected frames in the serve log as they happen, rate-limited per reason.

The first reject of a reason is logged at once (with its series/frame and detail); further rejects
of that reason within ``interval_s`` are only counted, and one line per reason reports the count
(and the last detail) once the interval has passed — from :meth:`RejectLog.flush_due`, which the
receiver calls whenever it idles, so a burst is reported ~``interval_s`` later even when no further
frame arrives, and from :meth:`RejectLog.flush` at shutdown."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

__all__ = ["RejectLog", "REJECT_LOG_INTERVAL_S"]

REJECT_LOG_INTERVAL_S = 10.0   # at most one line per reason per this many seconds


@dataclass
class _Reason:
    window_start: float    # time.monotonic() of the last line logged for this reason, s
    pending: int = 0       # rejects counted since that line, not yet logged
    last: str = ""         # "series/frame: detail" of the newest pending reject


class RejectLog:
    """One WARNING line per reject reason per ``interval_s`` seconds, with counts. Thread-safe."""

    def __init__(self, logger: logging.Logger, interval_s: float = REJECT_LOG_INTERVAL_S,
                 clock=time.monotonic) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0 s, got {interval_s!r}")
        self.logger, self.interval_s, self._clock = logger, interval_s, clock
        self._lock = threading.Lock()
        self._reasons: dict[str, _Reason] = {}

    def add(self, reason: str, series: str | None, frame: int | None, detail: str) -> None:
        """Count one reject; log it now when its reason logged nothing in the last interval."""
        now = self._clock()
        where = f"{series}/{frame}: {detail}"
        with self._lock:
            state = self._reasons.get(reason)
            if state is not None and now - state.window_start < self.interval_s:
                state.pending += 1
                state.last = where
                return
            if state is not None and state.pending:
                self._emit(reason, state)
            self._reasons[reason] = _Reason(now)
        self.logger.warning("rejected frame (%s) %s", reason, where)

    def flush_due(self) -> None:
        """Log the pending counts of the reasons whose interval has passed."""
        now = self._clock()
        with self._lock:
            for reason, state in self._reasons.items():
                if state.pending and now - state.window_start >= self.interval_s:
                    self._emit(reason, state)
                    state.window_start = now

    def flush(self) -> None:
        """Log every pending count now (shutdown)."""
        with self._lock:
            for reason, state in self._reasons.items():
                if state.pending:
                    self._emit(reason, state)

    def _emit(self, reason: str, state: _Reason) -> None:
        self.logger.warning("rejected %d more frame(s) (%s) in the last %.0f s; last %s", state.pending,
                            reason, self.interval_s, state.last)
        state.pending = 0
