"""Particle statistics of a binary segmentation mask (pure array → list of dicts, no I/O).

A particle is one connected component of the mask (8-connected by default). Sizes are reported
in pixels and, when the pixel size is known, in nm: ``area_nm2 = area_px * pixel_size_nm**2`` and
the equivalent-circle diameter ``diameter = 2 * sqrt(area / pi)``.

Per-pixel work is two passes in C: ``scipy.ndimage.label`` and a row-wise diff that finds the
horizontal runs of foreground pixels. Areas, centroids and boxes are then ``np.bincount`` /
``np.minimum.at`` reductions over the runs (a particle 30 px wide is one run per row, not 30
pixels), so the cost barely depends on the foreground fraction; only the per-particle dict
building is a Python loop.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["particle_stats", "stats_of_labels", "area_fraction", "label_particles", "fill_holes", "keep_labels",
           "foreground_runs", "label_kept_runs", "mean_over_runs", "drop_labels", "pixels_of"]

_STRUCTURES = {
    1: np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool),  # 4-connected
    2: np.ones((3, 3), dtype=bool),  # 8-connected
}


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.dtype != bool:
        raise ValueError(f"mask must have dtype bool, got {mask.dtype}")
    return mask


def area_fraction(mask: np.ndarray) -> float:
    """Fraction of the mask's pixels that are foreground, in [0, 1] (0.0 for an empty frame)."""
    mask = _check_mask(mask)
    if mask.size == 0:
        return 0.0
    return float(np.count_nonzero(mask)) / mask.size


def label_particles(mask: np.ndarray, *, connectivity: int = 2) -> tuple[np.ndarray, int]:
    """Connected components of ``mask`` (H, W) bool: ``(labels (H, W) int32, count)``; 0 is
    background. ``connectivity`` 1 = 4-neighbourhood, 2 = 8-neighbourhood."""
    mask = _check_mask(mask)
    if connectivity not in _STRUCTURES:
        raise ValueError(f"connectivity must be 1 (4-neighbourhood) or 2 (8-neighbourhood), got {connectivity!r}")
    labels = np.empty(mask.shape, dtype=np.int32)
    count = ndimage.label(mask, structure=_STRUCTURES[connectivity], output=labels)
    return labels, int(count)


