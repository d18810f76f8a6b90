"""Issue #17, bring your own labelled images, through the command line: ``dataset`` reads PNG,
JPEG and 8/16-bit TIFF (grey stored as RGB/RGBA reduced to one channel), pairs labels from a
sibling folder by ``--label-pattern`` (0/255 and 0/1 masks), needs no pixel size or dose; the
recipe of ``docs/training.md`` (``dataset`` → ``finetune --from`` the default bundle →
``evaluate`` → ``serve``) runs on 20 generated 8-bit PNGs with labels named ``label_<i>.png``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from fringelive import default_bundle
from fringelive.bundle.bundle_io import load_bundle
from fringelive.cli import main
from fringelive.training.fastsim import FastSimConfig, simulate_frame
from fringelive.training.samples import load_sampleset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_folder(root: Path, count: int, size: int) -> tuple[Path, Path]:
    """``root/images/img_<iii>.png`` (8-bit, zero-padded index) and ``root/labels/label_<i>.png``
    (0/255), from the fast simulator (0.05 nm/px, 3 nm particles)."""
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    cfg = FastSimConfig(shape=(size, size), pixel_size_nm=0.05, diameter_nm=3.0, particles_per_100nm2=3.0)
    for i in range(count):
        frame, mask, _ = simulate_frame(cfg, seed=i)
        f = frame.astype(np.float64)
        lo, hi = np.percentile(f, [0.5, 99.5])
        Image.fromarray(np.clip((f - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)).save(images / f"img_{i:03d}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(labels / f"label_{i}.png")
    return images, labels


def test_dataset_formats_label_pattern_and_no_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    base = rng.poisson(200, (64, 64)).astype(np.uint16)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:40, 12:44] = 1
    grey8 = np.clip(base // 2, 0, 255).astype(np.uint8)
    Image.fromarray(np.stack([grey8] * 3, -1)).save(images / "a_1.png")                       # grey stored as RGB
    Image.fromarray(np.dstack([grey8] * 3 + [np.full_like(grey8, 255)])).save(images / "a_2.png")  # as RGBA
    Image.fromarray(grey8).save(images / "a_3.jpg", quality=95)
    tifffile.imwrite(images / "a_4.tif", base)                                                # 16-bit TIFF
    tifffile.imwrite(images / "a_5.tif", grey8)                                               # 8-bit TIFF
    Image.fromarray(grey8).save(images / "a_6.png")                                           # no label: skipped
    for i in (1, 2, 3):
        Image.fromarray(mask * 255).save(labels / f"label_{i:02d}.png")                       # 0/255, zero-padded
    for i in (4, 5):
        Image.fromarray(mask).save(labels / f"label_{i}.png")                                 # 0/1
    rc = main(["dataset", "--images", str(images), "--labels", str(labels), "--label-pattern", "label_{index}.png",
               "--patch", "64", "--min-particle-px", "10", "--out", str(tmp_path / "ds"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "5 patches from 5 images" in out and "1 no label" in out
    ss = load_sampleset(tmp_path / "ds")
    assert len(ss) == 5
    rows = ss.metadata
    assert sorted(r["label_file"] for r in rows) == ["label_01.png", "label_02.png", "label_03.png",
                                                     "label_4.png", "label_5.png"]
    assert all(int(r["particle_px"]) == int(mask.sum()) for r in rows)  # 0/255 and 0/1 alike
    assert all(r.get("pixel_size_nm") in (None, "") for r in rows)
    np.testing.assert_array_equal(ss.labels[0], mask)

    # a regex pairing works too; a bad pattern is one clear line
    rc = main(["dataset", "--images", str(images), "--labels", str(labels), "--label-pattern",
               r"re:label_0*(?P<index>\d+)\.png", "--patch", "64", "--min-particle-px", "10", "--out",
               str(tmp_path / "ds2"), "--no-progress"])
    assert rc == 0 and "5 patches from 5 images" in capsys.readouterr().out
    assert main(["dataset", "--images", str(images), "--label-pattern", "label.png", "--out", str(tmp_path / "x"),
                 "--no-progress"]) == 2
    assert "label pattern 'label.png' needs one of the fields" in capsys.readouterr().err


def _serve_one(bundle: Path, image: Path, tmp_path: Path) -> dict:
    """``fringelive serve --bundle`` as a subprocess, ``watch --ready-file`` + ``send`` of one image;
    the result header."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fringelive.cli", "serve", "--bundle", str(bundle), "--ingest",
                             "tcp://127.0.0.1:0", "--results", "tcp://127.0.0.1:0", "--control", "tcp://127.0.0.1:0",
                             "--metrics-port", "-1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    try:
        endpoints: dict[str, str] = {}
        while not {"ingest", "results"} <= set(endpoints):
            line = proc.stdout.readline()
            assert line, f"serve exited early: {proc.stderr.read()}"
            fields = line.split()
            if len(fields) == 2 and fields[1].startswith("tcp://"):
                endpoints[fields[0]] = fields[1]
        ready, record = tmp_path / "watch.ready", tmp_path / "served.h5"
        rc: list[int] = []
        watcher = threading.Thread(target=lambda: rc.append(main([
            "watch", "--endpoint", endpoints["results"], "--count", "1", "--timeout", "120", "--record", str(record),
            "--ready-file", str(ready)])), daemon=True)
        watcher.start()
        t_end = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < t_end, "watch never got ready"
            time.sleep(0.02)
        assert main(["send", "--endpoint", endpoints["ingest"], str(image)]) == 0
        watcher.join(150)
        assert rc == [0]
        with h5py.File(record, "r") as f:
            (series,) = list(f["series"])
            return json.loads(f["series"][series]["headers"].asstr()[0])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()


