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

The same choice, by the same criterion, for the confident core: ``statistic="core_nm"``, the
candidates are core diameters (nm, :data:`DEFAULT_CORE_GRID`), a component's statistic the
equivalent-circle diameter of its pixels at or above the card's ``particle_core_probability``
(``fringelive calibrate --choose-particle-core``); ``statistic="core_fraction"``, the share of
its area those pixels cover (:data:`DEFAULT_CORE_FRACTION_GRID`, ``--choose-particle-core-fraction``);
``statistic="edge_core_fraction"``, the same share for components touching the frame edge only
(``--choose-particle-edge-core-fraction``).
Each choice is made with the other rules as the bundle has them (``settings``), so choices made
one after the other compose.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from fringelive.bundle.card import DEFAULT_PARTICLE_CORE_PROBABILITY
from fringelive.engine.particle_measure import ParticleSettings, core_diameters_nm, core_fractions, measure_particles
from fringelive.engine.particles import pixels_of, touching_border

__all__ = ["DEFAULT_CONFIDENCE_GRID", "DEFAULT_CORE_GRID", "DEFAULT_CORE_FRACTION_GRID", "DEFAULT_MAX_DICE_LOSS",
           "STATISTICS", "METRICS_KEYS", "ConfidenceTally", "ConfidenceChoice", "choose_particle_confidence"]

#: candidate cuts (mean class-1 probability of a component); 0 = no cut
DEFAULT_CONFIDENCE_GRID: tuple[float, ...] = (0.0, 0.6, 0.65, 0.7, 0.75, 0.8, 0.82, 0.84, 0.86, 0.88, 0.9, 0.92, 0.94)
#: candidate confident cores (equivalent-circle diameter, nm); 0 = no core rule
DEFAULT_CORE_GRID: tuple[float, ...] = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
#: candidate shares of a component's area in its confident core; 0 = no rule
DEFAULT_CORE_FRACTION_GRID: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
#: the component statistics a cut can apply to, and the ParticleSettings field each cut sets
STATISTICS: dict[str, str] = {"mean_probability": "min_mean_probability", "core_nm": "min_core_nm",
                              "core_fraction": "min_core_fraction", "edge_core_fraction": "min_edge_core_fraction"}
#: the card metrics each statistic's choice is recorded under
METRICS_KEYS: dict[str, str] = {"mean_probability": "particle_confidence_calibration",
                                "core_nm": "particle_core_calibration",
                                "core_fraction": "particle_core_fraction_calibration",
                                "edge_core_fraction": "particle_edge_core_fraction_calibration"}
#: each statistic's default candidates, and the values a candidate may take (low <= c < high)
_GRIDS: dict[str, tuple[tuple[float, ...], float, str]] = {
    "mean_probability": (DEFAULT_CONFIDENCE_GRID, 1.0, "probabilities in [0, 1)"),
    "core_nm": (DEFAULT_CORE_GRID, math.inf, "diameters >= 0 nm"),
    "core_fraction": (DEFAULT_CORE_FRACTION_GRID, 1.0, "fractions in [0, 1)"),
    "edge_core_fraction": (DEFAULT_CORE_FRACTION_GRID, 1.0, "fractions in [0, 1)")}
#: largest drop of the pooled Dice (absolute) a cut may cost against no cut
DEFAULT_MAX_DICE_LOSS = 0.01


