"""The preprocessing written once against ``fringelive.engine.arrays``: numpy on the CPU (the
torch-free serving path) against torch (CPU tensors, with the numpy scan views and with the torch
kernels CUDA uses) on a range of raw frames, and the masks the pipeline publishes with either.

Tolerances: standardised image within 1e-4 absolute (measured ~2e-5: float32 sums in a different
order), [0, 1] rescales within 1e-5; x-ray pixel counts equal; pipeline masks identical.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch

from fringelive.bundle.card import Preprocessing
from fringelive.engine import pipeline as pipeline_module
from fringelive.engine import preprocess as P
from fringelive.engine.preprocess import settings as PS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from preprocess_steps import synthetic_frame  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _frames() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    neg = synthetic_frame((384, 256), dtype="float64", seed=3, counts=200.0)
    neg[rng.integers(0, 384, 30), rng.integers(0, 256, 30)] = -40.0
    neg[100:110, 200:210] += 30000.0  # a 10x10 cluster: filled from outside in
    return {
        "uint16_xrays_gradient": synthetic_frame((512, 640), dtype="uint16", seed=1, xrays=300),
        "float32_offset_strong_gradient": synthetic_frame((448, 512), dtype="float32", seed=2, gradient=0.5)
        + np.float32(500.0),
        "float64_negatives_cluster": neg,
        "int32_high_counts": synthetic_frame((300, 420), dtype="int32", seed=4, counts=5000.0, gradient=0.8),
        "big_endian_uint16": synthetic_frame((256, 256), dtype="uint16", seed=5).astype(">u2"),
        "uint8_tiny": np.clip(synthetic_frame((64, 48), dtype="float64", seed=6, counts=100.0, xrays=3), 0,
                              255).astype(np.uint8),
    }


FRAMES = _frames()
TOL = {"standardize": 1e-4, "normalize": 1e-5, "histogram": 1e-5}


@pytest.mark.parametrize("torch_scans", [True, False], ids=["torch-numpy-scans", "torch-kernels"])
@pytest.mark.parametrize("name", list(FRAMES))
def test_numpy_preprocessing_matches_torch(name, torch_scans, monkeypatch):
    frame = FRAMES[name]
    native = np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("="))
    for mode, tol in TOL.items():
        params = Preprocessing(rescale=mode, xray_threshold_counts=30.0 if frame.dtype == np.uint8 else 1500.0)
        s_np: dict = {}
        s_t: dict = {}
        got = P.preprocess(frame, params, stats=s_np)
        monkeypatch.setattr(PS, "NUMPY_CPU_SCANS", torch_scans)
        ref = P.preprocess(torch.from_numpy(native), params, stats=s_t)
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and isinstance(ref, torch.Tensor)
        diff = float(np.abs(got - ref.numpy()).max())
        assert diff <= tol, f"{name} {mode}: max |numpy - torch| = {diff:.3g} > {tol:g}"
        assert s_np["xray_pixels"] == s_t["xray_pixels"]
        assert s_np["flatfield_min"] == pytest.approx(s_t["flatfield_min"], rel=1e-6)
        assert s_np["flatfield_max"] == pytest.approx(s_t["flatfield_max"], rel=1e-6)


def test_each_step_matches_torch():
    frame = FRAMES["uint16_xrays_gradient"].astype(np.float32)
    t = torch.from_numpy(frame)
    np.testing.assert_array_equal(P.remove_xrays(frame), P.remove_xrays(t).numpy())  # exact: same fills
    np.testing.assert_allclose(P.fit_flatfield_coefficients(frame), P.fit_flatfield_coefficients(t).numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(P.flatfield_correct(frame), P.flatfield_correct(t).numpy(), rtol=1e-6)
    assert P.median(frame).item() == P.median(t).item() == np.median(frame)
    assert P.percentiles(frame, (1, 99)) == P.percentiles(t, (1, 99)) == np.percentile(frame, (1, 99)).tolist()


def test_pipeline_masks_are_identical_with_torch_preprocessing(monkeypatch):
    from fringelive.engine.pipeline import SegmentationPipeline
    from fringelive.stream.camera_sim import SimulatedCamera

    def torch_preprocess(pixels, params, device=None, **kw):
        t = torch.from_numpy(np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("=")))
        return P.preprocess(t, params, **kw).numpy()

    cam = SimulatedCamera((384, 384))
    frames = [cam.frame(i)[0] for i in range(2)] + [FRAMES["uint16_xrays_gradient"], FRAMES["int32_high_counts"]]
    pipe = SegmentationPipeline.from_bundle(str(files("fringelive.default_bundle")), kind="onnxruntime",
                                            intra_op_threads=1)
    with pipe:
        numpy_runs = [pipe.run(f) for f in frames]
        monkeypatch.setattr(pipeline_module, "preprocess", torch_preprocess)
        torch_runs = [pipe.run(f) for f in frames]
    for a, b in zip(numpy_runs, torch_runs):
        assert np.array_equal(a.mask, b.mask)
        assert float(np.abs(a.probabilities - b.probabilities).max()) < 1e-4
        assert len(a.particles) == len(b.particles)
