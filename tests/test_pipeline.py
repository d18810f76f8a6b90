"""SegmentationPipeline: preprocess → tiled inference → ensemble mean → mask → particles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fringelive.engine.backends import create_backend, create_backends
from fringelive.engine.particles import particle_stats
from fringelive.engine.particle_measure import ParticleSettings, measure_particles, min_area_px_for
from fringelive.engine.pipeline import (
    PipelineConfig,
    PipelineResult,
    PreparedFrame,
    SegmentationPipeline,
    class1_probability,
)

STAGES = ("preprocess", "inference", "postprocess", "particles", "total")


def synthetic_frame(shape: tuple[int, int] = (512, 640), seed: int = 0) -> np.ndarray:
    """uint16 counts: ~2000 counts background with a gentle illumination gradient, darker
    discs (particles), Poisson noise and a few x-ray hits."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    mean = 2000.0 * (1.0 + 0.2 * yy / h - 0.1 * xx / w)
    for _ in range(12):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(8, 30)
        mean[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] *= 0.6
    frame = rng.poisson(mean).astype(np.uint16)
    frame[rng.integers(0, h, 5), rng.integers(0, w, 5)] = 60000
    return frame


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return synthetic_frame()


@pytest.fixture(scope="module")
def small_frame() -> np.ndarray:
    """A 256×320 frame for the tests that run several pipelines or the (slower) torch backend."""
    return synthetic_frame((256, 320), seed=1)


@pytest.fixture(scope="module")
def whole_result(tiny_bundle, frame: np.ndarray) -> PipelineResult:
    with SegmentationPipeline.from_bundle(tiny_bundle, PipelineConfig(tile_size="whole")) as pipe:
        return pipe.run(frame, {"pixel_size_nm": 0.02})


@pytest.fixture(scope="module")
def pair_bundle(tmp_path_factory: pytest.TempPathFactory):
    """A 2-member bundle (random resunet-seed weights, seeds 1 and 2)."""
    from fringelive.export.onnx_export import export_bundle
    from fringelive.engine.models import build_model

    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(build_model("resunet-seed").eval())
    out = tmp_path_factory.mktemp("pair") / "pair"
    return export_bundle(models, out, name="pair", description="random weights; tests only", check_sizes=(64,))


