"""The bundle's operating point: the class-1 probability threshold that segments labelled frames best.

For each candidate threshold t the published mask is made as the daemon makes it (``p > t``,
holes filled, specks removed: :func:`~fringelive.engine.particle_measure.measure_particles`) and
compared with the label; the counts are pooled over all frames, so false positives on frames
without particles (bare support) weigh in. The chosen t maximises the pooled Dice
``2·TP / (2·TP + FP + FN)`` among the candidates that call at most ``max_called_empty`` of the
pixels on the frames without particles (mean; default 0.5 %: a microscopist must not see
phantom particles on the support) and at most ``max_called_empty_frame`` on any one of them
(default 2 %); ties go to the candidate nearest 0.5. When no candidate keeps within that budget,
the one calling least there (mean) is taken. Pure: probabilities and labels in,
numbers out (``fringelive calibrate --choose-threshold`` runs the pipeline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from fringelive.engine.particle_measure import ParticleSettings, measure_particles

__all__ = ["DEFAULT_GRID", "DEFAULT_MAX_CALLED_EMPTY", "DEFAULT_MAX_CALLED_EMPTY_FRAME", "ThresholdChoice",
           "ThresholdTally", "choose_threshold"]

#: candidate thresholds (class-1 probability)
DEFAULT_GRID: tuple[float, ...] = tuple(round(0.3 + 0.05 * i, 2) for i in range(11))  # 0.30 .. 0.80
#: largest mean fraction of pixels called particle on frames without particles (fraction)
DEFAULT_MAX_CALLED_EMPTY = 0.005
#: largest fraction of pixels called particle on any one frame without particles (fraction)
DEFAULT_MAX_CALLED_EMPTY_FRAME = 0.02


@dataclass
class ThresholdTally:
    """Pooled pixel counts per candidate threshold over the frames added so far."""

    grid: tuple[float, ...] = DEFAULT_GRID
    settings: ParticleSettings = field(default_factory=ParticleSettings)
    min_area_px: int = 20
    max_called_empty: float = DEFAULT_MAX_CALLED_EMPTY
    max_called_empty_frame: float = DEFAULT_MAX_CALLED_EMPTY_FRAME
    tp: np.ndarray = field(init=False)
    fp: np.ndarray = field(init=False)
    fn: np.ndarray = field(init=False)
    frames: int = 0
    empty_frames: int = 0
    empty_called: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        grid = tuple(float(t) for t in self.grid)
        if not grid or any(not (math.isfinite(t) and 0.0 < t < 1.0) for t in grid) or len(set(grid)) != len(grid):
            raise ValueError(f"threshold grid must be distinct probabilities in (0, 1), got {list(self.grid)!r}")
        for name in ("max_called_empty", "max_called_empty_frame"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValueError(f"{name} must be a fraction in [0, 1], got {v!r}")
        self.grid = grid
        self.tp = np.zeros(len(grid), np.int64)
        self.fp = np.zeros(len(grid), np.int64)
        self.fn = np.zeros(len(grid), np.int64)

    def add(self, probabilities: np.ndarray, label: np.ndarray, pixel_size_nm: float | None) -> None:
        """One frame: ``probabilities`` (H, W) float class-1, ``label`` (H, W) {0, 1}."""
        if probabilities.shape != np.shape(label):
            raise ValueError(f"probabilities {probabilities.shape} and label {np.shape(label)} differ in shape")
        truth = np.asarray(label) > 0
        n_true = int(np.count_nonzero(truth))
        called: list[float] = []
        for i, t in enumerate(self.grid):
            mask = measure_particles(probabilities > t, pixel_size_nm, self.settings, min_area_px=self.min_area_px).mask
            tp = int(np.count_nonzero(mask & truth))
            n_called = int(np.count_nonzero(mask))
            self.tp[i] += tp
            self.fp[i] += n_called - tp
            self.fn[i] += n_true - tp
            called.append(n_called / mask.size)
        self.frames += 1
        if n_true == 0:
            self.empty_frames += 1
            self.empty_called.append(called)

    def result(self) -> "ThresholdChoice":
        if not self.frames:
            raise ValueError("no labelled frames to choose a threshold on")
        denom = 2 * self.tp + self.fp + self.fn
        dice = np.where(denom > 0, 2 * self.tp / np.maximum(denom, 1), 1.0)
        empty = np.asarray(self.empty_called) if self.empty_called else None
        candidates = list(range(len(self.grid)))
        if empty is not None:
            within = [i for i in candidates if empty[:, i].mean() <= self.max_called_empty
                      and empty[:, i].max() <= self.max_called_empty_frame]
            candidates = within or [int(np.argmin(empty.mean(axis=0)))]
        best = max(candidates, key=lambda i: (round(float(dice[i]), 6), -abs(self.grid[i] - 0.5)))
        return ThresholdChoice(
            threshold=self.grid[best], grid=self.grid, pooled_dice=tuple(float(d) for d in dice),
            max_called_empty=self.max_called_empty, max_called_empty_frame=self.max_called_empty_frame,
            frames=self.frames, empty_frames=self.empty_frames,
            empty_called_mean=None if empty is None else tuple(float(v) for v in empty.mean(axis=0)),
            empty_called_max=None if empty is None else tuple(float(v) for v in empty.max(axis=0)))


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen threshold and, per candidate, the pooled Dice and (frames without particles)
    the mean and largest fraction of pixels called particle."""

    threshold: float
    grid: tuple[float, ...]
    pooled_dice: tuple[float, ...]
    max_called_empty: float
    max_called_empty_frame: float
    frames: int
    empty_frames: int
    empty_called_mean: tuple[float, ...] | None
    empty_called_max: tuple[float, ...] | None

    def to_dict(self) -> dict[str, Any]:
        def r(v: Sequence[float] | None) -> list[float] | None:
            return None if v is None else [round(float(x), 6) for x in v]

        return {"threshold": self.threshold,
                "criterion": "max pooled Dice of the published mask, called fraction on frames without "
                             f"particles <= {self.max_called_empty:g} (mean) and <= {self.max_called_empty_frame:g} "
                             "(each frame)",
                "max_called_without_particles": self.max_called_empty,
                "max_called_without_particles_frame": self.max_called_empty_frame,
                "grid": list(self.grid), "pooled_dice": r(self.pooled_dice), "frames": self.frames,
                "frames_without_particles": self.empty_frames,
                "called_fraction_without_particles_mean": r(self.empty_called_mean),
                "called_fraction_without_particles_max": r(self.empty_called_max)}


def choose_threshold(items: Iterable[tuple[np.ndarray, np.ndarray, float | None]], *,
                     grid: Sequence[float] = DEFAULT_GRID, settings: ParticleSettings | None = None,
                     min_area_px: int = 20, max_called_empty: float = DEFAULT_MAX_CALLED_EMPTY,
                     max_called_empty_frame: float = DEFAULT_MAX_CALLED_EMPTY_FRAME) -> ThresholdChoice:
    """The threshold of ``grid`` with the best pooled Dice over ``items`` = (probabilities (H, W),
    label (H, W) {0, 1}, pixel size nm/px or None) per frame, within the bare-support budget."""
    tally = ThresholdTally(tuple(grid), settings or ParticleSettings(), min_area_px, max_called_empty,
                           max_called_empty_frame)
    for p, y, px in items:
        tally.add(p, y, px)
    return tally.result()
