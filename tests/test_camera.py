"""engine.camera on a camera model the bundle never saw: gain 2–10 counts/e, offset 0–500,
read noise, detector MTF (Gaussian blur of the Poisson electrons: correlated noise)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from camera_sim_helpers import SimCamera, electrons_per_px, hrtem_scene, illumination

from fringelive.engine.camera import (CameraCalibrationError, CameraError, CameraSettings, PhotonTransferFit,
                                      block_statistics, calibrate_camera, counts_to_electrons, electrons_to_counts,
                                      estimate_dose, resolve_camera)

PX_NM = 0.02


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(int(os.environ.get("CAMERA_TEST_SEED", "12345")))


def _stream(cam: SimCamera, rng: np.random.Generator, doses: list[float], n: int, shape=(256, 256), scenes: int = 6,
            **scene):
    """n frames cycling through ``doses`` (e/Å² at 0.02 nm/px): a few scenes, randomly shifted,
    each frame with its own Poisson electrons, MTF, read noise and x-rays."""
    pool = [hrtem_scene(shape, rng, gradient=False, **scene) for _ in range(min(n, scenes))]
    beam = illumination(shape)
    for i in range(n):
        dose = doses[i % len(doses)]
        img, mask = pool[i % len(pool)]
        dy, dx = int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))
        img, mask = beam * np.roll(img, (dy, dx), (0, 1)), np.roll(mask, (dy, dx), (0, 1))
        yield dose, cam.expose(electrons_per_px(dose, PX_NM) * img, rng), mask


# --- settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, text", [
    ({"gain_counts_per_e": 0.0}, "gain_counts_per_e must be > 0 counts/e"),
    ({"gain_counts_per_e": -2}, "got -2"),
    ({"offset_counts": math.nan}, "offset_counts must be finite"),
    ({"read_noise_counts": -1.0}, "read_noise_counts must be >= 0"),
    ({"noise_factor": 0.0}, "noise_factor must be in (0, 1.5]"),
    ({"gain_counts_per_e": "8"}, "must be a number, got '8'"),
    ({"gain_counts_per_e": True}, "must be a number, got True"),
])
def test_settings_reject_bad_values_naming_them(kw, text):
    with pytest.raises(CameraError) as e:
        CameraSettings(**kw)
    assert text in str(e.value)


def test_settings_unknown_means_none_and_counts_conversion():
    cam = CameraSettings(name="sim", gain_counts_per_e=8, offset_counts=100)
    assert cam.known and not CameraSettings().known
    assert CameraSettings().gain_counts_per_e is None and CameraSettings().offset_counts is None
    assert counts_to_electrons(np.array([100.0, 180.0]), cam).tolist() == [0.0, 10.0]
    assert float(electrons_to_counts(10.0, cam)) == 180.0
    with pytest.raises(CameraError, match="needs camera.gain_counts_per_e"):
        counts_to_electrons(1.0, CameraSettings(offset_counts=3))
    with pytest.raises(CameraError, match="unknown key.*gain "):
        CameraSettings.from_mapping({"gain": 8})
    assert CameraSettings.from_mapping({"gain_counts_per_e": 8, "offset_counts": 100}).known


def test_header_overrides_config_and_card_is_last_resort():
    config = CameraSettings(name="cfg", gain_counts_per_e=4.0, offset_counts=50.0)
    header = {"camera_gain_counts_per_e": 8.0, "camera_offset_counts": 100.0}
    cam, src = resolve_camera(config, header)
    assert (cam.gain_counts_per_e, cam.offset_counts) == (8.0, 100.0) and src["gain_counts_per_e"] == "header"
    cam, src = resolve_camera(config, {})
    assert cam.gain_counts_per_e == 4.0 and src["offset_counts"] == "config"
    card = CameraSettings(gain_counts_per_e=1.0, offset_counts=0.0, noise_factor=0.7)
    cam, src = resolve_camera(CameraSettings(), {}, card)
    assert cam.gain_counts_per_e == 1.0 and src == {"gain_counts_per_e": "card", "offset_counts": "card",
                                                      "read_noise_counts": "default", "noise_factor": "card"}
    cam, src = resolve_camera(None, None)
    assert not cam.known and set(src.values()) == {"default"}
    with pytest.raises(CameraError, match="from header"):
        resolve_camera(config, {"camera_gain_counts_per_e": -1.0})


# --- dose with known constants -----------------------------------------------------------------

def test_dose_within_10_percent_on_95_percent_of_frames_gain8_offset100(rng):
    """Acceptance: camera gain 8, offset 100 known (header or [camera]) → dose within 10 %."""
    sim = SimCamera(gain=8.0, offset=100.0, read_noise=4.0, mtf_sigma_px=0.6)
    cam = CameraSettings(gain_counts_per_e=8.0, offset_counts=100.0, read_noise_counts=4.0)
    errors, shot = [], []
    for dose, frame, mask in _stream(sim, rng, [80.0, 423.0, 2000.0], 45):
        est = estimate_dose(frame, cam, PX_NM, mask=mask)
        assert est is not None and est.verified and est.method == "gain"
        errors.append(abs(est.dose_e_per_A2 / dose - 1.0))
        shot.append(est.implied_noise_factor)
    assert np.mean(np.array(errors) <= 0.10) >= 0.95, sorted(errors)[-5:]
    # the frames also tell the MTF's noise factor (Gaussian σ 0.6 px: about 0.1)
    assert 0.05 < float(np.median(shot)) < 0.2


def test_shot_noise_dose_needs_offset_and_noise_factor(rng):
    """Without the gain the shot-noise estimate holds once offset and noise factor are known;
    ignoring the offset (today's card: offset 0) reads the dose several times too high."""
    sim = SimCamera(gain=8.0, offset=100.0, read_noise=3.0, mtf_sigma_px=0.0)
    good, naive = [], []
    for dose, frame, mask in _stream(sim, rng, [423.0], 12):
        est = estimate_dose(frame, CameraSettings(offset_counts=100.0, read_noise_counts=3.0), PX_NM, mask=mask)
        assert est.method == "shot_noise" and not est.verified
        good.append(est.dose_e_per_A2 / dose)
        naive.append(estimate_dose(frame, CameraSettings(offset_counts=0.0), PX_NM, mask=mask).dose_e_per_A2 / dose)
        assert abs(est.implied_gain_counts_per_e / 8.0 - 1.0) < 0.1
    assert abs(np.median(good) - 1.0) < 0.05
    assert np.median(naive) > 2.0  # the symptom: ~3x at gain 8, offset 100


def test_unknown_camera_gives_no_dose(rng):
    sim = SimCamera()
    _, frame, mask = next(_stream(sim, rng, [423.0], 1))
    est = estimate_dose(frame, CameraSettings(), PX_NM, mask=mask)
    assert est.electrons_per_px is None and est.method is None and not est.verified


# --- learning the camera from the stream ---------------------------------------------------------

@pytest.mark.parametrize("gain, offset, read, mtf", [(8.0, 100.0, 4.0, 0.6), (2.5, 480.0, 6.0, 0.5),
                                                     (10.0, 0.0, 2.0, 0.0)])
def test_learned_gain_and_offset_within_15_percent(rng, gain, offset, read, mtf):
    """Acceptance: ≥ 100 frames spanning two doses → gain and offset within 15 %."""
    sim = SimCamera(gain=gain, offset=offset, read_noise=read, mtf_sigma_px=mtf)
    fit = PhotonTransferFit()
    assert fit.result() is None
    for _, frame, mask in _stream(sim, rng, [423.0, 150.0], 100):
        fit.add_frame(frame, mask)
    r = fit.result()
    assert r is not None and r.confident, r.reasons
    assert r.levels == 2 and r.span > 0.5 and r.frames >= 95
    assert abs(r.gain_counts_per_e / gain - 1.0) < 0.15, r
    # offset: 15 % of the offset, or of the mean signal where the offset is ~0
    signal = gain * electrons_per_px(150.0, PX_NM)
    assert abs(r.offset_counts - offset) < 0.15 * max(offset, signal), r
    assert r.gain_se / r.gain_counts_per_e < 0.05 and r.offset_se < 0.1 * signal
    if mtf == 0.0:
        assert r.offset_method == "zero_read_noise" and r.read_noise_counts is None
        assert r.offset_bounds[0] <= r.offset_counts <= r.offset_bounds[1]
        assert any("read noise taken as 0" in a for a in r.assumptions)
    else:
        assert abs(r.noise_factor - block_noise_factor(mtf)) < 0.3 * block_noise_factor(mtf)
    # the learned camera gives doses within 10 %
    cam = r.camera()
    _, frame, mask = next(_stream(sim, rng, [300.0], 1))
    assert abs(estimate_dose(frame, cam, PX_NM, mask=mask).dose_e_per_A2 / 300.0 - 1.0) < 0.10


def block_noise_factor(sigma: float) -> float:
    """Laplacian noise factor of a Gaussian MTF, measured once on white noise."""
    from scipy import ndimage
    x = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal((512, 512)), sigma)
    lap = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
    return float((lap ** 2).mean() / 20.0)


