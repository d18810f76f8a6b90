"""What the segmentation pipeline hands between its stages (frozen dataclasses, arrays inside):
:class:`PreparedFrame` (``prepare`` → ``infer_prepared``), :class:`FrameInference`
(``infer`` → ``finish``) and :class:`PipelineResult` (``finish``). See
:mod:`fringelive.engine.pipeline`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fringelive.bundle.card import Preprocessing

__all__ = ["PipelineResult", "PreparedFrame", "FrameInference"]


@dataclass(frozen=True)
class PipelineResult:
    """What :meth:`SegmentationPipeline.run` computed for one frame.

    probabilities: (H, W) float32, class-1 probability averaged over the members.
    mask: (H, W) bool, ``probabilities > threshold`` (:attr:`SegmentationPipeline.threshold`).
    member_masks: one (H, W) bool mask per member (each member's own probability > threshold),
        for member agreement; with one member it is ``(mask,)``.
    particles: per-particle dicts from :func:`fringelive.engine.particles.particle_stats`
        (particles only: components below the minimum are ``specks``).
    area_fraction: fraction of the frame's pixels in ``mask``.
    specks: components below the particle minimum (removed from ``mask`` by default).
    particle_summary: counts and size statistics
        (:func:`fringelive.engine.particle_measure.size_summary`).
    labels: (H, W) int32 label image of ``particles`` (label k = ``particles[k-1]``, 0 =
        background or speck), or None; later stages reuse it instead of labelling again.
    timings_ms: ms per stage: "preprocess", "inference" (tiling + backend calls + stitching, all
        members), "postprocess" (probabilities, ensemble mean, threshold), "particles", "total".
    tile_size: halo-tile core side used (px), None for one whole-frame pass (or gaussian tiling).
    members: the members' file names (or model paths), in backend order.
    preprocess_stats: from :func:`fringelive.engine.preprocess.preprocess`: ``xray_pixels``
        (pixels replaced) and, with the flat-field on, ``flatfield_min``/``flatfield_max``.
    """

    probabilities: np.ndarray
    mask: np.ndarray
    member_masks: tuple[np.ndarray, ...]
    particles: list[dict[str, Any]]
    area_fraction: float
    timings_ms: dict[str, float]
    tile_size: int | None = None
    members: tuple[str, ...] = field(default=())
    preprocess_stats: dict[str, Any] = field(default_factory=dict)
    specks: int = 0
    particle_summary: dict[str, Any] = field(default_factory=dict)
    labels: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape  # type: ignore[return-value]


@dataclass(frozen=True)
class PreparedFrame:
    """A frame after :meth:`SegmentationPipeline.prepare`, input of
    :meth:`SegmentationPipeline.infer_prepared`.

    image: (H, W) float32 preprocessed frame (standardized, dimensionless).
    pixel_size_nm: nm/px from the frame's metadata, or None.
    preprocess_ms: wall ms of the preprocessing.
    preprocess_stats: see :attr:`PipelineResult.preprocess_stats`.
    preprocessing: the card parameters it was preprocessed with (checked on use: a bundle with
        other parameters refuses it).
    """

    image: np.ndarray
    pixel_size_nm: float | None
    preprocess_ms: float
    preprocess_stats: dict[str, Any]
    preprocessing: Preprocessing

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.image.shape[0]), int(self.image.shape[1]))


@dataclass(frozen=True)
class FrameInference:
    """The first half of a frame (:meth:`SegmentationPipeline.infer`), input of
    :meth:`SegmentationPipeline.finish`.

    probabilities: (H, W) float32 mean class-1 probability over the members.
    member_masks: with several members, each member's own mask (H, W) bool; else ``()``.
    pixel_size_nm: nm/px from the frame's metadata, or None.
    timings_ms: ms of "preprocess", "inference", "postprocess" so far.
    """

    probabilities: np.ndarray
    member_masks: tuple[np.ndarray, ...]
    pixel_size_nm: float | None
    timings_ms: dict[str, float]
    tile_size: int | None
    members: tuple[str, ...]
    preprocess_stats: dict[str, Any]
