"""Learning the camera from frame pairs of one scene and dose (issue #12): engine.camera.FramePairs,
StreamCameraFit, config_disagreement, and the daemon's CameraLearner being independent of timing.

The scenes are ``training/fastsim`` intensities with a thin support (``carbon_contrast`` 0.03),
whose low-frequency texture passes the single-frame flatness tests and biases a spatial fit high
(docs/drift.md, table); camera gain 8, offset 100, read noise 3, MTF σ 0.5 px."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from camera_sim_helpers import SimCamera, illumination

from fringelive.daemon.camera import CameraConfig, CameraLearner
from fringelive.engine.camera import (CameraSettings, FramePairs, PhotonTransferResult, StreamCameraFit,
                                      config_disagreement)
from fringelive.training.fastsim import FastSimConfig, electrons_per_pixel, simulate_intensity

CAMERA = SimCamera(gain=8.0, offset=100.0, read_noise=3.0, mtf_sigma_px=0.5, dtype="uint32")
LEVELS = (650.0, 320.0)


@pytest.fixture(scope="module")
def scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    beam = illumination((256, 256))
    return [(img * beam, mask) for img, mask, _ in
            (simulate_intensity(FastSimConfig(shape=(256, 256), pixel_size_nm=0.02, carbon_contrast=0.03), i)
             for i in range(4))]


def expose(scene: tuple[np.ndarray, np.ndarray], dose: float, rng: np.random.Generator) -> np.ndarray:
    return CAMERA.expose(electrons_per_pixel(dose, 0.02) * scene[0], rng)


def series(scenes, n: int, rng: np.random.Generator, run: int = 2):
    """``n`` frames: runs of ``run`` consecutive frames of one scene at one dose (a series),
    scenes and doses changing between runs."""
    for i in range(n):
        k = i // run
        scene = scenes[k % len(scenes)]
        yield expose(scene, LEVELS[k % 2], rng), scene[1]


def test_pairs_match_one_scene_at_one_dose_only(scenes) -> None:
    rng = np.random.default_rng(1)
    p = FramePairs()
    assert p.offer(expose(scenes[0], 650, rng), scenes[0][1]) is None          # held
    assert p.offer(expose(scenes[1], 650, rng), scenes[1][1]) is None          # another scene, same dose
    assert p.offer(expose(scenes[0], 320, rng), scenes[0][1]) is None          # same scene, another dose
    pair = p.offer(expose(scenes[0], 650, rng), scenes[0][1])                  # the first one again
    assert pair is not None and len(pair) >= 8 and p.found == 1
    # the pair's noise is one frame's: v_lf ≈ g·(m − o) + r² (truth), texture gone
    implied = np.median((pair.v_lf - 9.0) / (pair.mean - 100.0))
    assert implied == pytest.approx(8.0, rel=0.06)
    assert p.offer(expose(scenes[0], 650, rng), scenes[0][1]) is None          # disjoint: both used up
    with pytest.raises(ValueError, match="window must be an integer >= 1, got 0"):
        FramePairs(window=0)


def test_temporal_fit_is_unbiased_on_textured_scenes(scenes) -> None:
    """The same frames: single-frame statistics read the gain high (texture), frame pairs do
    not; the stream fit speaks with the pairs, and its 1 σ covers the truth."""
    rng = np.random.default_rng(2)
    fit = StreamCameraFit()
    for frame, mask in series(scenes, 80, rng):
        fit.add_frame(frame, mask)
    res = fit.snapshot().result()
    assert res is not None and res.confident and res.method == "temporal", res
    assert res.frames >= 25  # pairs: one scene of four leaves < 16 particle-free blocks and never pairs
    assert res.gain_counts_per_e == pytest.approx(8.0, rel=0.05)
    assert abs(res.gain_counts_per_e - 8.0) < 4 * res.gain_se + 0.02 * 8.0   # honest ± (plus the 3-lag MTF bias)
    assert res.offset_counts == pytest.approx(100.0, abs=max(4 * res.offset_se, 3.0))
    spatial = fit.spatial.result()
    assert spatial is not None and spatial.gain_counts_per_e > res.gain_counts_per_e  # texture: biased high


def test_learner_fit_does_not_depend_on_timing(scenes) -> None:
    """Refits every frame or once: the fit on the same frames is the same (a refit due while one
    runs is run after it; the data never depend on when a fit finished)."""
    frames = list(series(scenes, 30, np.random.default_rng(3)))
    results = []
    for refit_every in (3, 10, 30):
        learner = CameraLearner(CameraConfig(refit_every=refit_every))
        for frame, mask in frames:
            learner.observe(frame, {}, mask)
        learner.wait(60)
        results.append(learner.learned)
        assert learner.status()["frames_fed"] == 30 and learner.learned is not None
    assert results[0] == results[1] == results[2]


def test_config_disagreement() -> None:
    r = PhotonTransferResult(gain_counts_per_e=8.0, gain_se=0.1, offset_counts=101.0, offset_se=1.0,
                             offset_method="mtf", offset_bounds=(99.0, 150.0), read_noise_counts=3.0,
                             read_noise_se=0.5, noise_factor=0.25, noise_factor_se=0.01, noise_factor_source="learned",
                             slope_lf=8.0, intercept_lf=-800.0, slope_hp=2.0, intercept_hp=-200.0, scatter_lf=0.3,
                             scatter_hp=0.2, levels=2, span=0.5, frames=40, pairs=2000, textured_fraction=0.0,
                             confident=True, method="temporal")
    assert config_disagreement(8.5, 100.0, r) == {"gain_counts_per_e": False, "offset_counts": False}
    assert config_disagreement(2.0, 100.0, r) == {"gain_counts_per_e": True, "offset_counts": False}
    assert config_disagreement(8.0, 110.0, r) == {"gain_counts_per_e": False, "offset_counts": True}
    assert config_disagreement(None, 90.0, r) == {"offset_counts": True}
    # a zero-read-noise offset is a lower bound: anything up to the darkest blocks agrees
    bound = replace(r, offset_method="zero_read_noise")
    assert config_disagreement(8.0, 140.0, bound) == {"gain_counts_per_e": False, "offset_counts": False}
    assert config_disagreement(8.0, 90.0, bound)["offset_counts"] is True
    assert config_disagreement(2.0, 100.0, replace(r, confident=False)) is None
    # a given offset is no check of itself
    assert config_disagreement(8.0, 50.0, replace(r, offset_method="given")) == {"gain_counts_per_e": False}
    # the learner checks a fully configured camera with a free fit
    learner = CameraLearner(CameraConfig(settings=CameraSettings(gain_counts_per_e=2.0, offset_counts=100.0)))
    assert learner.checking and learner.status()["mode"] == "check" and learner.fit.spatial.known_offset is None
    learner.learned = r
    assert learner.config_disagrees() == {"gain_counts_per_e": True, "offset_counts": False}
    assert CameraLearner(CameraConfig(learn=False)).status()["mode"] == "off"
