"""The daemon's camera (issue #12): ``[camera]`` config and the photon-transfer fit learned
from the stream. The camera belongs to the daemon, not to a bundle: one camera, many bundles;
a bundle reload keeps it.

:class:`CameraConfig` is the ``[camera]`` section: the engine's
:class:`~fringelive.engine.camera.CameraSettings` (flat keys ``name``, ``gain_counts_per_e``,
``offset_counts``, ``read_noise_counts``, ``noise_factor``) plus when to learn. :class:`CameraLearner`
feeds frames to a :class:`~fringelive.engine.camera.PhotonTransferFit` from the finisher thread
(about 5 ms per 512² frame) and refits every ``refit_every`` fed frames on a background thread
(bootstrap, ~0.6 s per 20 000 block points), so the hot path never waits for a fit.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fringelive.engine.camera import CameraSettings, PhotonTransferFit, PhotonTransferResult, header_camera
from fringelive.engine.frame import FrameMetadata

__all__ = ["CameraConfig", "CameraLearner", "write_camera_section"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CameraConfig:
    """``[camera]``: the detector (``settings``, the engine's physics) and learning.

    learn: fit gain and offset from the stream while either is not configured; learn_every:
    feed every n-th frame; refit_every: refit after this many fed frames.
    """

    settings: CameraSettings = field(default_factory=CameraSettings)
    learn: bool = True
    learn_every: int = 1
    refit_every: int = 25

    def __post_init__(self) -> None:
        for name in ("learn_every", "refit_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer (frames), got {v!r}")


class CameraLearner:
    """The daemon's camera state: ``config`` and the learned fit (``learned``, swapped
    atomically; None until a first fit). :meth:`observe` is called by one thread (the finisher)."""

    def __init__(self, config: CameraConfig | None = None) -> None:
        self.config = config or CameraConfig()
        cam = self.config.settings
        self.learning = bool(self.config.learn) and not cam.known
        self.fit: PhotonTransferFit | None = None
        if self.learning:
            defaults = CameraSettings()
            self.fit = PhotonTransferFit(
                offset_counts=cam.offset_counts,
                read_noise_counts=cam.read_noise_counts if cam.read_noise_counts != defaults.read_noise_counts else None,
                noise_factor=cam.noise_factor if cam.noise_factor != defaults.noise_factor else None)
        self.learned: PhotonTransferResult | None = None
        self._fed = 0
        self._seen = 0
        self._lock = threading.Lock()
        self._refit: threading.Thread | None = None

    @property
    def settings(self) -> CameraSettings:
        return self.config.settings

    def observe(self, pixels: np.ndarray, meta: FrameMetadata | Mapping[str, Any] | None,
                mask: np.ndarray | None) -> None:
        """Feed one processed frame (raw counts ``(H, W)``, predicted particle ``mask``) to the
        fit. Frames whose header carries camera constants are not fed (a mixed stream of
        cameras must not pollute the fit); frames under 64² px are too small."""
        if self.fit is None or min(pixels.shape) < 64:
            return
        if header_camera(meta):
            return
        self._seen += 1
        if (self._seen - 1) % self.config.learn_every:
            return
        with self._lock:
            self.fit.add_frame(pixels, mask=mask)
            self._fed += 1
            due = self._fed % self.config.refit_every == 0
        if due and (self._refit is None or not self._refit.is_alive()):
            with self._lock:
                snapshot = copy.deepcopy(self.fit)
            self._refit = threading.Thread(target=self._run_fit, args=(snapshot,), name="camera-fit", daemon=True)
            self._refit.start()

    def _run_fit(self, fit: PhotonTransferFit) -> None:
        try:
            result = fit.result()
        except Exception as e:  # noqa: BLE001 - a failed fit leaves the previous one in force
            _log.warning("camera fit failed: %s: %s", type(e).__name__, e)
            return
        if result is None:
            return
        was = self.learned is not None and self.learned.confident
        self.learned = result
        if result.confident and not was:
            _log.info("camera learned from the stream: gain %.3f ± %.3f counts/e, offset %.1f ± %.1f counts (%s)",
                      result.gain_counts_per_e, result.gain_se, result.offset_counts, result.offset_se,
                      result.offset_method)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a running refit (tests, shutdown)."""
        t = self._refit
        if t is not None:
            t.join(timeout)

    def refit_now(self) -> PhotonTransferResult | None:
        """Fit now on the calling thread (tests, ``status`` on demand)."""
        if self.fit is None:
            return None
        with self._lock:
            snapshot = copy.deepcopy(self.fit)
        self._run_fit(snapshot)
        return self.learned

    def status(self) -> dict[str, Any]:
        """For control ``status`` and ``fringelive health``."""
        return {"config": self.settings.to_dict(), "learning": self.learning, "frames_fed": self._fed,
                "fit": None if self.learned is None else self.learned.to_dict()}


def write_camera_section(path: str | os.PathLike[str], section: str) -> None:
    """Replace the ``[camera]`` table of the TOML file ``path`` by ``section`` (text starting
    with ``[camera]``), or append it; other sections stay byte for byte. Atomic (temp file +
    ``os.replace``); a missing file is created."""
    p = Path(path)
    text = p.read_text(encoding="utf-8") if p.exists() else ""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == "[camera]"), None)
    if start is None:
        out = text + ("" if not text or text.endswith("\n") else "\n") + ("\n" if text else "") + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        tail = "".join(lines[end:])
        out = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(out, encoding="utf-8")
    os.replace(tmp, p)
