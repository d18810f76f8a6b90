"""The daemon's ``[drift]`` section: how drift is checked (:class:`DriftSettings`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fringelive.engine import envelope
from fringelive.engine.camera.blocks import BACKGROUND_BLOCKS

__all__ = ["DriftSettings"]


@dataclass(frozen=True)
class DriftSettings:
    """How drift is checked (the daemon's ``[drift]`` config section).

    enabled: compute drift at all (else the header says ``unknown``, reason ``drift_disabled``).
    image_estimates: estimate dose and pixel size from the image. member_agreement: mean
    pairwise Dice between members (needs a bundle with several members, all run).
    tolerances: overrides of the card's envelope tolerances. pixel_size_mismatch_rel /
    dose_mismatch_rel: how far (relative) metadata and image may disagree (None: the envelope
    tolerances). target_arl / cusum_k: override the card's CUSUM calibration (frames between
    false alarms; allowance in standard deviations); with a new target the threshold is
    re-simulated from the reference values at load. fringe_windows: particle windows for the
    pixel-size estimate; min_fringe_snr: peak significance (robust sigmas);
    max_background_blocks: blocks for the dose estimate (the camera learner's too: one computation
    per frame serves both); pixel_size_search: the pixel-size
    search band reaches this factor beyond the envelope and the metadata.
    """

    enabled: bool = True
    image_estimates: bool = True
    member_agreement: bool = True
    tolerances: envelope.ToleranceOverrides = field(default_factory=envelope.ToleranceOverrides)
    pixel_size_mismatch_rel: float | None = None
    dose_mismatch_rel: float | None = None
    target_arl: float | None = None
    cusum_k: float | None = None
    fringe_windows: int = 6
    min_fringe_snr: float = 6.0
    max_background_blocks: int = BACKGROUND_BLOCKS
    pixel_size_search: float = 2.5

    def __post_init__(self) -> None:
        for name in ("pixel_size_mismatch_rel", "dose_mismatch_rel", "cusum_k"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be >= 0, got {v!r}")
        if self.target_arl is not None and not (math.isfinite(self.target_arl) and self.target_arl >= 10):
            raise ValueError(f"target_arl must be >= 10 frames, got {self.target_arl!r}")
        if isinstance(self.fringe_windows, bool) or not isinstance(self.fringe_windows, int) or self.fringe_windows < 1:
            raise ValueError(f"fringe_windows must be a positive integer, got {self.fringe_windows!r}")
        if not self.min_fringe_snr > 0:
            raise ValueError(f"min_fringe_snr must be > 0, got {self.min_fringe_snr!r}")
        if self.max_background_blocks < 6:
            raise ValueError(f"max_background_blocks must be >= 6, got {self.max_background_blocks!r}")
        if not self.pixel_size_search > 1:
            raise ValueError(f"pixel_size_search must be > 1, got {self.pixel_size_search!r}")

    def settings(self) -> "DriftSettings":
        """These settings (the daemon config's ``[drift]`` section is a :class:`DriftSettings`)."""
        return self
