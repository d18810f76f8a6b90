"""Normalisation (the card's ``rescale``): standardize, min-max or percentile window to [0, 1]."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fringelive.bundle.card import RESCALE_MODES
from fringelive.engine.arrays import Array, namespace_of
from fringelive.engine.preprocess import settings
from fringelive.engine.preprocess.frames import _to_float32
from fringelive.engine.preprocess.stats import percentiles

__all__ = ["rescale"]


def _mean_std(x: Array) -> tuple[float, float]:
    """Mean and population std of all values: per chunk float32 mean and centred sum of squares,
    merged in float64 (Chan et al.): one read of ``x``, one sync, no full-size temporaries."""
    xp = namespace_of(x)
    flat = x.reshape(-1)
    n = xp.size(flat)
    chunks = [flat[i:i + settings._CHUNK_PIXELS] for i in range(0, n, settings._CHUNK_PIXELS)]
    stats = []
    for ch in chunks:
        m = ch.mean()
        stats.append(xp.stack([m, xp.square_(ch - m).sum()]))  # pairwise/cascade sum: ~1e-7 relative
    st = xp.astype(xp.stack(stats), xp.float64)
    counts = xp.asarray([xp.size(ch) for ch in chunks], xp.float64)
    mean = (st[:, 0] * counts).sum() / counts.sum()
    m2 = st[:, 1].sum() + (counts * (st[:, 0] - mean) ** 2).sum()
    mean_f, m2_f = (float(v) for v in xp.stack([mean, m2]).tolist())
    return mean_f, math.sqrt(max(m2_f, 0.0) / n)


def _affine(x: Array, shift: float, divisor: float, inplace: bool,
            clip: tuple[float, float] | None = None) -> Array:
    """``(clip(x) - shift) / divisor`` chunk by chunk, into ``x`` or one new array."""
    xp = namespace_of(x)
    out = x if inplace else xp.empty_like(x)
    src_all, dst_all = x.reshape(-1), out.reshape(-1)
    for i in range(0, xp.size(src_all), settings._CHUNK_PIXELS):
        src, dst = src_all[i:i + settings._CHUNK_PIXELS], dst_all[i:i + settings._CHUNK_PIXELS]
        if clip is not None:
            xp.clip(src, clip[0], clip[1], out=dst)
            dst -= shift
        else:
            xp.subtract(src, shift, out=dst)
        dst /= divisor
    return out


def _zeros(x: Array, inplace: bool) -> Array:
    if inplace:
        x[...] = 0
        return x
    return namespace_of(x).zeros_like(x)


def _rescale(x: Array, mode: str, pct: tuple[float, float], inplace: bool) -> Array:
    lo, hi = namespace_of(x).aminmax(x)
    if hi == lo:  # constant image: nothing to scale
        return _zeros(x, inplace)
    if mode == "standardize":
        mean, std = _mean_std(x)
        return _affine(x, mean, std, inplace) if std > 0 else _zeros(x, inplace)
    clip = None
    if mode == "histogram":
        # bounds as the float32 values the clip produces, so that the ends map to exactly 0 and 1
        lo, hi = (float(np.float32(v)) for v in percentiles(x, pct))
        if not hi > lo:
            return _zeros(x, inplace)
        clip = (lo, hi)
    return _affine(x, lo, hi - lo, inplace, clip)


def _check_rescale_args(mode: Any, pct: Any) -> tuple[float, float]:
    if mode not in RESCALE_MODES:
        raise ValueError(f"mode must be one of {RESCALE_MODES}, got {mode!r}")
    if not isinstance(pct, (tuple, list)) or len(pct) != 2:
        raise ValueError(f"percentiles must be two numbers (low, high) in percent, got {pct!r}")
    lo, hi = float(pct[0]), float(pct[1])
    if not 0.0 <= lo < hi <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100 (percent), got {pct!r}")
    return lo, hi


def rescale(img: Any, mode: str = "standardize",
            percentiles: tuple[float, float] = (1.0, 99.0)) -> Array:
    """An (H, W) image rescaled: ``standardize`` → zero mean, unit (population) std;
    ``normalize`` → min–max to [0, 1]; ``histogram`` → clipped to the ``percentiles`` (percent),
    then min–max to [0, 1]. Constant input (zero spread) → zeros. New float32 array of the
    input's kind (numpy, or a tensor on its device)."""
    pct = _check_rescale_args(mode, percentiles)
    x, owned = _to_float32(img, None)
    return _rescale(x, mode, pct, inplace=owned)
