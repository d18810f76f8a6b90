"""Particle statistics against hand-made masks with known geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fringelive.engine.particles import area_fraction, label_particles, particle_stats


def disc(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


@pytest.mark.parametrize("radius", [4.0, 10.0, 25.5])
def test_disc_diameter_centroid_bbox(radius: float) -> None:
    mask = disc((128, 160), (60.0, 70.0), radius)
    (p,) = particle_stats(mask, pixel_size_nm=None, min_area_px=1)
    assert p["label"] == 1
    assert p["area_px"] == int(mask.sum())
    assert abs(p["diameter_px"] - 2 * radius) < 1.0
    assert p["area_nm2"] is None and p["diameter_nm"] is None
    assert p["centroid_px"] == pytest.approx([60.0, 70.0], abs=1e-9)
    r = int(math.floor(radius))
    assert p["bbox_px"] == [60 - r, 70 - r, 60 + r + 1, 70 + r + 1]
    assert p["touches_border"] is False


def test_pixel_size_scaling() -> None:
    mask = disc((100, 100), (50, 50), 20)
    (a,) = particle_stats(mask, pixel_size_nm=None)
    (b,) = particle_stats(mask, pixel_size_nm=0.05)
    assert b["area_nm2"] == pytest.approx(a["area_px"] * 0.05**2)
    assert b["diameter_nm"] == pytest.approx(a["diameter_px"] * 0.05)
    assert b["diameter_nm"] == pytest.approx(2.0, abs=0.05)  # 40 px × 0.05 nm/px


def test_min_area_filter_and_labels_renumbered() -> None:
    mask = np.zeros((64, 64), bool)
    mask[2:4, 2:4] = True  # 4 px, dropped
    mask[10:20, 10:20] = True  # 100 px
    mask[30:32, 40:50] = True  # 20 px, kept at the default min_area_px=20
    mask[50:53, 50:53] = True  # 9 px, dropped
    ps = particle_stats(mask, 0.1)
    assert [p["area_px"] for p in ps] == [100, 20]
    assert [p["label"] for p in ps] == [1, 2]
    assert ps[1]["bbox_px"] == [30, 40, 32, 50]
    assert len(particle_stats(mask, 0.1, min_area_px=0)) == 4
    assert particle_stats(mask, 0.1, min_area_px=101) == []


def test_connectivity_and_border() -> None:
    mask = np.zeros((10, 10), bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours, touching the border
    assert len(particle_stats(mask, None, min_area_px=1, connectivity=2)) == 1
    four = particle_stats(mask, None, min_area_px=1, connectivity=1)
    assert [p["touches_border"] for p in four] == [True, False]
    mask[:] = False
    mask[9, 4:6] = True
    assert particle_stats(mask, None, min_area_px=1)[0]["touches_border"] is True


def test_empty_and_full_mask() -> None:
    empty = np.zeros((32, 48), bool)
    assert particle_stats(empty, 0.02) == []
    assert area_fraction(empty) == 0.0
    full = np.ones((32, 48), bool)
    (p,) = particle_stats(full, 0.02)
    assert p["area_px"] == 32 * 48 and p["touches_border"]
    assert area_fraction(full) == 1.0


def test_many_particles_match_per_label_reference() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((200, 300)) < 0.45
    ps = particle_stats(mask, 0.5, min_area_px=5)
    labels, count = label_particles(mask)
    ref = []
    for k in range(1, count + 1):
        ys, xs = np.nonzero(labels == k)
        if ys.size >= 5:
            ref.append((ys.size, ys.mean(), xs.mean(), [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]))
    assert len(ps) == len(ref)
    for p, (a, cy, cx, box) in zip(ps, ref):
        assert p["area_px"] == a
        assert p["centroid_px"] == pytest.approx([cy, cx])
        assert p["bbox_px"] == box
    assert sum(p["area_px"] for p in ps) <= mask.sum()
    assert area_fraction(mask) == pytest.approx(mask.mean())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pixel_size_nm": -1.0}, "pixel_size_nm must be a positive number or None, got -1.0"),
        ({"pixel_size_nm": float("nan")}, "pixel_size_nm"),
        ({"pixel_size_nm": None, "min_area_px": -3}, "min_area_px must be an integer >= 0, got -3"),
        ({"pixel_size_nm": None, "connectivity": 3}, "connectivity must be 1 .* got 3"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        particle_stats(np.zeros((4, 4), bool), **kwargs)


def test_bad_mask() -> None:
    with pytest.raises(ValueError, match=r"mask must be 2-D \(H, W\), got shape \(4,\)"):
        particle_stats(np.zeros(4, bool), None)
    with pytest.raises(ValueError, match="mask must have dtype bool, got uint8"):
        particle_stats(np.zeros((4, 4), np.uint8), None)
