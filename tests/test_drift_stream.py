"""Drift over a stream, with the model in the loop: ``fringelive calibrate`` writes the reference,
an in-envelope stream of 2,000 frames raises no alarm at the calibrated threshold, a dose drift
raises it at once, and the CLI's errors.

Frames: ``stream/camera_sim`` re-exposing two fixed 128² scenes (Au, 0.02 nm/px, 423 e/Å²); model:
the ``tiny_bundle`` fixture (random weights: its entropy signals are arbitrary but stationary)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from fringelive.stream.camera_sim import SimulatedCamera
from fringelive.engine.drift import DriftMonitor
from fringelive.engine.drift_settings import DriftSettings
from fringelive.engine.calibration import build_reference, measure_frames
from fringelive.engine.pipeline import PipelineConfig, SegmentationPipeline
from fringelive.bundle.bundle_io import load_bundle

SIDE = 128
META = {"pixel_size_nm": 0.02, "dose_e_per_A2": 423.0, "voltage_kv": 300.0}
STREAM_FRAMES = 2000

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def camera() -> SimulatedCamera:
    return SimulatedCamera((SIDE, SIDE), pixel_size_nm=0.02, dose_e_per_A2=423.0, scenes=2, seed=0)


@pytest.fixture(scope="module")
def calibrated(tiny_bundle: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any]]:
    """A copy of the tiny bundle calibrated on 150 in-envelope frames (ARL0 target 10,000)."""
    path = tmp_path_factory.mktemp("calibrated") / "bundle"
    shutil.copytree(tiny_bundle.path, path)
    bundle = load_bundle(path)
    cam = camera()
    with SegmentationPipeline.from_bundle(bundle, PipelineConfig(), intra_op_threads=1) as pipe:
        frames = ((cam.frame(1_000_000 + i)[0], dict(META)) for i in range(150))
        measurements = list(measure_frames(pipe, frames))
    reference, report = build_reference(measurements, bundle.card, target_arl=10_000, seed=0)
    bundle = bundle.write_card(bundle.card.replace(drift_reference=reference))
    return load_bundle(path), report


def test_calibration_report(calibrated: tuple[Any, dict[str, Any]], tiny_bundle: Any) -> None:
    bundle, report = calibrated
    ref = bundle.card.drift_reference
    assert ref["schema"] == 2 and ref["frames"] == 150
    assert set(ref["signals"]) == {"entropy_foreground", "entropy_boundary", "log_dose_estimate"}
    assert report["skipped_signals"] == {"log_pixel_size_estimate": 0}  # the random model finds no particle to read fringes in
    camera = ref["calibration_camera"]  # the camera of the reference frames (schema 2)
    assert camera["noise_factor"] == pytest.approx(1.0, abs=0.05)  # white shot noise: no correction
    assert camera["gain_counts_per_e"] == pytest.approx(1.0, abs=0.05)
    assert camera["offset_counts"] == 0.0 and camera["read_noise_counts"] == 0.0
    cusum = ref["cusum"]
    assert cusum["target_arl"] == 10_000 and cusum["arl_simulated"] >= 10_000 and 4.0 < cusum["h"] < 20.0
    assert cusum["channels"] == ["entropy_foreground:up", "entropy_boundary:up", "log_dose_estimate:up",
                                 "log_dose_estimate:down"]
    assert report["checks"]["statuses"] == {"ok": 150}
    assert report["checks"]["dose_estimate_vs_metadata"]["median_ratio"] == pytest.approx(1.0, abs=0.03)
    # members and their sha256 are untouched: the bundle loads with hash checks
    assert [m.sha256 for m in bundle.card.members] == [m.sha256 for m in tiny_bundle.card.members]


def batched_results(pipe: SegmentationPipeline, frames: list[tuple[np.ndarray, dict[str, Any]]]
                    ) -> Iterator[tuple[np.ndarray, dict[str, Any], Any]]:
    """``pipe.run`` for many small frames, with one backend call per batch (a 128² frame is one
    whole-frame pass, so this is the same arithmetic, ~3x faster on a CPU)."""
    from fringelive.engine.pipeline import FrameInference, class1_probability
    from fringelive.engine.preprocess import preprocess

    images = np.stack([np.asarray(preprocess(c, pipe.bundle.card.preprocessing, device="cpu")) for c, _ in frames])
    logits = pipe.backends[0](images[:, None])
    for (counts, meta), lg in zip(frames, logits):
        p = np.ascontiguousarray(class1_probability(np.array(lg)))
        inference = FrameInference(p, (), meta.get("pixel_size_nm"), {}, None, ("member0.onnx",), {})
        yield counts, meta, pipe.finish(inference)


def test_batched_results_equal_the_pipeline(calibrated: tuple[Any, dict[str, Any]]) -> None:
    bundle, _ = calibrated
    cam = camera()
    frames = [cam.frame(i)[::2] for i in range(3)]
    with SegmentationPipeline.from_bundle(bundle, PipelineConfig(), intra_op_threads=1) as pipe:
        for counts, meta, r in batched_results(pipe, frames):
            ref = pipe.run(counts, meta)
            np.testing.assert_allclose(r.probabilities, ref.probabilities, atol=1e-5)
            assert r.particles == ref.particles


def test_in_envelope_stream_raises_no_alarm(calibrated: tuple[Any, dict[str, Any]]) -> None:
    bundle, _ = calibrated
    monitor = DriftMonitor(bundle.card, DriftSettings())
    assert monitor.cusum is not None and monitor.cusum.h == bundle.card.drift_reference["cusum"]["h"]
    cam = camera()
    alarms, statuses, peak = 0, {}, 0.0
    with SegmentationPipeline.from_bundle(bundle, PipelineConfig(), intra_op_threads=1) as pipe:
        for start in range(0, STREAM_FRAMES, 50):
            frames = [cam.frame(i)[::2] for i in range(start, start + 50)]
            for counts, meta, result in batched_results(pipe, frames):
                d = monitor.assess(counts, meta, result)
                alarms += d["alarm"]
                statuses[d["status"]] = statuses.get(d["status"], 0) + 1
                peak = max(peak, max(d["cusum"]["statistics"].values()))
                assert set(d["p_values"]) == {"entropy_foreground", "entropy_boundary", "log_dose_estimate"}
    assert alarms == 0, f"{alarms} false alarms in {STREAM_FRAMES} frames (h {monitor.cusum.h:.2f}, peak {peak:.2f})"
    assert statuses == {"ok": STREAM_FRAMES}
    assert monitor.cusum.frames == STREAM_FRAMES


def test_dose_drift_raises_the_alarm_at_once(calibrated: tuple[Any, dict[str, Any]]) -> None:
    bundle, _ = calibrated
    monitor = DriftMonitor(bundle.card)
    cam = camera()
    rng = np.random.default_rng(0)
    with SegmentationPipeline.from_bundle(bundle, PipelineConfig(), intra_op_threads=1) as pipe:
        for i in range(5):
            counts, _, meta = cam.frame(i)
            assert monitor.assess(counts, meta, pipe.run(counts, meta))["alarm"] is False
        # the beam current drops to a fifth; the camera header still says 423 e/Å²
        seen = []
        for i in range(5, 8):
            counts, _, meta = cam.frame(i)
            counts = rng.binomial(counts.astype(np.int64), 80.0 / 423.0).astype(np.uint16)
            seen.append(monitor.assess(counts, meta, pipe.run(counts, meta)))
    assert seen[0]["alarm"] and seen[0]["cusum"]["alarm_signals"] == ["log_dose_estimate"]
    assert seen[0]["reasons"] == ["dose_metadata_mismatch", "dose_below_envelope", "stream_alarm"]
    assert seen[0]["status"] == "ood" and seen[0]["p_values"]["log_dose_estimate"] < 1e-9
    monitor.reset()
    assert max(monitor.cusum.snapshot()["statistics"].values()) == 0.0


def test_config_target_arl_resimulates_the_threshold(calibrated: tuple[Any, dict[str, Any]]) -> None:
    bundle, _ = calibrated
    h_card = bundle.card.drift_reference["cusum"]["h"]
    strict = DriftMonitor(bundle.card, DriftSettings(target_arl=100))
    assert strict.cusum is not None and strict.cusum.h < h_card
    assert strict.cusum_record["source"] == "config" and strict.cusum_record["target_arl"] == 100
    assert DriftMonitor(bundle.card, DriftSettings(target_arl=10_000)).cusum.h == h_card


def test_calibrate_cli_writes_the_card(tiny_bundle: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fringelive.cli import main

    path = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, path)
    cam = camera()
    data = tmp_path / "frames"
    data.mkdir()
    np.save(data / "stack.npy", np.stack([cam.frame(i)[0] for i in range(24)]))
    before = (path / "card.json").read_text()
    args = ["calibrate", "--bundle", str(path), str(data), "--meta", "pixel_size_nm=0.02", "--meta",
            "dose_e_per_A2=423", "--target-arl", "1000", "--threads", "1", "--min-frames", "10"]
    assert main([*args, "--dry-run"]) == 0
    assert "dry run: card not written" in capsys.readouterr().out
    assert (path / "card.json").read_text() == before
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 24 and report["written"] == str(path / "card.json")
    assert report["cusum"]["target_arl"] == 1000 and report["dose_calibration"]["frames"] == 24
    card = load_bundle(path).card
    assert card.drift_reference["cusum"]["h"] == report["cusum"]["h"] and card.drift_reference["frames"] == 24
    # errors: one line, exit code
    assert main(["calibrate", "--bundle", str(tmp_path / "nope"), str(data)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["calibrate", "--bundle", str(path), str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert main([*args[:4], "--max-frames", "5", "--threads", "1"]) == 1
    assert "calibration failed: calibration needs at least 10 frames, got 5" in capsys.readouterr().err
