"""Particle confidence: a component's mean class-1 probability, the cut that makes low-confidence
components *uncertain* (engine/particle_measure.py), and its choice on labelled frames
(engine/particle_confidence.py, ``fringelive calibrate --choose-particle-confidence``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fringelive.bundle.card import CardError
from fringelive.engine.particle_confidence import ConfidenceTally, choose_particle_confidence
from fringelive.engine.particle_measure import ParticleSettings, measure_particles
from fringelive.engine.particles import drop_labels, label_kept_runs, mean_over_runs

PX = 0.05  # nm/px: the 1 nm speck minimum is a 16 px disc


def _disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _frame(particles: list[tuple[float, float, float, float]], shape: tuple[int, int] = (128, 128)
           ) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (0.05 background) with discs (cy, cx, r, p) and the label of the discs with p > 0.9."""
    p = np.full(shape, 0.05, np.float32)
    label = np.zeros(shape, np.uint8)
    for cy, cx, r, q in particles:
        d = _disc(shape, cy, cx, r)
        p[d] = q
        if q > 0.9:
            label[d] = 1
    return p, label


def test_mean_over_runs_equals_a_per_pixel_mean_and_drop_renumbers() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        shape = (int(rng.integers(1, 60)), int(rng.integers(1, 60)))
        mask = rng.random(shape) < rng.random()
        values = rng.random(shape).astype(np.float32)
        labels, _, kept, runs = label_kept_runs(mask, int(rng.integers(1, 4)))
        means = mean_over_runs(values, kept, runs)
        ref = [values[labels == k].mean() for k in range(1, kept + 1)]
        np.testing.assert_allclose(means, ref, rtol=1e-5)
        if kept:
            drop = rng.random(kept) < 0.5
            new, n, new_runs = drop_labels(labels, kept, runs, drop)
            assert n == int((~drop).sum()) and int(new.max(initial=0)) == n
            np.testing.assert_array_equal(new > 0, np.isin(labels, np.flatnonzero(~drop) + 1))
            np.testing.assert_allclose(mean_over_runs(values, n, new_runs), np.asarray(ref)[~drop], rtol=1e-5)


def test_low_confidence_components_are_uncertain_not_particles() -> None:
    p, _ = _frame([(40, 40, 15, 0.97), (90, 90, 10, 0.7), (100, 30, 1.5, 0.99)])  # particle, texture, speck
    mask = p > 0.5
    m = measure_particles(mask, PX, ParticleSettings(), probabilities=p)  # no cut: both counted
    assert m.summary["count"] == 2 and m.uncertain == 0 and m.summary["uncertain"] == 0 and m.specks == 1
    assert sorted(q["mean_probability"] for q in m.particles) == [0.7, 0.97]
    m = measure_particles(mask, PX, ParticleSettings(min_mean_probability=0.8), probabilities=p)
    assert m.summary["count"] == 1 and m.uncertain == 1 and m.summary["uncertain"] == 1 and m.specks == 1
    assert m.particles[0]["mean_probability"] == 0.97 and m.particles[0]["label"] == 1
    np.testing.assert_array_equal(m.mask, _disc(p.shape, 40, 40, 15))
    np.testing.assert_array_equal(m.labels > 0, m.mask)
    kept_specks = measure_particles(mask, PX, ParticleSettings(min_mean_probability=0.8, remove_specks=False),
                                    probabilities=p)
    np.testing.assert_array_equal(kept_specks.mask, _disc(p.shape, 40, 40, 15) | _disc(p.shape, 100, 30, 1.5))
    no_probs = measure_particles(mask, PX, ParticleSettings(min_mean_probability=0.8))
    assert no_probs.summary["count"] == 2 and "mean_probability" not in no_probs.particles[0]


@pytest.mark.parametrize("value", [1.0, -0.1, "high", True])
def test_settings_and_card_errors_name_the_value(value: object) -> None:
    with pytest.raises(ValueError, match=f"min_mean_probability must be a probability in \\[0, 1\\).*{value!r}"):
        ParticleSettings(min_mean_probability=value)  # type: ignore[arg-type]
    from fringelive.bundle.bundle_io import load_bundle
    from fringelive.bundle.card import Card

    d = load_bundle(Path(__file__).resolve().parents[1] / "default_bundle").card.to_dict()
    with pytest.raises(CardError, match="particle_min_mean_probability must be a (probability in \\[0, 1\\)|number)"):
        Card.from_dict({**d, "particle_min_mean_probability": value})
    d.pop("particle_min_mean_probability")
    assert Card.from_dict(d).particle_min_mean_probability == 0.0  # cards written before the field


