"""The bundle's particle confidence: the mean class-1 probability a component needs to be a particle.

A mask thresholded at the bundle's threshold holds particles and, on amorphous support, a few
small components of texture the network was less sure of (their mean probability is lower than
a real particle's). For each candidate cut c, on labelled frames: the published particles
(:func:`~fringelive.engine.particle_measure.measure_particles` with ``min_mean_probability = c``)
are counted against the label's own particles (the label measured by the same rules: holes
filled, specks apart), and the published mask is scored against the label (pooled Dice). The
chosen c maximises the share of frames whose particle count is exact, among the candidates whose
pooled Dice is at most ``max_dice_loss`` below that of no cut (c = 0): a cut must not buy counts
by dropping real particles. Ties go to the smaller c. Pure: probabilities and labels in, numbers
out (``fringelive calibrate --choose-particle-confidence`` runs the pipeline).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from fringelive.engine.particle_measure import ParticleSettings, measure_particles
from fringelive.engine.particles import pixels_of

__all__ = ["DEFAULT_CONFIDENCE_GRID", "DEFAULT_MAX_DICE_LOSS", "ConfidenceTally", "ConfidenceChoice",
           "choose_particle_confidence"]

#: candidate cuts (mean class-1 probability of a component); 0 = no cut
DEFAULT_CONFIDENCE_GRID: tuple[float, ...] = (0.0, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
#: largest drop of the pooled Dice (absolute) a cut may cost against no cut
DEFAULT_MAX_DICE_LOSS = 0.01


@dataclass
class ConfidenceTally:
    """Per candidate cut, over the frames added so far: frames with the exact particle count,
    and the pooled pixel counts of the published mask. ``threshold``: the class-1 probability
    the mask is made with (the bundle's)."""

    threshold: float
    grid: tuple[float, ...] = DEFAULT_CONFIDENCE_GRID
    settings: ParticleSettings = field(default_factory=ParticleSettings)
    min_area_px: int = 20
    max_dice_loss: float = DEFAULT_MAX_DICE_LOSS
    exact: np.ndarray = field(init=False)
    tp: np.ndarray = field(init=False)
    fp: np.ndarray = field(init=False)
    fn: np.ndarray = field(init=False)
    frames: int = 0
    frames_with_particles: int = 0

    def __post_init__(self) -> None:
        grid = tuple(float(c) for c in self.grid)
        if not grid or 0.0 not in grid or any(not (math.isfinite(c) and 0.0 <= c < 1.0) for c in grid) \
                or len(set(grid)) != len(grid):
            raise ValueError(f"particle confidence grid must be distinct probabilities in [0, 1) including 0 "
                             f"(no cut), got {list(self.grid)!r}")
        if not (math.isfinite(self.threshold) and 0.0 < self.threshold < 1.0):
            raise ValueError(f"threshold must be a probability in (0, 1), got {self.threshold!r}")
        if not (math.isfinite(self.max_dice_loss) and 0.0 <= self.max_dice_loss <= 1.0):
            raise ValueError(f"max_dice_loss must be in [0, 1] (Dice), got {self.max_dice_loss!r}")
        self.grid = tuple(sorted(grid))
        self.settings = dataclasses.replace(self.settings, min_mean_probability=0.0)
        n = len(self.grid)
        self.exact, self.tp, self.fp, self.fn = (np.zeros(n, np.int64) for _ in range(4))

    def add(self, probabilities: np.ndarray, label: np.ndarray, pixel_size_nm: float | None) -> None:
        """One frame: ``probabilities`` (H, W) float class-1, ``label`` (H, W) {0, 1}."""
        if probabilities.shape != np.shape(label):
            raise ValueError(f"probabilities {probabilities.shape} and label {np.shape(label)} differ in shape")
        truth = np.asarray(label) > 0
        true = measure_particles(truth, pixel_size_nm, self.settings, min_area_px=self.min_area_px)
        called = measure_particles(probabilities > self.threshold, pixel_size_nm, self.settings,
                                   min_area_px=self.min_area_px, probabilities=probabilities)
        means = np.array([p["mean_probability"] for p in called.particles], dtype=np.float64)
        n_true = int(np.count_nonzero(true.mask))
        for i, c in enumerate(self.grid):
            low = means < c
            mask = called.mask
            if low.any():
                mask = mask & ~pixels_of(called.labels, low)
            tp = int(np.count_nonzero(mask & true.mask))
            self.tp[i] += tp
            self.fp[i] += int(np.count_nonzero(mask)) - tp
            self.fn[i] += n_true - tp
            self.exact[i] += int(np.count_nonzero(~low)) == true.summary["count"]
        self.frames += 1
        self.frames_with_particles += true.summary["count"] > 0

    def result(self) -> "ConfidenceChoice":
        if not self.frames:
            raise ValueError("no labelled frames to choose a particle confidence on")
        denom = 2 * self.tp + self.fp + self.fn
        dice = np.where(denom > 0, 2 * self.tp / np.maximum(denom, 1), 1.0)
        floor = float(dice[self.grid.index(0.0)]) - self.max_dice_loss
        candidates = [i for i in range(len(self.grid)) if dice[i] >= floor - 1e-12]
        best = max(candidates, key=lambda i: (int(self.exact[i]), -self.grid[i]))
        return ConfidenceChoice(
            min_mean_probability=self.grid[best], threshold=self.threshold, grid=self.grid,
            exact_count_share=tuple(float(e) / self.frames for e in self.exact),
            pooled_dice=tuple(float(d) for d in dice), max_dice_loss=self.max_dice_loss, frames=self.frames,
            frames_with_particles=self.frames_with_particles)


@dataclass(frozen=True)
class ConfidenceChoice:
    """The chosen cut and, per candidate, the share of frames with the exact particle count and
    the pooled Dice of the published mask."""

    min_mean_probability: float
    threshold: float
    grid: tuple[float, ...]
    exact_count_share: tuple[float, ...]
    pooled_dice: tuple[float, ...]
    max_dice_loss: float
    frames: int
    frames_with_particles: int

    def to_dict(self) -> dict[str, Any]:
        return {"min_mean_probability": self.min_mean_probability, "threshold": self.threshold,
                "criterion": "max share of frames whose particle count equals the label's, pooled Dice of the "
                             f"published mask at most {self.max_dice_loss:g} below no cut's",
                "max_dice_loss": self.max_dice_loss, "grid": list(self.grid),
                "exact_count_share": [round(v, 6) for v in self.exact_count_share],
                "pooled_dice": [round(v, 6) for v in self.pooled_dice], "frames": self.frames,
                "frames_with_particles": self.frames_with_particles}


def choose_particle_confidence(items: Iterable[tuple[np.ndarray, np.ndarray, float | None]], threshold: float, *,
                               grid: Sequence[float] = DEFAULT_CONFIDENCE_GRID,
                               settings: ParticleSettings | None = None, min_area_px: int = 20,
                               max_dice_loss: float = DEFAULT_MAX_DICE_LOSS) -> ConfidenceChoice:
    """The cut of ``grid`` with the most exact particle counts over ``items`` = (probabilities
    (H, W), label (H, W) {0, 1}, pixel size nm/px or None) per frame, within the Dice budget."""
    tally = ConfidenceTally(threshold, tuple(grid), settings or ParticleSettings(), min_area_px, max_dice_loss)
    for p, y, px in items:
        tally.add(p, y, px)
    return tally.result()
