"""``benchmarks/gpu_check.sh --dry-run`` runs on a CPU: syntax, the client, each step's CPU
fallback (export tensorrt and serve --backend tensorrt / onnxruntime-cuda exit 2 with one line),
and a real CPU daemon measured through the same client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _env(tmp_path: Path) -> dict[str, str]:
    # the console script `fringelive` -> fringelive.cli:main, run by this interpreter
    return dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1",
                FRINGELIVE_CMD=f"{sys.executable} -m fringelive.cli")


def test_gpu_check_syntax() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    out = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--dry-run" in out.stdout
    bad = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option" in bad.stderr


@pytest.mark.slow  # ~40 s on an idle 2-core box, minutes under load (.ci/run runs the slow tests)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bash + /proc")
def test_gpu_check_dry_run_on_cpu(tmp_path: Path) -> None:
    p = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--work", str(tmp_path / "work")], env=_env(tmp_path),
                       capture_output=True, text=True, timeout=420)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "mode: dry-run" in out
    if "cuda True" not in out:  # a CPU machine: each GPU step fails cleanly and is skipped
        assert "TensorRT unavailable (exit 2" in out, out
        assert "tensorrt: unavailable here (serve exit 2)" in out, out
        assert "onnxruntime-cuda: unavailable here (serve exit 2)" in out, out
        assert "H2D: n/a" in out
    assert "RESULT onnxruntime:" in out and "STAGES onnxruntime" in out, out
    assert "inference" in out.split("STAGES onnxruntime", 1)[1]
    assert "done in" in p.stdout and p.stdout.rstrip().endswith("OK"), out
    assert "awk:" not in p.stderr and "Traceback" not in out, out
