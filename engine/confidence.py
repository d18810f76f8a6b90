"""Model-confidence signals from the pipeline's output: predictive entropy and member agreement.

Pure numpy. Entropies are binary entropies of the mean class-1 probability, in bits (0 = certain,
1 = p of 0.5). To stay within a few milliseconds on a 4096² frame they are computed on a regular
subsample (every ``stride``-th pixel in both directions), an unbiased estimate of the full mean;
the boundary band is defined on that grid (a subsampled pixel whose 4-neighbourhood holds both
classes). Member agreement is the mean pairwise Dice coefficient of the members' masks (also
subsampled), 1 = identical.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Sequence

import numpy as np

__all__ = ["binary_entropy_bits", "entropy_signals", "mean_pairwise_dice", "subsample_stride"]


def subsample_stride(shape: tuple[int, int], target_pixels: int = 1 << 20) -> int:
    """The smallest stride (px) with at most ``target_pixels`` samples of a ``shape`` frame."""
    n = int(shape[0]) * int(shape[1])
    return max(1, math.ceil(math.sqrt(n / max(1, target_pixels))))


def binary_entropy_bits(p: np.ndarray) -> np.ndarray:
    """``-p log2 p - (1 - p) log2 (1 - p)`` (bits, 0 at p in {0, 1}) of float probabilities."""
    p = np.clip(np.asarray(p, dtype=np.float32), 1e-7, 1.0 - 1e-7)
    q = 1.0 - p
    # -(p·log2 p + q·log2 q), the same operations in place (no temporaries of the frame's size)
    h = np.log2(p, out=np.empty(np.shape(p), dtype=np.float32))
    h *= p
    lq = np.log2(q)
    lq *= q
    h += lq
    return np.negative(h, out=h)


def entropy_signals(probabilities: np.ndarray, threshold: float = 0.5, stride: int | None = None
                    ) -> dict[str, float | None]:
    """Mean predictive entropy (bits) of ``probabilities (H, W)`` on three pixel sets:
    ``entropy_foreground`` (p > threshold), ``entropy_boundary`` (the band where the mask
    changes) and ``entropy_mean`` (all pixels). A set with no pixels gives None."""
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must have shape (H, W), got {probabilities.shape}")
    if stride is None:
        stride = subsample_stride(probabilities.shape)
    p = probabilities[::stride, ::stride]
    h = binary_entropy_bits(p)
    fg = p > threshold
    edge = np.zeros_like(fg)
    dy = fg[1:, :] != fg[:-1, :]
    dx = fg[:, 1:] != fg[:, :-1]
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx

    def mean_on(sel: np.ndarray) -> float | None:
        n = int(sel.sum())
        return float(h[sel].sum(dtype=np.float64) / n) if n else None

    return {
        "entropy_foreground": mean_on(fg),
        "entropy_boundary": mean_on(edge),
        "entropy_mean": float(h.mean(dtype=np.float64)),
    }


def mean_pairwise_dice(masks: Sequence[np.ndarray], stride: int | None = None) -> float | None:
    """Mean Dice ``2|A∩B| / (|A| + |B|)`` over all pairs of the members' masks ``(H, W)`` bool;
    a pair where both are empty counts 1. None with fewer than two masks."""
    if len(masks) < 2:
        return None
    if stride is None:
        stride = subsample_stride(masks[0].shape)
    sub = [np.asarray(m)[::stride, ::stride] for m in masks]
    sums = [int(m.sum()) for m in sub]
    scores = []
    for i, j in combinations(range(len(sub)), 2):
        total = sums[i] + sums[j]
        scores.append(1.0 if total == 0 else 2.0 * int(np.count_nonzero(sub[i] & sub[j])) / total)
    return float(np.mean(scores))
