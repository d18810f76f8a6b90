"""Halo tiling reproduces one whole-frame pass; Gaussian blending reproduces MONAI; tile planning
and memory-based tile sizes.

Networks are real ``ResUNet`` s with random weights in eval mode and randomised BatchNorm running
statistics (so BN is not the identity). Most cases use a thin net of the seed's depth
(``widths=(2, 2, 2, 4)``, bottleneck 4: same downsampling factor 16 and receptive-field radius
122 px, a fraction of the compute), the 2048² cases through ONNX Runtime (the daemon's default
backend, numpy batches) to fit the test budget; one case runs ``resunet-seed`` in torch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fringelive.bundle.netspec import activation_bytes_per_pixel
from fringelive.engine.tiling import (
    TilePlan,
    choose_tile_size,
    gaussian_importance_map,
    infer_gaussian,
    infer_tiled,
    plan_tiles,
    run_plan,
    sliding_window_starts,
)
from fringelive.bundle.bundle_io import tile_constraints_for
from fringelive.engine.models import ResUNet, UNetSpec, build_model

FACTOR = 16
HALO = 128  # card.tile.halo_px of the seed net: radius 122 rounded up to 16
ATOL = 1e-4


def _randomise(model: ResUNet, seed: int) -> ResUNet:
    """Random conv weights (from the seed) and random BN affine + running stats; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.6 * torch.rand(n, generator=g) - 0.3)
    return model.eval()


def _thin_net(seed: int = 1) -> ResUNet:
    torch.manual_seed(seed)
    return _randomise(build_model("resunet", widths=(2, 2, 2, 4), bottleneck=4), seed)


