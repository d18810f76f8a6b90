"""The demo's in situ outputs from the result headers it received: ``tracks.csv`` (one row per
particle-frame, drift-corrected, ``engine/timeseries.py`` columns), ``overlay.png`` (the last
frame with mask outlines, track ids, a scale bar in nm, a legend and a title naming the frame,
conditions and model) and ``growth.png`` (equivalent diameter over time per track, the
coalescence marked). The figures need matplotlib (``pip install 'fringelive[train]'``); without
it ``overlay.png`` is the plain outline image and ``growth.png`` is skipped, with a message."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fringelive.engine import timeseries

__all__ = ["tracks_rows", "write_tracks_csv", "write_overlay_figure", "write_growth_figure"]


def tracks_rows(headers: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Particle rows of every tracked result header (frame order), time from the first timestamp."""
    rows: list[dict[str, Any]] = []
    t0 = None
    for h in sorted(headers, key=lambda h: int(h.get("frame", 0))):
        reg = h.get("registration")
        if not isinstance(reg, Mapping):
            continue
        meta = dict(h.get("meta") or {})
        meta["series"], meta["frame"] = h.get("series", ""), h.get("frame", -1)
        if t0 is None and isinstance(meta.get("timestamp"), (int, float)):
            t0 = float(meta["timestamp"])
        parts = h.get("particles") or []
        rows += timeseries.particle_rows(meta, parts, [int(p.get("track_id", 0)) for p in parts],
                                         reg.get("cumulative_px") or (0.0, 0.0), t0=t0)
    return rows


def write_tracks_csv(path: Path, headers: Sequence[Mapping[str, Any]]) -> int:
    rows = tracks_rows(headers)
    Path(path).write_text(timeseries.csv_text(rows, timeseries.PARTICLE_COLUMNS), encoding="utf-8")
    return len(rows)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def write_overlay_figure(path: Path, counts: np.ndarray, mask: np.ndarray, truth: np.ndarray | None,
                         header: Mapping[str, Any], fallback: Callable[[Path], None], echo: Any = print) -> None:
    """``overlay.png``: title (frame, conditions, model), legend, scale bar (nm), track ids."""
    plt = _pyplot()
    if plt is None:
        fallback(path)
        echo("overlay.png without title/legend/track ids: matplotlib is not installed (pip install 'fringelive[train]')")
        return
    from scipy import ndimage

    step = max(1, int(math.ceil(max(counts.shape) / 1024)))
    img = counts[::step, ::step].astype(np.float32)
    lo, hi = np.percentile(img, (1, 99))
    meta = header.get("meta") or {}
    fig, ax = plt.subplots(figsize=(8, 8.6), dpi=110)
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")

    def outline(m: np.ndarray) -> np.ndarray:
        m = m[::step, ::step].astype(bool)
        return m & ~ndimage.binary_erosion(m, iterations=max(1, 2 // step))

    def layer(m: np.ndarray, rgb: tuple[float, float, float]) -> np.ndarray:
        out = np.zeros((*m.shape, 4), np.float32)
        out[m] = (*rgb, 1.0)
        return out

    handles = []
    if truth is not None:
        ax.imshow(layer(outline(truth), (0.0, 0.85, 1.0)), interpolation="nearest")
        handles.append(plt.Line2D([], [], color=(0.0, 0.85, 1.0), lw=2, label="simulation truth"))
    ax.imshow(layer(outline(mask), (1.0, 0.85, 0.0)), interpolation="nearest")
    handles.append(plt.Line2D([], [], color=(1.0, 0.85, 0.0), lw=2, label="segmentation (mask outline)"))
    for p in header.get("particles") or []:
        if p.get("track_id") is not None:
            ax.text(p["centroid_px"][1] / step, p["centroid_px"][0] / step, str(p["track_id"]), color="white",
                    fontsize=9, ha="center", va="center", weight="bold",
                    bbox={"boxstyle": "round,pad=0.15", "fc": (0, 0, 0, 0.55), "ec": "none"})
    handles.append(plt.Line2D([], [], ls="", marker="$7$", color="white", markersize=9, label="track id"))
    px = meta.get("pixel_size_nm")
    if isinstance(px, (int, float)) and px > 0:
        width_nm = counts.shape[1] * px
        nm = max(m * 10 ** math.floor(math.log10(width_nm / 5)) for m in (1, 2, 5)
                 if m * 10 ** math.floor(math.log10(width_nm / 5)) <= width_nm / 5)
        bar = nm / px / step
        h, w = img.shape
        ax.plot([w - 20 - bar, w - 20], [h - 25, h - 25], color="white", lw=4, solid_capstyle="butt")
        ax.text(w - 20 - bar / 2, h - 35, f"{nm:g} nm", color="white", ha="center", va="bottom", fontsize=11,
                weight="bold")
    ax.legend(handles=handles, loc="upper left", fontsize=8, framealpha=0.7)
    drift = header.get("drift") or {}
    reg = header.get("registration") or {}
    cond = (f"{meta.get('pixel_size_nm', '?')} nm/px, {meta.get('dose_e_per_A2', '?'):.0f} e/Å², "
            f"{meta.get('temperature_C', '?')} °C" if isinstance(meta.get("dose_e_per_A2"), (int, float))
            else f"{meta.get('pixel_size_nm', '?')} nm/px")
    ax.set_title(f"frame {header.get('frame')} · {cond}\nmodel {header.get('model')} · drift {drift.get('status', '?')} · "
                 f"stage drift {reg.get('cumulative_px', ['?', '?'])} px · {header.get('particle_count')} particles",
                 fontsize=10)
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_growth_figure(path: Path, headers: Sequence[Mapping[str, Any]], echo: Any = print) -> bool:
    """``growth.png``: diameter (nm) over time (s) per track, merges marked. False without matplotlib."""
    plt = _pyplot()
    if plt is None:
        echo("growth.png skipped: matplotlib is not installed (pip install 'fringelive[train]')")
        return False
    rows = tracks_rows(headers)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    by_track: dict[int, list[tuple[float, float]]] = {}
    for r in rows:
        if not r["touches_border"] and math.isfinite(r["diameter_nm"]):
            by_track.setdefault(r["track_id"], []).append((r["time_s"], r["diameter_nm"]))
    for tid, pts in sorted(by_track.items()):
        t, d = zip(*sorted(pts))
        ax.plot(t, d, marker=".", lw=1.2, label=f"track {tid}")
    times = {int(h["frame"]): (h.get("meta") or {}).get("timestamp") for h in headers}
    t0 = min((v for v in times.values() if isinstance(v, (int, float))), default=0.0)
    first = True
    for h in headers:
        for e in h.get("events") or []:
            if e.get("type") == "merged":
                ts = times.get(int(e["frame"]))
                x = (ts - t0) if isinstance(ts, (int, float)) else float(e["frame"])
                ax.axvline(x, color="red", ls="--", lw=1.5,
                           label="coalescence" if first else None)
                ax.annotate(f"{'+'.join(map(str, e['parents']))} → {e['child']}", (x, ax.get_ylim()[1]),
                            color="red", fontsize=9, ha="left", va="top", xytext=(3, -3), textcoords="offset points")
                first = False
    ax.set_xlabel("time (s)")
    ax.set_ylabel("equivalent diameter (nm)")
    ax.set_title("particle growth per track (drift-corrected tracking)")
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
