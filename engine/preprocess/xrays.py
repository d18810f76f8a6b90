"""X-ray removal: pixels far above the median (cosmic rays, x-ray hits) are replaced from their
neighbours, clusters filled from outside in; what is left gets the median."""

from __future__ import annotations

import math

from typing import Any

import numpy as np

from fringelive.engine.arrays import Array, namespace_of
from fringelive.engine.preprocess import settings
from fringelive.engine.preprocess.frames import _to_float32
from fringelive.engine.preprocess.stats import _bracketed_median, _median_from, _numpy_scans

__all__ = ["remove_xrays"]


_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _outlier_indices(flat: Array, limit: Any) -> Array:
    """Flat indices (int64, ascending) of the values above ``limit``, chunk by chunk."""
    xp = namespace_of(flat)
    parts = []
    if _numpy_scans(xp):
        a = xp.to_numpy(flat)
        lim = a.dtype.type(limit.item())
        for i in range(0, a.size, settings._CHUNK_PIXELS):
            parts.append(np.flatnonzero(a[i:i + settings._CHUNK_PIXELS] > lim) + i)
        return xp.from_numpy(np.concatenate(parts).astype(np.int64, copy=False))
    for i in range(0, xp.size(flat), settings._CHUNK_PIXELS):
        parts.append(xp.flatnonzero(flat[i:i + settings._CHUNK_PIXELS] > limit) + i)
    return xp.concat(parts)


def _fill_outliers_(x: Array, idx: Array, limit: Any, fallback: Any, max_sweeps: int) -> None:
    """Replace the pixels ``idx`` (flat indices) of contiguous (H, W) ``x`` — exactly those
    above ``limit`` — by the mean of their in-frame 8 neighbours that are not above it, in place.
    Clusters are filled from outside in: a filled value never exceeds ``limit``, so "above
    limit" always means "still to fill". What ``max_sweeps`` sweeps leave gets ``fallback``."""
    xp = namespace_of(x)
    h, w = x.shape
    f = x.reshape(-1)  # a view: x is contiguous
    dy = xp.asarray([d[0] for d in _NEIGHBOURS], xp.int64)
    dx = xp.asarray([d[1] for d in _NEIGHBOURS], xp.int64)
    rr = (idx // w)[:, None] + dy                       # (n, 8) neighbour rows
    cc = (idx % w)[:, None] + dx                        # (n, 8) neighbour columns
    inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    nb = xp.clip(rr, 0, h - 1, out=rr) * w
    nb += xp.clip(cc, 0, w - 1, out=cc)
    for _ in range(max_sweeps):
        v = f[nb]                                       # all gathered before any write
        ok = inside & (v <= limit)
        cnt = ok.sum(1)
        done = cnt > 0
        mean = xp.where(ok, v, 0.0).sum(1)[done] / xp.astype(cnt[done], f.dtype)
        f[idx[done]] = xp.minimum(mean, limit)
        left = ~done
        idx, nb, inside = idx[left], nb[left], inside[left]
        if xp.size(idx) == 0:
            return
    f[idx] = xp.astype(fallback, f.dtype)


def _clamp_negatives(x: Array, inplace: bool) -> Array:
    xp = namespace_of(x)
    out = x if inplace else xp.empty_like(x)
    src, dst = x.reshape(-1), out.reshape(-1)
    for i in range(0, xp.size(src), settings._CHUNK_PIXELS):
        xp.clip(src[i:i + settings._CHUNK_PIXELS], 0.0, None, out=dst[i:i + settings._CHUNK_PIXELS])
    return out


def _remove_xrays(x: Array, threshold_counts: float, passes: int, max_sweeps: int,
                  inplace: bool) -> tuple[Array, int]:
    """Negatives → 0, then ``passes`` passes of outlier replacement; returns the image and the
    number of pixels replaced. Pass k+1's median comes from pass k's bracket updated with the
    replaced values (exact; a rescan only if the bracket no longer covers the middle), and the
    outlier scan is skipped when that median did not drop (every pixel is then at or below
    the previous limit, hence below the new one)."""
    x = _clamp_negatives(x, inplace)
    xp = namespace_of(x)
    f = x.reshape(-1)
    n = xp.size(f)
    thr = xp.asarray(threshold_counts, x.dtype)
    replaced = 0
    med, br = _bracketed_median(x) if passes else (None, None)
    idx = _outlier_indices(f, med + thr) if passes else None
    for p in range(passes):
        if xp.size(idx) == 0:
            break
        old = f[idx]
        _fill_outliers_(x, idx, med + thr, med, max_sweeps)
        replaced += xp.size(idx)
        if p == passes - 1:
            break
        new_med = None
        if br is not None:
            br = br.changed(old, f[idx])
            new_med = _median_from(br, n) if br is not None else None
        if new_med is None:
            new_med, br = _bracketed_median(x)
        dropped = bool(new_med < med)
        med = new_med
        idx = _outlier_indices(f, med + thr) if dropped else idx[:0]
    return x, replaced


def _check_xray_args(threshold_counts: float, passes: int, max_sweeps: int) -> None:
    if not (isinstance(threshold_counts, (int, float)) and math.isfinite(threshold_counts) and threshold_counts > 0):
        raise ValueError(f"threshold_counts must be a finite number > 0 (counts), got {threshold_counts!r}")
    if not isinstance(passes, int) or passes < 0:
        raise ValueError(f"passes must be an integer >= 0, got {passes!r}")
    if not isinstance(max_sweeps, int) or max_sweeps < 1:
        raise ValueError(f"max_sweeps must be an integer >= 1, got {max_sweeps!r}")


def remove_xrays(img: Any, threshold_counts: float = 1500.0, passes: int = 2, *,
                 max_sweeps: int = settings.MAX_FILL_SWEEPS) -> Array:
    """X-ray hits and negative counts removed from an (H, W) frame of counts.

    Negatives → 0; then ``passes`` times: pixels above ``median + threshold_counts`` (counts) are
    replaced by the mean of their in-frame non-outlier 8 neighbours (clusters filled from
    outside in for up to ``max_sweeps`` sweeps, the rest by the median). Returns a new (H, W)
    float32 array of ``img``'s kind (numpy, or a tensor on its device); other pixels are
    unchanged bit for bit.
    """
    _check_xray_args(threshold_counts, passes, max_sweeps)
    x, owned = _to_float32(img, None)
    return _remove_xrays(x, float(threshold_counts), passes, max_sweeps, inplace=owned)[0]
