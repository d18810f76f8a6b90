"""``fringelive synth``: determinism per seed, resumability after a kill, the mask rule, the
metadata table; the abTEM engine on a tiny cell (a 2 nm particle in a 4 nm field)."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fringelive.training.samples import load_sampleset
from fringelive.training.synth import synthesize
from fringelive.training.synth_config import SynthConfig, SynthError
from fringelive.training.synth_sample import draw_parameters, simulate_sample

ROOT = Path(__file__).resolve().parents[1]
FAST = SynthConfig(engine="fast", count=6, size_px=64, pixel_size_nm=(0.05, 0.05), diameter_nm=(2.0, 3.0),
                   particles_per_100nm2=6.0, dose_e_per_A2=(300.0, 600.0), seed=3)
TINY_ABTEM = SynthConfig(engine="abtem", count=2, size_px=64, pixel_size_nm=(0.0625, 0.0625), diameter_nm=(2.0, 2.0),
                         carbon_thickness_nm=(1.0, 1.0), seed=1)


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "sim_seconds"} for r in rows]


def _same_sets(a: Path, b: Path) -> None:
    sa, sb = load_sampleset(a), load_sampleset(b)
    assert np.array_equal(sa.images, sb.images)
    assert np.array_equal(sa.labels, sb.labels)
    assert _strip(sa.metadata) == _strip(sb.metadata)


def test_fast_engine_is_deterministic_per_seed_and_worker_count(tmp_path: Path) -> None:
    r1 = synthesize(FAST, tmp_path / "serial", workers=1, progress=False)
    r2 = synthesize(FAST, tmp_path / "pool", workers=2, progress=False)
    assert (r1.simulated, r2.simulated) == (6, 6)
    _same_sets(tmp_path / "serial", tmp_path / "pool")
    other = load_sampleset(synthesize(replace(FAST, seed=4), tmp_path / "seed4", progress=False).path)
    assert not np.array_equal(other.images, load_sampleset(tmp_path / "serial").images)
    ss = load_sampleset(tmp_path / "serial")
    assert ss.content == "raw" and ss.images.dtype == np.uint16 and ss.images.shape == (6, 64, 64)
    assert set(np.unique(ss.labels)) <= {0, 1} and ss.labels.any()
    assert ss.attrs["source"] == "synth-fast"
    assert not (tmp_path / "serial" / "parts").exists()


def test_resume_after_kill_skips_finished_samples(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cfg = replace(FAST, count=12)
    script = textwrap.dedent(f"""
        import time
        from fringelive.training.synth import synthesize
        from fringelive.training.synth_config import SynthConfig
        from dataclasses import replace
        cfg = replace(SynthConfig(engine="fast", count=12, size_px=64, pixel_size_nm=(0.05, 0.05),
                      diameter_nm=(2.0, 3.0), particles_per_100nm2=6.0, dose_e_per_A2=(300.0, 600.0), seed=3))
        synthesize(cfg, {str(out)!r}, progress=False, on_sample=lambda i: time.sleep(0.25))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        parts = out / "parts"
        while time.monotonic() < deadline:
            if parts.is_dir() and len(list(parts.glob("*.npz"))) >= 3:
                break
            if proc.poll() is not None:
                pytest.fail(f"synth subprocess ended early with {proc.returncode}")
            time.sleep(0.05)
        else:
            pytest.fail("synth subprocess made no samples in 60 s")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    staged = len(list((out / "parts").glob("*.npz")))
    assert 3 <= staged < 12 and not (out / "samples.h5").exists()
    report = synthesize(cfg, out, progress=False)
    assert report.skipped == staged and report.simulated == 12 - staged
    synthesize(cfg, tmp_path / "clean", progress=False)
    _same_sets(out, tmp_path / "clean")
    again = synthesize(cfg, out, progress=False)  # complete: nothing to do
    assert again.simulated == 0 and again.skipped == 12


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    synthesize(replace(FAST, count=2), tmp_path / "s", progress=False)
    with pytest.raises(SynthError, match=r"size_px: 64 → 96"):
        synthesize(replace(FAST, count=2, size_px=96), tmp_path / "s", progress=False)