def reference_probabilities(bundle, frame: np.ndarray) -> np.ndarray:
    """Independent reference: torch network, whole frame zero-padded to a multiple of 16."""
    from fringelive.engine.preprocess import preprocess
    from fringelive.engine.models import build_model

    card = bundle.card
    net = build_model(card.architecture.name, **card.architecture.spec).eval()
    net.load_state_dict(torch.load(bundle.path / card.members[0].weights, weights_only=True))
    x = preprocess(frame, card.preprocessing)
    h, w = x.shape
    m = card.tile.multiple_of
    padded = torch.zeros((1, 1, -(-h // m) * m, -(-w // m) * m))
    padded[0, 0, :h, :w] = torch.as_tensor(x)
    with torch.no_grad():
        logits = net(padded)[0, :, :h, :w]
    return torch.softmax(logits, dim=0)[1].numpy()


def test_result_shapes_dtypes_timings(whole_result: PipelineResult, frame: np.ndarray) -> None:
    r = whole_result
    assert r.probabilities.shape == frame.shape and r.probabilities.dtype == np.float32
    assert r.mask.shape == frame.shape and r.mask.dtype == bool
    assert r.shape == frame.shape
    assert 0.0 <= r.probabilities.min() and r.probabilities.max() <= 1.0
    # the published mask is the thresholded one cleaned by [particles] (holes filled, specks
    # below 1 nm removed); the member mask is the raw threshold
    raw = r.probabilities > 0.5
    assert len(r.member_masks) == 1
    np.testing.assert_array_equal(r.member_masks[0], raw)
    np.testing.assert_array_equal(r.mask, measure_particles(raw, 0.02, ParticleSettings()).mask)
    assert set(r.timings_ms) == set(STAGES)
    assert all(v >= 0.0 for v in r.timings_ms.values())
    assert r.timings_ms["total"] >= max(r.timings_ms[s] for s in STAGES[:-1])
    assert r.tile_size is None and r.members == ("member0.onnx",)
    assert r.area_fraction == pytest.approx(r.mask.mean())
    assert r.preprocess_stats["xray_pixels"] >= 5


def test_matches_whole_frame_torch_reference(tiny_bundle, small_frame: np.ndarray) -> None:
    with SegmentationPipeline.from_bundle(tiny_bundle, PipelineConfig(tile_size=128)) as pipe:
        r = pipe.run(small_frame, {})
    ref = reference_probabilities(tiny_bundle, small_frame)
    assert np.abs(r.probabilities - ref).max() < 1e-4


@pytest.mark.parametrize("tile_size", [128, 256])
def test_halo_tiles_equal_whole_frame(tiny_bundle, whole_result: PipelineResult, frame: np.ndarray,
                                      tile_size: int) -> None:
    with SegmentationPipeline.from_bundle(tiny_bundle, PipelineConfig(tile_size=tile_size, batch_size=3)) as pipe:
        r = pipe.run(frame, {})
    assert r.tile_size == tile_size
    assert np.abs(r.probabilities - whole_result.probabilities).max() < 1e-4


def test_auto_tile_size_from_memory_budget(tiny_bundle, whole_result: PipelineResult, frame: np.ndarray) -> None:
    with SegmentationPipeline.from_bundle(tiny_bundle, PipelineConfig(memory_budget_mb=2048)) as pipe:
        assert pipe.tile_size_for(frame.shape) is None  # 512×640 fits 2 GiB in one pass
    with SegmentationPipeline.from_bundle(tiny_bundle, PipelineConfig(memory_budget_mb=64, batch_size=1)) as pipe:
        ts = pipe.tile_size_for(frame.shape)
        assert ts is not None and ts % tiny_bundle.card.tile.multiple_of == 0 and ts < 640
        r = pipe.run(frame, {})
    assert r.tile_size == ts
    assert np.abs(r.probabilities - whole_result.probabilities).max() < 1e-4


def test_particles_consistent_with_mask(tiny_bundle, whole_result: PipelineResult, frame: np.ndarray) -> None:
    # Random weights: put the threshold at the median so the mask is far from trivial.
    threshold = float(np.median(whole_result.probabilities))
    cfg = PipelineConfig(tile_size="whole", threshold=threshold, min_particle_area_px=10)
    with SegmentationPipeline.from_bundle(tiny_bundle, cfg) as pipe:
        r = pipe.run(frame, {"pixel_size_nm": 0.05})
    # the published mask: threshold, holes filled, specks (< 1 nm at 0.05 nm/px) removed
    raw = r.probabilities > threshold
    np.testing.assert_array_equal(r.mask, measure_particles(raw, 0.05, ParticleSettings()).mask)
    assert 0.2 < r.area_fraction < 0.8
    minimum = min_area_px_for(0.05, ParticleSettings(), 10)
    # particle_stats' dicts plus each component's mean probability (no cut: the tiny card's is 0)
    assert [{k: v for k, v in p.items() if k != "mean_probability"} for p in r.particles] \
        == particle_stats(r.mask, 0.05, min_area_px=minimum)
    for p in r.particles:
        assert p["mean_probability"] == pytest.approx(float(r.probabilities[r.labels == p["label"]].mean()), abs=1e-4)
    assert r.particle_summary["uncertain"] == 0
    assert r.particles and sum(p["area_px"] for p in r.particles) <= r.mask.sum()
    assert r.specks == measure_particles(raw, 0.05, ParticleSettings()).specks
    for p in r.particles:
        y0, x0, y1, x1 = p["bbox_px"]
        assert r.mask[y0:y1, x0:x1].sum() >= p["area_px"] >= minimum
        assert p["area_nm2"] == pytest.approx(p["area_px"] * 0.05**2)
    with SegmentationPipeline.from_bundle(tiny_bundle, cfg) as pipe:
        no_size = pipe.run(frame, {})
    assert all(p["diameter_nm"] is None for p in no_size.particles)


def test_ensemble_averages_member_probabilities(pair_bundle, small_frame: np.ndarray) -> None:
    cfg = PipelineConfig(tile_size=128)
    singles = []
    for i in (0, 1):
        with SegmentationPipeline.from_bundle(pair_bundle, PipelineConfig(tile_size=128, members=(i,))) as pipe:
            singles.append(pipe.run(small_frame, {}))
    with SegmentationPipeline.from_bundle(pair_bundle, cfg) as pipe:
        both = pipe.run(small_frame, {})
    assert both.members == ("member0.onnx", "member1.onnx")
    mean = (singles[0].probabilities + singles[1].probabilities) / 2
    assert np.abs(both.probabilities - mean).max() < 1e-6
    # published mask: threshold cleaned by [particles] (no pixel size: the 20 px minimum)
    np.testing.assert_array_equal(both.mask, measure_particles(both.probabilities > 0.5, None, ParticleSettings(),
                                                               min_area_px=20).mask)
    assert len(both.member_masks) == 2
    for member_mask, single in zip(both.member_masks, singles):
        np.testing.assert_array_equal(member_mask, single.probabilities > 0.5)
    assert not np.array_equal(singles[0].probabilities, singles[1].probabilities)


def test_torch_backend_pipeline_matches_onnxruntime(tiny_bundle, small_frame: np.ndarray) -> None:
    cfg = PipelineConfig(tile_size="whole")
    with SegmentationPipeline(tiny_bundle, [create_backend("torch", tiny_bundle)], cfg) as pipe:
        r = pipe.run(small_frame, {})
    with SegmentationPipeline.from_bundle(tiny_bundle, cfg) as pipe:
        ref = pipe.run(small_frame, {})
    assert np.abs(r.probabilities - ref.probabilities).max() < 1e-4


def test_gaussian_tiling_runs(tiny_bundle, whole_result: PipelineResult, frame: np.ndarray) -> None:
    cfg = PipelineConfig(tiling="gaussian", gaussian_roi=256, gaussian_overlap=0.25)
    with SegmentationPipeline.from_bundle(tiny_bundle, cfg) as pipe:
        r = pipe.run(frame, {})
    assert r.probabilities.shape == frame.shape and r.tile_size is None
    np.testing.assert_array_equal(r.mask, measure_particles(r.probabilities > 0.5, None, ParticleSettings(),
                                                            min_area_px=20).mask)
    # Blending windows only changes the result near window borders (context is cut there).
    assert np.mean(np.abs(r.probabilities - whole_result.probabilities) < 0.05) > 0.5


def test_prepare_then_infer_prepared_equals_infer(tiny_bundle, small_frame: np.ndarray) -> None:
    """The daemon preprocesses a frame (``prepare``) while the network runs the previous one
    (``infer_prepared``): together they are ``infer``, and a frame prepared for other
    preprocessing parameters is refused."""
    import dataclasses

    with SegmentationPipeline.from_bundle(tiny_bundle, PipelineConfig(tile_size="whole")) as pipe:
        whole = pipe.infer(small_frame, {"pixel_size_nm": 0.02})
        prepared = pipe.prepare(small_frame, {"pixel_size_nm": 0.02})
        assert isinstance(prepared, PreparedFrame) and prepared.shape == small_frame.shape
        assert prepared.image.dtype == np.float32 and prepared.pixel_size_nm == 0.02 and prepared.preprocess_ms > 0
        split = pipe.infer_prepared(prepared)
        np.testing.assert_array_equal(split.probabilities, whole.probabilities)
        assert split.pixel_size_nm == 0.02 and split.timings_ms["preprocess"] == prepared.preprocess_ms
        other = dataclasses.replace(prepared, preprocessing=dataclasses.replace(prepared.preprocessing,
                                                                                 flatfield=False))
        with pytest.raises(ValueError, match="other preprocessing parameters"):
            pipe.infer_prepared(other)
        with pytest.raises(TypeError, match="PreparedFrame"):
            pipe.infer_prepared(small_frame)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="pixel_size_nm"):
            pipe.prepare(small_frame, {"pixel_size_nm": -1.0})
    assert isinstance(pipe.prepare(small_frame), PreparedFrame)  # needs no backend: works after close
    with pytest.raises(RuntimeError, match="closed"):
        pipe.infer_prepared(prepared)


def test_class1_probability_is_softmax() -> None:
    rng = np.random.default_rng(1)
    for c in (2, 3):
        logits = (rng.standard_normal((c, 20, 30)) * 5).astype(np.float32)
        logits[:, 0, 0] = [200.0, -200.0, 0.0][:c]  # would overflow a naive exp
        logits[:, 0, 1] = [-200.0, 200.0, 0.0][:c]
        ref = torch.softmax(torch.from_numpy(logits.copy()), dim=0)[1].numpy()
        p = class1_probability(logits)
        assert p.shape == (20, 30) and p.dtype == np.float32 and np.isfinite(p).all()
        assert np.abs(p - ref).max() < 1e-6
    with pytest.raises(ValueError, match=r"logits must have shape \(C, H, W\) with C >= 2, got \(1, 4, 4\)"):
        class1_probability(np.zeros((1, 4, 4), np.float32))


def test_close_closes_backends(tiny_bundle, frame: np.ndarray) -> None:
    backends = create_backends("onnxruntime", tiny_bundle)
    pipe = SegmentationPipeline(tiny_bundle, backends, PipelineConfig(tile_size="whole"))
    pipe.close()
    pipe.close()
    assert pipe.closed and all(b.closed for b in backends)
    with pytest.raises(RuntimeError, match="closed"):
        pipe.run(frame, {})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tile_size": 0}, "tile_size must be a positive multiple of 16 px, None, 'auto' or 'whole', got 0"),
        ({"tile_size": "big"}, "tile_size must be .* got 'big'"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"memory_budget_mb": -1}, r"memory_budget_mb must be > 0 \(MiB\), got -1"),
        ({"tiling": "mirror"}, r"tiling must be one of \['halo', 'gaussian'\], got 'mirror'"),
        ({"tiling": "gaussian", "tile_size": "whole"}, "tile_size 'whole' needs tiling 'halo'"),
        ({"gaussian_overlap": 1.0}, "gaussian_overlap must be >= 0 and < 1, got 1.0"),
        ({"threshold": 1.0}, r"threshold must be in \(0, 1\), got 1.0"),
        ({"min_particle_area_px": -1}, "min_particle_area_px must be an integer >= 0, got -1"),
        ({"members": ()}, r"members must be None or distinct member indices >= 0, got \(\)"),
        ({"members": (0, 0)}, "members must be None or distinct"),
    ],
)
def test_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PipelineConfig(**kwargs)


