"""Normalisation (the card's ``rescale``): standardize, min-max or percentile window to [0, 1]."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fringelive.bundle.card import RESCALE_MODES
from fringelive.engine.preprocess import settings
from fringelive.engine.preprocess.frames import _to_float32
from fringelive.engine.preprocess.stats import percentiles

__all__ = ["rescale"]


def _mean_std(x: torch.Tensor) -> tuple[float, float]:
    """Mean and population std of all values: per chunk float32 mean and centred sum of squares,
    merged in float64 (Chan et al.): one read of ``x``, one sync, no full-size temporaries."""
    chunks = x.reshape(-1).split(settings._CHUNK_PIXELS)
    stats = []
    for ch in chunks:
        m = ch.mean()
        stats.append(torch.stack([m, (ch - m).square_().sum()]))  # cascade sum: ~1e-7 relative
    st = torch.stack(stats).double()
    counts = torch.tensor([ch.numel() for ch in chunks], dtype=torch.float64, device=st.device)
    mean = (st[:, 0] * counts).sum() / counts.sum()
    m2 = st[:, 1].sum() + (counts * (st[:, 0] - mean).square()).sum()
    mean_f, m2_f = (float(v) for v in torch.stack([mean, m2]).tolist())
    return mean_f, math.sqrt(max(m2_f, 0.0) / x.numel())


def _affine(x: torch.Tensor, shift: float, divisor: float, inplace: bool,
            clip: tuple[float, float] | None = None) -> torch.Tensor:
    """``(clip(x) - shift) / divisor`` chunk by chunk, into ``x`` or one new tensor."""
    out = x if inplace else torch.empty_like(x)
    for src, dst in zip(x.view(-1).split(settings._CHUNK_PIXELS), out.view(-1).split(settings._CHUNK_PIXELS)):
        if clip is not None:
            torch.clamp(src, clip[0], clip[1], out=dst)
            dst.sub_(shift)
        else:
            torch.sub(src, shift, out=dst)
        dst.div_(divisor)
    return out


def _zeros(x: torch.Tensor, inplace: bool) -> torch.Tensor:
    return x.zero_() if inplace else torch.zeros_like(x)


def _rescale(x: torch.Tensor, mode: str, pct: tuple[float, float], inplace: bool) -> torch.Tensor:
    lo, hi = (float(v) for v in torch.aminmax(x))
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


def rescale(img: np.ndarray | torch.Tensor, mode: str = "standardize",
            percentiles: tuple[float, float] = (1.0, 99.0)) -> torch.Tensor:
    """An (H, W) image rescaled: ``standardize`` → zero mean, unit (population) std;
    ``normalize`` → min–max to [0, 1]; ``histogram`` → clipped to the ``percentiles`` (percent),
    then min–max to [0, 1]. Constant input (zero spread) → zeros. New float32 tensor."""
    pct = _check_rescale_args(mode, percentiles)
    x, owned = _to_float32(img, None)
    return _rescale(x, mode, pct, inplace=owned)
