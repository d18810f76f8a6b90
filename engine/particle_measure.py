"""Particles a microscopist can use: specks apart, holes filled, size statistics in nm.

A connected component of the mask is a *particle* when its equivalent-circle diameter reaches
``ParticleSettings.min_diameter_nm`` (pixel size known) or its area reaches the pixel minimum
(pixel size unknown); smaller ones are *specks* (sub-nanometre texture, shot-noise blobs), counted
apart and, by default, removed from the published mask. Particles touching the frame edge keep
``touches_border = True`` and, by default, stay out of the size statistics (their size is a lower
bound). With the class-1 probabilities given, each particle carries its mean probability, and a
component whose mean falls below ``min_mean_probability`` is *uncertain*: counted apart and left
out of the mask and the particles (0, the default, keeps every component). So is a component
without a *confident core*: its pixels of probability at least ``core_probability`` must make an
equivalent-circle diameter of ``min_core_nm`` (0, the default, is off; the rule needs the pixel
size), and must cover a share ``min_core_fraction`` of its area or, for a component touching the
frame edge, ``min_edge_core_fraction`` (0, the default, is off; no pixel size needed).
Amorphous-support texture the network half-believes makes components that are uniformly
lukewarm; a particle, even a small or faint one, holds a core the network is sure of, and its
unsure pixels are a rim. Such texture components mostly touch the frame edge, where the network
sees part of them and many cameras' illumination is lowest. Pure arrays in, plain data out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fringelive.bundle.card import DEFAULT_PARTICLE_CORE_PROBABILITY
from fringelive.engine.particles import (drop_labels, fill_holes, label_kept_runs, mean_over_runs, pixels_of,
                                         stats_of_labels, touching_border)

__all__ = ["ParticleSettings", "ParticleMeasurement", "measure_particles", "size_summary", "min_area_px_for",
           "core_diameters_nm", "core_fractions", "BUNDLE_PARTICLE_RULES"]

#: the ParticleSettings fields whose None means the bundle's ``card.particle_<name>``
BUNDLE_PARTICLE_RULES = ("min_mean_probability", "min_core_nm", "min_core_fraction", "min_edge_core_fraction",
                         "core_probability")


@dataclass(frozen=True)
class ParticleSettings:
    """``[particles]``: what counts as a particle and how sizes are summarised.

    min_diameter_nm: smallest equivalent-circle diameter of a particle (nm) when the frame's
        pixel size is known; smaller components are specks. (Without a pixel size the pipeline's
        ``min_particle_area_px`` is the minimum.)
    fill_holes: fill enclosed holes of each component before measuring (and in the mask).
    remove_specks: drop specks from the published mask too (they are counted either way).
    exclude_edge_from_stats: particles touching the frame edge stay out of the mean/median
        diameter and the size distribution (they are still counted and listed, flagged).
    size_bin_nm: bin width of the area-weighted size distribution (nm of diameter).
    min_mean_probability: a component is a particle only when its mean class-1 probability
        reaches this (0..1; 0 = every component); the rest are *uncertain* (counted, not in the
        mask). None = the bundle's (``card.particle_min_mean_probability``, which
        ``fringelive calibrate --choose-particle-confidence`` sets; 0 unless chosen).
    min_core_nm: a component is a particle only when its confident core (its pixels of class-1
        probability >= ``core_probability``) reaches this equivalent-circle diameter (nm; 0 = off;
        without a pixel size the rule is off); the rest are *uncertain*. None = the bundle's
        (``card.particle_min_core_nm``, which ``fringelive calibrate --choose-particle-core`` sets;
        0 unless chosen).
    min_core_fraction: a component is a particle only when its confident core covers at least
        this share of its area (0..1; 0 = off; works without a pixel size); the rest are
        *uncertain*. None = the bundle's (``card.particle_min_core_fraction``, which
        ``fringelive calibrate --choose-particle-core-fraction`` sets; 0 unless chosen).
    min_edge_core_fraction: the same share for components touching the frame edge only (0..1;
        0 = off). None = the bundle's (``card.particle_min_edge_core_fraction``,
        ``--choose-particle-edge-core-fraction``).
    core_probability: the class-1 probability of a core pixel (0..1). None = the bundle's
        (``card.particle_core_probability``, default 0.95).
    """

    min_diameter_nm: float = 1.0
    fill_holes: bool = True
    remove_specks: bool = True
    exclude_edge_from_stats: bool = True
    size_bin_nm: float = 1.0
    min_mean_probability: float | None = None
    min_core_nm: float | None = None
    min_core_fraction: float | None = None
    min_edge_core_fraction: float | None = None
    core_probability: float | None = None

    def __post_init__(self) -> None:
        for name in ("min_diameter_nm", "size_bin_nm"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a number (nm), got {v!r}")
        if self.min_diameter_nm < 0:
            raise ValueError(f"min_diameter_nm must be >= 0 nm, got {self.min_diameter_nm!r}")
        if not self.size_bin_nm > 0:
            raise ValueError(f"size_bin_nm must be > 0 nm, got {self.size_bin_nm!r}")
        for name in ("fill_holes", "remove_specks", "exclude_edge_from_stats"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        v = self.min_mean_probability
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0):
            raise ValueError(f"min_mean_probability must be a probability in [0, 1), or None (unset: the bundle's), "
                             f"got {v!r}")
        v = self.min_core_nm
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < math.inf):
            raise ValueError(f"min_core_nm must be a diameter >= 0 nm, or None (unset: the bundle's), got {v!r}")
        for name in ("min_core_fraction", "min_edge_core_fraction"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0):
                raise ValueError(f"{name} must be a fraction in [0, 1), or None (unset: the bundle's), got {v!r}")
        v = self.core_probability
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0):
            raise ValueError(f"core_probability must be a probability in (0, 1), or None (unset: the bundle's), "
                             f"got {v!r}")


@dataclass(frozen=True)
class ParticleMeasurement:
    """mask: (H, W) bool, the published mask (holes filled, specks removed per the settings);
    particles: per-particle dicts (:func:`fringelive.engine.particles.particle_stats`, labels
    1..n); specks: components below the minimum; summary: :func:`size_summary`;
    uncertain: components below ``min_mean_probability`` or without the confident core (not
    specks, not particles);
    labels: (H, W) int32 label image of the particles (0 = background or speck), numbered like
    ``particles``, so later stages (tracking, circularity) need not label the mask again;
    runs: their foreground runs ``(row, c0, c1, label)``
    (:func:`~fringelive.engine.particles.label_kept_runs`)."""

    mask: np.ndarray
    particles: list[dict[str, Any]]
    specks: int
    summary: dict[str, Any] = field(default_factory=dict)
    labels: np.ndarray | None = None
    uncertain: int = 0
    runs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None


def core_fractions(probabilities: np.ndarray, core_probability: float, count: int,
                   runs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Share of each component's area in its confident core, the pixels whose class-1
    ``probabilities`` (H, W) reach ``core_probability``: (count,) float64 in [0, 1], components
    1..``count`` given by their foreground runs (:func:`~fringelive.engine.particles.label_kept_runs`)."""
    if count == 0:
        return np.zeros(0, dtype=np.float64)
    probabilities = np.asarray(probabilities)
    # written as float32 0/1 in one pass: numpy's reduceat over a bool frame would first cast it whole
    core = np.greater_equal(probabilities, core_probability, out=np.empty(probabilities.shape, np.float32))
    return mean_over_runs(core, count, runs)


