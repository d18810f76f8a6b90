"""The CPU serving path runs without PyTorch (``make demo`` installs no torch; issue #17).

Each test runs ``fringelive`` in a subprocess whose ``sitecustomize`` makes ``import torch`` fail
as it does when torch is not installed (a meta-path finder raising ``ModuleNotFoundError``), so
any torch import on the path fails the test: ``fringelive demo`` serves real frames from its
simulated camera over loopback ZeroMQ through the daemon (auto backend: OpenVINO or ONNX
Runtime, numpy preprocessing) and gets every result back; ``serve --backend torch`` and
``train`` fail at start-up with one line naming what to install.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

BLOCKER = '''
import sys


class _NoTorch:
    """``import torch`` fails as when torch is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoTorch())
'''

HINT = "pip install 'fringelive[torch]'"


def _run_without_torch(tmp_path: Path, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess:
    site = tmp_path / "notorch"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    code = "import sys; from fringelive.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout)


def test_the_blocker_blocks_torch(tmp_path):
    r = _run_without_torch(tmp_path, "--help")
    assert r.returncode == 0, r.stderr
    site = tmp_path / "notorch"
    r = subprocess.run([sys.executable, "-c", "import torch"], env=dict(os.environ, PYTHONPATH=str(site)),
                       capture_output=True, text=True)
    assert r.returncode == 1 and "ModuleNotFoundError: No module named 'torch'" in r.stderr


PIPELINE = """
import sys
import numpy as np
from importlib.resources import files
import fringelive.daemon.server, fringelive.stream.send, fringelive.stream.watch, fringelive.cli.health  # noqa: F401
from fringelive.engine.pipeline import SegmentationPipeline
from fringelive.stream.camera_sim import SimulatedCamera
counts = SimulatedCamera((256, 256)).frame(0)[0]
with SegmentationPipeline.from_bundle(str(files("fringelive.default_bundle")), kind="onnxruntime",
                                      intra_op_threads=1) as pipe:
    r = pipe.run(counts.astype(np.uint16))
assert r.mask.shape == (256, 256) and r.mask.any(), r
assert "torch" not in sys.modules
print("particles", len(r.particles))
"""


def test_pipeline_and_serving_modules_run_without_torch(tmp_path):
    site = tmp_path / "notorch"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    r = subprocess.run([sys.executable, "-c", PIPELINE], env=dict(os.environ, PYTHONPATH=str(site)),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "particles" in r.stdout, r.stderr[-4000:]


@pytest.mark.slow  # the whole demo: the auto backend's start-up benchmark, ~20 s on 2 idle cores
def test_demo_serves_frames_without_torch(tmp_path):
    out = tmp_path / "demo-out"
    r = _run_without_torch(tmp_path, "demo", "--max-frames", "2", "--frame-px", "256", "--duration", "300",
                           "--no-sweep", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "Traceback" not in r.stderr
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 2
    assert (out / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_torch_backend_without_torch_fails_at_start_with_one_clear_line(tmp_path):
    r = _run_without_torch(tmp_path, "serve", "--backend", "torch", "--ingest", "tcp://127.0.0.1:0",
                           "--results", "tcp://127.0.0.1:0", "--control", "tcp://127.0.0.1:0", "--metrics-port", "-1")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("fringelive: error:")]
    assert len(errors) == 1 and "'torch'" in errors[0] and "needs PyTorch" in errors[0] and HINT in errors[0]


@pytest.mark.parametrize("command", ["train", "export"])
def test_torch_commands_without_torch_name_what_to_install(tmp_path, command):
    r = _run_without_torch(tmp_path, command, "--help")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"fringelive: error: {command} needs PyTorch, which is not installed: " \
        + r.stderr.split("which is not installed: ", 1)[1].strip()
    assert HINT in r.stderr