def test_choice_drops_texture_but_not_faint_particles() -> None:
    """Texture components at p 0.7 on support, particles at p 0.97, and one real but faint
    particle at p 0.78 on another frame: cut 0.75 makes every count exact; 0.8 would cost the
    faint particle (counts and Dice), so it is not taken."""
    items = []
    for _ in range(3):
        p, y = _frame([(40, 40, 15, 0.97), (95, 95, 12, 0.7)])
        items.append((p, y, PX))
    p, _ = _frame([(64, 64, 14, 0.78)])
    items.append((p, _disc(p.shape, 64, 64, 14).astype(np.uint8), PX))
    choice = choose_particle_confidence(items, 0.5)
    i0, i75, i8 = (choice.grid.index(c) for c in (0.0, 0.75, 0.8))
    assert choice.cut == 0.75
    assert choice.exact_count_share[i0] == 0.25 and choice.exact_count_share[i75] == 1.0
    assert choice.exact_count_share[i8] == 0.75 and choice.pooled_dice[i75] > choice.pooled_dice[i0]
    assert choice.to_dict()["frames_with_particles"] == 4
    strict = choose_particle_confidence(items[3:], 0.5, max_dice_loss=0.0)  # faint only: no cut helps
    assert strict.cut == 0.0


def test_dice_budget_keeps_cuts_that_drop_real_particles_out() -> None:
    """A cut that fixes two frames' counts but drops a third frame's big faint particle costs
    more Dice than the budget: not chosen."""
    p1, y1 = _frame([(40, 40, 15, 0.97), (98, 98, 12, 0.7)])
    p2, _ = _frame([(64, 64, 30, 0.72)])
    items = [(p1, y1, PX), (p1, y1, PX), (p2, _disc(p2.shape, 64, 64, 30).astype(np.uint8), PX)]
    assert choose_particle_confidence(items, 0.5, max_dice_loss=0.01).cut == 0.0
    assert choose_particle_confidence(items, 0.5, max_dice_loss=1.0).cut == 0.75


def test_tally_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match="including 0"):
        ConfidenceTally(0.5, grid=(0.6, 0.8))
    with pytest.raises(ValueError, match="threshold must be a probability in \\(0, 1\\), got 1.5"):
        ConfidenceTally(1.5)
    with pytest.raises(ValueError, match="max_dice_loss must be in \\[0, 1\\].*-0.1"):
        ConfidenceTally(0.5, max_dice_loss=-0.1)
    with pytest.raises(ValueError, match="differ in shape"):
        ConfidenceTally(0.5).add(np.zeros((4, 4)), np.zeros((5, 5)), None)
    with pytest.raises(ValueError, match="no labelled frames"):
        ConfidenceTally(0.5).result()


def test_calibrate_cli_writes_the_cut_and_the_pipeline_and_daemon_config_use_it(
        tmp_path: Path, default_bundle_and_labelled: tuple[Path, Path]) -> None:
    from fringelive.bundle.bundle_io import load_bundle
    from fringelive.cli import main
    from fringelive.daemon.config import ConfigError, DaemonConfig
    from fringelive.engine.pipeline import PipelineConfig, SegmentationPipeline

    bundle, labelled = default_bundle_and_labelled
    before = load_bundle(bundle).card
    rc = main(["calibrate", "--bundle", str(bundle), "--choose-particle-confidence", str(labelled), "--dry-run",
               "--json", "--max-frames", "2", str(labelled)])
    assert rc in (0, 1)  # the drift part may need more frames
    assert load_bundle(bundle).card.particle_min_mean_probability == before.particle_min_mean_probability
    from fringelive.engine.calibration import calibrate_particle_confidence
    from fringelive.training.samples import load_sampleset

    ss = load_sampleset(labelled)
    rep = calibrate_particle_confidence(bundle, zip(ss.images, ss.labels, ss.metadata), grid=(0.0, 0.99),
                                        max_dice_loss=1.0, sources=[str(labelled)])
    card = load_bundle(bundle).card
    assert card.particle_min_mean_probability == rep["min_mean_probability"] in (0.0, 0.99)
    assert card.metrics["particle_confidence_calibration"]["frames"] == 3
    assert card.metrics["particle_confidence_calibration"]["threshold"] == card.threshold
    assert json.loads((bundle / "card.json").read_text())["particle_min_mean_probability"] == rep["min_mean_probability"]
    with SegmentationPipeline.from_bundle(bundle) as pipe:
        assert pipe.particle_settings.min_mean_probability == rep["min_mean_probability"]
        r = pipe.run(ss.images[0], ss.metadata[0])
        assert all("mean_probability" in q for q in r.particles) and "uncertain" in r.particle_summary
    cfg = PipelineConfig(particles=ParticleSettings(min_mean_probability=0.5))
    with SegmentationPipeline.from_bundle(bundle, cfg) as pipe:
        assert pipe.particle_settings.min_mean_probability == 0.5  # [particles] overrides the card
    assert DaemonConfig.from_dict({"particles": {"min_mean_probability": 0.8}}).particles.min_mean_probability == 0.8
    assert DaemonConfig.from_dict({}).particles.min_mean_probability is None
    with pytest.raises(ConfigError, match="particles.min_mean_probability must be a probability in \\[0, 1\\).*1.5"):
        DaemonConfig.from_dict({"particles": {"min_mean_probability": 1.5}})
    assert main(["calibrate", "--bundle", str(bundle), "--choose-particle-confidence", str(tmp_path / "none"),
                 str(labelled)]) == 2
    assert main(["calibrate", "--bundle", str(bundle), "--choose-particle-confidence", str(labelled),
                 "--max-particle-dice-loss", "2", str(labelled)]) == 2
