"""Particle tracking across the frames of a series: identities, gaps, merges and splits (pure).

Input per frame (:class:`FrameObservation`): the particle list of the frame (the dicts of
``particles.particle_stats``: ``label``, ``area_px``, ``centroid_px`` [y, x], ``bbox_px``), the
label image whose values are those ``label`` numbers (:func:`label_kept` builds it from the
mask), the pixel size (nm/px) and the cumulative stage drift from ``registration``
(``cumulative_px`` (dy, dx), full-resolution px; drift-corrected position = position - drift).

Per frame, :meth:`ParticleTracker.update`:

1. **overlap**: the previous frame's label image, strided down to about ``overlap_side_px`` and
   shifted by the drift between the two frames, is overlaid on this frame's; one ``bincount``
   gives the pixel overlap of every (previous particle, current particle) pair;
2. **merges** (k → 1): a current particle that holds at least ``merge_overlap`` of the (in-view)
   area of two or more previous tracks is a coalescence. It gets a **new** track id, the event
   names the parents, and the parents end there (their ids never continue on the child);
3. **splits** (1 → k): a previous track that supplied at least ``split_overlap`` of the area of
   two or more current particles ends; each piece gets a new id naming the parent;
4. **links**: the remaining tracks (seen in the previous frame, or missing for at most
   ``max_gap_frames`` processed frames: gap closing) and particles are matched by one global
   assignment (``scipy.optimize.linear_sum_assignment`` on the augmented cost matrix with
   "no link" alternatives). Cost of a link = ½(1 - IoU) + ½·distance/gate, the distance between
   drift-corrected centroids in nm and the gate ``max_displacement_nm`` per frame of gap; a pair
   with no overlap beyond the gate cannot link;
5. unmatched particles start tracks (``appeared``); tracks missing for more than
   ``max_gap_frames`` end (``disappeared``, with the frame they were last seen).

Events (``TrackingResult.events``; ``frame`` is the header's frame number)::

    {"type": "appeared", "track_id": 4, "frame": n}
    {"type": "disappeared", "track_id": 4, "frame": n, "last_frame": m}
    {"type": "merged", "parents": [3, 7], "child": 12, "frame": n}
    {"type": "split", "parent": 5, "children": [13, 14], "frame": n}
    {"type": "reset", "reason": "new_series" | "magnification_change" | ..., "frame": n}

Track ids start at 1 on a new series and are never reused within it (a magnification change
ends every track and continues the numbering). The tracker is one series' state; the daemon
keeps one per series (see INTEGRATION.md). Not thread-safe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from fringelive.engine.particles import keep_labels, label_particles

__all__ = [
    "TrackingSettings",
    "FrameObservation",
    "TrackingResult",
    "ParticleTracker",
    "label_kept",
]

_BIG = 1e6  # cost of an impossible link (finite: scipy needs a feasible full assignment)


@dataclass(frozen=True)
class TrackingSettings:
    """How particles are tracked (the daemon's ``[tracking]`` config section: ``enabled``,
    ``max_gap_frames``, ``max_displacement_nm``; the rest are engine constants with defaults).

    enabled: track at all. max_gap_frames: a track missing for up to this many processed frames
    of its series can still be continued (gap closing); 0 = no gaps. max_displacement_nm: the
    largest drift-corrected centroid move (nm) per frame for a link without mask overlap.
    max_displacement_px: the same in px, used when the frame has no pixel size.
    merge_overlap: fraction of a parent's in-view area that must lie in the child for a merge.
    split_overlap: fraction of a piece's area that must come from the parent for a split.
    overlap_side_px: label images are strided so that their longer side is about this (px).
    """

    enabled: bool = True
    max_gap_frames: int = 3
    max_displacement_nm: float = 2.0
    max_displacement_px: float = 100.0
    merge_overlap: float = 0.4
    split_overlap: float = 0.4
    overlap_side_px: int = 1024

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be true or false, got {self.enabled!r}")
        for name, lo in (("max_gap_frames", 0), ("overlap_side_px", 16)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        for name in ("max_displacement_nm", "max_displacement_px"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                    or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a number > 0, got {v!r}")
        for name in ("merge_overlap", "split_overlap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                    or not 0 < v <= 1:
                raise ValueError(f"{name} must be a number in (0, 1], got {v!r}")


@dataclass(frozen=True, eq=False)
class FrameObservation:
    """One frame as the tracker sees it.

    series / frame: from the header. particles: dicts with ``label`` (int >= 1, the value in
    ``labels``), ``area_px``, ``centroid_px`` [y, x] (px). labels: (H, W) integer label image
    (0 = background; values not in ``particles`` are ignored) or None (then linking is by
    distance only and merges/splits are not detected). pixel_size_nm: nm/px or None.
    cumulative_px: (dy, dx) cumulative stage drift (px) from registration. magnification: (×) or
    None; a change resets the tracks.
    """

    series: str
    frame: int
    particles: Sequence[Mapping[str, Any]]
    labels: np.ndarray | None
    pixel_size_nm: float | None = None
    cumulative_px: tuple[float, float] = (0.0, 0.0)
    magnification: float | None = None


@dataclass(frozen=True)
class TrackingResult:
    """``track_ids[i]`` is the track of ``particles[i]``; ``events`` as in the module docstring;
    ``active`` tracks alive (seen or within the gap window) after this frame; ``reset`` the
    reason the tracks were reset on this frame, or None."""

    track_ids: list[int]
    events: list[dict[str, Any]]
    active: int
    reset: str | None = None


@dataclass
class _Track:
    id: int
    last_k: int  # processed-frame counter of the series when last seen
    last_frame: int  # header frame number when last seen
    centroid_nm: np.ndarray  # drift-corrected (y, x), in nm (or px without a pixel size)
    area_px: float
    parents: tuple[int, ...] = ()


@dataclass
class _Prev:
    small: np.ndarray  # (h, w) int32: index into det_tracks, m = background
    det_tracks: np.ndarray  # (m,) track id of each previous particle
    stride: int
    cumulative_px: tuple[float, float]
    shape: tuple[int, int]


def label_kept(mask: np.ndarray, *, min_area_px: int = 20, connectivity: int = 2) -> np.ndarray:
    """Label image (H, W) int32 numbered like ``particles.particle_stats(mask, min_area_px=...)``:
    components below ``min_area_px`` are 0, the kept ones 1..n in raster order of their first
    pixel. Cost: one ``ndimage.label`` plus one table look-up over the frame."""
    labels, count = label_particles(np.asarray(mask, dtype=bool), connectivity=connectivity)
    return keep_labels(labels, count, min_area_px)[0]


class ParticleTracker:
    """Track identities of one series (see the module docstring)."""

    def __init__(self, settings: TrackingSettings | None = None) -> None:
        self.settings = settings or TrackingSettings()
        self._key: tuple | None = None
        self._series: str | None = None
        self._next_id = 1
        self._k = 0
        self._tracks: dict[int, _Track] = {}
        self._prev: _Prev | None = None

    # -- state -----------------------------------------------------------------------------
    def _reset_reason(self, obs: FrameObservation, shape: tuple[int, int] | None) -> str | None:
        if self._series != obs.series:
            return "new_series"
        mag, px, old_shape = self._key if self._key is not None else (None, None, None)
        if (mag is None) != (obs.magnification is None) or (
                mag is not None and not math.isclose(mag, obs.magnification, rel_tol=1e-6)):
            return "magnification_change"
        if (px is None) != (obs.pixel_size_nm is None) or (
                px is not None and not math.isclose(px, obs.pixel_size_nm, rel_tol=1e-6)):
            return "pixel_size_change"
        if shape is not None and old_shape is not None and shape != old_shape:
            return "shape_change"
        return None

    def _new_id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    @property
    def tracks(self) -> dict[int, dict[str, Any]]:
        """Live tracks: ``{id: {last_frame, centroid_nm, area_px, parents}}`` (a copy)."""
        return {i: {"last_frame": t.last_frame, "centroid_nm": t.centroid_nm.tolist(),
                    "area_px": t.area_px, "parents": list(t.parents)} for i, t in self._tracks.items()}

    # -- one frame ---------------------------------------------------------------------------
    def update(self, obs: FrameObservation) -> TrackingResult:
        st = self.settings
        labels = None if obs.labels is None else np.asarray(obs.labels)
        if labels is not None and labels.ndim != 2:
            raise ValueError(f"labels must be 2-D (H, W), got shape {labels.shape}")
        shape = None if labels is None else (int(labels.shape[0]), int(labels.shape[1]))
        events: list[dict[str, Any]] = []
        reason = self._reset_reason(obs, shape)
        if reason is not None:
            if reason == "new_series":
                self._next_id = 1
            self._series = obs.series
            self._tracks.clear()
            self._prev = None
            self._k = 0
            events.append({"type": "reset", "reason": reason, "frame": obs.frame})
        self._key = (obs.magnification, obs.pixel_size_nm, shape)
        self._k += 1
        k = self._k
        parts = list(obs.particles)
        m = len(parts)
        if not st.enabled:
            return TrackingResult([0] * m, [], 0, reason)

        px = obs.pixel_size_nm
        scale = float(px) if px is not None else 1.0
        gate_unit = st.max_displacement_nm if px is not None else st.max_displacement_px
        cum = np.asarray(obs.cumulative_px, dtype=np.float64)
        cent = np.array([p["centroid_px"] for p in parts], dtype=np.float64).reshape(m, 2)
        cent_nm = (cent - cum[None, :]) * scale
        area = np.array([float(p["area_px"]) for p in parts], dtype=np.float64)
        label_of = np.array([int(p["label"]) for p in parts], dtype=np.int64)

        # 1. overlap with the previous frame ------------------------------------------------
        small, stride = None, 1
        if labels is not None:
            stride = max(1, int(math.ceil(max(shape) / st.overlap_side_px)))
            lut = np.full(max(int(labels.max(initial=0)), int(label_of.max(initial=0))) + 1, m, dtype=np.int32)
            lut[label_of] = np.arange(m, dtype=np.int32)
            small = lut[labels[::stride, ::stride]]
        prev = self._prev
        overlap = None
        if small is not None and prev is not None and prev.stride == stride and prev.shape == shape:
            overlap, prev_view, prev_full, cur_area = _overlap(prev, small, m, cum, stride)
        prev_tracks = prev.det_tracks if prev is not None else np.zeros(0, dtype=np.int64)

        assigned = np.zeros(m, dtype=np.int64)  # 0 = not yet
        ended: set[int] = set()

        # 2./3. merges and splits -----------------------------------------------------------
        if overlap is not None and overlap.size:
            # A parent mostly drifted out of view cannot vote for a merge with its last pixels.
            eligible = prev_view >= 0.25 * prev_full
            with np.errstate(divide="ignore", invalid="ignore"):
                frac_parent = overlap / np.maximum(prev_view[:, None], 1)  # of the parent's in-view area
                frac_piece = overlap / np.maximum(cur_area[None, :], 1)  # of the piece's area
            for j in range(m):
                rows = np.flatnonzero((frac_parent[:, j] >= st.merge_overlap) & eligible)
                parents = sorted({int(prev_tracks[r]) for r in rows
                                  if int(prev_tracks[r]) in self._tracks and int(prev_tracks[r]) not in ended})
                if len(parents) >= 2:
                    child = self._new_id()
                    assigned[j] = child
                    ended.update(parents)
                    events.append({"type": "merged", "parents": parents, "child": child, "frame": obs.frame})
                    self._tracks[child] = _Track(child, k, obs.frame, cent_nm[j], area[j], tuple(parents))
            for r in range(overlap.shape[0]):
                parent = int(prev_tracks[r])
                if parent in ended or parent not in self._tracks:
                    continue
                cols = [j for j in np.flatnonzero(frac_piece[r, :] >= st.split_overlap) if assigned[j] == 0]
                if len(cols) >= 2:
                    children = []
                    for j in cols:
                        c = self._new_id()
                        assigned[j] = c
                        children.append(c)
                        self._tracks[c] = _Track(c, k, obs.frame, cent_nm[j], area[j], (parent,))
                    ended.add(parent)
                    events.append({"type": "split", "parent": parent, "children": children, "frame": obs.frame})
            for t in ended:
                self._tracks.pop(t, None)

        # 4. global assignment of the rest ---------------------------------------------------
        cand = [t for t in self._tracks.values() if t.last_k < k]
        free = np.flatnonzero(assigned == 0)
        if cand and free.size:
            n, f = len(cand), free.size
            row_of_track = {int(tid): r for r, tid in enumerate(prev_tracks)}
            tc = np.array([t.centroid_nm for t in cand], dtype=np.float64).reshape(n, 2)
            gaps = np.array([k - t.last_k for t in cand], dtype=np.float64)
            d = np.hypot(tc[:, None, 0] - cent_nm[None, free, 0], tc[:, None, 1] - cent_nm[None, free, 1])
            gate = gate_unit * gaps[:, None]
            iou = np.zeros((n, f))
            if overlap is not None:
                for a, t in enumerate(cand):
                    r = row_of_track.get(t.id)
                    if r is not None and t.last_k == k - 1:
                        inter = overlap[r, free]
                        union = prev_view[r] + cur_area[free] - inter
                        iou[a] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
            cost = 0.5 * (1.0 - iou) + 0.5 * np.minimum(d / gate, 1.0)
            feasible = (d <= gate) | (iou > 0)
            c = np.full((n + f, f + n), _BIG)
            c[:n, :f] = np.where(feasible, cost, _BIG)
            c[np.arange(n), f + np.arange(n)] = 1.0  # track not linked
            c[n + np.arange(f), np.arange(f)] = 1.0  # particle not linked (new track)
            c[n:, f:] = 0.0
            rows, cols = linear_sum_assignment(c)
            for r, col in zip(rows, cols):
                if r < n and col < f and feasible[r, col]:
                    t = cand[r]
                    j = int(free[col])
                    assigned[j] = t.id
                    t.last_k, t.last_frame, t.centroid_nm, t.area_px = k, obs.frame, cent_nm[j], area[j]

        # 5. births and deaths ----------------------------------------------------------------
        for j in np.flatnonzero(assigned == 0):
            tid = self._new_id()
            assigned[j] = tid
            self._tracks[tid] = _Track(tid, k, obs.frame, cent_nm[j], area[j])
            events.append({"type": "appeared", "track_id": tid, "frame": obs.frame})
        for tid in [t.id for t in self._tracks.values() if k - t.last_k > st.max_gap_frames]:
            t = self._tracks.pop(tid)
            events.append({"type": "disappeared", "track_id": tid, "frame": obs.frame, "last_frame": t.last_frame})

        if small is not None:
            self._prev = _Prev(small=small, det_tracks=assigned.copy(), stride=stride,
                               cumulative_px=(float(cum[0]), float(cum[1])), shape=shape)
        else:
            self._prev = None
        return TrackingResult([int(a) for a in assigned], events, len(self._tracks), reason)


def _overlap(prev: _Prev, small: np.ndarray, m: int, cum: np.ndarray, stride: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel overlaps (strided px) between the previous particles, shifted by the drift between
    the frames, and the current ones: ``(overlap (m_prev, m), prev_in_view (m_prev,),
    prev_area (m_prev,), cur_area (m,))``."""
    mp = prev.det_tracks.size
    dy, dx = (int(round(v)) for v in ((cum - np.asarray(prev.cumulative_px)) / stride))
    h, w = small.shape
    # current pixel (y, x) shows what the previous frame had at (y - dy, x - dx)
    y0c, y1c = max(0, dy), min(h, h + dy)
    x0c, x1c = max(0, dx), min(w, w + dx)
    cur_area = np.bincount(small.ravel(), minlength=m + 1)[:m].astype(np.float64)
    prev_area = np.bincount(prev.small.ravel(), minlength=mp + 1)[:mp].astype(np.float64)
    if y0c >= y1c or x0c >= x1c:
        return np.zeros((mp, m)), np.zeros(mp), prev_area, cur_area
    cur = small[y0c:y1c, x0c:x1c]
    old = prev.small[y0c - dy:y1c - dy, x0c - dx:x1c - dx]
    key = old.astype(np.int64) * (m + 1) + cur
    counts = np.bincount(key.ravel(), minlength=(mp + 1) * (m + 1)).reshape(mp + 1, m + 1)
    prev_view = counts[:mp, :].sum(axis=1).astype(np.float64)
    return counts[:mp, :m].astype(np.float64), prev_view, prev_area, cur_area
