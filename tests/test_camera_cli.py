"""``fringelive calibrate camera`` (issue #12): dark + flat frames → the [camera] section, written
into a daemon config that then loads; data that cannot determine the camera is refused with a
message saying what to acquire."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from camera_sim_helpers import SimCamera, hrtem_scene

from fringelive.cli import main
from fringelive.daemon.config import load_config

SIM = SimCamera(gain=8.0, offset=100.0, read_noise=3.0, mtf_sigma_px=0.5)


def _write(tmp: Path, name: str, frames: list[np.ndarray]) -> Path:
    path = tmp / f"{name}.npy"
    np.save(path, np.stack(frames))
    return path


@pytest.fixture
def acquisitions(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(7)
    shape = (256, 256)
    out = {"dark": _write(tmp_path, "dark", [SIM.expose(np.zeros(shape), rng) for _ in range(4)])}
    for e in (5.0, 12.0, 30.0):
        img, _ = hrtem_scene(shape, rng, particles=0)
        out[f"{e:g}"] = _write(tmp_path, f"flat{e:g}", [SIM.expose(e * img, rng) for _ in range(4)])
    return out


def test_calibrate_camera_writes_the_section(acquisitions: dict[str, Path], tmp_path: Path, capsys) -> None:
    config = tmp_path / "daemon.toml"
    config.write_text('[queue]\nsize = 8\n\n[camera]\nname = "old"\ngain_counts_per_e = 1.0\n\n[drift]\nenabled = true\n')
    flats = [f"--flat={k}={v}" for k, v in acquisitions.items() if k != "dark"]
    rc = main(["calibrate", "camera", "--dark", str(acquisitions["dark"]), *flats, "--name", "sim K3",
               "--write", str(config)])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("[camera]") and "# level 30" in out
    cfg = load_config(config)
    assert cfg.camera.settings.name == "sim K3"
    assert cfg.camera.settings.gain_counts_per_e == pytest.approx(8.0, rel=0.05)
    assert cfg.camera.settings.offset_counts == pytest.approx(100.0, abs=2.0)
    assert cfg.queue.size == 8 and cfg.drift.enabled  # other sections untouched
    assert config.read_text().startswith('[queue]\nsize = 8\n\n[camera]\nname = "sim K3"')


def test_calibrate_camera_refuses_what_cannot_determine_it(acquisitions: dict[str, Path], capsys) -> None:
    one_level = main(["calibrate", "camera", "--dark", str(acquisitions["dark"]), f"--flat=12={acquisitions['12']}"])
    err = capsys.readouterr().err
    assert one_level == 1 and "1 illumination level(s)" in err and "at >= 3 illuminations" in err
    no_dark = main(["calibrate-camera", f"--flat=5={acquisitions['5']}", f"--flat=30={acquisitions['30']}"])
    assert no_dark == 1 and "Acquire >= 2 dark frames" in capsys.readouterr().err
    assert main(["calibrate", "camera", "--flat", "nolabel.npy"]) == 2
    assert "--flat must be LABEL=FILE" in capsys.readouterr().err
