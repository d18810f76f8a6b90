"""Time-series rows of tracked particles and events, ready for the HDF5 and CSV writers (pure).

One **particle row** per (frame, particle) and one **event row** per tracking event; both are
flat dicts of numbers and strings with fixed column names (:data:`PARTICLE_COLUMNS`,
:data:`EVENT_COLUMNS`) and units (:data:`UNITS`, stored by the recorder as HDF5 attributes).
Stimulus keys of the frame header (``temperature_C``, ``pressure_Pa``, any ``stimulus.*`` at
the top level or in ``tags``) are copied into every row of the frame under their own names.

Positions are drift-corrected: ``centroid_nm = (centroid_px - cumulative_px) * pixel_size_nm``
(y, x), so a particle at rest on a drifting stage has a constant centroid. Without a pixel
size the nm columns are NaN and the ``*_px`` columns still hold the values.

``circularity = 4π·area / perimeter²`` (1 for a disc, smaller for elongated or necked shapes,
e.g. two sintering particles), with the perimeter estimated from the 4-neighbour boundary edge
count times π/4 (the Cauchy–Crofton correction for random orientation), clipped to [0, 1].
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from fringelive.engine.frame import STIMULUS_KEYS as _FRAME_STIMULUS_KEYS
from fringelive.engine.frame import STIMULUS_NAMESPACE

__all__ = [
    "PARTICLE_COLUMNS",
    "EVENT_COLUMNS",
    "UNITS",
    "STIMULUS_KEYS",
    "stimulus_of",
    "perimeter_px",
    "particle_rows",
    "event_rows",
    "columns",
    "csv_text",
]

PARTICLE_COLUMNS: tuple[str, ...] = (
    "series", "frame", "time_s", "track_id", "label", "centroid_y_nm", "centroid_x_nm",
    "centroid_y_px", "centroid_x_px", "drift_y_px", "drift_x_px", "area_nm2", "area_px",
    "diameter_nm", "circularity", "touches_border",
)
EVENT_COLUMNS: tuple[str, ...] = ("series", "frame", "time_s", "type", "track_id", "parents", "children",
                                  "last_frame", "reason")
UNITS: dict[str, str] = {
    "frame": "", "time_s": "s", "track_id": "", "label": "", "centroid_y_nm": "nm", "centroid_x_nm": "nm",
    "centroid_y_px": "pixel", "centroid_x_px": "pixel", "drift_y_px": "pixel", "drift_x_px": "pixel",
    "area_nm2": "nm^2", "area_px": "pixel^2", "diameter_nm": "nm", "circularity": "",
    "touches_border": "", "last_frame": "", "temperature_C": "degC", "pressure_Pa": "Pa",
}
#: Named stimulus keys (one definition: ``engine/frame.py``); any key starting with ``stimulus.``
#: is passed through too.
STIMULUS_KEYS: tuple[str, ...] = _FRAME_STIMULUS_KEYS


def stimulus_of(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Stimulus values of a frame header / ``meta`` map: ``temperature_C``, ``pressure_Pa`` and
    ``stimulus.*`` keys, from the top level or ``tags`` (top level wins); a ``stimulus`` map
    ``{name: value}`` becomes ``stimulus.<name>`` columns. Numbers stay numbers (bool → int),
    strings stay strings, anything else is dropped."""
    out: dict[str, Any] = {}
    tags = meta.get("tags") if isinstance(meta.get("tags"), Mapping) else {}
    for source in (tags, meta):
        nested = source.get(STIMULUS_NAMESPACE)
        items = list(source.items())
        if isinstance(nested, Mapping):
            items = [(f"{STIMULUS_NAMESPACE}.{k}", v) for k, v in nested.items()] + items
        for key, value in items:
            if not isinstance(key, str) or not (key in STIMULUS_KEYS or key.startswith(STIMULUS_NAMESPACE + ".")):
                continue
            if isinstance(value, bool):
                out[key] = int(value)
            elif isinstance(value, (int, float, np.integer, np.floating)):
                out[key] = float(value)
            elif isinstance(value, str):
                out[key] = value
    return out


def perimeter_px(labels: np.ndarray, label: int, bbox_px: Sequence[int]) -> float:
    """Perimeter (px) of component ``label`` of ``labels`` (H, W) inside ``bbox_px`` [y0, x0,
    y1, x1) (half-open): 4-neighbour boundary edges × π/4. The frame edge counts as boundary."""
    y0, x0, y1, x1 = (int(v) for v in bbox_px)
    crop = np.zeros((y1 - y0 + 2, x1 - x0 + 2), dtype=bool)
    crop[1:-1, 1:-1] = labels[y0:y1, x0:x1] == label
    edges = np.count_nonzero(crop[1:, :] != crop[:-1, :]) + np.count_nonzero(crop[:, 1:] != crop[:, :-1])
    return edges * math.pi / 4.0


def _time_of(meta: Mapping[str, Any], t0: float | None) -> float:
    ts = meta.get("timestamp")
    if isinstance(ts, (int, float)) and not isinstance(ts, bool) and math.isfinite(ts):
        return float(ts) - (t0 or 0.0)
    return math.nan