def test_pipeline_argument_errors(tiny_bundle, frame: np.ndarray) -> None:
    with pytest.raises(ValueError, match="tile_size must be a positive multiple of 16 px for bundle 'tiny-resunet-seed', got 100"):
        SegmentationPipeline(tiny_bundle, [lambda b: b], PipelineConfig(tile_size=100))
    with pytest.raises(ValueError, match="backends must hold at least one backend"):
        SegmentationPipeline(tiny_bundle, [], PipelineConfig())
    with pytest.raises(ValueError, match=r"members \[3\] do not exist: bundle 'tiny-resunet-seed' has 1 member"):
        SegmentationPipeline(tiny_bundle, [lambda b: b], PipelineConfig(members=(3,)))
    with SegmentationPipeline.from_bundle(tiny_bundle, PipelineConfig(tile_size="whole")) as pipe:
        with pytest.raises(ValueError, match=r"pixels must have shape \(H, W\).*got \(2, 3, 4\)"):
            pipe.run(np.zeros((2, 3, 4), np.uint16), {})
        with pytest.raises(ValueError, match="pixels must hold real numbers .* got dtype complex64"):
            pipe.run(np.zeros((32, 32), np.complex64), {})
        with pytest.raises(ValueError, match=r"meta\['pixel_size_nm'\] must be a positive number .* got -0.1"):
            pipe.run(frame, {"pixel_size_nm": -0.1})