@dataclass
class ConfidenceTally:
    """Per candidate cut, over the frames added so far: frames with the exact particle count,
    and the pooled pixel counts of the published mask. ``threshold``: the class-1 probability
    the mask is made with (the bundle's). ``statistic``: a key of :data:`STATISTICS` (the mean
    probability, or the confident core's diameter or area share at ``core_probability``).
    ``settings``: the bundle's particle rules; the chosen statistic's own is set to 0 (no cut)."""

    threshold: float
    grid: tuple[float, ...] | None = None  # None: the statistic's default grid
    settings: ParticleSettings = field(default_factory=ParticleSettings)
    min_area_px: int = 20
    max_dice_loss: float = DEFAULT_MAX_DICE_LOSS
    statistic: str = "mean_probability"
    core_probability: float = DEFAULT_PARTICLE_CORE_PROBABILITY
    exact: np.ndarray = field(init=False)
    tp: np.ndarray = field(init=False)
    fp: np.ndarray = field(init=False)
    fn: np.ndarray = field(init=False)
    frames: int = 0
    frames_with_particles: int = 0

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {sorted(STATISTICS)}, got {self.statistic!r}")
        default_grid, top, what = _GRIDS[self.statistic]
        if self.grid is None:
            self.grid = default_grid
        grid = tuple(float(c) for c in self.grid)
        if not grid or 0.0 not in grid or any(not (math.isfinite(c) and 0.0 <= c < top) for c in grid) \
                or len(set(grid)) != len(grid):
            raise ValueError(f"particle {self.statistic} grid must be distinct {what} including 0 (no cut), "
                             f"got {list(self.grid)!r}")
        if not (math.isfinite(self.core_probability) and 0.0 < self.core_probability < 1.0):
            raise ValueError(f"core_probability must be a probability in (0, 1), got {self.core_probability!r}")
        if not (math.isfinite(self.threshold) and 0.0 < self.threshold < 1.0):
            raise ValueError(f"threshold must be a probability in (0, 1), got {self.threshold!r}")
        if not (math.isfinite(self.max_dice_loss) and 0.0 <= self.max_dice_loss <= 1.0):
            raise ValueError(f"max_dice_loss must be in [0, 1] (Dice), got {self.max_dice_loss!r}")
        self.grid = tuple(sorted(grid))
        self.settings = dataclasses.replace(self.settings, **{STATISTICS[self.statistic]: 0.0})
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
        values = self._statistic(called, probabilities, pixel_size_nm)
        n_true = int(np.count_nonzero(true.mask))
        for i, c in enumerate(self.grid):
            low = values < c
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

    def _statistic(self, called: Any, probabilities: np.ndarray, pixel_size_nm: float | None) -> np.ndarray:
        """(particles,) float64: each called particle's statistic (no core rule without a pixel size)."""
        if self.statistic == "mean_probability":
            return np.array([p["mean_probability"] for p in called.particles], dtype=np.float64)
        n = len(called.particles)
        if self.statistic == "core_fraction":
            return core_fractions(probabilities, self.core_probability, n, called.runs)
        if self.statistic == "edge_core_fraction":  # components inside the frame are never cut
            edge = touching_border(called.mask.shape, n, called.runs)
            return np.where(edge, core_fractions(probabilities, self.core_probability, n, called.runs), np.inf)
        if pixel_size_nm is None:
            return np.full(n, np.inf)
        return core_diameters_nm(probabilities, self.core_probability, n, called.runs, pixel_size_nm)

    def result(self) -> "ConfidenceChoice":
        if not self.frames:
            raise ValueError("no labelled frames to choose a particle confidence on")
        denom = 2 * self.tp + self.fp + self.fn
        dice = np.where(denom > 0, 2 * self.tp / np.maximum(denom, 1), 1.0)
        floor = float(dice[self.grid.index(0.0)]) - self.max_dice_loss
        candidates = [i for i in range(len(self.grid)) if dice[i] >= floor - 1e-12]
        best = max(candidates, key=lambda i: (int(self.exact[i]), -self.grid[i]))
        return ConfidenceChoice(
            cut=self.grid[best], statistic=self.statistic, core_probability=self.core_probability,
            threshold=self.threshold, grid=self.grid,
            exact_count_share=tuple(float(e) / self.frames for e in self.exact),
            pooled_dice=tuple(float(d) for d in dice), max_dice_loss=self.max_dice_loss, frames=self.frames,
            frames_with_particles=self.frames_with_particles)


@dataclass(frozen=True)
class ConfidenceChoice:
    """The chosen cut of ``statistic`` and, per candidate, the share of frames with the exact
    particle count and the pooled Dice of the published mask."""

    cut: float
    statistic: str
    core_probability: float
    threshold: float
    grid: tuple[float, ...]
    exact_count_share: tuple[float, ...]
    pooled_dice: tuple[float, ...]
    max_dice_loss: float
    frames: int
    frames_with_particles: int

    @property
    def key(self) -> str:
        """The ParticleSettings field the cut sets (:data:`STATISTICS`)."""
        return STATISTICS[self.statistic]

    def to_dict(self) -> dict[str, Any]:
        core = {"core_probability": self.core_probability} if self.statistic != "mean_probability" else {}
        return {self.key: self.cut, "statistic": self.statistic, **core, "threshold": self.threshold,
                "criterion": "max share of frames whose particle count equals the label's, pooled Dice of the "
                             f"published mask at most {self.max_dice_loss:g} below no cut's",
                "max_dice_loss": self.max_dice_loss, "grid": list(self.grid),
                "exact_count_share": [round(v, 6) for v in self.exact_count_share],
                "pooled_dice": [round(v, 6) for v in self.pooled_dice], "frames": self.frames,
                "frames_with_particles": self.frames_with_particles}


def choose_particle_confidence(items: Iterable[tuple[np.ndarray, np.ndarray, float | None]], threshold: float, *,
                               grid: Sequence[float] | None = None,
                               settings: ParticleSettings | None = None, min_area_px: int = 20,
                               max_dice_loss: float = DEFAULT_MAX_DICE_LOSS, statistic: str = "mean_probability",
                               core_probability: float = DEFAULT_PARTICLE_CORE_PROBABILITY) -> ConfidenceChoice:
    """The cut of ``grid`` with the most exact particle counts over ``items`` = (probabilities
    (H, W), label (H, W) {0, 1}, pixel size nm/px or None) per frame, within the Dice budget."""
    tally = ConfidenceTally(threshold, None if grid is None else tuple(grid), settings or ParticleSettings(),
                            min_area_px, max_dice_loss, statistic, core_probability)
    for p, y, px in items:
        tally.add(p, y, px)
    return tally.result()
