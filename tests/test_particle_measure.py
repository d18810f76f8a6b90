"""Particles vs specks, holes, edge flags and the size summary (engine/particle_measure.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fringelive.engine.particle_measure import ParticleSettings, measure_particles, min_area_px_for


def _disc(mask: np.ndarray, cy: float, cx: float, r: float) -> None:
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_sub_nm_components_are_specks_not_particles() -> None:
    px = 0.02  # nm/px: 1 nm = 50 px
    mask = np.zeros((512, 512), bool)
    _disc(mask, 150, 150, 150)  # 6 nm particle
    for k in range(12):  # 0.4 nm specks on the support
        _disc(mask, 400 + (k % 3) * 30, 330 + (k // 3) * 40, 10)
    m = measure_particles(mask, px, ParticleSettings())
    assert len(m.particles) == 1 and m.specks == 12
    assert m.particles[0]["diameter_nm"] == pytest.approx(6.0, rel=0.02)
    assert m.summary["count"] == 1 and m.summary["specks"] == 12
    assert not m.mask[400, 330], "specks leave the published mask by default"
    kept = measure_particles(mask, px, ParticleSettings(remove_specks=False))
    assert kept.specks == 12 and kept.mask[400, 330] and len(kept.particles) == 1


def test_minimum_follows_pixel_size_and_falls_back_to_pixels() -> None:
    s = ParticleSettings(min_diameter_nm=1.0)
    assert min_area_px_for(0.02, s, 20) == math.ceil(math.pi / 4 * 50 ** 2)
    assert min_area_px_for(None, s, 20) == 20
    mask = np.zeros((64, 64), bool)
    mask[10:15, 10:15] = True  # 25 px
    assert len(measure_particles(mask, None, s, min_area_px=20).particles) == 1
    assert measure_particles(mask, None, s, min_area_px=30).specks == 1


def test_holes_are_filled_and_edge_particles_left_out_of_sizes() -> None:
    px = 0.05
    mask = np.zeros((400, 400), bool)
    _disc(mask, 200, 200, 60)
    mask[195:205, 195:205] = False  # a hole
    _disc(mask, 0, 100, 40)  # cut by the top edge
    m = measure_particles(mask, px, ParticleSettings())
    assert m.mask[200, 200], "hole filled"
    assert len(m.particles) == 2 and m.summary["edge"] == 1 and m.summary["measured"] == 1
    inner = next(p for p in m.particles if not p["touches_border"])
    assert m.summary["mean_diameter_nm"] == pytest.approx(inner["diameter_nm"])
    assert m.summary["median_diameter_nm"] == pytest.approx(inner["diameter_nm"])
    dist = m.summary["size_distribution"]
    assert sum(dist["area_fraction"]) == pytest.approx(1.0)
    assert len(dist["bin_edges_nm"]) == len(dist["area_fraction"]) + 1
    both = measure_particles(mask, px, ParticleSettings(exclude_edge_from_stats=False))
    assert both.summary["measured"] == 2


def test_area_weighted_distribution() -> None:
    px = 0.1
    mask = np.zeros((600, 600), bool)
    _disc(mask, 100, 100, 10)   # 2 nm
    _disc(mask, 300, 300, 40)   # 8 nm
    m = measure_particles(mask, px, ParticleSettings(size_bin_nm=1.0))
    d = m.summary["size_distribution"]
    big = d["area_fraction"][8] if len(d["area_fraction"]) > 8 else d["area_fraction"][-1]
    assert big > 0.9, "the 8 nm particle holds ~16x the area of the 2 nm one"


def test_without_pixel_size_sizes_are_in_pixels() -> None:
    mask = np.zeros((100, 100), bool)
    _disc(mask, 50, 50, 10)
    s = measure_particles(mask, None, ParticleSettings()).summary
    assert s["mean_diameter_nm"] is None and s["mean_diameter_px"] == pytest.approx(20.0, rel=0.05)
    assert s["size_distribution"] is None


@pytest.mark.parametrize("kw,msg", [
    ({"min_diameter_nm": -1.0}, "min_diameter_nm must be >= 0 nm, got -1.0"),
    ({"size_bin_nm": 0.0}, "size_bin_nm must be > 0 nm, got 0.0"),
    ({"fill_holes": "yes"}, "fill_holes must be true or false, got 'yes'"),
])
def test_settings_errors_name_the_value(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        ParticleSettings(**kw)


def test_fill_holes_equals_scipy_on_random_masks() -> None:
    from scipy import ndimage

    from fringelive.engine.particles import fill_holes

    rng = np.random.default_rng(7)
    for _ in range(200):
        shape = (int(rng.integers(1, 48)), int(rng.integers(1, 48)))
        mask = rng.random(shape) < rng.random()
        np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


def test_labels_are_numbered_like_the_particles() -> None:
    """The measurement's label image is what tracking would build from the published mask."""
    from fringelive.engine.insitu import labels_of

    rng = np.random.default_rng(3)
    mask = np.zeros((400, 400), bool)
    for _ in range(12):
        _disc(mask, *rng.uniform(0, 400, 2), rng.uniform(3, 40))
    mask ^= rng.random(mask.shape) < 0.01  # specks and holes
    for settings in (ParticleSettings(), ParticleSettings(remove_specks=False), ParticleSettings(fill_holes=False)):
        m = measure_particles(mask, 0.05, settings)
        assert m.labels is not None and m.labels.dtype == np.int32 and int(m.labels.max()) == len(m.particles)
        for p in m.particles:
            assert int(np.count_nonzero(m.labels == p["label"])) == p["area_px"]
        if settings.remove_specks:
            np.testing.assert_array_equal(m.labels, labels_of(m.mask, m.particles))