def core_diameters_nm(probabilities: np.ndarray, core_probability: float, count: int,
                      runs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                      pixel_size_nm: float, *, fractions: np.ndarray | None = None) -> np.ndarray:
    """Equivalent-circle diameter (nm) of each component's confident core (see
    :func:`core_fractions`, which ``fractions`` gives when already computed): (count,) float64."""
    if count == 0:
        return np.zeros(0, dtype=np.float64)
    if fractions is None:
        fractions = core_fractions(probabilities, core_probability, count, runs)
    _, c0, c1, lab = runs
    area = np.bincount(lab, weights=(c1 - c0).astype(np.float64), minlength=count + 1)[1:count + 1]
    return 2.0 * np.sqrt(fractions * area / math.pi) * float(pixel_size_nm)


def min_area_px_for(pixel_size_nm: float | None, settings: ParticleSettings, min_area_px: int) -> int:
    """Smallest particle area (px): the disc of ``min_diameter_nm`` when the pixel size is
    known, else ``min_area_px``; at least 1."""
    if pixel_size_nm is None:
        return max(1, int(min_area_px))
    return max(1, int(math.ceil(math.pi / 4.0 * (settings.min_diameter_nm / float(pixel_size_nm)) ** 2 - 1e-9)))


def measure_particles(mask: np.ndarray, pixel_size_nm: float | None, settings: ParticleSettings, *,
                      min_area_px: int = 20, connectivity: int = 2,
                      probabilities: np.ndarray | None = None) -> ParticleMeasurement:
    """Particles, specks and size summary of ``mask`` (H, W) bool; ``pixel_size_nm`` nm/px or
    None; ``min_area_px`` is the minimum when the pixel size is unknown. ``probabilities``
    (H, W) float, the class-1 probabilities ``mask`` was thresholded from: each particle gets its
    ``mean_probability``, and ``settings.min_mean_probability``, ``min_core_nm``,
    ``min_core_fraction`` and ``min_edge_core_fraction`` (None counts as 0; ``core_probability``
    None as 0.95) take effect."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != bool:
        raise ValueError(f"mask must be a 2-D bool array, got shape {mask.shape} dtype {mask.dtype}")
    if probabilities is not None and np.shape(probabilities) != mask.shape:
        raise ValueError(f"probabilities {np.shape(probabilities)} and mask {mask.shape} differ in shape")
    minimum = min_area_px_for(pixel_size_nm, settings, min_area_px)
    if settings.fill_holes:
        mask = fill_holes(mask)
    labels, count, kept, runs = label_kept_runs(mask, minimum, connectivity=connectivity)
    specks = count - kept
    uncertain = 0
    means = None
    if probabilities is not None:
        means = mean_over_runs(np.asarray(probabilities), kept, runs)
        cut = settings.min_mean_probability or 0.0
        core = (settings.min_core_nm or 0.0) if pixel_size_nm is not None else 0.0  # the core rule needs nm
        share = settings.min_core_fraction or 0.0
        edge_share = settings.min_edge_core_fraction or 0.0
        if (cut > 0 or core > 0 or share > 0 or edge_share > 0) and kept:
            low = means < cut
            if core > 0 or share > 0 or edge_share > 0:
                core_probability = settings.core_probability or DEFAULT_PARTICLE_CORE_PROBABILITY
                fractions = core_fractions(probabilities, core_probability, kept, runs)
                low |= fractions < share
                if edge_share > 0:
                    low |= (fractions < edge_share) & touching_border(mask.shape, kept, runs)
                if core > 0:
                    low |= core_diameters_nm(probabilities, core_probability, kept, runs, pixel_size_nm,
                                             fractions=fractions) < core
            uncertain = int(low.sum())
            if uncertain:
                if not (specks and settings.remove_specks):  # else the mask is rebuilt from the labels below
                    mask = mask & ~pixels_of(labels, low)
                labels, kept, runs = drop_labels(labels, kept, runs, low)
                means = means[~low]
    if specks and settings.remove_specks:
        mask = labels > 0
    particles = stats_of_labels(labels, kept, pixel_size_nm, runs=runs)
    if means is not None:
        for particle, mean in zip(particles, means):
            particle["mean_probability"] = round(float(mean), 4)
    return ParticleMeasurement(mask=mask, particles=particles, specks=specks,
                               summary=size_summary(particles, specks, settings, uncertain=uncertain),
                               labels=labels, uncertain=uncertain, runs=runs)


def size_summary(particles: list[dict[str, Any]], specks: int, settings: ParticleSettings, *,
                 uncertain: int = 0) -> dict[str, Any]:
    """Counts and size statistics: ``count`` (particles), ``specks``, ``uncertain`` (components
    below ``min_mean_probability``), ``edge`` (particles
    touching the frame edge), ``measured`` (particles in the statistics), ``mean_diameter_nm``,
    ``median_diameter_nm``, ``std_diameter_nm`` (None without a pixel size; then the ``_px``
    twins are given), and ``size_distribution``: ``bin_edges_nm`` and the area-weighted
    ``area_fraction`` per bin (the share of the measured particles' area in each diameter bin)."""
    edge = sum(1 for p in particles if p["touches_border"])
    used = [p for p in particles if not (settings.exclude_edge_from_stats and p["touches_border"])]
    out: dict[str, Any] = {"count": len(particles), "specks": int(specks), "uncertain": int(uncertain),
                           "edge": edge, "measured": len(used),
                           "edge_excluded": bool(settings.exclude_edge_from_stats)}
    nm = bool(used) and used[0]["diameter_nm"] is not None
    key = "diameter_nm" if nm else "diameter_px"
    d = np.array([p[key] for p in used], dtype=np.float64)
    unit = "nm" if nm or not used else "px"
    for stat, fn in (("mean", np.mean), ("median", np.median), ("std", np.std)):
        value = float(fn(d)) if d.size else None
        out[f"{stat}_diameter_nm"] = value if unit == "nm" else None
        if unit == "px":
            out[f"{stat}_diameter_px"] = value
    if d.size and unit == "nm":
        areas = np.array([p["area_nm2"] for p in used], dtype=np.float64)
        w = settings.size_bin_nm
        hi = max(w, math.ceil(float(d.max()) / w + 1e-9) * w)
        edges = np.arange(0.0, hi + 0.5 * w, w)
        hist, _ = np.histogram(d, bins=edges, weights=areas)
        total = float(hist.sum())
        out["size_distribution"] = {"bin_edges_nm": [round(float(e), 6) for e in edges],
                                    "area_fraction": [round(float(v / total), 6) if total else 0.0 for v in hist]}
    else:
        out["size_distribution"] = None
    return out