def test_describe(tiny_bundle) -> None:
    with SegmentationPipeline.from_bundle(tiny_bundle, PipelineConfig(tile_size=256)) as pipe:
        d = pipe.describe()
    assert d["bundle"] == "tiny-resunet-seed"
    assert d["backends"] == [{"kind": "onnxruntime", "device": "cpu", "member": "member0.onnx"}]
    assert d["config"]["tile_size"] == 256


def test_auto_tiles_respect_backend_input_limits(tiny_bundle, whole_result: PipelineResult,
                                                 frame: np.ndarray) -> None:
    """A backend with a largest input (as a TensorRT engine profile sets) gets tiles that fit it."""
    from fringelive.engine.tiling import plan_tiles

    backend = create_backend("onnxruntime", tiny_bundle)
    backend.input_limits = (2, 384, 384)  # what TensorRTBackend reads from profile["max"]
    with SegmentationPipeline(tiny_bundle, [backend], PipelineConfig(batch_size=4)) as pipe:
        assert pipe.input_limits == (2, 384, 384) and pipe.batch_size == 2
        ts = pipe.tile_size_for(frame.shape)
        tile = tiny_bundle.card.tile
        h, w = plan_tiles(frame.shape, ts, tile.halo_px, tile.multiple_of).max_input_shape
        assert ts is not None and h <= 384 and w <= 384
        r = pipe.run(frame, {})
    assert np.abs(r.probabilities - whole_result.probabilities).max() < 1e-4
    backend = create_backend("onnxruntime", tiny_bundle)
    backend.input_limits = (1, 200, 200)  # smaller than one 16-px core plus two 128-px halos
    with SegmentationPipeline(tiny_bundle, [backend], PipelineConfig()) as pipe:
        with pytest.raises(ValueError, match="no halo tile fits the backends' largest input 200×200 px"):
            pipe.tile_size_for(frame.shape)
