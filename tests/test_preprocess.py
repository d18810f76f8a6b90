"""Tests of the preprocessing engine (``fringelive.engine.preprocess``) against the plain
numpy/scipy oracle (``tests/oracle_preprocess.py``) and against planted defects.

Tolerances vs the oracle (float32 engine, float64 oracle), as in the module docstring:
- x-ray removal: the same pixels replaced; untouched pixels bit-identical; replaced values
  within 1e-5 relative (float32 mean of up to 8 neighbours);
- flat-field: coefficients, surface and corrected image within 1e-5 relative;
- rescale: standardize within 1e-5 absolute + 1e-6 relative (unit-scale output, float32
  resolution for outliers far out), normalize and histogram within 1e-6 absolute (output on
  [0, 1]); medians/percentiles exactly equal (exact order statistics);
- whole pipeline (x-rays → flat-field → standardize): within 5e-5 absolute.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fringelive.engine import preprocess as P
from fringelive.engine.preprocess import settings as PS
from fringelive.engine.preprocess import stats as PST
from fringelive.bundle.card import (
    Architecture,
    Card,
    Member,
    Preprocessing,
    Provenance,
    TileConstraints,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import oracle_preprocess as O  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda unavailable)")

# -- helpers ----------------------------------------------------------------------------------


def _np(x):
    """An engine result (numpy array, or a torch tensor on any device) as a numpy array."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def poisson_frame(shape, counts=1000.0, seed=0, gradient=None, dtype=np.float64):
    """Poisson counts, optionally times an illumination ``gradient(u, v)`` (u rows, v cols)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    lam = np.full(shape, counts)
    if gradient is not None:
        u = ((np.arange(h) + 0.5) / h)[:, None]
        v = ((np.arange(w) + 0.5) / w)[None, :]
        lam = lam * gradient(u, v)
    return rng.poisson(lam).astype(dtype)


def plant_xrays(img, seed=1):
    """Plant single hits, a 2x2 and a 5x5 cluster, hits on edges and corners, negatives.
    Returns (image, mask of planted hot pixels)."""
    rng = np.random.default_rng(seed)
    x = img.copy()
    h, w = x.shape
    hot = np.zeros(x.shape, bool)
    r, c = rng.integers(2, h - 2, 40), rng.integers(2, w - 2, 40)
    hot[r, c] = True
    hot[10:12, 20:22] = True                 # 2x2: every pixel has valid neighbours
    hot[40:45, 60:65] = True                 # 5x5: the centre needs 3 sweeps
    hot[0, 0] = hot[0, w - 1] = hot[h - 1, 0] = hot[h - 1, w - 1] = True
    hot[0, w // 2] = hot[h // 2, 0] = hot[h - 1, w // 3] = hot[h // 3, w - 1] = True
    x[hot] += rng.uniform(3000, 20000, hot.sum())
    neg = (rng.integers(0, h, 5), rng.integers(0, w, 5))
    x[neg] = -50.0
    hot[neg] = False
    return x, hot


@pytest.fixture(params=[True, False], ids=["numpy-scans", "torch-scans"])
def scans(request, monkeypatch):
    """Run with the CPU numpy scan kernels and with the torch kernels (the CUDA code path)."""
    monkeypatch.setattr(PS, "NUMPY_CPU_SCANS", request.param)
    return request.param


def card_json(preprocessing: dict | None = None) -> str:
    card = Card(
        name="test",
        architecture=Architecture(name="resunet-seed", spec={}, parameters=130682),
        tile=TileConstraints(multiple_of=16, receptive_field_radius_px=122, halo_px=128, min_size_px=16),
        members=(Member(file="member0.onnx", sha256="0" * 64),),
        provenance=Provenance(created="2024-01-01T00:00:00+00:00"),
    )
    d = card.to_dict()
    if preprocessing is not None:
        d["preprocessing"] = preprocessing
    return json.dumps(d)


# -- order statistics -------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-1000, 1000), min_size=1, max_size=300),
       st.floats(0, 100), st.floats(0, 100))
def test_median_and_percentiles_equal_numpy_small(values, q1, q2):
    a = np.array(values, dtype=np.float32)
    t = torch.from_numpy(a)
    assert P.median(t).item() == np.median(a)
    assert P.percentiles(t, [q1, q2]) == np.percentile(a.astype(np.float64), [q1, q2]).tolist()


@pytest.mark.parametrize("n", [640 * 640, 640 * 640 + 1])
def test_order_statistics_exact_on_large_inputs(n, scans):
    rng = np.random.default_rng(n)
    a = rng.poisson(500, n).astype(np.float32)          # many ties
    a[rng.integers(0, n, 1000)] = 1e6                   # and a heavy tail
    t = torch.from_numpy(a)
    s = np.sort(a)
    ks = [0, 1, n // 100, (n - 1) // 2, n // 2, n - 1 - n // 100, n - 1]
    assert P.order_statistics(t, ks).tolist() == s[ks].tolist()
    assert P.median(t).item() == np.median(a)
    assert P.percentiles(t, (1, 99)) == pytest.approx(np.percentile(a.astype(np.float64), (1, 99)), abs=0)


def test_order_statistics_fall_back_when_the_sample_misleads(monkeypatch, scans):
    rng = np.random.default_rng(3)
    a = rng.normal(size=600 * 600).astype(np.float32)
    t = torch.from_numpy(a)
    # a sample of the smallest values only: every bracket misses the middle ranks
    monkeypatch.setattr(PST, "_weyl_sample", lambda flat, m: torch.sort(flat).values[:m])
    assert P.median(t).item() == np.median(a)
    assert P.order_statistics(t, [5, a.size - 5]).tolist() == np.sort(a)[[5, a.size - 5]].tolist()


def test_median_of_integer_and_float64_tensors():
    i = torch.randint(0, 1000, (600, 500), generator=torch.Generator().manual_seed(0))
    assert P.median(i).item() == np.median(_np(i))
    assert P.percentiles(i, (1, 99)) == np.percentile(_np(i), (1, 99)).tolist()
    d = torch.randn(600, 500, dtype=torch.float64, requires_grad=True)
    assert P.median(d).item() == np.median(_np(d.detach()))


def test_order_statistics_rejects_bad_ranks():
    with pytest.raises(ValueError, match="rank 10 is outside"):
        P.order_statistics(torch.zeros(10), [10])
    with pytest.raises(ValueError, match="percentile must be within"):
        P.percentiles(torch.zeros(10), [101])


# -- x-ray removal -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(96, 128), (640, 520)], ids=["small", "bracketed-median"])
def test_remove_xrays_matches_oracle_and_removes_all_hits(shape, scans):
    clean = poisson_frame(shape, counts=1000.0)
    img, hot = plant_xrays(clean)
    got = _np(P.remove_xrays(img.astype(np.float32), 1500.0, 2))
    want = O.remove_xrays(img.astype(np.float32), 1500.0, 2)
    changed = got != np.maximum(img, 0).astype(np.float32)
    assert np.array_equal(changed, hot)                      # exactly the planted hits
    assert np.array_equal(changed, want != np.maximum(img, 0))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got.max() <= np.median(got) + 1500.0
    # replaced values are local means of clean neighbours: near the clean level
    assert np.all(np.abs(got[hot] - clean[hot]) < 200)


def test_remove_xrays_cluster_interior_and_sweep_fallback():
    img = np.full((32, 32), 100.0, np.float32)
    img[8:15, 8:15] = 9000.0                                   # 7x7 cluster: 4 sweeps
    img[8, 8] = 9001.0
    full = _np(P.remove_xrays(img, 1500.0, 1))
    assert np.array_equal(full, np.full_like(img, 100.0))
    # one sweep only: the 5x5 interior gets the median (100 here), like the oracle
    one = _np(P.remove_xrays(img, 1500.0, 1, max_sweeps=1))
    np.testing.assert_allclose(one, O.remove_xrays(img, 1500.0, 1, max_sweeps=1), rtol=1e-6)
    img2 = img.copy()
    img2[:16] = 200.0
    img2[8:15, 8:15] = 9000.0
    two = _np(P.remove_xrays(img2, 1500.0, 1, max_sweeps=1))
    assert np.allclose(two[10:13, 10:13], np.median(img2))


def test_remove_xrays_second_pass_with_a_dropping_median(scans):
    # a low threshold on noisy counts: many outliers, the median drops after pass 1, pass 2
    # recomputes it (bracket update) and finds new outliers
    img = poisson_frame((600, 560), counts=1000.0, seed=7).astype(np.float32)
    img[np.random.default_rng(8).random(img.shape) < 0.08] += 400.0
    for passes in (1, 2, 3):
        got = _np(P.remove_xrays(img, 40.0, passes))
        want = O.remove_xrays(img, 40.0, passes)
        np.testing.assert_allclose(got, want, rtol=1e-5)
    one, two = _np(P.remove_xrays(img, 40.0, 1)), _np(P.remove_xrays(img, 40.0, 2))
    assert (one != two).sum() > 100                           # pass 2 did work


def test_remove_xrays_leaves_clean_images_alone():
    clean = poisson_frame((200, 300), counts=800.0).astype(np.float32)
    out = _np(P.remove_xrays(clean, 1500.0, 2))
    assert np.array_equal(out, clean)
    assert np.array_equal(_np(P.remove_xrays(out, 1500.0, 2)), out)


def test_remove_xrays_zero_passes_only_clips_negatives():
    img = np.array([[-3.0, 5.0], [1e6, 2.0]], np.float32)
    assert P.remove_xrays(img, 10.0, 0).tolist() == [[0.0, 5.0], [1e6, 2.0]]


@pytest.mark.parametrize("kwargs, match", [
    (dict(threshold_counts=0), "threshold_counts must be a finite number > 0"),
    (dict(threshold_counts=float("nan")), "threshold_counts"),
    (dict(threshold_counts=10, passes=-1), "passes must be an integer >= 0, got -1"),
    (dict(threshold_counts=10, max_sweeps=0), "max_sweeps must be an integer >= 1, got 0"),
])
def test_remove_xrays_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        P.remove_xrays(np.zeros((4, 4)), **kwargs)


# -- flat-field ------------------------------------------------------------------------------


def block_means(img, b=64):
    h, w = (img.shape[0] // b) * b, (img.shape[1] // b) * b
    return img[:h, :w].reshape(h // b, b, w // b, b).mean(axis=(1, 3))


GRADIENTS = {
    "bilinear": lambda u, v: (1 + 0.3 * (2 * u - 1)) * (1 - 0.3 * (2 * v - 1)),
    "quadratic": lambda u, v: 1.3 - 0.6 * ((u - 0.4) ** 2 + (v - 0.6) ** 2) / 0.52,
    "vignette": lambda u, v: (1 - 0.3 * (2 * u - 1) ** 2) * (1 - 0.3 * (2 * v - 1) ** 2) + 0.0 * u,
}


@pytest.mark.parametrize("name", sorted(GRADIENTS))
def test_flatfield_removes_planted_illumination(name):
    img = poisson_frame((1024, 768), counts=1000.0, gradient=GRADIENTS[name])
    before = block_means(img)
    assert before.std() / before.mean() > 0.1
    out = _np(P.flatfield_correct(img.astype(np.float32)))
    after = block_means(out)
    assert after.std() / after.mean() < 0.01
    assert (after.max() - after.min()) / after.mean() < 0.01
    assert abs(out.mean() - 1.0) < 0.01                      # divided by the illumination


def test_flatfield_is_robust_to_dark_particles():
    img = poisson_frame((768, 768), counts=1000.0, gradient=GRADIENTS["bilinear"])
    yy, xx = np.mgrid[:768, :768]
    particles = np.zeros(img.shape, bool)
    for cy, cx in np.random.default_rng(2).integers(40, 728, (25, 2)):
        particles |= (yy - cy) ** 2 + (xx - cx) ** 2 < 30 ** 2
    img[particles] *= 0.6
    out = _np(P.flatfield_correct(img.astype(np.float32)))
    bg = np.where(particles, np.nan, out)
    blocks = np.nanmean(bg[:768, :768].reshape(12, 64, 12, 64), axis=(1, 3))
    assert np.nanstd(blocks) / np.nanmean(blocks) < 0.02


@pytest.mark.parametrize("shape, degree, downsample, iterations", [
    ((256, 192), (2, 2), 4, 2),
    ((257, 203), (2, 2), 4, 2),       # trailing rows/columns outside the blocks
    ((200, 240), (1, 3), 8, 1),
    ((128, 128), (0, 0), 2, 0),
    ((64, 96), (2, 2), 1, 3),
])
def test_flatfield_matches_oracle(shape, degree, downsample, iterations):
    img = poisson_frame(shape, counts=1200.0, gradient=GRADIENTS["quadratic"], seed=5)
    img32 = img.astype(np.float32)
    coef = _np(P.fit_flatfield_coefficients(img32, degree, downsample, iterations, 1.5))
    want = O.flatfield_coefficients(img32, degree, downsample, iterations, 1.5)
    np.testing.assert_allclose(coef, want, rtol=1e-5)
    surface = _np(P.fit_flatfield(img32, degree, downsample, iterations, 1.5))
    np.testing.assert_allclose(surface, O.flatfield_surface(want, shape), rtol=1e-5)
    out = _np(P.flatfield_correct(img32, degree, downsample, iterations, 1.5))
    np.testing.assert_allclose(out, O.flatfield_correct(img32, degree, downsample, iterations, 1.5), rtol=1e-5)


def test_flatfield_of_a_corrected_image_is_flat():
    img = poisson_frame((512, 512), counts=1000.0, gradient=GRADIENTS["vignette"]).astype(np.float32)
    once = P.flatfield_correct(img)
    surface = _np(P.fit_flatfield(once))
    assert np.abs(surface - 1.0).max() < 2e-3
    twice = _np(P.flatfield_correct(once))
    np.testing.assert_allclose(twice, _np(once), rtol=2e-3)


def test_evaluate_flatfield_is_the_bezier_surface():
    coef = torch.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=torch.float64)
    s = _np(P.evaluate_flatfield(coef, (4, 2)))
    u = (np.arange(4) + 0.5) / 4
    v = (np.arange(2) + 0.5) / 2
    want = ((1 - u)[:, None] * (1 - v) * 1 + (1 - u)[:, None] * v * 2
            + u[:, None] * (1 - v) * 3 + u[:, None] * v * 5)
    np.testing.assert_allclose(s, want, rtol=1e-6)
    assert P.bernstein_basis(torch.linspace(0, 1, 7, dtype=torch.float64), 3).sum(1).allclose(
        torch.ones(7, dtype=torch.float64))


def test_flatfield_guards_non_positive_surfaces():
    with pytest.raises(ValueError, match="positive intensities"):
        P.flatfield_correct(np.zeros((64, 64), np.float32))
    with pytest.raises(ValueError, match="positive intensities"):
        P.flatfield_correct(np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32))
    # a dark half: the quadratic fit to the step dips below the floor; the fit alone says so,
    # the correction falls back to lower degrees (here down to a constant) instead
    step = np.zeros((64, 128), np.float32)
    step[:, 70:] = 1000.0
    with pytest.raises(ValueError, match="flat-field surface falls to"):
        P.fit_flatfield(step, degree=(0, 2), iterations=0)
    np.testing.assert_allclose(P.flatfield_correct(step, degree=(0, 2), iterations=0), step / step.mean(), rtol=1e-5)


@pytest.mark.parametrize("device", ["numpy", "torch"])
def test_dark_particle_over_a_corner_lowers_the_flatfield_degree_not_the_frame(device):
    """A large dark particle over a corner (a 12 nm Au particle partly out of a 20 nm frame, as
    one simulated 290 e/Å² frame had) pulls the card's degree-2 surface below zero there: the
    frame was rejected. Now the fit drops to degree 1, and every pixel stays finite."""
    from fringelive.bundle.card import Preprocessing

    n = 256
    yy, xx = np.mgrid[:n, :n] / n
    img = np.random.default_rng(0).poisson(np.where(yy ** 2 + (xx - 1.0) ** 2 < 0.5 ** 2, 60.0, 200.0))
    img = img.astype(np.uint16)
    with pytest.raises(ValueError, match="flat-field surface falls to"):
        P.fit_flatfield(img)  # the card's degree (2, 2)
    frame = img if device == "numpy" else torch.from_numpy(img.astype(np.int32))
    stats: dict = {}
    out = _np(P.preprocess(frame, Preprocessing(), stats=stats))
    assert stats["flatfield_degree"] == (1, 1) and 0 < stats["flatfield_min"] < 1 < stats["flatfield_max"]
    assert np.isfinite(out).all() and abs(float(out.mean())) < 1e-4
    ok: dict = {}
    P.preprocess(np.full((64, 64), 100, np.uint16), Preprocessing(), stats=ok)
    assert ok["flatfield_degree"] == (2, 2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(degree=(2,)), r"degree must be two integers >= 0 \(rows, columns\), got \(2,\)"),
    (dict(degree=(2, -1)), "degree must be two integers"),
    (dict(downsample=0), r"downsample must be an integer >= 1 \(px\), got 0"),
    (dict(iterations=-1), "iterations must be an integer >= 0, got -1"),
    (dict(weight_scale=-1.0), "weight_scale must be a finite number >= 0, got -1.0"),
])
def test_flatfield_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        P.flatfield_correct(np.ones((64, 64)), **kwargs)


def test_flatfield_rejects_frames_too_small_for_the_fit():
    with pytest.raises(ValueError, match=r"frame 8x64 px binned by 4 gives 2x16 blocks, too few"):
        P.flatfield_correct(np.ones((8, 64)))


# -- rescale -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(100, 120), (700, 600)], ids=["small", "bracketed-percentiles"])
@pytest.mark.parametrize("mode, atol", [("standardize", 1e-5), ("normalize", 1e-6), ("histogram", 1e-6)])
def test_rescale_matches_oracle(shape, mode, atol, scans):
    img = poisson_frame(shape, counts=50.0, gradient=GRADIENTS["bilinear"]).astype(np.float32)
    img[3, 4] = 5000.0
    got = _np(P.rescale(img, mode, (2.0, 97.5)))
    want = O.rescale(img, mode, (2.0, 97.5))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=atol)


def test_rescale_modes_have_their_ranges():
    img = poisson_frame((128, 128), counts=30.0).astype(np.float32)
    s = P.rescale(img, "standardize").astype(np.float64)
    assert abs(s.mean().item()) < 1e-6 and abs(s.std().item() - 1) < 1e-5
    n = P.rescale(img, "normalize")
    assert n.min().item() == 0.0 and n.max().item() == 1.0
    h = _np(P.rescale(img, "histogram", (1, 99)))
    lo, hi = np.percentile(img.astype(np.float64), (1, 99))
    assert h.min() == 0.0 and h.max() == 1.0
    assert np.all(h[img <= lo] == 0.0) and np.all(h[img >= hi] == 1.0)


@pytest.mark.parametrize("mode", ["standardize", "normalize", "histogram"])
def test_rescale_of_a_constant_image_is_zeros(mode):
    out = P.rescale(np.full((16, 16), 7.0, np.float32), mode)
    assert out.dtype == np.float32 and not out.any()


def test_rescale_histogram_with_equal_percentiles_is_zeros():
    img = np.zeros((50, 50), np.float32)
    img[0, 0] = 1.0                                            # 1st and 99th percentile both 0
    assert not P.rescale(img, "histogram").any()


def test_rescale_is_idempotent_for_standardize_and_normalize():
    img = poisson_frame((256, 256), counts=40.0).astype(np.float32)
    for mode, tol in (("standardize", 1e-5), ("normalize", 1e-6)):
        once = P.rescale(img, mode)
        np.testing.assert_allclose(_np(P.rescale(once, mode)), _np(once), rtol=0, atol=tol)


@pytest.mark.parametrize("args, match", [
    (("median",), r"mode must be one of \('standardize', 'normalize', 'histogram'\), got 'median'"),
    (("histogram", (99, 1)), r"percentiles must satisfy 0 <= low < high <= 100 \(percent\), got \(99, 1\)"),
    (("histogram", (1,)), "percentiles must be two numbers"),
])
def test_rescale_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        P.rescale(np.ones((4, 4)), *args)


# -- the pipeline ----------------------------------------------------------------------------


def raw_frame(shape=(320, 288), seed=0):
    img = poisson_frame(shape, counts=1000.0, gradient=GRADIENTS["bilinear"], seed=seed)
    return plant_xrays(img, seed=seed + 1)[0]


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                                   "float16", "float32", "float64", ">u2", ">i4", ">f4", ">f8", "<u2"])
def test_preprocess_accepts_numpy_dtypes(dtype):
    raw = raw_frame()                                           # ~1000 counts, hits, a few -50
    one_byte = np.dtype(dtype).itemsize == 1
    if one_byte:
        raw = raw / 100.0                                       # ~10 counts, hits 30..200
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        raw = np.clip(np.round(raw), info.min, info.max)
    frame = raw.astype(dtype)
    params = Preprocessing(xray_threshold_counts=15.0 if one_byte else 1500.0)
    out = P.preprocess(frame, params)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == frame.shape
    want = O.preprocess(frame.astype(np.float32), params)
    np.testing.assert_allclose(_np(out), want, rtol=0, atol=5e-5)


def test_preprocess_accepts_strided_and_flipped_arrays():
    raw = raw_frame().astype(np.uint16)
    params = Preprocessing()
    for view in (raw.T, raw[::-1], raw[:, ::2], np.asfortranarray(raw)):
        out = _np(P.preprocess(view, params))
        np.testing.assert_allclose(out, O.preprocess(view.astype(np.float32), params), rtol=0, atol=5e-5)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.uint16, torch.int32, torch.int64,
                                   torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_preprocess_accepts_torch_tensors(dtype):
    one_byte = dtype == torch.uint8
    raw = np.clip(np.round(raw_frame() / (100.0 if one_byte else 1.0)), 0, 255 if one_byte else None)
    t = torch.from_numpy(raw).to(dtype)
    params = Preprocessing(xray_threshold_counts=15.0 if one_byte else 1500.0)
    out = P.preprocess(t, params)
    want = O.preprocess(_np(t.to(torch.float32)), params)
    np.testing.assert_allclose(_np(out), want, rtol=0, atol=5e-5)


def test_preprocess_never_modifies_its_input():
    raw = raw_frame().astype(np.float32)
    keep = raw.copy()
    t = torch.from_numpy(raw.copy()).requires_grad_(True)
    for rescale in ("standardize", "normalize", "histogram"):
        for flags in ((True, True), (False, True), (False, False)):
            params = Preprocessing(xray_removal=flags[0], flatfield=flags[1], rescale=rescale)
            P.preprocess(raw, params)
            P.preprocess(t, params)
    assert np.array_equal(raw, keep) and np.array_equal(_np(t.detach()), keep)
    for fn in (lambda a: P.remove_xrays(a, 1500.0), P.flatfield_correct, P.fit_flatfield, P.rescale):
        fn(raw)
    assert np.array_equal(raw, keep)


def test_preprocess_scan_kernels_agree_exactly(monkeypatch):
    raw = torch.from_numpy(raw_frame((640, 600)).astype(np.int32))  # a CPU tensor: the torch path
    for mode in ("standardize", "histogram"):
        params = Preprocessing(rescale=mode)
        monkeypatch.setattr(PS, "NUMPY_CPU_SCANS", True)
        a = P.preprocess(raw, params)
        monkeypatch.setattr(PS, "NUMPY_CPU_SCANS", False)
        b = P.preprocess(raw, params)
        assert isinstance(a, torch.Tensor) and torch.equal(a, b)


@pytest.mark.parametrize("mode", ["standardize", "histogram"])
def test_preprocess_in_many_chunks_matches_oracle(mode, scans, monkeypatch):
    # real frames span 16 chunks; here an odd chunk size splits rows, bands and brackets
    raw = raw_frame((300, 280)).astype(np.uint16)
    params = Preprocessing(rescale=mode)
    whole = _np(P.preprocess(raw, params))
    monkeypatch.setattr(PS, "_CHUNK_PIXELS", 5003)
    monkeypatch.setattr(PS, "_DIRECT_MAX", 1000)       # bracketed order statistics too
    monkeypatch.setattr(PS, "_SAMPLE_SIZE", 4096)
    chunked = _np(P.preprocess(raw, params))
    np.testing.assert_allclose(chunked, O.preprocess(raw, params), rtol=0, atol=5e-5)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=2e-6)


@pytest.mark.slow
def test_preprocess_full_frame_matches_oracle():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from preprocess_steps import synthetic_frame
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    frame = synthetic_frame((4096, 4096))
    for params in (Preprocessing(), Preprocessing(rescale="histogram")):
        np.testing.assert_allclose(_np(P.preprocess(frame, params)), O.preprocess(frame, params),
                                   rtol=0, atol=5e-5)


def test_preprocess_steps_follow_the_card():
    raw = raw_frame().astype(np.uint16)
    for kw in (dict(), dict(xray_removal=False), dict(flatfield=False), dict(rescale="normalize"),
               dict(rescale="histogram", histogram_percentiles=(0.5, 99.5)), dict(xray_passes=1),
               dict(flatfield_degree=(1, 2), flatfield_downsample=8, flatfield_iterations=0),
               dict(xray_threshold_counts=800.0, flatfield_weight_scale=3.0)):
        params = Preprocessing(**kw)
        out = _np(P.preprocess(raw, params))
        np.testing.assert_allclose(out, O.preprocess(raw, params), rtol=0, atol=5e-5, err_msg=str(kw))


def test_preprocess_reads_params_from_a_card():
    raw = raw_frame().astype(np.uint16)
    section = {"xray_threshold_counts": 1200.0, "flatfield_degree": [1, 1], "rescale": "histogram",
               "histogram_percentiles": [2, 98]}
    card = Card.from_json(card_json(section))
    assert card.preprocessing.flatfield_degree == (1, 1)
    out = _np(P.preprocess(raw, card.preprocessing))
    np.testing.assert_allclose(out, O.preprocess(raw, card.preprocessing), rtol=0, atol=5e-5)
    default = Card.from_json(card_json()).preprocessing
    assert default == Preprocessing()
    np.testing.assert_allclose(_np(P.preprocess(raw, default)), O.preprocess(raw, default), rtol=0, atol=5e-5)


def test_preprocess_stats_and_timings():
    img = poisson_frame((256, 256), counts=1000.0, gradient=GRADIENTS["bilinear"])
    img, hot = plant_xrays(img)
    stats: dict = {}
    P.preprocess(img.astype(np.float32), Preprocessing(), stats=stats)
    assert stats["xray_pixels"] == hot.sum()
    assert stats["flatfield_min"] == pytest.approx(0.7 * 0.7, abs=0.02)
    assert stats["flatfield_max"] == pytest.approx(1.3 * 1.3, abs=0.02)
    stats, timings = {}, {}
    P.preprocess(img.astype(np.float32), Preprocessing(xray_removal=False, flatfield=False), stats=stats,
                 timings=timings)
    assert stats == {"xray_pixels": 0}
    assert set(timings) == {"to_float32", "remove_xrays", "flatfield", "rescale", "lowpass"}
    assert timings["remove_xrays"] == timings["flatfield"] == 0.0 and timings["rescale"] > 0


def test_preprocess_device_argument():
    raw = raw_frame().astype(np.uint16)
    a = P.preprocess(raw, Preprocessing(), device="cpu")
    b = P.preprocess(raw, Preprocessing(), device=torch.device("cpu"))
    c = P.preprocess(raw, Preprocessing())
    assert isinstance(a, np.ndarray) and np.array_equal(a, b) and np.array_equal(a, c)  # numpy on the CPU
    t = P.preprocess(torch.from_numpy(raw.astype(np.float32)), Preprocessing(), device="cpu")
    assert isinstance(t, torch.Tensor) and t.device.type == "cpu"  # a tensor stays a tensor
    with pytest.raises(ValueError, match="device must be a torch device such as 'cpu' or 'cuda:0', got 'gpu0'"):
        P.preprocess(raw, Preprocessing(), device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' requested but CUDA is not available"):
            P.preprocess(raw, Preprocessing(), device="cuda")


def test_narrow_dtypes_are_widened_exactly():
    # the path that ships uint8/int16/uint16/float16 frames to a GPU before widening
    for dtype in (np.uint8, np.int8, np.int16, np.uint16, np.float16):
        info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
        a = np.array([[info.min, 0, 1, info.max]], dtype=dtype)
        assert P._ship_narrow(a, torch.device("cpu")).tolist() == a.astype(np.float32).tolist()


@CUDA
@pytest.mark.parametrize("dtype", ["uint16", "float32", ">u2"])
def test_preprocess_on_cuda_matches_cpu(dtype):
    raw = raw_frame((640, 576)).astype(dtype)
    for mode in ("standardize", "histogram"):
        params = Preprocessing(rescale=mode)
        gpu = P.preprocess(raw, params, device="cuda")
        assert gpu.device.type == "cuda"
        cpu = P.preprocess(raw, params, device="cpu")
        np.testing.assert_allclose(_np(gpu.cpu()), _np(cpu), rtol=0, atol=5e-5)
    t = torch.from_numpy(raw.astype(np.float32)).cuda()
    assert P.preprocess(t, Preprocessing()).device == t.device


@pytest.mark.parametrize("frame, exc, match", [
    (np.zeros((2, 3, 4)), ValueError, r"frame must be 2-D \(H, W\), got shape \(2, 3, 4\)"),
    (np.zeros(5), ValueError, r"frame must be 2-D \(H, W\), got shape \(5,\)"),
    (np.zeros((0, 5)), ValueError, r"frame must not be empty, got shape \(0, 5\)"),
    (torch.zeros(1, 8, 8), ValueError, r"got shape \(1, 8, 8\)"),
    (np.zeros((4, 4), complex), TypeError, "frame dtype must be an integer or floating-point type, got complex128"),
    (np.zeros((4, 4), bool), TypeError, "got bool"),
    (torch.zeros(4, 4, dtype=torch.bool), TypeError, "got torch.bool"),
    ([[1, 2], [3, 4]], TypeError, "frame must be a numpy array or a torch tensor, got list"),
])
def test_preprocess_rejects_bad_frames(frame, exc, match):
    with pytest.raises(exc, match=match):
        P.preprocess(frame, Preprocessing())


def test_preprocess_rejects_non_finite_pixels_naming_the_count():
    img = np.ones((8, 8), np.float32)
    img[0, 0], img[1, 1], img[2, 2] = np.nan, np.inf, -np.inf
    with pytest.raises(ValueError, match=r"frame has 3 non-finite pixel\(s\) \(NaN or ±Inf\) of 64"):
        P.preprocess(img, Preprocessing())
    with pytest.raises(ValueError, match=r"frame has 1 non-finite"):
        P.preprocess(np.array([[1e300, 1.0]]), Preprocessing())          # overflows float32
    with pytest.raises(ValueError, match=r"frame has 1 non-finite"):
        P.rescale(torch.tensor([[float("nan"), 1.0]]))


def test_preprocess_rejects_params_of_the_wrong_type():
    with pytest.raises(TypeError, match="params must be a fringelive.bundle.card.Preprocessing, got dict"):
        P.preprocess(np.ones((8, 8)), {"rescale": "normalize"})


# -- the benchmark helper ---------------------------------------------------------------------


def test_time_preprocess_steps_is_importable_and_reports_every_step():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import preprocess_steps as B
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    frame = B.synthetic_frame((128, 160), xrays=5)
    assert frame.dtype == np.uint16 and frame.shape == (128, 160)
    times = B.time_preprocess_steps(frame, Preprocessing(lowpass_sigma_px=1.0), "cpu", repeats=1)
    assert set(times) == set(B.STEPS) and all(v > 0 for v in times.values())
    off = B.time_preprocess_steps(frame, Preprocessing(xray_removal=False, flatfield=False), "cpu", 1)
    assert off["remove_xrays"] == 0.0 and off["flatfield"] == 0.0 and off["lowpass"] == 0.0
