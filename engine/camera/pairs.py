"""Frame pairs of one scene at one dose found in a stream: :class:`FramePairs` (EMVA 1288's
temporal variance, for the learned camera fit).

Two exposures ``a``, ``b`` of the same static scene at the same dose differ only by noise: the
blocks of ``(a − b)/√2`` carry exactly one frame's noise power and no scene, illumination or
fixed pattern, however textured the specimen, and ``(a + b)/2`` gives their mean. A spatial
photon-transfer fit on single frames cannot separate low-frequency specimen texture from the
zero-frequency noise power (texture adds variance ∝ signal², so the gain reads high); the
temporal pair can.

A stream is a time series: consecutive frames of one area at one dose are the common case, a
revisited area the other. :class:`FramePairs` holds the blocks of the last ``window`` unpaired
frames (on a fixed grid of at most ``max_blocks`` positions: ~1 MB per held 32² × 256 blocks,
float32) and pairs a new frame with the held frame that matches best, if any matches; both are
then used up (disjoint pairs, so the pairs are independent). A static particle cancels in the
difference like the support does, so the masks only exclude the blocks where the two frames'
predicted particles differ (a particle in one frame only: it moved, grew or appeared, or one of
the model's specks); the per-block flatness checks on the difference reject any other change
(fringes that moved). Match:
on those blocks the block-mean differences,
less their median (a dose change between the frames), scatter no more than ``match_ratio`` × the
scatter that noise alone gives them (``√(2·P/N)``, ``P`` the median zero-frequency noise power of
the difference blocks, ``N`` pixels per block). A different scene (texture), a different dose
or illumination pattern, or a drifted specimen fails it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from .blocks import BlockStats, _block_grid, _zero_freq_power, block_stack, clean_blocks, flat_blocks, pick_evenly
from .blocks import BACKGROUND_BLOCKS, stack_statistics

__all__ = ["FramePairs"]


@dataclass
class _Held:
    shape: tuple[int, int]
    stack: np.ndarray       # (n, B, B) float32, cleaned
    outliers: np.ndarray    # (n,)
    clear: np.ndarray       # (n,) bool: no predicted particle in the block
    level: float            # median block mean, counts


class FramePairs:
    """Find disjoint pairs of frames of one scene at one dose in a stream.

    :meth:`offer` each frame (raw counts, with the predicted particle mask); it returns the
    :class:`BlockStats` of a pair (means of the pair, noise of the difference, flat blocks only)
    when the frame matches a held one, else None (the frame is held). ``found``: pairs so far;
    ``offered``: frames offered.
    """

    def __init__(self, *, block: int = 32, max_blocks: int = BACKGROUND_BLOCKS, window: int = 8, match_ratio: float = 1.5,
                 min_blocks: int = 16, clip_sigma: float = 8.0, nps_lags: int = 3) -> None:
        for name, v, lo in (("block", block, 8), ("max_blocks", max_blocks, 8), ("window", window, 1),
                            ("min_blocks", min_blocks, 3)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if not match_ratio >= 1.0:
            raise ValueError(f"match_ratio must be >= 1 (noise-only scatter), got {match_ratio!r}")
        self.block, self.max_blocks, self.window, self.match_ratio = block, max_blocks, window, match_ratio
        self.min_blocks, self.clip_sigma, self.nps_lags = min_blocks, clip_sigma, nps_lags
        self._held: deque[_Held] = deque(maxlen=window)
        self._origins: dict[tuple[int, int], np.ndarray] = {}
        self.found = 0
        self.offered = 0

    def _origin(self, shape: tuple[int, int]) -> np.ndarray:
        """The fixed block grid of a frame shape: at most ``max_blocks`` positions, evenly spread."""
        if shape not in self._origins:
            by, bx = np.nonzero(_block_grid(shape, self.block, None))
            sel = pick_evenly(by.size, self.max_blocks)
            self._origins[shape] = np.stack([by[sel], bx[sel]], axis=1) * self.block
        return self._origins[shape]

    def _ratio(self, a: np.ndarray, b: np.ndarray) -> float:
        """Scatter of the block-mean differences over the noise-only scatter (≈ 1 for one scene)."""
        d = a.mean(axis=(1, 2)) - b.mean(axis=(1, 2))
        spread = 1.4826 * float(np.median(np.abs(d - np.median(d))))
        sub = pick_evenly(a.shape[0], 16)
        p, _, _ = _zero_freq_power((a[sub] - b[sub]) / math.sqrt(2.0), self.nps_lags)
        noise = math.sqrt(2.0 * max(float(np.median(p)), 1e-12) / (a.shape[1] * a.shape[2]))
        return spread / noise

    def offer(self, frame: np.ndarray, mask: np.ndarray | None = None) -> BlockStats | None:
        frame = np.asarray(frame)
        if frame.ndim != 2 or min(frame.shape) < 2 * self.block:
            raise ValueError(f"frames must be 2-D and at least {2 * self.block}² px, got shape {frame.shape}")
        self.offered += 1
        shape = (int(frame.shape[0]), int(frame.shape[1]))
        origin = self._origin(shape)
        stack, outliers = clean_blocks(block_stack(frame, origin, self.block), self.clip_sigma)
        cells = origin // self.block
        clear = _block_grid(shape, self.block, mask, margin=0)[cells[:, 0], cells[:, 1]]
        level = float(np.median(stack.mean(axis=(1, 2))))
        best: tuple[float, int, np.ndarray] | None = None
        for k, h in enumerate(self._held):
            if h.shape != shape or abs(h.level - level) > 0.1 * max(abs(level), 1e-9):
                continue  # another frame size, or another dose (or beam)
            # particles (or none) in the block in both frames
            both = clear == h.clear
            if both.sum() < self.min_blocks:
                continue
            r = self._ratio(stack[both], h.stack[both].astype(np.float64))
            if r <= self.match_ratio and (best is None or r < best[0]):
                best = (r, k, both)
        if best is None:
            self._held.append(_Held(shape, stack.astype(np.float32), outliers, clear, level))
            return None
        _, k, both = best
        h = self._held[k]
        del self._held[k]
        self.found += 1
        s = stack_statistics(stack[both], h.stack[both].astype(np.float64), origin=origin[both],
                             outliers=outliers[both] + h.outliers[both], nps_lags=self.nps_lags)
        # the difference carries no scene: only the per-block checks (no neighbourhood rules)
        return s.take(flat_blocks(s, mean_z_max=None, margin=False))

    def clear(self) -> None:
        self._held.clear()