def test_one_dose_level_is_never_confident(rng):
    fit = PhotonTransferFit()
    for _, frame, mask in _stream(SimCamera(), rng, [423.0], 20):
        fit.add_frame(frame, mask)
    r = fit.result()
    assert r is not None and not r.confident
    assert any("illumination level" in x for x in r.reasons)


def test_structure_is_rejected_without_a_mask(rng):
    """No predicted mask: blocks with fringes/edges are rejected by their variance; the gain
    stays within 15 %."""
    sim = SimCamera(gain=6.0, offset=200.0, read_noise=3.0, mtf_sigma_px=0.5)
    fit = PhotonTransferFit()
    for _, frame, _mask in _stream(sim, rng, [423.0, 150.0], 40, particles=2):
        fit.add_frame(frame)
    r = fit.result()
    assert abs(r.gain_counts_per_e / 6.0 - 1.0) < 0.15, r


def test_textured_background_is_never_trusted(rng):
    """Support texture (5 %) everywhere: the learned constants are not confident (or absent),
    so the daemon keeps the dose unverified instead of trusting a biased gain."""
    sim = SimCamera(gain=8.0, offset=100.0, read_noise=4.0, mtf_sigma_px=0.6)
    fit = PhotonTransferFit()
    for _, frame, mask in _stream(sim, rng, [423.0, 150.0], 40, support=0.05):
        fit.add_frame(frame, mask)
    r = fit.result()
    assert r is None or not r.confident


