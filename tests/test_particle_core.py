"""The confident-core rule: a component is a particle only when its pixels at or above the core
probability make a disc of ``min_core_nm`` (engine/particle_measure.py); its choice on labelled
frames (engine/particle_confidence.py, statistic ``core_nm``, ``fringelive calibrate
--choose-particle-core``); the card fields and the ``[particles]`` keys that carry it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from fringelive.bundle.card import Card, CardError
from fringelive.engine.particle_confidence import ConfidenceTally, choose_particle_confidence
from fringelive.engine.particle_measure import ParticleSettings, core_diameters_nm, core_fractions, measure_particles
from fringelive.engine.particles import label_kept_runs, touching_border

PX = 0.1  # nm/px: the 1 nm speck minimum is a 5 px radius disc


def _disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _frame(small_core: bool = True, texture: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (0.05 background): a particle (p 0.99), lukewarm texture (p 0.85 throughout)
    and a small faint particle (rim p 0.8, a 4 px core at 0.97); the label holds the two particles."""
    shape = (128, 128)
    p = np.full(shape, 0.05, np.float32)
    big, tex, small = _disc(shape, 40, 40, 15), _disc(shape, 95, 95, 12), _disc(shape, 30, 100, 8)
    p[big] = 0.99
    if texture:
        p[tex] = 0.85
    p[small] = 0.8
    if small_core:
        p[_disc(shape, 30, 100, 4)] = 0.97
    return p, (big | small).astype(np.uint8)


def _choice_items() -> list[tuple[np.ndarray, np.ndarray, float]]:
    """The choice tests' frames: three with texture, one with the particles only, all at PX."""
    return [(*_frame(), PX) for _ in range(3)] + [(*_frame(texture=False), PX)]


def test_components_without_a_confident_core_are_uncertain() -> None:
    p, _ = _frame()
    mask = p > 0.5
    assert measure_particles(mask, PX, ParticleSettings(), probabilities=p).summary["count"] == 3
    m = measure_particles(mask, PX, ParticleSettings(min_core_nm=0.5), probabilities=p)  # small core: 0.79 nm
    assert m.summary["count"] == 2 and m.uncertain == 1 == m.summary["uncertain"]
    assert not m.mask[95, 95] and m.mask[40, 40] and m.mask[30, 100]
    np.testing.assert_array_equal(m.labels > 0, m.mask)
    m = measure_particles(mask, PX, ParticleSettings(min_core_nm=1.0), probabilities=p)
    assert m.summary["count"] == 1 and m.uncertain == 2
    lenient = measure_particles(mask, PX, ParticleSettings(min_core_nm=1.0, core_probability=0.8), probabilities=p)
    assert lenient.summary["count"] == 3  # every pixel of the three is >= 0.8
    no_px = measure_particles(mask, None, ParticleSettings(min_core_nm=0.5), probabilities=p, min_area_px=20)
    assert no_px.summary["count"] == 3 and no_px.uncertain == 0  # the rule needs the pixel size
    both = measure_particles(mask, PX, ParticleSettings(min_core_nm=0.5, min_mean_probability=0.9),
                             probabilities=p)
    assert both.summary["count"] == 1 and both.uncertain == 2  # either rule makes a component uncertain


def _random_components(seed: int) -> Iterator[tuple[np.ndarray, np.ndarray, int, tuple[np.ndarray, ...]]]:
    """20 random frames: (probabilities (H, W) float32, labels, kept, runs) of the pixels above a
    random threshold, every component kept."""
    rng = np.random.default_rng(seed)
    for _ in range(20):
        shape = (int(rng.integers(1, 50)), int(rng.integers(1, 50)))
        probs = rng.random(shape).astype(np.float32)
        labels, _, kept, runs = label_kept_runs(probs > rng.random(), 1)
        yield probs, labels, kept, runs


def test_core_diameters_equal_a_per_component_count() -> None:
    for probs, labels, kept, runs in _random_components(1):
        got = core_diameters_nm(probs, 0.9, kept, runs, PX)
        ref = [2 * math.sqrt(np.count_nonzero(probs[labels == k] >= 0.9) / math.pi) * PX for k in range(1, kept + 1)]
        np.testing.assert_allclose(got, ref, rtol=1e-9)


