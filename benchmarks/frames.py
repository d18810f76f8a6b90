"""Synthetic camera frames for the benchmarks (imported by the scripts beside it)."""

from __future__ import annotations

import numpy as np


def synthetic_frame(side: int, seed: int) -> np.ndarray:
    """Poisson counts (uint16): 100 counts/px background with brighter disks of 20-60 px."""
    rng = np.random.default_rng(seed)
    mean = np.full((side, side), 100.0, np.float32)
    yy, xx = np.ogrid[:side, :side]
    for _ in range(max(4, side * side // 200_000)):
        cy, cx, r = rng.integers(0, side), rng.integers(0, side), rng.integers(10, 30)
        mean[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 160.0
    return rng.poisson(mean).astype(np.uint16)
