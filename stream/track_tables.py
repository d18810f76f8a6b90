"""Time-series tables of tracked particles in a recording (``watch --record``) and their export
(``fringelive tracks``).

Per series group of the recording (``docs/protocol.md`` § Recording), NeXus-style, units as the
``units`` attribute of each column (:data:`fringelive.engine.timeseries.UNITS`)::

    /series/<name>/tracking/            NX_class = NXcollection; attrs t0_unix_s (first timestamp)
        particles/                      NX_class = NXdata, signal = "diameter_nm", axes = "time_s"
            frame, time_s, track_id, label, centroid_y_nm, centroid_x_nm (drift-corrected),
            centroid_y_px, centroid_x_px, drift_y_px, drift_x_px, area_nm2, area_px,
            diameter_nm, circularity, touches_border, <stimulus columns>
        events/                         NX_class = NXdata: frame, time_s, type, track_id,
            parents ("3;7"), children, last_frame, reason, <stimulus columns>
        registration/                   NX_class = NXdata: frame, time_s, shift_y_px, shift_x_px,
            cumulative_y_px, cumulative_x_px, confidence, status, <stimulus columns>

Every column is a 1-D dataset of one row per particle-frame (event, frame). A stimulus column
(``temperature_C``, ``pressure_Pa``, ``stimulus.<name>``) first seen mid-series is back-filled with
NaN (numbers) or "" (strings). Rows are appended per result and flushed with it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fringelive.engine import timeseries

__all__ = ["TABLES", "REGISTRATION_COLUMNS", "TrackTableWriter", "read_tables", "table_rows", "write_csv",
           "summarise"]

REGISTRATION_COLUMNS: tuple[str, ...] = ("series", "frame", "time_s", "shift_y_px", "shift_x_px", "cumulative_y_px",
                                         "cumulative_x_px", "confidence", "status")
_UNITS = {**timeseries.UNITS, "shift_y_px": "pixel", "shift_x_px": "pixel", "cumulative_y_px": "pixel",
          "cumulative_x_px": "pixel", "confidence": ""}
#: table name → its fixed columns (``series`` is the group, not a column)
TABLES: dict[str, tuple[str, ...]] = {
    "particles": timeseries.PARTICLE_COLUMNS,
    "events": timeseries.EVENT_COLUMNS,
    "registration": REGISTRATION_COLUMNS,
}


def _registration_rows(meta: Mapping[str, Any], reg: Mapping[str, Any], t0: float | None) -> list[dict[str, Any]]:
    shift = reg.get("shift_px") or [math.nan, math.nan]
    cum = reg.get("cumulative_px") or [math.nan, math.nan]
    conf = reg.get("confidence")
    ts = meta.get("timestamp")
    time_s = float(ts) - (t0 or 0.0) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else math.nan
    row = {"series": str(meta.get("series", "")), "frame": int(meta.get("frame", -1)), "time_s": time_s,
           "shift_y_px": float(shift[0]), "shift_x_px": float(shift[1]),
           "cumulative_y_px": float(cum[0]), "cumulative_x_px": float(cum[1]),
           "confidence": float(conf) if isinstance(conf, (int, float)) else math.nan,
           "status": str(reg.get("status", ""))}
    row.update(timeseries.stimulus_of(meta))
    return [row]


class TrackTableWriter:
    """Appends a result header's tracking rows to ``group``/tracking (an h5py group of one series)."""

    def __init__(self, h5py: Any) -> None:
        self._h5py = h5py
        self._str = h5py.string_dtype("utf-8")

    def add(self, group: Any, header: Mapping[str, Any]) -> int:
        """Rows of one result header (with ``registration`` / ``track_id`` from a tracking daemon);
        returns the number of particle rows written (0 when the header has no tracking)."""
        reg = header.get("registration")
        particles = header.get("particles") or []
        if not isinstance(reg, Mapping):
            return 0
        meta = dict(header.get("meta") or {})
        meta["series"], meta["frame"] = header.get("series", ""), header.get("frame", -1)
        tracking = group.get("tracking")
        if tracking is None:
            tracking = group.create_group("tracking")
            tracking.attrs["NX_class"] = "NXcollection"
            ts = meta.get("timestamp")
            tracking.attrs["t0_unix_s"] = float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) \
                else math.nan
        t0 = float(tracking.attrs["t0_unix_s"])
        t0 = None if math.isnan(t0) else t0
        ids = [int(p.get("track_id", 0)) for p in particles]
        cum = reg.get("cumulative_px") or (0.0, 0.0)
        prow = timeseries.particle_rows(meta, particles, ids, cum, t0=t0)
        self._append(tracking, "particles", prow)
        self._append(tracking, "events", timeseries.event_rows(meta, header.get("events") or [], t0=t0))
        self._append(tracking, "registration", _registration_rows(meta, reg, t0))
        return len(prow)

    def _append(self, tracking: Any, name: str, rows: list[dict[str, Any]]) -> None:
        table = tracking.get(name)
        if table is None:
            table = tracking.create_group(name)
            table.attrs["NX_class"] = "NXdata"
            if name == "particles":
                table.attrs["signal"], table.attrs["axes"] = "diameter_nm", "time_s"
            table.attrs["rows"] = 0
        if not rows:
            return
        n = int(table.attrs["rows"])
        cols = timeseries.columns(rows, [c for c in TABLES[name] if c != "series"])
        cols.pop("series", None)
        for key, values in cols.items():
            ds = table.get(key)
            if ds is None:
                ds = self._create(table, key, values, n)
            ds.resize(n + len(rows), axis=0)
            ds[n:] = self._cast(values, ds.dtype)
        for key in table:  # columns absent from these rows (a stimulus key that stopped)
            if key not in cols:
                ds = table[key]
                ds.resize(n + len(rows), axis=0)
                ds[n:] = self._fill(ds.dtype)
        table.attrs["rows"] = n + len(rows)

    def _create(self, table: Any, key: str, values: np.ndarray, n: int) -> Any:
        dtype = self._str if values.dtype == object else values.dtype
        ds = table.create_dataset(key, shape=(n,), maxshape=(None,), dtype=dtype, chunks=(1024,))
        if n:
            ds[:] = self._fill(ds.dtype)
        unit = _UNITS.get(key)
        if unit is not None:
            ds.attrs["units"] = unit
        return ds

    def _fill(self, dtype: np.dtype) -> Any:
        if self._h5py.check_string_dtype(dtype) is not None:
            return ""
        if dtype == bool:
            return False
        return -1 if np.issubdtype(dtype, np.integer) else np.nan

    def _cast(self, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
        if self._h5py.check_string_dtype(dtype) is not None:
            return np.array(["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
                             for v in values], dtype=object)
        if values.dtype == object:  # strings into a numeric column: not numbers
            return np.array([_to_float(v) for v in values], dtype=np.float64).astype(dtype)
        if np.issubdtype(dtype, np.integer) and np.issubdtype(values.dtype, np.floating):
            return np.where(np.isfinite(values), values, -1).astype(dtype)
        return values.astype(dtype)


def _to_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# --------------------------------------------------------------------------------------------
# reading and export
# --------------------------------------------------------------------------------------------


def read_tables(path: str | Path, series: str | None = None) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """``{series: {"particles"|"events"|"registration": {column: array}}}`` of a recording
    (strings as str arrays); series without tracking tables are left out."""
    import h5py

    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != "fringelive-results":
            raise ValueError(f"{path} is not a fringelive recording (format attribute "
                             f"{f.attrs.get('format')!r})")
        for name, g in f.get("series", {}).items():
            real = str(g.attrs.get("series", name))
            if series is not None and real != series:
                continue
            if "tracking" not in g:
                continue
            tables: dict[str, dict[str, np.ndarray]] = {}
            for tname in TABLES:
                t = g["tracking"].get(tname)
                if t is None:
                    continue
                tables[tname] = {k: (t[k].asstr()[:] if h5py.check_string_dtype(t[k].dtype) else t[k][:]) for k in t}
            out[real] = tables
    return out


def table_rows(columns: Mapping[str, np.ndarray], series: str) -> list[dict[str, Any]]:
    """Row dicts of a column table (for :func:`fringelive.engine.timeseries.csv_text`)."""
    keys = list(columns)
    n = len(next(iter(columns.values()))) if columns else 0
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"series": series}
        for k in keys:
            v = columns[k][i]
            row[k] = v.item() if isinstance(v, np.generic) else v
        rows.append(row)
    return rows