def _recipe(tmp_path: Path, count: int, size: int, epochs: int, serve: bool = True) -> None:
    images, labels = make_folder(tmp_path / "mine", count, size)
    ds, ft, ev = tmp_path / "ds", tmp_path / "ft", tmp_path / "ev"
    assert main(["dataset", "--images", str(images), "--labels", str(labels), "--label-pattern", "label_{index}.png",
                 "--patch", str(size), "--min-particle-px", "20", "--out", str(ds), "--no-progress"]) == 0
    assert main(["finetune", "--from", str(default_bundle.directory()), "--data", str(ds), "--out", str(ft),
                 "--folds", "1", "--split", "0.8", "0.2", "0", "--patch", str(size), "--epochs", str(epochs),
                 "--batch-size", "4", "--check-size", str(size), "--no-progress"]) == 0
    card = load_bundle(ft / "bundle").card
    assert card.envelope.pixel_size_nm is None and card.envelope.dose_e_per_A2 is None
    assert "pixel size and dose unknown" in card.description
    assert main(["evaluate", "--bundle", f"mine={ft / 'bundle'}", "--data", f"mine={ds}", "--out", str(ev),
                 "--all-samples"]) == 0
    assert (ev / "dice_matrix.csv").is_file()
    if not serve:
        return
    header = _serve_one(ft / "bundle", images / "img_000.png", tmp_path)
    assert header["model"] == card.name
    assert header["drift"]["status"] in ("ok", "unknown")  # never warn/ood for the unknown envelope fields
    assert not any(r.startswith(("pixel_size", "dose_below", "dose_above")) for r in header["drift"]["reasons"])


def test_recipe_fast_variant(tmp_path: Path) -> None:
    """The recipe's offline commands on 20 tiny (64 px) PNGs, 1 epoch (serving: the slow test)."""
    _recipe(tmp_path, 20, 64, 1, serve=False)


@pytest.mark.slow
def test_recipe_on_20_png_micrographs(tmp_path: Path) -> None:
    """The recipe of docs/training.md as written (256 px PNGs, 2 epochs)."""
    _recipe(tmp_path, 20, 256, 2)
