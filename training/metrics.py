"""Segmentation metrics as in the papers: hard Dice on class 1 and false-positive/negative rates.

Shapes: ``logits`` (N, C, H, W) or probabilities of class 1 ``(N, H, W)``; ``labels`` (N, H, W)
integer/bool with 1 = particle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch-free at run time: the demo imports dice_from_masks without fringelive[torch]
    import torch

__all__ = ["hard_dice", "dice_from_masks", "error_rates"]


def _class1_mask(pred: torch.Tensor, threshold: float) -> torch.Tensor:
    if pred.ndim == 4:
        pred = pred.float().softmax(dim=1)[:, 1]
    return pred > threshold


def hard_dice(pred: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5, smooth: float = 1.0
              ) -> torch.Tensor:
    """Per-sample hard Dice ``(2|P∩T| + s) / (|P| + |T| + s)`` of class 1, shape (N,).

    ``smooth`` = 1 as in the published code, so an empty prediction of an empty label scores 1.
    """
    p = _class1_mask(pred, threshold).flatten(1).float()
    t = (labels > 0).flatten(1).float()
    inter = (p * t).sum(1)
    return (2 * inter + smooth) / (p.sum(1) + t.sum(1) + smooth)


def dice_from_masks(pred: np.ndarray, truth: np.ndarray, smooth: float = 1.0) -> float:
    """Hard Dice of two boolean masks (any shape)."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    return float((2 * np.count_nonzero(p & t) + smooth) / (p.sum() + t.sum() + smooth))


def error_rates(pred: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Pixel false-positive rate FP/(FP+TN), false-negative rate FN/(FN+TP), and the fraction of
    errors that are over-segmentation FP/(FP+FN) (the published 'oversegment' ratio)."""
    p = _class1_mask(pred, threshold)
    t = labels > 0
    fp = int((p & ~t).sum())
    fn = int((~p & t).sum())
    tn = int((~p & ~t).sum())
    tp = int((p & t).sum())
    return {
        "false_positive_rate": fp / max(fp + tn, 1),
        "false_negative_rate": fn / max(fn + tp, 1),
        "oversegment_fraction": fp / max(fp + fn, 1),
    }
