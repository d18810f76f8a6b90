"""The daemon's camera (issue #12): ``[camera]`` config and the photon-transfer fit learned
from the stream. The camera belongs to the daemon, not to a bundle: one camera, many bundles;
a bundle reload keeps it.

:class:`CameraConfig` is the ``[camera]`` section: the engine's
:class:`~fringelive.engine.camera.CameraSettings` (flat keys ``name``, ``gain_counts_per_e``,
``offset_counts``, ``read_noise_counts``, ``noise_factor``) plus when to learn. :class:`CameraLearner`
feeds frames to a :class:`~fringelive.engine.camera.StreamCameraFit` (frame pairs of one scene
and dose, and single frames) from the finisher thread (~20 ms CPU per 256² frame) and refits
every ``refit_every`` fed frames on a background thread (bootstrap, ~0.3 s per fit), so the hot
path never waits for a fit. A refit due while one runs is run right after it, so the latest fit
always covers every fed frame, however slow the machine. With gain and offset configured the fit
still runs, free of the configured values, as a check: a confident fit that disagrees is
reported (``config_disagrees``), never used.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fringelive.engine.camera import (CameraSettings, FrameBlocks, PhotonTransferResult, StreamCameraFit, config_disagreement,
                                      header_camera)
from fringelive.engine.frame import FrameMetadata

__all__ = ["CameraConfig", "CameraLearner", "write_camera_section"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CameraConfig:
    """``[camera]``: the detector (``settings``, the engine's physics) and learning.

    learn: fit gain and offset from the stream (used while either is not configured; a check
    of the configured values otherwise); learn_every: feed every n-th frame; refit_every: refit
    after this many fed frames.
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
    atomically; None until a first fit). :meth:`observe` is called by one thread (the finisher).
    ``checking``: gain and offset are configured; the fit, free of them, checks them."""

    def __init__(self, config: CameraConfig | None = None) -> None:
        self.config = config or CameraConfig()
        cam = self.config.settings
        self.learning = bool(self.config.learn)
        self.checking = self.learning and cam.known
        self.fit: StreamCameraFit | None = None
        if self.checking:
            self.fit = StreamCameraFit()
        elif self.learning:
            defaults = CameraSettings()
            self.fit = StreamCameraFit(
                offset_counts=cam.offset_counts,
                read_noise_counts=cam.read_noise_counts if cam.read_noise_counts != defaults.read_noise_counts else None,
                noise_factor=cam.noise_factor if cam.noise_factor != defaults.noise_factor else None)
        self.learned: PhotonTransferResult | None = None
        self._fed = 0
        self._seen = 0
        self._lock = threading.Lock()
        self._refit: threading.Thread | None = None
        self._pending = False  # a refit came due while one ran

    @property
    def settings(self) -> CameraSettings:
        return self.config.settings

    def observe(self, pixels: np.ndarray, meta: FrameMetadata | Mapping[str, Any] | None,
                mask: np.ndarray | None, blocks: FrameBlocks | None = None) -> None:
        """Feed one processed frame (raw counts ``(H, W)``, predicted particle ``mask``; its
        ``blocks`` statistics when the drift check computed them) to the fit. Frames whose header
        carries camera constants are not fed (a mixed stream of cameras must not pollute the
        fit); frames under 64² px are too small."""
        if self.fit is None or min(pixels.shape) < 64:
            return
        if header_camera(meta):
            return
        self._seen += 1
        if (self._seen - 1) % self.config.learn_every:
            return
        with self._lock:
            self.fit.add_frame(pixels, mask=mask, blocks=blocks)
            self._fed += 1
            due = self._fed % self.config.refit_every == 0
        if due:
            with self._lock:
                if self._refit is not None:
                    self._pending = True  # the running refit starts another on the latest frames
                    return
                self._refit = threading.Thread(target=self._refit_loop, name="camera-fit", daemon=True)
                self._refit.start()

    def _refit_loop(self) -> None:
        while True:
            with self._lock:
                assert self.fit is not None
                self._pending = False
                snapshot = self.fit.snapshot()
            self._run_fit(snapshot)
            with self._lock:
                if not self._pending:
                    self._refit = None  # under the lock: a refit due from now on starts a thread
                    return

    def _run_fit(self, fit: StreamCameraFit) -> None:
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
            _log.info("camera learned from the stream (%s): gain %.3f ± %.3f counts/e, offset %.1f ± %.1f counts (%s)",
                      result.method, result.gain_counts_per_e, result.gain_se, result.offset_counts, result.offset_se,
                      result.offset_method)
        bad = self.config_disagrees()
        if bad and any(bad.values()):
            cam = self.settings
            _log.warning("[camera] disagrees with the stream: configured gain %.4g counts/e, offset %.5g counts; "
                         "learned (%s) gain %.4g ± %.2g counts/e, offset %.5g ± %.2g counts (%s); doses are checked "
                         "with the configured values: re-run `fringelive calibrate camera`", cam.gain_counts_per_e,
                         cam.offset_counts, result.method, result.gain_counts_per_e, result.gain_se,
                         result.offset_counts, result.offset_se, result.offset_method)

    def config_disagrees(self) -> dict[str, bool] | None:
        """Configured gain/offset vs the confident learned fit (``config_disagreement``), None
        without a confident fit or without configured gain and offset."""
        cam = self.settings
        if not self.checking:
            return None
        return config_disagreement(cam.gain_counts_per_e, cam.offset_counts, self.learned)

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the refits due so far are done (tests, shutdown)."""
        with self._lock:
            t = self._refit
        while t is not None:
            t.join(timeout)
            if t.is_alive():
                return
            with self._lock:
                t = self._refit

    def refit_now(self) -> PhotonTransferResult | None:
        """Fit now on the calling thread (tests, ``status`` on demand)."""
        if self.fit is None:
            return None
        with self._lock:
            snapshot = self.fit.snapshot()
        self._run_fit(snapshot)
        return self.learned

    def status(self) -> dict[str, Any]:
        """For control ``status`` and ``fringelive health``: ``mode`` ``learn`` | ``check``
        (gain and offset configured) | ``off``; ``config_disagrees`` (check mode, confident fit)."""
        mode = "check" if self.checking else "learn" if self.learning else "off"
        return {"config": self.settings.to_dict(), "learning": self.learning, "mode": mode, "frames_fed": self._fed,
                "frame_pairs": 0 if self.fit is None else self.fit.pairs_found,
                "fit": None if self.learned is None else self.learned.to_dict(),
                "config_disagrees": self.config_disagrees()}


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
