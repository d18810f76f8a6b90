"""Learning the camera from a stream: :class:`StreamCameraFit`, a temporal (frame-pair) and a
spatial (single-frame) photon-transfer fit side by side, and which one speaks.

* **temporal** (preferred): pairs of frames of one scene at one dose (:class:`.pairs.FramePairs`)
  give points ``((a + b)/2, noise of (a − b)/√2)`` per flat block; specimen texture, illumination
  and fixed pattern cancel exactly (EMVA 1288's temporal variance). Used once confident.
* **spatial**: flat background blocks of single frames (:meth:`PhotonTransferFit.add_frame`);
  needed when the stream never repeats a scene, biased high by background texture that passes
  the flatness tests. Once the stream has given a frame pair, the spatial fit is confident only
  while a temporal fit exists and its gain agrees with the temporal gain within 3 σ (combined).

The result's ``method`` says which. Deterministic: the same frames in the same order give the
same fit, whatever the machine's speed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

import numpy as np

from .blocks import BACKGROUND_BLOCKS, FrameBlocks
from .pairs import FramePairs
from .transfer import PhotonTransferFit, PhotonTransferResult

__all__ = ["StreamCameraFit", "config_disagreement"]


class StreamCameraFit:
    """Feed frames with :meth:`add_frame`; :meth:`snapshot` (cheap copy without the held frames)
    then :meth:`result`. ``offset_counts``, ``read_noise_counts``, ``noise_factor``: known
    constants that narrow both fits (:class:`PhotonTransferFit`); ``pair_window``: unpaired
    frames held for pairing; ``fit``: further :class:`PhotonTransferFit` keywords."""

    def __init__(self, *, offset_counts: float | None = None, read_noise_counts: float | None = None,
                 noise_factor: float | None = None, pair_window: int = 8, block: int = 32,
                 max_blocks_per_frame: int = BACKGROUND_BLOCKS, **fit: Any) -> None:
        known = dict(offset_counts=offset_counts, read_noise_counts=read_noise_counts, noise_factor=noise_factor,
                     block=block, max_blocks_per_frame=max_blocks_per_frame, **fit)
        self.spatial = PhotonTransferFit(**known)
        self.temporal = PhotonTransferFit(**known)
        self.pairs: FramePairs | None = FramePairs(block=block, max_blocks=max_blocks_per_frame, window=pair_window,
                                                   nps_lags=self.spatial.nps_lags)
        self._pairs_found = 0

    @property
    def pairs_found(self) -> int:
        """Frame pairs found so far."""
        return self.pairs.found if self.pairs is not None else self._pairs_found

    @property
    def frames(self) -> int:
        """Frames fed to the spatial fit."""
        return self.spatial.frames

    def add_frame(self, frame: np.ndarray, mask: np.ndarray | None = None, *, blocks: FrameBlocks | None = None
                  ) -> None:
        """One frame of raw counts ``(H, W)`` (≥ 64² px) and its predicted particle mask;
        ``blocks``: its block statistics shared with the drift check."""
        self.spatial.add_frame(frame, mask=mask, blocks=blocks)
        if self.pairs is not None:
            pair = self.pairs.offer(frame, mask)
            if pair is not None:
                self.temporal.add_block_stats(pair)

    def snapshot(self) -> "StreamCameraFit":
        """A copy of both fits, without the held frames (for a fit on another thread)."""
        snap = copy.copy(self)
        snap._pairs_found = self.pairs_found
        snap.spatial, snap.temporal, snap.pairs = copy.deepcopy(self.spatial), copy.deepcopy(self.temporal), None
        return snap

    def result(self) -> PhotonTransferResult | None:
        """The temporal fit when confident; else the spatial fit when confident and, once frame
        pairs were found, consistent with the temporal fit (none yet: not confident); else the
        unconfident temporal fit if there is one (its reasons say what is missing), else the
        spatial one; None before any fit."""
        t = self.temporal.result()
        s = self.spatial.result()
        if t is not None:
            t = replace(t, method="temporal")
            if t.confident:
                return t
        if s is not None and s.confident and t is None and self.pairs_found:
            s = replace(s, confident=False, reasons=(
                f"{self.pairs_found} frame pair(s) found, too few for a fit: the single-frame fit is checked against "
                "the frame pairs first (background texture biases single frames)",))
        if s is not None and s.confident and t is not None:
            tol = 3.0 * math.hypot(s.gain_se, t.gain_se)
            if abs(s.gain_counts_per_e - t.gain_counts_per_e) > tol:
                s = replace(s, confident=False, reasons=(
                    f"single-frame gain {s.gain_counts_per_e:.3g} ± {s.gain_se:.2g} disagrees with the frame-pair gain "
                    f"{t.gain_counts_per_e:.3g} ± {t.gain_se:.2g} counts/e: background texture biases the single "
                    "frames; waiting for more frame pairs",))
        if s is not None and s.confident:
            return s
        return t if t is not None else s


#: Tolerances of :func:`config_disagreement`, shared with the ``FringeliveCameraConfigDisagreesWithStream``
#: alert (deploy/prometheus/alerts.yml): gain ratio beyond 15 %, offset beyond 3 σ + 2 counts.
GAIN_TOLERANCE = 0.15
OFFSET_SIGMAS, OFFSET_SLACK_COUNTS = 3.0, 2.0


def config_disagreement(gain_counts_per_e: float | None, offset_counts: float | None,
                        fit: PhotonTransferResult | None) -> dict[str, bool] | None:
    """Do configured constants disagree with a *confident* learned fit? ``{"gain_counts_per_e":
    bool, "offset_counts": bool}`` for the constants given (None: no confident fit). Gain: off by
    more than :data:`GAIN_TOLERANCE` (|ln ratio| > ln 1.15) and by more than 3 σ of the fit.
    Offset: off by more than 3 σ + 2 counts; a ``zero_read_noise`` offset is a lower bound
    (``offset_bounds``: up to the darkest blocks), so only leaving that interval counts."""
    if fit is None or not fit.confident:
        return None
    out: dict[str, bool] = {}
    if gain_counts_per_e is not None:
        g, se = fit.gain_counts_per_e, fit.gain_se
        out["gain_counts_per_e"] = bool(abs(math.log(g / gain_counts_per_e)) > math.log1p(GAIN_TOLERANCE)
                                        and abs(g - gain_counts_per_e) > 3.0 * se)
    if offset_counts is not None and fit.offset_method != "given":
        tol = OFFSET_SIGMAS * fit.offset_se + OFFSET_SLACK_COUNTS
        lo = hi = fit.offset_counts
        if fit.offset_method == "zero_read_noise":
            hi = max(hi, fit.offset_bounds[1])
        out["offset_counts"] = bool(offset_counts < lo - tol or offset_counts > hi + tol)
    return out