def test_choice_drops_texture_but_keeps_small_particles() -> None:
    """Three frames with texture, and small particles with a 0.79 nm core: 0.2 nm (the smallest
    candidate that drops the texture) makes every count exact; 0.8 nm and above would cost the
    small particle."""
    items = _choice_items()
    choice = choose_particle_confidence(items, 0.5, statistic="core_nm", max_dice_loss=1.0)
    assert choice.cut == 0.2 and choice.key == "min_core_nm"
    share = dict(zip(choice.grid, choice.exact_count_share))
    assert share[0.0] == 0.25 and share[0.2] == share[0.6] == 1.0 and share[0.8] == 0.0
    d = choice.to_dict()
    assert d["min_core_nm"] == 0.2 and d["statistic"] == "core_nm" and d["core_probability"] == 0.95
    no_px = choose_particle_confidence([(p, y, None) for p, y, _ in items], 0.5, statistic="core_nm")
    assert no_px.cut == 0.0 and set(no_px.exact_count_share) == {0.25}  # no pixel size: no core rule


def test_errors_name_the_value() -> None:
    for bad in (-0.1, math.inf, "big", True):
        with pytest.raises(ValueError, match=f"min_core_nm must be a diameter >= 0 nm.*{bad!r}"):
            ParticleSettings(min_core_nm=bad)  # type: ignore[arg-type]
    for bad in (0.0, 1.0, "high"):
        with pytest.raises(ValueError, match=f"core_probability must be a probability in \\(0, 1\\).*{bad!r}"):
            ParticleSettings(core_probability=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="core_nm grid must be distinct diameters >= 0 nm including 0"):
        ConfidenceTally(0.5, grid=(0.0, -1.0), statistic="core_nm")
    with pytest.raises(ValueError, match="statistic must be one of .*'median'"):
        ConfidenceTally(0.5, statistic="median")
    d = json.loads((Path(__file__).resolve().parents[1] / "default_bundle" / "card.json").read_text())
    with pytest.raises(CardError, match="particle_min_core_nm must be a diameter >= 0 nm, got -0.5"):
        Card.from_dict({**d, "particle_min_core_nm": -0.5})
    with pytest.raises(CardError, match="particle_core_probability must be a probability in \\(0, 1\\), got 1.5"):
        Card.from_dict({**d, "particle_core_probability": 1.5})
    old = {k: v for k, v in d.items() if k not in ("particle_min_core_nm", "particle_core_probability")}
    card = Card.from_dict(old)  # cards written before the fields
    assert card.particle_min_core_nm == 0.0 and card.particle_core_probability == 0.95


def test_calibrate_writes_the_core_and_the_pipeline_and_daemon_config_use_it(
        tmp_path: Path, default_bundle_and_labelled: tuple[Path, Path]) -> None:
    from fringelive.bundle.bundle_io import load_bundle
    from fringelive.cli import main
    from fringelive.daemon.config import ConfigError, DaemonConfig
    from fringelive.engine.calibration import calibrate_particle_confidence
    from fringelive.engine.pipeline import PipelineConfig, SegmentationPipeline
    from fringelive.training.samples import load_sampleset

    bundle, labelled = default_bundle_and_labelled
    before = load_bundle(bundle).card
    rc = main(["calibrate", "--bundle", str(bundle), "--choose-particle-core", str(labelled), "--dry-run",
               "--max-frames", "2", str(labelled)])
    assert rc in (0, 1)  # the drift part may need more frames
    assert load_bundle(bundle).card.particle_min_core_nm == before.particle_min_core_nm
    ss = load_sampleset(labelled)
    rep = calibrate_particle_confidence(bundle, zip(ss.images, ss.labels, ss.metadata), grid=(0.0, 50.0),
                                        max_dice_loss=1.0, sources=[str(labelled)], statistic="core_nm")
    card = load_bundle(bundle).card
    assert card.particle_min_core_nm == rep["min_core_nm"] in (0.0, 50.0)
    assert card.metrics["particle_core_calibration"]["core_probability"] == card.particle_core_probability
    assert card.metrics["particle_core_calibration"]["sources"] == [str(labelled)]
    card = load_bundle(bundle).write_card(card.replace(particle_min_core_nm=0.4, particle_core_probability=0.9)).card
    with SegmentationPipeline.from_bundle(bundle) as pipe:
        ps = pipe.particle_settings
        assert (ps.min_core_nm, ps.core_probability) == (0.4, 0.9)  # the card's
    cfg = PipelineConfig(particles=ParticleSettings(min_core_nm=0.0, core_probability=0.99))
    with SegmentationPipeline.from_bundle(bundle, cfg) as pipe:
        ps = pipe.particle_settings
        assert (ps.min_core_nm, ps.core_probability) == (0.0, 0.99)  # [particles] overrides the card
    parsed = DaemonConfig.from_dict({"particles": {"min_core_nm": 0.5, "core_probability": 0.9}}).particles
    assert (parsed.min_core_nm, parsed.core_probability) == (0.5, 0.9)
    with pytest.raises(ConfigError, match="particles.min_core_nm must be a diameter >= 0 nm.*-1"):
        DaemonConfig.from_dict({"particles": {"min_core_nm": -1}})
    assert main(["calibrate", "--bundle", str(bundle), "--choose-particle-core", str(tmp_path / "none"),
                 str(labelled)]) == 2