def _image(shape: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def thin_net() -> ResUNet:
    net = _thin_net()
    assert net.downsampling_factor == FACTOR and net.receptive_field_radius <= HALO
    return net


@pytest.fixture(scope="module")
def thin_onnx(thin_net: ResUNet, tmp_path_factory: pytest.TempPathFactory):
    """``thin_net`` as an ONNX Runtime CPU callable ``(N, 1, h, w) -> (N, C, h, w)`` on numpy arrays
    (the daemon's default backend; ~3× faster than torch CPU for this thin net)."""
    import warnings

    import onnxruntime as ort

    path = tmp_path_factory.mktemp("thin_onnx") / "thin.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(thin_net, torch.zeros(1, 1, 64, 64), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(["logits"], {"image": batch})[0]


@pytest.fixture(scope="module")
def frame_2048(thin_onnx) -> tuple[np.ndarray, np.ndarray]:
    """A 2048² frame and its whole-frame logits: one ONNX Runtime pass (2048 is a multiple of 16)."""
    image = _image((2048, 2048), 0).numpy()
    return image, thin_onnx(image[None, None])[0]


def _whole_frame_reference(model: ResUNet, image: torch.Tensor) -> torch.Tensor:
    """The definition: zero-pad bottom/right to a multiple of 16, one pass, crop."""
    h, w = image.shape
    hp, wp = -(-h // FACTOR) * FACTOR, -(-w // FACTOR) * FACTOR
    padded = torch.nn.functional.pad(image, (0, wp - w, 0, hp - h))
    with torch.no_grad():
        return model(padded[None, None])[0, :, :h, :w]


# --- halo tiling == whole frame --------------------------------------------------------------


def test_whole_frame_pass_matches_the_definition(thin_net: ResUNet) -> None:
    image = _image((333, 250), 3)
    out = infer_tiled(thin_net, image, tile_size=None, halo=HALO, multiple_of=FACTOR)
    assert out.shape == (2, 333, 250) and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out, _whole_frame_reference(thin_net, image), rtol=0, atol=1e-6)


@pytest.mark.parametrize("tile_size", [512, 768, 1024])
def test_tiled_equals_whole_frame_2048(thin_onnx, frame_2048: tuple[np.ndarray, np.ndarray], tile_size: int) -> None:
    image, whole = frame_2048
    plan = plan_tiles(image.shape, tile_size, HALO, FACTOR)
    assert plan.grid == (math.ceil(2048 / tile_size),) * 2
    tiled = infer_tiled(thin_onnx, image, tile_size=tile_size, halo=HALO, multiple_of=FACTOR, batch_size=3)
    assert isinstance(tiled, np.ndarray) and tiled.shape == (2, 2048, 2048)
    diff = float(np.abs(tiled - whole).max())
    assert diff <= ATOL, f"tile {tile_size}: max |tiled - whole| = {diff}"


def test_tiled_equals_whole_frame_seed_net_odd_shape() -> None:
    torch.manual_seed(0)
    seed_net = _randomise(build_model("resunet-seed"), 0)
    constraints = tile_constraints_for(seed_net.spec)
    assert (constraints.halo_px, constraints.multiple_of) == (HALO, FACTOR)
    image = _image((600, 1000), 1)  # neither a multiple of 16 nor of the tile
    whole = _whole_frame_reference(seed_net, image)
    tiled = infer_tiled(seed_net, image, tile_size=384, halo=constraints.halo_px, multiple_of=constraints.multiple_of)
    assert plan_tiles((600, 1000), 384, HALO, FACTOR).grid == (2, 3)
    assert (tiled - whole).abs().max().item() <= ATOL


@pytest.mark.parametrize(
    "shape, tile_size",
    [((500, 700), 256), ((200, 150), 64), ((90, 1000), 1024), ((1, 17), 16)],
    ids=["cores-smaller-than-2-halos", "cores-smaller-than-halo", "frame-smaller-than-tile", "one-pixel-high"],
)
def test_tiled_equals_whole_frame_small_and_odd(thin_net: ResUNet, shape: tuple[int, int], tile_size: int) -> None:
    image = _image(shape, 2)
    tiled = infer_tiled(thin_net, image, tile_size=tile_size, halo=HALO, multiple_of=FACTOR, batch_size=4)
    assert tiled.shape == (2, *shape)
    assert (tiled - _whole_frame_reference(thin_net, image)).abs().max().item() <= ATOL


def test_halo_below_receptive_field_is_detected(thin_net: ResUNet) -> None:
    """The equality tests discriminate: a 32 px halo (< radius 122) changes the logits."""
    image = _image((512, 512), 4)
    tiled = infer_tiled(thin_net, image, tile_size=256, halo=32, multiple_of=FACTOR)
    assert (tiled - _whole_frame_reference(thin_net, image)).abs().max().item() > 1e-2


def test_numpy_image_gives_numpy_batches_to_onnxruntime(thin_net: ResUNet, thin_onnx) -> None:
    seen: list[tuple[type, np.dtype, tuple[int, ...]]] = []

    def model(batch: np.ndarray) -> np.ndarray:
        seen.append((type(batch), batch.dtype, batch.shape))
        return thin_onnx(batch)

    image = _image((400, 600), 5).numpy().astype(np.float64)  # any real dtype
    tiled = infer_tiled(model, image, tile_size=256, halo=HALO, multiple_of=FACTOR, batch_size=2)
    whole = infer_tiled(model, image, tile_size=None, halo=HALO, multiple_of=FACTOR)
    assert isinstance(tiled, np.ndarray) and tiled.dtype == np.float32 and tiled.shape == (2, 400, 600)
    assert tiled.flags.c_contiguous and whole.flags.c_contiguous
    assert all(t is np.ndarray and d == np.float32 and s[1] == 1 and s[2] % FACTOR == 0 == s[3] % FACTOR
               for t, d, s in seen)
    assert max(s[0] for _, _, s in seen) == 2
    assert np.abs(tiled - whole).max() <= ATOL
    reference = _whole_frame_reference(thin_net, torch.from_numpy(image).float()).numpy()
    assert np.abs(tiled - reference).max() <= ATOL  # ONNX Runtime agrees with torch


def test_torch_image_gives_tensor_batches_and_timings(thin_net: ResUNet) -> None:
    seen: list[tuple[torch.device, torch.dtype]] = []

    def model(batch: torch.Tensor) -> torch.Tensor:
        assert isinstance(batch, torch.Tensor)
        seen.append((batch.device, batch.dtype))
        return thin_net(batch)

    image = _image((250, 200), 6)[None]  # (1, H, W) accepted
    timings: dict[str, float] = {}
    out = infer_tiled(model, image, tile_size=128, halo=16, multiple_of=FACTOR, timings=timings)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 250, 200)
    assert seen and all(d == image.device and t == torch.float32 for d, t in seen)
    assert set(timings) == {"tile", "infer", "stitch"} and all(v >= 0 for v in timings.values())