def particle_stats(
    mask: np.ndarray,
    pixel_size_nm: float | None,
    *,
    min_area_px: int = 20,
    connectivity: int = 2,
) -> list[dict[str, Any]]:
    """Per-particle statistics of ``mask`` (H, W) bool.

    Components smaller than ``min_area_px`` pixels are dropped; the kept ones are numbered
    ``label`` 1..n in raster order of their first pixel. Each dict holds:

    - ``label`` int, ``area_px`` int, ``diameter_px`` float (equivalent-circle diameter, px),
    - ``area_nm2`` / ``diameter_nm`` float, or None when ``pixel_size_nm`` is None,
    - ``centroid_px`` [y, x] floats (px, row/column of the pixel centres' mean),
    - ``bbox_px`` [y0, x0, y1, x1] ints (half-open: rows y0..y1-1, columns x0..x1-1),
    - ``touches_border`` bool (the particle has a pixel in the first/last row or column, so its
      size is a lower bound).
    """
    if pixel_size_nm is not None:
        if isinstance(pixel_size_nm, bool) or not isinstance(pixel_size_nm, (int, float, np.floating, np.integer)):
            raise ValueError(f"pixel_size_nm must be a positive number or None, got {pixel_size_nm!r}")
        if not math.isfinite(pixel_size_nm) or pixel_size_nm <= 0:
            raise ValueError(f"pixel_size_nm must be a positive number or None, got {pixel_size_nm!r}")
        pixel_size_nm = float(pixel_size_nm)
    if isinstance(min_area_px, bool) or not isinstance(min_area_px, (int, np.integer)) or min_area_px < 0:
        raise ValueError(f"min_area_px must be an integer >= 0, got {min_area_px!r}")

    mask = _check_mask(mask)
    labels, count = label_particles(mask, connectivity=connectivity)
    if count == 0:
        return []
    labels, count = keep_labels(labels, count, min_area_px)
    return stats_of_labels(labels, count, pixel_size_nm)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` (H, W) bool with its holes filled: background pixels not 4-connected to the
    frame edge become foreground. Equal to ``scipy.ndimage.binary_fill_holes(mask)`` but one
    ``ndimage.label`` of the background instead of an iterated dilation (about 10x faster on
    a 2048² mask with shot-noise holes)."""
    mask = _check_mask(mask)
    if mask.size == 0 or not mask.any():
        return mask.copy()
    background, n = ndimage.label(~mask, structure=_STRUCTURES[1])
    if n == 0:
        return mask.copy()
    outside = np.zeros(n + 1, dtype=bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        outside[edge] = True
    outside[0] = True  # label 0 is the foreground itself
    return mask | ~outside[background]


def keep_labels(labels: np.ndarray, count: int, min_area_px: int) -> tuple[np.ndarray, int]:
    """Drop components of ``labels`` (H, W) int32 (1..count) smaller than ``min_area_px``
    pixels and renumber the kept ones 1..n, keeping their raster order: ``(labels, n)``."""
    if count == 0:
        return labels, 0
    lut, n = _kept_lut(np.bincount(labels.ravel(), minlength=count + 1), min_area_px)
    return (labels if lut is None else lut[labels]), n


def _kept_lut(area: np.ndarray, min_area_px: int) -> tuple[np.ndarray | None, int]:
    """From the areas (px) of labels 0..count (0: background): the look-up table renumbering the
    components of at least ``min_area_px`` 1..n in order (None when all are kept), and n."""
    keep = area >= max(int(min_area_px), 1)
    keep[0] = False
    n = int(np.count_nonzero(keep))
    return (None, n) if n == area.size - 1 else (_renumbering(keep, n), n)


def _renumbering(keep: np.ndarray, n: int) -> np.ndarray:
    """The look-up table (count + 1,) int32 numbering the ``n`` labels flagged in ``keep``
    ((count + 1,) bool, index 0 the background, never kept) 1..n in order, the rest 0."""
    lut = np.zeros(keep.size, dtype=np.int32)
    lut[keep] = np.arange(1, n + 1, dtype=np.int32)
    return lut


def _relabel(labels: np.ndarray, lut: np.ndarray, runs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
             ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """``labels`` (H, W) and its foreground ``runs`` ``(row, c0, c1, label)`` through ``lut``;
    the runs of labels mapped to 0 are dropped."""
    row, c0, c1, lab = runs
    new = lut[lab]
    sel = new > 0
    return lut[labels], (row[sel], c0[sel], c1[sel], new[sel])


def foreground_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The horizontal runs of foreground pixels of ``mask`` (H, W) bool, in raster order:
    ``(row, c0, c1)`` int arrays (n,), run k covering columns ``c0[k] .. c1[k] - 1`` of row
    ``row[k]``. Two different components never touch, so each run lies in one component."""
    height, width = mask.shape
    # +1 where a run starts, -1 one past where it ends
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)  # (H, W + 1)
    del padded
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1)
    del edges
    row = starts // (width + 1)
    return row, starts - row * (width + 1), stops - row * (width + 1)


def label_kept_runs(mask: np.ndarray, min_area_px: int, *, connectivity: int = 2
                    ) -> tuple[np.ndarray, int, int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`label_particles` + :func:`keep_labels` of ``mask`` (H, W) bool with the areas
    summed over the foreground runs instead of every pixel: ``(labels (H, W) int32, count
    (components found), kept (labels 1..kept), runs)``; ``runs`` = ``(row, c0, c1, label)`` of
    the kept components' runs in raster order, for :func:`stats_of_labels`. Equal to the two
    calls (the same labels, numbered alike)."""
    labels, count = label_particles(mask, connectivity=connectivity)
    row, c0, c1 = foreground_runs(mask)
    lab = labels[row, c0]
    if count == 0:
        return labels, 0, 0, (row, c0, c1, lab)
    lut, n = _kept_lut(np.bincount(lab, weights=(c1 - c0).astype(np.float64), minlength=count + 1), min_area_px)
    if lut is None:
        return labels, count, count, (row, c0, c1, lab)
    labels, runs = _relabel(labels, lut, (row, c0, c1, lab))
    return labels, count, n, runs


def mean_over_runs(values: np.ndarray, count: int,
                   runs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Mean of ``values`` (H, W) over each component 1..``count`` given its foreground runs
    ``(row, c0, c1, label)`` (:func:`label_kept_runs`): (count,) float64. Sums only the runs'
    pixels (one ``np.add.reduceat`` over the frame: ~2 ms at 2048²)."""
    if count == 0:
        return np.zeros(0, dtype=np.float64)
    row, c0, c1, lab = runs
    flat = np.ascontiguousarray(values).ravel()
    width = values.shape[1]
    bounds = np.empty(2 * len(row), dtype=np.intp)  # run i sums flat[start_i:end_i]; the gaps between are dropped
    bounds[0::2] = row * width + c0
    bounds[1::2] = row * width + c1
    if bounds[-1] == flat.size:
        bounds = bounds[:-1]
    sums = np.add.reduceat(flat, bounds)[0::2].astype(np.float64)
    area = np.bincount(lab, weights=(c1 - c0).astype(np.float64), minlength=count + 1)[1:]
    return np.bincount(lab, weights=sums, minlength=count + 1)[1:] / np.maximum(area, 1.0)


def touching_border(shape: tuple[int, int], count: int,
                    runs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """(count,) bool: which components 1..``count`` of a (H, W) = ``shape`` frame have a pixel in
    its first/last row or column, from their foreground runs ``(row, c0, c1, label)``
    (:func:`label_kept_runs`; the same as the ``touches_border`` of :func:`stats_of_labels`)."""
    row, c0, c1, lab = runs
    edge = np.zeros(count + 1, dtype=bool)
    edge[lab[(row == 0) | (row == shape[0] - 1) | (c0 == 0) | (c1 == shape[1])]] = True
    return edge[1:]


def pixels_of(labels: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of the components of ``labels`` (H, W) flagged in ``selected``
    ((count,) bool, component k at index k-1)."""
    return np.concatenate([[False], np.asarray(selected, dtype=bool)])[labels]


def drop_labels(labels: np.ndarray, count: int, runs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                drop: np.ndarray) -> tuple[np.ndarray, int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Remove components ``drop`` ((count,) bool, component k at index k-1) from ``labels``
    (H, W) and its ``runs``; the rest keep their order, renumbered 1..kept: ``(labels, kept, runs)``."""
    keep = np.zeros(count + 1, dtype=bool)
    keep[1:] = ~np.asarray(drop, dtype=bool)
    kept = int(np.count_nonzero(keep))
    labels, runs = _relabel(labels, _renumbering(keep, kept), runs)
    return labels, kept, runs


def stats_of_labels(labels: np.ndarray, count: int, pixel_size_nm: float | None, *,
                    runs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None) -> list[dict[str, Any]]:
    """Per-particle dicts (see :func:`particle_stats`) of a label image ``labels`` (H, W) int32
    whose components 1..``count`` are all particles, numbered in raster order of their first
    pixel (as :func:`label_particles` + :func:`keep_labels` give them). ``runs``: the labels'
    foreground runs ``(row, c0, c1, label)`` as :func:`label_kept_runs` gives them (None: found here)."""
    if count == 0:
        return []
    height, width = labels.shape
    if runs is None:
        row, c0, c1 = foreground_runs(labels > 0)
        lab = labels[row, c0]
    else:
        row, c0, c1, lab = runs
    length = (c1 - c0).astype(np.float64)

    n = count + 1
    area = np.rint(np.bincount(lab, weights=length, minlength=n)).astype(np.int64)
    sum_y = np.bincount(lab, weights=length * row, minlength=n)
    sum_x = np.bincount(lab, weights=length * (c0 + c1 - 1) * 0.5, minlength=n)  # Σ columns of a run
    y0 = np.full(n, height, dtype=np.intp)
    x0 = np.full(n, width, dtype=np.intp)
    y1 = np.full(n, -1, dtype=np.intp)
    x1 = np.full(n, 0, dtype=np.intp)
    np.minimum.at(y0, lab, row)
    np.maximum.at(y1, lab, row)
    np.minimum.at(x0, lab, c0)
    np.maximum.at(x1, lab, c1)
    y1 += 1

    nm2 = pixel_size_nm**2 if pixel_size_nm is not None else None
    out: list[dict[str, Any]] = []
    for k in range(1, n):
        a = int(area[k])
        d_px = 2.0 * math.sqrt(a / math.pi)
        box = [int(y0[k]), int(x0[k]), int(y1[k]), int(x1[k])]
        out.append(
            {
                "label": k,
                "area_px": a,
                "diameter_px": d_px,
                "area_nm2": a * nm2 if nm2 is not None else None,
                "diameter_nm": d_px * pixel_size_nm if pixel_size_nm is not None else None,
                "centroid_px": [float(sum_y[k] / a), float(sum_x[k] / a)],
                "bbox_px": box,
                "touches_border": box[0] == 0 or box[1] == 0 or box[2] == height or box[3] == width,
            }
        )
    return out