def test_metadata_table_has_every_parameter(tmp_path: Path) -> None:
    synthesize(FAST, tmp_path / "m", progress=False)
    ss = load_sampleset(tmp_path / "m")
    with open(tmp_path / "m" / "metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == FAST.count
    drawn = set(draw_parameters(FAST, 0))
    for i, (row, meta) in enumerate(zip(rows, ss.metadata)):
        assert drawn <= set(row) and drawn <= set(meta)
        assert {"particles", "particle_diameter_nm", "particle_fraction", "sim_seconds"} <= set(meta)
        assert int(row["index"]) == meta["index"] == i
        assert 300.0 <= meta["dose_e_per_A2"] <= 600.0
        assert meta["particle_fraction"] == pytest.approx(float(ss.labels[i].mean()), abs=1e-6)
        assert meta["camera_gain"] == FAST.camera.gain and meta["seed"] == FAST.seed
    assert len({m["dose_e_per_A2"] for m in ss.metadata}) > 1  # drawn per sample


def test_config_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"sampling_A must be in \(0, 0.25\] Å, got 0.3"):
        SynthConfig(sampling_A=0.3)
    with pytest.raises(ValueError, match="material must be one of .* got 'Cu'"):
        SynthConfig(materials=("Cu",))
    with pytest.raises(ValueError, match="diameter_nm min 5 is above max 2"):
        SynthConfig(diameter_nm=(5, 2))
    with pytest.raises(ValueError, match="engine must be one of"):
        SynthConfig(engine="prismatic")


def test_phase_mask_rule_and_cleanup() -> None:
    from fringelive.training.multislice import PHASE_THRESHOLD_RAD, clean_mask, close_mask, phase_mask

    assert PHASE_THRESHOLD_RAD == pytest.approx(math.pi / 16)
    eps = 1e-3
    phases = np.array([[0.0, math.pi / 16 - eps, math.pi / 16 + eps, 3.1, -3.1, -(math.pi / 16) - eps]])
    wave = 0.8 * np.exp(1j * phases)
    assert phase_mask(wave).tolist() == [[False, False, True, True, True, True]]
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False  # a hole
    speck = np.zeros((9, 9), bool)
    speck[0, 8] = True  # a 1-px component
    cleaned = clean_mask(ring | speck, min_area_px=3)
    assert cleaned[4, 4] and not cleaned[0, 8] and cleaned.sum() == 25
    cols = np.zeros((20, 20), bool)
    cols[8:13, 2:7] = cols[8:13, 9:14] = True  # two column blobs with a 2 px gap
    joined = close_mask(cols, radius_px=2.5)
    assert joined[8:13, 2:14].all() and joined.sum() == 5 * 12  # gap filled, outline kept
    assert not close_mask(cols, radius_px=0.9)[10, 7:9].any()


def test_fcc_twin_keeps_neighbour_distances_and_wurtzite_refuses() -> None:
    from scipy.spatial import cKDTree

    from fringelive.training.structures import nanoparticle

    atoms, info = nanoparticle("Au", 30.0, np.random.default_rng(0), twin=True)
    pos = atoms.get_positions()
    d, _ = cKDTree(pos).query(pos, k=2)
    assert d[:, 1].min() > 2.8  # a/√2 = 2.88 Å: a coherent twin adds no close pairs
    assert np.linalg.norm(pos, axis=1).max() <= 15.0 + 1e-6
    expected = 4 / 4.078 ** 3 * 4 / 3 * math.pi * 15.0 ** 3
    assert 0.8 * expected < info["atoms"] < 1.2 * expected
    assert info["twin"] and info["twin_offset_A"] is not None
    with pytest.raises(ValueError, match="fcc materials only, not CdSe"):
        nanoparticle("CdSe", 30.0, np.random.default_rng(0), twin=True)