# --- the core's share of the component's area (min_core_fraction) ------------------------------

def test_components_whose_core_is_a_small_share_are_uncertain_with_or_without_pixel_size() -> None:
    p, _ = _frame()  # shares: big particle 1.0, small faint one 49/197 = 0.25, texture 0
    mask = p > 0.5
    for px in (PX, None):
        m = measure_particles(mask, px, ParticleSettings(min_core_fraction=0.2), probabilities=p, min_area_px=20)
        assert m.summary["count"] == 2 and m.uncertain == 1 and not m.mask[95, 95] and m.mask[30, 100]
        m = measure_particles(mask, px, ParticleSettings(min_core_fraction=0.3), probabilities=p, min_area_px=20)
        assert m.summary["count"] == 1 and m.uncertain == 2
    both = measure_particles(mask, PX, ParticleSettings(min_core_fraction=0.2, min_core_nm=1.0), probabilities=p)
    assert both.summary["count"] == 1 and both.uncertain == 2  # either core rule makes a component uncertain


def test_core_fractions_equal_a_per_component_share() -> None:
    for probs, labels, kept, runs in _random_components(2):
        got = core_fractions(probs, 0.9, kept, runs)
        ref = [np.count_nonzero(probs[labels == k] >= 0.9) / np.count_nonzero(labels == k) for k in range(1, kept + 1)]
        np.testing.assert_allclose(got, ref, rtol=1e-6)
        np.testing.assert_allclose(core_diameters_nm(probs, 0.9, kept, runs, PX, fractions=got),
                                   core_diameters_nm(probs, 0.9, kept, runs, PX), rtol=1e-12)


def test_core_fraction_choice_keeps_small_particles_and_holds_the_other_rules() -> None:
    items = _choice_items()
    choice = choose_particle_confidence(items, 0.5, statistic="core_fraction", max_dice_loss=1.0)
    assert choice.cut == 0.05 and choice.key == "min_core_fraction"
    share = dict(zip(choice.grid, choice.exact_count_share))
    assert share[0.0] == 0.25 and share[0.05] == share[0.2] == 1.0 and share[0.25] == 0.0  # small: 0.249
    assert choice.to_dict()["core_probability"] == 0.95
    # with the bundle's core diameter rule held (1 nm drops the small particle), no share helps
    held = choose_particle_confidence(items, 0.5, statistic="core_fraction", max_dice_loss=1.0,
                                      settings=ParticleSettings(min_core_nm=1.0))
    assert set(held.exact_count_share) == {0.0}
    with pytest.raises(ValueError, match="core_fraction grid must be distinct fractions in \\[0, 1\\) including 0"):
        ConfidenceTally(0.5, grid=(0.0, 1.0), statistic="core_fraction")


