"""Synthetic training data for the trainer tests: bright discs on Gaussian noise, a problem a
tiny network learns in a few steps. Plain module (tests import it; DDP workers spawned by
``tests/test_train_ddp.py`` import it too)."""

from __future__ import annotations

import numpy as np


def discs(n: int, size: int, seed: int, *, per_image: int = 1, margin: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``(n, size, size)`` float32 (noise σ 0.5, discs +2.0) and their labels
    ``(n, size, size)`` uint8: ``per_image`` discs of radius 3–6 px with centres at least
    ``margin`` px from the border."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    xs, ys = [], []
    for _ in range(n):
        lab = np.zeros((size, size), bool)
        for _ in range(per_image):
            cy, cx, r = rng.uniform(margin, size - margin, 2).tolist() + [rng.uniform(3, 6)]
            lab |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        xs.append((rng.standard_normal((size, size)) * 0.5 + 2.0 * lab).astype(np.float32))
        ys.append(lab.astype(np.uint8))
    return np.stack(xs), np.stack(ys)
