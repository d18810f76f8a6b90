"""`fringelive demo` end to end on small frames, and the simulated camera behind it."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from fringelive.stream.camera_sim import Condition, SimulatedCamera, default_sweep
from fringelive.cli import main
from fringelive.stream.demo import overlay_rgb, write_png
from fringelive.training.fastsim import FastSimConfig, electrons_per_pixel, simulate_frame


def test_fastsim_frame_is_raw_counts_with_exact_mask() -> None:
    cfg = FastSimConfig(shape=(256, 256), pixel_size_nm=0.02, dose_e_per_A2=423.0, diameter_nm=3.0,
                        particles_per_100nm2=4.0)
    a, mask, meta = simulate_frame(cfg, seed=3)
    b, mask_b, _ = simulate_frame(cfg, seed=3)
    assert a.dtype == np.uint16 and a.shape == (256, 256)
    np.testing.assert_array_equal(a, b)  # deterministic per seed
    np.testing.assert_array_equal(mask, mask_b)
    assert mask.any() and not mask.all()
    # mean counts ≈ electrons per pixel (vacuum ~ 1, gain 1, no offset), x-rays aside
    assert abs(np.median(a) - electrons_per_pixel(423.0, 0.02)) < 0.25 * electrons_per_pixel(423.0, 0.02)
    assert meta["pixel_size_nm"] == 0.02 and meta["dose_e_per_A2"] == 423.0


def test_fastsim_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="material"):
        FastSimConfig(material="Unobtainium")
    with pytest.raises(ValueError, match="dose_e_per_A2"):
        FastSimConfig(dose_e_per_A2=-1)


def test_camera_schedule_changes_dose_and_pixel_size() -> None:
    cam = SimulatedCamera((128, 128), schedule=default_sweep(0.02, 400.0), scenes=1, seed=0)
    _, _, m0 = cam.frame(0, 0.0)
    raw_low, _, m1 = cam.frame(1, 0.45)
    raw_mag, mask_mag, m2 = cam.frame(2, 0.65)
    assert m0["dose_e_per_A2"] == 400.0 and m1["dose_e_per_A2"] == 80.0
    assert m2["pixel_size_nm"] == pytest.approx(0.033)
    assert raw_mag.shape == mask_mag.shape == (128, 128)
    with pytest.raises(ValueError, match="start at 0.0"):
        SimulatedCamera((64, 64), schedule=(Condition(0.5, 0.02, 400.0),))


def test_png_writer_roundtrip(tmp_path) -> None:
    counts = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
    mask = np.zeros((64, 48), bool)
    mask[10:30, 10:30] = True
    rgb = overlay_rgb(counts, mask, mask)
    assert rgb.shape == (64, 48, 3) and rgb.dtype == np.uint8
    write_png(tmp_path / "x.png", rgb)
    data = (tmp_path / "x.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" in data[-12:]


def test_demo_runs_end_to_end(tmp_path, tiny_bundle, capsys) -> None:
    out = tmp_path / "demo"
    rc = main(["demo", "--duration", "3", "--frame-px", "128", "--max-frames", "4",
               "--bundle", str(tiny_bundle.path), "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "metrics: http://127.0.0.1:" in text
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert 1 <= len(rows) <= 4
    assert {r["model"] for r in rows} == {tiny_bundle.name}
    assert (out / "overlay.png").read_bytes()[:4] == b"\x89PNG"
    assert "processed" in text
    assert "live view: http://127.0.0.1:" in text  # the view's URL (issue #15)
    tracks = list(csv.DictReader(open(out / "tracks.csv")))
    assert tracks == [] or {"track_id", "centroid_y_nm", "diameter_nm", "temperature_C"} <= set(tracks[0])


def test_demo_rejects_bad_options(tmp_path, capsys) -> None:
    assert main(["demo", "--frame-px", "10", "--out", str(tmp_path)]) == 2
    assert "--frame-px" in capsys.readouterr().err