def test_known_read_noise_or_offset_narrow_the_fit(rng):
    sim = SimCamera(gain=8.0, offset=100.0, read_noise=4.0, mtf_sigma_px=0.0)
    frames = list(_stream(sim, rng, [423.0, 150.0], 30))
    by_read, by_offset = PhotonTransferFit(read_noise_counts=4.0), PhotonTransferFit(offset_counts=100.0)
    for _, frame, mask in frames:
        by_read.add_frame(frame, mask)
        by_offset.add_frame(frame, mask)
    r, o = by_read.result(), by_offset.result()
    assert r.offset_method == "given" and abs(r.offset_counts - 100.0) < 5.0
    assert o.offset_counts == 100.0 and o.offset_se == 0.0 and abs(o.gain_counts_per_e / 8 - 1) < 0.1


def test_memory_is_bounded(rng):
    fit = PhotonTransferFit(max_pairs=500, max_frames_tracked=20)
    for _, frame, mask in _stream(SimCamera(), rng, [423.0, 150.0], 30, shape=(128, 128), particles=1, radius_px=10.0):
        fit.add_frame(frame, mask)
    m, hp, lf = fit.points()
    assert len(m) <= 500 and len(fit._frame_medians) <= 20 and 20 <= fit.frames <= 30
    with pytest.raises(ValueError, match="at least 64"):
        fit.add_frame(np.zeros((32, 32)))


def test_temporal_pairs_remove_the_scene(rng):
    sim = SimCamera(gain=5.0, offset=300.0, read_noise=3.0, mtf_sigma_px=0.0, xray_per_mpx=0)
    img, _ = hrtem_scene((256, 256), rng, particles=0, support=0.2)
    n = electrons_per_px(423.0, PX_NM) * img
    a, b = sim.expose(n, rng), sim.expose(n, rng)
    spatial = np.median(block_statistics(a).v_lf)
    temporal = np.median(block_statistics(a, pair=b).v_lf)
    expected = 5.0 * 5.0 * np.median(n) + 9.0
    assert abs(temporal / expected - 1.0) < 0.1 and spatial > 1.5 * expected


# --- offline calibration ---------------------------------------------------------------------------

def _flats(sim, rng, levels_e, per_level=4, shape=(256, 256)):
    out = {}
    for e in levels_e:
        img, _ = hrtem_scene(shape, rng, particles=0)
        out[f"{e:g} e/px"] = [sim.expose(e * img, rng) for _ in range(per_level)]
    return out


def test_calibrate_camera_from_darks_and_flats(rng):
    sim = SimCamera(gain=7.0, offset=230.0, read_noise=5.0, mtf_sigma_px=0.6)
    darks = [sim.expose(np.zeros((256, 256)), rng) for _ in range(4)]
    cal = calibrate_camera(darks, _flats(sim, rng, [5.0, 12.0, 30.0]), name="sim")
    c = cal.camera
    assert abs(c.gain_counts_per_e / 7.0 - 1.0) < 0.05 and abs(c.offset_counts - 230.0) < 1.0
    assert abs(c.read_noise_counts - 5.0) < 0.5 and cal.fit.offset_method == "dark"
    assert abs(c.noise_factor - block_noise_factor(0.6)) < 0.3 * block_noise_factor(0.6)
    assert len(cal.residuals) == 3 and all(abs(r["residual_rel"]) < 0.05 for r in cal.residuals)
    text = cal.to_toml()
    assert text.startswith("[camera]\nname = \"sim\"\ngain_counts_per_e = ") and "level 30 e/px" in text


def test_calibrate_camera_refuses_what_cannot_determine_it(rng):
    sim = SimCamera(gain=7.0, offset=230.0, read_noise=5.0)
    darks = [sim.expose(np.zeros((128, 128)), rng) for _ in range(2)]
    with pytest.raises(CameraCalibrationError, match="Acquire flat frames .* >= 3 illuminations"):
        calibrate_camera(darks, _flats(sim, rng, [12.0], shape=(128, 128)))
    with pytest.raises(CameraCalibrationError, match="Acquire >= 2 dark frames"):
        calibrate_camera([], _flats(sim, rng, [5.0, 20.0], shape=(128, 128)))
    with pytest.raises(CameraCalibrationError, match="distinct illumination level"):
        calibrate_camera(darks, _flats(sim, rng, [12.0, 12.3], shape=(128, 128)))
    # one pair of frames per level is enough when the levels differ
    cal = calibrate_camera(darks, _flats(sim, rng, [5.0, 20.0], per_level=2), max_gain_rse=0.05)
    assert abs(cal.camera.gain_counts_per_e / 7.0 - 1.0) < 0.1