def write_csv(tables: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]], directory: str | Path) -> list[Path]:
    """``<dir>/<series>_<table>.csv`` per series and table (fixed columns, then stimulus
    columns; NaN as an empty field); returns the files written."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    written = []
    for series, t in tables.items():
        safe = series.replace("/", "\u2215") or "\u2205"
        for tname, cols in t.items():
            p = d / f"{safe}_{tname}.csv"
            p.write_text(timeseries.csv_text(table_rows(cols, series), TABLES[tname]), encoding="utf-8")
            written.append(p)
    return written


def summarise(series: str, tables: Mapping[str, Mapping[str, np.ndarray]]) -> str:
    """A few lines per series: tracks, lifetimes, merges/splits, mean diameter first/last frame."""
    p = tables.get("particles", {})
    e = tables.get("events", {})
    lines = [f"series {series}:"]
    if not p or len(p.get("frame", ())) == 0:
        return lines[0] + " no tracked particles"
    frames, ids, diam = p["frame"], p["track_id"], p["diameter_nm"]
    tracks = np.unique(ids[ids > 0])
    life = [int(np.unique(frames[ids == t]).size) for t in tracks]
    f0, f1 = int(frames.min()), int(frames.max())
    mean0 = float(np.nanmean(diam[frames == f0])) if np.isfinite(diam[frames == f0]).any() else math.nan
    mean1 = float(np.nanmean(diam[frames == f1])) if np.isfinite(diam[frames == f1]).any() else math.nan
    lines.append(f"  frames {f0}..{f1}, {tracks.size} tracks, lifetime (frames) median "
                 f"{float(np.median(life)):.0f} max {max(life)}")
    lines.append(f"  mean diameter {mean0:.3f} nm (frame {f0}) -> {mean1:.3f} nm (frame {f1})")
    types = e.get("type", np.array([], dtype=str))
    for kind in ("merged", "split"):
        sel = np.flatnonzero(types == kind)
        if sel.size:
            what = ", ".join(f"frame {int(e['frame'][i])}: {e['parents'][i] or e['track_id'][i]} -> "
                             f"{e['children'][i] or e['track_id'][i]}" for i in sel[:10])
            lines.append(f"  {kind} {sel.size}: {what}")
    return "\n".join(lines)