def test_abtem_sample_is_deterministic_and_mask_follows_the_particle() -> None:
    pytest.importorskip("abtem")
    raw, mask, row = simulate_sample(TINY_ABTEM, 0)
    raw2, mask2, row2 = simulate_sample(TINY_ABTEM, 0)
    assert np.array_equal(raw, raw2) and np.array_equal(mask, mask2)
    assert _strip([row]) == _strip([row2])
    assert raw.shape == mask.shape == (64, 64) and raw.dtype == np.uint16
    assert row["sampling_A"] <= 0.1 and row["voltage_kv"] == 300.0 and row["particles"] == 1
    # the mask is one blob at the particle centre with about the projected disc's area
    px = 0.0625
    disc = math.pi * 1.0 ** 2 / px ** 2
    assert 0.6 * disc < mask.sum() < 1.2 * disc
    cx, cy = row["particle_centres_nm"][0]
    yy, xx = np.nonzero(mask)
    assert abs(xx.mean() * px + px / 2 - cx) < 0.3 and abs(yy.mean() * px + px / 2 - cy) < 0.3
    other, _, _ = simulate_sample(TINY_ABTEM, 1)
    assert not np.array_equal(raw, other)


def test_support_pool_gives_each_database_its_own_carbon() -> None:
    pytest.importorskip("abtem")
    from fringelive.training.multislice import support_slices

    def slab(pool: int, pool_seed: int | None, draw_seed: int = 0) -> np.ndarray:
        return support_slices(16.0, 32, 30.0, np.random.default_rng(draw_seed), pool=pool, pool_seed=pool_seed)

    one = slab(1, None)
    assert one.shape == (6, 32, 32) and one.dtype == np.float32  # 3 nm = 3 unit slabs of 2 slices
    assert np.array_equal(one, slab(1, None))  # the single shared slab of earlier databases
    assert np.array_equal(slab(4, 7), slab(4, 7))  # deterministic per database seed
    assert not np.array_equal(slab(4, 7), slab(4, 8))  # another database, other carbon atoms
    # a stack draws from the pool: with 4 members, 3 copies are not all one slab's symmetries
    members = {round(float(np.sort(u.ravel())[-5:].sum()), 3) for u in slab(4, 7, draw_seed=3).reshape(3, 2, 32, 32)}
    assert len(members) > 1
    with pytest.raises(ValueError, match="pool must be an integer >= 1, got 0"):
        slab(0, 7)
    with pytest.raises(ValueError, match="support_pool must be an integer >= 1, got 0"):
        SynthConfig(support_pool=0)


@pytest.mark.slow
def test_abtem_synthesize_with_workers_matches_serial(tmp_path: Path) -> None:
    pytest.importorskip("abtem")
    cfg = replace(TINY_ABTEM, count=3, twin_probability=1.0, materials=("Au", "CdSe"))
    synthesize(cfg, tmp_path / "a", workers=1, progress=False)
    synthesize(cfg, tmp_path / "b", workers=2, progress=False)
    _same_sets(tmp_path / "a", tmp_path / "b")
    ss = load_sampleset(tmp_path / "a")
    assert ss.attrs["abtem_version"]


def test_cli_synth_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fringelive.cli import main

    rc = main(["synth", "--engine", "fast", "--count", "3", "--size", "48", "--pixel-size", "0.04", "0.05",
               "--diameter", "2", "3", "--dose", "400", "--material", "Au", "Pt", "--out", str(tmp_path / "c"),
               "--no-progress"])
    assert rc == 0
    assert "3 samples (3 simulated now, 0 resumed)" in capsys.readouterr().out
    ss = load_sampleset(tmp_path / "c")
    assert {m["material"] for m in ss.metadata} <= {"Au", "Pt"}
    assert all(0.04 <= m["pixel_size_nm"] <= 0.05 for m in ss.metadata)
    assert "fringelive synth --engine fast" in ss.attrs["command"]
    assert main(["synth", "--engine", "fast", "--count", "1", "--sampling", "0.5", "--out", str(tmp_path / "d")]) == 2