def test_core_fraction_errors_card_config_and_cli(default_bundle_and_labelled: tuple[Path, Path]) -> None:
    from fringelive.bundle.bundle_io import load_bundle
    from fringelive.cli import main
    from fringelive.daemon.config import ConfigError, DaemonConfig
    from fringelive.engine.pipeline import PipelineConfig, SegmentationPipeline

    for bad in (-0.1, 1.0, "most", True):
        with pytest.raises(ValueError, match=f"min_core_fraction must be a fraction in \\[0, 1\\).*{bad!r}"):
            ParticleSettings(min_core_fraction=bad)  # type: ignore[arg-type]
    d = json.loads((Path(__file__).resolve().parents[1] / "default_bundle" / "card.json").read_text())
    with pytest.raises(CardError, match="particle_min_core_fraction must be a fraction in \\[0, 1\\), got 1.2"):
        Card.from_dict({**d, "particle_min_core_fraction": 1.2})
    old = Card.from_dict({k: v for k, v in d.items() if "core_fraction" not in k})  # cards written before the fields
    assert old.particle_min_core_fraction == old.particle_min_edge_core_fraction == 0.0  # off
    assert DaemonConfig.from_dict({"particles": {"min_core_fraction": 0.2}}).particles.min_core_fraction == 0.2
    assert DaemonConfig.from_dict({"particles": {"min_edge_core_fraction": 0.2}}).particles.min_edge_core_fraction \
        == 0.2
    with pytest.raises(CardError, match="particle_min_edge_core_fraction must be a fraction in \\[0, 1\\), got -1"):
        Card.from_dict({**d, "particle_min_edge_core_fraction": -1})
    with pytest.raises(ConfigError, match="particles.min_core_fraction must be a fraction in \\[0, 1\\).*1.5"):
        DaemonConfig.from_dict({"particles": {"min_core_fraction": 1.5}})
    bundle, labelled = default_bundle_and_labelled
    card = load_bundle(bundle).write_card(load_bundle(bundle).card.replace(
        particle_min_core_fraction=0.25, particle_min_edge_core_fraction=0.3)).card
    with SegmentationPipeline.from_bundle(bundle) as pipe:
        ps = pipe.particle_settings
        assert (ps.min_core_fraction, ps.min_edge_core_fraction) == (0.25, 0.3)  # the card's
    cfg = PipelineConfig(particles=ParticleSettings(min_core_fraction=0.0))
    with SegmentationPipeline.from_bundle(bundle, cfg) as pipe:
        assert pipe.particle_settings.min_core_fraction == 0.0  # [particles] overrides the card
    rc = main(["calibrate", "--bundle", str(bundle), "--choose-particle-core-fraction", str(labelled), "--dry-run",
               "--max-frames", "2", str(labelled)])
    assert rc in (0, 1) and load_bundle(bundle).card == card  # a dry run writes nothing


# --- the share at the frame edge (min_edge_core_fraction) -------------------------------------

def _edge_frame() -> tuple[np.ndarray, np.ndarray]:
    """As :func:`_frame`, with a second lukewarm texture component cut by the left edge (with a
    13 px sure core: 0.41 nm, share 0.08) and a particle (p 0.99) cut by the right edge."""
    p, y = _frame()
    shape = p.shape
    p[_disc(shape, 70, 0, 10)] = 0.85
    p[_disc(shape, 70, 3, 2)] = 0.97
    right = _disc(shape, 70, 127, 10)
    p[right] = 0.99
    return p, (y.astype(bool) | right).astype(np.uint8)


def test_touching_border_equals_the_particle_stats() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        mask = rng.random(shape) > rng.random()
        labels, _, kept, runs = label_kept_runs(mask, 1)
        ref = [p["touches_border"] for p in measure_particles(mask, None, ParticleSettings(fill_holes=False),
                                                              min_area_px=1).particles]
        assert touching_border(shape, kept, runs).tolist() == ref


def test_edge_share_cuts_only_components_touching_the_edge() -> None:
    p, _ = _edge_frame()
    mask = p > 0.5
    assert measure_particles(mask, PX, ParticleSettings(), probabilities=p).summary["count"] == 5
    m = measure_particles(mask, PX, ParticleSettings(min_edge_core_fraction=0.5), probabilities=p)
    # the edge texture goes; the inner texture (share 0) and the small inner particle (0.25) stay
    assert m.summary["count"] == 4 and m.uncertain == 1 and not m.mask[70, 2] and m.mask[95, 95]
    assert m.mask[70, 125] and m.mask[30, 100]
    items = [(*_edge_frame(), PX) for _ in range(2)]
    choice = choose_particle_confidence(items, 0.5, statistic="edge_core_fraction", max_dice_loss=1.0)
    assert choice.key == "min_edge_core_fraction" and set(choice.exact_count_share) == {0.0}  # inner texture
    assert choice.cut == 0.0  # a tie: the smaller cut
    both = choose_particle_confidence(items, 0.5, statistic="edge_core_fraction", max_dice_loss=1.0,
                                      settings=ParticleSettings(min_core_nm=0.2))  # drops the inner texture
    share = dict(zip(both.grid, both.exact_count_share))
    assert both.cut == 0.1 and share[0.0] == share[0.05] == 0.0 and share[0.1] == share[0.5] == 1.0
    with pytest.raises(ValueError, match="min_edge_core_fraction must be a fraction in \\[0, 1\\).*1.0"):
        ParticleSettings(min_edge_core_fraction=1.0)
