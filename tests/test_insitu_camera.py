"""The demo's in situ camera (stream/insitu_camera.py): drift, growth, one coalescence, metadata."""

from __future__ import annotations

import numpy as np
import pytest

from fringelive.engine.registration import DriftTracker
from fringelive.stream.insitu_camera import InSituCamera


def test_story_moves_grows_coalesces_and_drifts() -> None:
    cam = InSituCamera((256, 256), n_frames=6, merge_frame=3, max_drift_px=10.0, seed=2)
    ids0 = {p.id for p in cam.particles}
    r0 = {p.id: p.r for p in cam.particles if p.id > 2}
    tracker = DriftTracker()
    temps = []
    for k in range(6):
        counts, mask, meta = cam.frame(k)
        assert counts.dtype == np.uint16 and counts.shape == mask.shape == (256, 256) and mask.any()
        temps.append(meta["temperature_C"])
        reg = tracker.update(counts, series="s", magnification=meta["magnification"],
                             pixel_size_nm=meta["pixel_size_nm"])
        if k:
            step = np.subtract(cam.drift[k], cam.drift[k - 1])
            assert np.abs(np.subtract(reg.shift_px, step)).max() < 1.5, (k, reg, step)
    assert cam.merges == [(3, (1, 2), max(ids0) + 1)]
    ids = {p.id for p in cam.particles}
    assert 1 not in ids and 2 not in ids and max(ids0) + 1 in ids
    assert all(p.r > r0[p.id] for p in cam.particles if p.id in r0)  # slow growth
    assert temps == sorted(temps) and temps[0] == 300.0 and temps[-1] == 500.0
    assert max(abs(v) for d in cam.drift for v in d) > 0


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="n_frames must be >= 4, got 2"):
        InSituCamera((256, 256), n_frames=2)
    with pytest.raises(ValueError, match="at least 128"):
        InSituCamera((64, 64))
