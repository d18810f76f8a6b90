"""Class-1 probability from two-class logits (softmax), in place where it can be."""

from __future__ import annotations

import numpy as np

__all__ = ["class1_probability", "class1_probability_into"]


def class1_probability(logits: np.ndarray) -> np.ndarray:
    """Softmax probability of class 1 from logits ``(C, H, W)`` float32, as (H, W) float32.

    For two classes this is ``sigmoid(l1 - l0)`` computed in place in ``logits[1]`` (the logits
    array is consumed); for more classes a max-shifted softmax."""
    if logits.ndim != 3 or logits.shape[0] < 2:
        raise ValueError(f"logits must have shape (C, H, W) with C >= 2, got {logits.shape}")
    logits = np.asarray(logits, dtype=np.float32)
    if logits.shape[0] == 2:
        d = logits[1]
        np.subtract(logits[0], d, out=d)  # l0 - l1
        with np.errstate(over="ignore"):
            np.exp(d, out=d)  # inf for very confident background → probability 0
        d += 1.0
        np.reciprocal(d, out=d)
        return d
    m = logits.max(axis=0)
    np.subtract(logits, m, out=logits)
    np.exp(logits, out=logits)
    total = logits.sum(axis=0)
    p = logits[1]
    p /= total
    return p


def class1_probability_into(logits: np.ndarray, out: np.ndarray) -> None:
    """Softmax probability of class 1 of ``logits (C, h, w)`` (any strides, not modified) written
    into ``out (h, w)`` float32 (a window of a larger array): the per-tile reduction of halo
    tiling, so the full-frame logits are never stored."""
    if logits.ndim != 3 or logits.shape[0] < 2 or logits.shape[1:] != out.shape:
        raise ValueError(f"logits must have shape (C, h, w) with C >= 2 matching out {out.shape}, got {logits.shape}")
    if logits.shape[0] == 2:
        np.subtract(logits[0], logits[1], out=out)  # l0 - l1
        with np.errstate(over="ignore"):
            np.exp(out, out=out)  # inf for very confident background → probability 0
        out += 1.0
        np.reciprocal(out, out=out)
        return
    out[...] = class1_probability(np.array(logits, dtype=np.float32))
