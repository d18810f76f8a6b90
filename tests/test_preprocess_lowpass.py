"""The preprocessing low-pass (card ``lowpass_sigma_px``): numpy and torch against the oracle
(``scipy.ndimage.gaussian_filter``, ``tests/oracle_preprocess.py``), its effect on noise and
on lattice fringes, its place in :func:`preprocess`, and the card / CLI / sample-set plumbing."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fringelive.bundle.card import Card, CardError, Preprocessing
from fringelive.cli.preprocessing import add_preprocessing_options, preprocessing_from_args
from fringelive.engine.preprocess import lowpass, preprocess
from fringelive.engine.preprocess.lowpass import gaussian_weights
from fringelive.training.samples import preprocessing_from_json, preprocessing_to_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
import oracle_preprocess as O  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.mark.parametrize("shape", [(1, 1), (2, 7), (5, 3), (70, 33), (130, 257)])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5])
def test_numpy_and_torch_equal_the_scipy_reference(shape: tuple[int, int], sigma: float) -> None:
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    ref = O.lowpass(x, sigma)
    a = lowpass(x, sigma)
    b = lowpass(torch.from_numpy(x), sigma)
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == shape
    assert isinstance(b, torch.Tensor) and b.dtype == torch.float32 and tuple(b.shape) == shape
    np.testing.assert_allclose(a, ref, atol=1e-6)
    np.testing.assert_allclose(b.numpy(), ref, atol=1e-6)


def test_weights_are_normalised_and_cover_three_sigma() -> None:
    for s in (0.3, 1.0, 1.7, 4.0):
        w = gaussian_weights(s)
        assert w.dtype == np.float32 and abs(float(w.sum()) - 1.0) < 1e-6
        assert len(w) == 2 * max(1, int(np.ceil(3 * s))) + 1
        np.testing.assert_array_equal(w, w[::-1])


def test_noise_is_removed_and_fringes_are_kept() -> None:
    """σ = 1 px: white noise keeps ~1/(4πσ²) ≈ 8 % of its variance; a fringe of period 10 px
    keeps exp(-2π²σ²/p²) ≈ 82 % of its amplitude."""
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(512, 512)).astype(np.float32)
    kept = float(lowpass(noise, 1.0)[8:-8, 8:-8].var())
    assert 0.07 < kept < 0.09, kept
    cols = np.arange(512)
    fringe = np.broadcast_to(np.cos(2 * np.pi * cols / 10.0), (64, 512)).astype(np.float32)
    amp = float(np.abs(lowpass(fringe, 1.0)[:, 8:-8]).max())
    assert abs(amp - np.exp(-2 * np.pi ** 2 / 100)) < 0.01, amp


def test_sigma_zero_is_a_copy_and_input_is_never_modified() -> None:
    x = np.random.default_rng(1).normal(size=(20, 30)).astype(np.float32)
    before = x.copy()
    y = lowpass(x, 0.0)
    assert y is not x
    np.testing.assert_array_equal(y, x)
    lowpass(x, 1.0)
    np.testing.assert_array_equal(x, before)
    t = torch.from_numpy(before.copy())
    lowpass(t, 1.0)
    np.testing.assert_array_equal(t.numpy(), before)


@pytest.mark.parametrize("bad", [-0.1, 4.5, float("nan"), "1", True, None])
def test_bad_sigma_is_refused_with_its_value(bad: object) -> None:
    with pytest.raises(ValueError, match=r"sigma_px must be a number in \[0, 4\.0\] \(px\), got "):
        lowpass(np.zeros((4, 4), np.float32), bad)  # type: ignore[arg-type]


def test_preprocess_runs_it_after_the_rescale() -> None:
    rng = np.random.default_rng(2)
    frame = rng.poisson(400.0, size=(96, 128)).astype(np.uint16)
    off = Preprocessing()
    on = Preprocessing(lowpass_sigma_px=1.0)
    timings: dict[str, float] = {}
    got = preprocess(frame, on, timings=timings)
    np.testing.assert_allclose(got, lowpass(preprocess(frame, off), 1.0), atol=1e-6)
    assert timings["lowpass"] > 0.0
    t_off: dict[str, float] = {}
    preprocess(frame, off, timings=t_off)
    assert t_off["lowpass"] == 0.0
    on_torch = preprocess(torch.from_numpy(frame.astype(np.float32)), on)
    np.testing.assert_allclose(on_torch.numpy(), got, atol=5e-5)
    # the scale is the rescaled frame's: the filter lowers the std (mostly noise here), no re-standardization
    assert float(got.std()) < 0.5 and abs(float(got.mean())) < 1e-3


def test_card_json_round_trip_and_old_cards(tiny_bundle) -> None:  # noqa: ANN001 (conftest.py)
    d = json.loads(tiny_bundle.card.to_json())
    d["preprocessing"]["lowpass_sigma_px"] = 1.0
    card = Card.from_dict(d)
    assert card.preprocessing.lowpass_sigma_px == 1.0
    assert Card.from_json(card.to_json()) == card
    d["preprocessing"].pop("lowpass_sigma_px")
    assert Card.from_dict(d).preprocessing.lowpass_sigma_px == 0.0  # cards written before the key
    with pytest.raises(CardError, match=r"lowpass_sigma_px must be in \[0, 4\.0\] \(px\), got 5\.0"):
        Preprocessing(lowpass_sigma_px=5.0)


def test_cli_option_and_sample_set_record() -> None:
    p = argparse.ArgumentParser()
    add_preprocessing_options(p, "test")
    params = preprocessing_from_args(p.parse_args(["--lowpass-sigma", "0.8"]))
    assert params == Preprocessing(lowpass_sigma_px=0.8)
    assert preprocessing_from_args(p.parse_args([])) is None
    with pytest.raises(CardError, match=r"got -1\.0"):
        preprocessing_from_args(p.parse_args(["--lowpass-sigma", "-1"]))
    assert preprocessing_from_json(preprocessing_to_json(params)) == params
    old = json.loads(preprocessing_to_json(Preprocessing()))
    old.pop("lowpass_sigma_px")
    assert preprocessing_from_json(json.dumps(old)) == Preprocessing()