def test_model_with_wrong_output_shape_is_reported() -> None:
    with pytest.raises(ValueError, match=r"model returned logits of shape \(1, 2, 32, 32\).*expected \(1, C, 64, 64\)"):
        infer_tiled(lambda b: np.zeros((1, 2, 32, 32), np.float32), np.zeros((64, 64)), tile_size=None,
                    halo=0, multiple_of=16)


@pytest.mark.parametrize("image, message", [
    (np.zeros((2, 8, 8)), r"image must have shape \(H, W\) or \(1, H, W\), got \(2, 8, 8\)"),
    (np.zeros((8, 8), bool), "image must hold real numbers, got dtype bool"),
    ([[0.0]], "image must be a numpy array or a torch tensor, got list"),
])
def test_bad_images_are_rejected(image, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        infer_tiled(lambda b: b, image, tile_size=None, halo=0, multiple_of=1)


def test_run_plan_checks_the_frame_shape() -> None:
    plan = plan_tiles((64, 64), 32, 16, 16)
    with pytest.raises(ValueError, match=r"image shape \(64, 48\) does not match the plan's frame_shape \(64, 64\)"):
        run_plan(lambda b: b, np.zeros((64, 48), np.float32), plan)


# --- plan geometry -----------------------------------------------------------------------------


def test_plan_4096_in_2x2_costs_1_13_passes() -> None:
    plan = plan_tiles((4096, 4096), 2048, HALO, FACTOR)
    assert plan.grid == (2, 2) and plan.input_shapes == ((2176, 2176),)
    assert plan.area_ratio == pytest.approx(((4096 + 2 * 128) / 4096) ** 2)
    assert plan.area_ratio <= 1.15
    assert plan_tiles((4096, 4096), None, HALO, FACTOR).area_ratio == 1.0


def test_plan_balances_input_shapes() -> None:
    plan = plan_tiles((4096, 4096), 1408, HALO, FACTOR)  # 3×3: edge cores 1408, centre 1280
    assert plan.grid == (3, 3) and plan.input_shapes == ((1536, 1536),)


@pytest.mark.parametrize("kwargs, message", [
    (dict(tile_size=100), "tile_size must be a positive multiple of 16, got 100"),
    (dict(tile_size=0), "tile_size must be a positive multiple of 16, got 0"),
    (dict(halo=122), r"halo must be a non-negative multiple of 16 \(px\), got 122"),
    (dict(halo=-16), r"halo must be a non-negative multiple of 16 \(px\), got -16"),
    (dict(multiple_of=0), "multiple_of must be a positive int, got 0"),
    (dict(frame_shape=(0, 5)), "frame height must be a positive int, got 0"),
    (dict(frame_shape=(5, 5, 1)), r"frame_shape must be \(H, W\), got \(5, 5, 1\)"),
])
def test_plan_arguments_are_checked(kwargs: dict, message: str) -> None:
    args = dict(frame_shape=(100, 100), tile_size=32, halo=16, multiple_of=16) | kwargs
    with pytest.raises(ValueError, match=message):
        plan_tiles(**args)


def _check_plan(plan: TilePlan) -> None:
    (h, w), (hp, wp), m, halo = plan.frame_shape, plan.padded_shape, plan.multiple_of, plan.halo
    assert hp == -(-h // m) * m and wp == -(-w // m) * m
    cover = np.zeros((hp, wp), np.int32)
    for t in plan.tiles:
        iy0, iy1, ix0, ix1 = t.input_box
        cy0, cy1, cx0, cx1 = t.core_box
        assert all(v % m == 0 for v in (*t.input_box, *t.core_box))  # aligned to the pooling grid
        assert 0 <= iy0 <= cy0 < cy1 <= iy1 <= hp and 0 <= ix0 <= cx0 < cx1 <= ix1 <= wp
        if plan.tile_size is not None:
            assert max(t.core_shape) <= plan.tile_size
        # halo on every inner side, none needed (nor taken beyond) the frame border
        for lo_in, lo_core in ((iy0, cy0), (ix0, cx0)):
            assert lo_core - lo_in == min(halo, lo_core)
        for hi_in, hi_core, end in ((iy1, cy1, hp), (ix1, cx1, wp)):
            assert hi_in - hi_core == min(halo, end - hi_core)
        cover[cy0:cy1, cx0:cx1] += 1
    assert (cover == 1).all()  # cores partition the padded frame
    rows, cols = plan.grid
    if plan.tile_size is not None:  # the fewest tiles, hence the least computed area
        assert (rows, cols) == (-(-hp // plan.tile_size), -(-wp // plan.tile_size))
    bound = (hp + 2 * halo * (rows - 1)) * (wp + 2 * halo * (cols - 1))
    assert plan.computed_area <= bound
    assert plan.area_ratio == pytest.approx(plan.computed_area / (hp * wp))


@settings(max_examples=300, deadline=None)
@given(
    h=st.integers(1, 5000), w=st.integers(1, 5000), m=st.sampled_from([1, 8, 16, 32]),
    tile_units=st.integers(1, 200), halo_units=st.integers(0, 16), whole=st.booleans(),
)
def test_plan_invariants(h: int, w: int, m: int, tile_units: int, halo_units: int, whole: bool) -> None:
    tile_size = None if whole else max(tile_units, -(-max(h, w) // (m * 20))) * m  # <= 20 tiles per axis
    plan = plan_tiles((h, w), tile_size, halo_units * m, m)
    _check_plan(plan)
    if whole:
        assert plan.grid == (1, 1) and plan.area_ratio == 1.0


# --- Gaussian blending == MONAI ---------------------------------------------------------------


def test_gaussian_importance_map_matches_monai() -> None:
    from monai.data.utils import compute_importance_map

    for roi, sigma in [((256, 256), 0.125), ((128, 192), 0.2), ((7, 5), 0.125)]:
        ours = gaussian_importance_map(roi, sigma)
        theirs = compute_importance_map(roi, mode="gaussian", sigma_scale=sigma).numpy()
        assert ours.shape == roi and ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9)


def test_sliding_window_starts_match_monai() -> None:
    from monai.data.utils import dense_patch_slices

    for length, roi, interval in [(4096, 512, 384), (700, 256, 192), (256, 256, 256), (300, 128, 1), (1000, 999, 749)]:
        theirs = [s[0].start for s in dense_patch_slices((length,), (roi,), (interval,))]
        assert sliding_window_starts(length, roi, interval) == theirs


@pytest.mark.parametrize(
    "shape, roi, overlap, sigma_scale, batch_size",
    [
        ((400, 500), 256, 0.25, 0.125, 4),
        ((200, 300), 256, 0.25, 0.125, 2),  # smaller than the window in H: symmetric zero padding
        ((213, 317), (128, 192), 0.5, 0.2, 3),
        ((256, 256), 256, 0.25, 0.125, 1),  # exactly one window
    ],
)
def test_gaussian_matches_monai(thin_net: ResUNet, shape, roi, overlap, sigma_scale, batch_size) -> None:
    from monai.inferers import sliding_window_inference

    image = _image(shape, 7)
    with torch.no_grad():
        theirs = sliding_window_inference(image[None, None], roi, batch_size, thin_net, overlap=overlap,
                                          mode="gaussian", sigma_scale=sigma_scale)[0]
    ours = infer_gaussian(thin_net, image, roi_size=roi, overlap=overlap, sigma_scale=sigma_scale,
                          batch_size=batch_size)
    assert isinstance(ours, torch.Tensor) and ours.shape == (2, *shape)
    assert (ours - theirs).abs().max().item() <= 1e-5

    def numpy_model(batch: np.ndarray) -> np.ndarray:
        assert isinstance(batch, np.ndarray)
        with torch.no_grad():
            return thin_net(torch.from_numpy(batch)).numpy()

    ours_np = infer_gaussian(numpy_model, image.numpy(), roi_size=roi, overlap=overlap, sigma_scale=sigma_scale,
                             batch_size=batch_size)
    assert isinstance(ours_np, np.ndarray) and ours_np.flags.c_contiguous
    assert np.abs(ours_np - theirs.numpy()).max() <= 1e-5


@pytest.mark.parametrize("kwargs, message", [
    (dict(overlap=1.0), "overlap must be >= 0 and < 1, got 1.0"),
    (dict(roi_size=0), "roi_size must be a positive int, got 0"),
    (dict(sigma_scale=0.0), "sigma_scale must be > 0, got 0.0"),
    (dict(batch_size=0), "batch_size must be a positive int, got 0"),
])
def test_gaussian_arguments_are_checked(kwargs: dict, message: str) -> None:
    args = dict(roi_size=32, overlap=0.25, sigma_scale=0.125, batch_size=1) | kwargs
    with pytest.raises(ValueError, match=message):
        infer_gaussian(lambda b: b, np.zeros((64, 64), np.float32), **args)


# --- memory-based tile size ---------------------------------------------------------------------


def test_activation_bytes_per_pixel_of_the_seed_net() -> None:
    spec = UNetSpec()
    assert activation_bytes_per_pixel(spec, safety=1.0) == 138  # 34.5 float32 channels at the peak
    assert activation_bytes_per_pixel(spec) == 276
    wider = activation_bytes_per_pixel(UNetSpec(widths=(8, 16, 32, 64), bottleneck=128))
    assert wider > activation_bytes_per_pixel(spec)
    with pytest.raises(ValueError, match="safety must be > 0, got 0"):
        activation_bytes_per_pixel(spec, safety=0)


def test_choose_tile_size() -> None:
    bpp = activation_bytes_per_pixel(UNetSpec())
    kw = dict(multiple_of=FACTOR, halo=HALO, bytes_per_pixel=bpp)
    assert choose_tile_size((4096, 4096), memory_budget_bytes=4096 ** 2 * bpp, **kw) is None
    assert choose_tile_size((4096, 4096), memory_budget_bytes=2176 ** 2 * bpp, **kw) == 2048
    assert choose_tile_size((4096, 4096), memory_budget_bytes=2176 ** 2 * bpp - 1, **kw) == 1408
    # a batch of 4 tiles must fit as a whole
    assert choose_tile_size((4096, 4096), memory_budget_bytes=2 * 2176 ** 2 * bpp, batch_size=4, **kw) == 1408
    for budget in (1e8, 3e8, 1e9, 3e9):
        size = choose_tile_size((3000, 4000), memory_budget_bytes=budget, batch_size=2, **kw)
        plan = plan_tiles((3000, 4000), size, HALO, FACTOR)
        assert min(2, len(plan.tiles)) * plan.max_input_area * bpp <= budget
        if size is not None and size + FACTOR < 4000:  # the next larger size does not fit
            bigger = plan_tiles((3000, 4000), size + FACTOR, HALO, FACTOR)
            assert bigger.grid == plan.grid or min(2, len(bigger.tiles)) * bigger.max_input_area * bpp > budget
    with pytest.raises(ValueError, match=r"memory_budget_bytes=1000 cannot hold even 16-px tiles"):
        choose_tile_size((4096, 4096), memory_budget_bytes=1000, **kw)
    with pytest.raises(ValueError, match="bytes_per_pixel must be > 0, got 0"):
        choose_tile_size((64, 64), multiple_of=16, halo=0, memory_budget_bytes=1e6, bytes_per_pixel=0)
