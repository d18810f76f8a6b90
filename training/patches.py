"""Fold splits and training patches: contiguous k-fold splits of a sample set, non-overlapping
patches of preprocessed frames."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fringelive.bundle.card import Preprocessing
from fringelive.engine.preprocess import preprocess
from fringelive.training.samples import SampleSet

__all__ = ["RunError", "fold_split", "index_ranges", "network_input", "patchify", "prepare_patches"]


class RunError(ValueError):
    """A run that cannot start or resume; the message names the bad input."""


def fold_split(n: int, fold: int, folds: int = 5, split: Sequence[float] = (0.7, 0.1, 0.2)
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contiguous k-fold assignment of ``n`` samples: (train, val, test) index arrays of fold
    ``fold``. The order ``0..n-1`` is rotated left by ``round(fold·n/folds)``; the first
    ``round(test·n)`` are test, the next ``round(val·n)`` validation, the rest training."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1}, got {fold!r}")
    order = np.roll(np.arange(n), -int(round(fold * n / folds)))
    n_test = int(round(split[2] * n))
    n_val = int(round(split[1] * n))
    if n - n_test - n_val < 1:
        raise ValueError(f"{n} samples leave no training sample with split {tuple(split)}")
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


def index_ranges(indices: Sequence[int]) -> list[list[int]]:
    """Indices as sorted half-open ``[start, stop)`` runs (compact JSON for the card)."""
    out: list[list[int]] = []
    for i in sorted(int(v) for v in indices):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def patchify(image: np.ndarray, label: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping ``patch``² tiles from the top-left corner, ``(n, patch, patch)`` each;
    a remainder narrower than ``patch`` is dropped."""
    h, w = image.shape
    ny, nx = h // patch, w // patch
    if ny == 0 or nx == 0:
        raise RunError(f"samples of {h}×{w} px are smaller than the patch size {patch} px; use a smaller --patch")
    def cut(a: np.ndarray) -> np.ndarray:
        a = a[: ny * patch, : nx * patch]
        return a.reshape(ny, patch, nx, patch).transpose(0, 2, 1, 3).reshape(-1, patch, patch)
    return np.ascontiguousarray(cut(image)), np.ascontiguousarray(cut(label))


def prepare_patches(ss: SampleSet, indices: Sequence[int], params: Preprocessing, patch_px: int,
                    inputs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Network-input patches ``(M, p, p)`` float32 and labels ``(M, p, p)`` uint8 of the
    samples ``indices`` (raw samples preprocessed with ``params`` first, unless ``inputs``, the
    set's preprocessed images, are given)."""
    xs, ys = [], []
    for i in indices:
        px, py = patchify(network_input(ss, i, params) if inputs is None else inputs[i], ss.labels[i], patch_px)
        xs.append(px)
        ys.append(py)
    if not xs:
        return (np.zeros((0, patch_px, patch_px), np.float32), np.zeros((0, patch_px, patch_px), np.uint8))
    return np.concatenate(xs), np.concatenate(ys).astype(np.uint8)


def network_input(ss: SampleSet, i: int, params: Preprocessing) -> np.ndarray:
    """Sample ``i`` as the network sees it ``(H, W)`` float32: raw counts go through the shared
    preprocessing engine with ``params``; preprocessed samples are taken as they are."""
    if ss.content == "raw":
        return np.asarray(preprocess(ss.images[i], params))
    return np.asarray(ss.images[i], dtype=np.float32)
