"""Put the results of several daemon workers back into frame order, per series.

Pure logic: no sockets, no threads, no clock (callers pass ``now``, monotonic seconds). The
sockets live in ``stream/merger.py`` (``fringelive merge``); the rules are documented in
``docs/scaling.md``. Items are opaque (the merger passes ZeroMQ frames through byte for byte);
each comes with its ``series`` (str), ``frame`` index (int >= 0) and size (bytes).

Per series, frame *k* is released when *k* is the next expected index (the *cursor*); later
frames wait in a bounded buffer. The rules:

* **start**: a new series (or one forgotten after ``series_idle_s``) starts at frame 0 at once;
  otherwise its cursor starts at the lowest index that arrived within ``gap_timeout_s`` of its
  first message (workers race, so the first result seen is not always the first frame). A
  series that does not start at 0 is therefore delayed once by up to ``gap_timeout_s``.
* **gap**: a frame that never comes (dropped by a PUB high-water mark, skipped by the sender, a
  worker died) is given up when a later frame has waited ``gap_timeout_s``; the frames before it
  are released in order and the missing indices are counted (``gap_frames``). Every frame thus
  waits at most ``gap_timeout_s`` (plus the caller's poll interval).
* **bounds**: more than ``max_frames`` held frames or ``max_bytes`` held bytes (all series
  together) give up the gap in front of the longest-waiting frame at once (``overflow``).
* **duplicate**: an index already released or held is dropped and counted.
* **late**: an index that was given up as a gap (or lies below a settled start) and arrives
  afterwards is counted (``late``) and
  dropped (``late = "drop"``, default: the output stays strictly increasing per series) or
  released at once out of order (``late = "forward"``).
* **unordered**: a message without series or frame (e.g. an error about an undecodable header)
  is released at once.

Output order is strictly increasing frame index per series (except forwarded late frames);
across series, messages keep the order in which they became releasable.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["LATE_POLICIES", "ReorderSettings", "Reorderer"]

T = TypeVar("T")

LATE_POLICIES = ("drop", "forward")
_MAX_GAP_RANGES = 1024  # given-up index ranges remembered per series (to tell late from duplicate)


@dataclass(frozen=True)
class ReorderSettings:
    """``gap_timeout_s``: seconds a frame may wait for the frames before it (s > 0);
    ``max_frames``: frames held, all series together; ``max_bytes``: bytes held, all series
    together; ``late``: ``"drop"`` | ``"forward"``; ``series_idle_s``: seconds without a message
    after which a series is forgotten (a later frame of that name starts it afresh; must exceed
    ``gap_timeout_s``); ``max_series``: series tracked at once (the least recently active is
    flushed and forgotten beyond it)."""

    gap_timeout_s: float = 2.0
    max_frames: int = 256
    max_bytes: int = 1 << 30
    late: str = "drop"
    series_idle_s: float = 60.0
    max_series: int = 1024

    def __post_init__(self) -> None:
        if not (isinstance(self.gap_timeout_s, (int, float)) and math.isfinite(self.gap_timeout_s)
                and self.gap_timeout_s > 0):
            raise ValueError(f"gap_timeout_s must be a finite number of seconds > 0, got {self.gap_timeout_s!r}")
        for name in ("max_frames", "max_bytes", "max_series"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.late not in LATE_POLICIES:
            raise ValueError(f"late must be one of {list(LATE_POLICIES)}, got {self.late!r}")
        if not (isinstance(self.series_idle_s, (int, float)) and self.series_idle_s > self.gap_timeout_s):
            raise ValueError(f"series_idle_s must be > gap_timeout_s ({self.gap_timeout_s} s), "
                             f"got {self.series_idle_s!r}")


@dataclass
class _Held(Generic[T]):
    item: T
    nbytes: int
    seq: int


@dataclass
class _Series:
    cursor: int | None                    # next expected index; None until the start is known
    held: dict[int, _Held[Any]] = field(default_factory=dict)
    heap: list[int] = field(default_factory=list)   # held indices (min-heap)
    gaps: collections.deque[tuple[int, int]] = field(
        default_factory=lambda: collections.deque(maxlen=_MAX_GAP_RANGES))  # given up [start, stop)
    last_seen: float = 0.0


class Reorderer(Generic[T]):
    """Frame-order release of items per series (see the module docstring for the rules).

    ``push(series, frame, item, nbytes, now)`` and ``poll(now)`` return the items that may go
    out now, in order; ``flush()`` releases everything held (at shutdown); ``next_deadline()``
    is the time at which ``poll`` will next release something held; ``stats()`` the counters.
    Not thread-safe: one owner (or a lock around every call).
    """

    def __init__(self, settings: ReorderSettings | None = None) -> None:
        self.settings = settings if settings is not None else ReorderSettings()
        self._series: collections.OrderedDict[str, _Series] = collections.OrderedDict()  # by last activity
        self._deadlines: list[tuple[float, int, str, int]] = []   # (deadline, seq, series, frame)
        self._seq = itertools.count()
        self.held_frames = 0
        self.held_bytes = 0
        self._counts = dict.fromkeys(
            ("received", "released", "in_order", "reordered", "gap_frames", "gaps", "overflow", "duplicates",
             "late", "unordered", "series_started", "series_forgotten", "max_held_frames", "max_held_bytes"), 0)

    # -- input ----------------------------------------------------------------------------------
    def push(self, series: str | None, frame: int | None, item: T, nbytes: int, now: float) -> list[T]:
        """Take one message; return the items releasable now (possibly none, possibly several)."""
        c = self._counts
        c["received"] += 1
        out: list[T] = []
        if series is None or frame is None:
            c["unordered"] += 1
            self._emit(out, item)
            return out
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
            raise ValueError(f"frame must be an integer >= 0, got {frame!r}")
        s = self._series.get(series)
        if s is None:
            s = self._new_series(series, out)
        else:
            self._series.move_to_end(series)
        s.last_seen = now
        if frame in s.held:
            c["duplicates"] += 1
            return out
        if s.cursor is None and frame == 0:
            s.cursor = 0
        if s.cursor is not None and frame < s.cursor:
            if self._take_gap(s, frame):
                c["late"] += 1
                if self.settings.late == "forward":
                    self._emit(out, item)
            else:
                c["duplicates"] += 1
            return out
        if s.cursor is not None and frame == s.cursor:
            c["in_order"] += 1
            self._emit(out, item)
            s.cursor += 1
            self._release_run(s, out)
            return out
        self._hold(series, s, frame, item, nbytes, now)  # frame > cursor, or the start is not known yet
        self._enforce_bounds(out)
        return out

    def poll(self, now: float) -> list[T]:
        """Release what waited ``gap_timeout_s`` (and everything in front of it, in order);
        forget series idle for ``series_idle_s``."""
        out: list[T] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, seq, name, frame = heapq.heappop(self._deadlines)
            s = self._series.get(name)
            if s is not None and frame in s.held and s.held[frame].seq == seq:
                self._give_up_until(s, frame, out)
        idle_before = now - self.settings.series_idle_s
        while self._series:
            name, s = next(iter(self._series.items()))
            if s.last_seen > idle_before or s.held:
                break
            del self._series[name]
            self._counts["series_forgotten"] += 1
        return out

    def flush(self) -> list[T]:
        """Release every held frame in order per series (gaps counted); keeps the cursors."""
        out: list[T] = []
        for s in self._series.values():
            if s.heap:
                self._give_up_until(s, max(s.held), out)
        self._deadlines.clear()
        return out

    def next_deadline(self) -> float | None:
        """Monotonic time at which :meth:`poll` releases something held, or None."""
        while self._deadlines:
            _, seq, name, frame = self._deadlines[0]
            s = self._series.get(name)
            if s is not None and frame in s.held and s.held[frame].seq == seq:
                return self._deadlines[0][0]
            heapq.heappop(self._deadlines)
        return None

    def stats(self) -> dict[str, int]:
        """Counters: ``received``, ``released``, ``in_order`` (released on arrival),
        ``reordered`` (released after waiting), ``gap_frames`` (missing indices given up),
        ``gaps`` (gap events), ``overflow`` (gaps given up early because of the bounds),
        ``duplicates``, ``late``, ``unordered``, ``series_started``, ``series_forgotten``,
        ``max_held_frames``/``max_held_bytes`` (high-water marks), and now: ``held_frames``,
        ``held_bytes``, ``series``."""
        return {**self._counts, "held_frames": self.held_frames, "held_bytes": self.held_bytes,
                "series": len(self._series)}

    # -- internals ------------------------------------------------------------------------------
    def _emit(self, out: list[T], item: T) -> None:
        out.append(item)
        self._counts["released"] += 1

    def _new_series(self, name: str, out: list[T]) -> _Series:
        while len(self._series) >= self.settings.max_series:
            _, old = self._series.popitem(last=False)
            if old.heap:
                self._give_up_until(old, max(old.held), out)
            self._counts["series_forgotten"] += 1
        s = _Series(cursor=None)
        self._series[name] = s
        self._counts["series_started"] += 1
        return s

    def _hold(self, name: str, s: _Series, frame: int, item: T, nbytes: int, now: float) -> None:
        seq = next(self._seq)
        s.held[frame] = _Held(item, int(nbytes), seq)
        heapq.heappush(s.heap, frame)
        heapq.heappush(self._deadlines, (now + self.settings.gap_timeout_s, seq, name, frame))
        self.held_frames += 1
        self.held_bytes += int(nbytes)
        c = self._counts
        c["max_held_frames"] = max(c["max_held_frames"], self.held_frames)
        c["max_held_bytes"] = max(c["max_held_bytes"], self.held_bytes)

    def _pop_held(self, s: _Series, out: list[T]) -> int:
        frame = heapq.heappop(s.heap)
        h = s.held.pop(frame)
        self.held_frames -= 1
        self.held_bytes -= h.nbytes
        self._counts["reordered"] += 1
        self._emit(out, h.item)
        return frame

    def _release_run(self, s: _Series, out: list[T]) -> None:
        """Release held frames while the smallest is the cursor."""
        while s.heap and s.heap[0] == s.cursor:
            self._pop_held(s, out)
            s.cursor += 1

    def _give_up_until(self, s: _Series, frame: int, out: list[T]) -> None:
        """Release every held frame <= ``frame`` in order, giving up the indices missing in
        between (a start not at 0 is no gap: its lower indices count as late if they come),
        then the run that follows."""
        if s.cursor is None:
            s.cursor = s.heap[0]
            s.gaps.append((0, s.cursor))
        while s.heap and s.heap[0] <= frame:
            nxt = s.heap[0]
            if nxt > s.cursor:
                s.gaps.append((s.cursor, nxt))
                self._counts["gap_frames"] += nxt - s.cursor
                self._counts["gaps"] += 1
            self._pop_held(s, out)
            s.cursor = nxt + 1
        self._release_run(s, out)

    def _take_gap(self, s: _Series, frame: int) -> bool:
        """True (and the index is no longer missing) when ``frame`` was given up as a gap."""
        for i, (a, b) in enumerate(s.gaps):
            if a <= frame < b:
                pieces = [r for r in ((a, frame), (frame + 1, b)) if r[0] < r[1]]
                rest = list(s.gaps)
                rest[i:i + 1] = pieces
                s.gaps.clear()
                s.gaps.extend(rest[-_MAX_GAP_RANGES:])
                return True
        return False

    def _enforce_bounds(self, out: list[T]) -> None:
        st = self.settings
        while (self.held_frames > st.max_frames or self.held_bytes > st.max_bytes) and self._deadlines:
            _, seq, name, frame = heapq.heappop(self._deadlines)
            s = self._series.get(name)
            if s is None or frame not in s.held or s.held[frame].seq != seq:
                continue
            self._counts["overflow"] += 1
            self._give_up_until(s, frame, out)