def particle_rows(meta: Mapping[str, Any], particles: Sequence[Mapping[str, Any]], track_ids: Sequence[int],
                  cumulative_px: Sequence[float], labels: np.ndarray | None = None, *,
                  t0: float | None = None) -> list[dict[str, Any]]:
    """Rows of one frame. ``meta``: the frame header (``series``, ``frame``, ``pixel_size_nm``,
    ``timestamp`` (Unix s), stimulus keys). ``particles``: ``particle_stats`` dicts; ``track_ids``
    aligned with them; ``cumulative_px`` (dy, dx) drift (px); ``labels`` (H, W) numbered like
    the particles' ``label`` (for the circularity when a particle dict has no ``circularity``
    key; NaN without either). ``t0``: series start (Unix s)
    subtracted from ``timestamp`` → ``time_s`` (NaN without a timestamp)."""
    px = meta.get("pixel_size_nm")
    px = float(px) if isinstance(px, (int, float)) and not isinstance(px, bool) and px > 0 else None
    dy, dx = float(cumulative_px[0]), float(cumulative_px[1])
    stim = stimulus_of(meta)
    time_s = _time_of(meta, t0)
    rows = []
    for p, tid in zip(particles, track_ids):
        cy, cx = (float(v) for v in p["centroid_px"])
        a_px = float(p["area_px"])
        circ = p.get("circularity")
        circ = float(circ) if isinstance(circ, (int, float)) and not isinstance(circ, bool) else math.nan
        if math.isnan(circ) and labels is not None and a_px > 0:
            per = perimeter_px(labels, int(p["label"]), p["bbox_px"])
            circ = min(1.0, 4.0 * math.pi * a_px / (per * per)) if per > 0 else math.nan
        row = {
            "series": str(meta.get("series", "")), "frame": int(meta.get("frame", -1)), "time_s": time_s,
            "track_id": int(tid), "label": int(p["label"]),
            "centroid_y_nm": (cy - dy) * px if px else math.nan, "centroid_x_nm": (cx - dx) * px if px else math.nan,
            "centroid_y_px": cy, "centroid_x_px": cx, "drift_y_px": dy, "drift_x_px": dx,
            "area_nm2": a_px * px * px if px else math.nan, "area_px": a_px,
            "diameter_nm": 2.0 * math.sqrt(a_px / math.pi) * px if px else math.nan,
            "circularity": circ, "touches_border": bool(p.get("touches_border", False)),
        }
        row.update(stim)
        rows.append(row)
    return rows


def event_rows(meta: Mapping[str, Any], events: Iterable[Mapping[str, Any]], *, t0: float | None = None
               ) -> list[dict[str, Any]]:
    """Rows of one frame's tracking events; ``track_id`` is the subject (the child of a merge,
    the parent of a split), ``parents`` / ``children`` are ";"-joined ids ("" when none)."""
    stim = stimulus_of(meta)
    time_s = _time_of(meta, t0)
    rows = []
    for e in events:
        typ = str(e.get("type", ""))
        subject = e.get("track_id", e.get("child", e.get("parent", 0)))
        parents = e.get("parents", [e["parent"]] if "parent" in e else [])
        children = e.get("children", [e["child"]] if "child" in e else [])
        row = {"series": str(meta.get("series", "")), "frame": int(e.get("frame", meta.get("frame", -1))),
               "time_s": time_s, "type": typ, "track_id": int(subject or 0),
               "parents": ";".join(str(int(p)) for p in parents),
               "children": ";".join(str(int(c)) for c in children),
               "last_frame": int(e.get("last_frame", -1)), "reason": str(e.get("reason", ""))}
        row.update(stim)
        rows.append(row)
    return rows


def columns(rows: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Column arrays of ``rows`` (for ``h5py`` datasets / ``pandas.DataFrame``): the fixed
    ``names`` (default: the keys of the first row) then any stimulus keys seen in any row,
    missing values NaN (numbers) or "" (strings). Strings → object arrays."""
    if names is None:
        names = list(rows[0].keys()) if rows else []
    extra = sorted({k for r in rows for k in r if k not in names})
    out: dict[str, np.ndarray] = {}
    for name in list(names) + extra:
        values = [r.get(name) for r in rows]
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, str) for v in present):
            out[name] = np.array([v if v is not None else "" for v in values], dtype=object)
        elif present and all(isinstance(v, bool) for v in present):
            out[name] = np.array([bool(v) for v in values], dtype=bool)
        elif present and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present) \
                and len(present) == len(values):
            out[name] = np.array(values, dtype=np.int64)
        else:
            out[name] = np.array([float(v) if isinstance(v, (int, float, np.number)) else math.nan
                                  for v in values], dtype=np.float64)
    return out


def csv_text(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> str:
    """CSV text (header line + one line per row) of ``rows`` with columns ``names`` then any
    extra (stimulus) keys; NaN → empty field."""
    extra = sorted({k for r in rows for k in r if k not in names})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(names) + extra)
    for r in rows:
        line = []
        for name in list(names) + extra:
            v = r.get(name, "")
            if isinstance(v, float) and not math.isfinite(v):
                v = ""
            elif isinstance(v, float):
                v = f"{v:.6g}"
            line.append(v)
        writer.writerow(line)
    return buf.getvalue()
