"""The ``[pipeline]`` settings of :class:`~fringelive.engine.pipeline.SegmentationPipeline`:
:class:`PipelineConfig`, the tiling modes and tile-size words. Torch-free, so the daemon config
(and ``fringelive health``) can validate a ``[pipeline]`` section without loading the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fringelive.engine.particle_measure import ParticleSettings

__all__ = ["PipelineConfig", "TILE_SIZE_WORDS", "TILING_MODES"]

TILING_MODES = ("halo", "gaussian")
TILE_SIZE_WORDS = ("auto", "whole")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True)
class PipelineConfig:
    """How a frame is computed.

    tile_size: core side of a halo tile in px (a multiple of the card's ``tile.multiple_of``);
        None or "auto" = the largest tile whose activations fit ``memory_budget_mb`` (the whole
        frame when it fits; fewer, larger tiles compute less, so the tile size is chosen for one
        tile per call and the batch then shrinks to fit the budget); "whole" = always one
        whole-frame pass.
    batch_size: most tiles per backend call. memory_budget_mb: MiB for one backend call's
        activations (4096 MiB: a 4096² frame runs as 2×2 tiles of 2176² px input, 1.13× the
        FLOPs of one pass).
    tiling: "halo" (exact, equals one whole-frame pass) or "gaussian" (MONAI-style blend of
        ``gaussian_roi`` px windows overlapping by the fraction ``gaussian_overlap``).
    threshold: class-1 probability above which a pixel is particle; None = the bundle's own
        (``card.threshold``: 0.5 unless calibrated, :attr:`SegmentationPipeline.threshold`).
    min_particle_area_px: smallest particle (px) when the frame has no pixel size; with one,
        ``particles.min_diameter_nm`` decides (:mod:`fringelive.engine.particle_measure`).
    particles: what counts as a particle, specks, holes, size statistics (``[particles]``).
    members: indices of the ensemble members to run (None = all; used by
        :meth:`SegmentationPipeline.from_bundle` and checked against the backends given).
    """

    tile_size: int | str | None = "auto"
    batch_size: int = 4
    memory_budget_mb: float = 4096
    tiling: str = "halo"
    gaussian_roi: int = 512
    gaussian_overlap: float = 0.25
    threshold: float | None = None
    min_particle_area_px: int = 20
    members: tuple[int, ...] | None = None
    particles: ParticleSettings = field(default_factory=ParticleSettings)

    def __post_init__(self) -> None:
        ts = self.tile_size
        if isinstance(ts, str):
            if ts not in TILE_SIZE_WORDS:
                raise ValueError(f"tile_size must be a positive multiple of 16 px, None, 'auto' or 'whole', got {ts!r}")
        elif ts is not None and (not _is_int(ts) or ts < 1):
            raise ValueError(f"tile_size must be a positive multiple of 16 px, None, 'auto' or 'whole', got {ts!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if isinstance(self.memory_budget_mb, bool) or not isinstance(self.memory_budget_mb, (int, float)) \
                or not self.memory_budget_mb > 0:
            raise ValueError(f"memory_budget_mb must be > 0 (MiB), got {self.memory_budget_mb!r}")
        if self.tiling not in TILING_MODES:
            raise ValueError(f"tiling must be one of {list(TILING_MODES)}, got {self.tiling!r}")
        if self.tiling == "gaussian" and ts == "whole":
            raise ValueError("tile_size 'whole' needs tiling 'halo', got tiling 'gaussian'")
        if not _is_int(self.gaussian_roi) or self.gaussian_roi < 1:
            raise ValueError(f"gaussian_roi must be a positive integer (px), got {self.gaussian_roi!r}")
        if not 0.0 <= self.gaussian_overlap < 1.0:
            raise ValueError(f"gaussian_overlap must be >= 0 and < 1, got {self.gaussian_overlap!r}")
        if self.threshold is not None and (isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float))
                                           or not 0.0 < self.threshold < 1.0):
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold!r}")
        if not _is_int(self.min_particle_area_px) or self.min_particle_area_px < 0:
            raise ValueError(f"min_particle_area_px must be an integer >= 0, got {self.min_particle_area_px!r}")
        if self.members is not None:
            m = tuple(self.members)
            if not m or any(not _is_int(i) or i < 0 for i in m) or len(set(m)) != len(m):
                raise ValueError(f"members must be None or distinct member indices >= 0, got {self.members!r}")
            object.__setattr__(self, "members", m)
